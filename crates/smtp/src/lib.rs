//! Mail transfer protocols: LMTP (RFC 2033), SMTP MX and submission (RFC 5321, RFC 6409) on
//! one session state machine with a dialect switch; the SMTP client and DNS the outbound
//! queue uses; SPF/DKIM/DMARC checks, DKIM signing and delivery status notifications.
//!
//! Code map:
//! - [`reply`]: reply codes and RFC 3463 enhanced status codes, sanitised on construction.
//! - [`command`]: pure command-line parser (no I/O, no state), property-tested.
//! - [`data`]: pure DATA body decoder: dot-unstuffing, CRLF handling, size limit, bare-LF policy.
//! - `session`: the state machine over any `AsyncRead + AsyncWrite` stream (LMTP, MX,
//!   submission; STARTTLS, AUTH, BDAT).
//! - `pipeline`: what MX and submission do with a finished message (checks, headers, DKIM).
//! - [`verify`] + [`resolver`]: SPF/DKIM/DMARC with mail-auth over live or static DNS.
//! - [`dkim`]: signing and key generation. [`dsn`]: RFC 3464 bounces. [`client`]: the
//!   outbound SMTP client. [`limits`]: per-address connection and message-rate limits.
//!
//! This crate never touches storage or files: it calls a [`Deliver`] (LMTP) or a
//! [`MailBackend`] (SMTP) supplied by the wiring, and is handed keys and DNS tables as values.
//! LMTP adds no headers: the bytes handed to [`Deliver::deliver`] are exactly the decoded DATA
//! body. SMTP adds Received (and, on the MX, Return-Path and Authentication-Results; on
//! submission, Date/Message-ID when missing and DKIM-Signature).

pub mod client;
pub mod command;
pub mod data;
pub mod dkim;
pub mod dsn;
pub mod limits;
mod message;
mod pipeline;
pub mod reply;
pub mod resolver;
mod sasl;
mod session;
pub mod verify;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::dkim::DkimKeys;
use crate::limits::IpLimiter;
use crate::reply::{EnhancedCode, Reply};
use crate::resolver::Resolver;
use crate::session::{Dialect, Ended, Session, Settings};

/// The delivery side of LMTP, implemented by the store wiring (and by fakes in tests).
pub trait Deliver: Send + Sync + 'static {
    /// Is this recipient local and deliverable? Called at RCPT TO, once per RCPT command.
    /// The address is as the client wrote it (case kept, `+detail` kept, quotes kept), or
    /// `postmaster` for the domain-less `RCPT TO:<postmaster>`.
    fn check_recipient(&self, address: &str) -> impl Future<Output = RcptVerdict> + Send;

    /// Deliver `message` to every recipient of `envelope` (in order). Must return only after
    /// the message is durable for the recipients it reports as delivered. One outcome per
    /// recipient, in `envelope.rcpt_to` order; a missing outcome is answered `451 4.3.0`.
    fn deliver(
        &self,
        envelope: &Envelope,
        message: Arc<[u8]>,
    ) -> impl Future<Output = Vec<DeliveryOutcome>> + Send;
}

/// Answer to [`Deliver::check_recipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// `250 2.1.5`: the recipient joins the transaction.
    Accept,
    /// `550 5.1.1 <addr>: no such user`.
    UnknownUser,
    /// `550 5.7.1 <addr>: relay not permitted` (not a local domain, and the client may not
    /// relay).
    RelayDenied,
    /// `451 4.3.0 <addr>: reason` (the client retries later).
    TempFail(String),
}

/// Per-recipient result of [`Deliver::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// `250 2.1.5`: durable.
    Delivered,
    /// `451 4.3.0 reason`.
    TempFail(String),
    /// `550 5.3.0 reason`.
    PermFail(String),
    /// `552 5.2.2 mailbox full`.
    OverQuota,
}

/// The transaction envelope handed to [`Deliver::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The MAIL FROM address; empty for the null sender `<>`.
    pub mail_from: String,
    /// Accepted recipients in RCPT order (duplicates kept: one reply is owed per RCPT).
    pub rcpt_to: Vec<String>,
    pub peer: SocketAddr,
    /// The MAIL FROM `SIZE=` parameter, if any.
    pub size_declared: Option<u64>,
    /// True when the client declared `BODY=8BITMIME` (the body is not inspected).
    pub body_8bit: bool,
    /// The client gave the SMTPUTF8 parameter (RFC 6531).
    pub smtputf8: bool,
    /// The client's LHLO/EHLO/HELO argument.
    pub helo: String,
    /// The transaction arrived over TLS.
    pub tls: bool,
    /// The authenticated account (submission), if any.
    pub auth_user: Option<String>,
}

/// LMTP listener settings. Every field is a limit with a stated consequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmtpConfig {
    /// Our name in the greeting and LHLO reply.
    pub hostname: String,
    /// Largest decoded message (CRLF line endings, unstuffed). Larger: the body is read to the
    /// end without being kept, and each recipient gets `552 5.3.4`. MAIL FROM with a larger
    /// `SIZE=` is refused up front with `552 5.3.4`. Advertised as `SIZE n`.
    pub message_bytes_max: usize,
    /// Longest command line including its CRLF; longer lines get `500 5.5.2 line too long`
    /// and are discarded. Values under 512 (RFC 5321 §4.5.3.1.4's minimum) are raised to 512.
    pub line_bytes_max: usize,
    /// Accepted recipients per transaction; further RCPTs get `452 4.5.3`.
    pub recipients_max: usize,
    /// Longest wait for client input (and for the client to take our output). On expiry we
    /// send `421 4.4.2` (when we can) and close.
    pub idle_timeout: Duration,
    /// Bad commands (unknown, syntax, out of sequence, overlong line) allowed per session: the
    /// bad command that reaches this count is answered `421 4.7.0` and the session closes.
    /// 0 behaves like 1.
    pub errors_max: usize,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".to_string(),
            message_bytes_max: 64 * 1024 * 1024,
            line_bytes_max: 4096,
            recipients_max: 1000,
            idle_timeout: Duration::from_secs(5 * 60),
            errors_max: 20,
        }
    }
}

/// Serve one LMTP connection until QUIT, client disconnect, idle timeout or too many errors.
///
/// Returns `Ok(())` for every ending a client can cause (including vanishing mid-DATA, in
/// which case nothing is delivered, and resets/broken pipes); `Err` only for other I/O errors.
pub async fn serve_lmtp<S, D>(
    stream: S,
    peer: SocketAddr,
    deliver: &D,
    cfg: &LmtpConfig,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Deliver,
{
    let settings = Settings::lmtp(cfg);
    let handler = session::LmtpHandler(deliver);
    Session::new(stream, peer, &handler, settings, false, true)
        .run()
        .await
        .map(|_| ())
}

/// The delivery side of SMTP (MX and submission), implemented by the wiring.
pub trait MailBackend: Send + Sync + 'static {
    /// May this recipient join the transaction? `user` is the authenticated account on
    /// submission (`None` on the MX). MX: local domains only — a non-local domain is
    /// [`RcptVerdict::RelayDenied`], an unknown local user [`RcptVerdict::UnknownUser`].
    /// Submission: local recipients must exist; remote ones are accepted (queued).
    fn check_recipient(
        &self,
        address: &str,
        user: Option<&str>,
    ) -> impl Future<Output = RcptVerdict> + Send;

    /// Checks credentials (AUTH PLAIN/LOGIN). May be slow (password hashing).
    fn authenticate(
        &self,
        username: String,
        password: Vec<u8>,
        ip: IpAddr,
    ) -> impl Future<Output = AuthVerdict> + Send;

    /// May `user` use `address` as envelope sender and in From:? (own address or alias)
    fn may_send_as(&self, user: &str, address: &str) -> bool;

    /// Take responsibility for the message for every recipient of `envelope`: return
    /// `Accepted` only once it is durable (delivered, or queued on disk).
    fn accept(
        &self,
        envelope: &Envelope,
        message: Arc<[u8]>,
        folder: Folder,
    ) -> impl Future<Output = AcceptOutcome> + Send;

    /// Wall-clock seconds for Date/Received headers (the wiring's one Clock, invariant 7).
    fn now_unix_secs(&self) -> i64;

    /// TLS login policy: may AUTH run on a connection without TLS now? `None`: yes.
    /// `Some(hint)`: no (`530 5.7.0`), `hint` says how to fix the client's setup.
    /// `configured` is [`SmtpConfig::allow_plaintext_auth`], the answer without a policy.
    fn plaintext_refusal(&self, configured: bool) -> Option<String> {
        if configured {
            None
        } else {
            Some(String::new())
        }
    }

    /// AUTH succeeded on a connection without TLS (recorded by the TLS policy). Must not
    /// block.
    fn insecure_login(&self, _user: &str, _ip: IpAddr) {}
}

/// Answer to [`MailBackend::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// `235 2.7.0`; `user` is the account's canonical address.
    Ok { user: String },
    /// `535 5.7.8` (counted towards the session's error limit).
    Failed,
    /// `454 4.7.0`: too many recent failures; try again after the delay.
    Throttled(Duration),
    /// `454 4.7.0`: the directory is unavailable.
    TempFail(String),
}

/// Where an accepted inbound message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    /// DMARC `p=quarantine` failed.
    Junk,
}

/// Answer to [`MailBackend::accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// `250 2.0.0 message accepted <note>` (e.g. the queue id).
    Accepted(String),
    /// `451 4.3.0 reason`.
    TempFail(String),
    /// `550 5.3.0 reason`.
    PermFail(String),
}

/// Which SMTP service a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Port 25: inbound mail for local recipients, STARTTLS offered, no AUTH.
    Mx,
    /// Port 587: STARTTLS, AUTH required before MAIL.
    Submission,
    /// Port 465: implicit TLS (RFC 8314), AUTH required before MAIL.
    Submissions,
}

/// SMTP listener settings. Every field is a limit with a stated consequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Our name in the greeting, EHLO reply, Received and Authentication-Results.
    pub hostname: String,
    /// Largest message (decoded, CRLF). Larger: read to the end, then `552 5.3.4`; a larger
    /// `SIZE=` is refused at MAIL. Advertised as `SIZE n`.
    pub message_bytes_max: usize,
    /// Longest command line; longer lines get `500 5.5.2 line too long`. At least 512.
    pub line_bytes_max: usize,
    /// Accepted recipients per transaction; further RCPTs get `452 4.5.3`.
    pub recipients_max: usize,
    /// A command line must arrive whole, and each piece of message data must arrive, within
    /// this; on expiry `421 4.4.2` and close.
    pub idle_timeout: Duration,
    /// Bad commands per session; the one reaching this count gets `421 4.7.0` and a close.
    pub errors_max: usize,
    /// Offer AUTH on submission without TLS (never on the internet).
    pub allow_plaintext_auth: bool,
    /// Concurrent connections per client address (IPv6: per /64); more get `421 4.7.0` at
    /// connect. 0 = unlimited.
    pub connections_per_ip_max: usize,
    /// Messages per client address per minute on the MX; more get `451 4.7.1` at MAIL.
    /// 0 = unlimited.
    pub messages_per_ip_per_minute: u32,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".to_string(),
            message_bytes_max: 64 * 1024 * 1024,
            line_bytes_max: 4096,
            recipients_max: 1000,
            idle_timeout: Duration::from_secs(5 * 60),
            errors_max: 20,
            allow_plaintext_auth: false,
            connections_per_ip_max: 20,
            messages_per_ip_per_minute: 600,
        }
    }
}

/// One SMTP listener's server: settings, backend, TLS, checks and keys. Cheap to clone.
pub struct SmtpServer<B> {
    inner: Arc<ServerInner<B>>,
}

impl<B> Clone for SmtpServer<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct ServerInner<B> {
    cfg: SmtpConfig,
    service: Service,
    backend: Arc<B>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    resolver: Option<Arc<Resolver>>,
    dkim: Arc<DkimKeys>,
    limiter: Arc<IpLimiter>,
}

impl<B: MailBackend> SmtpServer<B> {
    /// `tls`: offered as STARTTLS (MX, submission) or required up front (submissions, which
    /// without it closes every connection). `resolver`: the MX's SPF/DKIM/DMARC checks
    /// (`None` = no checks, no Authentication-Results). `dkim`: submission's signing keys.
    pub fn new(
        cfg: SmtpConfig,
        service: Service,
        backend: Arc<B>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        resolver: Option<Arc<Resolver>>,
        dkim: Arc<DkimKeys>,
    ) -> Self {
        let limiter = IpLimiter::new(cfg.connections_per_ip_max, cfg.messages_per_ip_per_minute);
        Self {
            inner: Arc::new(ServerInner {
                cfg,
                service,
                backend,
                tls,
                resolver,
                dkim,
                limiter,
            }),
        }
    }

    fn settings(&self) -> Settings {
        let c = &self.inner.cfg;
        Settings {
            dialect: match self.inner.service {
                Service::Mx => Dialect::Mx,
                Service::Submission | Service::Submissions => Dialect::Submission,
            },
            hostname: c.hostname.clone(),
            message_bytes_max: c.message_bytes_max,
            line_bytes_max: c.line_bytes_max.max(512),
            recipients_max: c.recipients_max,
            idle_timeout: c.idle_timeout,
            errors_max: c.errors_max.max(1),
            allow_plaintext_auth: c.allow_plaintext_auth,
            starttls: self.inner.tls.is_some(),
        }
    }

    /// Serve one connection until QUIT, disconnect, idle timeout or too many errors.
    /// `Ok(())` for every ending a client can cause; `Err` only for other I/O errors.
    pub async fn serve<S>(&self, mut stream: S, peer: SocketAddr) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let inner = &*self.inner;
        let idle = inner.cfg.idle_timeout;
        let Some(_slot) = inner.limiter.connect(peer.ip()) else {
            let r = Reply::new(
                421,
                Some(EnhancedCode::TEMP_POLICY),
                format!(
                    "{} too many connections from your address, try again later",
                    inner.cfg.hostname
                ),
            );
            let _ = tokio::time::timeout(idle, async {
                stream.write_all(&r.to_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            return Ok(());
        };
        let settings = self.settings();
        let handler = pipeline::SmtpHandler {
            backend: &*inner.backend,
            dialect: settings.dialect,
            hostname: &inner.cfg.hostname,
            resolver: inner.resolver.as_deref(),
            dkim: &inner.dkim,
            limiter: &inner.limiter,
        };
        if inner.service == Service::Submissions {
            let Some(acceptor) = &inner.tls else {
                return Ok(());
            };
            let Ok(Ok(tls)) = tokio::time::timeout(idle, acceptor.accept(stream)).await else {
                // Handshake failed or timed out: nothing was said, nothing is owed.
                return Ok(());
            };
            return Session::new(tls, peer, &handler, settings, true, true)
                .run()
                .await
                .map(|_| ());
        }
        let plain = Session::new(stream, peer, &handler, settings.clone(), false, true);
        match plain.run().await? {
            Ended::Closed => Ok(()),
            Ended::StartTls(stream) => {
                let Some(acceptor) = &inner.tls else {
                    return Ok(());
                };
                let Ok(Ok(tls)) = tokio::time::timeout(idle, acceptor.accept(stream)).await else {
                    return Ok(());
                };
                // RFC 3207 §4.2: no new greeting; the client starts over with EHLO.
                Session::new(tls, peer, &handler, settings, true, false)
                    .run()
                    .await
                    .map(|_| ())
            }
        }
    }
}
