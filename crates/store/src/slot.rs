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

/// Expunge tombstones (the `changes` entries that answer QRESYNC `VANISHED`) are kept for
/// the last this-many modifications (MODSEQ steps) of their mailbox, then pruned by the
/// writer (see `writer.rs`). A client whose last-seen MODSEQ is older than that still gets
/// a correct answer, computed from the UIDs that exist now instead of from tombstones
/// (see [`SlotView::vanished_floor`]). On disk that is at most the expunges of the last
/// 100,000 modifications per mailbox, about 30 bytes each.
pub const VANISHED_WINDOW_MODSEQ: u64 = 100_000;

/// Bound on queued write requests: past it, callers block (back-pressure) instead of
/// growing memory without limit.
const WRITE_QUEUE_MAX: usize = 4096;

/// Every keyspace of `meta/`, in the order of `Keyspaces::all`.
pub const KEYSPACE_NAMES: [&str; 8] = [
    KS_MAILBOXES,
    KS_NAMES,
    KS_MESSAGES,
    KS_CHANGES,
    KS_SUBS,
    KS_USERS,
    KS_COUNTERS,
    KS_INSECURE,
];

#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub mailboxes: Keyspace,
    pub names: Keyspace,
    pub messages: Keyspace,
    pub changes: Keyspace,
    pub subs: Keyspace,
    pub users: Keyspace,
    pub counters: Keyspace,
    pub insecure: Keyspace,
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
            insecure: db.keyspace(KS_INSECURE, opts)?,
        })
    }

    /// The keyspace called `name` (see `records.rs` for the names).
    pub fn by_name(&self, name: &str) -> Option<&Keyspace> {
        KEYSPACE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.all()[i])
    }

    /// In the order of [`KEYSPACE_NAMES`].
    pub fn all(&self) -> [&Keyspace; 8] {
        [
            &self.mailboxes,
            &self.names,
            &self.messages,
            &self.changes,
            &self.subs,
            &self.users,
            &self.counters,
            &self.insecure,
        ]
    }
}

/// The `mailbox` of a [`ChangeNotice`] about the user's subscription list (mailbox ids
/// start at 1, so this is never a real mailbox).
pub const SUBSCRIPTIONS_CHANGED: MailboxId = MailboxId(0);

/// A change made durable, published to sessions (IDLE, NOOP, NOTIFY) after the group
/// commit: a mailbox's header changed (messages, flags, name), the mailbox was deleted
/// (its header is gone), or the subscriptions changed ([`SUBSCRIPTIONS_CHANGED`]).
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
    /// How many modifications (MODSEQ steps) of a mailbox its expunge tombstones are kept
    /// for; see [`VANISHED_WINDOW_MODSEQ`]. Only tests change it.
    pub vanished_window: std::sync::atomic::AtomicU64,
    /// Held by an audit that repairs, so two repairs never move the same files.
    pub audit_lock: std::sync::Mutex<()>,
    /// While a repairing audit decides which orphans to collect: blob hashes referenced
    /// by records committed since it armed this, and whether that set overflowed (see
    /// `Op::CollectOrphans`).
    pub gc_watch: std::sync::Mutex<Option<(std::collections::HashSet<BlobHash>, bool)>>,
    /// The copy's fencing epoch, as in its `SLOT` header (see `replica.rs`).
    pub epoch: std::sync::atomic::AtomicU64,
    /// Replication's hook around group commits (see `replica.rs`).
    pub commit_hook: RwLock<Option<Arc<dyn crate::replica::CommitHook>>>,
    /// Groups committed that wrote something (see `replica::CommittedGroup::seq`).
    pub commit_seq: std::sync::atomic::AtomicU64,
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
        let slot = Slot::open_unchecked(dir, events, clock)?;
        slot.check()?;
        Ok(slot)
    }

    /// Opens a copy without the start-up check, for audit and repair of a copy the check
    /// refuses (e.g. counters that need rebuilding). Never serve a copy opened this way
    /// before `check` passes.
    pub fn open_unchecked(
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
            vanished_window: std::sync::atomic::AtomicU64::new(VANISHED_WINDOW_MODSEQ),
            audit_lock: std::sync::Mutex::new(()),
            gc_watch: std::sync::Mutex::new(None),
            epoch: std::sync::atomic::AtomicU64::new(header.epoch.0),
            commit_hook: RwLock::new(None),
            commit_seq: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let w = shared.clone();
        std::thread::Builder::new()
            .name(format!("slot-writer-{}", header.slot))
            .spawn(move || writer::run(w, rx))
            .map_err(|e| StoreError::io(dir, e))?;
        Ok(Slot { shared, tx })
    }

    /// The quick check run at open (DESIGN invariant 8), and by `tandem check`: the header
    /// decodes and names this slot, every mailbox header and counter decodes, counters are
    /// above every id in use, and per mailbox: no stored uid at or above uidnext, no
    /// modseq above highestmodseq, and `exists` agrees with whether records exist. Reads
    /// one record per mailbox at each end, so it stays fast on a large slot; the full
    /// comparison is `audit`.
    pub fn check(&self) -> Result<(), StoreError> {
        let header = SlotHeader::read(&self.shared.dir)?;
        if header.slot != self.shared.name {
            return Err(StoreError::CorruptHeader {
                path: self.shared.dir.join("SLOT"),
                detail: format!(
                    "header names slot {:?} but this copy was opened as {:?}",
                    header.slot, self.shared.name
                ),
            });
        }
        let view = self.view();
        let mut max_id = 0;
        for kv in view.snap.iter(&self.shared.ks.counters) {
            let (k, v) = kv.into_inner()?;
            let n = decode_u64(&k, &v)?;
            if &*k == crate::writer::CTR_MAILBOX_ID {
                max_id = n;
            }
        }
        for m in view.all_mailboxes()? {
            if m.uidnext.0 == 0 || m.uidvalidity.0 == 0 {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: "mailbox header has zero uidnext/uidvalidity".into(),
                });
            }
            if m.id.0 >= max_id {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: format!(
                        "mailbox id {} is not below the next_mailbox_id counter ({max_id})",
                        m.id.0
                    ),
                });
            }
            // The highest stored uid must be below uidnext, or UIDs could be reused.
            let last = view.last_uid(m.id)?;
            if let Some(last) = last
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
            if (m.exists == 0) != last.is_none() {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: format!(
                        "mailbox {} says it holds {} messages but {} stored",
                        m.name,
                        m.exists,
                        if last.is_none() {
                            "none are"
                        } else {
                            "some are"
                        }
                    ),
                });
            }
            // MODSEQ never goes down: nothing stored may be above highestmodseq.
            if let Some(top) = view.last_change_modseq(m.id)?
                && top > m.highestmodseq
            {
                return Err(StoreError::CorruptRecord {
                    key: hex_id(m.id),
                    detail: format!(
                        "mailbox {} has a change at modseq {} above highestmodseq {}",
                        m.name, top.0, m.highestmodseq.0
                    ),
                });
            }
        }
        Ok(())
    }

    /// Corruption drill: stores raw bytes under `key` in `keyspace` (or removes the key),
    /// through the writer but below the codec.
    #[doc(hidden)]
    pub fn debug_poke(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.execute(Op::DebugPoke {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        })
        .map(|_| ())
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

    /// Test hook: keeps expunge tombstones for `modseqs` modifications instead of
    /// [`VANISHED_WINDOW_MODSEQ`], so the pruning and what lies past it can be exercised
    /// without 100,000 writes. Never called by production code.
    #[doc(hidden)]
    pub fn debug_set_vanished_window(&self, modseqs: u64) {
        self.shared
            .vanished_window
            .store(modseqs.max(1), std::sync::atomic::Ordering::Relaxed);
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

/// A raw `(key, value)` of a keyspace, undecoded.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// A consistent, durable, read-only view of a slot (a KV snapshot).
pub struct SlotView {
    pub(crate) shared: Arc<Shared>,
    pub(crate) snap: Snapshot,
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

    /// The sum of every mailbox's HIGHESTMODSEQ: how many modifications this copy holds,
    /// since every write raises one mailbox's by exactly one. Of two copies fed by one
    /// master, the one that applied more of its writes scores higher (`fo -K` promotes
    /// the highest). One pass over the mailbox headers.
    pub fn modseq_total(&self) -> Result<u64, StoreError> {
        Ok(self
            .all_mailboxes()?
            .iter()
            .map(|h| h.highestmodseq.0)
            .fold(0u64, u64::saturating_add))
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

    /// Insecure-login rows (see `InsecureLogin`): one user's, or every user's when `None`.
    pub fn insecure_logins(&self, user: Option<&str>) -> Result<Vec<InsecureLogin>, StoreError> {
        let prefix = user.map(user_prefix).unwrap_or_default();
        let mut out = Vec::new();
        for kv in self.snap.prefix(&self.shared.ks.insecure, &prefix) {
            let (k, v) = kv.into_inner()?;
            out.push(InsecureLogin::decode(&k, &v)?);
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
            out.push(self.entry(mailbox, &k, &v));
        }
        Ok(out)
    }

    /// A stored message as listed: its record, or (alerting) a `CorruptEntry`.
    fn entry(&self, mailbox: &MailboxHeader, k: &[u8], v: &[u8]) -> Entry {
        MessageRecord::decode(k, v).map_err(|e| {
            let uid = uid_of_message_key(k).unwrap_or(Uid(0));
            self.alert_record(&e, Some(&mailbox.user), Some(&mailbox.name), Some(uid));
            CorruptEntry {
                uid,
                detail: e.to_string(),
            }
        })
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

    pub(crate) fn last_change_modseq(&self, id: MailboxId) -> Result<Option<ModSeq>, StoreError> {
        let start = change_key(id, ModSeq(0), Uid(0));
        let end = change_key(id, ModSeq(u64::MAX), Uid(u32::MAX));
        match self
            .snap
            .range(&self.shared.ks.changes, start..=end)
            .next_back()
        {
            None => Ok(None),
            Some(g) => {
                let k = g.key()?;
                Ok(k.get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(|b| ModSeq(u64::from_be_bytes(b))))
            }
        }
    }

    /// Every raw `(key, value)` of a keyspace in this snapshot, undecoded (corruption
    /// drills pick their targets with it; audit decodes each one itself). Bounded by
    /// `max` entries.
    #[doc(hidden)]
    pub fn debug_raw_entries(
        &self,
        keyspace: &str,
        max: usize,
    ) -> Result<Vec<RawEntry>, StoreError> {
        let ks = self
            .shared
            .ks
            .by_name(keyspace)
            .ok_or_else(|| StoreError::Refused(format!("no keyspace {keyspace}")))?;
        let mut out = Vec::new();
        for kv in self.snap.iter(ks).take(max) {
            let (k, v) = kv.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
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

    /// Expunges are listed exactly by [`SlotView::changes_since`]`(id, m)` only for
    /// `m >= vanished_floor(mailbox)`: tombstones at or below it may have been pruned.
    /// Flag changes and appends are always listed (their entries are never pruned).
    pub fn vanished_floor(&self, mailbox: &MailboxHeader) -> ModSeq {
        let window = self
            .shared
            .vanished_window
            .load(std::sync::atomic::Ordering::Relaxed);
        ModSeq(mailbox.highestmodseq.0.saturating_sub(window))
    }

    /// Messages with `from <= uid <= to`, in UID order, at most `max` of them: a caller
    /// walking a large mailbox takes it in bounded chunks (continue from the last uid + 1).
    /// Damaged records are listed as `Err(CorruptEntry)` and raise an alert.
    pub fn messages_range(
        &self,
        mailbox: &MailboxHeader,
        from: Uid,
        to: Uid,
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let (start, end) = (message_key(mailbox.id, from), message_key(mailbox.id, to));
        for kv in self
            .snap
            .range(&self.shared.ks.messages, start..=end)
            .take(max)
        {
            let (k, v) = kv.into_inner()?;
            out.push(self.entry(mailbox, &k, &v));
        }
        Ok(out)
    }

    /// The UIDs of a mailbox's messages in order, from the keys alone (no record is
    /// decoded, so a damaged record is still listed).
    pub fn message_uids(&self, id: MailboxId) -> Result<Vec<Uid>, StoreError> {
        let mut out = Vec::new();
        for kv in self.snap.prefix(&self.shared.ks.messages, mailbox_key(id)) {
            let k = kv.key()?;
            if let Some(uid) = uid_of_message_key(&k) {
                out.push(uid);
            }
        }
        Ok(out)
    }

    /// Total bytes of live messages of `user` (quota usage, derived from headers).
    pub fn usage_bytes(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.mailboxes(user)?.iter().map(|m| m.size_bytes).sum())
    }
}
