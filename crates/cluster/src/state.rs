//! Cluster state: what is true *now* — which copy masters each slot and at which epoch,
//! which hosts are alive (leases), and which slot each user lives in. One trait,
//! [`ClusterState`]; the embedded backend ([`FileState`]) keeps it in one local file shared
//! by every host of one machine (tests, single-box installs). etcd is the multi-machine
//! backend (not built yet; see docs/cluster.md).
//!
//! Promotion is one compare-epoch transaction ([`ClusterState::promote`]): it succeeds only
//! if the slot is still at the epoch the caller saw, so two operators (or two `fo -K`
//! runs) can never both promote, and every promotion raises the epoch by exactly one.
//!
//! ## Embedded file format (`state.json` under the shared path)
//!
//! ```text
//! line 1   "tandem-cluster-state 1"                       magic and format version
//! line 2   JSON body: {"revision":N,"slots":{..},"hosts":{..},"users":{..}}
//! line 3   "crc32c XXXXXXXX"                              CRC32C of line 2's bytes, hex
//! ```
//!
//! Commit protocol: take the exclusive lock on `state.lock` (an OS file lock, released if
//! the process dies), read and verify the current file, apply the change, write
//! `state.json.tmp`, fsync it, rename it over `state.json`, fsync the directory, release
//! the lock. Readers need no lock: rename is atomic, so they see the old or the new file,
//! never half of one. A file failing its CRC is never trusted: every call fails with
//! [`StateError::Corrupt`] until an operator restores it (the hosts keep their last view).
//!
//! Leases use the wall clock (milliseconds since 1970) because several processes must
//! agree on them; a master fences itself by its own *monotonic* clock, which is stricter
//! (see [`LeaseGuard`]), so a stepped clock can delay a failover but never allow two
//! writers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Accounts the embedded backend holds; past it `put_account` fails (use etcd).
pub const USERS_MAX: usize = 1_000_000;
/// Longest lease a host may ask for.
pub const LEASE_TTL_MS_MAX: u64 = 60_000;
/// Bytes of the state file accepted on read; a larger file is refused as corrupt.
const FILE_BYTES_MAX: u64 = 256 << 20;
const MAGIC: &str = "tandem-cluster-state 1";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cluster state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cluster state {path} is damaged ({detail}); restore it from a host's last copy or rebuild it with `tandem cluster state init`"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "slot {slot} moved on: it is at epoch {} (master {}), not {expected}; re-run to see the new state",
        current.epoch, current.master
    )]
    EpochMismatch {
        slot: String,
        expected: u64,
        current: SlotState,
    },
    #[error("slot {0} is not in the cluster state")]
    UnknownSlot(String),
    #[error("{0}")]
    Limit(String),
    /// A remote backend (etcd) failed or did not answer in time: the call changed
    /// nothing it reports, or its outcome is unknown; retry.
    #[error("cluster state: {0}")]
    Backend(String),
}

/// Who masters a slot now, and its fencing generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub master: String,
    pub epoch: u64,
    /// A clean switchover asked for (`tandem fo SLOT`): the master stops writes, drains
    /// replication to this host, then promotes it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
}

/// A host's liveness lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLease {
    /// Wall-clock ms since 1970 after which the host counts as dead.
    pub expires_unix_ms: u64,
}

impl HostLease {
    pub fn alive(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms > now_unix_ms
    }
}

/// How current one copy of a slot is, published by the host holding it when the slot's
/// master stops renewing its lease, so `fo -K` can promote the most current live copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPosition {
    /// The epoch of the master whose data the copy holds.
    pub epoch: u64,
    /// Modifications held: the sum over the copy's mailboxes of their HIGHESTMODSEQ
    /// (every write raises one mailbox's by exactly one), so of two copies fed by the same
    /// master the one that applied more of its writes scores higher.
    pub score: u64,
    /// When it was measured (wall clock, ms since 1970).
    pub at_unix_ms: u64,
}

/// One account of the directory: its argon2id password hash and the slot holding its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEntry {
    pub password: String,
    pub slot: String,
}

/// The whole state but the account directory (read that with [`ClusterState::accounts`]
/// or [`ClusterState::account`]: it can hold millions of entries), as one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Raised by every change (accounts included), so a watcher can tell it missed nothing.
    pub revision: u64,
    pub slots: BTreeMap<String, SlotState>,
    pub hosts: BTreeMap<String, HostLease>,
    /// slot → host → position of that host's copy (see [`CopyPosition`]).
    #[serde(default)]
    pub positions: BTreeMap<String, BTreeMap<String, CopyPosition>>,
}

/// The embedded file's body: the snapshot plus the account directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FileBody {
    #[serde(flatten)]
    snap: Snapshot,
    #[serde(default)]
    accounts: BTreeMap<String, AccountEntry>,
    /// The revision of the last change to `accounts`.
    #[serde(default)]
    accounts_revision: u64,
}

impl Snapshot {
    /// Hosts whose lease has not expired at `now_unix_ms`.
    pub fn alive(&self, host: &str, now_unix_ms: u64) -> bool {
        self.hosts.get(host).is_some_and(|l| l.alive(now_unix_ms))
    }
}

/// The cluster state, whatever holds it. Every method is one atomic step.
pub trait ClusterState: Send + Sync {
    /// The current state (one consistent snapshot).
    fn snapshot(&self) -> Result<Snapshot, StateError>;
    /// Records `slot` mastered by `master` at `epoch` if the slot is not there yet; returns
    /// the slot's state either way (first start of a cluster, a slot added to the config).
    fn init_slot(&self, slot: &str, master: &str, epoch: u64) -> Result<SlotState, StateError>;
    /// Makes `to` the master at epoch `expected_epoch + 1`, only if the slot is still at
    /// `expected_epoch` (the compare-epoch transaction).
    fn promote(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<SlotState, StateError>;
    /// Asks the master of `slot` (still at `expected_epoch`) to hand over to `to` cleanly.
    fn request_move(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<(), StateError>;
    /// Extends `host`'s lease to now + `ttl_ms`; returns the new expiry (unix ms).
    fn renew_lease(&self, host: &str, ttl_ms: u64) -> Result<u64, StateError>;
    /// Ends `host`'s lease now (a clean stop; `fo -K` of a host known dead).
    fn drop_lease(&self, host: &str) -> Result<(), StateError>;
    /// Publishes how current `host`'s copy of `slot` is.
    fn publish_position(
        &self,
        slot: &str,
        host: &str,
        pos: &CopyPosition,
    ) -> Result<(), StateError>;
    /// Adds or replaces an account (address already normalised: lower case).
    fn put_account(&self, address: &str, entry: &AccountEntry) -> Result<(), StateError>;
    /// Removes an account; `false` when there was none.
    fn del_account(&self, address: &str) -> Result<bool, StateError>;
    /// One account.
    fn account(&self, address: &str) -> Result<Option<AccountEntry>, StateError>;
    /// The whole account directory and the revision it was read at.
    fn accounts(&self) -> Result<(u64, BTreeMap<String, AccountEntry>), StateError>;
    /// A number that changes whenever the account directory changes (and seldom
    /// otherwise), so hosts mirroring it re-read it only when needed. The default is the
    /// whole state's revision: correct, but it makes mirrors re-read on every change.
    fn accounts_revision(&self) -> Result<u64, StateError> {
        Ok(self.snapshot()?.revision)
    }
    /// Waits until the revision is past `seen` or `timeout` passed; returns the snapshot.
    fn watch(&self, seen: u64, timeout: Duration) -> Result<Snapshot, StateError>;
}

/// Opens the cluster state `spec` names (tandem.toml's `[cluster] state`):
/// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` for etcd (a build with the `etcd` feature),
/// anything else a directory for the embedded backend, relative to `base`.
pub fn open(spec: &str, base: &Path) -> Result<std::sync::Arc<dyn ClusterState>, StateError> {
    if let Some(rest) = spec.strip_prefix("etcd://") {
        #[cfg(feature = "etcd")]
        {
            return Ok(std::sync::Arc::new(crate::etcd::EtcdState::connect(rest)?));
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = rest;
            return Err(StateError::Limit(
                "this tandem was built without etcd support: build it with \
                 `cargo build --release --features etcd` (needs Debian protobuf-compiler)"
                    .into(),
            ));
        }
    }
    Ok(std::sync::Arc::new(FileState::open(&base.join(spec))?))
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The embedded backend: one file, replaced atomically, shared by the hosts of one machine.
pub struct FileState {
    dir: PathBuf,
    /// Serialises this process's own transactions (the OS lock covers other processes).
    local: Mutex<()>,
}

impl FileState {
    /// Opens (creating the directory if needed) the state kept under `dir`.
    pub fn open(dir: &Path) -> Result<FileState, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(FileState {
            dir: dir.to_path_buf(),
            local: Mutex::new(()),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path(),
            source,
        }
    }

    fn read(&self) -> Result<FileBody, StateError> {
        let path = self.path();
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileBody::default()),
            Err(e) => return Err(self.io(e)),
            Ok(m) if m.len() > FILE_BYTES_MAX => {
                return Err(StateError::Corrupt {
                    path,
                    detail: format!("larger than {FILE_BYTES_MAX} bytes"),
                });
            }
            Ok(_) => std::fs::read_to_string(&path).map_err(|e| self.io(e))?,
        };
        decode(&text).map_err(|detail| StateError::Corrupt { path, detail })
    }

    /// One transaction: lock, read, change, write atomically.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut FileBody) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let _local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("state.lock"))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let mut snap = self.read()?;
        let out = f(&mut snap)?;
        snap.snap.revision += 1;
        let tmp = self.dir.join("state.json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(encode(&snap).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, self.path()).map_err(|e| self.io(e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        drop(lock); // releases the OS lock
        Ok(out)
    }
}

/// The compare of every compare-epoch transaction: `slot`, if still at `expected`.
fn at_epoch<'a>(
    s: &'a mut FileBody,
    slot: &str,
    expected: u64,
) -> Result<&'a mut SlotState, StateError> {
    let cur = s
        .snap
        .slots
        .get_mut(slot)
        .ok_or_else(|| StateError::UnknownSlot(slot.to_string()))?;
    if cur.epoch != expected {
        return Err(StateError::EpochMismatch {
            slot: slot.to_string(),
            expected,
            current: cur.clone(),
        });
    }
    Ok(cur)
}

fn encode(s: &FileBody) -> String {
    let body = serde_json::to_string(s).unwrap_or_default();
    format!(
        "{MAGIC}\n{body}\ncrc32c {:08x}\n",
        crc32c::crc32c(body.as_bytes())
    )
}

fn decode(text: &str) -> Result<FileBody, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("first line is not {MAGIC:?}"));
    }
    let body = lines.next().ok_or("no body")?;
    let crc_line = lines.next().ok_or("no checksum line (cut short?)")?;
    let want = crc_line
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad checksum line")?;
    let got = crc32c::crc32c(body.as_bytes());
    if got != want {
        return Err(format!("checksum {got:08x} != recorded {want:08x}"));
    }
    serde_json::from_str(body).map_err(|e| format!("bad body: {e}"))
}

impl ClusterState for FileState {
    fn snapshot(&self) -> Result<Snapshot, StateError> {
        Ok(self.read()?.snap)
    }

    fn init_slot(&self, slot: &str, master: &str, epoch: u64) -> Result<SlotState, StateError> {
        if let Some(s) = self.read()?.snap.slots.get(slot) {
            return Ok(s.clone()); // no write: hosts call this at every start
        }
        self.update(|s| {
            Ok(s.snap
                .slots
                .entry(slot.to_string())
                .or_insert_with(|| SlotState {
                    master: master.to_string(),
                    epoch,
                    moving_to: None,
                })
                .clone())
        })
    }

    fn promote(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<SlotState, StateError> {
        self.update(|s| {
            let cur = at_epoch(s, slot, expected_epoch)?;
            cur.epoch += 1;
            cur.master = to.to_string();
            cur.moving_to = None;
            Ok(cur.clone())
        })
    }

    fn request_move(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<(), StateError> {
        self.update(|s| {
            let cur = at_epoch(s, slot, expected_epoch)?;
            cur.moving_to = Some(to.to_string());
            Ok(())
        })
    }

    fn renew_lease(&self, host: &str, ttl_ms: u64) -> Result<u64, StateError> {
        if ttl_ms == 0 || ttl_ms > LEASE_TTL_MS_MAX {
            return Err(StateError::Limit(format!(
                "lease ttl must be 1 to {LEASE_TTL_MS_MAX} ms"
            )));
        }
        self.update(|s| {
            let expires_unix_ms = now_unix_ms() + ttl_ms;
            s.snap
                .hosts
                .insert(host.to_string(), HostLease { expires_unix_ms });
            Ok(expires_unix_ms)
        })
    }

    fn drop_lease(&self, host: &str) -> Result<(), StateError> {
        self.update(|s| {
            if let Some(l) = s.snap.hosts.get_mut(host) {
                l.expires_unix_ms = 0;
            }
            Ok(())
        })
    }

    fn publish_position(
        &self,
        slot: &str,
        host: &str,
        pos: &CopyPosition,
    ) -> Result<(), StateError> {
        self.update(|s| {
            s.snap
                .positions
                .entry(slot.to_string())
                .or_default()
                .insert(host.to_string(), pos.clone());
            Ok(())
        })
    }

    fn put_account(&self, address: &str, entry: &AccountEntry) -> Result<(), StateError> {
        self.update(|s| {
            if s.accounts.len() >= USERS_MAX && !s.accounts.contains_key(address) {
                return Err(StateError::Limit(format!(
                    "the embedded cluster state holds at most {USERS_MAX} accounts; use etcd"
                )));
            }
            s.accounts.insert(address.to_string(), entry.clone());
            s.accounts_revision = s.snap.revision + 1;
            Ok(())
        })
    }

    fn del_account(&self, address: &str) -> Result<bool, StateError> {
        if !self.read()?.accounts.contains_key(address) {
            return Ok(false);
        }
        self.update(|s| {
            s.accounts_revision = s.snap.revision + 1;
            Ok(s.accounts.remove(address).is_some())
        })
    }

    fn account(&self, address: &str) -> Result<Option<AccountEntry>, StateError> {
        Ok(self.read()?.accounts.get(address).cloned())
    }

    fn accounts(&self) -> Result<(u64, BTreeMap<String, AccountEntry>), StateError> {
        let b = self.read()?;
        Ok((b.snap.revision, b.accounts))
    }

    fn accounts_revision(&self) -> Result<u64, StateError> {
        Ok(self.read()?.accounts_revision)
    }

    fn watch(&self, seen: u64, timeout: Duration) -> Result<Snapshot, StateError> {
        // Polling: one stat-sized read per 50 ms is cheap next to a fsync per change, and
        // it works across processes without inotify.
        const POLL: Duration = Duration::from_millis(50);
        let start = Instant::now();
        loop {
            let s = self.read()?.snap;
            if s.revision > seen || start.elapsed() >= timeout {
                return Ok(s);
            }
            std::thread::sleep(POLL.min(timeout.saturating_sub(start.elapsed())));
        }
    }
}

/// The config as the cluster state makes it true now: each slot's master and epoch come
/// from the state (when it has the slot), the other copies are its replicas.
pub fn effective(cfg: &crate::ClusterConfig, snap: &Snapshot) -> crate::ClusterConfig {
    let mut out = cfg.clone();
    for s in out.slots.values_mut() {
        if let Some(st) = snap.slots.get(&s.name) {
            let copies: Vec<String> = s.copies().into_iter().map(str::to_string).collect();
            if copies.contains(&st.master) {
                s.replicas = copies.into_iter().filter(|h| *h != st.master).collect();
                s.master = st.master.clone();
            }
            s.epoch = st.epoch;
        }
    }
    out
}

/// What a host does for its slots (slot, master, epoch), to notice when it must change.
pub fn duties(cfg: &crate::ClusterConfig, host: &str) -> Vec<(String, String, u64)> {
    cfg.slots_of(host)
        .into_iter()
        .map(|(s, _)| (s.name.clone(), s.master.clone(), s.epoch))
        .collect()
}

/// The fencing side of a lease, held by a master host (invariant 6). The host renews its
/// lease every `ttl / 3`; a write is allowed only while the last *successful* renewal,
/// measured from when it was *started* on this host's monotonic clock, is younger than
/// `ttl - margin`. So a master that cannot reach the state (or was frozen) stops writing
/// before anyone else can see its lease expire and promote another copy.
#[derive(Debug)]
pub struct LeaseGuard {
    ttl: Duration,
    margin: Duration,
    renewed_at: Mutex<Option<Instant>>,
}

impl LeaseGuard {
    pub fn new(ttl: Duration, margin: Duration) -> LeaseGuard {
        LeaseGuard {
            ttl,
            margin: margin.min(ttl),
            renewed_at: Mutex::new(None),
        }
    }

    /// Call with the instant taken *before* the renewal request was sent.
    pub fn renewed(&self, started: Instant) {
        let mut r = self.renewed_at.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none_or(|prev| started > prev) {
            *r = Some(started);
        }
    }

    /// Whether this host may still acknowledge writes.
    pub fn may_write(&self, now: Instant) -> bool {
        let r = self.renewed_at.lock().unwrap_or_else(|p| p.into_inner());
        r.is_some_and(|at| now.saturating_duration_since(at) < self.ttl - self.margin)
    }

    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// The trait test suite: every backend must pass it (call it from the backend's tests;
/// the etcd backend, behind a feature of this crate, will run it too).
#[cfg(test)]
pub fn conformance(state: &dyn ClusterState) {
    let s = state.init_slot("s1", "a", 1).unwrap();
    let st = |m: &str, epoch| SlotState {
        master: m.into(),
        epoch,
        moving_to: None,
    };
    assert_eq!(s, st("a", 1));
    // A second init changes nothing.
    assert_eq!(state.init_slot("s1", "b", 7).unwrap(), s);
    let r0 = state.snapshot().unwrap().revision;
    assert!(state.request_move("s1", 0, "b").is_err());
    state.request_move("s1", 1, "b").unwrap();
    assert_eq!(
        state.snapshot().unwrap().slots["s1"].moving_to.as_deref(),
        Some("b")
    );
    let p = state.promote("s1", 1, "b").unwrap();
    assert_eq!(p, st("b", 2)); // the move request is done
    // A stale promotion is refused and changes nothing.
    match state.promote("s1", 1, "c") {
        Err(StateError::EpochMismatch { current, .. }) => assert_eq!(current, p),
        other => panic!("stale promote not refused: {other:?}"),
    }
    assert!(matches!(
        state.promote("nope", 1, "a"),
        Err(StateError::UnknownSlot(_))
    ));
    let snap = state.snapshot().unwrap();
    assert_eq!(snap.slots["s1"], p);
    assert!(snap.revision > r0);
    // Leases.
    let exp = state.renew_lease("a", 5_000).unwrap();
    let now = now_unix_ms();
    assert!(exp > now);
    assert!(state.snapshot().unwrap().alive("a", now));
    state.drop_lease("a").unwrap();
    assert!(!state.snapshot().unwrap().alive("a", now));
    assert!(!state.snapshot().unwrap().alive("never", now));
    assert!(state.renew_lease("a", 0).is_err());
    // Positions.
    let pos = CopyPosition {
        epoch: 2,
        score: 17,
        at_unix_ms: now_unix_ms(),
    };
    state.publish_position("s1", "c", &pos).unwrap();
    assert_eq!(state.snapshot().unwrap().positions["s1"]["c"], pos);
    // Accounts.
    let acct = |slot: &str| AccountEntry {
        password: "$argon2id$v=19$x".into(),
        slot: slot.into(),
    };
    assert_eq!(state.account("alice@example.com").unwrap(), None);
    let r1 = state.snapshot().unwrap().revision;
    state.put_account("alice@example.com", &acct("s1")).unwrap();
    state.put_account("bob@example.com", &acct("s2")).unwrap();
    assert!(
        state.snapshot().unwrap().revision > r1,
        "accounts raise the revision"
    );
    assert_eq!(
        state.account("alice@example.com").unwrap(),
        Some(acct("s1"))
    );
    state.put_account("alice@example.com", &acct("s3")).unwrap();
    let (rev, all) = state.accounts().unwrap();
    assert!(rev > r1);
    assert_eq!(all.len(), 2);
    assert_eq!(all["alice@example.com"], acct("s3"));
    let ar = state.accounts_revision().unwrap();
    state.renew_lease("a", 5_000).unwrap();
    state.put_account("carol@example.com", &acct("s1")).unwrap();
    let ar2 = state.accounts_revision().unwrap();
    assert_ne!(ar2, ar, "an account change must change accounts_revision");
    assert!(state.del_account("carol@example.com").unwrap());
    assert_ne!(state.accounts_revision().unwrap(), ar2);
    assert!(state.del_account("bob@example.com").unwrap());
    assert!(!state.del_account("bob@example.com").unwrap());
    assert_eq!(state.accounts().unwrap().1.len(), 1);
    // Watch returns at once when behind, and after the timeout when nothing changed.
    let cur = state.snapshot().unwrap().revision;
    assert_eq!(
        state
            .watch(cur - 1, Duration::from_secs(5))
            .unwrap()
            .revision,
        cur
    );
    let t = Instant::now();
    state.watch(cur, Duration::from_millis(120)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn file_backend_passes_the_trait_suite() {
        let d = tmp("suite");
        conformance(&FileState::open(&d).unwrap());
    }

    #[test]
    fn concurrent_promotions_from_one_epoch_let_exactly_one_win() {
        let d = tmp("race");
        let st = Arc::new(FileState::open(&d).unwrap());
        st.init_slot("s1", "a", 3).unwrap();
        let wins: Vec<_> = (0..8)
            .map(|i| {
                // Separate handles: like separate processes, only the OS lock serialises them.
                let d = d.clone();
                std::thread::spawn(move || {
                    FileState::open(&d)
                        .unwrap()
                        .promote("s1", 3, &format!("h{i}"))
                        .is_ok()
                })
            })
            .collect();
        let n = wins
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(n, 1);
        assert_eq!(st.snapshot().unwrap().slots["s1"].epoch, 4);
    }

    #[test]
    fn a_damaged_file_is_refused_not_trusted() {
        let d = tmp("crc");
        let st = FileState::open(&d).unwrap();
        st.init_slot("s1", "a", 1).unwrap();
        let p = d.join("state.json");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"a\"", "\"z\"");
        std::fs::write(&p, text).unwrap();
        let e = st.snapshot().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("checksum"));
        assert!(st.promote("s1", 1, "b").is_err());
    }

    #[test]
    fn effective_config_takes_master_and_epoch_from_the_state() {
        let cfg = crate::ClusterConfig::parse(
            "[hosts.a]\ndatacentre = \"x\"\nreplication = \"127.0.0.2:1\"\n\
             [hosts.b]\ndatacentre = \"y\"\nreplication = \"127.0.0.3:1\"\n\
             [slots.s1]\nhome = \"a\"\nreplicas = [\"b\"]\n",
        )
        .unwrap();
        let mut snap = Snapshot::default();
        assert_eq!(
            duties(&effective(&cfg, &snap), "b"),
            vec![("s1".into(), "a".into(), 1)]
        );
        snap.slots.insert(
            "s1".into(),
            SlotState {
                master: "b".into(),
                epoch: 5,
                moving_to: None,
            },
        );
        let e = effective(&cfg, &snap);
        assert_eq!(e.slots["s1"].replicas, vec!["a".to_string()]);
        assert_eq!(e.role("b", "s1"), Some(crate::Role::Master));
        assert_eq!(duties(&e, "a"), vec![("s1".into(), "b".into(), 5)]);
    }

    #[test]
    fn lease_guard_stops_writes_before_the_lease_can_expire() {
        let g = LeaseGuard::new(Duration::from_millis(3000), Duration::from_millis(500));
        let t0 = Instant::now();
        assert!(!g.may_write(t0), "no renewal yet: no writes");
        g.renewed(t0);
        assert!(g.may_write(t0 + Duration::from_millis(2400)));
        assert!(!g.may_write(t0 + Duration::from_millis(2500)));
        // An older renewal finishing late never moves the deadline back.
        g.renewed(t0 - Duration::from_secs(1));
        assert!(g.may_write(t0 + Duration::from_millis(2400)));
        assert_eq!(g.renew_every(), Duration::from_millis(1000));
    }
}
