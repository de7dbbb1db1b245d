//! Wiring of the SMTP roles for `tandem serve`: DNS, the outbound queue and its scheduler,
//! the DKIM keys, and one `SmtpServer` per listener (MX, submission, submissions).

use crate::config::Config;
use crate::deliver::LocalDelivery;
use crate::mail::MailService;
use crate::outbound::{Outbound, OutboundConfig};
use crate::queue::Queue;
use anyhow::{Context, Result};
use smtp::resolver::Resolver;
use smtp::{Service, SmtpConfig, SmtpServer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use store::directory::{AuthLimiter, Directory};
use store::{Clock, EventLog, SystemClock};

pub struct Mail {
    pub queue: Arc<Queue>,
    pub outbound: Arc<Outbound>,
    pub mx: SmtpServer<MailService>,
    pub submission: SmtpServer<MailService>,
    pub submissions: SmtpServer<MailService>,
    /// The backend all three share (the TLS policy is installed on it).
    pub backend: Arc<MailService>,
    /// One line for the start-up banner.
    pub summary: String,
}

impl Mail {
    /// The server of a listener key (`smtp`, `submission`, `submissions`).
    pub fn server(&self, key: &str) -> SmtpServer<MailService> {
        match key {
            "smtp" => self.mx.clone(),
            "submission" => self.submission.clone(),
            _ => self.submissions.clone(),
        }
    }
}

pub fn resolver(cfg: &Config) -> Result<Resolver> {
    match &cfg.dns.static_records {
        Some(table) => {
            let records: Vec<(String, Vec<String>)> =
                table.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            Resolver::with_static(&records).context("[dns.static] in tandem.toml")
        }
        None => Resolver::system().context(
            "cannot set up DNS for mail; fix /etc/resolv.conf or give [dns.static] in tandem.toml",
        ),
    }
}

/// Opens the queue (recovering it), starts the scheduler, builds the servers.
#[allow(clippy::too_many_arguments)]
pub fn start(
    dir: &Path,
    cfg: &Config,
    acceptor: &tokio_rustls::TlsAcceptor,
    events: &Arc<EventLog>,
    directory: &Arc<Directory>,
    limiter: &Arc<AuthLimiter>,
    local: &Arc<LocalDelivery>,
) -> Result<Mail> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let hostname = cfg.hostname();
    let resolver = Arc::new(resolver(cfg)?);
    let (queue, entries, damaged) = Queue::open(dir, clock.clone(), events.clone())
        .context("cannot open the outbound queue")?;
    let queue = Arc::new(queue);
    let o = &cfg.outbound;
    let outbound = Outbound::new(
        queue.clone(),
        local.clone(),
        resolver.clone(),
        OutboundConfig {
            hostname: hostname.clone(),
            relay: o.relay.clone(),
            port: o.port,
            retry_initial: Duration::from_millis(o.retry_initial_ms.max(1)),
            retry_max: Duration::from_secs(o.retry_max_secs.max(1)),
            max_age_secs: o.max_age_secs as i64,
            per_destination_max: o.per_destination_max,
            connections_max: o.connections_max,
            connect_timeout: Duration::from_secs(o.connect_timeout_secs.max(1)),
            command_timeout: Duration::from_secs(o.command_timeout_secs.max(1)),
            data_timeout: Duration::from_secs(o.data_timeout_secs.max(1)),
            tls: o.tls,
        },
        clock.clone(),
        events.clone(),
        &entries,
    );
    tokio::spawn(outbound.clone().run());
    let keys = Arc::new(crate::dkim::load(dir)?);
    let backend = Arc::new(MailService {
        local: local.clone(),
        queue: queue.clone(),
        outbound: outbound.clone(),
        directory: directory.clone(),
        limiter: limiter.clone(),
        clock,
        gate: std::sync::OnceLock::new(),
    });
    let s = &cfg.smtp;
    let smtp_cfg = SmtpConfig {
        hostname: hostname.clone(),
        message_bytes_max: cfg.limits.message_bytes_max as usize,
        recipients_max: s.recipients_max,
        idle_timeout: Duration::from_secs(s.idle_timeout_secs.max(1)),
        allow_plaintext_auth: cfg.allow_plaintext_auth,
        connections_per_ip_max: s.connections_per_ip_max,
        messages_per_ip_per_minute: s.messages_per_ip_per_minute,
        ..SmtpConfig::default()
    };
    let make = |service, resolver: Option<Arc<Resolver>>| {
        SmtpServer::new(
            smtp_cfg.clone(),
            service,
            backend.clone(),
            Some(acceptor.clone()),
            resolver,
            keys.clone(),
        )
    };
    let summary = format!(
        "queue {} messages{}, DKIM keys for {} domains, DNS {}",
        entries.len(),
        if damaged.is_empty() {
            String::new()
        } else {
            format!(" ({} damaged, moved to queue/corrupt)", damaged.len())
        },
        keys.len(),
        if resolver.is_static() {
            "static table"
        } else {
            "system resolver"
        },
    );
    Ok(Mail {
        queue,
        outbound,
        mx: make(Service::Mx, s.verify.then(|| resolver.clone())),
        submission: make(Service::Submission, None),
        submissions: make(Service::Submissions, None),
        backend,
        summary,
    })
}
