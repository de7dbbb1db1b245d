//! EXPUNGE, UID EXPUNGE (UIDPLUS), CLOSE (silent expunge), UNSELECT (in session.rs).
//!
//! The store removes the records; the untagged EXPUNGE responses come from the
//! post-command sync of the selected view, so they are computed the same way whether
//! this session or another one expunged.

use imap_proto::SeqOrSaved;
use store::{Op, Uid};

use crate::resp::{Reply, store_error};
use crate::session::Session;

impl Session {
    pub(crate) async fn cmd_expunge(&mut self, set: Option<SeqOrSaved>) -> Reply {
        let (_, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(sel) = self.selected.as_ref() else {
            return Reply::bad("No mailbox selected");
        };
        if sel.read_only {
            return Reply::no("[CANNOT] The mailbox is read-only (EXAMINE); nothing was expunged");
        }
        let uids = match &set {
            None => None,
            Some(SeqOrSaved::Saved) => return Reply::bad("No saved search result ($)"),
            Some(SeqOrSaved::Set(s)) => match sel.resolve(s, true) {
                Ok(idx) => Some(idx.into_iter().map(|i| sel.uid_at(i)).collect::<Vec<Uid>>()),
                Err(why) => return Reply::bad(why),
            },
        };
        match slot
            .execute_async(Op::Expunge {
                mailbox: sel.id,
                uids,
            })
            .await
        {
            Ok(_) if set.is_some() => Reply::ok("UID EXPUNGE completed"),
            Ok(_) => Reply::ok("EXPUNGE completed"),
            Err(e) => store_error(&e),
        }
    }

    /// CLOSE: expunge silently (when writable) and deselect (RFC 3501 6.4.2).
    pub(crate) async fn cmd_close(&mut self) -> Reply {
        let (_, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(sel) = self.selected.take() else {
            return Reply::bad("No mailbox selected");
        };
        if !sel.read_only
            && let Err(e) = slot
                .execute_async(Op::Expunge {
                    mailbox: sel.id,
                    uids: None,
                })
                .await
        {
            return store_error(&e);
        }
        Reply::ok("CLOSE completed")
    }
}
