//! The SMTP backend (MX and submission): recipients are judged by [`LocalDelivery`], logins
//! by the directory's [`AuthLimiter`], and accepted mail is delivered locally at once or put
//! on the durable outbound queue.
//!
//! Accepting a message: local recipients are delivered directly (sharing the slot's group
//! commit); every recipient that is remote, or whose local delivery failed, goes into one
//! queue entry, written and fsynced before we answer 250. A local delivery that fails
//! temporarily is thus retried by the queue instead of being refused to the client, and a
//! permanent failure found late is bounced to the sender — the client gets one answer for
//! the whole transaction, as SMTP requires.

use crate::deliver::{LocalDelivery, Locality, join_all, split_detail};
use crate::outbound::Outbound;
use crate::queue::Queue;
use smtp::{AcceptOutcome, AuthVerdict, Envelope, Folder, MailBackend, RcptVerdict};
use std::net::IpAddr;
use std::sync::Arc;
use store::Clock;
use store::directory::{AuthLimiter, AuthOutcome, Directory, normalize_address};

pub struct MailService {
    pub local: Arc<LocalDelivery>,
    pub queue: Arc<Queue>,
    pub outbound: Arc<Outbound>,
    pub directory: Arc<Directory>,
    pub limiter: Arc<AuthLimiter>,
    pub clock: Arc<dyn Clock>,
    /// TLS login policy for submission (see `tlspolicy.rs`); set once at start-up.
    pub gate: std::sync::OnceLock<Arc<dyn store::LoginGate>>,
}

impl MailBackend for MailService {
    async fn check_recipient(&self, address: &str, user: Option<&str>) -> RcptVerdict {
        match self.local.classify(address) {
            Ok(Locality::Local(_)) => RcptVerdict::Accept,
            Ok(Locality::UnknownLocal) => RcptVerdict::UnknownUser,
            Ok(Locality::Remote) if user.is_some() => RcptVerdict::Accept,
            Ok(Locality::Remote) => RcptVerdict::RelayDenied,
            Err(e) => RcptVerdict::TempFail(format!("directory unavailable: {e}")),
        }
    }

    fn plaintext_refusal(&self, configured: bool) -> Option<String> {
        let gate = self.gate.get().map(|g| &**g);
        store::gate::plaintext_refusal(gate, "submission", configured)
    }

    fn insecure_login(&self, user: &str, ip: IpAddr) {
        if let Some(g) = self.gate.get() {
            g.insecure_login("submission", user, ip, "");
        }
    }

    async fn authenticate(&self, username: String, password: Vec<u8>, ip: IpAddr) -> AuthVerdict {
        let dir = self.directory.clone();
        let limiter = self.limiter.clone();
        // argon2 is CPU-heavy: keep it off the async workers.
        let r = tokio::task::spawn_blocking(move || {
            limiter.authenticate(&dir, &username, &password, ip)
        })
        .await;
        match r {
            Ok(Ok(AuthOutcome::Ok(acct))) => AuthVerdict::Ok { user: acct.address },
            Ok(Ok(AuthOutcome::Failed)) => AuthVerdict::Failed,
            Ok(Ok(AuthOutcome::Throttled(d))) => AuthVerdict::Throttled(d),
            Ok(Err(e)) => AuthVerdict::TempFail(format!("directory unavailable: {e}")),
            Err(_) => AuthVerdict::TempFail("authentication task failed".into()),
        }
    }

    /// The user's own address, with or without a `+detail`. (Aliases arrive with the
    /// directory of domains and aliases.)
    fn may_send_as(&self, user: &str, address: &str) -> bool {
        let (base, _) = split_detail(address);
        normalize_address(&base) == normalize_address(user)
    }

    async fn accept(
        &self,
        envelope: &Envelope,
        message: Arc<[u8]>,
        folder: Folder,
    ) -> AcceptOutcome {
        let mut local = Vec::new();
        let mut to_queue = Vec::new();
        for r in &envelope.rcpt_to {
            match self.local.classify(r) {
                Ok(Locality::Local(_)) => local.push(r.clone()),
                // Remote, or unknown now (the queue decides and bounces if need be).
                _ => to_queue.push(r.clone()),
            }
        }
        let outcomes = join_all(
            local
                .iter()
                .map(|r| self.local.deliver_one(r, &message, folder)),
        )
        .await;
        let mut delivered = 0;
        for (r, o) in local.into_iter().zip(outcomes) {
            match o {
                smtp::DeliveryOutcome::Delivered => delivered += 1,
                _ => to_queue.push(r),
            }
        }
        if to_queue.is_empty() {
            return AcceptOutcome::Accepted(match delivered {
                1 => "and delivered".to_string(),
                n => format!("and delivered to {n} recipients"),
            });
        }
        let q = self.queue.clone();
        let from = envelope.mail_from.clone();
        let body = message.clone();
        let rcpts = to_queue.clone();
        let queued = tokio::task::spawn_blocking(move || q.enqueue(&from, &rcpts, &body)).await;
        match queued {
            Ok(Ok(entry)) => {
                self.outbound.schedule(&entry.id);
                AcceptOutcome::Accepted(format!("as {}", entry.id))
            }
            Ok(Err(e)) => AcceptOutcome::TempFail(format!("cannot queue the message: {e:#}")),
            Err(_) => AcceptOutcome::TempFail("queue task failed".into()),
        }
    }

    fn now_unix_secs(&self) -> i64 {
        self.clock.now_unix_secs()
    }
}
