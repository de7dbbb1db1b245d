//! Per master slot: the commit hook (`durability = "replica"` holds acks here), what each
//! replica still has to be sent, how far each replica has confirmed, and the lag numbers
//! `tandem status` shows.
//!
//! Sequence numbers: the store numbers each group commit that wrote something (`seq`).
//! The hook records `(seq, time, cumulative ops)` and marks the group's users dirty on
//! every replica link. A link's thread takes its dirty users together with the highest
//! `seq` they cover, syncs them from a snapshot taken after that group was published, and
//! on success acks that `seq`. A group is safe to acknowledge to its client once any
//! replica acked a `seq` at or above it.

use crate::status::ReplicaStatus;
use cluster::{Durability, OnReplicaTimeout, SlotConfig};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::{CommitHook, CommittedGroup, Event, EventLog, Op};

/// Commit records kept for lag and latency: past it the oldest are dropped (lag is then
/// reported from the oldest kept, an underestimate, marked with `lag_ms_floor`).
const PENDING_MAX: usize = 200_000;
/// Latency samples kept per replica for p50/p99.
const LATENCY_SAMPLES_MAX: usize = 4096;
/// Dirty users remembered per replica; past it the link does a full compare instead.
const DIRTY_USERS_MAX: usize = 100_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a link thread still has to send.
#[derive(Default)]
pub(crate) struct Dirty {
    pub users: BTreeSet<String>,
    /// The highest group seq whose users are in `users` (or were synced since).
    pub seq: u64,
    pub full: bool,
    pub stop: bool,
}

/// A link's numbers for `tandem status`.
#[derive(Default)]
pub(crate) struct LinkStats {
    pub connected: bool,
    pub last_sync_unix: Option<i64>,
    pub last_error: Option<String>,
    pub latencies_ms: VecDeque<u64>,
    /// (done, total) messages of a full compare in progress.
    pub progress: Option<(u64, u64)>,
    pub full_syncs: u64,
}

/// One replica of one master slot.
pub(crate) struct Link {
    pub host: String,
    pub dirty: Mutex<Dirty>,
    pub wake: Condvar,
    /// Highest group seq this replica confirmed (applied and fsynced).
    pub acked: AtomicU64,
    /// Write requests committed up to `acked` (for lag in changes).
    acked_ops: AtomicU64,
    pub stats: Mutex<LinkStats>,
}

impl Link {
    fn new(host: &str) -> Link {
        Link {
            host: host.to_string(),
            dirty: Mutex::new(Dirty {
                full: true,
                ..Dirty::default()
            }),
            wake: Condvar::new(),
            acked: AtomicU64::new(0),
            acked_ops: AtomicU64::new(0),
            stats: Mutex::new(LinkStats::default()),
        }
    }

    /// Takes up to `max` dirty users, the seq they cover (when all were taken), and
    /// whether a full compare was asked for.
    pub fn take(&self, max: usize) -> (Vec<String>, Option<u64>, bool) {
        let mut d = lock(&self.dirty);
        let full = std::mem::take(&mut d.full);
        if full {
            // A full compare covers every user.
            d.users.clear();
            return (Vec::new(), Some(d.seq), true);
        }
        let mut out = Vec::with_capacity(d.users.len().min(max));
        while out.len() < max {
            match d.users.pop_first() {
                Some(u) => out.push(u),
                None => break,
            }
        }
        let covered = d.users.is_empty().then_some(d.seq);
        (out, covered, false)
    }

    /// Puts users back (their sync failed) for the next attempt.
    pub fn put_back(&self, users: Vec<String>) {
        let mut d = lock(&self.dirty);
        d.users.extend(users);
    }

    pub fn request_full(&self) {
        lock(&self.dirty).full = true;
        self.wake.notify_all();
    }

    pub fn stopping(&self) -> bool {
        lock(&self.dirty).stop
    }

    /// Waits until there is work, a stop, or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let d = lock(&self.dirty);
        if d.users.is_empty() && !d.full && !d.stop {
            let _ = self.wake.wait_timeout(d, timeout);
        }
    }

    pub fn set_error(&self, e: Option<String>) {
        lock(&self.stats).last_error = e;
    }
}

struct Pending {
    seq: u64,
    at: Instant,
    ops_total: u64,
}

struct HubState {
    committed_seq: u64,
    committed_ops: u64,
    pending: VecDeque<Pending>,
    dropped_pending: bool,
}

/// The replication state of one slot this host masters. Installed as the slot's
/// [`CommitHook`].
pub(crate) struct Hub {
    pub slot: String,
    pub cfg: SlotConfig,
    pub links: Vec<Arc<Link>>,
    state: Mutex<HubState>,
    acked_cond: Condvar,
    degraded: AtomicBool,
    fenced: Mutex<Option<String>>,
    /// With cluster state: the host's lease; no client write is admitted or acknowledged
    /// once it may have expired (invariant 6: a frozen master wakes up unable to ack).
    pub lease: Mutex<Option<Arc<cluster::state::LeaseGuard>>>,
    /// A clean switchover: client writes are refused, replication carries on draining.
    pub draining: Mutex<Option<String>>,
    events: Arc<EventLog>,
}

impl Hub {
    pub fn new(cfg: &SlotConfig, events: Arc<EventLog>) -> Hub {
        Hub {
            slot: cfg.name.clone(),
            cfg: cfg.clone(),
            links: cfg
                .replicas
                .iter()
                .map(|h| Arc::new(Link::new(h)))
                .collect(),
            state: Mutex::new(HubState {
                committed_seq: 0,
                committed_ops: 0,
                pending: VecDeque::new(),
                dropped_pending: false,
            }),
            acked_cond: Condvar::new(),
            degraded: AtomicBool::new(false),
            fenced: Mutex::new(None),
            lease: Mutex::new(None),
            draining: Mutex::new(None),
            events,
        }
    }

    fn event(&self, mut ev: Event) {
        ev.slot = Some(self.slot.clone());
        self.events.raise(ev);
    }

    pub fn fence(&self, reason: String) {
        let mut f = lock(&self.fenced);
        if f.is_none() {
            self.event(Event::alert(
                "slot_fenced",
                format!("this copy stops accepting writes: {reason}"),
            ));
            *f = Some(reason);
        }
        drop(f);
        self.acked_cond.notify_all();
    }

    pub fn fenced(&self) -> Option<String> {
        lock(&self.fenced).clone()
    }

    /// `Err` when a lease is held and may have expired.
    fn lease_ok(&self) -> Result<(), String> {
        match &*lock(&self.lease) {
            Some(g) if !g.may_write(Instant::now()) => Err(format!(
                "slot {}: this host's cluster lease is not current; it may no longer be the master",
                self.slot
            )),
            _ => Ok(()),
        }
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn max_acked(&self) -> u64 {
        self.links
            .iter()
            .map(|l| l.acked.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// A link confirmed everything up to `seq`.
    pub fn ack(&self, link: &Link, seq: u64) {
        let before = link.acked.fetch_max(seq, Ordering::AcqRel);
        let now = Instant::now();
        let mut st = lock(&self.state);
        let ops = match st.pending.iter().rev().find(|p| p.seq <= seq) {
            Some(p) => p.ops_total,
            None if seq >= st.committed_seq => st.committed_ops,
            None => 0,
        };
        link.acked_ops.fetch_max(ops, Ordering::AcqRel);
        if seq > before {
            let mut s = lock(&link.stats);
            for p in st.pending.iter().filter(|p| p.seq > before && p.seq <= seq) {
                if s.latencies_ms.len() >= LATENCY_SAMPLES_MAX {
                    s.latencies_ms.pop_front();
                }
                s.latencies_ms
                    .push_back(now.duration_since(p.at).as_millis() as u64);
            }
        }
        let min_acked = self
            .links
            .iter()
            .map(|l| l.acked.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        while st.pending.front().is_some_and(|p| p.seq <= min_acked) {
            st.pending.pop_front();
        }
        let caught_up = seq >= st.committed_seq;
        drop(st);
        lock(&link.stats).last_sync_unix = Some(now_unix());
        if caught_up && self.degraded.swap(false, Ordering::AcqRel) {
            self.event(Event::info(
                "durability_restored",
                format!(
                    "replica {} caught up: acknowledgements wait for a replica again",
                    link.host
                ),
            ));
        }
        self.acked_cond.notify_all();
    }

    /// (changes, ms, ms is a floor) not yet confirmed by `link`.
    pub fn lag(&self, link: &Link) -> (u64, u64, bool) {
        let acked = link.acked.load(Ordering::Acquire);
        let st = lock(&self.state);
        if acked >= st.committed_seq {
            return (0, 0, false);
        }
        let changes = st
            .committed_ops
            .saturating_sub(link.acked_ops.load(Ordering::Acquire));
        match st.pending.iter().find(|p| p.seq > acked) {
            Some(p) => (
                changes,
                p.at.elapsed().as_millis() as u64,
                st.dropped_pending && p.seq > acked + 1,
            ),
            None => (changes, 0, true),
        }
    }

    pub fn replica_status(&self, link: &Link) -> ReplicaStatus {
        let (lag_changes, lag_ms, lag_ms_floor) = self.lag(link);
        let s = lock(&link.stats);
        let mut sorted: Vec<u64> = s.latencies_ms.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: usize| -> Option<u64> {
            if sorted.is_empty() {
                None
            } else {
                Some(sorted[(sorted.len() - 1) * p / 100])
            }
        };
        ReplicaStatus {
            host: link.host.clone(),
            connected: s.connected,
            lag_changes,
            lag_ms,
            lag_ms_floor,
            last_sync_unix: s.last_sync_unix,
            last_error: s.last_error.clone(),
            latency_p50_ms: pct(50),
            latency_p99_ms: pct(99),
            latency_samples: sorted.len() as u64,
            progress: s.progress,
            full_syncs: s.full_syncs,
        }
    }

    pub fn stop(&self) {
        for l in &self.links {
            lock(&l.dirty).stop = true;
            l.wake.notify_all();
        }
        self.acked_cond.notify_all();
    }

    /// Holds the calling writer thread until a replica confirmed `seq`, or the timeout.
    fn wait_for_replica(&self, seq: u64) -> Result<(), String> {
        let timeout = Duration::from_millis(self.cfg.replica_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if self.max_acked() >= seq {
                return Ok(());
            }
            if let Some(f) = self.fenced() {
                return Err(f);
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = match self.acked_cond.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(st);
        let strict = self.cfg.on_replica_timeout == OnReplicaTimeout::Strict;
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.event(Event::alert(
                "durability_degraded",
                if strict {
                    format!(
                        "no replica confirmed within {} ms: writes are refused until one catches up (on_replica_timeout = \"strict\")",
                        self.cfg.replica_timeout_ms
                    )
                } else {
                    format!(
                        "no replica confirmed within {} ms: acknowledging after the local fsync only until one catches up",
                        self.cfg.replica_timeout_ms
                    )
                },
            ));
        }
        if strict {
            Err(format!(
                "no replica confirmed the write within {} ms; it is stored here and will be replicated, but retry later",
                self.cfg.replica_timeout_ms
            ))
        } else {
            Ok(())
        }
    }
}

impl CommitHook for Hub {
    fn admit(&self, op: &Op) -> Result<(), String> {
        if let Some(f) = self.fenced() {
            return Err(f);
        }
        let internal = matches!(
            op,
            Op::Reconcile(_) | Op::SetEpoch { .. } | Op::ByReplication(_)
        );
        if !internal {
            if let Some(d) = lock(&self.draining).clone() {
                return Err(d);
            }
            self.lease_ok()?;
        }
        if !internal
            && self.cfg.durability == Durability::Replica
            && self.cfg.on_replica_timeout == OnReplicaTimeout::Strict
            && self.degraded()
        {
            return Err(format!(
                "slot {} needs a replica to confirm writes and none has caught up",
                self.slot
            ));
        }
        Ok(())
    }

    fn committed(&self, g: &CommittedGroup) -> Result<(), String> {
        {
            let mut st = lock(&self.state);
            st.committed_seq = g.seq;
            st.committed_ops += g.ops as u64;
            let ops_total = st.committed_ops;
            if st.pending.len() >= PENDING_MAX {
                st.pending.pop_front();
                st.dropped_pending = true;
            }
            st.pending.push_back(Pending {
                seq: g.seq,
                at: Instant::now(),
                ops_total,
            });
        }
        for l in &self.links {
            let mut d = lock(&l.dirty);
            d.seq = g.seq;
            if g.unattributed || d.users.len() + g.users.len() > DIRTY_USERS_MAX {
                d.full = true;
                d.users.clear();
            } else if !d.full {
                d.users.extend(g.users.iter().cloned());
            }
            drop(d);
            l.wake.notify_all();
        }
        let must_wait =
            self.cfg.durability == Durability::Replica && g.ops > g.internal && !self.degraded();
        if must_wait {
            self.wait_for_replica(g.seq)?;
        }
        if g.ops > g.internal {
            // Checked last: the lease may have lapsed while this group waited (or while
            // the process was frozen); then nobody is told OK.
            self.lease_ok()?;
        }
        Ok(())
    }
}
