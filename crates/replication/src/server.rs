//! The replica end: a TLS listener on the host's replication address, one thread per
//! connection (bounded), answering its slot's master.
//!
//! Checks at hello (fencing, DESIGN invariant 6): the slot is one this host replicates
//! per `cluster.toml`; the caller is that slot's master per `cluster.toml` and its client
//! certificate (verified against the cluster CA) names it; its epoch is not below this
//! copy's (a higher one is adopted). A host that masters the slot itself refuses with its
//! epoch, so a stale master learns it has been replaced. Every later frame must carry the
//! session's epoch, and a batch is applied only while this copy is still at that epoch.

use crate::ReplError;
use crate::hub::lock;
use crate::transport::{Conn, Tls, cert_names_host};
use crate::wire::{Frame, Msg, PROTOCOL_VERSION, Purpose, RawHeader, WireRecord, WireUserState};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::replica::RecordEntry;
use store::{Epoch, Event, EventLog, Op, OpResult, ReadContext, Slot, StagedBlob};

/// Concurrent replication connections a host accepts; more are closed at once.
const SESSIONS_MAX: usize = 256;
/// Bounds on what one request may ask for.
const STATE_USERS_MAX: usize = 1_000;
const LIST_LIMIT_MAX: u32 = 10_000;
const LIST_USERS_MAX: u32 = 10_000;
const BLOBS_PER_REQUEST_MAX: usize = 1_000;
/// Blobs received but not yet referenced by an applied batch; past it the connection is
/// dropped (a master never sends more than one batch needs).
const STAGED_MAX: usize = 1_000_000;

/// Received blob bytes held until the batch that needs them (or until they pass
/// `PENDING_BYTES_MAX`), then written several at a time: their fsyncs overlap, as the
/// master's concurrent deliveries' did.
#[derive(Default)]
struct PendingBlobs {
    blobs: Vec<(store::BlobHash, Vec<u8>)>,
    bytes: usize,
}

/// Memory a session holds in received, not yet written blobs.
const PENDING_BYTES_MAX: usize = 64 << 20;
/// Blob files written (and fsynced) at once.
const WRITE_THREADS: usize = 4;

/// Writes `pending` (each verified against its hash; a mismatch is alerted and the blob
/// dropped: the batch needing it reports it missing) on up to `WRITE_THREADS` threads.
fn write_blobs(
    slot: &Slot,
    peer: &str,
    pending: PendingBlobs,
    staged: &mut Vec<StagedBlob>,
) -> Result<(), ReplError> {
    if pending.blobs.is_empty() {
        return Ok(());
    }
    let per = pending.blobs.len().div_ceil(WRITE_THREADS);
    let results: Vec<(store::BlobHash, Result<StagedBlob, store::StoreError>)> =
        std::thread::scope(|sc| {
            let handles: Vec<_> = pending
                .blobs
                .chunks(per)
                .map(|chunk| {
                    sc.spawn(move || {
                        chunk
                            .iter()
                            .map(|(h, b)| (*h, slot.put_blob_verified(h, b)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
    for (hash, r) in results {
        match r {
            Ok(b) => staged.push(b),
            Err(e) if e.is_corruption() => {
                let mut ev = Event::alert(
                    "replication_refused_blob",
                    format!("blob {hash} from {peer} failed verification: {e}"),
                );
                ev.slot = Some(slot.name().to_string());
                slot.events().raise(ev);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fsyncs the blobs' directories, several at a time.
fn sync_dirs(slot: &Slot, staged: &[StagedBlob]) -> Result<(), ReplError> {
    if staged.is_empty() {
        return Ok(());
    }
    let per = staged.len().div_ceil(WRITE_THREADS);
    std::thread::scope(|sc| {
        let handles: Vec<_> = staged
            .chunks(per)
            .map(|chunk| sc.spawn(move || slot.sync_blob_dirs(chunk)))
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ReplError::Protocol("a blob directory sync panicked".into()));
                }
            }
        }
        Ok(())
    })
}

/// A slot this host replicates.
pub(crate) struct ReplicaSlot {
    pub slot: Slot,
    /// Its master per `cluster.toml`.
    pub master: String,
    session_gen: AtomicU64,
    pub last_apply_unix: AtomicI64,
    pub sessions: AtomicUsize,
}

impl ReplicaSlot {
    pub fn new(slot: Slot, master: &str) -> ReplicaSlot {
        ReplicaSlot {
            slot,
            master: master.to_string(),
            session_gen: AtomicU64::new(0),
            last_apply_unix: AtomicI64::new(0),
            sessions: AtomicUsize::new(0),
        }
    }
}

pub(crate) struct Server {
    pub host: String,
    pub replicas: HashMap<String, Arc<ReplicaSlot>>,
    /// Slots this host masters: a connection for one is refused with this copy's epoch.
    pub mastered: HashMap<String, Slot>,
    pub tls: Tls,
    pub io_timeout: Duration,
    pub events: Arc<EventLog>,
    pub sessions: AtomicUsize,
    pub stop: AtomicBool,
    /// Last error per peer address, so a misconfigured peer is alerted once, not per retry.
    alerted: Mutex<HashMap<String, String>>,
}

impl Server {
    pub fn new(
        host: &str,
        replicas: HashMap<String, Arc<ReplicaSlot>>,
        mastered: HashMap<String, Slot>,
        tls: Tls,
        io_timeout: Duration,
        events: Arc<EventLog>,
    ) -> Server {
        Server {
            host: host.to_string(),
            replicas,
            mastered,
            tls,
            io_timeout,
            events,
            sessions: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            alerted: Mutex::new(HashMap::new()),
        }
    }

    fn alert_once(&self, peer: &str, slot: Option<&str>, kind: &str, detail: String) {
        let mut seen = lock(&self.alerted);
        if seen.get(peer) == Some(&detail) {
            return;
        }
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(peer.to_string(), detail.clone());
        drop(seen);
        let mut ev = Event::alert(kind, detail);
        ev.slot = slot.map(str::to_string);
        self.events.raise(ev);
    }
}

/// The accept loop; returns when `stop` is set (and a connection wakes it).
pub(crate) fn serve(listener: TcpListener, srv: Arc<Server>) {
    for tcp in listener.incoming() {
        if srv.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(tcp) = tcp else {
            // EMFILE and friends: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if srv.sessions.fetch_add(1, Ordering::AcqRel) >= SESSIONS_MAX {
            srv.sessions.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let srv2 = srv.clone();
        let spawned = std::thread::Builder::new()
            .name("repl-session".into())
            .spawn(move || {
                let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = session(&srv2, tcp)
                    && !matches!(e, ReplError::Io { .. })
                {
                    srv2.alert_once(
                        &peer,
                        None,
                        "replication_session_failed",
                        format!("from {peer}: {e}"),
                    );
                }
                srv2.sessions.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            srv.sessions.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn refuse(conn: &mut Conn, epoch: Epoch, reason: String) -> Result<(), ReplError> {
    conn.send(
        epoch,
        &Msg::Refused {
            reason: reason.clone(),
        },
    )?;
    Err(ReplError::Protocol(format!(
        "refused {}: {reason}",
        conn.peer
    )))
}

fn session(srv: &Server, tcp: TcpStream) -> Result<(), ReplError> {
    let (mut conn, cert) = srv.tls.accept(tcp, srv.io_timeout)?;
    let hello = conn.recv()?;
    let Msg::Hello {
        version,
        slot,
        from_host,
        purpose,
    } = hello.msg
    else {
        conn.send(
            Epoch(0),
            &Msg::Error {
                reason: "expected Hello".into(),
            },
        )?;
        return Err(ReplError::Protocol("first frame was not Hello".into()));
    };
    if version != PROTOCOL_VERSION {
        return refuse(
            &mut conn,
            Epoch(0),
            format!(
                "protocol version {version} not supported (this host speaks {PROTOCOL_VERSION})"
            ),
        );
    }
    if let Some(mine) = srv.mastered.get(&slot) {
        return refuse(
            &mut conn,
            mine.epoch(),
            format!(
                "host {} masters slot {slot} at epoch {}; it is nobody's replica",
                srv.host,
                mine.epoch().0
            ),
        );
    }
    let Some(rs) = srv.replicas.get(&slot).cloned() else {
        return refuse(
            &mut conn,
            Epoch(0),
            format!(
                "host {} holds no replica of slot {slot} per cluster.toml",
                srv.host
            ),
        );
    };
    if from_host != rs.master {
        return refuse(
            &mut conn,
            rs.slot.epoch(),
            format!(
                "cluster.toml here says the master of {slot} is {}, not {from_host}",
                rs.master
            ),
        );
    }
    if !cert_names_host(&cert, &from_host) {
        return refuse(
            &mut conn,
            rs.slot.epoch(),
            format!("the client certificate does not name host {from_host}"),
        );
    }
    let mine = rs.slot.epoch();
    if hello.epoch < mine {
        rs.slot.events().raise({
            let mut ev = Event::alert(
                "stale_master_refused",
                format!(
                    "{from_host} tried to replicate slot {slot} at epoch {} but this copy is at epoch {}",
                    hello.epoch.0, mine.0
                ),
            );
            ev.slot = Some(slot.clone());
            ev
        });
        return refuse(
            &mut conn,
            mine,
            format!("stale epoch {} (this copy is at {})", hello.epoch.0, mine.0),
        );
    }
    if hello.epoch > mine {
        rs.slot.execute(Op::SetEpoch {
            epoch: hello.epoch,
            promote: false,
        })?;
    }
    let epoch = hello.epoch;
    let counters = rs.slot.view().counters()?;
    conn.send(
        epoch,
        &Msg::HelloOk {
            copy_id: srv.host.clone(),
            counters,
        },
    )?;
    let session_no = match purpose {
        Purpose::Sync => Some(rs.session_gen.fetch_add(1, Ordering::AcqRel) + 1),
        Purpose::Fetch => None,
    };
    if session_no.is_some() {
        rs.sessions.fetch_add(1, Ordering::AcqRel);
    }
    let res = serve_requests(srv, &rs, &mut conn, epoch, session_no);
    if session_no.is_some() {
        rs.sessions.fetch_sub(1, Ordering::AcqRel);
    }
    res
}

fn serve_requests(
    srv: &Server,
    rs: &ReplicaSlot,
    conn: &mut Conn,
    epoch: Epoch,
    session_no: Option<u64>,
) -> Result<(), ReplError> {
    let slot = &rs.slot;
    let mut staged: Vec<StagedBlob> = Vec::new();
    let mut pending = PendingBlobs::default();
    loop {
        if srv.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let Frame { epoch: e, msg } = match conn.recv() {
            Ok(f) => f,
            // The master closed (or went quiet past the timeout): a normal end.
            Err(ReplError::Io { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if e != epoch || slot.epoch() != epoch {
            return refuse(
                conn,
                slot.epoch(),
                format!(
                    "frame at epoch {} on a session at epoch {} (this copy is at {})",
                    e.0,
                    epoch.0,
                    slot.epoch().0
                ),
            );
        }
        let reply = match msg {
            Msg::Ping => Msg::Pong,
            Msg::ListUsers { after, limit } => Msg::Users {
                names: slot
                    .view()
                    .users_after(after.as_deref(), limit.min(LIST_USERS_MAX) as usize)?,
            },
            Msg::GetState { users } => {
                if users.len() > STATE_USERS_MAX {
                    Msg::Error {
                        reason: format!("at most {STATE_USERS_MAX} users per GetState"),
                    }
                } else {
                    let view = slot.view();
                    let mut out = Vec::with_capacity(users.len());
                    for u in users {
                        let st = view.user_state(&u)?;
                        out.push(WireUserState {
                            user: st.user,
                            rows: st.rows,
                            mailboxes: st
                                .mailboxes
                                .into_iter()
                                .map(|(h, value)| RawHeader { id: h.id, value })
                                .collect(),
                            complete: st.complete,
                        });
                    }
                    Msg::State { users: out }
                }
            }
            Msg::ListRecords {
                mailbox,
                from,
                limit,
            } => {
                let (entries, next) = slot.view().record_entries(
                    mailbox,
                    from,
                    limit.clamp(1, LIST_LIMIT_MAX) as usize,
                )?;
                Msg::Records {
                    mailbox,
                    entries: entries
                        .into_iter()
                        .map(|e| match e {
                            RecordEntry::Good(r, value) => WireRecord::Good { uid: r.uid, value },
                            RecordEntry::Corrupt(uid) => WireRecord::Corrupt { uid },
                        })
                        .collect(),
                    next,
                }
            }
            Msg::Offer { hashes } => Msg::Need {
                hashes: hashes.into_iter().filter(|h| !slot.has_blob(h)).collect(),
            },
            Msg::Blob { hash, bytes } => {
                if session_no.is_none() {
                    return refuse(conn, epoch, "this connection is read-only".into());
                }
                pending.bytes += bytes.len();
                pending.blobs.push((hash, bytes));
                if pending.bytes > PENDING_BYTES_MAX {
                    write_blobs(slot, &conn.peer, std::mem::take(&mut pending), &mut staged)?;
                }
                if staged.len() > STAGED_MAX {
                    return refuse(conn, epoch, "too many blobs without a batch".into());
                }
                continue;
            }
            Msg::Apply { batch } => {
                if session_no.is_none() {
                    return refuse(conn, epoch, "this connection is read-only".into());
                }
                if session_no != Some(rs.session_gen.load(Ordering::Acquire)) {
                    return refuse(
                        conn,
                        epoch,
                        "a newer session of this master took over".into(),
                    );
                }
                write_blobs(slot, &conn.peer, std::mem::take(&mut pending), &mut staged)?;
                sync_dirs(slot, &staged)?;
                staged.clear();
                match slot.execute(Op::ApplyReplica(Box::new(batch))) {
                    Ok(OpResult::ReplicaApplied(outcomes)) => {
                        rs.last_apply_unix
                            .store(crate::hub::now_unix(), Ordering::Release);
                        Msg::Applied { outcomes }
                    }
                    Ok(other) => Msg::Error {
                        reason: format!("unexpected store result {other:?}"),
                    },
                    Err(e) => Msg::Error {
                        reason: e.to_string(),
                    },
                }
            }
            Msg::GetBlobs { hashes } => {
                if hashes.len() > BLOBS_PER_REQUEST_MAX {
                    Msg::Error {
                        reason: format!("at most {BLOBS_PER_REQUEST_MAX} blobs per GetBlobs"),
                    }
                } else {
                    let mut missing = Vec::new();
                    let mut corrupt = Vec::new();
                    for h in hashes {
                        if !slot.has_blob(&h) {
                            missing.push(h);
                            continue;
                        }
                        // Verified here before it leaves; verified again on arrival.
                        match slot.read_blob(&h, &ReadContext::default()) {
                            Ok(bytes) => conn.send_blob(epoch, h, bytes)?,
                            Err(e) if e.is_corruption() => corrupt.push(h),
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Msg::BlobsEnd { missing, corrupt }
                }
            }
            other => Msg::Error {
                reason: format!("{} is not a request", other.name()),
            },
        };
        conn.send(epoch, &reply)?;
    }
}
