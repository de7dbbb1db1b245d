//! Slot replication, both ends (DESIGN "Replication", invariants 1, 3, 5, 6).
//!
//! State-based, like Cyrus's sync, so it heals itself: the master's commit hook marks the
//! users each write touched; a link thread per (slot, replica) compares those users'
//! mailbox headers with the replica's (uidvalidity, uidnext, highestmodseq, digest), sends
//! the records changed since the replica's highestmodseq with their blob hashes, sends
//! the blobs the replica lacks, and the replica verifies every blob hash and record CRC,
//! applies the batch in one transaction, recomputes each digest and compares. Any
//! mismatch falls back to a full mailbox compare and raises an event. Every connection
//! starts with a full compare: catch-up after an outage and bootstrap of an empty replica
//! are the same path. Data failing its checksum on the master is never sent.
//!
//! `durability = "replica"`: the hook holds the writer (and so every reply of the group)
//! until a replica confirmed the group (applied and fsynced), or the slot's
//! `replica_timeout_ms` passed; then the slot degrades to local acks (default, alerted) or
//! refuses writes (`strict`) until a replica catches up.
//!
//! Module map: `wire` (frame format), `transport` (TLS + framed connection), `pki` (cluster
//! CA), `hub` (commit hook, lag), `master` (sync engine), `server` (replica end),
//! `status` (what `tandem status` shows). The wire format is also in
//! `docs/formats/replication.md`.

pub mod hub;
pub mod master;
pub mod pki;
pub mod server;
pub mod status;
pub mod transport;
pub mod wire;

use cluster::{ClusterConfig, Durability, Role, SlotConfig};
use hub::{Hub, lock};
use master::{LinkCtx, one_off, run_link};
use server::{ReplicaSlot, Server};
use status::{SlotStatus, VerifyReport};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{BlobHash, Epoch, Event, EventLog, Op, RepairSource, Slot, StoreError};
pub use transport::{Tls, TlsFiles};

/// Default bound on every socket read and write of a replication connection.
pub const IO_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long `Replication::stop` waits for its threads before leaving them behind.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bad frame from {peer}: {source}")]
    Wire {
        peer: String,
        #[source]
        source: wire::WireError,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{peer} refused (its epoch {}): {reason}", epoch.0)]
    Refused {
        peer: String,
        epoch: Epoch,
        reason: String,
    },
    #[error("fenced: another copy is at epoch {}", .0.0)]
    Fenced(Epoch),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
}

impl ReplError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ReplError {
        ReplError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A barrier through the slot's one writer: when it returns (refused by the hook, as the
/// copy is fenced or draining), every write admitted before has committed, so a compare
/// started now sees all of them. `RebuildCounters` because it would be harmless if ever
/// applied.
fn barrier(slot: &Slot) {
    let _ = slot.execute(Op::RebuildCounters);
}

/// What a host runs replication with.
pub struct HostSetup {
    /// This host's name in `cluster.toml`.
    pub host: String,
    pub cluster: ClusterConfig,
    pub tls: TlsFiles,
    /// The slot copies this host holds, opened, each with its role per `cluster.toml`.
    /// Master copies must have been through [`promote`] first.
    pub slots: Vec<(Slot, Role)>,
    pub events: Arc<EventLog>,
    pub io_timeout: Duration,
}

/// Makes `slot` the master copy at the epoch `cluster.toml` gives it (raising the copy's
/// epoch and its mailbox-id range, idempotently). A copy already at a higher epoch than the
/// config is refused: the config is stale, and serving would write behind a newer master.
pub fn promote(slot: &Slot, cfg: &SlotConfig) -> Result<(), ReplError> {
    let mine = slot.epoch();
    if mine.0 > cfg.epoch {
        return Err(ReplError::Config(format!(
            "slot {} is at epoch {} here but cluster.toml says epoch {}: raise epoch in cluster.toml if this host really is the master now",
            cfg.name, mine.0, cfg.epoch
        )));
    }
    slot.execute(Op::SetEpoch {
        epoch: Epoch(cfg.epoch),
        promote: true,
    })?;
    Ok(())
}

/// Replication running on one host: link threads for the slots it masters, a listener for
/// the slots it replicates. Stopped on drop.
pub struct Replication {
    host: String,
    cluster: ClusterConfig,
    tls: Tls,
    io_timeout: Duration,
    events: Arc<EventLog>,
    hubs: HashMap<String, (Arc<Hub>, Slot)>,
    server: Arc<Server>,
    listen: SocketAddr,
    /// The accept loop and the link threads, joined at stop so the listening address and
    /// the slots are released when `stop` returns.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Replication {
    pub fn start(setup: HostSetup) -> Result<Replication, ReplError> {
        let me = setup.cluster.host(&setup.host).ok_or_else(|| {
            ReplError::Config(format!(
                "host {:?} has no [hosts.{}] in cluster.toml",
                setup.host, setup.host
            ))
        })?;
        let listen = me.replication;
        let tls = Tls::load(&setup.tls)?;
        let mut hubs = HashMap::new();
        let mut replicas = HashMap::new();
        let mut mastered = HashMap::new();
        for (slot, role) in &setup.slots {
            let cfg = setup.cluster.slots.get(slot.name()).ok_or_else(|| {
                ReplError::Config(format!("slot {} is not in cluster.toml", slot.name()))
            })?;
            match role {
                Role::Master => {
                    let hub = Arc::new(Hub::new(cfg, setup.events.clone()));
                    slot.set_commit_hook(Some(hub.clone()));
                    mastered.insert(cfg.name.clone(), slot.clone());
                    hubs.insert(cfg.name.clone(), (hub, slot.clone()));
                }
                Role::Replica => {
                    replicas.insert(
                        cfg.name.clone(),
                        Arc::new(ReplicaSlot::new(slot.clone(), &cfg.master)),
                    );
                }
            }
        }
        let listener = TcpListener::bind(listen).map_err(|e| {
            ReplError::io(
                format!("cannot listen for replication on {listen} ([hosts.{}] replication in cluster.toml)", setup.host),
                e,
            )
        })?;
        let server = Arc::new(Server::new(
            &setup.host,
            replicas,
            mastered,
            tls.clone(),
            setup.io_timeout,
            setup.events.clone(),
        ));
        let accept = {
            let s = server.clone();
            std::thread::Builder::new()
                .name("repl-listen".into())
                .spawn(move || server::serve(listener, s))
                .map_err(|e| ReplError::io("cannot start the replication listener", e))?
        };
        let r = Replication {
            host: setup.host.clone(),
            cluster: setup.cluster.clone(),
            tls,
            io_timeout: setup.io_timeout,
            events: setup.events.clone(),
            hubs,
            server,
            listen,
            threads: Mutex::new(vec![accept]),
        };
        for (hub, slot) in r.hubs.values() {
            for link in &hub.links {
                let addr = r.replica_addr(&link.host)?;
                let ctx = LinkCtx {
                    hub: hub.clone(),
                    link: link.clone(),
                    slot: slot.clone(),
                    tls: r.tls.clone(),
                    host: r.host.clone(),
                    addr,
                    io_timeout: r.io_timeout,
                    events: r.events.clone(),
                };
                let t = std::thread::Builder::new()
                    .name(format!("repl-{}-{}", hub.slot, link.host))
                    .spawn(move || run_link(ctx))
                    .map_err(|e| ReplError::io("cannot start a replication thread", e))?;
                lock(&r.threads).push(t);
            }
        }
        Ok(r)
    }

    fn replica_addr(&self, host: &str) -> Result<SocketAddr, ReplError> {
        self.cluster
            .host(host)
            .map(|h| h.replication)
            .ok_or_else(|| {
                ReplError::Config(format!(
                    "replica {host} has no [hosts.{host}] in cluster.toml"
                ))
            })
    }

    /// Every slot copy replication knows on this host, in name order.
    pub fn status(&self) -> Vec<SlotStatus> {
        let mut out = Vec::new();
        for (name, (hub, slot)) in &self.hubs {
            out.push(SlotStatus {
                slot: name.clone(),
                role: "master".into(),
                epoch: slot.epoch().0,
                master: self.host.clone(),
                durability: hub.cfg.durability.as_str().into(),
                degraded: hub.cfg.durability == Durability::Replica && hub.degraded(),
                fenced: hub.fenced(),
                replicas: hub.links.iter().map(|l| hub.replica_status(l)).collect(),
                last_apply_unix: None,
                master_connected: false,
            });
        }
        for (name, rs) in &self.server.replicas {
            let cfg = self.cluster.slots.get(name);
            let t = rs.last_apply_unix.load(Ordering::Acquire);
            out.push(SlotStatus {
                slot: name.clone(),
                role: "replica".into(),
                epoch: rs.slot.epoch().0,
                master: rs.master.clone(),
                durability: cfg.map(|c| c.durability.as_str()).unwrap_or("local").into(),
                degraded: false,
                fenced: None,
                replicas: Vec::new(),
                last_apply_unix: (t > 0).then_some(t),
                master_connected: rs.sessions.load(Ordering::Acquire) > 0,
            });
        }
        out.sort_by(|a, b| a.slot.cmp(&b.slot));
        out
    }

    /// Stops `slot` accepting writes on this host until restart (a switchover or a newer
    /// master in the cluster state); false if this host does not master it.
    pub fn fence(&self, slot: &str, reason: String) -> bool {
        match self.hubs.get(slot) {
            Some((hub, slot)) => {
                hub.fence(reason);
                barrier(slot);
                true
            }
            None => false,
        }
    }

    /// Stops `slot` accepting client writes while replication keeps sending what it has
    /// (a clean switchover drains this way); false if this host does not master it.
    pub fn drain(&self, slot: &str, reason: String) -> bool {
        match self.hubs.get(slot) {
            Some((hub, slot)) => {
                *lock(&hub.draining) = Some(reason);
                barrier(slot);
                true
            }
            None => false,
        }
    }

    /// Gates every slot mastered here on `guard` (cluster state leases, invariant 6).
    pub fn set_lease(&self, guard: Arc<cluster::state::LeaseGuard>) {
        for (hub, _) in self.hubs.values() {
            *lock(&hub.lease) = Some(guard.clone());
        }
    }

    /// Asks every link of `slot` for a full compare now; false if this host does not
    /// master it.
    pub fn request_full_sync(&self, slot: &str) -> bool {
        match self.hubs.get(slot) {
            Some((hub, _)) => {
                for l in &hub.links {
                    l.request_full();
                }
                true
            }
            None => false,
        }
    }

    /// Compares `slot` with each of its replicas, changing nothing.
    pub fn verify(&self, slot: &str) -> Result<Vec<VerifyReport>, ReplError> {
        let (hub, s) = self
            .hubs
            .get(slot)
            .ok_or_else(|| ReplError::Config(format!("this host does not master slot {slot}")))?;
        let mut out = Vec::new();
        for l in &hub.links {
            let addr = self.replica_addr(&l.host)?;
            let dial = master::Dial {
                tls: &self.tls,
                slot: s.name(),
                epoch: s.epoch(),
                host: &self.host,
                replica: &l.host,
                addr,
                io_timeout: self.io_timeout,
            };
            let mut sync = one_off(s, &dial, self.events.clone())?;
            out.push(sync.verify()?);
        }
        Ok(out)
    }

    /// A repair source backed by `slot`'s replicas (`tandem audit --repair --from-replica`).
    pub fn repair_source(&self, slot: &str) -> Option<ReplicaRepairSource> {
        let (_, s) = self.hubs.get(slot)?;
        ReplicaRepairSource::new(
            &self.cluster,
            &self.host,
            s.name(),
            s.epoch(),
            self.tls.clone(),
            self.io_timeout,
            self.events.clone(),
        )
        .ok()
    }

    pub fn stop(&self) {
        for (hub, slot) in self.hubs.values() {
            slot.set_commit_hook(None);
            hub.stop();
        }
        self.server.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect_timeout(&self.listen, Duration::from_millis(200));
        // Link threads notice within a second, or when their current request ends (at
        // most the I/O timeout); sessions on the replica side end with their connection.
        // Stop waits at most STOP_WAIT for them: a shutdown never hangs on a dead peer.
        let deadline = std::time::Instant::now() + STOP_WAIT;
        let threads = std::mem::take(&mut *lock(&self.threads));
        while threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in threads.into_iter().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fetches blobs from a slot's replicas for audit repair: each replica verifies the blob
/// before sending it, and it is verified again here on arrival. Works with or without a
/// running server (it needs only the slot's name and epoch, not the open slot).
pub struct ReplicaRepairSource {
    slot: String,
    epoch: Epoch,
    host: String,
    replicas: Vec<(String, SocketAddr)>,
    tls: Tls,
    io_timeout: Duration,
    events: Arc<EventLog>,
    conns: Mutex<HashMap<String, transport::Conn>>,
}

impl ReplicaRepairSource {
    /// For the copy of `slot` at `epoch` that `host` masters per `cluster`.
    pub fn new(
        cluster: &ClusterConfig,
        host: &str,
        slot: &str,
        epoch: Epoch,
        tls: Tls,
        io_timeout: Duration,
        events: Arc<EventLog>,
    ) -> Result<ReplicaRepairSource, ReplError> {
        let cfg = cluster
            .slots
            .get(slot)
            .ok_or_else(|| ReplError::Config(format!("slot {slot} is not in cluster.toml")))?;
        if cfg.master != host {
            return Err(ReplError::Config(format!(
                "cluster.toml says {} masters slot {slot}, not {host}: repair from the replicas on the master",
                cfg.master
            )));
        }
        let replicas = cfg
            .replicas
            .iter()
            .filter_map(|r| cluster.host(r).map(|h| (r.clone(), h.replication)))
            .collect::<Vec<_>>();
        if replicas.is_empty() {
            return Err(ReplError::Config(format!(
                "slot {slot} has no replicas in cluster.toml"
            )));
        }
        Ok(ReplicaRepairSource {
            slot: slot.to_string(),
            epoch,
            host: host.to_string(),
            replicas,
            tls,
            io_timeout,
            events,
            conns: Mutex::new(HashMap::new()),
        })
    }

    fn alert(&self, kind: &str, detail: String) {
        let mut ev = Event::alert(kind, detail);
        ev.slot = Some(self.slot.clone());
        self.events.raise(ev);
    }
}

impl RepairSource for ReplicaRepairSource {
    fn describe(&self) -> String {
        let names: Vec<_> = self.replicas.iter().map(|(h, _)| h.as_str()).collect();
        format!("replicas {} of slot {}", names.join(", "), self.slot)
    }

    fn fetch_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let mut last_err = None;
        let mut reached = 0;
        let mut conns = lock(&self.conns);
        for (host, addr) in &self.replicas {
            if !conns.contains_key(host) {
                let dial = master::Dial {
                    tls: &self.tls,
                    slot: &self.slot,
                    epoch: self.epoch,
                    host: &self.host,
                    replica: host,
                    addr: *addr,
                    io_timeout: self.io_timeout,
                };
                match master::open(&dial, wire::Purpose::Fetch, None) {
                    Ok((c, _)) => {
                        conns.insert(host.clone(), c);
                    }
                    Err(e) => {
                        last_err = Some(format!("{host}: {e}"));
                        continue;
                    }
                }
            }
            let Some(conn) = conns.get_mut(host) else {
                continue;
            };
            reached += 1;
            let mut good = None;
            let mut bad = None;
            let res =
                master::get_blobs(conn, self.epoch, std::slice::from_ref(hash), |h, bytes| {
                    let actual = BlobHash::of(&bytes);
                    if actual == h {
                        good = Some(bytes);
                    } else {
                        bad = Some(actual);
                    }
                    Ok(())
                });
            match res {
                Ok(_) => {
                    if let Some(actual) = bad {
                        self.alert(
                            "replication_refused_blob",
                            format!(
                                "blob {hash} from {host} hashes to {actual}: not used for repair"
                            ),
                        );
                    }
                    if good.is_some() {
                        return Ok(good);
                    }
                }
                Err(e) => {
                    conns.remove(host);
                    last_err = Some(format!("{host}: {e}"));
                }
            }
        }
        match last_err {
            // No replica reachable: say so instead of "nobody has it".
            Some(e) if reached == 0 => {
                self.alert("repair_source_unreachable", e.clone());
                Err(StoreError::Refused(format!("no replica reachable: {e}")))
            }
            _ => Ok(None),
        }
    }
}
