//! The frontend's IMAP: it speaks the not-authenticated state itself (greeting, CAPABILITY,
//! NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE PLAIN with SASL-IR and continuation),
//! under the same TLS policy as the store's listeners (LOGINDISABLED and
//! `NO [PRIVACYREQUIRED]` under `require`). A good password routes the user to the master
//! of their slot (`route.rs`); the master's `* PREAUTH [CAPABILITY ...]` becomes the
//! client's `TAG OK [CAPABILITY ...] Logged in`, and from then on bytes are spliced both
//! ways until either side closes.
//!
//! The frontend never reports insecure logins itself: the store host does, from the proxy
//! header, because the records live in the user's slot.
//!
//! Limits: commands go through imap-proto's framer (lines of `LINE_BYTES_MAX`, literals of
//! `LITERAL_BYTES_MAX`: before login only a password travels in one);
//! `BAD_IN_A_ROW_MAX` bad commands end the connection; the client has
//! `unauth_timeout` to log in; each write waits at most `WRITE_TIMEOUT`.

use super::route::Router;
use super::{WRITE_TIMEOUT, splice, write_all};
use imap_proto::{CommandKind, Frame, Framer, Limits, ParseOptions, parse_command};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::LoginGate;
use store::directory::{AuthLimiter, Directory};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LINE_BYTES_MAX: usize = 8 * 1024;
const LITERAL_BYTES_MAX: usize = 8 * 1024;
const BAD_IN_A_ROW_MAX: u32 = 20;
/// Longest first line from the store host (`* PREAUTH [CAPABILITY ...] ...`).
const PREAUTH_LINE_BYTES_MAX: usize = 8 * 1024;
/// The words a client sees when its slot's master cannot be reached (mid-failover).
pub const MOVING: &str =
    "[UNAVAILABLE] your mailbox is moving to another server, try again in a moment";

pub struct FrontImap {
    pub router: Arc<Router>,
    pub directory: Arc<Directory>,
    pub limiter: Arc<AuthLimiter>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub gate: Arc<dyn LoginGate>,
    pub unauth_timeout: Duration,
    /// Connections per client address, counted from accept to close.
    pub per_ip: Arc<super::PerIp>,
    pub per_ip_max: u32,
}

/// The pre-login state of one connection.
struct Pre {
    peer: SocketAddr,
    tls: bool,
    client_id: String,
    framer: Framer,
    out: Vec<u8>,
    bad: u32,
}

enum Step {
    Continue,
    Close,
    StartTls,
    Proxy(Box<super::route::Backend>),
}

impl FrontImap {
    /// Serves one client connection to its end (the splice included).
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let _ = tcp.set_nodelay(true);
        let Some(_counted) = self.per_ip.admit(peer.ip(), self.per_ip_max) else {
            let mut tcp = tcp;
            if !implicit_tls {
                let bye = format!(
                    "* BYE [UNAVAILABLE] Too many connections from your address (limit {}); close some and retry\r\n",
                    self.per_ip_max
                );
                let _ = write_all(&mut tcp, bye.as_bytes()).await;
            }
            let _ = tokio::time::timeout(WRITE_TIMEOUT, tcp.shutdown()).await;
            return;
        };
        let mut pre = Pre {
            peer,
            tls: implicit_tls,
            client_id: String::new(),
            framer: framer(),
            out: Vec::new(),
            bad: 0,
        };
        if implicit_tls {
            let Some(s) = self.handshake(tcp).await else {
                return;
            };
            self.run(&mut pre, s).await;
            return;
        }
        let mut tcp = tcp;
        pre.greet(&self);
        match self.drive(&mut pre, &mut tcp).await {
            Step::StartTls => {
                let Some(s) = self.handshake(tcp).await else {
                    return;
                };
                // Nothing read before the handshake survives it (CVE-2011-0411).
                pre.tls = true;
                pre.framer = framer();
                pre.bad = 0;
                let mut s = s;
                if let Step::Proxy(b) = self.drive(&mut pre, &mut s).await {
                    let pending = pre.framer.take_unframed().unwrap_or_default();
                    splice(s, *b, pending).await;
                } else {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, s.shutdown()).await;
                }
            }
            Step::Proxy(b) => {
                let pending = pre.framer.take_unframed().unwrap_or_default();
                splice(tcp, *b, pending).await;
            }
            Step::Continue | Step::Close => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, tcp.shutdown()).await;
            }
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(&self, pre: &mut Pre, mut s: S) {
        pre.greet(self);
        match self.drive(pre, &mut s).await {
            Step::Proxy(b) => {
                let pending = pre.framer.take_unframed().unwrap_or_default();
                splice(s, *b, pending).await;
            }
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
        pre.tls || self.gate.plaintext_refusal("imap").is_none()
    }

    fn capabilities(&self, pre: &Pre) -> String {
        let mut caps = imap::CAPABILITIES_BASE.to_string();
        if !pre.tls && self.tls.is_some() {
            caps.push_str(" STARTTLS");
        }
        if self.login_allowed(pre) {
            caps.push_str(" AUTH=PLAIN");
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    /// Runs commands until the client logs in (`Proxy`), asks for TLS, or goes away.
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&self, pre: &mut Pre, s: &mut S) -> Step {
        let mut rbuf = vec![0u8; 4096];
        loop {
            while let Some(frame) = pre.framer.next() {
                let step = match frame {
                    Frame::NeedContinuation { .. } => {
                        pre.out.extend_from_slice(b"+ Ready for literal data\r\n");
                        Step::Continue
                    }
                    Frame::LineTooLong { tag } => pre.bad_reply(tag, "Line too long"),
                    Frame::LiteralTooLarge { tag, .. } => pre.bad_reply(
                        tag,
                        &format!(
                            "Literal too large before login (limit {LITERAL_BYTES_MAX} bytes)"
                        ),
                    ),
                    Frame::Command(bytes) => {
                        match parse_command(&bytes, &ParseOptions::default()) {
                            Ok(cmd) => self.command(pre, s, cmd.tag, cmd.kind).await,
                            Err(e) => pre.bad_reply(e.tag, &e.message),
                        }
                    }
                };
                match step {
                    Step::Continue => {}
                    Step::Proxy(b) => {
                        // The OK goes out before any byte of the backend's.
                        if pre.flush(s).await.is_err() {
                            return Step::Close;
                        }
                        return Step::Proxy(b);
                    }
                    other => {
                        let _ = pre.flush(s).await;
                        return other;
                    }
                }
            }
            if pre.flush(s).await.is_err() {
                return Step::Close;
            }
            match tokio::time::timeout(self.unauth_timeout, s.read(&mut rbuf)).await {
                Err(_) => {
                    pre.out
                        .extend_from_slice(b"* BYE Autologout; idle for too long\r\n");
                    let _ = pre.flush(s).await;
                    return Step::Close;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Step::Close,
                Ok(Ok(n)) => pre.framer.push(&rbuf[..n]),
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        pre: &mut Pre,
        s: &mut S,
        tag: String,
        kind: CommandKind,
    ) -> Step {
        match kind {
            CommandKind::Capability => {
                let caps = format!("* CAPABILITY {}\r\n", self.capabilities(pre));
                pre.out.extend_from_slice(caps.as_bytes());
                pre.tagged(&tag, "OK CAPABILITY completed")
            }
            CommandKind::Noop => pre.tagged(&tag, "OK NOOP completed"),
            CommandKind::Logout => {
                pre.out.extend_from_slice(b"* BYE Tandem logging out\r\n");
                pre.tagged(&tag, "OK LOGOUT completed");
                Step::Close
            }
            CommandKind::Id(fields) => {
                pre.client_id = imap::describe_client(fields.as_deref());
                pre.out
                    .extend_from_slice(b"* ID (\"name\" \"Tandem\" \"vendor\" \"Tandem\")\r\n");
                pre.tagged(&tag, "OK ID completed")
            }
            CommandKind::StartTls => {
                if pre.tls {
                    return pre.bad_reply(Some(tag), "TLS is already active");
                }
                if self.tls.is_none() {
                    return pre.tagged(&tag, "NO STARTTLS is not available here");
                }
                pre.tagged(&tag, "OK Begin TLS negotiation now");
                Step::StartTls
            }
            CommandKind::Login { user, pass } => {
                if !self.login_allowed(pre) {
                    return self.privacy_required(pre, &tag);
                }
                let Ok(user) = String::from_utf8(user) else {
                    return pre.tagged(&tag, "NO [AUTHENTICATIONFAILED] Invalid credentials");
                };
                self.login(pre, &tag, &user, &pass).await
            }
            CommandKind::Authenticate { mechanism, initial } => {
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    return pre.tagged(
                        &tag,
                        &format!("NO [CANNOT] Unsupported mechanism {mechanism}; use PLAIN"),
                    );
                }
                if !self.login_allowed(pre) {
                    return self.privacy_required(pre, &tag);
                }
                let response = match initial {
                    Some(r) => r,
                    None => {
                        pre.out.extend_from_slice(b"+ \r\n");
                        match self.sasl_line(pre, s).await {
                            Ok(Some(l)) => l,
                            Ok(None) => {
                                return pre
                                    .bad_reply(Some(tag), "Authentication response line too long");
                            }
                            Err(()) => return Step::Close,
                        }
                    }
                };
                match decode_plain(&response) {
                    Ok((user, pass)) => self.login(pre, &tag, &user, &pass).await,
                    Err(text) => pre.tagged(&tag, text),
                }
            }
            _ => pre.bad_reply(Some(tag), "Log in first"),
        }
    }

    fn privacy_required(&self, pre: &mut Pre, tag: &str) -> Step {
        let hint = store::gate::hint_suffix(self.gate.plaintext_refusal("imap"));
        pre.tagged(
            tag,
            &format!("NO [PRIVACYREQUIRED] Use STARTTLS (or port 993) before logging in{hint}"),
        )
    }

    /// One SASL response line; `Ok(None)` if too long, `Err` if the client went away.
    async fn sasl_line<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        pre: &mut Pre,
        s: &mut S,
    ) -> Result<Option<Vec<u8>>, ()> {
        pre.flush(s).await.map_err(|_| ())?;
        let mut rbuf = vec![0u8; 4096];
        loop {
            match pre.framer.take_line() {
                Some(Ok(line)) => {
                    let l = line.strip_suffix(b"\n").unwrap_or(&line);
                    let l = l.strip_suffix(b"\r").unwrap_or(l);
                    return Ok(Some(l.to_vec()));
                }
                Some(Err(_)) => return Ok(None),
                None => {}
            }
            match tokio::time::timeout(self.unauth_timeout, s.read(&mut rbuf)).await {
                Ok(Ok(n)) if n > 0 => pre.framer.push(&rbuf[..n]),
                _ => return Err(()),
            }
        }
    }

    async fn login(&self, pre: &mut Pre, tag: &str, user: &str, pass: &[u8]) -> Step {
        let checked = ::imap::check_password(
            self.directory.clone(),
            self.limiter.clone(),
            user,
            pass,
            pre.peer.ip(),
        )
        .await;
        let account = match checked {
            Ok(a) => a,
            Err(text) => return pre.tagged(tag, &format!("NO {text}")),
        };
        let header = super::header::Header {
            protocol: super::header::Protocol::Imap,
            user: Some(account.address.clone()),
            client_ip: pre.peer.ip(),
            client_tls: pre.tls,
            client_id: pre.client_id.clone(),
        };
        let (mut backend, master) = match self.router.open(&account.slot, &header).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "frontend imap: {} ({}): {}",
                    account.address, account.slot, e.0
                );
                return pre.tagged(tag, &format!("NO {MOVING}"));
            }
        };
        let first = super::header::read_line(&mut backend, PREAUTH_LINE_BYTES_MAX).await;
        let first = first
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .trim_end()
            .to_string();
        if let Some(rest) = first.strip_prefix("* PREAUTH ") {
            let caps = rest
                .strip_prefix("[CAPABILITY ")
                .and_then(|r| r.split_once(']'))
                .map(|(c, _)| c.to_string());
            let text = match caps {
                Some(c) => format!("OK [CAPABILITY {c}] Logged in"),
                None => "OK Logged in".to_string(),
            };
            pre.tagged(tag, &text);
            return Step::Proxy(Box::new(backend));
        }
        if let Some(why) = first.strip_prefix("* BYE ") {
            // The master's own refusal (limit, unknown account): the client may retry.
            return pre.tagged(tag, &format!("NO {why}"));
        }
        eprintln!(
            "frontend imap: {master} answered {} with {first:?}",
            account.address
        );
        pre.tagged(tag, &format!("NO {MOVING}"))
    }
}

fn framer() -> Framer {
    Framer::new(Limits {
        line_bytes_max: LINE_BYTES_MAX,
        literal_bytes_max: LITERAL_BYTES_MAX,
        command_bytes_max: LINE_BYTES_MAX * 2 + LITERAL_BYTES_MAX * 2,
    })
}

impl Pre {
    fn greet(&mut self, f: &FrontImap) {
        let g = format!(
            "* OK [CAPABILITY {}] Tandem ready\r\n",
            f.capabilities(self)
        );
        self.out.extend_from_slice(g.as_bytes());
    }

    fn tagged(&mut self, tag: &str, text: &str) -> Step {
        self.out
            .extend_from_slice(format!("{tag} {text}\r\n").as_bytes());
        if text.starts_with("BAD") {
            self.bad += 1;
        } else {
            self.bad = 0;
        }
        Step::Continue
    }

    fn bad_reply(&mut self, tag: Option<String>, text: &str) -> Step {
        let tag = tag.unwrap_or_else(|| "*".into());
        self.tagged(&tag, &format!("BAD {text}"));
        if self.bad >= BAD_IN_A_ROW_MAX {
            self.out
                .extend_from_slice(b"* BYE Too many invalid commands\r\n");
            return Step::Close;
        }
        Step::Continue
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, s: &mut S) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.out);
        write_all(s, &data).await
    }
}

/// RFC 4616 PLAIN: the user and password, or the tagged answer (as the store hosts word it).
fn decode_plain(response: &[u8]) -> Result<(String, Vec<u8>), &'static str> {
    store::directory::sasl_plain(response).map_err(::imap::plain_error_reply)
}
