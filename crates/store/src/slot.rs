//! A slot copy: open/create, the durable read view, and the handle to its one writer.

use crate::blob::BlobStore;
use crate::clock::Clock;
use crate::error::StoreError;
use crate::events::{Event, EventLog};
use crate::header::SlotHeader;
use crate::records::*;
use crate::types::*;
use crate::writer::{self, Op, OpResult, Request};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};

/// Bound on queued write requests: past it, callers block (back-pressure) instead of
/// growing memory without limit.
const WRITE_QUEUE_MAX: usize = 4096;

#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub mailboxes: Keyspace,
    pub names: Keyspace,
    pub messages: Keyspace,
    pub changes: Keyspace,
    pub subs: Keyspace,
    pub users: Keyspace,
    pub counters: Keyspace,
}

impl Keyspaces {
    fn open(db: &Database) -> Result<Keyspaces, StoreError> {
        // Records are small and mostly hashes: compression buys little, and keeping them
        // uncompressed makes on-disk corruption drills land on the bytes they aim at.
        let opts = || KeyspaceCreateOptions::default();
        Ok(Keyspaces {
            mailboxes: db.keyspace(KS_MAILBOXES, opts)?,
            names: db.keyspace(KS_NAMES, opts)?,
            messages: db.keyspace(KS_MESSAGES, opts)?,
            changes: db.keyspace(KS_CHANGES, opts)?,
            subs: db.keyspace(KS_SUBS, opts)?,
            users: db.keyspace(KS_USERS, opts)?,
            counters: db.keyspace(KS_COUNTERS, opts)?,
        })
    }

    pub fn all(&self) -> [&Keyspace; 7] {
        [
            &self.mailboxes,
            &self.names,
            &self.messages,
            &self.changes,
            &self.subs,
            &self.users,
            &self.counters,
        ]
    }
}

/// A change made durable, published to sessions (IDLE, NOOP) after the group commit.
#[derive(Debug, Clone)]
pub struct ChangeNotice {
    pub user: String,
    pub mailbox: MailboxId,
    pub modseq: ModSeq,
}

pub(crate) struct Shared {
    pub name: String,
    pub dir: PathBuf,
    pub db: Database,
    pub ks: Keyspaces,
    pub blobs: BlobStore,
    pub events: Arc<EventLog>,
    pub clock: Arc<dyn Clock>,
    pub durable: RwLock<Snapshot>,
    pub notify: tokio::sync::broadcast::Sender<ChangeNotice>,
    pub alerted: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Group commits (journal fsyncs) since open: lets tests see that concurrent writes
    /// share fsyncs.
    pub journal_fsyncs: std::sync::atomic::AtomicU64,
}

/// The same problem (same kind and detail) is alerted at most once per this interval, so a
/// client retrying a damaged message in a loop cannot flood the event log.
const ALERT_REPEAT_SECS: u64 = 600;
const ALERT_MEMORY_MAX: usize = 10_000;

impl Shared {
    pub fn alert(&self, mut ev: Event) {
        ev.slot = Some(self.name.clone());
        let key = format!("{}\0{}", ev.kind, ev.detail);
        {
            let mut seen = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = seen.get(&key)
                && t.elapsed().as_secs() < ALERT_REPEAT_SECS
            {
                return;
            }
            if seen.len() >= ALERT_MEMORY_MAX {
                seen.clear();
            }
            seen.insert(key, std::time::Instant::now());
        }
        self.events.raise(ev);
    }
}

/// Handle to an open slot copy. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Slot {
    pub(crate) shared: Arc<Shared>,
    tx: mpsc::SyncSender<Request>,
}

impl Slot {
    /// Creates a new, empty slot copy in `dir` (which must not hold one already).
    pub fn create(
        dir: &Path,
        name: &str,
        copy_id: &str,
        events: Arc<EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Slot, StoreError> {
        if dir.join("SLOT").exists() {
            return Err(StoreError::Refused(format!(
                "{} already holds a slot",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        SlotHeader {
            slot: name.to_string(),
            copy_id: copy_id.to_string(),
            epoch: Epoch(1),
        }
        .write(dir)?;
        let slot = Slot::open(dir, events, clock)?;
        // UIDVALIDITY comes from a counter seeded once from the clock: values stay unique
        // even if the clock later steps back (DESIGN invariant 7).
        let seed = slot
            .shared
            .clock
            .now_unix_secs()
            .clamp(1, u32::MAX as i64 / 2) as u64;
        slot.execute(Op::InitCounters {
            uidvalidity_seed: seed,
        })?;
        Ok(slot)
    }

    /// Opens an existing slot copy and runs the quick start-up check (invariant 8):
    /// header CRC, the metadata DB opens, counters and mailbox headers decode.
    pub fn open(
        dir: &Path,
        events: Arc<EventLog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Slot, StoreError> {
        let header = SlotHeader::read(dir)?;
        let meta = dir.join("meta");
        let db = Database::builder(&meta)
            .open()
            .map_err(|e| StoreError::Unavailable {
                slot: header.slot.clone(),
                reason: format!("metadata database {} does not open: {e}", meta.display()),
            })?;
        let ks = Keyspaces::open(&db)?;
        let blobs = BlobStore::open(&dir.join("blobs"))?;
        let (notify, _) = tokio::sync::broadcast::channel(1024);
        let shared = Arc::new(Shared {
            name: header.slot.clone(),
            dir: dir.to_path_buf(),
            durable: RwLock::new(db.snapshot()),
            db,
            ks,
            blobs,
            events,
            clock,
            notify,
            alerted: Default::default(),
            journal_fsyncs: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let w = shared.clone();
        std::thread::Builder::new()
            .name(format!("slot-writer-{}", header.slot))
            .spawn(move || writer::run(w, rx))
            .map_err(|e| StoreError::io(dir, e))?;
        let slot = Slot { shared, tx };
        slot.quick_check()?;
        Ok(slot)
    }

    fn quick_check(&self) -> Result<(), StoreError> {
        let view = self.view();
        for m in view.all_mailboxes()? {
            if m.uidnext.0 == 0 || m.uidvalidity.0 == 0 {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: "mailbox header has zero uidnext/uidvalidity".into(),
                });
            }
            // The highest stored uid must be below uidnext, or UIDs could be reused.
            if let Some(last) = view.last_uid(m.id)?
                && last >= m.uidnext
            {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: format!(
                        "mailbox {} holds uid {} but uidnext is {}",
                        m.name, last.0, m.uidnext.0
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.shared.events
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// Subscribes to durable changes (for IDLE and NOOP). Lagging receivers get
    /// `RecvError::Lagged` and must rescan: no notice is ever needed for correctness.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ChangeNotice> {
        self.shared.notify.subscribe()
    }

    /// A consistent read view of everything that is durable now.
    pub fn view(&self) -> SlotView {
        let snap = match self.shared.durable.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        SlotView {
            shared: self.shared.clone(),
            snap,
        }
    }

    /// Runs one write through the slot's writer; returns once it is durable.
    pub fn execute(&self, op: Op) -> Result<OpResult, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| StoreError::WriterGone)?;
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Async form of [`Slot::execute`] for callers on a tokio runtime.
    pub async fn execute_async(&self, op: Op) -> Result<OpResult, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Request { op, reply }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(req)) => {
                // The queue is full: wait for room (back-pressure) without stalling the
                // runtime's other tasks.
                let tx = self.tx.clone();
                if !tokio::task::block_in_place(move || tx.send(req).is_ok()) {
                    return Err(StoreError::WriterGone);
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::WriterGone),
        }
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Writes a message blob (file fsynced; its directory is fsynced by the writer before
    /// any record references it). Returns what an `Op::Append` needs.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<StagedBlob, StoreError> {
        let (hash, dir) = self.shared.blobs.put(bytes)?;
        Ok(StagedBlob {
            hash,
            size: bytes.len() as u32,
            dir,
        })
    }

    /// Reads a message's bytes, verified against its hash. A corrupt blob raises an
    /// alert and is an error: it is never returned as data.
    pub fn read_blob(&self, hash: &BlobHash, ctx: &ReadContext) -> Result<Vec<u8>, StoreError> {
        self.shared.blobs.get(hash).inspect_err(|e| {
            if e.is_corruption() {
                let mut ev = Event::alert("corrupt_blob", e.to_string());
                ev.user = ctx.user.clone();
                ev.mailbox = ctx.mailbox.clone();
                ev.uid = ctx.uid;
                self.shared.alert(ev);
            }
        })
    }

    /// Journal fsyncs (group commits) done by this handle's writer since open.
    #[doc(hidden)]
    pub fn debug_journal_fsyncs(&self) -> u64 {
        self.shared
            .journal_fsyncs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Corruption drill: rewrites the stored value of `mailbox`/`uid` with one bit
    /// flipped, through the writer (so it is durable and ordered like any write) but
    /// bypassing the codec, leaving a record whose CRC no longer matches.
    #[doc(hidden)]
    pub fn debug_corrupt_record(&self, mailbox: MailboxId, uid: Uid) -> Result<(), StoreError> {
        self.execute(Op::DebugCorruptRecord { mailbox, uid })
            .map(|_| ())
    }

    pub fn blob_path(&self, hash: &BlobHash) -> PathBuf {
        self.shared.blobs.path(hash)
    }

    /// Flushes memtables to disk tables and fsyncs: used at clean shutdown so the journal
    /// is short and on-disk tables hold every record.
    pub fn flush(&self) -> Result<(), StoreError> {
        for ks in self.shared.ks.all() {
            ks.rotate_memtable_and_wait()?;
        }
        self.shared.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

fn hex_id(id: MailboxId) -> String {
    crate::error::hex(&mailbox_key(id))
}

/// Who is reading, for the alert raised if the read finds corruption.
#[derive(Debug, Clone, Default)]
pub struct ReadContext {
    pub user: Option<String>,
    pub mailbox: Option<String>,
    pub uid: Option<u32>,
}

/// A blob written and fsynced, not yet referenced by any record.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub hash: BlobHash,
    pub size: u32,
    pub(crate) dir: PathBuf,
}

/// A message entry as listed: a record, or the uid of a record that failed its checksum
/// (kept in the listing so sequence numbers stay right and the failure is visible).
pub type Entry = Result<MessageRecord, CorruptEntry>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptEntry {
    pub uid: Uid,
    pub detail: String,
}

/// A consistent, durable, read-only view of a slot (a KV snapshot).
pub struct SlotView {
    shared: Arc<Shared>,
    snap: Snapshot,
}

impl SlotView {
    fn alert_record(
        &self,
        e: &StoreError,
        user: Option<&str>,
        mailbox: Option<&str>,
        uid: Option<Uid>,
    ) {
        let mut ev = Event::alert("corrupt_record", e.to_string());
        ev.user = user.map(str::to_string);
        ev.mailbox = mailbox.map(str::to_string);
        ev.uid = uid.map(|u| u.0);
        self.shared.alert(ev);
    }

    pub fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        Ok(self
            .snap
            .get(&self.shared.ks.users, user.as_bytes())?
            .is_some())
    }

    pub fn user(&self, user: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.snap.get(&self.shared.ks.users, user.as_bytes())? {
            None => Ok(None),
            Some(v) => UserRecord::decode(user.as_bytes(), &v)
                .inspect_err(|e| self.alert_record(e, Some(user), None, None))
                .map(Some),
        }
    }

    pub fn mailbox(&self, id: MailboxId) -> Result<Option<MailboxHeader>, StoreError> {
        let key = mailbox_key(id);
        match self.snap.get(&self.shared.ks.mailboxes, key)? {
            None => Ok(None),
            Some(v) => MailboxHeader::decode(&key, &v)
                .inspect_err(|e| self.alert_record(e, None, None, None))
                .map(Some),
        }
    }

    pub fn mailbox_id(&self, user: &str, name: &str) -> Result<Option<MailboxId>, StoreError> {
        let name = crate::normalize_mailbox_name(name);
        let key = name_key(user, &name);
        match self.snap.get(&self.shared.ks.names, &key)? {
            None => Ok(None),
            Some(v) => Ok(Some(MailboxId(decode_u64(&key, &v).inspect_err(|e| {
                self.alert_record(e, Some(user), Some(&name), None)
            })?))),
        }
    }

    pub fn mailbox_by_name(
        &self,
        user: &str,
        name: &str,
    ) -> Result<Option<MailboxHeader>, StoreError> {
        match self.mailbox_id(user, name)? {
            None => Ok(None),
            Some(id) => self.mailbox(id),
        }
    }

    /// Every mailbox of `user`, sorted by name.
    pub fn mailboxes(&self, user: &str) -> Result<Vec<MailboxHeader>, StoreError> {
        let mut out = Vec::new();
        for kv in self.snap.prefix(&self.shared.ks.names, user_prefix(user)) {
            let (k, v) = kv.into_inner()?;
            let id = MailboxId(
                decode_u64(&k, &v).inspect_err(|e| self.alert_record(e, Some(user), None, None))?,
            );
            if let Some(h) = self.mailbox(id)? {
                out.push(h);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) fn all_mailboxes(&self) -> Result<Vec<MailboxHeader>, StoreError> {
        let mut out = Vec::new();
        for kv in self.snap.iter(&self.shared.ks.mailboxes) {
            let (k, v) = kv.into_inner()?;
            out.push(MailboxHeader::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every user with a record in this slot.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for kv in self.snap.iter(&self.shared.ks.users) {
            let (k, v) = kv.into_inner()?;
            out.push(UserRecord::decode(&k, &v)?.user);
        }
        Ok(out)
    }

    pub fn subscriptions(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let prefix = user_prefix(user);
        let mut out = Vec::new();
        for kv in self.snap.prefix(&self.shared.ks.subs, &prefix) {
            let (k, v) = kv.into_inner()?;
            check_empty(&k, &v)?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Every message of a mailbox in UID order. Records failing their CRC are listed as
    /// `Err(CorruptEntry)` and raise an alert; the others are unaffected.
    pub fn messages(&self, mailbox: &MailboxHeader) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(mailbox.exists as usize);
        for kv in self
            .snap
            .prefix(&self.shared.ks.messages, mailbox_key(mailbox.id))
        {
            let (k, v) = kv.into_inner()?;
            match MessageRecord::decode(&k, &v) {
                Ok(r) => out.push(Ok(r)),
                Err(e) => {
                    let uid = uid_of_message_key(&k).unwrap_or(Uid(0));
                    self.alert_record(&e, Some(&mailbox.user), Some(&mailbox.name), Some(uid));
                    out.push(Err(CorruptEntry {
                        uid,
                        detail: e.to_string(),
                    }));
                }
            }
        }
        Ok(out)
    }

    pub fn message(
        &self,
        mailbox: &MailboxHeader,
        uid: Uid,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let k = message_key(mailbox.id, uid);
        match self.snap.get(&self.shared.ks.messages, k)? {
            None => Ok(None),
            Some(v) => MessageRecord::decode(&k, &v)
                .inspect_err(|e| {
                    self.alert_record(e, Some(&mailbox.user), Some(&mailbox.name), Some(uid))
                })
                .map(Some),
        }
    }

    pub(crate) fn last_uid(&self, id: MailboxId) -> Result<Option<Uid>, StoreError> {
        let start = message_key(id, Uid(0));
        let end = message_key(id, Uid(u32::MAX));
        match self
            .snap
            .range(&self.shared.ks.messages, start..=end)
            .next_back()
        {
            None => Ok(None),
            Some(g) => Ok(uid_of_message_key(&g.key()?)),
        }
    }

    /// Changes with modseq greater than `since`, in modseq order: `(uid, modseq, kind)`.
    pub fn changes_since(
        &self,
        id: MailboxId,
        since: ModSeq,
    ) -> Result<Vec<(Uid, ModSeq, ChangeKind)>, StoreError> {
        let start = change_key(id, ModSeq(since.0.saturating_add(1)), Uid(0));
        let end = change_key(id, ModSeq(u64::MAX), Uid(u32::MAX));
        let mut out = Vec::new();
        for kv in self.snap.range(&self.shared.ks.changes, start..=end) {
            let (k, v) = kv.into_inner()?;
            let kind = decode_change(&k, &v)?;
            let modseq = ModSeq(u64::from_be_bytes(
                k[8..16]
                    .try_into()
                    .map_err(|_| StoreError::Format("change key".into()))?,
            ));
            let uid = Uid(u32::from_be_bytes(
                k[16..20]
                    .try_into()
                    .map_err(|_| StoreError::Format("change key".into()))?,
            ));
            out.push((uid, modseq, kind));
        }
        Ok(out)
    }

    /// Total bytes of live messages of `user` (quota usage, derived from headers).
    pub fn usage_bytes(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.mailboxes(user)?.iter().map(|m| m.size_bytes).sum())
    }
}
