//! Mail transfer protocols: LMTP (RFC 2033) today; SMTP MX and submission (RFC 5321) later,
//! on the same session state machine with a dialect switch.
//!
//! Code map:
//! - [`reply`]: reply codes and RFC 3463 enhanced status codes, sanitised on construction.
//! - [`command`]: pure command-line parser (no I/O, no state), property-tested.
//! - [`data`]: pure DATA body decoder: dot-unstuffing, CRLF handling, size limit, bare-LF policy.
//! - `session`: the state machine over any `AsyncRead + AsyncWrite` stream.
//!
//! This crate never touches storage: it calls a [`Deliver`] implementation supplied by the
//! wiring. It adds no headers (no Return-Path, no Received): the message bytes handed to
//! [`Deliver::deliver`] are exactly the decoded DATA body, and the [`Envelope`] travels beside
//! them so the deliverer can add what it wants.

pub mod command;
pub mod data;
pub mod reply;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

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
    let settings = session::Settings::lmtp(cfg);
    session::Session::new(stream, peer, deliver, settings)
        .run()
        .await
}
