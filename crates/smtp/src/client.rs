//! The SMTP client side used by the outbound queue: one transaction over an established
//! connection, with opportunistic STARTTLS (RFC 3207) and per-recipient results.
//!
//! Not pipelined (RFC 2920 is an optimisation; one round trip per recipient is cheap next to
//! the connection set-up, and sequential replies are unambiguous). Every reply read is
//! bounded: [`REPLY_LINE_BYTES_MAX`] per line, [`REPLY_LINES_MAX`] lines per reply, and the
//! configured timeouts (RFC 5321 §4.5.3.2 suggests 5 minutes per command and 10 minutes for
//! the reply to the final dot; those are the defaults).
//!
//! TLS is opportunistic: used whenever the peer offers STARTTLS, certificate not verified
//! (RFC 7435: unauthenticated encryption beats plaintext; MX certificates are commonly
//! self-signed or name the wrong host). If the handshake fails the caller may retry the same
//! host without TLS ([`ConnectionFailure::tls_failed`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use crate::data::dot_stuff;

/// Longest reply line we read (RFC 5321 says 512; real servers send a little more).
pub const REPLY_LINE_BYTES_MAX: usize = 4096;
/// Most lines in one reply (EHLO replies have ~15).
pub const REPLY_LINES_MAX: usize = 100;

#[derive(Clone)]
pub struct ClientConfig {
    /// Our name in EHLO.
    pub helo: String,
    /// Wait for each reply (and for each write).
    pub command_timeout: Duration,
    /// Wait for the reply to the final dot.
    pub data_timeout: Duration,
    /// Offer TLS when the peer supports STARTTLS; `None` never uses TLS.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("helo", &self.helo)
            .field("command_timeout", &self.command_timeout)
            .field("data_timeout", &self.data_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One message for one destination.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Empty for the null sender (bounces).
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    /// CRLF line endings, not dot-stuffed.
    pub message: &'a [u8],
}

/// What happened to one recipient. The text is the remote reply (`550 5.1.1 ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptStatus {
    Delivered(String),
    TempFail(String),
    PermFail(String),
}

/// A transaction that ran to completion (possibly with every recipient refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// One per recipient, in order.
    pub rcpts: Vec<RcptStatus>,
    /// The session was encrypted.
    pub tls: bool,
}

/// The connection failed before recipients could be judged: every recipient is deferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFailure {
    pub reason: String,
    /// The TLS handshake failed; a plaintext retry may succeed.
    pub tls_failed: bool,
}

impl ConnectionFailure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            tls_failed: false,
        }
    }
}

/// A parsed reply: code and text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        let last = self.lines.last().map(String::as_str).unwrap_or("");
        format!("{} {}", self.code, last).trim_end().to_string()
    }
    fn has_ext(&self, ext: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(ext))
        })
    }
    fn ext_arg(&self, ext: &str) -> Option<String> {
        self.lines.iter().skip(1).find_map(|l| {
            let mut w = l.split_whitespace();
            w.next()
                .filter(|x| x.eq_ignore_ascii_case(ext))
                .and_then(|_| w.next().map(str::to_string))
        })
    }
}

struct Conn<S> {
    io: BufReader<S>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn new(s: S, timeout: Duration) -> Self {
        Self {
            io: BufReader::new(s),
            timeout,
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), ConnectionFailure> {
        let w = async {
            self.io.write_all(line.as_bytes()).await?;
            self.io.write_all(b"\r\n").await?;
            self.io.flush().await
        };
        match timeout(self.timeout, w).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnectionFailure::new(format!("write failed: {e}"))),
            Err(_) => Err(ConnectionFailure::new("timed out writing to the server")),
        }
    }

    async fn reply_within(&mut self, wait: Duration) -> Result<Reply, ConnectionFailure> {
        match timeout(wait, read_reply(&mut self.io)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ConnectionFailure::new(format!("bad reply: {e}"))),
            Err(_) => Err(ConnectionFailure::new(format!(
                "no reply within {} s",
                wait.as_secs()
            ))),
        }
    }

    async fn reply(&mut self) -> Result<Reply, ConnectionFailure> {
        self.reply_within(self.timeout).await
    }

    async fn command(&mut self, line: &str) -> Result<Reply, ConnectionFailure> {
        self.send(line).await?;
        self.reply().await
    }

    async fn ehlo(&mut self, helo: &str) -> Result<Reply, ConnectionFailure> {
        let r = self.command(&format!("EHLO {helo}")).await?;
        if r.code == 250 {
            return Ok(r);
        }
        // RFC 5321 §3.2: fall back to HELO for servers without ESMTP.
        let r2 = self.command(&format!("HELO {helo}")).await?;
        if r2.code == 250 {
            Ok(Reply {
                code: 250,
                lines: vec![String::new()],
            })
        } else {
            Err(ConnectionFailure::new(format!(
                "server refused EHLO and HELO: {}",
                r2.text()
            )))
        }
    }

    async fn quit(&mut self) {
        // Best effort: the transaction's outcome is already known.
        if self.send("QUIT").await.is_ok() {
            let _ = timeout(Duration::from_secs(5), read_reply(&mut self.io)).await;
        }
        let _ = timeout(Duration::from_secs(5), self.io.shutdown()).await;
    }
}

async fn read_reply<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> io::Result<Reply> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut *io).take(REPLY_LINE_BYTES_MAX as u64);
        let n = limited.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let digits = text.get(..3).and_then(|d| d.parse::<u16>().ok());
        let sep = text.as_bytes().get(3).copied();
        let Some(c) = digits.filter(|c| (200..600).contains(c)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed reply line {text:?}"),
            ));
        };
        if code != 0 && c != code {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply code changed inside a multi-line reply",
            ));
        }
        code = c;
        lines.push(text.get(4..).unwrap_or("").to_string());
        if lines.len() > REPLY_LINES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply has too many lines",
            ));
        }
        match sep {
            Some(b'-') => continue,
            Some(b' ') | None => return Ok(Reply { code, lines }),
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply line {text:?}"),
                ));
            }
        }
    }
}

/// Runs one transaction on `stream` (already connected to `server_name`).
pub async fn send<S>(
    stream: S,
    server_name: &str,
    cfg: &ClientConfig,
    msg: Outgoing<'_>,
    use_tls: bool,
) -> Result<Attempt, ConnectionFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn = Conn::new(stream, cfg.command_timeout);
    let greeting = conn.reply().await?;
    if greeting.code != 220 {
        return Err(ConnectionFailure::new(format!(
            "server greeted with {}",
            greeting.text()
        )));
    }
    let ehlo = conn.ehlo(&cfg.helo).await?;
    if let (true, Some(connector), true) = (use_tls, &cfg.tls, ehlo.has_ext("STARTTLS")) {
        let r = conn.command("STARTTLS").await?;
        if r.code != 220 {
            // The offer was withdrawn: carry on in plaintext on this connection.
            return transact(&mut conn, cfg, msg, &ehlo, false).await;
        }
        // SNI: the MX host name; a name rustls refuses (odd characters) gets no useful SNI
        // anyway, and the certificate is not verified.
        let name = ServerName::try_from(server_name.trim_end_matches('.').to_string())
            .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let inner = conn.io.into_inner();
        let tls = match timeout(cfg.command_timeout, connector.connect(name, inner)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ConnectionFailure {
                    reason: format!("TLS handshake failed: {e}"),
                    tls_failed: true,
                });
            }
            Err(_) => {
                return Err(ConnectionFailure {
                    reason: "TLS handshake timed out".into(),
                    tls_failed: true,
                });
            }
        };
        let mut conn = Conn::new(tls, cfg.command_timeout);
        let ehlo = conn.ehlo(&cfg.helo).await?;
        return transact(&mut conn, cfg, msg, &ehlo, true).await;
    }
    transact(&mut conn, cfg, msg, &ehlo, false).await
}

fn classify(r: &Reply) -> RcptStatus {
    match r.code {
        200..=399 => RcptStatus::Delivered(r.text()),
        400..=499 => RcptStatus::TempFail(r.text()),
        _ => RcptStatus::PermFail(r.text()),
    }
}

async fn transact<S>(
    conn: &mut Conn<S>,
    cfg: &ClientConfig,
    msg: Outgoing<'_>,
    ehlo: &Reply,
    tls: bool,
) -> Result<Attempt, ConnectionFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let n = msg.rcpt_to.len();
    let all = |s: RcptStatus| Attempt {
        rcpts: vec![s; n],
        tls,
    };
    let needs_utf8 = !msg.mail_from.is_ascii() || msg.rcpt_to.iter().any(|r| !r.is_ascii());
    if needs_utf8 && !ehlo.has_ext("SMTPUTF8") {
        conn.quit().await;
        return Ok(all(RcptStatus::PermFail(
            "553 5.6.7 the receiving server does not support internationalised addresses".into(),
        )));
    }
    if let Some(max) = ehlo.ext_arg("SIZE").and_then(|s| s.parse::<u64>().ok())
        && max > 0
        && msg.message.len() as u64 > max
    {
        conn.quit().await;
        return Ok(all(RcptStatus::PermFail(format!(
            "552 5.3.4 message is {} bytes, the receiving server takes at most {max}",
            msg.message.len()
        ))));
    }
    let mut mail = format!("MAIL FROM:<{}>", msg.mail_from);
    if ehlo.has_ext("SIZE") {
        mail.push_str(&format!(" SIZE={}", msg.message.len()));
    }
    if ehlo.has_ext("8BITMIME") && !msg.message.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if needs_utf8 {
        mail.push_str(" SMTPUTF8");
    }
    let r = conn.command(&mail).await?;
    if r.code != 250 {
        let s = classify(&r);
        conn.quit().await;
        return Ok(all(s));
    }
    let mut rcpts: Vec<Option<RcptStatus>> = Vec::with_capacity(n);
    for addr in msg.rcpt_to {
        let r = conn.command(&format!("RCPT TO:<{addr}>")).await?;
        rcpts.push(match r.code {
            250 | 251 => None,
            _ => Some(classify(&r)),
        });
    }
    if rcpts.iter().all(Option::is_some) {
        conn.quit().await;
        return Ok(Attempt {
            rcpts: rcpts.into_iter().flatten().collect(),
            tls,
        });
    }
    let r = conn.command("DATA").await?;
    if r.code != 354 {
        let s = classify(&r);
        conn.quit().await;
        return Ok(Attempt {
            rcpts: rcpts.into_iter().map(|x| x.unwrap_or(s.clone())).collect(),
            tls,
        });
    }
    let wire = dot_stuff(msg.message);
    let write = async {
        conn.io.write_all(&wire).await?;
        conn.io.flush().await
    };
    // The body may be large: allow the data timeout for writing it too.
    match timeout(cfg.data_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ConnectionFailure::new(format!("write failed: {e}"))),
        Err(_) => return Err(ConnectionFailure::new("timed out sending the message")),
    }
    let r = conn.reply_within(cfg.data_timeout).await?;
    let s = classify(&r);
    conn.quit().await;
    Ok(Attempt {
        rcpts: rcpts.into_iter().map(|x| x.unwrap_or(s.clone())).collect(),
        tls,
    })
}

/// A TLS connector for opportunistic STARTTLS: encrypts, does not authenticate the peer
/// (see the module comment). Signatures in the handshake are still checked, so the session
/// keys belong to whoever holds the presented certificate's key. `None` only if the crypto
/// provider cannot build a configuration, in which case delivery runs without TLS.
pub fn opportunistic_tls() -> Option<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
