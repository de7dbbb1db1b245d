//! Audit and repair of one slot copy (DESIGN invariants 2, 3, 4).
//!
//! What is verified, in this order:
//!   1. the `SLOT` header (CRC, and that it names this slot);
//!   2. every fjall table file of `meta/`, byte for byte, against the whole-file XXH3-128
//!      checksum fjall keeps for it in its version manifest (this covers index and filter
//!      blocks too, which a key scan never reads);
//!   3. every value of every keyspace, decoded through the codec (CRC32C over key and
//!      value), read from one durable snapshot;
//!   4. every mailbox header against what its records say (exists, unseen, size, digest,
//!      uidnext above every uid, highestmodseq at or above every modseq), names against
//!      mailboxes, mailboxes against users, counters above every id in use;
//!   5. every blob file: BLAKE3 of its content equals its name; every referenced blob
//!      exists; unreferenced blobs are orphans.
//!
//! Online safety: records come from one snapshot and blob files are immutable, so the
//! audit never blocks the writer. A blob written by a delivery whose record is not yet
//! committed looks unreferenced; such files are younger than the grace period, which is
//! never shorter than `ORPHAN_GRACE_SECS_MIN`, and orphan candidates are re-checked
//! against a fresh snapshot before they are listed. Collection itself re-checks the mtime
//! under `BlobStore::gc_lock`, which a delivery reusing an old file takes to touch it.
//!
//! Repair (`AuditOptions::repair`): derivable state is rebuilt through the writer
//! (`Op::RebuildMailbox`, `Op::RebuildCounters`: atomic and durable like any write);
//! corrupt blob files and stray files are moved to `<slot>/quarantine/` (evidence is never
//! deleted) and a good copy is asked of the `RepairSource`; old orphans are deleted.
//! Damaged records, headers and database files need a good copy from elsewhere (a replica
//! or a backup): they are reported as left unrepaired.

use crate::blob::mtime_secs;
use crate::error::StoreError;
use crate::events::Event;
use crate::header::SlotHeader;
use crate::records::*;
use crate::slot::{KEYSPACE_NAMES, Slot, SlotView};
use crate::types::*;
use crate::writer::{CTR_MAILBOX_ID, CTR_UIDVALIDITY, Op, OpResult};
use fjall::{AbstractTree, Readable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default age after which an unreferenced blob is collected.
pub const ORPHAN_GRACE_SECS_DEFAULT: u64 = 24 * 3600;
/// Floor on the grace period: a delivery writes its blob, then commits its record within
/// seconds; ten minutes leaves room for a stalled writer without risking a live message.
pub const ORPHAN_GRACE_SECS_MIN: u64 = 600;
/// Findings kept in a report; past it they are counted, not listed (memory bound).
pub const FINDINGS_MAX: usize = 10_000;
/// Alert events raised per audit; past it one summary event says how many more.
const EVENTS_MAX: usize = 100;
/// Read size for hashing: large reads let BLAKE3 hash many chunks at once with SIMD.
const READ_CHUNK_BYTES: usize = 1 << 20;
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
const HASH_THREADS_MAX: usize = 8;

/// Where repair gets a good copy of a blob. Today: other slots on this host
/// ([`LocalBlobDirs`]); replication adds a replica-backed source (`--from-replica`).
pub trait RepairSource: Send + Sync {
    /// Names the source in reports ("slot s2 on this host").
    fn describe(&self) -> String;
    /// The blob's bytes, if the source has them. The caller verifies the hash again.
    fn fetch_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A source with nothing in it: repair of damaged data then reports what is needed.
pub struct NoRepairSource;

impl RepairSource for NoRepairSource {
    fn describe(&self) -> String {
        "no repair source".into()
    }
    fn fetch_blob(&self, _: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
}

/// Blob directories of other slot copies on this host (the same message delivered to
/// users of two slots is stored in both, under the same name).
pub struct LocalBlobDirs {
    pub dirs: Vec<PathBuf>,
}

impl RepairSource for LocalBlobDirs {
    fn describe(&self) -> String {
        format!("{} other blob directories on this host", self.dirs.len())
    }
    fn fetch_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let hex = hash.to_hex();
        for d in &self.dirs {
            let p = d.join(&hex[..2]).join(&hex);
            if let Ok(b) = std::fs::read(&p)
                && BlobHash::of(&b) == *hash
            {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }
}

#[derive(Clone)]
pub struct AuditOptions {
    /// Audit only this user's mailboxes and blobs (no orphan listing: other users'
    /// references are not read).
    pub user: Option<String>,
    pub repair: bool,
    /// Bound on bytes read per second (blobs, table files, records); `None`: unbounded.
    pub rate_bytes_per_s: Option<u64>,
    /// Orphans younger than this (by mtime) are neither listed nor collected; raised to
    /// at least `ORPHAN_GRACE_SECS_MIN`.
    pub orphan_grace_secs: u64,
    /// Hashing threads; 0 = one per core (at most 8).
    pub threads: usize,
    /// Set to stop early (client went away, server stopping); the report says so.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Raise an event for each problem (off only for tests that count events).
    pub raise_events: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            user: None,
            repair: false,
            rate_bytes_per_s: None,
            orphan_grace_secs: ORPHAN_GRACE_SECS_DEFAULT,
            threads: 0,
            cancel: None,
            raise_events: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The `SLOT` header is damaged, or the copy does not open at all.
    SlotHeader,
    /// A database table file fails its checksum, or the database fails a read.
    DbFile,
    /// A metadata record fails its CRC32C or does not decode.
    CorruptRecord,
    /// A blob file's content does not hash to its name (or cannot be read).
    CorruptBlob,
    /// A record references a blob file that does not exist.
    MissingBlob,
    /// A blob's size differs from the size its record states.
    BlobSize,
    /// A mailbox header's derivable fields differ from its records.
    DerivedState,
    /// A reference between records points nowhere (name → mailbox, mailbox → user…).
    Dangling,
    /// A slot counter is missing or not above every id in use.
    Counter,
    /// A file in `blobs/` that is not a blob (garbage, not damage).
    StrayFile,
    /// A blob no record references, older than the grace period (garbage, not damage).
    OrphanBlob,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::SlotHeader => "slot_header",
            FindingKind::DbFile => "db_file",
            FindingKind::CorruptRecord => "corrupt_record",
            FindingKind::CorruptBlob => "corrupt_blob",
            FindingKind::MissingBlob => "missing_blob",
            FindingKind::BlobSize => "blob_size",
            FindingKind::DerivedState => "derived_state",
            FindingKind::Dangling => "dangling",
            FindingKind::Counter => "counter",
            FindingKind::StrayFile => "stray_file",
            FindingKind::OrphanBlob => "orphan_blob",
        }
    }

    /// Damage (counts for the exit code) as opposed to garbage (listed, collected).
    pub fn is_problem(self) -> bool {
        !matches!(self, FindingKind::StrayFile | FindingKind::OrphanBlob)
    }

    /// Plain words for summaries.
    pub fn words(self) -> &'static str {
        match self {
            FindingKind::SlotHeader => "slot header damaged",
            FindingKind::DbFile => "database file damaged",
            FindingKind::CorruptRecord => "record damaged",
            FindingKind::CorruptBlob => "message file damaged",
            FindingKind::MissingBlob => "message file missing",
            FindingKind::BlobSize => "message size wrong",
            FindingKind::DerivedState => "mailbox counts wrong",
            FindingKind::Dangling => "broken reference",
            FindingKind::Counter => "slot counter wrong",
            FindingKind::StrayFile => "stray file",
            FindingKind::OrphanBlob => "unused message file",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Damage (true) or garbage (false).
    pub problem: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// What is damaged: a blob hash, a record key in hex, a file path.
    pub object: String,
    pub detail: String,
    pub repaired: bool,
    /// What repair did, or what is still needed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    #[serde(skip)]
    mailbox_id: Option<MailboxId>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

impl Finding {
    fn new(kind: FindingKind, object: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            problem: kind.is_problem(),
            user: None,
            mailbox: None,
            uid: None,
            object: object.into(),
            detail: detail.into(),
            repaired: false,
            action: String::new(),
            mailbox_id: None,
            path: None,
        }
    }

    fn at(mut self, h: Option<&MailboxHeader>, uid: Option<Uid>) -> Finding {
        if let Some(h) = h {
            self.user = Some(h.user.clone());
            self.mailbox = Some(h.name.clone());
            self.mailbox_id = Some(h.id);
        }
        self.uid = uid.map(|u| u.0);
        self
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditStats {
    pub db_files: u64,
    pub db_bytes: u64,
    pub records: u64,
    pub mailboxes: u64,
    pub users: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Unreferenced blobs still inside the grace period (likely deliveries in flight).
    pub orphans_recent: u64,
    pub orphans_collected: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserUsage {
    pub user: String,
    /// Sum of live message sizes, recomputed from the records.
    pub usage_bytes: u64,
    /// 0 = unlimited.
    pub quota_bytes: u64,
}

/// Serializable both ways: a running server sends it to `tandem audit` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub slot: String,
    pub repair: bool,
    pub stats: AuditStats,
    pub problems: u64,
    pub repaired: u64,
    pub unrepaired: u64,
    pub garbage: u64,
    pub findings: Vec<Finding>,
    /// Findings past `FINDINGS_MAX`, counted but not listed.
    pub findings_not_listed: u64,
    pub users: Vec<UserUsage>,
    /// Stopped before the end: what was not checked is unknown.
    pub cancelled: bool,
}

impl AuditReport {
    fn new(slot: &str, repair: bool) -> AuditReport {
        AuditReport {
            slot: slot.to_string(),
            repair,
            stats: AuditStats::default(),
            problems: 0,
            repaired: 0,
            unrepaired: 0,
            garbage: 0,
            findings: Vec::new(),
            findings_not_listed: 0,
            users: Vec::new(),
            cancelled: false,
        }
    }

    /// 0 clean, 1 problems found and all repaired, 2 problems left (or audit cut short).
    pub fn exit_code(&self) -> i32 {
        if self.unrepaired > 0 || self.cancelled {
            2
        } else if self.problems > 0 {
            1
        } else {
            0
        }
    }

    /// The report of a copy that does not even open (header or database unreadable).
    pub fn unopenable(slot: &str, err: &StoreError) -> AuditReport {
        let kind = match err {
            StoreError::CorruptHeader { .. } => FindingKind::SlotHeader,
            StoreError::CorruptRecord { .. } | StoreError::Format(_) => FindingKind::CorruptRecord,
            _ => FindingKind::DbFile,
        };
        let mut r = AuditReport::new(slot, false);
        let mut f = Finding::new(kind, slot, format!("the slot copy does not open: {err}"));
        f.action = "not repaired: needs a good copy from a replica or backup".into();
        r.push(f);
        r.finish_counts();
        r
    }

    fn push(&mut self, f: Finding) {
        if self.findings.len() < FINDINGS_MAX {
            self.findings.push(f);
        } else {
            self.findings_not_listed += 1;
            // Unlisted findings cannot be repaired individually: say so in the counts.
            self.unrepaired += u64::from(f.problem);
        }
    }

    fn finish_counts(&mut self) {
        for f in &self.findings {
            if f.problem {
                self.problems += 1;
                if f.repaired {
                    self.repaired += 1;
                } else {
                    self.unrepaired += 1;
                }
            } else {
                self.garbage += 1;
            }
        }
        self.problems += self.findings_not_listed;
    }
}

/// Progress of a running audit (streamed to `tandem audit` as JSON lines).
#[derive(Debug, Clone, Serialize)]
pub struct AuditProgress {
    pub slot: String,
    pub phase: &'static str,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub records_done: u64,
    pub records_total: u64,
    pub elapsed_ms: u64,
}

/// A mailbox's derivable state recomputed from its records (and change entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Derived {
    pub exists: u32,
    pub unseen: u32,
    pub size_bytes: u64,
    pub digest: u32,
    pub max_uid: Option<Uid>,
    pub max_modseq: ModSeq,
}

impl Derived {
    pub fn add(&mut self, r: &MessageRecord) {
        self.exists += 1;
        if !r.flags.system.has(SystemFlags::SEEN) {
            self.unseen += 1;
        }
        self.size_bytes += u64::from(r.size);
        self.digest ^= r.digest();
        self.max_uid = self.max_uid.max(Some(r.uid));
        self.max_modseq = self.max_modseq.max(r.modseq);
    }

    pub fn add_change_key(&mut self, k: &[u8]) {
        if let Some(b) = k.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            self.max_modseq = self.max_modseq.max(ModSeq(u64::from_be_bytes(b)));
        }
    }

    /// Plain-words differences (`exists 3 -> 4`); empty when the header is right.
    pub fn mismatches(&self, h: &MailboxHeader) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, stored: String, want: String| {
            if stored != want {
                out.push(format!("{what} {stored} -> {want}"));
            }
        };
        cmp("exists", h.exists.to_string(), self.exists.to_string());
        cmp("unseen", h.unseen.to_string(), self.unseen.to_string());
        cmp(
            "size_bytes",
            h.size_bytes.to_string(),
            self.size_bytes.to_string(),
        );
        cmp(
            "digest",
            format!("{:08x}", h.digest),
            format!("{:08x}", self.digest),
        );
        if let Some(m) = self.max_uid
            && h.uidnext <= m
        {
            out.push(format!("uidnext {} -> {}", h.uidnext.0, m.0 + 1));
        }
        if h.highestmodseq < self.modseq_floor() {
            out.push(format!(
                "highestmodseq {} -> {}",
                h.highestmodseq.0,
                self.modseq_floor().0
            ));
        }
        out
    }

    pub fn apply(&self, h: &mut MailboxHeader) {
        h.exists = self.exists;
        h.unseen = self.unseen;
        h.size_bytes = self.size_bytes;
        h.digest = self.digest;
        if let Some(m) = self.max_uid {
            h.uidnext = h.uidnext.max(Uid(m.0.saturating_add(1)));
        }
        h.highestmodseq = h.highestmodseq.max(self.modseq_floor());
    }

    /// Highestmodseq may not be below any stored modseq, nor 0 (RFC 7162: mod-sequences
    /// are positive; a new mailbox starts at 1).
    fn modseq_floor(&self) -> ModSeq {
        self.max_modseq.max(ModSeq(1))
    }
}

/// A token bucket shared by the hashing threads.
struct RateLimiter {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimiter {
    fn take(&self, n: u64) {
        let due_and_elapsed = {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            g.1 += n;
            (
                Duration::from_secs_f64(g.1 as f64 / self.rate.max(1) as f64),
                g.0.elapsed(),
            )
        };
        if due_and_elapsed.0 > due_and_elapsed.1 {
            std::thread::sleep(due_and_elapsed.0 - due_and_elapsed.1);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct BlobRef {
    size: u32,
    mailbox: MailboxId,
    uid: Uid,
}

#[derive(Default)]
struct Model {
    mailboxes: BTreeMap<MailboxId, MailboxHeader>,
    derived: HashMap<MailboxId, Derived>,
    /// Mailboxes with a record that failed to decode: their counts cannot be compared.
    damaged: HashSet<MailboxId>,
    names: Vec<(String, String, MailboxId)>,
    refs: HashMap<BlobHash, BlobRef>,
    users: BTreeMap<String, UserRecord>,
    counters: HashMap<Vec<u8>, u64>,
    /// A keyspace could not be read to its end: absence checks would be false alarms.
    incomplete: bool,
    /// `changes` keys every live record needs (`Changed` at its modseq), not yet seen.
    expected_changes: HashSet<[u8; 20]>,
    /// Per mailbox: `Changed` entries without a live record at that modseq.
    stale_changes: HashMap<MailboxId, u32>,
}

struct BlobFile {
    path: PathBuf,
    hash: BlobHash,
    size: u64,
    mtime: i64,
}

struct Auditor<'a> {
    slot: &'a Slot,
    opts: &'a AuditOptions,
    source: &'a dyn RepairSource,
    progress: &'a (dyn Fn(&AuditProgress) + Sync),
    report: AuditReport,
    started: Instant,
    last_tick: Instant,
    phase: &'static str,
    bytes_done: AtomicU64,
    bytes_total: u64,
    records_done: AtomicU64,
    records_total: u64,
    limiter: Option<RateLimiter>,
    scope: Option<(String, BTreeSet<MailboxId>)>,
}

impl Slot {
    /// Audits this slot copy (and repairs it when `opts.repair`). Never panics on damaged
    /// data: a panic inside the database engine is caught and reported as a finding.
    /// `progress` is called from this thread at most every 200 ms.
    pub fn audit(
        &self,
        opts: &AuditOptions,
        source: &dyn RepairSource,
        progress: &(dyn Fn(&AuditProgress) + Sync),
    ) -> AuditReport {
        let _repair_guard = if opts.repair {
            Some(
                self.shared
                    .audit_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            )
        } else {
            None
        };
        let mut a = Auditor {
            slot: self,
            opts,
            source,
            progress,
            report: AuditReport::new(self.name(), opts.repair),
            started: Instant::now(),
            last_tick: Instant::now(),
            phase: "start",
            bytes_done: AtomicU64::new(0),
            bytes_total: 0,
            records_done: AtomicU64::new(0),
            records_total: 0,
            limiter: opts.rate_bytes_per_s.map(|rate| RateLimiter {
                rate,
                state: Mutex::new((Instant::now(), 0)),
            }),
            scope: None,
        };
        a.run();
        a.report.stats.elapsed_ms = a.started.elapsed().as_millis() as u64;
        a.report.finish_counts();
        if opts.raise_events {
            a.raise_events();
        }
        a.report
    }
}

impl Auditor<'_> {
    fn cancelled(&mut self) -> bool {
        if self
            .opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            self.report.cancelled = true;
        }
        self.report.cancelled
    }

    fn set_phase(&mut self, phase: &'static str) {
        self.phase = phase;
        self.tick(true);
    }

    fn tick(&mut self, force: bool) {
        if !force && self.last_tick.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_tick = Instant::now();
        self.emit_progress();
    }

    fn throttle(&self, bytes: u64) {
        if let Some(l) = &self.limiter {
            l.take(bytes);
        }
    }

    fn run(&mut self) {
        self.set_phase("header");
        self.check_header();
        let view = self.slot.view();
        if let Some(user) = self.opts.user.clone() {
            let ids = view
                .mailboxes(&user)
                .map(|v| v.into_iter().map(|m| m.id).collect())
                .unwrap_or_default();
            self.scope = Some((user, ids));
        }
        self.records_total = self
            .slot
            .shared
            .ks
            .all()
            .iter()
            .map(|k| k.approximate_len() as u64)
            .sum();
        self.set_phase("database files");
        self.check_db_files();
        if self.cancelled() {
            return;
        }
        self.set_phase("records");
        let model = self.check_records(&view);
        if self.cancelled() {
            return;
        }
        self.compare(&model);
        self.set_phase("blobs");
        let orphans = self.check_blobs(&model);
        if self.cancelled() {
            return;
        }
        if !orphans.is_empty() {
            self.set_phase("orphans");
            self.check_orphans(orphans);
        }
        if self.opts.repair && !self.cancelled() {
            self.set_phase("repair");
            self.repair();
        }
        self.set_phase("done");
    }

    fn check_header(&mut self) {
        let dir = self.slot.dir().to_path_buf();
        match SlotHeader::read(&dir) {
            Ok(h) if h.slot == self.slot.name() => {}
            Ok(h) => {
                let mut f = Finding::new(
                    FindingKind::SlotHeader,
                    dir.join("SLOT").display().to_string(),
                    format!(
                        "header names slot {:?}, opened as {:?}",
                        h.slot,
                        self.slot.name()
                    ),
                );
                f.action = "not repaired: check which copy this directory holds".into();
                self.report.push(f);
            }
            Err(e) => {
                let mut f = Finding::new(
                    FindingKind::SlotHeader,
                    dir.join("SLOT").display().to_string(),
                    e.to_string(),
                );
                f.action = "not repaired: needs the header from a replica".into();
                self.report.push(f);
            }
        }
    }

    /// Every table file against fjall's own whole-file checksum. The versions listed are
    /// held until the end, so compaction cannot delete a file being checked: a missing
    /// file is damage, not a race.
    fn check_db_files(&mut self) {
        let mut versions = Vec::new();
        for (name, ks) in KEYSPACE_NAMES.iter().zip(self.slot.shared.ks.all()) {
            match catch_unwind(AssertUnwindSafe(|| ks.tree.current_version())) {
                Ok(v) => versions.push((*name, v)),
                Err(_) => self.report.push(Finding::new(
                    FindingKind::DbFile,
                    *name,
                    "the database engine failed listing this keyspace's tables",
                )),
            }
        }
        let tables: Vec<(&str, PathBuf, u128)> = versions
            .iter()
            .flat_map(|(name, v)| {
                v.iter_tables()
                    .map(|t| (*name, t.path.as_ref().clone(), t.checksum().into_u128()))
            })
            .collect();
        for (ks, path, want) in tables {
            if self.cancelled() {
                return;
            }
            let res = self.xxh3_file(&path);
            let detail = match res {
                Ok((got, len)) => {
                    self.report.stats.db_files += 1;
                    self.report.stats.db_bytes += len;
                    if got == want {
                        self.tick(false);
                        continue;
                    }
                    format!(
                        "table file of keyspace {ks} fails its checksum \
                         (stored {want:032x}, computed {got:032x})"
                    )
                }
                Err(e) => format!("cannot read table file of keyspace {ks}: {e}"),
            };
            let mut f = Finding::new(FindingKind::DbFile, path.display().to_string(), detail);
            f.action = "not repaired: needs the records from a replica or backup".into();
            f.path = Some(path);
            self.report.push(f);
        }
        drop(versions);
    }

    fn xxh3_file(&self, path: &Path) -> std::io::Result<(u128, u64)> {
        let mut f = std::fs::File::open(path)?;
        let mut h = xxhash_rust::xxh3::Xxh3Default::new();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
            self.throttle(n as u64);
        }
        Ok((h.digest128(), len))
    }

    /// Scans one keyspace of the snapshot (whole, or under each of `prefixes`), handing
    /// each raw entry to `f`. A read error or an engine panic ends the scan of this
    /// keyspace with a `DbFile` finding and marks the model incomplete.
    fn scan(
        &mut self,
        view: &SlotView,
        ks_name: &'static str,
        prefixes: Option<Vec<Vec<u8>>>,
        model: &mut Model,
        mut f: impl FnMut(&mut Self, &mut Model, &[u8], &[u8]),
    ) {
        let Some(ks) = self.slot.shared.ks.by_name(ks_name).cloned() else {
            return;
        };
        let ranges: Vec<Option<Vec<u8>>> = match prefixes {
            None => vec![None],
            Some(p) => p.into_iter().map(Some).collect(),
        };
        for prefix in ranges {
            let res = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
                let iter = match &prefix {
                    None => view.snap.iter(&ks),
                    Some(p) => view.snap.prefix(&ks, p),
                };
                for g in iter {
                    let (k, v) = g.into_inner()?;
                    self.records_done.fetch_add(1, Ordering::Relaxed);
                    self.report.stats.records += 1;
                    self.throttle((k.len() + v.len()) as u64);
                    f(self, model, &k, &v);
                    self.tick(false);
                    if self.cancelled() {
                        break;
                    }
                }
                Ok(())
            }));
            let detail = match res {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("reading keyspace {ks_name} failed: {e}"),
                Err(_) => format!("the database engine panicked reading keyspace {ks_name}"),
            };
            model.incomplete = true;
            let mut fd = Finding::new(FindingKind::DbFile, ks_name, detail);
            fd.action = "not repaired: needs the records from a replica or backup".into();
            self.report.push(fd);
            return;
        }
    }

    fn corrupt(&mut self, ks: &str, key: &[u8], e: &StoreError, h: Option<&MailboxHeader>) {
        let uid = if ks == KS_MESSAGES {
            uid_of_message_key(key)
        } else {
            None
        };
        let mut f = Finding::new(
            FindingKind::CorruptRecord,
            format!("{ks}/{}", crate::error::hex(key)),
            e.to_string(),
        )
        .at(h, uid);
        if h.is_none() && (ks == KS_NAMES || ks == KS_SUBS) {
            let (user, name) = split_name_key(key);
            f.user = Some(user);
            f.mailbox = Some(name);
        }
        f.action = "not repaired: needs the record from a replica or backup".into();
        self.report.push(f);
    }

    fn check_records(&mut self, view: &SlotView) -> Model {
        let mut model = Model::default();
        let scoped = self.scope.clone();
        let mailbox_prefixes = scoped.as_ref().map(|(_, ids)| {
            ids.iter()
                .map(|id| mailbox_key(*id).to_vec())
                .collect::<Vec<_>>()
        });
        let user_prefixes = scoped.as_ref().map(|(u, _)| vec![user_prefix(u)]);

        self.scan(
            view,
            KS_MAILBOXES,
            mailbox_prefixes.clone(),
            &mut model,
            |a, m, k, v| match MailboxHeader::decode(k, v) {
                Ok(h) => {
                    m.mailboxes.insert(h.id, h);
                }
                Err(e) => {
                    if let Ok(b) = <[u8; 8]>::try_from(k) {
                        m.damaged.insert(MailboxId(u64::from_be_bytes(b)));
                    }
                    a.corrupt(KS_MAILBOXES, k, &e, None)
                }
            },
        );
        self.report.stats.mailboxes = model.mailboxes.len() as u64;
        self.scan(
            view,
            KS_NAMES,
            user_prefixes.clone(),
            &mut model,
            |a, m, k, v| match decode_u64(k, v) {
                Ok(id) => {
                    let (user, name) = split_name_key(k);
                    m.names.push((user, name, MailboxId(id)));
                }
                Err(e) => a.corrupt(KS_NAMES, k, &e, None),
            },
        );
        self.scan(
            view,
            KS_MESSAGES,
            mailbox_prefixes.clone(),
            &mut model,
            |a, m, k, v| {
                let id = mailbox_of_key(k);
                let h = id.and_then(|id| m.mailboxes.get(&id).cloned());
                match MessageRecord::decode(k, v) {
                    Ok(r) => {
                        if let Some(id) = id {
                            m.derived.entry(id).or_default().add(&r);
                            m.expected_changes.insert(change_key(id, r.modseq, r.uid));
                            m.refs.entry(r.blob).or_insert(BlobRef {
                                size: r.size,
                                mailbox: id,
                                uid: r.uid,
                            });
                            if h.is_none() && !m.damaged.contains(&id) {
                                let f = Finding::new(
                                    FindingKind::Dangling,
                                    format!("{KS_MESSAGES}/{}", crate::error::hex(k)),
                                    format!(
                                        "message uid {} of a mailbox id {} that does not exist",
                                        r.uid.0, id.0
                                    ),
                                );
                                a.report.push(f);
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(id) = id {
                            m.damaged.insert(id);
                            // The key survives: uidnext must still stay above its uid.
                            if let Some(u) = uid_of_message_key(k) {
                                let d = m.derived.entry(id).or_default();
                                d.max_uid = d.max_uid.max(Some(u));
                            }
                        }
                        a.corrupt(KS_MESSAGES, k, &e, h.as_ref());
                    }
                }
            },
        );
        self.scan(
            view,
            KS_CHANGES,
            mailbox_prefixes,
            &mut model,
            |a, m, k, v| {
                let id = mailbox_of_key(k);
                let h = id.and_then(|id| m.mailboxes.get(&id).cloned());
                match decode_change(k, v) {
                    Ok(kind) if k.len() == 20 => {
                        if let Some(id) = id {
                            m.derived.entry(id).or_default().add_change_key(k);
                            let live = <[u8; 20]>::try_from(k)
                                .is_ok_and(|k| m.expected_changes.remove(&k));
                            if kind == ChangeKind::Changed && !live {
                                *m.stale_changes.entry(id).or_default() += 1;
                            }
                        }
                    }
                    Ok(_) => a.corrupt(
                        KS_CHANGES,
                        k,
                        &StoreError::corrupt_record(k, "change key has the wrong length"),
                        h.as_ref(),
                    ),
                    Err(e) => a.corrupt(KS_CHANGES, k, &e, h.as_ref()),
                }
            },
        );
        self.scan(view, KS_SUBS, user_prefixes, &mut model, |a, _, k, v| {
            if let Err(e) = check_empty(k, v) {
                a.corrupt(KS_SUBS, k, &e, None);
            }
        });
        let user_keys = scoped.as_ref().map(|(u, _)| vec![u.as_bytes().to_vec()]);
        self.scan(view, KS_USERS, user_keys, &mut model, |a, m, k, v| {
            // A prefix scan for "bob" also yields "bobby": keep exact matches only.
            if let Some((u, _)) = &a.scope
                && u.as_bytes() != k
            {
                return;
            }
            match UserRecord::decode(k, v) {
                Ok(u) if u.user.as_bytes() == k => {
                    m.users.insert(u.user.clone(), u);
                }
                Ok(u) => a.corrupt(
                    KS_USERS,
                    k,
                    &StoreError::corrupt_record(k, &format!("record names user {:?}", u.user)),
                    None,
                ),
                Err(e) => {
                    let mut f = Finding::new(
                        FindingKind::CorruptRecord,
                        format!("{KS_USERS}/{}", crate::error::hex(k)),
                        e.to_string(),
                    );
                    f.user = Some(String::from_utf8_lossy(k).into_owned());
                    f.action = "not repaired: needs the record from a replica or backup".into();
                    a.report.push(f);
                }
            }
        });
        self.report.stats.users = model.users.len() as u64;
        self.scan(
            view,
            KS_COUNTERS,
            None,
            &mut model,
            |a, m, k, v| match decode_u64(k, v) {
                Ok(n) => {
                    m.counters.insert(k.to_vec(), n);
                }
                Err(e) => a.corrupt(KS_COUNTERS, k, &e, None),
            },
        );
        model
    }

    /// Derivable state and references, from the model.
    fn compare(&mut self, m: &Model) {
        for h in m.mailboxes.values() {
            let d = m.derived.get(&h.id).cloned().unwrap_or_default();
            if h.uidnext.0 == 0 || h.uidvalidity.0 == 0 {
                let mut f = Finding::new(
                    FindingKind::DerivedState,
                    format!("{KS_MAILBOXES}/{}", crate::error::hex(&mailbox_key(h.id))),
                    "uidnext or uidvalidity is zero",
                )
                .at(Some(h), None);
                f.action = "not repaired: uidvalidity cannot be derived".into();
                self.report.push(f);
            }
            let diffs: Vec<String> = if m.damaged.contains(&h.id) {
                // Counts of a mailbox with an unreadable record are unknown; only the
                // uid bound (from keys) can still be checked.
                d.mismatches(h)
                    .into_iter()
                    .filter(|s| s.starts_with("uidnext"))
                    .collect()
            } else {
                let mut v = d.mismatches(h);
                let missing = m
                    .expected_changes
                    .iter()
                    .filter(|k| mailbox_of_key(&k[..]) == Some(h.id))
                    .count();
                if missing > 0 {
                    v.push(format!("{missing} messages lack their change entry"));
                }
                if let Some(n) = m.stale_changes.get(&h.id) {
                    v.push(format!("{n} change entries name no live message"));
                }
                v
            };
            if !diffs.is_empty() {
                let f = Finding::new(
                    FindingKind::DerivedState,
                    format!("{KS_MAILBOXES}/{}", crate::error::hex(&mailbox_key(h.id))),
                    format!("header differs from records: {}", diffs.join(", ")),
                )
                .at(Some(h), None);
                self.report.push(f);
            }
        }
        if m.incomplete {
            // A keyspace was cut short: "missing" would mean "not read", not "absent".
            return;
        }
        let scoped = self.scope.is_some();
        let mut named: HashSet<MailboxId> = HashSet::new();
        for (user, name, id) in &m.names {
            named.insert(*id);
            match m.mailboxes.get(id) {
                Some(h) if &h.user == user && &h.name == name => {}
                Some(h) => self.report.push(
                    Finding::new(
                        FindingKind::Dangling,
                        format!("{KS_NAMES}/{}", crate::error::hex(&name_key(user, name))),
                        format!(
                            "name {user}/{name} points to mailbox id {} which is {}/{}",
                            id.0, h.user, h.name
                        ),
                    )
                    .at(Some(h), None),
                ),
                None if m.damaged.contains(id) => {}
                None => {
                    let mut f = Finding::new(
                        FindingKind::Dangling,
                        format!("{KS_NAMES}/{}", crate::error::hex(&name_key(user, name))),
                        format!("name points to mailbox id {} which does not exist", id.0),
                    );
                    f.user = Some(user.clone());
                    f.mailbox = Some(name.clone());
                    self.report.push(f);
                }
            }
        }
        for h in m.mailboxes.values() {
            if !named.contains(&h.id) {
                self.report.push(
                    Finding::new(
                        FindingKind::Dangling,
                        format!("{KS_MAILBOXES}/{}", crate::error::hex(&mailbox_key(h.id))),
                        "mailbox has no name entry (invisible to its user)",
                    )
                    .at(Some(h), None),
                );
            }
            if !m.users.contains_key(&h.user) {
                self.report.push(
                    Finding::new(
                        FindingKind::Dangling,
                        format!("{KS_MAILBOXES}/{}", crate::error::hex(&mailbox_key(h.id))),
                        format!("mailbox belongs to user {} who has no user record", h.user),
                    )
                    .at(Some(h), None),
                );
            }
        }
        // Quota usage per user, recomputed from records.
        let mut usage: BTreeMap<&str, u64> = BTreeMap::new();
        for h in m.mailboxes.values() {
            let d = m.derived.get(&h.id).cloned().unwrap_or_default();
            *usage.entry(&h.user).or_default() += d.size_bytes;
        }
        self.report.users = m
            .users
            .values()
            .map(|u| UserUsage {
                user: u.user.clone(),
                usage_bytes: usage.get(u.user.as_str()).copied().unwrap_or(0),
                quota_bytes: u.quota_bytes,
            })
            .collect();
        if scoped {
            return;
        }
        let max_id = m
            .mailboxes
            .keys()
            .chain(m.damaged.iter())
            .map(|id| id.0)
            .max();
        let next = m.counters.get(CTR_MAILBOX_ID).copied();
        if let Some(max_id) = max_id
            && next.is_none_or(|n| n <= max_id)
        {
            self.report.push(Finding::new(
                FindingKind::Counter,
                "counters/next_mailbox_id",
                format!(
                    "next_mailbox_id is {} but mailbox id {max_id} is in use",
                    next.map_or("missing".to_string(), |n| n.to_string())
                ),
            ));
        }
        if !m.counters.contains_key(CTR_UIDVALIDITY) && !m.mailboxes.is_empty() {
            self.report.push(Finding::new(
                FindingKind::Counter,
                "counters/next_uidvalidity",
                "next_uidvalidity is missing",
            ));
        }
    }

    /// Lists blob files, reports missing ones, hashes every file in parallel. Returns
    /// unreferenced, intact blobs (orphan candidates).
    fn check_blobs(&mut self, m: &Model) -> Vec<BlobFile> {
        let root = self.slot.shared.blobs.root().to_path_buf();
        let mut files = Vec::new();
        if self.scope.is_some() {
            for hash in m.refs.keys() {
                let path = self.slot.shared.blobs.path(hash);
                if let Ok(meta) = std::fs::metadata(&path) {
                    files.push(BlobFile {
                        path,
                        hash: *hash,
                        size: meta.len(),
                        mtime: mtime_secs(&meta),
                    });
                }
            }
        } else {
            self.list_blobs(&root, &mut files);
        }
        let present: HashSet<BlobHash> = files.iter().map(|f| f.hash).collect();
        if !m.incomplete {
            let mut missing: Vec<_> = m
                .refs
                .iter()
                .filter(|(h, _)| !present.contains(h))
                .collect();
            missing.sort_by_key(|(_, r)| (r.mailbox, r.uid));
            for (hash, r) in missing {
                let h = m.mailboxes.get(&r.mailbox);
                let f = Finding::new(
                    FindingKind::MissingBlob,
                    hash.to_hex(),
                    "a message's file is missing".to_string(),
                )
                .at(h, Some(r.uid));
                self.report.push(f);
            }
        }
        self.bytes_total = files.iter().map(|f| f.size).sum();
        self.report.stats.blobs = files.len() as u64;
        self.report.stats.blob_bytes = self.bytes_total;
        let results = self.hash_all(&files);
        let mut orphans = Vec::new();
        for (file, res) in files.into_iter().zip(results) {
            let r = m.refs.get(&file.hash).copied();
            let h = r.and_then(|r| m.mailboxes.get(&r.mailbox));
            let bad = match res {
                HashResult::Skipped => continue,
                HashResult::Ok(got) if got == file.hash => None,
                HashResult::Ok(got) => Some(format!("content hashes to {}", got.to_hex())),
                HashResult::Gone => {
                    // Deleted since listing: only the audit's own repair deletes blobs,
                    // so for a referenced blob this is real.
                    if r.is_some() {
                        Some("file vanished during the audit".to_string())
                    } else {
                        continue;
                    }
                }
                HashResult::Err(e) => Some(format!("cannot read: {e}")),
            };
            match (bad, r) {
                (Some(detail), _) => {
                    let mut f = Finding::new(FindingKind::CorruptBlob, file.hash.to_hex(), detail)
                        .at(h, r.map(|r| r.uid));
                    f.path = Some(file.path);
                    self.report.push(f);
                }
                (None, Some(r)) if u64::from(r.size) != file.size => {
                    let mut f = Finding::new(
                        FindingKind::BlobSize,
                        file.hash.to_hex(),
                        format!(
                            "the record says {} bytes, the intact file has {}",
                            r.size, file.size
                        ),
                    )
                    .at(h, Some(r.uid));
                    f.action = "not repaired: the record needs a replica's copy".into();
                    self.report.push(f);
                }
                (None, Some(_)) => {}
                (None, None) => orphans.push(file),
            }
        }
        orphans
    }

    fn list_blobs(&mut self, root: &Path, out: &mut Vec<BlobFile>) {
        let Ok(rd) = std::fs::read_dir(root) else {
            let f = Finding::new(
                FindingKind::DbFile,
                root.display().to_string(),
                "the blob directory cannot be read",
            );
            self.report.push(f);
            return;
        };
        let stray = |a: &mut Self, path: PathBuf, why: &str| {
            let mut f = Finding::new(FindingKind::StrayFile, path.display().to_string(), why);
            f.path = Some(path);
            a.report.push(f);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name == "tmp" {
                continue; // writes in flight
            }
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                if !is_dir {
                    stray(self, path, "not a blob (outside the hash directories)");
                }
                continue;
            }
            let Ok(sub) = std::fs::read_dir(&path) else {
                continue;
            };
            for f in sub.flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                let fpath = f.path();
                match BlobHash::from_hex(&fname) {
                    Some(hash) if fname.starts_with(&name) && fname == hash.to_hex() => {
                        if let Ok(meta) = f.metadata() {
                            out.push(BlobFile {
                                path: fpath,
                                hash,
                                size: meta.len(),
                                mtime: mtime_secs(&meta),
                            });
                        }
                    }
                    _ => stray(self, fpath, "file name is not a blob hash"),
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// BLAKE3 of every file, on several threads (each file whole on one thread: mail
    /// is many small files, so files, not chunks, are the unit of parallelism).
    fn hash_all(&mut self, files: &[BlobFile]) -> Vec<HashResult> {
        let threads = match self.opts.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(HASH_THREADS_MAX),
            n => n.min(HASH_THREADS_MAX),
        }
        .max(1);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let mut results: Vec<HashResult> = (0..files.len()).map(|_| HashResult::Skipped).collect();
        let this = &*self;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let parts: Vec<Vec<(usize, HashResult)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let done_tx = done_tx.clone();
                    let (next, stop) = (&next, &stop);
                    s.spawn(move || {
                        let mut out = Vec::new();
                        let mut buf = vec![0u8; READ_CHUNK_BYTES];
                        while !stop.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(f) = files.get(i) else { break };
                            out.push((i, this.hash_file(&f.path, &mut buf)));
                        }
                        let _ = done_tx.send(());
                        out
                    })
                })
                .collect();
            drop(done_tx);
            // This thread reports progress and watches for cancellation meanwhile; it
            // wakes as soon as the last worker is done.
            let mut finished = 0;
            while finished < threads {
                match done_rx.recv_timeout(PROGRESS_EVERY) {
                    Ok(()) => finished += 1,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if this
                            .opts
                            .cancel
                            .as_ref()
                            .is_some_and(|c| c.load(Ordering::Relaxed))
                        {
                            stop.store(true, Ordering::Relaxed);
                        }
                        this.emit_progress();
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, r) in parts.into_iter().flatten() {
            if let Some(slot) = results.get_mut(i) {
                *slot = r;
            }
        }
        self.cancelled();
        self.tick(true);
        results
    }

    fn emit_progress(&self) {
        (self.progress)(&AuditProgress {
            slot: self.report.slot.clone(),
            phase: self.phase,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
            records_done: self.records_done.load(Ordering::Relaxed),
            records_total: self.records_total,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    fn hash_file(&self, path: &Path, buf: &mut [u8]) -> HashResult {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashResult::Gone,
            Err(e) => return HashResult::Err(e.to_string()),
        };
        let mut h = blake3::Hasher::new();
        loop {
            match f.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    self.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
                    self.throttle(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return HashResult::Err(e.to_string()),
            }
        }
        HashResult::Ok(BlobHash(*h.finalize().as_bytes()))
    }

    /// Candidates unreferenced in the audit's snapshot are re-checked against the newest
    /// durable state: a delivery may have committed since. Then the grace period applies.
    fn check_orphans(&mut self, candidates: Vec<BlobFile>) {
        let mut want: HashMap<BlobHash, BlobFile> =
            candidates.into_iter().map(|f| (f.hash, f)).collect();
        if self.opts.repair {
            // Armed before the fresh snapshot: every commit is either in the snapshot or
            // recorded in the watch set that `Op::CollectOrphans` consults.
            *self
                .slot
                .shared
                .gc_watch
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Default::default());
        }
        let fresh = self.slot.view();
        let ks = self.slot.shared.ks.messages.clone();
        let scan = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
            for g in fresh.snap.iter(&ks) {
                let (k, v) = g.into_inner()?;
                if let Ok(r) = MessageRecord::decode(&k, &v) {
                    want.remove(&r.blob);
                }
            }
            Ok(())
        }));
        if !matches!(scan, Ok(Ok(()))) {
            // Cannot tell what is referenced now: list nothing rather than guess.
            return;
        }
        let grace = self.opts.orphan_grace_secs.max(ORPHAN_GRACE_SECS_MIN) as i64;
        let cutoff = self.slot.clock().now_unix_secs() - grace;
        let mut list: Vec<BlobFile> = want.into_values().collect();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        for f in list {
            if f.mtime >= cutoff {
                self.report.stats.orphans_recent += 1;
                continue;
            }
            let mut fd = Finding::new(
                FindingKind::OrphanBlob,
                f.hash.to_hex(),
                format!("{} bytes, referenced by no message", f.size),
            );
            fd.path = Some(f.path);
            self.report.push(fd);
        }
    }

    fn repair(&mut self) {
        let grace = self.opts.orphan_grace_secs.max(ORPHAN_GRACE_SECS_MIN) as i64;
        let cutoff = self.slot.clock().now_unix_secs() - grace;
        let quarantine = self.slot.dir().join("quarantine");
        let mut rebuilt: HashMap<MailboxId, Result<Vec<String>, String>> = HashMap::new();
        let mut counters_done: Option<Result<Vec<String>, String>> = None;
        let mut findings = std::mem::take(&mut self.report.findings);
        for f in &mut findings {
            if self.cancelled() {
                break;
            }
            match f.kind {
                FindingKind::DerivedState => {
                    let Some(id) = f.mailbox_id else { continue };
                    if !f.action.is_empty() {
                        continue; // already known not to be derivable
                    }
                    let res = rebuilt.entry(id).or_insert_with(|| {
                        match self.slot.execute(Op::RebuildMailbox { mailbox: id }) {
                            Ok(OpResult::Rebuilt(v)) => Ok(v),
                            Ok(_) => Ok(Vec::new()),
                            Err(e) => Err(e.to_string()),
                        }
                    });
                    match res {
                        Ok(v) if v.is_empty() => {
                            f.repaired = true;
                            f.action = "already right when the writer looked again".into();
                        }
                        Ok(v) => {
                            f.repaired = true;
                            f.action = format!("rebuilt from records: {}", v.join(", "));
                        }
                        Err(e) => f.action = format!("not repaired: {e}"),
                    }
                }
                FindingKind::CorruptRecord if !f.object.starts_with("counters/") => {}
                FindingKind::Counter | FindingKind::CorruptRecord => {
                    let res = counters_done.get_or_insert_with(|| {
                        match self.slot.execute(Op::RebuildCounters) {
                            Ok(OpResult::Rebuilt(v)) => Ok(v),
                            Ok(_) => Ok(Vec::new()),
                            Err(e) => Err(e.to_string()),
                        }
                    });
                    match res {
                        Ok(v) => {
                            f.repaired = true;
                            f.action = if v.is_empty() {
                                "already right when the writer looked again".into()
                            } else {
                                format!("rebuilt: {}", v.join(", "))
                            };
                        }
                        Err(e) => f.action = format!("not repaired: {e}"),
                    }
                }
                FindingKind::CorruptBlob => {
                    let Some(path) = f.path.clone() else { continue };
                    let moved = match self.slot.shared.blobs.quarantine(&path, &quarantine) {
                        Ok(p) => p,
                        Err(e) => {
                            f.action = format!("not repaired: cannot quarantine: {e}");
                            continue;
                        }
                    };
                    if f.uid.is_none() {
                        // Nothing references it: out of the way is all that is needed.
                        f.repaired = true;
                        f.action = format!("unreferenced; moved to {}", moved.display());
                        continue;
                    }
                    match self.restore_blob(&f.object) {
                        Ok(from) => {
                            f.repaired = true;
                            f.action = format!(
                                "moved to {}; good copy restored from {from}",
                                moved.display()
                            );
                        }
                        Err(why) => {
                            f.action = format!(
                                "moved to {}; the message stays unreadable until a replica \
                                 or backup supplies it ({why})",
                                moved.display()
                            );
                        }
                    }
                }
                FindingKind::MissingBlob => match self.restore_blob(&f.object) {
                    Ok(from) => {
                        f.repaired = true;
                        f.action = format!("good copy restored from {from}");
                    }
                    Err(why) => {
                        f.action = format!(
                            "not repaired: the message stays unreadable until a replica or \
                             backup supplies it ({why})"
                        )
                    }
                },
                FindingKind::StrayFile => {
                    let Some(path) = f.path.clone() else { continue };
                    match self.slot.shared.blobs.quarantine(&path, &quarantine) {
                        Ok(p) => {
                            f.repaired = true;
                            f.action = format!("moved to {}", p.display());
                        }
                        Err(e) => f.action = format!("not moved: {e}"),
                    }
                }
                _ => {}
            }
        }
        self.collect_orphans(&mut findings, cutoff);
        self.report.findings = findings;
    }

    /// Deletes the old orphans through the writer (ordered with appends, see
    /// `Op::CollectOrphans`), then disarms the watch in every case.
    fn collect_orphans(&mut self, findings: &mut [Finding], cutoff: i64) {
        let hashes: Vec<BlobHash> = findings
            .iter()
            .filter(|f| f.kind == FindingKind::OrphanBlob)
            .filter_map(|f| BlobHash::from_hex(&f.object))
            .collect();
        let res = if hashes.is_empty() || self.cancelled() {
            Ok(OpResult::Collected(Vec::new()))
        } else {
            self.slot.execute(Op::CollectOrphans {
                hashes,
                older_than: cutoff,
            })
        };
        *self
            .slot
            .shared
            .gc_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let gone: HashSet<String> = match &res {
            Ok(OpResult::Collected(v)) => v.iter().map(|h| h.to_hex()).collect(),
            _ => HashSet::new(),
        };
        for f in findings
            .iter_mut()
            .filter(|f| f.kind == FindingKind::OrphanBlob)
        {
            if gone.contains(&f.object) {
                f.repaired = true;
                f.action = "deleted".into();
                self.report.stats.orphans_collected += 1;
            } else if let Err(e) = &res {
                f.action = format!("not deleted: {e}");
            } else {
                f.action = "kept: in use again".into();
            }
        }
    }

    /// Fetches a good copy of blob `hex` from the repair source and stores it.
    fn restore_blob(&self, hex: &str) -> Result<String, String> {
        let hash = BlobHash::from_hex(hex).ok_or("bad hash")?;
        let bytes = match self.source.fetch_blob(&hash) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(format!("{} has no copy", self.source.describe())),
            Err(e) => return Err(format!("{}: {e}", self.source.describe())),
        };
        if BlobHash::of(&bytes) != hash {
            return Err(format!("{} sent a damaged copy", self.source.describe()));
        }
        let staged = self.slot.put_blob(&bytes).map_err(|e| e.to_string())?;
        crate::blob::fsync_dir(&staged.dir).map_err(|e| e.to_string())?;
        Ok(self.source.describe())
    }

    fn raise_events(&self) {
        let mut raised = 0usize;
        for f in self.report.findings.iter().filter(|f| f.problem) {
            if raised == EVENTS_MAX {
                break;
            }
            raised += 1;
            let status = if f.repaired {
                format!(" (repaired: {})", f.action)
            } else if f.action.is_empty() {
                " (not repaired)".to_string()
            } else {
                format!(" ({})", f.action)
            };
            let mut ev = Event::alert(
                f.kind.as_str(),
                format!(
                    "audit: {}: {} [{}]{status}",
                    f.kind.words(),
                    f.detail,
                    f.object
                ),
            );
            ev.user = f.user.clone();
            ev.mailbox = f.mailbox.clone();
            ev.uid = f.uid;
            self.slot.shared.alert(ev);
        }
        let problems = self.report.findings.iter().filter(|f| f.problem).count() as u64
            + self.report.findings_not_listed;
        if problems > raised as u64 {
            self.slot.shared.alert(Event::alert(
                "audit_more",
                format!(
                    "audit: {} more problems not raised one by one; run tandem audit --json",
                    problems - raised as u64
                ),
            ));
        }
    }
}

enum HashResult {
    Skipped,
    Ok(BlobHash),
    Gone,
    Err(String),
}

fn mailbox_of_key(k: &[u8]) -> Option<MailboxId> {
    k.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| MailboxId(u64::from_be_bytes(b)))
}

fn split_name_key(k: &[u8]) -> (String, String) {
    let (u, n) = match k.iter().position(|b| *b == 0) {
        Some(i) => (&k[..i], &k[i + 1..]),
        None => (k, &[][..]),
    };
    (
        String::from_utf8_lossy(u).into_owned(),
        String::from_utf8_lossy(n).into_owned(),
    )
}

/// Opens the copy in `dir` without the start-up check (a copy the check refuses is what
/// audit is for) and audits it. A copy that does not open, or whose database engine
/// panics while opening, comes back as a report with one finding, raised as an alert.
pub fn audit_dir(
    dir: &Path,
    slot_name: &str,
    events: Arc<crate::EventLog>,
    clock: Arc<dyn crate::Clock>,
    opts: &AuditOptions,
    source: &dyn RepairSource,
    progress: &(dyn Fn(&AuditProgress) + Sync),
) -> AuditReport {
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Slot::open_unchecked(dir, events.clone(), clock)
    }));
    let err = match opened {
        Ok(Ok(slot)) => return slot.audit(opts, source, progress),
        Ok(Err(e)) => e,
        Err(_) => StoreError::Db("the database engine panicked while opening it".into()),
    };
    let report = AuditReport::unopenable(slot_name, &err);
    if opts.raise_events {
        let mut ev = Event::alert(
            report.findings[0].kind.as_str(),
            format!("audit: the slot copy does not open: {err}"),
        );
        ev.slot = Some(slot_name.to_string());
        events.raise(ev);
    }
    report
}
