//! One client connection: the read loop, the state machine, response writing, STLS.
//!
//! States (RFC 1939 3): AUTHORIZATION (`State::Authorization`), TRANSACTION
//! (`State::Transaction`, holding the maildrop snapshot), UPDATE (entered only by QUIT in
//! TRANSACTION, see `transaction.rs`). Commands run one at a time in the order received;
//! pipelined commands (RFC 2449 PIPELINING) simply wait in the line reader, and answers
//! are flushed once no complete command is left.
//!
//! The connection is generic over its stream: a plain socket first, and after STLS the
//! same session continues over a new `Conn` on the TLS stream. Nothing read before the
//! handshake survives it (RFC 2595 4, CVE-2011-0411): the plaintext `Conn`, with its
//! buffered bytes, is dropped.
//!
//! Limits: command lines of `line_bytes_max` (longer: `-ERR`, the line is skipped); SASL
//! response lines of `SASL_LINE_BYTES_MAX`; `bad_commands_max` invalid commands and
//! `AUTH_FAILURES_MAX` failed logins per connection, then the connection is closed; every
//! read waits at most `idle_timeout` and every write `WRITE_TIMEOUT`; pending output is
//! flushed past `OUT_FLUSH_BYTES`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use store::Slot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Pop3Server;
use crate::command::{Command, Line, LineReader, parse_command};
use crate::maildrop::Maildrop;

/// Pending output is written out once it grows past this (large RETRs).
pub(crate) const OUT_FLUSH_BYTES: usize = 256 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A client that does not read its responses for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest SASL response line: PLAIN carries two addresses (254 bytes each) and a
/// password of up to 1024 bytes, base64-encoded.
pub(crate) const SASL_LINE_BYTES_MAX: usize = 4096;
/// Failed logins on one connection before it is closed (the `AuthLimiter` throttles
/// across connections; this stops one connection from retrying for ever).
pub(crate) const AUTH_FAILURES_MAX: u32 = 5;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("client did not read its responses for {0:?}")]
    WriteTimeout(Duration),
    #[error("client went away in the middle of a command")]
    ClientGone,
}

/// What the read loop does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
    /// `+OK` to STLS was sent: hand the socket to the TLS acceptor.
    StartTls,
}

pub(crate) enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
}

/// The byte stream of one connection (plain or TLS), its line reader and pending output.
pub(crate) struct Conn<S> {
    stream: S,
    pub lines: LineReader,
    pub out: Vec<u8>,
    rbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            lines: LineReader::new(),
            out: Vec::new(),
            rbuf: vec![0; READ_CHUNK_BYTES],
        }
    }

    pub fn ok(&mut self, text: &str) {
        self.status("+OK", text);
    }

    pub fn err(&mut self, text: &str) {
        self.status("-ERR", text);
    }

    fn status(&mut self, word: &str, text: &str) {
        self.out.extend_from_slice(word.as_bytes());
        if !text.is_empty() {
            self.out.push(b' ');
            self.out.extend_from_slice(text.as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes pending responses to the client.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        let write = async {
            self.stream.write_all(&data).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => Err(SessionError::WriteTimeout(WRITE_TIMEOUT)),
            Ok(r) => {
                r?;
                // Keep the allocation for the next responses unless a big RETR grew it.
                if data.capacity() <= OUT_FLUSH_BYTES * 2 {
                    self.out = data;
                    self.out.clear();
                }
                Ok(())
            }
        }
    }

    /// Reads what the client sent next into the line reader.
    pub async fn read_more(&mut self, limit: Duration) -> Result<ReadOutcome, SessionError> {
        match tokio::time::timeout(limit, self.stream.read(&mut self.rbuf)).await {
            Err(_) => Ok(ReadOutcome::TimedOut),
            Ok(Ok(0)) => Ok(ReadOutcome::Eof),
            Ok(Ok(n)) => {
                self.lines.push(&self.rbuf[..n]);
                Ok(ReadOutcome::Data)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// One line in the middle of a command (a SASL response), after flushing what the
    /// client waits for. The client going away is an error: the command cannot finish.
    pub async fn read_line(&mut self, max: usize, limit: Duration) -> Result<Line, SessionError> {
        self.flush().await?;
        loop {
            if let Some(l) = self.lines.next_line(max) {
                return Ok(l);
            }
            match self.read_more(limit).await? {
                ReadOutcome::Data => {}
                ReadOutcome::Eof | ReadOutcome::TimedOut => return Err(SessionError::ClientGone),
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The logged-in user and the maildrop snapshot (TRANSACTION state).
pub(crate) struct Transaction {
    /// The account address, which is also the user's name in the store.
    pub name: String,
    pub slot: Slot,
    pub drop: Maildrop,
}

pub(crate) enum State {
    /// `user`: the name given by USER, waiting for PASS.
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Transaction>),
    /// QUIT was answered (the UPDATE state, if any, is over).
    Done,
}

pub(crate) struct Session {
    pub server: Arc<Pop3Server>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub state: State,
    bad_commands: u32,
    pub auth_failures: u32,
}

/// Serves one connection to its end. Errors only end this connection.
pub(crate) async fn run(
    server: Arc<Pop3Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
) {
    let mut session = Session {
        server: server.clone(),
        peer,
        tls: implicit_tls,
        state: State::Authorization { user: None },
        bad_commands: 0,
        auth_failures: 0,
    };
    if implicit_tls {
        // A pop3s listener without a certificate is a wiring mistake; refuse rather than
        // talk plaintext on a port clients trust to be encrypted.
        let Some(tls) = handshake(&server, tcp).await else {
            return;
        };
        let mut conn = Conn::new(tls);
        session.greet(&mut conn);
        let _ = session.drive(&mut conn).await;
        session.finish(&mut conn).await;
        return;
    }
    let mut conn = Conn::new(tcp);
    session.greet(&mut conn);
    match session.drive(&mut conn).await {
        Ok(Flow::StartTls) => {
            // Dropping the plaintext Conn discards whatever the client pipelined after
            // STLS: it arrived unprotected.
            let Conn { stream, .. } = conn;
            let Some(tls) = handshake(&server, stream).await else {
                return;
            };
            session.tls = true;
            let mut conn = Conn::new(tls);
            let _ = session.drive(&mut conn).await;
            session.finish(&mut conn).await;
        }
        _ => session.finish(&mut conn).await,
    }
}

/// A connection a frontend proxied here (see `Pop3Server::serve_preauth`).
pub(crate) async fn run_preauth<S: AsyncRead + AsyncWrite + Unpin>(
    server: Arc<Pop3Server>,
    stream: S,
    client: crate::ProxiedClient,
) {
    let mut session = Session {
        server,
        peer: client.peer,
        tls: client.tls,
        state: State::Authorization { user: None },
        bad_commands: 0,
        auth_failures: 0,
    };
    let mut conn = Conn::new(stream);
    if session.begin_preauth(&mut conn, &client.user).await == Flow::Continue
        && matches!(session.state, State::Transaction(_))
    {
        let _ = session.drive(&mut conn).await;
    }
    session.finish(&mut conn).await;
}

async fn handshake(
    server: &Pop3Server,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = server.tls.clone()?;
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

impl Session {
    fn greet<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn<S>) {
        conn.ok(&format!(
            "{} Tandem POP3 ready",
            self.server.config.hostname
        ));
    }

    /// Runs commands until the session closes or STLS hands over the socket.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<Flow, SessionError> {
        let max = self.server.config.line_bytes_max;
        loop {
            while let Some(line) = conn.lines.next_line(max) {
                let flow = self.on_line(conn, line).await?;
                if flow != Flow::Continue {
                    conn.flush().await?;
                    return Ok(flow);
                }
                if conn.out.len() > OUT_FLUSH_BYTES {
                    conn.flush().await?;
                }
            }
            conn.flush().await?;
            match conn.read_more(self.server.config.idle_timeout).await? {
                ReadOutcome::Data => {}
                ReadOutcome::Eof => return Ok(Flow::Close),
                ReadOutcome::TimedOut => {
                    // RFC 1939 3: an autologout does not enter the UPDATE state.
                    conn.err("Disconnected for inactivity");
                    conn.flush().await?;
                    return Ok(Flow::Close);
                }
            }
        }
    }

    /// End of the connection, however it came: a session that retrieved messages but did
    /// not QUIT still marks them `\Seen` (like Dovecot); deletions are dropped (RFC 1939).
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) {
        if let State::Transaction(tx) = std::mem::replace(&mut self.state, State::Done) {
            let _ = tx.mark_seen().await;
        }
        conn.shutdown().await;
    }

    /// May the client send a password now?
    pub(crate) fn login_allowed(&self) -> bool {
        self.tls || self.plaintext_refusal().is_none()
    }

    /// Why a password may not be sent without TLS now (`None`: it may). Without a
    /// policy installed, `allow_plaintext_auth` decides.
    pub(crate) fn plaintext_refusal(&self) -> Option<String> {
        let gate = self.server.gate.get().map(|g| &**g);
        store::gate::plaintext_refusal(gate, "pop3", self.server.config.allow_plaintext_auth)
    }

    /// Answers an invalid command and counts it; past the limit the connection closes.
    pub(crate) fn bad<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        text: &str,
    ) -> Flow {
        self.bad_commands += 1;
        if self.bad_commands >= self.server.config.bad_commands_max {
            conn.err(&format!(
                "{text}; too many invalid commands, closing the connection"
            ));
            Flow::Close
        } else {
            conn.err(text);
            Flow::Continue
        }
    }

    async fn on_line<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        line: Line,
    ) -> Result<Flow, SessionError> {
        let bytes = match line {
            Line::Complete(b) => b,
            Line::TooLong => {
                let max = self.server.config.line_bytes_max;
                return Ok(self.bad(
                    conn,
                    &format!("Line too long (limit {max} bytes); command ignored"),
                ));
            }
        };
        let cmd = match parse_command(&bytes) {
            Ok(c) => c,
            Err(e) => return Ok(self.bad(conn, &e.message)),
        };
        let authed = matches!(self.state, State::Transaction(_));
        let flow = match cmd {
            Command::Capa => {
                self.cmd_capa(conn);
                Flow::Continue
            }
            Command::Noop => {
                conn.ok("");
                Flow::Continue
            }
            Command::Quit if !authed => {
                conn.ok("Tandem POP3 signing off");
                self.state = State::Done;
                Flow::Close
            }
            Command::Quit => self.cmd_quit(conn).await,
            Command::Stls | Command::User(_) | Command::Pass(_) | Command::Auth { .. }
                if authed =>
            {
                self.bad(conn, "Already logged in")
            }
            Command::Stls => self.cmd_stls(conn),
            Command::User(name) => self.cmd_user(conn, name),
            Command::Pass(pass) => self.cmd_pass(conn, pass).await,
            Command::Auth { mechanism, initial } => self.cmd_auth(conn, mechanism, initial).await?,
            Command::Apop => {
                conn.err("APOP is not supported; use USER/PASS or AUTH PLAIN over TLS");
                Flow::Continue
            }
            _ if !authed => self.bad(conn, "Log in first (USER and PASS, or AUTH PLAIN)"),
            cmd => self.transaction_cmd(conn, cmd).await?,
        };
        Ok(flow)
    }

    /// RFC 2449 CAPA: what works in the current state.
    fn cmd_capa<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn<S>) {
        conn.ok("Capability list follows");
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if matches!(self.state, State::Authorization { .. }) {
            if self.login_allowed() {
                caps.extend(["USER", "SASL PLAIN"]);
            }
            if !self.tls && self.server.tls.is_some() {
                caps.push("STLS");
            }
        }
        caps.push("IMPLEMENTATION Tandem");
        for c in caps {
            conn.out.extend_from_slice(c.as_bytes());
            conn.out.extend_from_slice(b"\r\n");
        }
        conn.out.extend_from_slice(b".\r\n");
    }

    /// RFC 2595 4: answer, then the handshake (done by `run`, which owns the socket).
    fn cmd_stls<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Flow {
        if self.tls {
            return self.bad(conn, "TLS is already active");
        }
        if self.server.tls.is_none() {
            conn.err("STLS is not available on this server");
            return Flow::Continue;
        }
        // A USER given in plaintext does not carry over into the protected session.
        self.state = State::Authorization { user: None };
        conn.ok("Begin TLS negotiation now");
        Flow::StartTls
    }
}
