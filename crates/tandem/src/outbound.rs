//! Delivery of queued mail: the scheduler over [`Queue`].
//!
//! Each entry is attempted when due. Its pending recipients are grouped: local ones are
//! delivered through [`LocalDelivery`]; remote ones per domain, one SMTP transaction per
//! domain, to the relay (`[outbound] relay`) or to the domain's MX hosts in preference order
//! (each host's addresses in turn, the first that answers wins). The record is rewritten
//! right after each transaction's final reply, so a crash can repeat at most the transaction
//! in flight (see `queue.rs` on at-least-once).
//!
//! Retries back off exponentially twice over: per entry (`retry_initial` doubling per
//! attempt, capped at `retry_max`) and per destination (a destination that cannot be reached
//! is not tried again, for any entry, until its own backoff expires). Concurrency is bounded
//! per destination (`per_destination_max` transactions) and in total (`connections_max`).
//! A recipient that fails permanently, or is still pending after `max_age`, is reported to
//! the sender in one RFC 3464 bounce per attempt (never for a bounce: null sender).
//!
//! Time: scheduling uses the monotonic clock. The record keeps wall-clock `next_attempt_unix`
//! only to carry the schedule across restarts; at start a due time further away than
//! `retry_max` (a clock stepped back) is clamped to `retry_max` (invariant 7).

use crate::deliver::{LocalDelivery, Locality};
use crate::queue::{Entry, Queue, RcptState, bounded_reply};
use smtp::client::{self, ClientConfig, Outgoing, RcptStatus};
use smtp::dsn::{self, FailedRecipient};
use smtp::resolver::{LookupError, Resolver};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Clock, Event, EventLog};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// MX hosts tried per destination per attempt, and addresses per host.
const MX_HOSTS_MAX: usize = 5;
const ADDRS_PER_HOST_MAX: usize = 2;
/// The scheduler looks at the queue at least this often even without a wake-up.
const TICK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub hostname: String,
    /// Send everything through this `host:port` instead of looking up MX records.
    pub relay: Option<String>,
    /// The port of remote MX hosts (25; tests point it elsewhere).
    pub port: u16,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Recipients still pending after this long are bounced.
    pub max_age_secs: i64,
    pub per_destination_max: usize,
    pub connections_max: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Use STARTTLS when offered.
    pub tls: bool,
}

#[derive(Debug)]
struct Scheduled {
    due: Instant,
    running: bool,
}

#[derive(Debug)]
struct Dest {
    failures: u32,
    not_before: Instant,
    active: usize,
}

#[derive(Default)]
struct Sched {
    entries: HashMap<String, Scheduled>,
    dests: HashMap<String, Dest>,
}

pub struct Outbound {
    queue: Arc<Queue>,
    local: Arc<LocalDelivery>,
    resolver: Arc<Resolver>,
    cfg: OutboundConfig,
    client: ClientConfig,
    clock: Arc<dyn Clock>,
    events: Arc<EventLog>,
    sched: Mutex<Sched>,
    wake: Notify,
    total: Arc<Semaphore>,
}

/// `retry_initial · 2^(n-1)`, capped at `retry_max`.
pub fn backoff(initial: Duration, max: Duration, n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << shift).min(max)
}

/// The RFC 3463 code in a reply like `550 5.1.1 no such user`, else a default by class.
fn status_of(reply: &str, permanent: bool) -> String {
    let code = reply.split_whitespace().nth(1).filter(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && matches!(parts[0], "4" | "5")
    });
    match code {
        Some(c) if permanent => format!("5{}", &c[1..]),
        Some(c) => c.to_string(),
        None if permanent => "5.0.0".into(),
        None => "4.0.0".into(),
    }
}

/// What one destination attempt produced.
enum Outcome {
    /// Per recipient, in order; the host that answered (none when DNS already said no).
    Done(Vec<RcptStatus>, Option<String>),
    /// Nobody could be reached: everything stays pending.
    Unreachable(String),
}

impl Outbound {
    pub fn new(
        queue: Arc<Queue>,
        local: Arc<LocalDelivery>,
        resolver: Arc<Resolver>,
        cfg: OutboundConfig,
        clock: Arc<dyn Clock>,
        events: Arc<EventLog>,
        entries: &[Entry],
    ) -> Arc<Self> {
        let client = ClientConfig {
            helo: cfg.hostname.clone(),
            command_timeout: cfg.command_timeout,
            data_timeout: cfg.data_timeout,
            tls: if cfg.tls {
                client::opportunistic_tls()
            } else {
                None
            },
        };
        let now = Instant::now();
        let now_unix = clock.now_unix_secs();
        let mut sched = Sched::default();
        for e in entries {
            let wait =
                Duration::from_secs(e.next_attempt_unix.saturating_sub(now_unix).max(0) as u64)
                    .min(cfg.retry_max);
            sched.entries.insert(
                e.id.clone(),
                Scheduled {
                    due: now + wait,
                    running: false,
                },
            );
        }
        Arc::new(Self {
            total: Arc::new(Semaphore::new(cfg.connections_max.max(1))),
            queue,
            local,
            resolver,
            cfg,
            client,
            clock,
            events,
            sched: Mutex::new(sched),
            wake: Notify::new(),
        })
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new entry: attempt it now.
    pub fn schedule(&self, id: &str) {
        self.sched().entries.insert(
            id.to_string(),
            Scheduled {
                due: Instant::now(),
                running: false,
            },
        );
        self.wake.notify_one();
    }

    /// Makes `id` (or every entry) due now and forgets destination backoff. Returns how many
    /// entries were made due.
    pub fn retry(&self, id: Option<&str>) -> usize {
        let mut s = self.sched();
        let now = Instant::now();
        let mut n = 0;
        for (k, e) in s.entries.iter_mut() {
            if id.is_none_or(|i| i == k) {
                e.due = now;
                n += 1;
            }
        }
        s.dests.clear();
        drop(s);
        self.wake.notify_one();
        n
    }

    /// Removes an entry that is not being delivered right now.
    pub fn drop_entry(&self, id: &str) -> anyhow::Result<bool> {
        {
            let mut s = self.sched();
            if s.entries.get(id).is_some_and(|e| e.running) {
                anyhow::bail!(
                    "{id} is being delivered right now; try again in a minute (nothing was dropped)"
                );
            }
            s.entries.remove(id);
        }
        self.queue.remove(id)
    }

    /// Runs forever: picks due entries and attempts them.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            let mut next = now + TICK;
            {
                let mut s = self.sched();
                for (id, e) in s.entries.iter_mut() {
                    if e.running {
                        continue;
                    }
                    if e.due <= now {
                        e.running = true;
                        ready.push(id.clone());
                    } else {
                        next = next.min(e.due);
                    }
                }
            }
            for id in ready {
                let me = self.clone();
                tokio::spawn(async move {
                    let permit = me.total.clone().acquire_owned().await;
                    let due = me.attempt(&id).await;
                    drop(permit);
                    let mut s = me.sched();
                    match due {
                        Some(d) => {
                            if let Some(e) = s.entries.get_mut(&id) {
                                e.running = false;
                                e.due = d;
                            }
                        }
                        None => {
                            s.entries.remove(&id);
                        }
                    }
                    drop(s);
                    me.wake.notify_one();
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Queue) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let q = self.queue.clone();
        tokio::task::spawn_blocking(move || f(&q))
            .await
            .map_err(|_| anyhow::anyhow!("queue I/O task failed"))?
    }

    async fn persist(&self, e: &Entry) -> anyhow::Result<()> {
        let e = e.clone();
        self.blocking(move |q| q.update(&e)).await
    }

    /// One attempt of one entry. Returns when it is next due, or `None` when it is gone.
    async fn attempt(&self, id: &str) -> Option<Instant> {
        let id2 = id.to_string();
        let mut entry = match self.blocking(move |q| q.load(&id2)).await {
            Ok(e) => e,
            Err(_) => return None, // dropped meanwhile
        };
        let e2 = entry.clone();
        let body: Arc<[u8]> = match self.blocking(move |q| q.read_body(&e2)).await {
            Ok(b) => Arc::from(b),
            // read_body moved it aside and raised the alert.
            Err(_) => return None,
        };
        let now_unix = self.clock.now_unix_secs();
        let expired = now_unix.saturating_sub(entry.created_unix) > self.cfg.max_age_secs;
        let mut failed: Vec<FailedRecipient> = Vec::new();
        if entry.is_done() {
            // Finished before a crash kept us from removing it: just remove it now.
        } else if expired {
            let days = self.cfg.max_age_secs / 86_400;
            for r in entry
                .recipients
                .iter_mut()
                .filter(|r| r.state == RcptState::Pending)
            {
                let last = r
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| "no attempt succeeded".into());
                failed.push(FailedRecipient {
                    address: r.address.clone(),
                    status: "4.4.7".into(),
                    diagnostic: format!(
                        "delivery time expired after {days} days; last reply: {last}"
                    ),
                    remote_mta: r.remote_mta.clone(),
                });
            }
        } else {
            let (attempted, skipped_until) =
                self.deliver_pending(&mut entry, &body, &mut failed).await;
            if !attempted && failed.is_empty() {
                // Nothing was tried (every destination busy or backing off): this was no
                // attempt, so it does not count towards the entry's own backoff.
                return Some(skipped_until.unwrap_or_else(|| Instant::now() + TICK));
            }
        }
        // Bounce first, then mark: a crash between repeats the bounce, never loses it.
        if !failed.is_empty() {
            self.bounce(&entry, &failed, &body).await;
            for f in &failed {
                if let Some(r) = entry
                    .recipients
                    .iter_mut()
                    .find(|r| r.address == f.address && r.state == RcptState::Pending)
                {
                    r.state = RcptState::Failed;
                    r.last_reply = Some(bounded_reply(&f.diagnostic));
                }
            }
        }
        if entry.is_done() {
            let id2 = entry.id.clone();
            if let Err(e) = self.blocking(move |q| q.remove(&id2).map(|_| ())).await {
                self.events.raise(Event::alert(
                    "queue_write_failed",
                    format!("cannot remove delivered queue entry {}: {e:#}", entry.id),
                ));
            }
            return None;
        }
        entry.attempts = entry.attempts.saturating_add(1);
        let wait = backoff(self.cfg.retry_initial, self.cfg.retry_max, entry.attempts);
        entry.next_attempt_unix = now_unix + wait.as_secs() as i64;
        if let Err(e) = self.persist(&entry).await {
            self.events.raise(Event::alert(
                "queue_write_failed",
                format!(
                    "cannot record the attempt of queue entry {}: {e:#}",
                    entry.id
                ),
            ));
        }
        // A destination in backoff may be due before the entry's own schedule.
        Some(Instant::now() + wait)
    }

    /// Attempts every pending recipient; marks delivered ones (persisting right away),
    /// records replies, and collects permanent failures into `failed`. Returns whether
    /// anything was attempted, and when skipped destinations can next be tried.
    async fn deliver_pending(
        &self,
        entry: &mut Entry,
        body: &Arc<[u8]>,
        failed: &mut Vec<FailedRecipient>,
    ) -> (bool, Option<Instant>) {
        let mut attempted = false;
        let mut skipped_until: Option<Instant> = None;
        let mut remote: Vec<(String, Vec<String>)> = Vec::new();
        let pending: Vec<String> = entry.pending().map(|r| r.address.clone()).collect();
        let mut local_done = false;
        for addr in pending {
            match self.local.classify(&addr) {
                Ok(Locality::Local(_)) => {
                    let outcome = self
                        .local
                        .deliver_one(&addr, body, smtp::Folder::Inbox)
                        .await;
                    let status = match outcome {
                        smtp::DeliveryOutcome::Delivered => {
                            RcptStatus::Delivered("250 2.0.0 delivered locally".into())
                        }
                        smtp::DeliveryOutcome::TempFail(r) => {
                            RcptStatus::TempFail(format!("451 4.3.0 {r}"))
                        }
                        smtp::DeliveryOutcome::PermFail(r) => {
                            RcptStatus::PermFail(format!("550 5.3.0 {r}"))
                        }
                        smtp::DeliveryOutcome::OverQuota => {
                            RcptStatus::TempFail("452 4.2.2 mailbox full".into())
                        }
                    };
                    apply(entry, &addr, &status, None, failed);
                    local_done = true;
                    attempted = true;
                }
                Ok(Locality::UnknownLocal) => {
                    let s = RcptStatus::PermFail(format!("550 5.1.1 <{addr}>: no such user"));
                    apply(entry, &addr, &s, None, failed);
                }
                Ok(Locality::Remote) => {
                    let domain = addr
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_lowercase())
                        .unwrap_or_default();
                    match remote.iter_mut().find(|(d, _)| *d == domain) {
                        Some((_, v)) => v.push(addr),
                        None => remote.push((domain, vec![addr])),
                    }
                }
                Err(e) => {
                    let s = RcptStatus::TempFail(format!("451 4.3.0 directory unavailable: {e}"));
                    apply(entry, &addr, &s, None, failed);
                }
            }
        }
        if local_done && let Err(e) = self.persist(entry).await {
            self.events.raise(Event::alert(
                "queue_write_failed",
                format!("cannot record local deliveries of {}: {e:#}", entry.id),
            ));
        }
        for (domain, rcpts) in remote {
            let key = self.cfg.relay.clone().unwrap_or_else(|| domain.clone());
            if let Err(until) = self.claim(&key) {
                // Destination in backoff or busy: stays pending.
                skipped_until = Some(skipped_until.map_or(until, |s| s.min(until)));
                continue;
            }
            attempted = true;
            let outcome = self.send_to(&domain, &rcpts, &entry.mail_from, body).await;
            self.release(&key, matches!(outcome, Outcome::Unreachable(_)));
            match outcome {
                Outcome::Done(statuses, host) => {
                    for (addr, s) in rcpts.iter().zip(statuses.iter()) {
                        apply(entry, addr, s, host.as_deref(), failed);
                    }
                    // The window that matters: the remote has the message; record it now.
                    if let Err(e) = self.persist(entry).await {
                        self.events.raise(Event::alert(
                            "queue_write_failed",
                            format!(
                                "cannot record delivery of {} to {domain}; it may be sent again: {e:#}",
                                entry.id
                            ),
                        ));
                    }
                }
                Outcome::Unreachable(why) => {
                    for addr in &rcpts {
                        let s = RcptStatus::TempFail(format!("421 4.4.1 {why}"));
                        apply(entry, addr, &s, None, failed);
                    }
                }
            }
        }
        (attempted, skipped_until)
    }

    /// Takes one concurrency slot of a destination unless it is in backoff or full; then
    /// says when to look again.
    fn claim(&self, key: &str) -> Result<(), Instant> {
        let mut s = self.sched();
        let now = Instant::now();
        let d = s.dests.entry(key.to_string()).or_insert(Dest {
            failures: 0,
            not_before: now,
            active: 0,
        });
        if d.not_before > now {
            return Err(d.not_before);
        }
        if d.active >= self.cfg.per_destination_max.max(1) {
            return Err(now + Duration::from_secs(1));
        }
        d.active += 1;
        Ok(())
    }

    fn release(&self, key: &str, unreachable: bool) {
        let mut s = self.sched();
        if let Some(d) = s.dests.get_mut(key) {
            d.active = d.active.saturating_sub(1);
            if unreachable {
                d.failures = d.failures.saturating_add(1);
                d.not_before = Instant::now()
                    + backoff(self.cfg.retry_initial, self.cfg.retry_max, d.failures);
            } else {
                d.failures = 0;
            }
        }
    }

    /// The hosts (name, addresses) to try for `domain`.
    async fn targets(&self, domain: &str) -> Result<Vec<(String, Vec<SocketAddr>)>, LookupError> {
        if let Some(relay) = &self.cfg.relay {
            if let Ok(sa) = relay.parse::<SocketAddr>() {
                return Ok(vec![(sa.ip().to_string(), vec![sa])]);
            }
            let (host, port) = relay
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h, p)))
                .ok_or_else(|| {
                    LookupError::Permanent(format!("[outbound] relay {relay:?} is not host:port"))
                })?;
            let ips = self.resolver.host_ips(host).await?;
            return Ok(vec![(
                host.to_string(),
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
            )]);
        }
        let hosts = self.resolver.mx_hosts(domain).await?;
        let mut out = Vec::new();
        let mut last_err = None;
        for host in hosts.into_iter().take(MX_HOSTS_MAX) {
            match self.resolver.host_ips(&host).await {
                Ok(ips) => out.push((
                    host,
                    ips.into_iter()
                        .take(ADDRS_PER_HOST_MAX)
                        .map(|ip| SocketAddr::new(ip, self.cfg.port))
                        .collect(),
                )),
                Err(e) => last_err = Some(e),
            }
        }
        match (out.is_empty(), last_err) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(LookupError::Permanent(format!("{domain} has no mail host"))),
            _ => Ok(out),
        }
    }

    async fn send_to(
        &self,
        domain: &str,
        rcpts: &[String],
        mail_from: &str,
        body: &[u8],
    ) -> Outcome {
        let targets = match self.targets(domain).await {
            Ok(t) => t,
            Err(LookupError::Permanent(why)) => {
                let s = RcptStatus::PermFail(format!("550 5.1.2 {why}"));
                return Outcome::Done(vec![s; rcpts.len()], None);
            }
            Err(LookupError::Temporary(why)) => return Outcome::Unreachable(why),
        };
        let msg = Outgoing {
            mail_from,
            rcpt_to: rcpts,
            message: body,
        };
        let mut last = format!("no mail host of {domain} answered");
        for (host, addrs) in targets {
            for addr in addrs {
                for use_tls in [true, false] {
                    let stream = match tokio::time::timeout(
                        self.cfg.connect_timeout,
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            last = format!("cannot connect to {host} [{addr}]: {e}");
                            break;
                        }
                        Err(_) => {
                            last = format!("connection to {host} [{addr}] timed out");
                            break;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    match client::send(stream, &host, &self.client, msg, use_tls).await {
                        Ok(a) => {
                            let host = host.trim_end_matches('.').to_string();
                            return Outcome::Done(a.rcpts, Some(host));
                        }
                        // A broken TLS stack on the far side: try once more in plaintext.
                        Err(f) if f.tls_failed && use_tls => {
                            last = format!("{host} [{addr}]: {}", f.reason);
                            continue;
                        }
                        Err(f) => {
                            last = format!("{host} [{addr}]: {}", f.reason);
                            break;
                        }
                    }
                }
            }
        }
        Outcome::Unreachable(last)
    }

    /// Sends the sender a bounce about `failed` (not for a bounce, never to nobody).
    async fn bounce(&self, entry: &Entry, failed: &[FailedRecipient], body: &[u8]) {
        if entry.mail_from.is_empty() {
            self.events.raise(Event::info(
                "bounce_undeliverable",
                format!(
                    "bounce {} could not be delivered to {}; dropped (bounces are never bounced)",
                    entry.id,
                    failed
                        .iter()
                        .map(|f| f.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            return;
        }
        let report = dsn::build(&dsn::Report {
            reporting_mta: &self.cfg.hostname,
            to: &entry.mail_from,
            arrival_unix: entry.created_unix,
            now_unix: self.clock.now_unix_secs(),
            recipients: failed,
            original: body,
            id: &entry.id,
        });
        let to = vec![entry.mail_from.clone()];
        match self.blocking(move |q| q.enqueue("", &to, &report)).await {
            Ok(e) => self.schedule(&e.id),
            Err(e) => self.events.raise(Event::alert(
                "queue_write_failed",
                format!("cannot queue the bounce for {}: {e:#}", entry.id),
            )),
        }
    }
}

/// Records one recipient's result in the entry; permanent failures go to `failed`.
fn apply(
    entry: &mut Entry,
    addr: &str,
    status: &RcptStatus,
    host: Option<&str>,
    failed: &mut Vec<FailedRecipient>,
) {
    let Some(r) = entry
        .recipients
        .iter_mut()
        .find(|r| r.address == addr && r.state == RcptState::Pending)
    else {
        return;
    };
    r.remote_mta = host.map(str::to_string).or(r.remote_mta.take());
    match status {
        RcptStatus::Delivered(t) => {
            r.state = RcptState::Delivered;
            r.last_reply = Some(bounded_reply(t));
        }
        RcptStatus::TempFail(t) => r.last_reply = Some(bounded_reply(t)),
        RcptStatus::PermFail(t) => {
            r.last_reply = Some(bounded_reply(t));
            failed.push(FailedRecipient {
                address: addr.to_string(),
                status: status_of(t, true),
                diagnostic: bounded_reply(t),
                remote_mta: host.map(str::to_string),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        assert_eq!(backoff(i, m, 0), i);
        assert_eq!(backoff(i, m, 1), i);
        assert_eq!(backoff(i, m, 2), Duration::from_secs(120));
        assert_eq!(backoff(i, m, 6), Duration::from_secs(1920));
        assert_eq!(backoff(i, m, 7), m);
        assert_eq!(backoff(i, m, u32::MAX), m);
    }

    #[test]
    fn status_codes_come_from_replies() {
        assert_eq!(status_of("550 5.1.1 no such user", true), "5.1.1");
        assert_eq!(status_of("554 no reason", true), "5.0.0");
        assert_eq!(status_of("451 4.7.1 greylisted", false), "4.7.1");
        assert_eq!(status_of("451 4.7.1 greylisted", true), "5.7.1");
        assert_eq!(status_of("", false), "4.0.0");
    }
}
