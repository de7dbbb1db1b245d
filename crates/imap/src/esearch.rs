//! ESEARCH (RFC 4731) responses and SEARCHRES (RFC 5182): `SEARCH RETURN (SAVE)` keeps
//! the result, and `$` stands for it in later commands.
//!
//! `$` is replaced by a concrete set before a command runs ([`Session::substitute_saved`]),
//! so FETCH, STORE, COPY, MOVE, UID EXPUNGE, SEARCH, SORT and THREAD need no code of
//! their own for it: in a UID context it becomes the saved UIDs, in a sequence context
//! the current sequence numbers of the saved messages still present. The result is kept
//! as UIDs, so expunges and new messages in between cannot make it name the wrong
//! messages (RFC 5182 2.1). It is reset when a mailbox is selected.

use std::fmt::Write as _;

use imap_proto::{CommandKind, SearchKey, SearchReturn, SeqOrSaved, SeqRange, SequenceSet};
use store::Uid;

use crate::selected::Lines;
use crate::session::Session;

/// Ascending numbers as a compact sequence set (`1:3,7`); empty input gives no ranges.
fn to_set(nums: &[u32]) -> SequenceSet {
    let mut ranges: Vec<SeqRange> = Vec::new();
    for &n in nums {
        match ranges.last_mut() {
            Some(r) if r.end.checked_add(1) == Some(n) => r.end = n,
            _ => ranges.push(SeqRange { start: n, end: n }),
        }
    }
    SequenceSet { ranges }
}

impl Session {
    /// The saved result as a set: UIDs, or the current sequence numbers of the saved
    /// messages still in the view.
    fn saved_set(&self, uid: bool) -> SequenceSet {
        if uid {
            let uids: Vec<u32> = self.ext.saved.iter().map(|u| u.0).collect();
            return to_set(&uids);
        }
        let Some(sel) = self.selected.as_ref() else {
            return SequenceSet { ranges: Vec::new() };
        };
        let seqs: Vec<u32> = self
            .ext
            .saved
            .iter()
            .filter_map(|u| sel.index_of_uid(*u))
            .map(|i| i as u32 + 1)
            .collect();
        to_set(&seqs)
    }

    fn fill(&self, set: &mut SeqOrSaved, uid: bool) {
        if matches!(set, SeqOrSaved::Saved) {
            *set = SeqOrSaved::Set(self.saved_set(uid));
        }
    }

    fn fill_keys(&self, keys: &mut [SearchKey]) {
        for k in keys {
            match k {
                SearchKey::Uid(set) => self.fill(set, true),
                SearchKey::Seq(set) => self.fill(set, false),
                SearchKey::Not(k) => self.fill_keys(std::slice::from_mut(k)),
                SearchKey::Or(a, b) => {
                    self.fill_keys(std::slice::from_mut(a));
                    self.fill_keys(std::slice::from_mut(b));
                }
                SearchKey::And(keys) => self.fill_keys(keys),
                _ => {}
            }
        }
    }

    /// Replaces every `$` in a selected-state command by the saved search result.
    pub(crate) fn substitute_saved(&self, mut kind: CommandKind) -> CommandKind {
        if self.selected.is_none() {
            return kind;
        }
        match &mut kind {
            CommandKind::Fetch { uid, args } => self.fill(&mut args.set, *uid),
            CommandKind::Store { uid, set, .. }
            | CommandKind::Copy { uid, set, .. }
            | CommandKind::Move { uid, set, .. } => self.fill(set, *uid),
            CommandKind::UidExpunge(set) => self.fill(set, true),
            CommandKind::Search { args, .. } => self.fill_keys(&mut args.keys),
            CommandKind::Sort { keys, .. } | CommandKind::Thread { keys, .. } => {
                self.fill_keys(keys)
            }
            _ => {}
        }
        kind
    }

    /// Writes the ESEARCH response for `hits` (`(seq, uid)` ascending) and saves the
    /// result when asked. `modseq`: the RFC 7162 MODSEQ to report, if any.
    pub(crate) fn finish_esearch(
        &mut self,
        tag: &str,
        uid: bool,
        ret: &SearchReturn,
        hits: &[(u32, u32)],
        modseq: Option<u64>,
    ) {
        let nums: Vec<u32> = hits
            .iter()
            .map(|&(seq, u)| if uid { u } else { seq })
            .collect();
        // RFC 4731: `RETURN ()` means ALL.
        let plain_all = !(ret.min || ret.max || ret.count || ret.all || ret.save);
        if ret.save {
            // RFC 5182 2.4: with only MIN and/or MAX, only those messages are saved.
            let saved: Vec<Uid> = if !ret.all && !ret.count && (ret.min || ret.max) {
                let mut v = Vec::new();
                if ret.min
                    && let Some(h) = hits.first()
                {
                    v.push(Uid(h.1));
                }
                if ret.max
                    && let Some(h) = hits.last()
                    && v.last() != Some(&Uid(h.1))
                {
                    v.push(Uid(h.1));
                }
                v
            } else {
                hits.iter().map(|h| Uid(h.1)).collect()
            };
            self.ext.saved = saved;
            if !(ret.min || ret.max || ret.count || ret.all) {
                // RFC 5182 2.4: SAVE alone returns no ESEARCH response.
                return;
            }
        }
        let mut line = Vec::new();
        let _ = write!(Lines(&mut line), "* ESEARCH (TAG \"{tag}\")");
        if uid {
            line.extend_from_slice(b" UID");
        }
        if let (Some(first), Some(last)) = (nums.first(), nums.last()) {
            if ret.min {
                let _ = write!(Lines(&mut line), " MIN {first}");
            }
            if ret.max {
                let _ = write!(Lines(&mut line), " MAX {last}");
            }
        }
        if ret.count {
            let _ = write!(Lines(&mut line), " COUNT {}", nums.len());
        }
        if (ret.all || plain_all) && !nums.is_empty() {
            let _ = write!(Lines(&mut line), " ALL {}", crate::resp::uid_set(&nums));
        }
        if let Some(m) = modseq {
            let _ = write!(Lines(&mut line), " MODSEQ {m}");
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_compress_runs() {
        let s = to_set(&[1, 2, 3, 7, 9, 10]);
        assert_eq!(imap_proto::write::write_seq_set(&s), "1:3,7,9:10");
        assert!(to_set(&[]).ranges.is_empty());
    }
}
