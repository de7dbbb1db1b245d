//! The selected mailbox as this session sees it, and how it catches up with the store.
//!
//! IMAP sequence numbers are per session: they change only when this session tells the
//! client (EXPUNGE/VANISHED shifts later numbers down, EXISTS adds at the end). So the
//! session keeps exactly what it must to number messages, and nothing it can re-read:
//! - `uids`: the UID of each sequence number (`uids[seq - 1]`), 4 bytes per message;
//! - `pending`: UIDs gone from the store whose EXPUNGE has not been sent yet (RFC 3501
//!   7.4.1 forbids it during FETCH, STORE and SEARCH); they keep their sequence number
//!   until then, and commands that need their record report them as expunged;
//! - `highestmodseq`: the mailbox MODSEQ up to which every change has been merged;
//! - `recent`: UID ranges that are `\Recent` in this session (IMAP4rev1 only);
//! - `keywords`: the keywords announced in the last `* FLAGS`.
//!
//! Flags, dates and sizes are never cached: commands read the current records from a
//! store snapshot. Catching up ([`Selected::read_delta`] then [`Selected::apply_delta`])
//! reads only what changed: `SlotView::changes_since(highestmodseq)` lists each message
//! appended or re-flagged since (its record is read) and each expunge (a tombstone).
//! When the tombstones needed may have been pruned (`SlotView::vanished_floor`), or the
//! change log cannot be read, the view is compared with every record instead: slower,
//! same answer. The untagged responses a catch-up produces, in order: `* FLAGS` if a new
//! keyword appeared, `FETCH (UID FLAGS [MODSEQ])` per changed message, the deferred
//! `EXPUNGE`s (or one `VANISHED` once QRESYNC is enabled) if allowed, then `EXISTS`
//! (and `RECENT` for IMAP4rev1) if messages arrived.
//!
//! Memory: 4 bytes per message plus a few small vectors; 6,000 messages ≈ 24 KiB.

use std::fmt::Write as _;

use imap_proto::{QResync, STAR, SequenceSet};
use store::{
    ChangeKind, CorruptEntry, Entry, Flags, MailboxHeader, MailboxId, ModSeq, SlotView, StoreError,
    SystemFlags, Uid, UidValidity,
};

use crate::resp::{Reply, store_error, uid_set, write_flags};
use crate::session::{Enabled, Session};

/// Records read per store call while walking a whole mailbox.
pub(crate) const SCAN_CHUNK: usize = 4096;
/// Keywords announced in `* FLAGS` at most; past it new keywords still work (PERMANENTFLAGS
/// has `\*`) but are not listed, so a mailbox full of junk keywords cannot grow the list
/// without bound.
const KEYWORDS_ANNOUNCED_MAX: usize = 1000;
/// `\Recent` UID ranges kept per session; past it the oldest range is forgotten (those
/// messages stop being `\Recent` here, which RFC 3501 tolerates).
const RECENT_RANGES_MAX: usize = 64;

/// What a whole-mailbox scan at SELECT time found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub uids: Vec<u32>,
    /// 0-based index of the first message without `\Seen`.
    pub first_unseen: Option<usize>,
    pub keywords: Vec<String>,
}

/// Reads every record of a mailbox once, in bounded chunks.
pub(crate) fn scan_mailbox(view: &SlotView, header: &MailboxHeader) -> Result<Scan, StoreError> {
    let mut scan = Scan {
        uids: Vec::with_capacity(header.exists as usize),
        ..Scan::default()
    };
    for_each_entry(view, header, |e| {
        if let Ok(r) = &e {
            if scan.first_unseen.is_none() && !r.flags.system.has(SystemFlags::SEEN) {
                scan.first_unseen = Some(scan.uids.len());
            }
            add_keywords(&mut scan.keywords, &r.flags);
        }
        scan.uids.push(entry_uid(&e).0);
    })?;
    scan.uids.shrink_to_fit();
    Ok(scan)
}

/// Calls `f` with every message of a mailbox in UID order, read in chunks of
/// `SCAN_CHUNK` records so memory stays bounded however large the mailbox.
fn for_each_entry(
    view: &SlotView,
    header: &MailboxHeader,
    mut f: impl FnMut(Entry),
) -> Result<(), StoreError> {
    let mut from = Uid(1);
    loop {
        let chunk = view.messages_range(header, from, Uid(u32::MAX), SCAN_CHUNK)?;
        let full = chunk.len() == SCAN_CHUNK;
        let mut next = None;
        for e in chunk {
            next = entry_uid(&e).0.checked_add(1);
            f(e);
        }
        match next {
            Some(n) if full => from = Uid(n),
            _ => return Ok(()),
        }
    }
}

pub(crate) fn add_keywords(list: &mut Vec<String>, flags: &Flags) -> bool {
    let mut added = false;
    for k in &flags.keywords {
        if list.len() < KEYWORDS_ANNOUNCED_MAX && !list.iter().any(|x| x.eq_ignore_ascii_case(k)) {
            list.push(k.clone());
            added = true;
        }
    }
    added
}

pub(crate) fn entry_uid(e: &Entry) -> Uid {
    match e {
        Ok(r) => r.uid,
        Err(c) => c.uid,
    }
}

/// The current records of `uids` (ascending), one per uid: `None` when the message is
/// no longer in the store. Dense lists are read with one range scan, sparse ones with
/// point reads. Callers bound `uids` (they pass chunks).
pub(crate) fn read_records(
    view: &SlotView,
    header: &MailboxHeader,
    uids: &[Uid],
) -> Result<Vec<Option<Entry>>, StoreError> {
    let (Some(first), Some(last)) = (uids.first(), uids.last()) else {
        return Ok(Vec::new());
    };
    let span = u64::from(last.0 - first.0) + 1;
    if span <= (uids.len() as u64).saturating_mul(4) {
        let found = view.messages_range(header, *first, *last, usize::MAX)?;
        let mut it = found.into_iter().peekable();
        let mut out = Vec::with_capacity(uids.len());
        for u in uids {
            while it.peek().is_some_and(|e| entry_uid(e) < *u) {
                it.next();
            }
            out.push(it.next_if(|e| entry_uid(e) == *u));
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(uids.len());
    for u in uids {
        out.push(match view.message(header, *u) {
            Ok(r) => r.map(Ok),
            Err(e) if e.is_corruption() => Some(Err(CorruptEntry {
                uid: *u,
                detail: e.to_string(),
            })),
            Err(e) => return Err(e),
        });
    }
    Ok(out)
}

/// Does `set` (UIDs, `*` = `max`) contain `uid`?
pub(crate) fn set_contains(set: &SequenceSet, uid: u32, max: u32) -> bool {
    set.ranges.iter().any(|r| {
        let a = if r.start == STAR { max } else { r.start };
        let b = if r.end == STAR { max } else { r.end };
        a.min(b) <= uid && uid <= a.max(b)
    })
}

/// What changed in the store since the view's `highestmodseq` (see the module docs).
#[derive(Debug)]
pub(crate) struct Delta {
    pub name: String,
    pub uidnext: Uid,
    pub highestmodseq: ModSeq,
    /// Current records of known messages whose flags changed (not by this session's own
    /// STORE), ascending by UID.
    pub changed: Vec<Entry>,
    /// New messages, ascending, all above every UID of the view.
    pub new: Vec<Uid>,
    /// Keywords the new messages carry.
    pub new_keywords: Flags,
    /// Known messages now gone from the store, ascending.
    pub expunged: Vec<u32>,
}

impl Default for Delta {
    fn default() -> Self {
        Delta {
            name: String::new(),
            uidnext: Uid(1),
            highestmodseq: ModSeq(0),
            changed: Vec::new(),
            new: Vec::new(),
            new_keywords: Flags::default(),
            expunged: Vec::new(),
        }
    }
}

pub(crate) struct Selected {
    pub id: MailboxId,
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: UidValidity,
    pub uidnext: Uid,
    /// Every change up to this MODSEQ has been merged (and, where allowed, reported).
    pub highestmodseq: ModSeq,
    uids: Vec<u32>,
    /// Sorted UIDs of `uids` gone from the store, EXPUNGE not yet sent.
    pending: Vec<u32>,
    /// How many messages the client believes exist.
    reported_exists: usize,
    /// Inclusive UID ranges that are `\Recent` in this session.
    recent: Vec<(u32, u32)>,
    /// Keywords announced in the last `* FLAGS`.
    keywords: Vec<String>,
    /// MODSEQs assigned by this session's own STOREs since the last catch-up: their
    /// FETCH responses were already sent, so the catch-up skips those changes.
    own: Vec<ModSeq>,
}

/// `* n FETCH (UID u FLAGS (...) MODSEQ (m))` as sent for a flag change.
pub(crate) fn write_flag_change(
    out: &mut Vec<u8>,
    seq: usize,
    rec: &store::MessageRecord,
    recent: bool,
    modes: &Enabled,
) {
    let _ = write!(Lines(out), "* {seq} FETCH (UID {} FLAGS ", rec.uid.0);
    write_flags(out, &rec.flags, recent && !modes.rev2);
    if modes.condstore {
        let _ = write!(Lines(out), " MODSEQ ({})", rec.modseq.0);
    }
    out.extend_from_slice(b")\r\n");
}

impl Selected {
    /// A fresh view of `scan`; UIDs above `recent_above` are `\Recent` to this session
    /// (`None`: none are, as for IMAP4rev2 clients).
    pub fn open(
        header: &MailboxHeader,
        scan: Scan,
        recent_above: Option<u32>,
        read_only: bool,
    ) -> Selected {
        let mut s = Selected {
            id: header.id,
            name: header.name.clone(),
            read_only,
            uidvalidity: header.uidvalidity,
            uidnext: header.uidnext,
            highestmodseq: header.highestmodseq,
            reported_exists: scan.uids.len(),
            uids: scan.uids,
            pending: Vec::new(),
            recent: Vec::new(),
            keywords: scan.keywords,
            own: Vec::new(),
        };
        if let Some(above) = recent_above
            && s.last_uid() > above
        {
            s.recent.push((above + 1, s.last_uid()));
        }
        s
    }

    /// Messages the client knows about (sequence numbers `1..=len`), those expunged but
    /// not yet reported included.
    pub fn len(&self) -> usize {
        self.uids.len()
    }

    pub fn uid_at(&self, i: usize) -> Uid {
        Uid(self.uids.get(i).copied().unwrap_or(0))
    }

    pub fn last_uid(&self) -> u32 {
        self.uids.last().copied().unwrap_or(0)
    }

    pub fn index_of_uid(&self, uid: Uid) -> Option<usize> {
        self.uids.binary_search(&uid.0).ok()
    }

    /// Gone from the store, EXPUNGE not yet sent: the message keeps its number but has
    /// no record any more.
    pub fn is_expunged(&self, uid: Uid) -> bool {
        self.pending.binary_search(&uid.0).is_ok()
    }

    pub fn is_recent(&self, uid: Uid) -> bool {
        self.recent.iter().any(|&(a, b)| a <= uid.0 && uid.0 <= b)
    }

    pub fn recent_count(&self) -> usize {
        self.recent
            .iter()
            .map(|&(a, b)| {
                self.uids.partition_point(|&u| u <= b) - self.uids.partition_point(|&u| u < a)
            })
            .sum()
    }

    /// Notes a MODSEQ this session's own write assigned (its FETCH responses are sent by
    /// the command itself).
    pub fn note_own_change(&mut self, modseq: ModSeq) {
        if !self.own.contains(&modseq) {
            self.own.push(modseq);
        }
    }

    /// Announces keywords of `flags` not announced yet (RFC 3501 7.2.6).
    pub fn note_keywords(&mut self, flags: &Flags, out: &mut Vec<u8>) {
        if add_keywords(&mut self.keywords, flags) {
            self.write_flag_lines(out);
        }
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

    /// The untagged responses of SELECT/EXAMINE: RFC 3501 6.3.1 for IMAP4rev1 (with
    /// RECENT and UNSEEN), RFC 9051 6.3.2 for IMAP4rev2 (neither; the LIST line is the
    /// caller's), plus RFC 7162 HIGHESTMODSEQ, always (the store keeps MODSEQs for every
    /// mailbox, so NOMODSEQ never applies).
    pub fn write_select_responses(
        &self,
        out: &mut Vec<u8>,
        first_unseen: Option<usize>,
        modes: &Enabled,
    ) {
        self.write_flag_lines(out);
        let _ = write!(Lines(out), "* {} EXISTS\r\n", self.uids.len());
        if !modes.rev2 {
            let _ = write!(Lines(out), "* {} RECENT\r\n", self.recent_count());
            if let Some(i) = first_unseen {
                let _ = write!(Lines(out), "* OK [UNSEEN {}] First unseen\r\n", i + 1);
            }
        }
        let _ = write!(
            Lines(out),
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n\
             * OK [HIGHESTMODSEQ {}] Highest\r\n",
            self.uidvalidity.0,
            self.uidnext.0,
            self.highestmodseq.0
        );
    }

    /// Reads what changed in the store since `highestmodseq`. `view` and `header` must
    /// come from one snapshot.
    pub fn read_delta(&self, view: &SlotView, header: &MailboxHeader) -> Result<Delta, StoreError> {
        let mut d = Delta {
            name: header.name.clone(),
            uidnext: header.uidnext,
            highestmodseq: header.highestmodseq,
            ..Delta::default()
        };
        if header.highestmodseq <= self.highestmodseq {
            return Ok(d);
        }
        let since = self.highestmodseq;
        let last = self.last_uid();
        let exact = since >= view.vanished_floor(header);
        let changes = if exact {
            view.changes_since(header.id, since).ok()
        } else {
            None
        };
        let Some(changes) = changes else {
            return self.read_delta_by_scan(view, header, d);
        };
        let mut changed = Vec::new();
        for (uid, modseq, kind) in changes {
            match kind {
                ChangeKind::Changed if uid.0 > last => d.new.push(uid),
                ChangeKind::Changed => {
                    if !self.own.contains(&modseq)
                        && self.index_of_uid(uid).is_some()
                        && !self.is_expunged(uid)
                    {
                        changed.push(uid);
                    }
                }
                ChangeKind::Expunged => {
                    if uid.0 <= last && self.index_of_uid(uid).is_some() && !self.is_expunged(uid) {
                        d.expunged.push(uid.0);
                    }
                }
            }
        }
        changed.sort_unstable();
        changed.dedup();
        d.new.sort_unstable();
        d.new.dedup();
        d.expunged.sort_unstable();
        d.expunged.dedup();
        d.changed = read_records(view, header, &changed)?
            .into_iter()
            .flatten()
            .collect();
        for r in read_records(view, header, &d.new)?
            .into_iter()
            .flatten()
            .flatten()
        {
            for k in r.flags.keywords {
                d.new_keywords.add_keyword(&k);
            }
        }
        Ok(d)
    }

    /// [`Selected::read_delta`] by comparing the view with every record (MODSEQs tell
    /// which flags changed): used when the change log cannot answer.
    fn read_delta_by_scan(
        &self,
        view: &SlotView,
        header: &MailboxHeader,
        mut d: Delta,
    ) -> Result<Delta, StoreError> {
        let since = self.highestmodseq;
        let last = self.last_uid();
        let mut known = self.uids.iter().copied().peekable();
        for_each_entry(view, header, |e| {
            let uid = entry_uid(&e);
            while let Some(k) = known.next_if(|&k| k < uid.0) {
                if !self.is_expunged(Uid(k)) {
                    d.expunged.push(k);
                }
            }
            let is_known = known.next_if(|&k| k == uid.0).is_some();
            if uid.0 > last {
                if let Ok(r) = &e {
                    for k in &r.flags.keywords {
                        d.new_keywords.add_keyword(k);
                    }
                }
                d.new.push(uid);
            } else if is_known
                && !self.is_expunged(uid)
                && let Ok(r) = &e
                && r.modseq > since
                && !self.own.contains(&r.modseq)
            {
                d.changed.push(e);
            }
        })?;
        for k in known {
            if !self.is_expunged(Uid(k)) {
                d.expunged.push(k);
            }
        }
        Ok(d)
    }

    /// Merges a delta and writes the untagged responses it calls for. `claim_recent(last)`
    /// is asked, when messages arrived, which UIDs some other session already saw (those
    /// above its answer are `\Recent` here). EXPUNGEs are written only when
    /// `allow_expunge`. Returns how many expunges were sent.
    pub fn apply_delta(
        &mut self,
        d: Delta,
        claim_recent: &mut dyn FnMut(u32) -> Option<u32>,
        allow_expunge: bool,
        modes: &Enabled,
        out: &mut Vec<u8>,
    ) -> usize {
        self.name = d.name;
        self.uidnext = d.uidnext;
        self.highestmodseq = self.highestmodseq.max(d.highestmodseq);
        self.own.clear();
        let mut kw_added = add_keywords(&mut self.keywords, &d.new_keywords);
        for r in d.changed.iter().flatten() {
            kw_added |= add_keywords(&mut self.keywords, &r.flags);
        }
        if kw_added {
            self.write_flag_lines(out);
        }
        for r in d.changed.iter().flatten() {
            if let Some(i) = self.index_of_uid(r.uid) {
                write_flag_change(out, i + 1, r, self.is_recent(r.uid), modes);
            }
        }
        if !d.expunged.is_empty() {
            self.pending.extend(d.expunged);
            self.pending.sort_unstable();
            self.pending.dedup();
        }
        if let Some(&new_last) = d.new.last() {
            let above = claim_recent(new_last.0).unwrap_or(0).max(self.last_uid());
            if !modes.rev2 && new_last.0 > above {
                self.add_recent(above + 1, new_last.0);
            }
            self.uids.extend(d.new.iter().map(|u| u.0));
        }
        let flushed = if allow_expunge {
            self.flush_expunges(modes, out)
        } else {
            0
        };
        if self.uids.len() > self.reported_exists {
            self.reported_exists = self.uids.len();
            let _ = write!(Lines(out), "* {} EXISTS\r\n", self.uids.len());
            if !modes.rev2 {
                // Like other servers, RECENT goes out with EXISTS only: expunges lower
                // it implicitly and clients count that themselves.
                let _ = write!(Lines(out), "* {} RECENT\r\n", self.recent_count());
            }
        }
        flushed
    }

    fn add_recent(&mut self, a: u32, b: u32) {
        match self.recent.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(a) => last.1 = b,
            _ => {
                if self.recent.len() >= RECENT_RANGES_MAX {
                    self.recent.remove(0);
                }
                self.recent.push((a, b));
            }
        }
    }

    /// Sends the deferred expunges: one `VANISHED` once QRESYNC is on (RFC 7162 3.2.10),
    /// else an `EXPUNGE` each, highest sequence number first (each number is still valid
    /// when the client reads it). Returns how many were sent.
    pub fn flush_expunges(&mut self, modes: &Enabled, out: &mut Vec<u8>) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut gone = 0;
        if modes.qresync {
            let _ = write!(Lines(out), "* VANISHED {}\r\n", uid_set(&pending));
            gone = pending.len();
        } else {
            for u in pending.iter().rev() {
                if let Ok(i) = self.uids.binary_search(u) {
                    let _ = write!(Lines(out), "* {} EXPUNGE\r\n", i + 1);
                    gone += 1;
                }
            }
        }
        self.uids.retain(|u| pending.binary_search(u).is_err());
        self.reported_exists = self.reported_exists.saturating_sub(gone);
        gone
    }

    /// Message indexes (0-based, ascending) named by a sequence set. Sequence numbers
    /// beyond the mailbox are an error; UIDs that do not exist are skipped (RFC 3501
    /// 6.4.8); `*` is the last message.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, String> {
        let n = self.uids.len();
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(set.ranges.len());
        for r in &set.ranges {
            let (lo, hi) = if uid {
                let Some(&max) = self.uids.last() else {
                    break;
                };
                let a = if r.start == STAR { max } else { r.start };
                let b = if r.end == STAR { max } else { r.end };
                let (lo, hi) = (a.min(b), a.max(b));
                (
                    self.uids.partition_point(|&u| u < lo),
                    self.uids.partition_point(|&u| u <= hi),
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
            if lo < hi {
                spans.push((lo, hi));
            }
        }
        // Merge the spans instead of marking a bitmap: O(ranges log ranges + hits), not
        // O(mailbox), for the common `UID FETCH 4711` on a large mailbox.
        spans.sort_unstable();
        let mut out = Vec::new();
        let mut next = 0;
        for (lo, hi) in spans {
            for i in lo.max(next)..hi {
                out.push(i);
            }
            next = next.max(hi);
        }
        Ok(out)
    }
}

/// `1:3,7` from ascending inclusive ranges.
pub(crate) fn ranges_text(ranges: &[(u32, u32)]) -> String {
    let mut out = String::new();
    for &(a, b) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            let _ = write!(out, "{a}");
        } else {
            let _ = write!(out, "{a}:{b}");
        }
    }
    out
}

/// Ascending numbers as inclusive ranges.
fn to_ranges(nums: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nums {
        match out.last_mut() {
            Some(r) if r.1.checked_add(1) == Some(n) => r.1 = n,
            Some(r) if r.1 >= n => {}
            _ => out.push((n, n)),
        }
    }
    out
}

/// The UIDs of `known` (all when `None`; `*` is the last UID ever assigned) that are
/// below `uidnext` and not in `live` (ascending), as ranges.
fn complement(known: Option<&SequenceSet>, uidnext: Uid, live: &[Uid]) -> Vec<(u32, u32)> {
    let max = uidnext.0.saturating_sub(1);
    if max == 0 {
        return Vec::new();
    }
    let mut spans: Vec<(u32, u32)> = match known {
        None => vec![(1, max)],
        Some(set) => set
            .ranges
            .iter()
            .map(|r| {
                let a = if r.start == STAR { max } else { r.start };
                let b = if r.end == STAR { max } else { r.end };
                (a.min(b).max(1), a.max(b).min(max))
            })
            .filter(|(a, b)| a <= b)
            .collect(),
    };
    spans.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match merged.last_mut() {
            Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = Vec::new();
    for (lo, hi) in merged {
        let mut cur = lo;
        let start = live.partition_point(|u| u.0 < lo);
        for u in live[start..].iter().take_while(|u| u.0 <= hi) {
            if u.0 > cur {
                out.push((cur, u.0 - 1));
            }
            cur = u.0 + 1;
        }
        if cur <= hi {
            out.push((cur, hi));
        }
    }
    out
}

/// The UIDs of `known` (all when `None`) expunged after `since`, as ascending ranges,
/// for `VANISHED (EARLIER)`. Exact from the tombstones when they reach back that far
/// (`SlotView::vanished_floor`); past that bound, every UID of `known` below UIDNEXT that
/// is not in the mailbox now, which includes UIDs expunged before `since` (RFC 7162
/// 3.2.5.2 allows that: the client ignores UIDs it already removed).
pub(crate) fn vanished_since(
    view: &SlotView,
    header: &MailboxHeader,
    since: ModSeq,
    known: Option<&SequenceSet>,
) -> Result<Vec<(u32, u32)>, StoreError> {
    let max = header.uidnext.0.saturating_sub(1);
    if since >= view.vanished_floor(header)
        && let Ok(changes) = view.changes_since(header.id, since)
    {
        let mut gone: Vec<u32> = changes
            .into_iter()
            .filter(|c| c.2 == ChangeKind::Expunged)
            .map(|c| c.0.0)
            .filter(|&u| known.is_none_or(|k| set_contains(k, u, max)))
            .collect();
        gone.sort_unstable();
        return Ok(to_ranges(&gone));
    }
    let live = view.message_uids(header.id)?;
    Ok(complement(known, header.uidnext, &live))
}

/// Current records of the messages changed (flags, or appended) after `since`, in UID
/// order: from the change log, or by reading every record when it cannot be read.
pub(crate) fn changed_since(
    view: &SlotView,
    header: &MailboxHeader,
    since: ModSeq,
) -> Result<Vec<Entry>, StoreError> {
    if let Ok(changes) = view.changes_since(header.id, since) {
        let mut uids: Vec<Uid> = changes
            .into_iter()
            .filter(|c| c.2 == ChangeKind::Changed)
            .map(|c| c.0)
            .collect();
        uids.sort_unstable();
        uids.dedup();
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(SCAN_CHUNK) {
            out.extend(read_records(view, header, chunk)?.into_iter().flatten());
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for_each_entry(view, header, |e| {
        if matches!(&e, Ok(r) if r.modseq > since) {
            out.push(e);
        }
    })?;
    Ok(out)
}

impl Session {
    /// SELECT / EXAMINE (RFC 3501 6.3.1-2, RFC 9051 6.3.1-2), with RFC 7162's CONDSTORE
    /// and QRESYNC parameters. With QRESYNC and a matching UIDVALIDITY, the usual
    /// responses are followed by `VANISHED (EARLIER)` for the known UIDs expunged since
    /// the client's MODSEQ and a `FETCH (UID FLAGS MODSEQ)` for every message changed
    /// since (RFC 7162 3.2.5).
    pub(crate) async fn cmd_select(
        &mut self,
        name: &str,
        read_only: bool,
        condstore: bool,
        qresync: Option<&QResync>,
    ) -> Reply {
        if qresync.is_some() && !self.enabled.qresync {
            return Reply::bad("The QRESYNC parameter needs ENABLE QRESYNC first (RFC 7162 3.2.5)");
        }
        // RFC 3501 6.3.1: SELECT first deselects, even when it then fails; [CLOSED]
        // marks where the old mailbox's responses end (RFC 7162 3.2.11, RFC 9051 7.1).
        if self.selected.take().is_some() {
            self.untagged("OK [CLOSED] Previous mailbox closed");
        }
        // RFC 5182: a saved search result belongs to one mailbox.
        self.ext.saved.clear();
        if condstore || qresync.is_some() {
            // RFC 7162 3.1.8: SELECT (CONDSTORE) is a CONDSTORE-enabling command.
            self.enabled.condstore = true;
        }
        let modes = self.enabled;
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let header = match view.mailbox_by_name(&user, name) {
            Ok(Some(h)) => h,
            Ok(None) => return Reply::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return store_error(&e),
        };
        let min = self.server.config.select_cache_min_messages;
        let scan = match self
            .server
            .scan_cache
            .scan(slot.name(), &view, &header, min)
        {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        let last = header.uidnext.0.saturating_sub(1);
        // EXAMINE changes no state, \Recent included (RFC 3501 6.3.2); IMAP4rev2 has no
        // \Recent (RFC 9051 appendix E), so its sessions claim nothing.
        let recent_above = if modes.rev2 {
            None
        } else if read_only {
            Some(self.server.recent.peek(slot.name(), header.id).unwrap_or(0))
        } else {
            Some(
                self.server
                    .recent
                    .claim(slot.name(), header.id, last)
                    .unwrap_or(0),
            )
        };
        let first_unseen = scan.first_unseen;
        let sel = Selected::open(&header, scan, recent_above, read_only);
        sel.write_select_responses(&mut self.out, first_unseen, &modes);
        if modes.rev2 {
            // RFC 9051 6.3.1: the mailbox's LIST response, with its canonical name.
            let mut line =
                format!("* LIST ({}) \"/\" ", self.list_attributes(&header.name)).into_bytes();
            line.extend_from_slice(&self.mailbox_name_out(&header.name));
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        // RFC 8474 MAILBOXID.
        let id = crate::objectid::mailbox_id(&header);
        self.untagged(&format!("OK [MAILBOXID ({id})] Ok"));
        if let Some(q) = qresync
            && q.uidvalidity == header.uidvalidity.0
        {
            let since = ModSeq(q.modseq);
            let vanished = match vanished_since(&view, &header, since, q.known_uids.as_ref()) {
                Ok(v) => v,
                Err(e) => return store_error(&e),
            };
            crate::fetch::write_vanished_earlier(&mut self.out, &vanished);
            let changed = match changed_since(&view, &header, since) {
                Ok(c) => c,
                Err(e) => return store_error(&e),
            };
            for r in changed.iter().flatten() {
                if let Some(i) = sel.index_of_uid(r.uid) {
                    write_flag_change(&mut self.out, i + 1, r, sel.is_recent(r.uid), &modes);
                }
            }
        }
        self.selected = Some(sel);
        if read_only {
            Reply::ok("[READ-ONLY] EXAMINE completed")
        } else {
            Reply::ok("[READ-WRITE] SELECT completed")
        }
    }

    /// The current records of the selected mailbox's messages `uids` (ascending), for
    /// commands that need more than the sequence map (SORT, THREAD): `None` for a
    /// message expunged meanwhile.
    pub(crate) fn records_of(&self, uids: &[Uid]) -> Result<Vec<Option<Entry>>, Reply> {
        let (_, slot) = self.ctx()?;
        let Some(sel) = self.selected.as_ref() else {
            return Err(Reply::bad("No mailbox selected"));
        };
        let view = slot.view();
        let header = match view.mailbox(sel.id) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Reply::no("[NONEXISTENT] The selected mailbox was deleted")),
            Err(e) => return Err(store_error(&e)),
        };
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(SCAN_CHUNK) {
            out.extend(read_records(&view, &header, chunk).map_err(|e| store_error(&e))?);
        }
        Ok(out)
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
    use store::{BlobHash, InternalDate, MessageRecord};

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

    fn rec(uid: u32, sys: u8, modseq: u64) -> Entry {
        Ok(MessageRecord {
            uid: Uid(uid),
            modseq: ModSeq(modseq),
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

    fn scan(uids: &[u32]) -> Scan {
        Scan {
            uids: uids.to_vec(),
            ..Scan::default()
        }
    }

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn expunges_wait_until_allowed_and_keep_numbers_meanwhile() {
        let modes = Enabled::default();
        let mut s = Selected::open(&header(4, 1), scan(&[1, 2, 3]), Some(3), false);
        let mut out = Vec::new();
        let d = Delta {
            name: "INBOX".into(),
            uidnext: Uid(5),
            highestmodseq: ModSeq(2),
            changed: vec![rec(3, SystemFlags::SEEN, 2)],
            new: vec![Uid(4)],
            expunged: vec![2],
            ..Delta::default()
        };
        s.apply_delta(d, &mut |_| Some(3), false, &modes, &mut out);
        assert_eq!(
            text(out),
            "* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n* 4 EXISTS\r\n* 1 RECENT\r\n"
        );
        assert_eq!(s.resolve(&set(&[(2, 2)]), false).unwrap(), vec![1]);
        assert!(s.is_expunged(Uid(2)));
        let mut out = Vec::new();
        assert_eq!(s.flush_expunges(&modes, &mut out), 1);
        assert_eq!(text(out), "* 2 EXPUNGE\r\n");
        assert_eq!(s.resolve(&set(&[(1, STAR)]), false).unwrap(), vec![0, 1, 2]);
        assert_eq!(s.resolve(&set(&[(4, STAR)]), true).unwrap(), vec![2]);
        assert_eq!(s.resolve(&set(&[(100, STAR)]), true).unwrap(), vec![2]);
        assert_eq!(
            s.resolve(&set(&[(3, 4), (1, 3)]), true).unwrap(),
            vec![0, 1, 2]
        );
        assert!(s.resolve(&set(&[(9, 9)]), false).is_err());
        assert!(s.is_recent(Uid(4)) && !s.is_recent(Uid(3)));
    }

    #[test]
    fn qresync_sessions_get_vanished_and_modseqs() {
        let modes = Enabled {
            condstore: true,
            qresync: true,
            ..Enabled::default()
        };
        let mut s = Selected::open(&header(6, 9), scan(&[1, 2, 3, 4, 5]), None, false);
        let mut out = Vec::new();
        let d = Delta {
            name: "INBOX".into(),
            uidnext: Uid(6),
            highestmodseq: ModSeq(12),
            changed: vec![rec(5, SystemFlags::FLAGGED, 11)],
            expunged: vec![2, 3, 4],
            ..Delta::default()
        };
        s.apply_delta(d, &mut |_| None, true, &modes, &mut out);
        assert_eq!(
            text(out),
            "* 5 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (11))\r\n* VANISHED 2:4\r\n"
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.uid_at(1), Uid(5));
        assert_eq!(s.highestmodseq, ModSeq(12));
    }

    #[test]
    fn own_changes_are_not_reported_twice() {
        let modes = Enabled::default();
        let mut s = Selected::open(&header(3, 4), scan(&[1, 2]), None, false);
        s.note_own_change(ModSeq(5));
        assert!(s.own.contains(&ModSeq(5)));
        let mut out = Vec::new();
        s.apply_delta(
            Delta {
                highestmodseq: ModSeq(5),
                ..Delta::default()
            },
            &mut |_| None,
            true,
            &modes,
            &mut out,
        );
        assert!(out.is_empty() && s.own.is_empty());
    }

    #[test]
    fn new_keywords_are_announced_once() {
        let modes = Enabled::default();
        let mut s = Selected::open(&header(2, 1), scan(&[1]), None, false);
        let mut d = Delta {
            highestmodseq: ModSeq(2),
            new: vec![Uid(2)],
            ..Delta::default()
        };
        d.new_keywords.add_keyword("$Junk");
        let mut out = Vec::new();
        s.apply_delta(d, &mut |_| None, true, &modes, &mut out);
        let t = text(out);
        assert!(t.starts_with("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)\r\n"));
        assert!(t.ends_with("* 2 EXISTS\r\n* 1 RECENT\r\n"), "{t}");
        let mut out = Vec::new();
        s.note_keywords(&Flags::new(0, ["$junk".to_string()]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn recent_ranges_stay_bounded() {
        let mut s = Selected::open(&header(2, 1), scan(&[1]), Some(0), false);
        for i in 0..(RECENT_RANGES_MAX as u32 * 2) {
            s.add_recent(10 + 2 * i, 10 + 2 * i);
        }
        assert_eq!(s.recent.len(), RECENT_RANGES_MAX);
        s.add_recent(1000, 1001);
        s.add_recent(1002, 1005);
        assert_eq!(s.recent.last(), Some(&(1000, 1005)));
    }

    #[test]
    fn vanished_fallback_is_known_minus_live() {
        let live = [Uid(2), Uid(5), Uid(6)];
        assert_eq!(
            complement(None, Uid(9), &live),
            vec![(1, 1), (3, 4), (7, 8)]
        );
        let known = set(&[(4, STAR), (1, 2)]);
        assert_eq!(
            complement(Some(&known), Uid(9), &live),
            vec![(1, 1), (4, 4), (7, 8)]
        );
        assert_eq!(complement(None, Uid(1), &live), vec![]);
        assert_eq!(ranges_text(&[(1, 1), (3, 4)]), "1,3:4");
        assert_eq!(to_ranges(&[1, 2, 3, 5, 5, 6]), vec![(1, 3), (5, 6)]);
    }

    #[test]
    fn uid_sets_with_star() {
        let s = set(&[(5, STAR), (1, 1)]);
        assert!(set_contains(&s, 1, 9) && set_contains(&s, 9, 9) && !set_contains(&s, 3, 9));
    }
}
