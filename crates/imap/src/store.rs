//! STORE / UID STORE: `FLAGS`, `+FLAGS`, `-FLAGS` and their `.SILENT` forms, with the
//! RFC 7162 `UNCHANGEDSINCE` modifier passed through to the store.
//!
//! The new flags come back from the store's reply (not from re-reading), so the
//! untagged FETCH responses show exactly what was committed; the selected view's cache
//! is updated from the same reply, so the post-command sync reports nothing twice.

use imap_proto::{Flag, SeqOrSaved, StoreMode};
use store::{FlagMode, ModSeq, Op, OpResult, Uid};

use crate::resp::{Reply, store_error, to_store_flags, uid_set};
use crate::session::Session;

impl Session {
    pub(crate) async fn cmd_store(
        &mut self,
        uid: bool,
        set: &SeqOrSaved,
        mode: StoreMode,
        silent: bool,
        flags: &[Flag],
        unchanged_since: Option<u64>,
    ) -> Reply {
        let (_, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(sel) = self.selected.as_ref() else {
            return Reply::bad("No mailbox selected");
        };
        if sel.read_only {
            return Reply::no("[CANNOT] The mailbox is read-only (EXAMINE)");
        }
        let SeqOrSaved::Set(set) = set else {
            return Reply::bad("No saved search result ($)");
        };
        let idx = match sel.resolve(set, uid) {
            Ok(i) => i,
            Err(why) => return Reply::bad(why),
        };
        let flags = match to_store_flags(flags) {
            Ok(f) => f,
            Err(why) => return Reply::bad(why),
        };
        let uids: Vec<Uid> = idx
            .iter()
            .filter(|&&i| !sel.msgs[i].expunged && sel.msgs[i].entry.is_ok())
            .map(|&i| sel.msgs[i].uid)
            .collect();
        let damaged: Vec<u32> = idx
            .iter()
            .filter(|&&i| sel.msgs[i].entry.is_err())
            .map(|&i| sel.msgs[i].uid.0)
            .collect();
        if uids.is_empty() {
            if !damaged.is_empty() {
                return crate::resp::damaged(&damaged);
            }
            return Reply::ok("STORE completed");
        }
        let op = Op::Store {
            mailbox: sel.id,
            uids,
            mode: match mode {
                StoreMode::Replace => FlagMode::Replace,
                StoreMode::Add => FlagMode::Add,
                StoreMode::Remove => FlagMode::Remove,
            },
            flags,
            unchanged_since: unchanged_since.map(ModSeq),
        };
        let result = slot.execute_async(op).await;
        let Some(sel) = self.selected.as_mut() else {
            return Reply::bad("No mailbox selected");
        };
        let (updated, modified) = match result {
            Ok(OpResult::Stored { updated, modified }) => (updated, modified),
            Ok(_) => return Reply::no("[SERVERBUG] Unexpected store reply to STORE"),
            Err(e) => return store_error(&e),
        };
        let mut touched = Vec::with_capacity(updated.len());
        for (u, modseq, f) in updated {
            if let Some(i) = sel.update_flags(u, modseq, f) {
                touched.push(i);
            }
        }
        sel.refresh_keywords(&mut self.out);
        if !silent {
            touched.sort_unstable();
            for i in touched {
                sel.write_flags_fetch(&mut self.out, i, uid);
            }
        }
        if !damaged.is_empty() {
            return crate::resp::damaged(&damaged);
        }
        if !modified.is_empty() {
            let mut m: Vec<u32> = modified.iter().map(|u| u.0).collect();
            m.sort_unstable();
            return Reply::ok(format!(
                "[MODIFIED {}] Conditional STORE failed",
                uid_set(&m)
            ));
        }
        Reply::ok("STORE completed")
    }
}
