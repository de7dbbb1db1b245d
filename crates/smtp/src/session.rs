//! The session state machine, shared by every dialect (only LMTP exists so far), generic over
//! the byte stream so tests run it over `tokio::io::duplex` and production over TCP or TLS.
//!
//! I/O discipline (RFC 2920 pipelining without deadlock):
//! - Input goes through one `BufReader`; commands are taken from it line by line, so a client
//!   may send MAIL/RCPT/DATA (or a whole transaction) in one write.
//! - Replies are appended to `out` and written only when we are about to block on a read
//!   (the input buffer is empty), when `out` grows past [`OUT_BYTES_FLUSH`], or when the
//!   session ends. So pipelined commands get their replies in one write, and we never wait
//!   for input while the client waits for replies we are still holding.
//! - Every read and write is bounded by the idle timeout.
//!
//! States: not greeted → greeted (LHLO) → in transaction (MAIL) → with recipients (RCPT) →
//! DATA → back to greeted. RSET and a new LHLO drop the transaction.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use crate::command::{
    Body, Command, ForwardPath, MailParams, ParseError, ReversePath, parse_command,
};
use crate::data::{DataDecoder, DataOutcome};
use crate::reply::{EnhancedCode as E, Reply};
use crate::{Deliver, DeliveryOutcome, Envelope, LmtpConfig, RcptVerdict};

/// Input buffer size. Large enough that a 64 MiB body is read in ~1000 syscalls, small enough
/// to cost nothing per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Pending replies beyond this are written even if more pipelined input is buffered, so a
/// client pipelining thousands of NOOPs cannot grow our output without bound.
const OUT_BYTES_FLUSH: usize = 16 * 1024;

/// RFC 5321 §4.5.3.1.4: a server must accept command lines of at least 512 octets.
const LINE_BYTES_MIN: usize = 512;

/// Which protocol the session speaks. SMTP MX and submission will join here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Lmtp,
}

/// Everything the session needs from the listener config, dialect-neutral.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    dialect: Dialect,
    hostname: String,
    message_bytes_max: usize,
    line_bytes_max: usize,
    recipients_max: usize,
    idle_timeout: Duration,
    errors_max: usize,
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
        }
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
}

enum Line {
    /// The line (with its terminator) is in `Session::line`.
    Complete,
    /// Longer than `line_bytes_max`; consumed and discarded up to its LF.
    TooLong,
}

/// One MAIL transaction in progress.
struct Transaction {
    mail_from: String,
    params: MailParams,
    rcpt_to: Vec<String>,
}

pub(crate) struct Session<'a, S, D> {
    io: BufReader<S>,
    /// Replies not yet written.
    out: Vec<u8>,
    /// The current command line, at most `line_bytes_max` bytes.
    line: Vec<u8>,
    deliver: &'a D,
    settings: Settings,
    peer: SocketAddr,
    greeted: bool,
    txn: Option<Transaction>,
    errors: usize,
}

impl<'a, S, D> Session<'a, S, D>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Deliver,
{
    pub(crate) fn new(stream: S, peer: SocketAddr, deliver: &'a D, settings: Settings) -> Self {
        Self {
            io: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            out: Vec::new(),
            line: Vec::new(),
            deliver,
            settings,
            peer,
            greeted: false,
            txn: None,
            errors: 0,
        }
    }

    pub(crate) async fn run(mut self) -> io::Result<()> {
        let result = self.converse().await;
        let idle = self.settings.idle_timeout;
        match result {
            Ok(()) => {}
            // Client went away: a transaction in progress is dropped undelivered.
            Err(Stop::Eof | Stop::WriteTimeout) => return Ok(()),
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
            Err(Stop::Io(e)) if is_disconnect(&e) => return Ok(()),
            Err(Stop::Io(e)) => return Err(e),
        }
        // Best effort: the session is over whether or not the goodbye arrives.
        if write_out(&mut self.io, &mut self.out, idle).await.is_ok() {
            let _ = timeout(idle, self.io.shutdown()).await;
        }
        Ok(())
    }

    async fn converse(&mut self) -> Result<(), Stop> {
        let greeting = match self.settings.dialect {
            Dialect::Lmtp => format!("{} LMTP Tandem ready", self.settings.hostname),
        };
        self.queue(Reply::new(220, None, greeting));
        loop {
            let flow = match self.read_line().await? {
                Line::TooLong => self.bad(Reply::new(500, Some(E::SYNTAX_ERROR), "line too long")),
                Line::Complete => match parse_command(&self.line) {
                    Ok(cmd) => self.execute(cmd).await?,
                    Err(e) => self.bad(parse_error_reply(&e)),
                },
            };
            if let Flow::Close = flow {
                return Ok(());
            }
            if self.out.len() >= OUT_BYTES_FLUSH {
                write_out(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
            }
        }
    }

    async fn execute(&mut self, cmd: Command) -> Result<Flow, Stop> {
        Ok(match cmd {
            Command::Lhlo { .. } => self.lhlo(),
            Command::Helo { .. } | Command::Ehlo { .. } => match self.settings.dialect {
                // RFC 2033 §4.1: an LMTP server must not accept HELO/EHLO.
                Dialect::Lmtp => self.bad(Reply::new(
                    500,
                    Some(E::INVALID_COMMAND),
                    "this is LMTP (RFC 2033): use LHLO",
                )),
            },
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => self.data().await?,
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
                self.queue(Reply::new(
                    214,
                    Some(E::OK),
                    "commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY",
                ));
                Flow::Continue
            }
        })
    }

    fn lhlo(&mut self) -> Flow {
        // LHLO, like EHLO, may be repeated and resets any transaction (RFC 5321 §4.1.4).
        self.greeted = true;
        self.txn = None;
        let lines = [
            self.settings.hostname.clone(),
            "PIPELINING".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "8BITMIME".to_string(),
            format!("SIZE {}", self.settings.message_bytes_max),
        ];
        self.queue(Reply::multiline(250, lines));
        Flow::Continue
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Flow {
        if !self.greeted {
            return self.out_of_sequence("send LHLO first");
        }
        if self.txn.is_some() {
            return self.out_of_sequence("nested MAIL command");
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
        let text = format!("<{}> sender OK", from.as_str());
        self.txn = Some(Transaction {
            mail_from: from.as_str().to_string(),
            params,
            rcpt_to: Vec::new(),
        });
        self.queue(Reply::new(250, Some(E::SENDER_OK), text));
        Flow::Continue
    }

    async fn rcpt(&mut self, to: ForwardPath) -> Flow {
        let Some(txn) = &self.txn else {
            return self.out_of_sequence("need MAIL before RCPT");
        };
        if txn.rcpt_to.len() >= self.settings.recipients_max {
            self.queue(Reply::new(
                452,
                Some(E::TOO_MANY_RECIPIENTS),
                "too many recipients",
            ));
            return Flow::Continue;
        }
        let addr = to.as_str();
        let reply = match self.deliver.check_recipient(addr).await {
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
            Some(t) if t.rcpt_to.is_empty() => {
                return Ok(self.out_of_sequence("no valid recipients"));
            }
            Some(_) => {}
        }
        self.queue(Reply::new(354, None, "end data with <CR><LF>.<CR><LF>"));
        let mut decoder = DataDecoder::new(self.settings.message_bytes_max);
        while !decoder.is_done() {
            let buf = fill(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
            let used = decoder.feed(buf);
            self.io.consume(used);
        }
        // DATA ends the transaction whatever happens next (RFC 5321 §4.1.1.4).
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        match decoder.finish() {
            DataOutcome::TooBig { .. } => {
                for _ in &txn.rcpt_to {
                    self.queue(Reply::new(
                        552,
                        Some(E::MESSAGE_TOO_BIG),
                        "message size exceeds fixed maximum message size",
                    ));
                }
            }
            DataOutcome::Message(message) => self.deliver_message(txn, message).await,
        }
        Ok(Flow::Continue)
    }

    async fn deliver_message(&mut self, txn: Transaction, message: Vec<u8>) {
        let envelope = Envelope {
            mail_from: txn.mail_from,
            rcpt_to: txn.rcpt_to,
            peer: self.peer,
            size_declared: txn.params.size,
            body_8bit: txn.params.body == Some(Body::EightBitMime),
        };
        let outcomes = self.deliver.deliver(&envelope, Arc::from(message)).await;
        // RFC 2033 §4.2: exactly one reply per accepted recipient, in RCPT order. A deliverer
        // returning too few outcomes must not make us owe the client replies: fill with 451.
        let mut outcomes = outcomes.into_iter();
        for addr in &envelope.rcpt_to {
            let reply = match outcomes.next() {
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
            };
            self.queue(reply);
        }
    }

    /// Read one command line into `self.line`, bounded by `line_bytes_max`.
    async fn read_line(&mut self) -> Result<Line, Stop> {
        self.line.clear();
        let max = self.settings.line_bytes_max;
        let mut too_long = false;
        loop {
            let buf = fill(&mut self.io, &mut self.out, self.settings.idle_timeout).await?;
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
) -> Result<&'b [u8], Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if io.buffer().is_empty() && !out.is_empty() {
        write_out(io, out, idle).await?;
    }
    let buf = match timeout(idle, io.fill_buf()).await {
        Err(_) => return Err(Stop::ReadTimeout),
        Ok(Err(e)) => return Err(Stop::Io(e)),
        Ok(Ok(buf)) => buf,
    };
    if buf.is_empty() {
        return Err(Stop::Eof);
    }
    Ok(buf)
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
