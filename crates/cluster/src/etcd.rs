//! The etcd v3 backend of [`ClusterState`] (the `etcd` feature): the multi-machine
//! cluster state, spelled `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` in tandem.toml's
//! `[cluster] state` (plain HTTP to the listed members; PREFIX defaults to `/tandem`).
//!
//! ## Key layout (every value is JSON)
//!
//! ```text
//! PREFIX/accounts/ADDRESS      AccountEntry   {"password":"$argon2id$...","slot":"s1"}
//! PREFIX/hosts/HOST            HostLease      {"expires_unix_ms":N}
//! PREFIX/meta/accounts         {"changed_unix_ms":N}: rewritten with every account change
//! PREFIX/positions/SLOT/HOST   CopyPosition   {"epoch":N,"score":N,"at_unix_ms":N}
//! PREFIX/slots/SLOT            SlotState      {"master":"a","epoch":N,"moving_to":"b"?}
//! ```
//!
//! `Snapshot.revision` is etcd's store revision from the response header: etcd raises it
//! on every write (accounts included, as the trait requires; writes of other users of the
//! same etcd raise it too, which only costs a watcher a spurious wake-up).
//!
//! ## Transactions
//!
//! - **snapshot**: one range read of `[PREFIX/hosts/, PREFIX/slots0)` — hosts, positions
//!   and slots, never the account directory (it sorts before `hosts/`) — at one revision.
//! - **init_slot**: `Txn(create_revision(slots/SLOT) == 0 → put, else → get)`: the first
//!   writer wins, every later call reads what is there and writes nothing.
//! - **promote / request_move** (compare-epoch): read `slots/SLOT`; absent →
//!   [`StateError::UnknownSlot`], another epoch → [`StateError::EpochMismatch`]; else
//!   `Txn(mod_revision(slots/SLOT) == the revision read → put the new state, else → get)`.
//!   A lost race re-checks the epoch on the value the failed Txn returned, so a concurrent
//!   promotion turns into `EpochMismatch` and exactly one of any number of racing
//!   promotions from one epoch wins; a race lost to a change that kept the epoch (a move
//!   request) is retried, at most [`CAS_ATTEMPTS`] times.
//! - **renew_lease**: put `hosts/HOST` with the wall-clock expiry (the same semantics as
//!   the embedded backend: a host is alive while `expires_unix_ms > now`); **drop_lease**:
//!   `Txn(version(hosts/HOST) > 0 → put expiry 0)` (nothing when there is no lease).
//! - **watch(seen, timeout)**: reads the snapshot; when its revision is past `seen` returns
//!   it, else watches the prefix from revision `seen + 1` and returns a fresh snapshot on
//!   the first event (or a compaction notice) or when `timeout` passed.
//! - **put_account**: `Txn(put accounts/ADDRESS, put meta/accounts)`; **del_account**:
//!   `Txn(version(accounts/ADDRESS) > 0 → delete it, put meta/accounts)`. So
//!   **accounts_revision** is the `mod_revision` of `meta/accounts`: it changes with every
//!   account change made through Tandem and with nothing else (change accounts only with
//!   `tandem user`, never with etcdctl, or hosts may not notice).
//! - **accounts**: paged range reads (`ACCOUNTS_PAGE` keys per read), every page pinned
//!   to the revision of the first, so the directory is one consistent view.
//!
//! ## Failure cases
//!
//! Every request is bounded by [`REQUEST_TIMEOUT`] (connecting by [`CONNECT_TIMEOUT`]).
//! Requests go to one member (one client per member listed); a request that cannot reach
//! its member (refused, connect timeout: it never left) goes to the next, and later
//! requests stay with the member that answered. A request that may have reached etcd is
//! never repeated: a slow or leaderless member (requests demand a leader) or no reachable
//! member makes the call fail with [`StateError::Backend`] naming the members. A value that is not the expected
//! JSON is [`StateError::Corrupt`] naming its key; it is never trusted. Responses larger
//! than [`MESSAGE_BYTES_MAX`] are refused.
//!
//! The trait is synchronous (hosts call it from plain threads, some inside a tokio
//! runtime of their own), so each [`EtcdState`] owns a one-worker tokio runtime, runs
//! every request on it and waits for the answer on a plain channel: callable from any
//! thread, async or not.

use crate::state::{
    AccountEntry, ClusterState, CopyPosition, HostLease, LEASE_TTL_MS_MAX, SlotState, Snapshot,
    StateError, now_unix_ms,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for one etcd request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait to open a connection to a member (shorter than a request, so a member
/// that does not answer at all is passed over within one request's time).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest response accepted (a snapshot of 100,000 slots is ~10 MB).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Compare-and-swap rounds lost to changes that kept the epoch before giving up.
pub const CAS_ATTEMPTS: usize = 16;
/// Longest pause of a failed `watch` before it reports the error.
const WATCH_ERROR_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Accounts read per request by [`ClusterState::accounts`].
const ACCOUNTS_PAGE: i64 = 1000;
/// Members an `etcd://` spec may list.
const ENDPOINTS_MAX: usize = 16;
/// Longest key name (host, slot, address) accepted.
const NAME_BYTES_MAX: usize = 1024;
const DEFAULT_PREFIX: &str = "/tandem";

/// The cluster state in etcd. Cheap to share: every method is one or a few requests.
pub struct EtcdState {
    /// Taken out on drop (shut down without blocking, even inside an async context).
    rt: Option<tokio::runtime::Runtime>,
    /// One client per member (`http://HOST:PORT`, client). Requests go to `current`; one
    /// that cannot reach its member (the request never left) moves on to the next.
    members: Vec<(String, Client)>,
    current: AtomicUsize,
    /// `http://HOST:PORT,...` for error messages.
    endpoints: String,
    /// The key prefix without a trailing `/`, e.g. `/tandem`.
    prefix: String,
}

impl Drop for EtcdState {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Splits `HOST:PORT[,HOST:PORT...][/PREFIX]` into endpoint URLs and the key prefix.
fn parse_spec(spec: &str) -> Result<(Vec<String>, String), StateError> {
    let bad = |why: String| {
        StateError::Limit(format!(
            "cluster state etcd://{spec}: {why} (expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX])"
        ))
    };
    let (hosts, prefix) = match spec.find('/') {
        Some(i) => (&spec[..i], spec[i..].trim_end_matches('/')),
        None => (spec, DEFAULT_PREFIX),
    };
    let prefix = if prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        prefix
    };
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("bad key prefix {prefix:?}")));
    }
    let mut endpoints = Vec::new();
    for h in hosts.split(',') {
        let h = h.trim();
        let port_ok = h
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(bad(format!("{h:?} is not HOST:PORT")));
        }
        endpoints.push(format!("http://{h}"));
    }
    if endpoints.len() > ENDPOINTS_MAX {
        return Err(bad(format!("more than {ENDPOINTS_MAX} members")));
    }
    Ok((endpoints, prefix.to_string()))
}

/// A key component (host, slot, address) must not be empty, contain `/` where that would
/// change the layout, or be absurdly long.
fn check_name(what: &str, name: &str, slash_ok: bool) -> Result<(), StateError> {
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || (!slash_ok && name.contains('/'))
        || name.chars().any(char::is_control)
    {
        return Err(StateError::Limit(format!(
            "bad {what} name {name:?} for the cluster state"
        )));
    }
    Ok(())
}

impl EtcdState {
    /// Connects to the etcd members `spec` names (`HOST:PORT[,HOST:PORT...][/PREFIX]`, the
    /// part after `etcd://`). Connecting is lazy: an unreachable etcd fails the first call.
    pub fn connect(spec: &str) -> Result<EtcdState, StateError> {
        let (endpoints, prefix) = parse_spec(spec)?;
        let shown = endpoints.join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| {
                StateError::Backend(format!("etcd {shown}: cannot start a runtime: {e}"))
            })?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT)
            .with_require_leader(true);
        let mut members = Vec::new();
        for ep in endpoints {
            let (url, opts) = (ep.clone(), opts.clone());
            let client = run_on(&rt, REQUEST_TIMEOUT + CONNECT_TIMEOUT, async move {
                Client::connect([url], Some(opts)).await
            })
            .map_err(|e| StateError::Backend(format!("etcd {ep}: cannot connect: {}", e.1)))?;
            members.push((ep, client));
        }
        Ok(EtcdState {
            rt: Some(rt),
            members,
            current: AtomicUsize::new(0),
            endpoints: shown,
            prefix,
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StateError {
        StateError::Backend(format!("etcd {}: {what}: {e}", self.endpoints))
    }

    /// Runs one request, made by `op` for a member's client, on the runtime, bounded by
    /// `limit` per member tried. A request that could not reach its member (it never
    /// left: connection refused, connect timeout) is made again for the next member, and
    /// so is an `idempotent` one that failed in any way; a request that may have been
    /// applied and must not be applied twice fails, and the next call starts at the next
    /// member (so a frozen or partitioned member costs one failed call, not all of them).
    fn call<T, F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        idempotent: bool,
        op: F,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let rt = self.rt.as_ref().expect("runtime present until drop");
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failed = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let (url, client) = &self.members[i];
            match run_on(rt, limit, op(client.clone())) {
                Ok(v) => {
                    if k > 0 {
                        self.current.store(i, Ordering::Relaxed); // stay with a working member
                    }
                    return Ok(v);
                }
                Err((sent_not, m)) if sent_not || idempotent => failed.push(format!("{url}: {m}")),
                Err((_, m)) => {
                    self.current.store((i + 1) % n, Ordering::Relaxed);
                    return Err(StateError::Backend(format!("etcd {url}: {what}: {m}")));
                }
            }
        }
        self.current.store((first + 1) % n, Ordering::Relaxed);
        Err(StateError::Backend(format!(
            "etcd: {what}: no member answered: {}",
            failed.join("; ")
        )))
    }

    fn get(
        &self,
        key: String,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StateError> {
        self.call("read", REQUEST_TIMEOUT, true, |c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { kv(&c).get(key, opts).await }
        })
    }

    /// `idempotent`: applying it twice has the effect and answer of applying it once.
    fn txn(&self, txn: Txn, idempotent: bool) -> Result<etcd_client::TxnResponse, StateError> {
        self.call("transaction", REQUEST_TIMEOUT, idempotent, |c| {
            let txn = txn.clone();
            async move { kv(&c).txn(txn).await }
        })
    }

    fn put<T: Serialize>(&self, key: String, value: &T) -> Result<u64, StateError> {
        let body = json(value);
        let r = self.call("write", REQUEST_TIMEOUT, true, |c| {
            let (key, body) = (key.clone(), body.clone());
            async move { kv(&c).put(key, body, None).await }
        })?;
        Ok(revision(r.header()))
    }

    /// The write that marks a change of the account directory (see `accounts_revision`).
    fn accounts_changed(&self) -> TxnOp {
        let body = format!("{{\"changed_unix_ms\":{}}}", now_unix_ms());
        TxnOp::put(self.key("meta", "accounts"), body, None)
    }

    fn decode<T: DeserializeOwned>(&self, kv: &KeyValue) -> Result<T, StateError> {
        serde_json::from_slice(kv.value()).map_err(|e| StateError::Corrupt {
            path: PathBuf::from(format!(
                "etcd://{}{}",
                self.endpoints.trim_start_matches("http://"),
                String::from_utf8_lossy(kv.key())
            )),
            detail: format!("not the expected JSON: {e}"),
        })
    }

    /// The compare-epoch transaction shared by `promote` and `request_move`: `change`
    /// makes the new state from the current one (already checked to be at `expected`).
    fn at_epoch(
        &self,
        slot: &str,
        expected: u64,
        change: impl Fn(&SlotState) -> SlotState,
    ) -> Result<SlotState, StateError> {
        let key = self.key("slots", slot);
        let mut cur = self.get(key.clone(), None)?.kvs().first().cloned();
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = cur else {
                return Err(StateError::UnknownSlot(slot.to_string()));
            };
            let st: SlotState = self.decode(&kv)?;
            if st.epoch != expected {
                return Err(StateError::EpochMismatch {
                    slot: slot.to_string(),
                    expected,
                    current: st,
                });
            }
            let new = change(&st);
            let r = self.txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(key.clone(), json(&new), None)])
                    .or_else([TxnOp::get(key.clone(), None)]),
                false, // applied twice, the second would see its own change as a lost race
            )?;
            if r.succeeded() {
                return Ok(new);
            }
            cur = first_get(&r);
        }
        Err(StateError::Backend(format!(
            "etcd {}: slot {slot} changed under {CAS_ATTEMPTS} attempts in a row; retry",
            self.endpoints
        )))
    }

    /// The account directory in pages, every page at the first page's revision.
    fn read_accounts(&self) -> Result<(u64, BTreeMap<String, AccountEntry>), StateError> {
        let base = self.key("accounts", "");
        let end = format!("{}/accounts0", self.prefix); // just past every account key
        let mut out = BTreeMap::new();
        let mut from = base.clone().into_bytes();
        let mut rev = 0i64;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(ACCOUNTS_PAGE);
            if rev > 0 {
                opts = opts.with_revision(rev); // every page at the first page's revision
            }
            let r = self.get(String::from_utf8_lossy(&from).into_owned(), Some(opts))?;
            if rev == 0 {
                rev = r.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in r.kvs() {
                let addr = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
                out.insert(addr, self.decode(kv)?);
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0); // the next key after `last`
                }
                _ => break,
            }
        }
        Ok((rev.max(0) as u64, out))
    }

    /// One consistent read of hosts, positions and slots.
    fn read_snapshot(&self) -> Result<Snapshot, StateError> {
        let from = self.key("hosts", "");
        let to = format!("{}/slots0", self.prefix); // just past every "PREFIX/slots/..." key
        let r = self.get(from, Some(GetOptions::new().with_range(to)))?;
        let mut snap = Snapshot {
            revision: revision(r.header()),
            ..Snapshot::default()
        };
        let base = format!("{}/", self.prefix);
        for kv in r.kvs() {
            let Some(rest) = kv.key().strip_prefix(base.as_bytes()) else {
                continue;
            };
            let rest = String::from_utf8_lossy(rest);
            let Some((kind, name)) = rest.split_once('/') else {
                continue;
            };
            match kind {
                "hosts" => {
                    snap.hosts.insert(name.to_string(), self.decode(kv)?);
                }
                "slots" => {
                    snap.slots.insert(name.to_string(), self.decode(kv)?);
                }
                "positions" => {
                    if let Some((slot, host)) = name.split_once('/') {
                        snap.positions
                            .entry(slot.to_string())
                            .or_default()
                            .insert(host.to_string(), self.decode(kv)?);
                    }
                }
                _ => {} // not ours (another tool's keys between hosts/ and slots/)
            }
        }
        Ok(snap)
    }
}

fn kv(c: &Client) -> KvClient {
    c.kv_client().max_decoding_message_size(MESSAGE_BYTES_MAX)
}

/// Runs `fut` on `rt` and waits for it on this thread, at most `limit`. Works from any
/// thread, including one inside another tokio runtime (it only blocks this thread). The
/// error says whether the request surely never left (see [`never_sent`]) and why.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, (bool, String)> {
    let late = move || (false, format!("no answer within {} ms", limit.as_millis()));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = rt.spawn(async move {
        let r = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| (never_sent(&e), describe(&e))),
            Err(_) => Err(late()),
        };
        let _ = tx.send(r);
    });
    // The task itself is bounded; the margin covers a runtime too busy to report it.
    match rx.recv_timeout(limit + Duration::from_secs(1)) {
        Ok(r) => r,
        Err(_) => {
            task.abort();
            Err(late())
        }
    }
}

/// Whether the request failed while connecting, so it never reached etcd and may be sent
/// to another member without any risk of applying it twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // tonic reports a failed connect as Unavailable with a ConnectError source.
        etcd_client::Error::GRpcStatus(s) => format!("{s:?}").contains("ConnectError"),
        _ => false,
    }
}

/// An etcd client error in one line a person can act on: the gRPC message and its root
/// cause ("tcp connect error: Connection refused (os error 111)"), not the debug dump.
fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return e.to_string();
    };
    let mut msg = s.message().to_string();
    let mut root = None;
    let mut src = std::error::Error::source(s);
    while let Some(x) = src {
        root = Some(x.to_string());
        src = x.source();
    }
    if let Some(r) = root.filter(|r| !msg.contains(r.as_str())) {
        msg = if msg.is_empty() {
            r
        } else {
            format!("{msg}: {r}")
        };
    }
    if msg.is_empty() {
        msg = format!("{:?}", s.code());
    }
    msg
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state values always serialise")
}

fn revision(h: Option<&etcd_client::ResponseHeader>) -> u64 {
    h.map(|h| h.revision().max(0) as u64).unwrap_or(0)
}

/// The first key of the first `get` among a transaction's responses.
fn first_get(r: &etcd_client::TxnResponse) -> Option<KeyValue> {
    r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

impl ClusterState for EtcdState {
    fn snapshot(&self) -> Result<Snapshot, StateError> {
        self.read_snapshot()
    }

    fn init_slot(&self, slot: &str, master: &str, epoch: u64) -> Result<SlotState, StateError> {
        check_name("slot", slot, false)?;
        let key = self.key("slots", slot);
        let new = SlotState {
            master: master.to_string(),
            epoch,
            moving_to: None,
        };
        let r = self.txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), json(&new), None)])
                .or_else([TxnOp::get(key.clone(), None)]),
            true, // a second run reads what the first wrote
        )?;
        if r.succeeded() {
            return Ok(new);
        }
        match first_get(&r) {
            Some(kv) => self.decode(&kv),
            // Deleted between the compare and the get cannot happen inside one Txn.
            None => Err(self.err("init_slot", format!("slot {slot} vanished"))),
        }
    }

    fn promote(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<SlotState, StateError> {
        self.at_epoch(slot, expected_epoch, |cur| SlotState {
            master: to.to_string(),
            epoch: cur.epoch + 1,
            moving_to: None,
        })
    }

    fn request_move(&self, slot: &str, expected_epoch: u64, to: &str) -> Result<(), StateError> {
        self.at_epoch(slot, expected_epoch, |cur| SlotState {
            moving_to: Some(to.to_string()),
            ..cur.clone()
        })
        .map(|_| ())
    }

    fn renew_lease(&self, host: &str, ttl_ms: u64) -> Result<u64, StateError> {
        if ttl_ms == 0 || ttl_ms > LEASE_TTL_MS_MAX {
            return Err(StateError::Limit(format!(
                "lease ttl must be 1 to {LEASE_TTL_MS_MAX} ms"
            )));
        }
        check_name("host", host, false)?;
        let expires_unix_ms = now_unix_ms() + ttl_ms;
        self.put(self.key("hosts", host), &HostLease { expires_unix_ms })?;
        Ok(expires_unix_ms)
    }

    fn drop_lease(&self, host: &str) -> Result<(), StateError> {
        check_name("host", host, false)?;
        let key = self.key("hosts", host);
        self.txn(
            Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(
                    key,
                    json(&HostLease { expires_unix_ms: 0 }),
                    None,
                )]),
            true,
        )?;
        Ok(())
    }

    fn publish_position(
        &self,
        slot: &str,
        host: &str,
        pos: &CopyPosition,
    ) -> Result<(), StateError> {
        check_name("slot", slot, false)?;
        check_name("host", host, false)?;
        self.put(self.key("positions", &format!("{slot}/{host}")), pos)?;
        Ok(())
    }

    fn put_account(&self, address: &str, entry: &AccountEntry) -> Result<(), StateError> {
        check_name("account", address, true)?;
        self.txn(
            Txn::new().and_then([
                TxnOp::put(self.key("accounts", address), json(entry), None),
                self.accounts_changed(),
            ]),
            true,
        )?;
        Ok(())
    }

    fn del_account(&self, address: &str) -> Result<bool, StateError> {
        check_name("account", address, true)?;
        let key = self.key("accounts", address);
        let r = self.txn(
            Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::delete(key, None), self.accounts_changed()]),
            false, // a second run would answer "there was none"
        )?;
        Ok(r.succeeded())
    }

    fn accounts_revision(&self) -> Result<u64, StateError> {
        let r = self.get(self.key("meta", "accounts"), None)?;
        Ok(r.kvs()
            .first()
            .map(|kv| kv.mod_revision().max(0) as u64)
            .unwrap_or(0))
    }

    fn account(&self, address: &str) -> Result<Option<AccountEntry>, StateError> {
        check_name("account", address, true)?;
        let r = self.get(self.key("accounts", address), None)?;
        r.kvs().first().map(|kv| self.decode(kv)).transpose()
    }

    fn accounts(&self) -> Result<(u64, BTreeMap<String, AccountEntry>), StateError> {
        // A compaction between two pages makes the pinned revision unreadable: start over
        // (a few times; compactions are minutes apart).
        let mut last = None;
        for _ in 0..3 {
            match self.read_accounts() {
                Err(StateError::Backend(m)) if m.contains("compacted") => {
                    last = Some(StateError::Backend(m))
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| self.err("accounts", "compacted while read")))
    }

    fn watch(&self, seen: u64, timeout: Duration) -> Result<Snapshot, StateError> {
        let start = Instant::now();
        // A failing etcd (connection refused is instant) must not turn the callers' wait
        // loops into busy loops: a failed watch has waited out (part of) its timeout.
        let pause = |e: StateError| {
            let rest = timeout
                .min(WATCH_ERROR_PAUSE_MAX)
                .saturating_sub(start.elapsed());
            std::thread::sleep(rest);
            e
        };
        let snap = self.read_snapshot().map_err(pause)?;
        if snap.revision > seen || timeout.is_zero() {
            return Ok(snap);
        }
        let from = i64::try_from(seen.saturating_add(1)).unwrap_or(i64::MAX);
        // Ends Ok(()) on the first event, a compaction notice or a closed stream, and on
        // the timeout; errors only when the watch cannot be set up.
        let waited = self.call("watch", timeout + REQUEST_TIMEOUT, true, |c| {
            let prefix = format!("{}/", self.prefix);
            let mut wc = c
                .watch_client()
                .max_decoding_message_size(MESSAGE_BYTES_MAX);
            async move {
                let opts = WatchOptions::new().with_prefix().with_start_revision(from);
                let mut stream =
                    match tokio::time::timeout(REQUEST_TIMEOUT, wc.watch(prefix, Some(opts))).await
                    {
                        Ok(s) => s?,
                        Err(_) => {
                            return Err(etcd_client::Error::WatchError(format!(
                                "no answer within {} ms",
                                REQUEST_TIMEOUT.as_millis()
                            )));
                        }
                    };
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Err(_) => return Ok(()), // timed out: nothing changed
                        Ok(Ok(Some(m))) if m.events().is_empty() && !m.canceled() => continue,
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) => return Err(e),
                    }
                }
            }
        });
        waited.map_err(pause)?;
        self.read_snapshot().map_err(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    #[test]
    fn specs_parse_into_endpoints_and_prefix() {
        assert_eq!(
            parse_spec("127.0.0.1:2379").unwrap(),
            (
                vec!["http://127.0.0.1:2379".to_string()],
                "/tandem".to_string()
            )
        );
        assert_eq!(
            parse_spec("a:1,b:2/x/y/").unwrap(),
            (
                vec!["http://a:1".to_string(), "http://b:2".to_string()],
                "/x/y".to_string()
            )
        );
        for bad in ["", "a", "a:b", ":1", "a:1,,b:2", "a:1/x y"] {
            assert!(parse_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A throwaway etcd (one member, or several forming one cluster) on free loopback
    /// ports, killed (and its data removed) on drop.
    pub(crate) struct TestEtcd {
        children: Vec<Child>,
        dir: PathBuf,
        /// Each member's client address, `127.0.0.1:PORT`.
        pub endpoints: Vec<String>,
        pub endpoint: String,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl TestEtcd {
        /// One member. `None` (with a note) when there is no etcd binary, unless
        /// TANDEM_REQUIRE_ETCD=1 demands it.
        pub(crate) fn start(name: &str) -> Option<TestEtcd> {
            TestEtcd::start_members(name, 1)
        }

        /// A cluster of `n` members.
        pub(crate) fn start_members(name: &str, n: usize) -> Option<TestEtcd> {
            let bin = std::env::var("TANDEM_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
            let found = Command::new(&bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                assert!(
                    std::env::var("TANDEM_REQUIRE_ETCD").as_deref() != Ok("1"),
                    "TANDEM_REQUIRE_ETCD=1 but there is no etcd binary ({bin}): apt-get install etcd-server"
                );
                eprintln!("SKIPPED: no etcd binary ({bin}); apt-get install etcd-server");
                return None;
            }
            let dir =
                std::env::temp_dir().join(format!("tandem-etcd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let no_fsync = supports_no_fsync(&bin);
            // Ports may be taken between probing and binding: a few attempts.
            for _ in 0..5 {
                let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
                let initial: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                    .collect();
                let mut e = TestEtcd {
                    children: Vec::new(),
                    dir: dir.clone(),
                    endpoints: ports
                        .iter()
                        .map(|(client, _)| format!("127.0.0.1:{client}"))
                        .collect(),
                    endpoint: format!("127.0.0.1:{}", ports[0].0),
                };
                for (i, (client, peer)) in ports.iter().enumerate() {
                    let log = std::fs::File::create(dir.join(format!("etcd{i}.log"))).unwrap();
                    let mut cmd = Command::new(&bin);
                    cmd.arg(format!("--name=m{i}"))
                        .arg("--data-dir")
                        .arg(dir.join(format!("data{i}")))
                        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                        .arg(format!(
                            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                        ))
                        .arg(format!("--initial-cluster={}", initial.join(",")))
                        .arg(format!("--initial-cluster-token={name}"))
                        .stdout(Stdio::null())
                        .stderr(log);
                    if no_fsync {
                        cmd.arg("--unsafe-no-fsync");
                    }
                    e.children.push(cmd.spawn().unwrap());
                }
                if e.wait_ready(Duration::from_secs(30)) {
                    return Some(e);
                }
                drop(e); // kills what started; the data dirs go with it
                std::fs::create_dir_all(&dir).unwrap();
            }
            panic!("etcd did not start; logs in {}", dir.display());
        }

        /// Every member answers through a leader.
        fn wait_ready(&mut self, limit: Duration) -> bool {
            let start = Instant::now();
            while start.elapsed() < limit {
                if self
                    .children
                    .iter_mut()
                    .any(|c| matches!(c.try_wait(), Ok(Some(_))))
                {
                    return false;
                }
                let all = self
                    .endpoints
                    .iter()
                    .all(|ep| EtcdState::connect(ep).is_ok_and(|st| st.snapshot().is_ok()));
                if all {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        }

        pub(crate) fn spec(&self, prefix: &str) -> String {
            format!("{}/{prefix}", self.endpoints.join(","))
        }

        fn signal(&self, member: usize, sig: &str) {
            let pid = self.children[member].id().to_string();
            let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
            assert!(ok.success(), "kill {sig} {pid}");
        }
    }

    fn supports_no_fsync(bin: &str) -> bool {
        Command::new(bin).arg("--help").output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("unsafe-no-fsync")
                || String::from_utf8_lossy(&o.stderr).contains("unsafe-no-fsync")
        })
    }

    impl Drop for TestEtcd {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_frozen_member_costs_at_most_one_failed_call() {
        let Some(etcd) = TestEtcd::start_members("frozen", 3) else {
            return;
        };
        let spec = etcd.spec("frozen");
        let st = EtcdState::connect(&spec).unwrap();
        st.init_slot("s1", "a", 1).unwrap();
        st.renew_lease("a", 3000).unwrap();
        etcd.signal(0, "-STOP"); // the member every request goes to answers nothing now
        let t = Instant::now();
        // Reads and lease renewals may be repeated: they go on to the next member at once.
        let snap = st.snapshot().unwrap();
        assert_eq!(snap.slots["s1"].epoch, 1);
        assert!(t.elapsed() < REQUEST_TIMEOUT * 2, "{:?}", t.elapsed());
        // Once the members elected a new leader (if the frozen one led), writes work.
        let renewed = (0..20).any(|_| {
            std::thread::sleep(Duration::from_millis(200));
            st.renew_lease("a", 3000).is_ok()
        });
        assert!(renewed, "no renewal through the live members");
        assert_eq!(st.promote("s1", 1, "b").unwrap().epoch, 2);
        // A new handle starts at the frozen member: a promotion, which must not be sent
        // twice, fails once, and the next call goes elsewhere.
        let fresh = EtcdState::connect(&spec).unwrap();
        match fresh.promote("s1", 2, "c") {
            Ok(s) => assert_eq!(s.epoch, 3), // the read before it went elsewhere first
            Err(e) => {
                assert!(matches!(e, StateError::Backend(_)), "{e}");
                assert_eq!(fresh.promote("s1", 2, "c").unwrap().epoch, 3);
            }
        }
        etcd.signal(0, "-CONT");
    }

    #[test]
    fn etcd_backend_passes_the_trait_suite() {
        let Some(etcd) = TestEtcd::start("suite") else {
            return;
        };
        let st = EtcdState::connect(&etcd.spec("suite")).unwrap();
        crate::state::conformance(&st);
        // Another prefix on the same etcd is another, empty, state.
        let other = EtcdState::connect(&etcd.spec("other")).unwrap();
        assert!(other.snapshot().unwrap().slots.is_empty());
        assert!(other.accounts().unwrap().1.is_empty());
    }

    #[test]
    fn a_dead_member_among_the_endpoints_costs_nothing() {
        let Some(etcd) = TestEtcd::start("members") else {
            return;
        };
        let dead = free_port(); // a member that is down: nothing listens there
        let spec = format!("127.0.0.1:{dead},{}/members", etcd.endpoint);
        let st = EtcdState::connect(&spec).unwrap();
        for i in 0..50 {
            st.renew_lease(&format!("h{i}"), 3000).unwrap();
            st.snapshot().unwrap();
        }
        crate::state::conformance(&st);
    }

    #[test]
    fn concurrent_promotions_from_one_epoch_let_exactly_one_win() {
        let Some(etcd) = TestEtcd::start("race") else {
            return;
        };
        let spec = etcd.spec("race");
        let st = Arc::new(EtcdState::connect(&spec).unwrap());
        st.init_slot("s1", "a", 3).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let wins: Vec<_> = (0..8)
            .map(|i| {
                // Separate handles (connections), like separate hosts.
                let (spec, barrier) = (spec.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mine = EtcdState::connect(&spec).unwrap();
                    mine.snapshot().unwrap(); // connected before the race starts
                    barrier.wait();
                    match mine.promote("s1", 3, &format!("h{i}")) {
                        Ok(s) => Some(s),
                        Err(StateError::EpochMismatch { .. }) => None,
                        Err(e) => panic!("unexpected: {e}"),
                    }
                })
            })
            .collect();
        let won: Vec<SlotState> = wins.into_iter().filter_map(|h| h.join().unwrap()).collect();
        assert_eq!(won.len(), 1, "{won:?}");
        let now = st.snapshot().unwrap().slots["s1"].clone();
        assert_eq!(now, won[0]);
        assert_eq!(now.epoch, 4);
    }

    #[test]
    fn an_unreachable_etcd_fails_within_the_timeout() {
        let port = free_port(); // nothing listens there
        let t = Instant::now();
        let st = EtcdState::connect(&format!("127.0.0.1:{port}/x")).unwrap();
        let e = st.snapshot().unwrap_err();
        assert!(matches!(e, StateError::Backend(_)), "{e}");
        assert!(e.to_string().contains(&port.to_string()), "{e}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(
            !e.to_string().contains("ConnectError("),
            "a debug dump: {e}"
        );
        assert!(st.watch(0, Duration::from_millis(100)).is_err());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    #[test]
    fn a_damaged_value_is_refused_not_trusted() {
        let Some(etcd) = TestEtcd::start("corrupt") else {
            return;
        };
        let st = EtcdState::connect(&etcd.spec("corrupt")).unwrap();
        st.init_slot("s1", "a", 1).unwrap();
        st.put("/corrupt/slots/s1".to_string(), &"not a slot")
            .unwrap();
        let e = st.snapshot().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("/corrupt/slots/s1"), "{e}");
        assert!(st.promote("s1", 1, "b").is_err());
    }

    #[test]
    fn a_watch_outlives_the_request_timeout_and_wakes_on_a_change() {
        let Some(etcd) = TestEtcd::start("watch") else {
            return;
        };
        let st = Arc::new(EtcdState::connect(&etcd.spec("watch")).unwrap());
        st.init_slot("s1", "a", 1).unwrap();
        let cur = st.snapshot().unwrap().revision;
        let t = Instant::now();
        let same = st
            .watch(cur, REQUEST_TIMEOUT + Duration::from_millis(500))
            .unwrap();
        assert_eq!(same.revision, cur);
        assert!(t.elapsed() >= REQUEST_TIMEOUT, "{:?}", t.elapsed());
        let writer = {
            let st = st.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                st.renew_lease("b", 3000).unwrap();
            })
        };
        let t = Instant::now();
        let woke = st.watch(cur, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(woke.revision > cur);
        assert!(woke.alive("b", now_unix_ms()));
    }

    #[test]
    fn only_account_changes_change_the_accounts_revision() {
        let Some(etcd) = TestEtcd::start("acctrev") else {
            return;
        };
        let st = EtcdState::connect(&etcd.spec("acctrev")).unwrap();
        let e = AccountEntry {
            password: "x".into(),
            slot: "s1".into(),
        };
        st.put_account("a@example.com", &e).unwrap();
        let r0 = st.accounts_revision().unwrap();
        st.renew_lease("h", 3000).unwrap();
        st.init_slot("s1", "h", 1).unwrap();
        st.promote("s1", 1, "g").unwrap();
        assert_eq!(st.accounts_revision().unwrap(), r0);
        assert!(!st.del_account("nobody@example.com").unwrap());
        assert_eq!(
            st.accounts_revision().unwrap(),
            r0,
            "deleting nothing is no change"
        );
        assert!(st.del_account("a@example.com").unwrap());
        assert!(st.accounts_revision().unwrap() > r0);
        // The marker is not a slot, host or account.
        let snap = st.snapshot().unwrap();
        assert_eq!(snap.slots.len(), 1);
        assert!(st.accounts().unwrap().1.is_empty());
    }

    #[test]
    fn accounts_are_read_in_pages_at_one_revision() {
        let Some(etcd) = TestEtcd::start("pages") else {
            return;
        };
        let st = EtcdState::connect(&etcd.spec("pages")).unwrap();
        let n = ACCOUNTS_PAGE as usize * 2 + 7;
        for i in 0..n {
            let e = AccountEntry {
                password: "x".into(),
                slot: format!("s{}", i % 3),
            };
            st.put_account(&format!("u{i:05}@example.com"), &e).unwrap();
        }
        let (rev, all) = st.accounts().unwrap();
        assert_eq!(all.len(), n);
        assert_eq!(rev, st.snapshot().unwrap().revision);
        assert_eq!(all["u00004@example.com"].slot, "s1");
        // Accounts are not slots or hosts.
        assert!(st.snapshot().unwrap().hosts.is_empty());
    }
}
