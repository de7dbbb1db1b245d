//! COPY, MOVE (RFC 6851) and their UID forms, with UIDPLUS COPYUID.
//!
//! MOVE is one store operation (copy and remove in one durable batch), so a message is
//! never in both mailboxes nor in neither. Its EXPUNGE responses come from the
//! post-command sync, after an untagged `OK [COPYUID ...]` as RFC 6851 3.3 asks.

use imap_proto::SeqOrSaved;
use store::{Op, OpResult, Uid};

use crate::resp::{Reply, store_error, uid_set};
use crate::session::Session;

impl Session {
    pub(crate) async fn cmd_copy(
        &mut self,
        uid: bool,
        set: &SeqOrSaved,
        dest: &str,
        remove: bool,
    ) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(sel) = self.selected.as_ref() else {
            return Reply::bad("No mailbox selected");
        };
        let verb = if remove { "MOVE" } else { "COPY" };
        if remove && sel.read_only {
            return Reply::no("[CANNOT] The mailbox is read-only (EXAMINE); use COPY");
        }
        let SeqOrSaved::Set(set) = set else {
            return Reply::bad("No saved search result ($)");
        };
        let idx = match sel.resolve(set, uid) {
            Ok(i) => i,
            Err(why) => return Reply::bad(why),
        };
        // Messages already known to be expunged are skipped; the store refuses to copy a
        // record it cannot verify (that would spread the damage, invariant 3).
        let uids: Vec<Uid> = idx
            .iter()
            .map(|&i| sel.uid_at(i))
            .filter(|u| !sel.is_expunged(*u))
            .collect();
        match slot.view().mailbox_by_name(&user, dest) {
            Ok(Some(_)) => {}
            Ok(None) => return Reply::no("[TRYCREATE] No such mailbox; create it first"),
            Err(e) => return store_error(&e),
        }
        if uids.is_empty() {
            return Reply::ok(format!("{verb} completed (no messages)"));
        }
        let op = Op::Copy {
            from: sel.id,
            uids,
            to: dest.to_string(),
            remove_source: remove,
        };
        let (uidvalidity, pairs) = match slot.execute_async(op).await {
            Ok(OpResult::Copied { uidvalidity, pairs }) => (uidvalidity, pairs),
            Ok(_) => return Reply::no("[SERVERBUG] Unexpected store reply to COPY"),
            Err(store::StoreError::NoSuchMailbox) => {
                return Reply::no("[TRYCREATE] No such mailbox; create it first");
            }
            Err(e) => return store_error(&e),
        };
        let src: Vec<u32> = pairs.iter().map(|p| p.0.0).collect();
        let dst: Vec<u32> = pairs.iter().map(|p| p.1.0).collect();
        let code = if pairs.is_empty() {
            String::new()
        } else {
            format!(
                "[COPYUID {} {} {}] ",
                uidvalidity.0,
                uid_set(&src),
                uid_set(&dst)
            )
        };
        if remove {
            if !code.is_empty() {
                self.untagged(&format!("OK {code}Moved"));
            }
            Reply::ok("MOVE completed")
        } else {
            Reply::ok(format!("{code}COPY completed"))
        }
    }
}
