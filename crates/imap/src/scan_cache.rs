//! What SELECT needs to know about a whole mailbox (its UIDs, the keywords in use, the
//! first unseen message), kept per server for large mailboxes so that SELECT does not
//! read every record each time: a QRESYNC reconnect to a 50,000-message mailbox then
//! costs the changes since the last SELECT by anyone, not 50,000 record reads (~15 ms).
//!
//! An entry is the result of one scan at one MODSEQ. SELECT takes the entry, brings it
//! up to the mailbox's current MODSEQ from the change log (new UIDs appended, expunged
//! UIDs removed, changed records re-read for keywords and `\Seen`), and stores the
//! result back. When the log cannot answer (the entry is older than the tombstone
//! window, or the log is unreadable) the mailbox is scanned in full, as without a cache.
//! Entries are immutable (`Arc`): sessions never share mutable state through it.
//!
//! Limits: only mailboxes of at least `ImapConfig::select_cache_min_messages` messages
//! are cached (small ones scan in well under a millisecond); at most
//! `SCAN_CACHE_BYTES_MAX` bytes of UID lists are held, past which entries are dropped
//! (the next SELECT of such a mailbox scans it again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use store::{
    ChangeKind, MailboxHeader, MailboxId, ModSeq, SlotView, StoreError, SystemFlags, Uid,
    UidValidity,
};

use crate::selected::{Scan, read_records, scan_mailbox};

/// Bytes of cached UID lists per server (4 bytes a message): 64 MiB is 16 million
/// messages, e.g. 320 mailboxes of 50,000.
const SCAN_CACHE_BYTES_MAX: usize = 64 << 20;

/// One mailbox as scanned at `modseq`.
#[derive(Debug, Clone)]
struct Entry {
    uidvalidity: UidValidity,
    modseq: ModSeq,
    uids: Vec<u32>,
    keywords: Vec<String>,
    /// UID of the first message without `\Seen`.
    first_unseen: Option<u32>,
}

impl Entry {
    fn from_scan(header: &MailboxHeader, scan: &Scan) -> Entry {
        Entry {
            uidvalidity: header.uidvalidity,
            modseq: header.highestmodseq,
            uids: scan.uids.clone(),
            keywords: scan.keywords.clone(),
            first_unseen: scan.first_unseen.and_then(|i| scan.uids.get(i).copied()),
        }
    }

    fn to_scan(&self) -> Scan {
        Scan {
            uids: self.uids.clone(),
            first_unseen: self
                .first_unseen
                .and_then(|u| self.uids.binary_search(&u).ok()),
            keywords: self.keywords.clone(),
        }
    }

    fn bytes(&self) -> usize {
        self.uids.len() * 4 + self.keywords.iter().map(|k| k.len() + 24).sum::<usize>()
    }

    /// Brings the entry up to `header` (same snapshot as `view`); `None` when the change
    /// log cannot answer and the mailbox must be scanned.
    fn caught_up(
        &self,
        view: &SlotView,
        header: &MailboxHeader,
    ) -> Result<Option<Entry>, StoreError> {
        if self.uidvalidity != header.uidvalidity
            || self.modseq > header.highestmodseq
            || self.modseq < view.vanished_floor(header)
        {
            return Ok(None);
        }
        let Ok(changes) = view.changes_since(header.id, self.modseq) else {
            return Ok(None);
        };
        let last = self.uids.last().copied().unwrap_or(0);
        let mut gone = Vec::new();
        let mut touched = Vec::new();
        for (uid, _, kind) in changes {
            match kind {
                ChangeKind::Expunged => gone.push(uid.0),
                ChangeKind::Changed => touched.push(uid),
            }
        }
        gone.sort_unstable();
        touched.sort_unstable();
        touched.dedup();
        let mut e = Entry {
            modseq: header.highestmodseq,
            ..self.clone()
        };
        if !gone.is_empty() {
            e.uids.retain(|u| gone.binary_search(u).is_err());
        }
        e.uids
            .extend(touched.iter().map(|u| u.0).filter(|&u| u > last));
        // The first unseen message: an unseen changed or new one below it, or, if it
        // was read or expunged, the next unseen one after it.
        let mut first = e.first_unseen;
        let mut lost_first = first.is_some_and(|f| gone.binary_search(&f).is_ok());
        for chunk in touched.chunks(crate::selected::SCAN_CHUNK) {
            for r in read_records(view, header, chunk)?
                .into_iter()
                .flatten()
                .flatten()
            {
                let unseen = !r.flags.system.has(SystemFlags::SEEN);
                if unseen && first.is_none_or(|f| r.uid.0 < f) {
                    first = Some(r.uid.0);
                }
                if !unseen && first == Some(r.uid.0) {
                    lost_first = true;
                }
                crate::selected::add_keywords(&mut e.keywords, &r.flags);
            }
        }
        if lost_first {
            first = next_unseen(view, header, first.unwrap_or(0))?;
        }
        e.first_unseen = first;
        Ok(Some(e))
    }
}

/// The UID of the first message without `\Seen` at or after `from`, reading forward in
/// chunks until one is found.
fn next_unseen(
    view: &SlotView,
    header: &MailboxHeader,
    from: u32,
) -> Result<Option<u32>, StoreError> {
    let mut from = Uid(from);
    loop {
        let chunk =
            view.messages_range(header, from, Uid(u32::MAX), crate::selected::SCAN_CHUNK)?;
        let full = chunk.len() == crate::selected::SCAN_CHUNK;
        let mut next = None;
        for e in &chunk {
            if let Ok(r) = e
                && !r.flags.system.has(SystemFlags::SEEN)
            {
                return Ok(Some(r.uid.0));
            }
            next = crate::selected::entry_uid(e).0.checked_add(1);
        }
        match next {
            Some(n) if full => from = Uid(n),
            _ => return Ok(None),
        }
    }
}

/// The server's cache of mailbox scans, keyed by slot and mailbox.
#[derive(Default)]
pub(crate) struct ScanCache {
    entries: Mutex<HashMap<(String, MailboxId), Arc<Entry>>>,
}

impl ScanCache {
    /// The scan of `header` (read from `view`), from the cache when the mailbox has at
    /// least `min_messages` messages.
    pub(crate) fn scan(
        &self,
        slot: &str,
        view: &SlotView,
        header: &MailboxHeader,
        min_messages: u32,
    ) -> Result<Scan, StoreError> {
        if header.exists < min_messages {
            return scan_mailbox(view, header);
        }
        let key = (slot.to_string(), header.id);
        let cached = self.lock().get(&key).cloned();
        let entry = match cached {
            Some(c) if c.modseq == header.highestmodseq && c.uidvalidity == header.uidvalidity => {
                return Ok(c.to_scan());
            }
            Some(c) => c.caught_up(view, header)?,
            None => None,
        };
        let (scan, entry) = match entry {
            Some(e) => (e.to_scan(), e),
            None => {
                let s = scan_mailbox(view, header)?;
                let e = Entry::from_scan(header, &s);
                (s, e)
            }
        };
        self.insert(key, entry);
        Ok(scan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, MailboxId), Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, key: (String, MailboxId), entry: Entry) {
        let mut map = self.lock();
        // A newer scan of the same mailbox may have been stored meanwhile; keep it.
        if map.get(&key).is_some_and(|old| old.modseq > entry.modseq) {
            return;
        }
        map.insert(key.clone(), Arc::new(entry));
        let mut total: usize = map.values().map(|e| e.bytes()).sum();
        if total > SCAN_CACHE_BYTES_MAX {
            // Over budget: drop other entries (in no particular order) until under.
            let victims: Vec<_> = map.keys().filter(|k| **k != key).cloned().collect();
            for v in victims {
                if total <= SCAN_CACHE_BYTES_MAX {
                    break;
                }
                if let Some(e) = map.remove(&v) {
                    total -= e.bytes();
                }
            }
        }
    }
}
