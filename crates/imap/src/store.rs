//! STORE / UID STORE: `FLAGS`, `+FLAGS`, `-FLAGS` and their `.SILENT` forms, with RFC
//! 7162 `UNCHANGEDSINCE` (conditional STORE) and MODSEQ in the responses.
//!
//! The store applies the change in one durable write that assigns one new MODSEQ to
//! every message it changed (a message whose flags already were as asked keeps its
//! MODSEQ; nothing changed means no new MODSEQ at all). The untagged FETCH responses
//! show exactly what was committed, from the store's reply; the MODSEQ the write
//! assigned is noted in the view so the post-command catch-up does not report the same
//! change again. Once CONDSTORE is on, FETCH responses carry UID and MODSEQ, and
//! `.SILENT` still sends `FETCH (UID u MODSEQ (n))` for each changed message (RFC 7162
//! 3.1 and 3.1.3). Messages
//! failing UNCHANGEDSINCE are listed in `[MODIFIED ...]` (sequence numbers, or UIDs for
//! UID STORE). A damaged record is left alone and named in `NO [SERVERBUG]`; the other
//! messages are still stored.

use std::fmt::Write as _;

use imap_proto::{Flag, SeqOrSaved, StoreMode};
use store::{FlagMode, Flags, ModSeq, Op, OpResult, StoreError, Uid};

use crate::resp::{Reply, store_error, to_store_flags, uid_set, write_flags};
use crate::selected::{Lines, read_records};
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
        if unchanged_since.is_some() {
            // RFC 7162 3.1: a conditional STORE is a CONDSTORE-enabling command.
            self.enabled.condstore = true;
        }
        // Messages already known to be expunged are skipped (there is nothing to store
        // into); the store itself skips any expunged meanwhile.
        let uids: Vec<Uid> = idx
            .iter()
            .map(|&i| sel.uid_at(i))
            .filter(|u| !sel.is_expunged(*u))
            .collect();
        if uids.is_empty() {
            return Reply::ok("STORE completed");
        }
        let id = sel.id;
        let store_mode = match mode {
            StoreMode::Replace => FlagMode::Replace,
            StoreMode::Add => FlagMode::Add,
            StoreMode::Remove => FlagMode::Remove,
        };
        let op = |uids: Vec<Uid>| Op::Store {
            mailbox: id,
            uids,
            mode: store_mode,
            flags: flags.clone(),
            unchanged_since: unchanged_since.map(ModSeq),
        };
        let mut damaged = Vec::new();
        let mut result = slot.execute_async(op(uids.clone())).await;
        if let Err(e) = &result
            && e.is_corruption()
        {
            // One damaged record fails the whole write: find which, store the rest.
            let header = match slot.view().mailbox(id) {
                Ok(Some(h)) => h,
                Ok(None) => return Reply::no("[NONEXISTENT] The selected mailbox was deleted"),
                Err(e) => return store_error(&e),
            };
            match damaged_among(&slot, &header, &uids) {
                Ok(d) => damaged = d,
                Err(e) => return store_error(&e),
            }
            let rest: Vec<Uid> = uids
                .into_iter()
                .filter(|u| !damaged.contains(&u.0))
                .collect();
            result = if rest.is_empty() {
                Ok(OpResult::Stored {
                    updated: Vec::new(),
                    modified: Vec::new(),
                    modseq: None,
                })
            } else {
                slot.execute_async(op(rest)).await
            };
        }
        let (updated, modified, ours) = match result {
            Ok(OpResult::Stored {
                updated,
                modified,
                modseq,
            }) => (updated, modified, modseq),
            Ok(_) => return Reply::no("[SERVERBUG] Unexpected store reply to STORE"),
            Err(e) => return store_error(&e),
        };
        let modes = self.enabled;
        let Some(sel) = self.selected.as_mut() else {
            return Reply::bad("No mailbox selected");
        };
        if let Some(m) = ours {
            sel.note_own_change(m);
        }
        let mut responses: Vec<(usize, Uid, ModSeq, Flags)> = Vec::with_capacity(updated.len());
        for (u, m, f) in updated {
            sel.note_keywords(&f, &mut self.out);
            if let Some(i) = sel.index_of_uid(u) {
                responses.push((i, u, m, f));
            }
        }
        responses.sort_unstable_by_key(|r| r.0);
        for (i, u, m, f) in responses {
            let changed_here = Some(m) == ours;
            if silent && !(modes.condstore && changed_here) {
                continue;
            }
            let _ = write!(Lines(&mut self.out), "* {} FETCH (", i + 1);
            // RFC 7162 3.1: once CONDSTORE is on, FETCHes caused by a STORE carry the
            // UID as well as the MODSEQ.
            if uid || modes.condstore {
                let _ = write!(Lines(&mut self.out), "UID {} ", u.0);
            }
            if !silent {
                self.out.extend_from_slice(b"FLAGS ");
                write_flags(&mut self.out, &f, !modes.rev2 && sel.is_recent(u));
                if modes.condstore {
                    self.out.push(b' ');
                }
            }
            if modes.condstore {
                let _ = write!(Lines(&mut self.out), "MODSEQ ({})", m.0);
            }
            self.out.extend_from_slice(b")\r\n");
        }
        if !damaged.is_empty() {
            return crate::resp::damaged(&damaged);
        }
        if !modified.is_empty() {
            // RFC 7162 3.1.3: sequence numbers for STORE, UIDs for UID STORE.
            let mut m: Vec<u32> = modified
                .iter()
                .filter_map(|u| {
                    if uid {
                        Some(u.0)
                    } else {
                        sel.index_of_uid(*u).map(|i| i as u32 + 1)
                    }
                })
                .collect();
            m.sort_unstable();
            return Reply::ok(format!(
                "[MODIFIED {}] Conditional STORE failed",
                uid_set(&m)
            ));
        }
        Reply::ok("STORE completed")
    }
}

/// The UIDs among `uids` whose records fail verification.
fn damaged_among(
    slot: &store::Slot,
    header: &store::MailboxHeader,
    uids: &[Uid],
) -> Result<Vec<u32>, StoreError> {
    let mut out = Vec::new();
    for chunk in uids.chunks(crate::selected::SCAN_CHUNK) {
        for e in read_records(&slot.view(), header, chunk)?
            .into_iter()
            .flatten()
        {
            if let Err(c) = e {
                out.push(c.uid.0);
            }
        }
    }
    Ok(out)
}
