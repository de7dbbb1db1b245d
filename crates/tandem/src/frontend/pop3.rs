//! The frontend's POP3: the AUTHORIZATION state itself (CAPA, NOOP, QUIT, STLS, USER/PASS,
//! AUTH PLAIN), under the same TLS policy as the store's listeners. A good password routes
//! the user to the master of their slot; the master opens the maildrop and its first line
//! (the `+OK` of a login) is relayed to the client, then bytes are spliced both ways until
//! either side closes. A `-ERR` from the master is relayed and the client may try again.
//!
//! Limits: command lines of `LINE_BYTES_MAX` (longer: `-ERR`), SASL lines of
//! `SASL_LINE_BYTES_MAX`, `BAD_MAX` invalid commands and `AUTH_FAILURES_MAX` failed
//! logins per connection, `idle_timeout` per read, `WRITE_TIMEOUT` per write.

use super::route::{Backend, Router};
use super::{WRITE_TIMEOUT, splice, write_all};
use pop3::command::{Command, Line, LineReader, parse_command};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::LoginGate;
use store::directory::{AuthLimiter, Directory};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LINE_BYTES_MAX: usize = 1024;
const SASL_LINE_BYTES_MAX: usize = 4096;
const BAD_MAX: u32 = 20;
const AUTH_FAILURES_MAX: u32 = 5;

pub struct FrontPop3 {
    pub router: Arc<Router>,
    pub directory: Arc<Directory>,
    pub limiter: Arc<AuthLimiter>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub gate: Arc<dyn LoginGate>,
    pub hostname: String,
    pub idle_timeout: Duration,
    /// Named in the refusal of a login without TLS.
    pub implicit_tls_port: u16,
}

struct Pre {
    peer: SocketAddr,
    tls: bool,
    lines: LineReader,
    out: Vec<u8>,
    user: Option<String>,
    bad: u32,
    failures: u32,
}

enum Step {
    Continue,
    Close,
    StartTls,
    Proxy(Box<Backend>),
}

impl FrontPop3 {
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let _ = tcp.set_nodelay(true);
        let mut pre = Pre {
            peer,
            tls: implicit_tls,
            lines: LineReader::new(),
            out: Vec::new(),
            user: None,
            bad: 0,
            failures: 0,
        };
        let greeting = format!("+OK {} Tandem POP3 ready\r\n", self.hostname);
        if implicit_tls {
            let Some(mut s) = self.handshake(tcp).await else {
                return;
            };
            pre.out.extend_from_slice(greeting.as_bytes());
            self.finish(&mut pre, &mut s).await;
            return;
        }
        let mut tcp = tcp;
        pre.out.extend_from_slice(greeting.as_bytes());
        match self.drive(&mut pre, &mut tcp).await {
            Step::StartTls => {
                let Some(mut s) = self.handshake(tcp).await else {
                    return;
                };
                // Bytes pipelined after STLS arrived unprotected: dropped (RFC 2595 4).
                pre.lines.clear();
                pre.tls = true;
                pre.user = None;
                self.finish(&mut pre, &mut s).await;
            }
            Step::Proxy(b) => splice(tcp, *b, pre.pending()).await,
            Step::Continue | Step::Close => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, tcp.shutdown()).await;
            }
        }
    }

    async fn finish<S: AsyncRead + AsyncWrite + Unpin + Send>(&self, pre: &mut Pre, s: &mut S) {
        match self.drive(pre, s).await {
            Step::Proxy(b) => splice(s, *b, pre.pending()).await,
            _ => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, s.shutdown()).await;
            }
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        super::tls_accept(self.tls.as_ref()?, tcp).await
    }

    fn login_allowed(&self, pre: &Pre) -> bool {
        pre.tls || self.gate.plaintext_refusal("pop3").is_none()
    }

    fn tls_required(&self) -> String {
        let hint = store::gate::hint_suffix(self.gate.plaintext_refusal("pop3"));
        format!(
            "-ERR [AUTH] Authentication requires TLS; use STLS or port {}{hint}",
            self.implicit_tls_port
        )
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&self, pre: &mut Pre, s: &mut S) -> Step {
        let mut rbuf = vec![0u8; 4096];
        loop {
            while let Some(line) = pre.lines.next_line(LINE_BYTES_MAX) {
                let step = match line {
                    Line::TooLong => pre.bad("-ERR Line too long; command ignored"),
                    Line::Complete(bytes) => match parse_command(&bytes) {
                        Ok(cmd) => self.command(pre, s, cmd).await,
                        Err(e) => pre.bad(&format!("-ERR {}", e.message)),
                    },
                };
                match step {
                    Step::Continue => {}
                    other => {
                        if pre.flush(s).await.is_err() {
                            return Step::Close;
                        }
                        return other;
                    }
                }
            }
            if pre.flush(s).await.is_err() {
                return Step::Close;
            }
            match tokio::time::timeout(self.idle_timeout, s.read(&mut rbuf)).await {
                Err(_) => {
                    pre.line("-ERR Disconnected for inactivity");
                    let _ = pre.flush(s).await;
                    return Step::Close;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Step::Close,
                Ok(Ok(n)) => pre.lines.push(&rbuf[..n]),
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        pre: &mut Pre,
        s: &mut S,
        cmd: Command,
    ) -> Step {
        match cmd {
            Command::Capa => {
                pre.line("+OK Capability list follows");
                let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
                if self.login_allowed(pre) {
                    caps.extend(["USER", "SASL PLAIN"]);
                }
                if !pre.tls && self.tls.is_some() {
                    caps.push("STLS");
                }
                caps.push("IMPLEMENTATION Tandem");
                for c in caps {
                    pre.line(c);
                }
                pre.line(".");
                Step::Continue
            }
            Command::Noop => {
                pre.line("+OK");
                Step::Continue
            }
            Command::Quit => {
                pre.line("+OK Tandem POP3 signing off");
                Step::Close
            }
            Command::Stls => {
                if pre.tls {
                    return pre.bad("-ERR TLS is already active");
                }
                if self.tls.is_none() {
                    pre.line("-ERR STLS is not available on this server");
                    return Step::Continue;
                }
                pre.line("+OK Begin TLS negotiation now");
                Step::StartTls
            }
            Command::User(name) => {
                if !self.login_allowed(pre) {
                    pre.line(&self.tls_required());
                    return Step::Continue;
                }
                pre.user = Some(name);
                pre.line("+OK Send your password");
                Step::Continue
            }
            Command::Pass(pass) => {
                if !self.login_allowed(pre) {
                    pre.line(&self.tls_required());
                    return Step::Continue;
                }
                let Some(user) = pre.user.take() else {
                    return pre.bad("-ERR Send USER first");
                };
                self.login(pre, &user, &pass).await
            }
            Command::Auth { mechanism, initial } => {
                let Some(mechanism) = mechanism else {
                    pre.line("+OK Mechanisms follow");
                    if self.login_allowed(pre) {
                        pre.line("PLAIN");
                    }
                    pre.line(".");
                    return Step::Continue;
                };
                if mechanism != "PLAIN" {
                    pre.line(&format!(
                        "-ERR Unsupported mechanism {mechanism}; use PLAIN"
                    ));
                    return Step::Continue;
                }
                if !self.login_allowed(pre) {
                    pre.line(&self.tls_required());
                    return Step::Continue;
                }
                pre.user = None;
                let response = match initial {
                    Some(r) => r,
                    None => {
                        pre.line("+ ");
                        match self.sasl_line(pre, s).await {
                            Some(Line::Complete(l)) => l,
                            Some(Line::TooLong) => {
                                pre.line("-ERR Authentication response too long");
                                return Step::Continue;
                            }
                            None => return Step::Close,
                        }
                    }
                };
                match decode_plain(&response) {
                    Ok((user, pass)) => self.login(pre, &user, &pass).await,
                    Err(text) => {
                        pre.line(&format!("-ERR {text}"));
                        Step::Continue
                    }
                }
            }
            Command::Apop => {
                pre.line("-ERR APOP is not supported; use USER/PASS or AUTH PLAIN over TLS");
                Step::Continue
            }
            _ => pre.bad("-ERR Log in first (USER and PASS, or AUTH PLAIN)"),
        }
    }

    async fn sasl_line<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        pre: &mut Pre,
        s: &mut S,
    ) -> Option<Line> {
        pre.flush(s).await.ok()?;
        let mut rbuf = vec![0u8; 4096];
        loop {
            if let Some(l) = pre.lines.next_line(SASL_LINE_BYTES_MAX) {
                return Some(l);
            }
            match tokio::time::timeout(self.idle_timeout, s.read(&mut rbuf)).await {
                Ok(Ok(n)) if n > 0 => pre.lines.push(&rbuf[..n]),
                _ => return None,
            }
        }
    }

    async fn login(&self, pre: &mut Pre, user: &str, pass: &[u8]) -> Step {
        let checked = ::pop3::check_password(
            self.directory.clone(),
            self.limiter.clone(),
            user,
            pass,
            pre.peer.ip(),
        )
        .await;
        let account = match checked {
            Ok(a) => a,
            Err(::pop3::Refusal::Unavailable(text)) => {
                pre.line(&format!("-ERR {text}"));
                return Step::Continue;
            }
            Err(::pop3::Refusal::Failed(text)) => {
                pre.failures += 1;
                if pre.failures >= AUTH_FAILURES_MAX {
                    pre.line(&format!(
                        "-ERR {text}; too many failed logins on this connection, closing it"
                    ));
                    return Step::Close;
                }
                pre.line(&format!("-ERR {text}"));
                return Step::Continue;
            }
        };
        let header = super::header::Header {
            protocol: super::header::Protocol::Pop3,
            user: Some(account.address.clone()),
            client_ip: pre.peer.ip(),
            client_tls: pre.tls,
            client_id: String::new(),
        };
        let moving =
            "-ERR [IN-USE] your mailbox is moving to another server, try again in a moment";
        let (mut backend, master) = match self.router.open(&account.slot, &header).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "frontend pop3: {} ({}): {}",
                    account.address, account.slot, e.0
                );
                pre.line(moving);
                return Step::Continue;
            }
        };
        let first = super::header::read_line(&mut backend, 1024).await;
        let first = first
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .trim_end()
            .to_string();
        if first.starts_with("+OK") {
            pre.line(&first);
            return Step::Proxy(Box::new(backend));
        }
        if first.starts_with("-ERR") {
            pre.line(&first);
            return Step::Continue;
        }
        eprintln!(
            "frontend pop3: {master} answered {} with {first:?}",
            account.address
        );
        pre.line(moving);
        Step::Continue
    }
}

impl Pre {
    fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn bad(&mut self, text: &str) -> Step {
        self.bad += 1;
        if self.bad >= BAD_MAX {
            self.line(&format!(
                "{text}; too many invalid commands, closing the connection"
            ));
            return Step::Close;
        }
        self.line(text);
        Step::Continue
    }

    /// Bytes the client pipelined after its login: they belong to the master's session.
    fn pending(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(l) = self.lines.next_line(usize::MAX / 2) {
            if let Line::Complete(b) = l {
                out.extend_from_slice(&b);
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, s: &mut S) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        write_all(s, &data).await
    }
}

/// RFC 4616 PLAIN; the `-ERR` text on failure (as the store hosts word it).
fn decode_plain(response: &[u8]) -> Result<(String, Vec<u8>), &'static str> {
    store::directory::sasl_plain(response).map_err(::pop3::plain_error_text)
}
