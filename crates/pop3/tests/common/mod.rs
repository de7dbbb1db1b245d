//! A real POP3 server on loopback sockets over a temporary slot (plain and implicit-TLS
//! listeners, a self-signed certificate), and a small line-based POP3 client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pop3::{Pop3Config, Pop3Server};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use store::directory::{Account, AuthLimiter, Directory, hash_password};
use store::{
    EventLog, FlagMode, Flags, InternalDate, MailboxHeader, MessageRecord, Op, OpResult, Slot,
    SystemClock, Uid,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const USER: &str = "alice@example.com";
pub const PASS: &str = "secret pass";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: PathBuf,
    /// Plain listener (STLS available).
    pub addr: SocketAddr,
    /// Implicit-TLS listener.
    pub tls_addr: SocketAddr,
    pub slot: Slot,
    connector: tokio_rustls::TlsConnector,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub async fn start() -> Env {
    start_with(|_| {}).await
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost`: the server's acceptor and a client
/// connector that trusts exactly that certificate.
fn tls_pair() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

/// Defaults for tests: plaintext auth allowed (tests that need TLS turn it off).
pub async fn start_with(tweak: impl FnOnce(&mut Pop3Config)) -> Env {
    let dir = std::env::temp_dir().join(format!(
        "tandem-pop3-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let clock = Arc::new(SystemClock);
    let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
    let slot =
        tokio::task::block_in_place(|| Slot::create(&dir.join("s1"), "s1", "test", events, clock))
            .unwrap();
    let directory = Arc::new(Directory::new(&dir));
    let hash = hash_password(PASS.as_bytes()).unwrap();
    directory
        .update(|a| {
            a.accounts.push(Account {
                address: USER.into(),
                password: hash,
                slot: "s1".into(),
            });
            Ok(())
        })
        .unwrap();
    let mut config = Pop3Config {
        hostname: "test".into(),
        allow_plaintext_auth: true,
        ..Pop3Config::default()
    };
    tweak(&mut config);
    let mut slots = HashMap::new();
    slots.insert("s1".to_string(), slot.clone());
    let (acceptor, connector) = tls_pair();
    let server = Pop3Server::new(
        config,
        directory,
        Arc::new(AuthLimiter::default()),
        slots,
        Some(acceptor),
    );
    let mut addrs = Vec::new();
    for implicit_tls in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let server = server.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = listener.accept().await {
                tokio::spawn(server.clone().serve(s, peer, implicit_tls));
            }
        });
    }
    Env {
        dir,
        addr: addrs[0],
        tls_addr: addrs[1],
        slot,
        connector,
    }
}

impl Env {
    /// Delivers a message to the user's INBOX the way LMTP does; returns its UID.
    pub fn deliver(&self, msg: &[u8]) -> Uid {
        tokio::task::block_in_place(|| {
            self.slot
                .execute(Op::EnsureUser { user: USER.into() })
                .unwrap();
            let blob = self.slot.put_blob(msg).unwrap();
            match self
                .slot
                .execute(Op::Append {
                    user: USER.into(),
                    mailbox: "INBOX".into(),
                    blob,
                    flags: Flags::default(),
                    internaldate: InternalDate::default(),
                })
                .unwrap()
            {
                OpResult::Appended { uid, .. } => uid,
                other => panic!("unexpected {other:?}"),
            }
        })
    }

    pub fn inbox(&self) -> MailboxHeader {
        self.slot
            .view()
            .mailbox_by_name(USER, "INBOX")
            .unwrap()
            .unwrap()
    }

    /// The INBOX's records now, in UID order.
    pub fn records(&self) -> Vec<MessageRecord> {
        let view = self.slot.view();
        view.messages(&self.inbox())
            .unwrap()
            .into_iter()
            .map(|e| e.unwrap())
            .collect()
    }

    /// What an IMAP client's `UID STORE +FLAGS (\Deleted)` + `UID EXPUNGE` does.
    pub fn imap_expunge(&self, uid: Uid) {
        let id = self.inbox().id;
        tokio::task::block_in_place(|| {
            self.slot
                .execute(Op::Store {
                    mailbox: id,
                    uids: vec![uid],
                    mode: FlagMode::Add,
                    flags: Flags::new(store::SystemFlags::DELETED, []),
                    unchanged_since: None,
                })
                .unwrap();
            self.slot
                .execute(Op::Expunge {
                    mailbox: id,
                    uids: Some(vec![uid]),
                })
                .unwrap();
        });
    }

    pub async fn connect(&self) -> Client<TcpStream> {
        Client::over(TcpStream::connect(self.addr).await.unwrap()).await
    }

    /// Connected to the plain listener and logged in with USER/PASS.
    pub async fn login(&self) -> Client<TcpStream> {
        let mut c = self.connect().await;
        c.user_pass(USER, PASS).await;
        c
    }

    pub async fn connect_tls(&self) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.tls_addr).await.unwrap();
        let tls = self.tls_connect(tcp).await;
        Client::over(tls).await
    }

    pub async fn tls_connect(&self, tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
        let name = ServerName::try_from("localhost").unwrap();
        self.connector.connect(name, tcp).await.unwrap()
    }

    /// STLS on a plain connection; returns the same session over TLS.
    pub async fn stls(
        &self,
        mut c: Client<TcpStream>,
    ) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        let r = c.cmd("STLS").await;
        assert!(r.starts_with("+OK"), "{r}");
        let tcp = c.r.into_inner();
        Client {
            r: BufReader::new(self.tls_connect(tcp).await),
            greeting: c.greeting,
        }
    }
}

pub struct Client<S> {
    pub r: BufReader<S>,
    pub greeting: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn over(stream: S) -> Client<S> {
        let mut c = Client {
            r: BufReader::new(stream),
            greeting: String::new(),
        };
        c.greeting = c.line().await.expect("greeting");
        c
    }

    /// One line without CRLF; `None` at EOF.
    pub async fn line(&mut self) -> Option<String> {
        self.raw_line()
            .await
            .map(|l| String::from_utf8_lossy(&l).into_owned())
    }

    pub async fn raw_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(READ_TIMEOUT, self.r.read_until(b'\n', &mut line))
            .await
            .expect("server answered in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
        line.truncate(line.len() - 2);
        Some(line)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
        self.r.get_mut().flush().await.unwrap();
    }

    /// Sends one command and returns the status line.
    pub async fn cmd(&mut self, text: &str) -> String {
        self.send(format!("{text}\r\n").as_bytes()).await;
        self.line().await.expect("connection open")
    }

    /// The body of a multi-line answer, dot-unstuffed, as the raw lines joined by CRLF.
    pub async fn multiline(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self
                .raw_line()
                .await
                .expect("multi-line body ends with a dot");
            if line == b"." {
                return out;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// A multi-line command: (status, body lines).
    pub async fn cmd_multi(&mut self, text: &str) -> (String, Vec<String>) {
        let status = self.cmd(text).await;
        if !status.starts_with("+OK") {
            return (status, Vec::new());
        }
        let body = self.multiline().await;
        let text = String::from_utf8_lossy(&body).into_owned();
        (status, text.lines().map(str::to_string).collect())
    }

    pub async fn user_pass(&mut self, user: &str, pass: &str) {
        let r = self.cmd(&format!("USER {user}")).await;
        assert!(r.starts_with("+OK"), "{r}");
        let r = self.cmd(&format!("PASS {pass}")).await;
        assert!(r.starts_with("+OK"), "{r}");
    }

    /// Expects the server to close the connection now.
    pub async fn expect_eof(&mut self) {
        assert_eq!(self.line().await, None, "expected the server to close");
    }
}

pub const SIMPLE: &[u8] = b"From: Bob <bob@example.org>\r\nTo: Alice <alice@example.com>\r\nSubject: Lunch plans\r\nMessage-ID: <lunch@example.org>\r\n\r\nShall we meet at noon?\r\n";

/// A body with lines that need byte-stuffing, and a lone dot that must not end it.
pub const DOTTY: &[u8] = b"From: Carol <carol@example.net>\r\nSubject: Dots\r\n\r\nline one\r\n.\r\n..two dots\r\n.leading\r\nlast\r\n";
