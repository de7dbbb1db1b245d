//! The session state machine, shared by every dialect (LMTP, SMTP MX, SMTP submission),
//! generic over the byte stream so tests run it over `tokio::io::duplex` and production over
//! TCP or TLS. What happens to a finished message is the [`Handler`]'s business: LMTP hands
//! it to a `Deliver` (one reply per recipient), SMTP runs the MX/submission pipeline (one
//! reply).
//!
//! I/O discipline (RFC 2920 pipelining without deadlock):
//! - Input goes through one `BufReader`; commands are taken from it line by line, so a client
//!   may send MAIL/RCPT/DATA (or a whole transaction) in one write.
//! - Replies are appended to `out` and written only when we are about to block on a read
//!   (the input buffer is empty), when `out` grows past [`OUT_BYTES_FLUSH`], or when the
//!   session ends. So pipelined commands get their replies in one write, and we never wait
//!   for input while the client waits for replies we are still holding.
//! - A command line must arrive whole within the idle timeout (a client dribbling one byte a
//!   minute cannot hold a connection forever); each read of message data must arrive within
//!   it. Every write is bounded by it too.
//!
//! States: not greeted → greeted (LHLO/EHLO/HELO) → [authenticated] → in transaction (MAIL)
//! → with recipients (RCPT) → DATA or BDAT chunks → back to greeted. RSET and a new greeting
//! drop the transaction. STARTTLS ends this session value: the caller wraps the stream in TLS
//! and starts a fresh one without a greeting, all state forgotten (RFC 3207 §4.2).
//!
//! STARTTLS command injection (CVE-2011-0411 class): commands pipelined after STARTTLS in
//! the same plaintext packet are never carried into the TLS session. If anything is buffered
//! behind STARTTLS we refuse it and stay in plaintext.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::{Instant, timeout, timeout_at};

use crate::command::{
    Body, Command, ForwardPath, MailParams, ParseError, ReversePath, parse_command,
};
use crate::data::{DataDecoder, DataOutcome, normalize_line_endings};
use crate::reply::{EnhancedCode as E, Reply};
use crate::sasl;
use crate::{AuthVerdict, Deliver, DeliveryOutcome, Envelope, LmtpConfig, RcptVerdict};

/// Input buffer size. Large enough that a 64 MiB body is read in ~1000 syscalls, small enough
/// to cost nothing per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Pending replies beyond this are written even if more pipelined input is buffered, so a
/// client pipelining thousands of NOOPs cannot grow our output without bound.
const OUT_BYTES_FLUSH: usize = 16 * 1024;

/// RFC 5321 §4.5.3.1.4: a server must accept command lines of at least 512 octets.
const LINE_BYTES_MIN: usize = 512;

/// RFC 4954 §4: a SASL response line may be up to 12288 octets.
const AUTH_LINE_BYTES_MAX: usize = 12_288;

/// Which protocol the session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Lmtp,
    /// Port 25: mail for local recipients from anyone, no AUTH.
    Mx,
    /// Ports 587/465: mail from authenticated users to anyone.
    Submission,
}

/// Everything the session needs from the listener config, dialect-neutral.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) dialect: Dialect,
    pub(crate) hostname: String,
    pub(crate) message_bytes_max: usize,
    pub(crate) line_bytes_max: usize,
    pub(crate) recipients_max: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) errors_max: usize,
    /// Offer and accept AUTH without TLS (submission only).
    pub(crate) allow_plaintext_auth: bool,
    /// A TLS acceptor exists, so STARTTLS can be offered.
    pub(crate) starttls: bool,
}

impl Settings {
    pub(crate) fn lmtp(cfg: &LmtpConfig) -> Self {
        Self {
            dialect: Dialect::Lmtp,
            hostname: cfg.hostname.clone(),
            message_bytes_max: cfg.message_bytes_max,
            line_bytes_max: cfg.line_bytes_max.max(LINE_BYTES_MIN),
            recipients_max: cfg.recipients_max,
            idle_timeout: cfg.idle_timeout,
            errors_max: cfg.errors_max.max(1),
            allow_plaintext_auth: false,
            starttls: false,
        }
    }
}

/// What the session asks of the world. Implemented for LMTP (over [`Deliver`]) and for SMTP
/// (the MX/submission pipeline).
pub(crate) trait Handler: Send + Sync {
    /// `user` is the authenticated user, if any.
    fn check_recipient(
        &self,
        address: &str,
        user: Option<&str>,
    ) -> impl Future<Output = RcptVerdict> + Send;
    fn authenticate(
        &self,
        username: String,
        password: Vec<u8>,
        ip: IpAddr,
    ) -> impl Future<Output = AuthVerdict> + Send;
    fn may_send_as(&self, user: &str, address: &str) -> bool;
    /// See [`crate::MailBackend::plaintext_refusal`].
    fn plaintext_refusal(&self, configured: bool) -> Option<String> {
        if configured {
            None
        } else {
            Some(String::new())
        }
    }
    /// See [`crate::MailBackend::insecure_login`].
    fn insecure_login(&self, _user: &str, _ip: IpAddr) {}
    /// Counts one message against the client's rate; false when over it.
    fn allow_message(&self, ip: IpAddr) -> bool;
    /// The replies owed for a finished message (LMTP: one per recipient; SMTP: one).
    fn finish(
        &self,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> impl Future<Output = Vec<Reply>> + Send;
}

/// LMTP: a [`Deliver`], one reply per recipient.
pub(crate) struct LmtpHandler<'a, D>(pub(crate) &'a D);

impl<D: Deliver> Handler for LmtpHandler<'_, D> {
    async fn check_recipient(&self, address: &str, _user: Option<&str>) -> RcptVerdict {
        self.0.check_recipient(address).await
    }

    async fn authenticate(&self, _: String, _: Vec<u8>, _: IpAddr) -> AuthVerdict {
        AuthVerdict::Failed
    }

    fn may_send_as(&self, _: &str, _: &str) -> bool {
        true
    }

    fn allow_message(&self, _: IpAddr) -> bool {
        true
    }

    async fn finish(&self, envelope: Envelope, message: Vec<u8>) -> Vec<Reply> {
        let outcomes = self.0.deliver(&envelope, Arc::from(message)).await;
        // RFC 2033 §4.2: exactly one reply per accepted recipient, in RCPT order. A deliverer
        // returning too few outcomes must not make us owe the client replies: fill with 451.
        let mut outcomes = outcomes.into_iter();
        envelope
            .rcpt_to
            .iter()
            .map(|addr| match outcomes.next() {
                Some(DeliveryOutcome::Delivered) => {
                    Reply::new(250, Some(E::RECIPIENT_OK), format!("<{addr}> delivered"))
                }
                Some(DeliveryOutcome::TempFail(reason)) => {
                    Reply::new(451, Some(E::TEMP_SYSTEM), format!("<{addr}>: {reason}"))
                }
                Some(DeliveryOutcome::PermFail(reason)) => {
                    Reply::new(550, Some(E::PERM_SYSTEM), format!("<{addr}>: {reason}"))
                }
                Some(DeliveryOutcome::OverQuota) => Reply::new(
                    552,
                    Some(E::MAILBOX_FULL),
                    format!("<{addr}>: mailbox full"),
                ),
                None => Reply::new(
                    451,
                    Some(E::TEMP_SYSTEM),
                    format!("<{addr}>: internal error, no delivery outcome"),
                ),
            })
            .collect()
    }
}

/// Why the session stopped early.
#[derive(Debug)]
enum Stop {
    /// The client closed its side (possibly mid-line or mid-DATA).
    Eof,
    /// No input within the idle timeout: we owe a 421.
    ReadTimeout,
    /// The client did not take our output: replying would block again, just close.
    WriteTimeout,
    Io(io::Error),
}

enum Flow {
    Continue,
    Close,
    /// 220 to STARTTLS is queued: hand the stream to the TLS layer.
    StartTls,
}

enum Line {
    /// The line (with its terminator) is in `Session::line`.
    Complete,
    /// Longer than the limit; consumed and discarded up to its LF.
    TooLong,
}

/// How a session ended.
pub(crate) enum Ended<S> {
    Closed,
    /// The client asked for TLS and got `220`: wrap the stream and start a fresh session.
    StartTls(S),
}

/// One MAIL transaction in progress.
struct Transaction {
    mail_from: String,
    params: MailParams,
    rcpt_to: Vec<String>,
    /// BDAT chunks so far (`Some` once the first BDAT arrived).
    chunks: Option<Chunks>,
}

struct Chunks {
    message: Vec<u8>,
    size_bytes: u64,
    overflow: bool,
}

pub(crate) struct Session<'a, S, H> {
    io: BufReader<S>,
    /// Replies not yet written.
    out: Vec<u8>,
    /// The current command line, at most the line limit.
    line: Vec<u8>,
    handler: &'a H,
    settings: Settings,
    peer: SocketAddr,
    /// The stream is encrypted (implicit TLS or after STARTTLS).
    tls: bool,
    /// Send the 220 greeting (not after STARTTLS).
    greet: bool,
    /// The client's greeting argument, once greeted.
    helo: Option<String>,
    /// The authenticated account (submission).
    user: Option<String>,
    txn: Option<Transaction>,
    errors: usize,
}

impl<'a, S, H> Session<'a, S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    pub(crate) fn new(
        stream: S,
        peer: SocketAddr,
        handler: &'a H,
        settings: Settings,
        tls: bool,
        greet: bool,
    ) -> Self {
        Self {
            io: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            out: Vec::new(),
            line: Vec::new(),
            handler,
            settings,
            peer,
            tls,
            greet,
            helo: None,
            user: None,
            txn: None,
            errors: 0,
        }
    }

    pub(crate) async fn run(mut self) -> io::Result<Ended<S>> {
        let result = self.converse().await;
        let idle = self.settings.idle_timeout;
        match result {
            Ok(Flow::StartTls) => {
                // The 220 must reach the client before the handshake starts.
                return match write_out(&mut self.io, &mut self.out, idle).await {
                    Ok(()) => Ok(Ended::StartTls(self.io.into_inner())),
                    Err(_) => Ok(Ended::Closed),
                };
            }
            Ok(_) => {}
            // Client went away: a transaction in progress is dropped undelivered.
            Err(Stop::Eof | Stop::WriteTimeout) => return Ok(Ended::Closed),
            Err(Stop::ReadTimeout) => {
                self.queue(Reply::new(
                    421,
                    Some(E::BAD_CONNECTION),
                    format!(
                        "{} idle timeout, closing connection",
                        self.settings.hostname
                    ),
                ));
            }
            Err(Stop::Io(e)) if is_disconnect(&e) => return Ok(Ended::Closed),
            Err(Stop::Io(e)) => return Err(e),
        }
        // Best effort: the session is over whether or not the goodbye arrives.
        if write_out(&mut self.io, &mut self.out, idle).await.is_ok() {
            let _ = timeout(idle, self.io.shutdown()).await;
        }
        Ok(Ended::Closed)
    }

    fn is_lmtp(&self) -> bool {
        self.settings.dialect == Dialect::Lmtp
    }

    async fn converse(&mut self) -> Result<Flow, Stop> {
        if self.greet {
            let greeting = match self.settings.dialect {
                Dialect::Lmtp => format!("{} LMTP Tandem ready", self.settings.hostname),
                Dialect::Mx | Dialect::Submission => {
                    format!("{} ESMTP Tandem ready", self.settings.hostname)
                }
            };
            self.queue(Reply::new(220, None, greeting));
        }
        loop {
            let max = self.settings.line_bytes_max;
            let flow = match self.read_line(max).await? {
                Line::TooLong => self.bad(Reply::new(500, Some(E::SYNTAX_ERROR), "line too long")),
                Line::Complete => match parse_command(&self.line) {
                    Ok(cmd) => self.execute(cmd).await?,
                    Err(e) => self.bad(parse_error_reply(&e)),
                },
            };
            match flow {
                Flow::Continue => {}
                other => return Ok(other),
            }
            if self.out.len() >= OUT_BYTES_FLUSH {
                write_out(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
            }
        }
    }

    async fn execute(&mut self, cmd: Command) -> Result<Flow, Stop> {
        let lmtp = self.is_lmtp();
        Ok(match cmd {
            Command::Lhlo { domain } if lmtp => self.greeting(domain, true),
            Command::Lhlo { .. } => self.bad(Reply::new(
                500,
                Some(E::INVALID_COMMAND),
                "this is SMTP: use EHLO",
            )),
            // RFC 2033 §4.1: an LMTP server must not accept HELO/EHLO.
            Command::Helo { .. } | Command::Ehlo { .. } if lmtp => self.bad(Reply::new(
                500,
                Some(E::INVALID_COMMAND),
                "this is LMTP (RFC 2033): use LHLO",
            )),
            Command::Ehlo { domain } => self.greeting(domain, true),
            Command::Helo { domain } => self.greeting(domain, false),
            // LMTP offers none of these extensions: they are unknown commands there.
            Command::StartTls | Command::Auth { .. } | Command::Bdat { .. } if lmtp => self.bad(
                Reply::new(500, Some(E::SYNTAX_ERROR), "command not recognized"),
            ),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => self.data().await?,
            Command::Bdat { size, last } => self.bdat(size, last).await?,
            Command::Rset => {
                self.txn = None;
                self.ok("OK")
            }
            Command::Noop => self.ok("OK"),
            Command::Quit => {
                self.queue(Reply::new(
                    221,
                    Some(E::OK),
                    format!("{} closing connection", self.settings.hostname),
                ));
                Flow::Close
            }
            Command::Vrfy { .. } => {
                // RFC 5321 §3.5.3: 252 when we will not verify but will accept and try.
                self.queue(Reply::new(
                    252,
                    Some(E::OK),
                    "cannot VRFY user, but will accept message and attempt delivery",
                ));
                Flow::Continue
            }
            Command::Help => {
                let text = if lmtp {
                    "commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY"
                } else {
                    "commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY"
                };
                self.queue(Reply::new(214, Some(E::OK), text));
                Flow::Continue
            }
        })
    }

    fn offers_auth(&self) -> bool {
        self.settings.dialect == Dialect::Submission
            && (self.tls
                || self
                    .handler
                    .plaintext_refusal(self.settings.allow_plaintext_auth)
                    .is_none())
    }

    /// LHLO / EHLO / HELO. May be repeated; resets any transaction (RFC 5321 §4.1.4).
    fn greeting(&mut self, domain: String, extended: bool) -> Flow {
        self.helo = Some(domain);
        self.txn = None;
        let mut lines = vec![self.settings.hostname.clone()];
        if extended {
            lines.push("PIPELINING".to_string());
            lines.push("ENHANCEDSTATUSCODES".to_string());
            lines.push("8BITMIME".to_string());
            lines.push(format!("SIZE {}", self.settings.message_bytes_max));
            if !self.is_lmtp() {
                lines.push("SMTPUTF8".to_string());
                lines.push("CHUNKING".to_string());
                if self.settings.starttls && !self.tls {
                    lines.push("STARTTLS".to_string());
                }
                if self.offers_auth() && self.user.is_none() {
                    lines.push("AUTH PLAIN LOGIN".to_string());
                }
            }
        }
        self.queue(Reply::multiline(250, lines));
        Flow::Continue
    }

    fn starttls(&mut self) -> Flow {
        if self.tls {
            return self.out_of_sequence("TLS is already active");
        }
        if !self.settings.starttls {
            return self.bad(Reply::new(
                502,
                Some(E::INVALID_COMMAND),
                "STARTTLS not available",
            ));
        }
        if self.helo.is_none() {
            return self.out_of_sequence("send EHLO first");
        }
        if !self.io.buffer().is_empty() {
            // Anything behind STARTTLS was sent in plaintext: never let it run as if it had
            // come over TLS.
            return self.bad(Reply::new(
                503,
                Some(E::INVALID_COMMAND),
                "STARTTLS must be the last command of a pipelined group",
            ));
        }
        self.queue(Reply::new(220, Some(E::OK), "ready to start TLS"));
        Flow::StartTls
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Result<Flow, Stop> {
        if self.settings.dialect != Dialect::Submission {
            return Ok(self.bad(Reply::new(
                502,
                Some(E::INVALID_COMMAND),
                "AUTH is offered on the submission ports only",
            )));
        }
        if self.helo.is_none() {
            return Ok(self.out_of_sequence("send EHLO first"));
        }
        if self.user.is_some() {
            return Ok(self.out_of_sequence("already authenticated"));
        }
        if self.txn.is_some() {
            return Ok(self.out_of_sequence("AUTH is not allowed during a mail transaction"));
        }
        if !self.offers_auth() {
            // RFC 3207 4: 530 5.7.0 until STARTTLS, plus how to fix the client's setup.
            let hint = self
                .handler
                .plaintext_refusal(self.settings.allow_plaintext_auth)
                .filter(|h| !h.is_empty())
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            self.queue(Reply::new(
                530,
                Some(E::PERM_POLICY),
                format!("Must issue a STARTTLS command first{hint}"),
            ));
            return Ok(Flow::Continue);
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => Some(r.into_bytes()),
                    None => self.challenge("").await?,
                };
                let Some(resp) = resp else {
                    return Ok(self.auth_cancelled());
                };
                sasl::decode(&resp).and_then(|r| sasl::plain(&r))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => Some(r.into_bytes()),
                    None => self.challenge(&sasl::encode(b"Username:")).await?,
                };
                let Some(user) = user else {
                    return Ok(self.auth_cancelled());
                };
                match sasl::decode(&user).and_then(|u| sasl::login_user(&u)) {
                    Err(e) => Err(e),
                    Ok(username) => {
                        let Some(pass) = self.challenge(&sasl::encode(b"Password:")).await? else {
                            return Ok(self.auth_cancelled());
                        };
                        sasl::decode(&pass).map(|password| sasl::Credentials { username, password })
                    }
                }
            }
            _ => {
                return Ok(self.bad(Reply::new(
                    504,
                    Some(E::INVALID_ARGUMENTS),
                    "mechanism not supported: use PLAIN or LOGIN",
                )));
            }
        };
        let creds = match creds {
            Ok(c) => c,
            Err(e) => return Ok(self.bad(Reply::new(501, Some(E::SYNTAX_ERROR), e.text()))),
        };
        let verdict = self
            .handler
            .authenticate(creds.username, creds.password, self.peer.ip())
            .await;
        Ok(match verdict {
            AuthVerdict::Ok { user } => {
                if !self.tls {
                    self.handler.insecure_login(&user, self.peer.ip());
                }
                self.user = Some(user);
                self.queue(Reply::new(
                    235,
                    Some(E::AUTH_OK),
                    "authentication successful",
                ));
                Flow::Continue
            }
            AuthVerdict::Failed => self.bad(Reply::new(
                535,
                Some(E::AUTH_INVALID),
                "authentication credentials invalid",
            )),
            AuthVerdict::Throttled(wait) => {
                self.queue(Reply::new(
                    454,
                    Some(E::TEMP_POLICY),
                    format!(
                        "too many failed logins; try again in {} seconds",
                        wait.as_secs().max(1)
                    ),
                ));
                Flow::Continue
            }
            AuthVerdict::TempFail(reason) => {
                self.queue(Reply::new(
                    454,
                    Some(E::TEMP_POLICY),
                    format!("temporary authentication failure: {reason}"),
                ));
                Flow::Continue
            }
        })
    }

    /// Sends `334 challenge` and reads the response line. `None`: the client cancelled (`*`).
    async fn challenge(&mut self, challenge: &str) -> Result<Option<Vec<u8>>, Stop> {
        self.queue(Reply::new(334, None, challenge));
        let max = self.settings.line_bytes_max.max(AUTH_LINE_BYTES_MAX);
        match self.read_line(max).await? {
            // Too long to be a credential: treat as garbage, which fails to decode.
            Line::TooLong => Ok(Some(b"!".to_vec())),
            Line::Complete => {
                let l = strip_crlf(&self.line);
                if l == b"*" {
                    Ok(None)
                } else {
                    Ok(Some(l.to_vec()))
                }
            }
        }
    }

    fn auth_cancelled(&mut self) -> Flow {
        self.bad(Reply::new(
            501,
            Some(E::PERM_POLICY),
            "authentication cancelled",
        ))
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Flow {
        let lmtp = self.is_lmtp();
        if lmtp && (params.smtputf8 || params.auth) {
            let p = if params.smtputf8 { "SMTPUTF8" } else { "AUTH" };
            let e = ParseError::UnsupportedParameter(p.to_string());
            return self.bad(parse_error_reply(&e));
        }
        if self.helo.is_none() {
            return self.out_of_sequence(if lmtp {
                "send LHLO first"
            } else {
                "send EHLO or HELO first"
            });
        }
        if self.txn.is_some() {
            return self.out_of_sequence("nested MAIL command");
        }
        let dialect = self.settings.dialect;
        if dialect == Dialect::Submission && self.user.is_none() {
            return self.bad(Reply::new(
                530,
                Some(E::PERM_POLICY),
                "authentication required",
            ));
        }
        let addr = from.as_str().to_string();
        if !lmtp && !params.smtputf8 && !addr.is_ascii() {
            self.queue(Reply::new(
                553,
                Some(E::UTF8_REQUIRED),
                "non-ASCII sender address needs the SMTPUTF8 parameter",
            ));
            return Flow::Continue;
        }
        if let (Dialect::Submission, Some(user)) = (dialect, &self.user)
            && (addr.is_empty() || !self.handler.may_send_as(user, &addr))
        {
            let text = format!("<{addr}>: sender address not owned by {user}");
            self.queue(Reply::new(553, Some(E::NOT_AUTHORIZED), text));
            return Flow::Continue;
        }
        if params
            .size
            .is_some_and(|s| s > self.settings.message_bytes_max as u64)
        {
            // A policy refusal, not a client error: not counted towards errors_max.
            self.queue(Reply::new(
                552,
                Some(E::MESSAGE_TOO_BIG),
                "message size exceeds fixed maximum message size",
            ));
            return Flow::Continue;
        }
        if dialect == Dialect::Mx && !self.handler.allow_message(self.peer.ip()) {
            self.queue(Reply::new(
                451,
                Some(E::TEMP_NOT_AUTHORIZED),
                "too many messages from your address; try again later",
            ));
            return Flow::Continue;
        }
        let text = format!("<{addr}> sender OK");
        self.txn = Some(Transaction {
            mail_from: addr,
            params,
            rcpt_to: Vec::new(),
            chunks: None,
        });
        self.queue(Reply::new(250, Some(E::SENDER_OK), text));
        Flow::Continue
    }

    async fn rcpt(&mut self, to: ForwardPath) -> Flow {
        let Some(txn) = &self.txn else {
            return self.out_of_sequence("need MAIL before RCPT");
        };
        if txn.chunks.is_some() {
            return self.out_of_sequence("RCPT is not allowed after BDAT");
        }
        if txn.rcpt_to.len() >= self.settings.recipients_max {
            self.queue(Reply::new(
                452,
                Some(E::TOO_MANY_RECIPIENTS),
                "too many recipients",
            ));
            return Flow::Continue;
        }
        let addr = to.as_str();
        if !self.is_lmtp() && !txn.params.smtputf8 && !addr.is_ascii() {
            self.queue(Reply::new(
                553,
                Some(E::UTF8_REQUIRED),
                "non-ASCII recipient address needs SMTPUTF8 in MAIL FROM",
            ));
            return Flow::Continue;
        }
        let reply = match self
            .handler
            .check_recipient(addr, self.user.as_deref())
            .await
        {
            RcptVerdict::Accept => {
                if let Some(txn) = &mut self.txn {
                    txn.rcpt_to.push(addr.to_string());
                }
                Reply::new(250, Some(E::RECIPIENT_OK), format!("<{addr}> recipient OK"))
            }
            RcptVerdict::UnknownUser => Reply::new(
                550,
                Some(E::NO_SUCH_USER),
                format!("<{addr}>: no such user"),
            ),
            RcptVerdict::RelayDenied => Reply::new(
                550,
                Some(E::NOT_AUTHORIZED),
                format!("<{addr}>: relay not permitted"),
            ),
            RcptVerdict::TempFail(reason) => {
                Reply::new(451, Some(E::TEMP_SYSTEM), format!("<{addr}>: {reason}"))
            }
        };
        self.queue(reply);
        Flow::Continue
    }

    async fn data(&mut self) -> Result<Flow, Stop> {
        match &self.txn {
            None => return Ok(self.out_of_sequence("need MAIL before DATA")),
            Some(t) if t.chunks.is_some() => {
                return Ok(self.out_of_sequence("DATA is not allowed after BDAT"));
            }
            Some(t) if t.rcpt_to.is_empty() => {
                return Ok(self.out_of_sequence("no valid recipients"));
            }
            Some(_) => {}
        }
        self.queue(Reply::new(354, None, "end data with <CR><LF>.<CR><LF>"));
        let mut decoder = DataDecoder::new(self.settings.message_bytes_max);
        while !decoder.is_done() {
            let buf = fill_idle(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
            let used = decoder.feed(buf);
            self.io.consume(used);
        }
        // DATA ends the transaction whatever happens next (RFC 5321 §4.1.1.4).
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        match decoder.finish() {
            DataOutcome::TooBig { .. } => self.too_big(&txn),
            DataOutcome::Message(message) => self.finish(txn, message).await,
        }
        Ok(Flow::Continue)
    }

    /// One 552 per recipient in LMTP, one in SMTP.
    fn too_big(&mut self, txn: &Transaction) {
        let n = if self.is_lmtp() { txn.rcpt_to.len() } else { 1 };
        for _ in 0..n {
            self.queue(Reply::new(
                552,
                Some(E::MESSAGE_TOO_BIG),
                "message size exceeds fixed maximum message size",
            ));
        }
    }

    /// RFC 3030 BDAT: the chunk follows the command line whatever we think of the command,
    /// so it is always read (and discarded when refused) before replying.
    async fn bdat(&mut self, size: u64, last: bool) -> Result<Flow, Stop> {
        let refusal = match &self.txn {
            None => Some("need MAIL before BDAT"),
            Some(t) if t.rcpt_to.is_empty() => Some("no valid recipients"),
            Some(_) => None,
        };
        let max = self.settings.message_bytes_max as u64;
        let keep = match (&refusal, &mut self.txn) {
            (None, Some(txn)) => {
                let chunks = txn.chunks.get_or_insert_with(|| Chunks {
                    message: Vec::new(),
                    size_bytes: 0,
                    overflow: false,
                });
                chunks.size_bytes = chunks.size_bytes.saturating_add(size);
                if chunks.size_bytes > max && !chunks.overflow {
                    // Over the limit: free the buffer now, keep only the count.
                    chunks.overflow = true;
                    chunks.message = Vec::new();
                }
                !chunks.overflow
            }
            _ => false,
        };
        let mut remaining = size;
        while remaining > 0 {
            let buf = fill_idle(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
            let take = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            if keep
                && let Some(Transaction {
                    chunks: Some(c), ..
                }) = &mut self.txn
            {
                c.message.extend_from_slice(&buf[..take]);
            }
            self.io.consume(take);
            remaining -= take as u64;
        }
        if let Some(text) = refusal {
            // A refused chunk ends any chunked transaction (RFC 3030 §3).
            self.txn = None;
            return Ok(self.out_of_sequence(text));
        }
        if !last {
            self.queue(Reply::new(
                250,
                Some(E::OK),
                format!("{size} octets received"),
            ));
            return Ok(Flow::Continue);
        }
        let Some(mut txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        let chunks = txn.chunks.take();
        match chunks {
            Some(c) if !c.overflow => {
                let message = normalize_line_endings(c.message);
                if message.len() > self.settings.message_bytes_max {
                    self.too_big(&txn);
                } else {
                    self.finish(txn, message).await;
                }
            }
            _ => self.too_big(&txn),
        }
        Ok(Flow::Continue)
    }

    async fn finish(&mut self, txn: Transaction, message: Vec<u8>) {
        let envelope = Envelope {
            mail_from: txn.mail_from,
            rcpt_to: txn.rcpt_to,
            peer: self.peer,
            size_declared: txn.params.size,
            body_8bit: txn.params.body == Some(Body::EightBitMime),
            smtputf8: txn.params.smtputf8,
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls,
            auth_user: self.user.clone(),
        };
        for reply in self.handler.finish(envelope, message).await {
            self.queue(reply);
        }
    }

    /// Read one line into `self.line`, bounded by `max`; the whole line must arrive within
    /// the idle timeout.
    async fn read_line(&mut self, max: usize) -> Result<Line, Stop> {
        self.line.clear();
        let mut too_long = false;
        let mut deadline = None;
        loop {
            // The clock starts once our replies are out: waiting for us is not idling.
            let idle = self.settings.idle_timeout;
            let buf = match deadline {
                Some(d) => fill(&mut self.io, &mut self.out, idle, d).await?,
                None => {
                    if self.io.buffer().is_empty() && !self.out.is_empty() {
                        write_out(&mut self.io, &mut self.out, idle).await?;
                    }
                    let d = Instant::now() + idle;
                    deadline = Some(d);
                    fill(&mut self.io, &mut self.out, idle, d).await?
                }
            };
            let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if !too_long && self.line.len() + take <= max {
                self.line.extend_from_slice(&buf[..take]);
            } else if !too_long {
                too_long = true;
                self.line.clear();
            }
            self.io.consume(take);
            if complete {
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Complete
                });
            }
        }
    }

    fn queue(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    fn ok(&mut self, text: &str) -> Flow {
        self.queue(Reply::new(250, Some(E::OK), text));
        Flow::Continue
    }

    fn out_of_sequence(&mut self, text: &str) -> Flow {
        self.bad(Reply::new(503, Some(E::INVALID_COMMAND), text))
    }

    /// Answer a bad command, or close with 421 once `errors_max` is reached: a client that
    /// keeps sending garbage is broken or hostile, and either way is wasting a connection.
    fn bad(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        if self.errors >= self.settings.errors_max {
            self.queue(Reply::new(
                421,
                Some(E::TEMP_POLICY),
                format!(
                    "{} too many errors, closing connection",
                    self.settings.hostname
                ),
            ));
            return Flow::Close;
        }
        self.queue(reply);
        Flow::Continue
    }
}

fn strip_crlf(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn parse_error_reply(e: &ParseError) -> Reply {
    match e {
        ParseError::Empty | ParseError::UnknownCommand => {
            Reply::new(500, Some(E::SYNTAX_ERROR), "command not recognized")
        }
        ParseError::Syntax(msg) => Reply::new(501, Some(E::INVALID_ARGUMENTS), *msg),
        ParseError::UnsupportedParameter(_) => {
            Reply::new(555, Some(E::INVALID_ARGUMENTS), e.to_string())
        }
    }
}

/// Buffered input, flushing pending replies first if we are about to wait for the client.
/// A free function (not a method) so callers can borrow the returned slice and other
/// session fields at once.
async fn fill<'b, S>(
    io: &'b mut BufReader<S>,
    out: &mut Vec<u8>,
    idle: Duration,
    deadline: Instant,
) -> Result<&'b [u8], Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.buffer().is_empty() && !out.is_empty() {
        write_out(io, out, idle).await?;
    }
    let buf = match timeout_at(deadline, io.fill_buf()).await {
        Err(_) => return Err(Stop::ReadTimeout),
        Ok(Err(e)) => return Err(Stop::Io(e)),
        Ok(Ok(buf)) => buf,
    };
    if buf.is_empty() {
        return Err(Stop::Eof);
    }
    Ok(buf)
}

/// [`fill`] with a fresh idle deadline: message data must keep arriving, piece by piece.
async fn fill_idle<'b, S>(
    io: &'b mut BufReader<S>,
    out: &mut Vec<u8>,
    idle: Duration,
) -> Result<&'b [u8], Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fill(io, out, idle, Instant::now() + idle).await
}

/// Write and flush pending replies.
async fn write_out<S>(io: &mut BufReader<S>, out: &mut Vec<u8>, idle: Duration) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    match timeout(idle, write).await {
        Err(_) => Err(Stop::WriteTimeout),
        Ok(Err(e)) => Err(Stop::Io(e)),
        Ok(Ok(())) => {
            out.clear();
            // Don't keep a large burst's buffer for the whole connection.
            out.shrink_to(OUT_BYTES_FLUSH);
            Ok(())
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}
