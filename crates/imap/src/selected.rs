//! The selected mailbox as this session sees it.
//!
//! IMAP sequence numbers are per session: they change only when this session tells the
//! client (EXPUNGE shifts later numbers down, EXISTS adds at the end). So the session
//! keeps its own list of messages (UID order = sequence order) with the last record it
//! read for each, and merges each fresh snapshot of the store into it:
//! - a record whose flags changed → untagged `FETCH (UID n FLAGS (...))`, any time;
//! - a UID gone from the store → marked expunged; the `EXPUNGE` is sent only where
//!   RFC 3501 7.4.1 allows it (never during FETCH, STORE or SEARCH), and until then the
//!   message keeps its sequence number (FETCH still serves the cached record);
//! - new UIDs (always above every known one: UIDs only grow) → appended, then `EXISTS`.
//!
//! Memory: one cached record per message (~120 bytes), bounded by the mailbox size.

use std::fmt::Write as _;

use imap_proto::{STAR, SequenceSet};
use store::{Entry, Flags, MailboxHeader, MailboxId, ModSeq, SystemFlags, Uid, UidValidity};

use crate::resp::write_flags;

/// One message in the session's view.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub uid: Uid,
    /// The record as last read; `Err` when it failed its checksum (FETCH answers
    /// `NO [SERVERBUG]` for it, the others keep working).
    pub entry: Entry,
    /// `\Recent` in this session.
    pub recent: bool,
    /// Gone from the store, EXPUNGE not yet sent.
    pub expunged: bool,
}

impl Msg {
    pub fn flags(&self) -> Option<&Flags> {
        self.entry.as_ref().ok().map(|r| &r.flags)
    }
}

fn entry_uid(e: &Entry) -> Uid {
    match e {
        Ok(r) => r.uid,
        Err(c) => c.uid,
    }
}

pub(crate) struct Selected {
    pub id: MailboxId,
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: UidValidity,
    pub uidnext: Uid,
    /// The header modseq of the snapshot last merged: an unchanged value means there is
    /// nothing new (every change to a mailbox raises it).
    pub highestmodseq: ModSeq,
    pub msgs: Vec<Msg>,
    /// How many messages the client believes exist.
    pub reported_exists: usize,
    reported_recent: usize,
    /// Keywords announced in the last `* FLAGS`.
    keywords: Vec<String>,
}

impl Selected {
    /// A fresh view; UIDs above `recent_above` are `\Recent` to this session.
    pub fn open(
        header: &MailboxHeader,
        entries: Vec<Entry>,
        recent_above: u32,
        read_only: bool,
    ) -> Selected {
        let msgs: Vec<Msg> = entries
            .into_iter()
            .map(|e| {
                let uid = entry_uid(&e);
                Msg {
                    uid,
                    entry: e,
                    recent: uid.0 > recent_above,
                    expunged: false,
                }
            })
            .collect();
        let mut s = Selected {
            id: header.id,
            name: header.name.clone(),
            read_only,
            uidvalidity: header.uidvalidity,
            uidnext: header.uidnext,
            highestmodseq: header.highestmodseq,
            reported_exists: msgs.len(),
            reported_recent: 0,
            msgs,
            keywords: Vec::new(),
        };
        s.keywords = s.keywords_in_use();
        s.reported_recent = s.recent_count();
        s
    }

    pub fn recent_count(&self) -> usize {
        self.msgs.iter().filter(|m| m.recent).count()
    }

    pub fn last_uid(&self) -> u32 {
        self.msgs.last().map_or(0, |m| m.uid.0)
    }

    fn keywords_in_use(&self) -> Vec<String> {
        let mut kws: Vec<String> = self.keywords.clone();
        for m in &self.msgs {
            if let Some(f) = m.flags() {
                for k in &f.keywords {
                    if !kws.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                        kws.push(k.clone());
                    }
                }
            }
        }
        kws
    }

    fn flag_list(&self, with_star: bool) -> String {
        let mut s = String::from("(\\Answered \\Flagged \\Deleted \\Seen \\Draft");
        for k in &self.keywords {
            s.push(' ');
            s.push_str(k);
        }
        if with_star {
            s.push_str(" \\*");
        }
        s.push(')');
        s
    }

    fn write_flag_lines(&self, out: &mut Vec<u8>) {
        let _ = write!(Lines(out), "* FLAGS {}\r\n", self.flag_list(false));
        if self.read_only {
            out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
        } else {
            let _ = write!(
                Lines(out),
                "* OK [PERMANENTFLAGS {}] Flags permitted\r\n",
                self.flag_list(true)
            );
        }
    }

    /// The untagged responses of SELECT/EXAMINE (RFC 3501 6.3.1).
    pub fn write_select_responses(&self, out: &mut Vec<u8>) {
        self.write_flag_lines(out);
        let _ = write!(
            Lines(out),
            "* {} EXISTS\r\n* {} RECENT\r\n",
            self.msgs.len(),
            self.reported_recent
        );
        if let Some(i) = self
            .msgs
            .iter()
            .position(|m| m.flags().is_some_and(|f| !f.system.has(SystemFlags::SEEN)))
        {
            let _ = write!(Lines(out), "* OK [UNSEEN {}] First unseen\r\n", i + 1);
        }
        let _ = write!(
            Lines(out),
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n",
            self.uidvalidity.0,
            self.uidnext.0
        );
    }

    /// Announces keywords that appeared since the last `* FLAGS` (RFC 3501 7.2.6).
    pub fn refresh_keywords(&mut self, out: &mut Vec<u8>) {
        let now = self.keywords_in_use();
        if now.len() != self.keywords.len() {
            self.keywords = now;
            self.write_flag_lines(out);
        }
    }

    /// Merges a fresh snapshot (`header` and its `entries`, read from one view) and
    /// writes the untagged responses it calls for. New UIDs above `recent_above` are
    /// `\Recent` here. EXPUNGEs are written only when `allow_expunge`.
    pub fn apply(
        &mut self,
        header: &MailboxHeader,
        entries: Vec<Entry>,
        recent_above: u32,
        allow_expunge: bool,
        out: &mut Vec<u8>,
    ) {
        self.name = header.name.clone();
        self.uidnext = header.uidnext;
        self.highestmodseq = header.highestmodseq;
        let old = std::mem::take(&mut self.msgs);
        let last_known = old.last().map_or(0, |m| m.uid.0);
        let mut fresh = entries.into_iter().peekable();
        let mut merged = Vec::with_capacity(old.len());
        let mut changed = Vec::new();
        for mut m in old {
            // A UID below a known one that we never saw cannot appear (UIDs only grow);
            // skip it rather than renumber what the client already knows.
            while fresh.peek().is_some_and(|e| entry_uid(e) < m.uid) {
                fresh.next();
            }
            match fresh.next_if(|e| entry_uid(e) == m.uid) {
                Some(e) => {
                    let differs = match (&m.entry, &e) {
                        (Ok(a), Ok(b)) => a.flags != b.flags,
                        (Err(_), Ok(_)) => true,
                        _ => false,
                    };
                    if differs && !m.expunged {
                        changed.push(merged.len());
                    }
                    m.entry = e;
                }
                None => m.expunged = true,
            }
            merged.push(m);
        }
        for e in fresh {
            let uid = entry_uid(&e);
            if uid.0 <= last_known {
                continue;
            }
            merged.push(Msg {
                uid,
                entry: e,
                recent: uid.0 > recent_above,
                expunged: false,
            });
        }
        self.msgs = merged;
        self.refresh_keywords(out);
        for i in changed {
            self.write_flags_fetch(out, i, true);
        }
        if allow_expunge {
            self.flush_expunges(out);
        }
        if self.msgs.len() > self.reported_exists {
            self.reported_exists = self.msgs.len();
            let _ = write!(Lines(out), "* {} EXISTS\r\n", self.msgs.len());
            // Like other servers, RECENT goes out with EXISTS only: expunges lower it
            // implicitly and clients count that themselves.
            self.reported_recent = self.recent_count();
            let _ = write!(Lines(out), "* {} RECENT\r\n", self.reported_recent);
        }
    }

    /// Sends the deferred EXPUNGEs (highest sequence number first, so each number is
    /// still valid when the client reads it).
    pub fn flush_expunges(&mut self, out: &mut Vec<u8>) {
        for i in (0..self.msgs.len()).rev() {
            if self.msgs[i].expunged {
                self.msgs.remove(i);
                self.reported_exists = self.reported_exists.saturating_sub(1);
                let _ = write!(Lines(out), "* {} EXPUNGE\r\n", i + 1);
            }
        }
    }

    /// `* n FETCH (UID u FLAGS (...))` for message index `i`.
    pub fn write_flags_fetch(&self, out: &mut Vec<u8>, i: usize, with_uid: bool) {
        let Some(m) = self.msgs.get(i) else { return };
        let Some(flags) = m.flags() else { return };
        let _ = write!(Lines(out), "* {} FETCH (", i + 1);
        if with_uid {
            let _ = write!(Lines(out), "UID {} ", m.uid.0);
        }
        out.extend_from_slice(b"FLAGS ");
        write_flags(out, flags, m.recent);
        out.extend_from_slice(b")\r\n");
    }

    pub fn index_of_uid(&self, uid: Uid) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }

    /// Records flags the store reported after this session's own STORE.
    pub fn update_flags(&mut self, uid: Uid, modseq: ModSeq, flags: Flags) -> Option<usize> {
        let i = self.index_of_uid(uid)?;
        if let Ok(r) = &mut self.msgs[i].entry {
            r.flags = flags;
            r.modseq = modseq;
        }
        Some(i)
    }

    /// Message indexes (0-based, ascending) named by a sequence set. Sequence numbers
    /// beyond the mailbox are an error; UIDs that do not exist are skipped (RFC 3501
    /// 6.4.8); `*` is the last message.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, String> {
        let n = self.msgs.len();
        let mut hit = vec![false; n];
        for r in &set.ranges {
            let (lo, hi) = if uid {
                let Some(max) = self.msgs.last().map(|m| m.uid.0) else {
                    break;
                };
                let a = if r.start == STAR { max } else { r.start };
                let b = if r.end == STAR { max } else { r.end };
                let (lo, hi) = (a.min(b), a.max(b));
                (
                    self.msgs.partition_point(|m| m.uid.0 < lo),
                    self.msgs.partition_point(|m| m.uid.0 <= hi),
                )
            } else {
                if n == 0 && (r.start == STAR || r.end == STAR) {
                    continue;
                }
                let conv = |x: u32| -> Result<usize, String> {
                    if x == STAR {
                        Ok(n)
                    } else if x == 0 || x as usize > n {
                        Err(format!(
                            "message sequence number {x} does not exist (the mailbox has {n} messages)"
                        ))
                    } else {
                        Ok(x as usize)
                    }
                };
                let (a, b) = (conv(r.start)?, conv(r.end)?);
                (a.min(b) - 1, a.max(b))
            };
            for h in &mut hit[lo..hi] {
                *h = true;
            }
        }
        Ok(hit
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i)
            .collect())
    }
}

/// `write!` into a byte buffer.
pub(crate) struct Lines<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Lines<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_proto::SeqRange;
    use store::{BlobHash, CorruptEntry, InternalDate, MessageRecord};

    fn header(uidnext: u32, modseq: u64) -> MailboxHeader {
        MailboxHeader {
            id: MailboxId(1),
            user: "u".into(),
            name: "INBOX".into(),
            uidvalidity: UidValidity(7),
            uidnext: Uid(uidnext),
            highestmodseq: ModSeq(modseq),
            exists: 0,
            unseen: 0,
            size_bytes: 0,
            digest: 0,
            special_use: 0,
        }
    }

    fn rec(uid: u32, sys: u8) -> Entry {
        Ok(MessageRecord {
            uid: Uid(uid),
            modseq: ModSeq(1),
            flags: Flags::new(sys, []),
            internaldate: InternalDate::default(),
            size: 10,
            blob: BlobHash([0; 32]),
        })
    }

    fn set(ranges: &[(u32, u32)]) -> SequenceSet {
        SequenceSet {
            ranges: ranges
                .iter()
                .map(|&(start, end)| SeqRange { start, end })
                .collect(),
        }
    }

    #[test]
    fn expunges_wait_until_allowed_and_keep_numbers_meanwhile() {
        let mut s = Selected::open(
            &header(4, 1),
            vec![rec(1, 0), rec(2, 0), rec(3, 0)],
            3,
            false,
        );
        let mut out = Vec::new();
        s.apply(
            &header(5, 2),
            vec![rec(1, 0), rec(3, SystemFlags::SEEN), rec(4, 0)],
            3,
            false,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n* 4 EXISTS\r\n* 1 RECENT\r\n"
        );
        assert_eq!(s.resolve(&set(&[(2, 2)]), false).unwrap(), vec![1]);
        let mut out = Vec::new();
        s.flush_expunges(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "* 2 EXPUNGE\r\n");
        assert_eq!(s.resolve(&set(&[(1, STAR)]), false).unwrap(), vec![0, 1, 2]);
        assert_eq!(s.resolve(&set(&[(4, STAR)]), true).unwrap(), vec![2]);
        assert_eq!(s.resolve(&set(&[(100, STAR)]), true).unwrap(), vec![2]);
        assert!(s.resolve(&set(&[(9, 9)]), false).is_err());
    }

    #[test]
    fn corrupt_entries_keep_their_sequence_number() {
        let bad: Entry = Err(CorruptEntry {
            uid: Uid(2),
            detail: "crc".into(),
        });
        let s = Selected::open(&header(4, 1), vec![rec(1, 0), bad, rec(3, 0)], 0, false);
        assert_eq!(s.msgs.len(), 3);
        assert_eq!(s.resolve(&set(&[(2, 3)]), true).unwrap(), vec![1, 2]);
    }
}
