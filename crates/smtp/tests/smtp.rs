//! SMTP MX and submission sessions end to end over tokio I/O (duplex streams, TLS included),
//! against an in-memory backend, with a static DNS table for SPF/DKIM/DMARC. Also the
//! outbound client against our own MX session, with and without STARTTLS.

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use common::Client;
use smtp::client::{self, ClientConfig, Outgoing, RcptStatus};
use smtp::dkim::{DkimKey, DkimKeys, GeneratedKey};
use smtp::resolver::Resolver;
use smtp::{
    AcceptOutcome, AuthVerdict, Envelope, Folder, MailBackend, RcptVerdict, Service, SmtpConfig,
    SmtpServer,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

const HOST: &str = "mx.tandem.test";

#[derive(Default)]
struct FakeBackend {
    /// Local accounts (the only local domain is tandem.test).
    users: Vec<String>,
    accepted: Mutex<Vec<(Envelope, Vec<u8>, Folder)>>,
}

impl FakeBackend {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            users: vec!["alice@tandem.test".into(), "bob@tandem.test".into()],
            ..Self::default()
        })
    }
    fn accepted(&self) -> Vec<(Envelope, Vec<u8>, Folder)> {
        self.accepted.lock().unwrap().clone()
    }
}

impl MailBackend for FakeBackend {
    async fn check_recipient(&self, address: &str, user: Option<&str>) -> RcptVerdict {
        let a = address.to_lowercase();
        if a.ends_with("@tandem.test") {
            if self.users.contains(&a) {
                RcptVerdict::Accept
            } else {
                RcptVerdict::UnknownUser
            }
        } else if user.is_some() {
            RcptVerdict::Accept
        } else {
            RcptVerdict::RelayDenied
        }
    }

    async fn authenticate(&self, username: String, password: Vec<u8>, _: IpAddr) -> AuthVerdict {
        if self.users.contains(&username) && password == b"secret" {
            AuthVerdict::Ok { user: username }
        } else {
            AuthVerdict::Failed
        }
    }

    fn may_send_as(&self, user: &str, address: &str) -> bool {
        user.eq_ignore_ascii_case(address)
    }

    async fn accept(
        &self,
        envelope: &Envelope,
        message: Arc<[u8]>,
        folder: Folder,
    ) -> AcceptOutcome {
        self.accepted
            .lock()
            .unwrap()
            .push((envelope.clone(), message.to_vec(), folder));
        AcceptOutcome::Accepted("as TEST1".into())
    }

    fn now_unix_secs(&self) -> i64 {
        1_760_000_000
    }
}

fn dkim_key() -> &'static GeneratedKey {
    static KEY: OnceLock<GeneratedKey> = OnceLock::new();
    KEY.get_or_init(|| smtp::dkim::generate("sender.example", "sel").unwrap())
}

fn tandem_key() -> &'static GeneratedKey {
    static KEY: OnceLock<GeneratedKey> = OnceLock::new();
    KEY.get_or_init(|| smtp::dkim::generate("tandem.test", "tandem").unwrap())
}

fn dns() -> Arc<Resolver> {
    let k = dkim_key();
    let t = tandem_key();
    Arc::new(
        Resolver::with_static(&[
            (
                "sender.example".into(),
                vec!["TXT v=spf1 ip4:192.0.2.7 -all".into()],
            ),
            (
                "_dmarc.sender.example".into(),
                vec!["TXT v=DMARC1; p=reject".into()],
            ),
            (k.dns_name.clone(), vec![format!("TXT {}", k.dns_txt)]),
            (
                "quarantine.example".into(),
                vec!["TXT v=spf1 ip4:203.0.113.1 -all".into()],
            ),
            (
                "_dmarc.quarantine.example".into(),
                vec!["TXT v=DMARC1; p=quarantine".into()],
            ),
            (t.dns_name.clone(), vec![format!("TXT {}", t.dns_txt)]),
        ])
        .unwrap(),
    )
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    static ACC: OnceLock<tokio_rustls::TlsAcceptor> = OnceLock::new();
    ACC.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    })
    .clone()
}

fn cfg() -> SmtpConfig {
    SmtpConfig {
        hostname: HOST.into(),
        message_bytes_max: 100_000,
        idle_timeout: Duration::from_secs(5),
        messages_per_ip_per_minute: 0,
        ..SmtpConfig::default()
    }
}

fn server(service: Service, backend: Arc<FakeBackend>, cfg: SmtpConfig) -> SmtpServer<FakeBackend> {
    let mut keys = DkimKeys::default();
    let t = tandem_key();
    keys.insert(DkimKey::from_pem("tandem.test", "tandem", t.private_pem.as_bytes()).unwrap());
    SmtpServer::new(
        cfg,
        service,
        backend,
        Some(tls_acceptor()),
        Some(dns()),
        Arc::new(keys),
    )
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

type Task = JoinHandle<io::Result<()>>;

fn start(srv: &SmtpServer<FakeBackend>, ip: &str) -> (Client<tokio::io::DuplexStream>, Task) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let srv = srv.clone();
    let p = peer(ip);
    let task = tokio::spawn(async move { srv.serve(server, p).await });
    (Client::new(client), task)
}

async fn starttls(
    mut c: Client<tokio::io::DuplexStream>,
) -> Client<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>> {
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 ready to start TLS");
    let stream = c.into_inner();
    let connector = client::opportunistic_tls().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Client::new(connector.connect(name, stream).await.unwrap())
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn send_message<S: AsyncRead + AsyncWrite>(
    c: &mut Client<S>,
    from: &str,
    to: &[&str],
    msg: &[u8],
) -> String {
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    if !r.starts_with("250") {
        return r;
    }
    for t in to {
        let r = c.cmd(&format!("RCPT TO:<{t}>")).await;
        if !r.starts_with("250") {
            return r;
        }
    }
    let r = c.cmd("DATA").await;
    if !r.starts_with("354") {
        return r;
    }
    c.send(&smtp::data::dot_stuff(msg)).await;
    c.reply().await
}

#[tokio::test]
async fn mx_ehlo_advertises_the_extensions_and_no_auth() {
    let srv = server(Service::Mx, FakeBackend::new(), cfg());
    let (mut c, task) = start(&srv, "192.0.2.7");
    assert_eq!(c.reply().await, format!("220 {HOST} ESMTP Tandem ready"));
    let ehlo = c.cmd("EHLO client.example").await;
    for ext in [
        "PIPELINING",
        "SIZE 100000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("AUTH PLAIN AGFAYgBj").await.starts_with("502 5.5.1"));
    assert_eq!(c.cmd("LHLO x").await, "500 5.5.1 this is SMTP: use EHLO");
    assert_eq!(c.cmd("HELO client.example").await, format!("250 {HOST}"));
    c.cmd("QUIT").await;
    c.expect_eof().await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn mx_accepts_local_users_only() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (mut c, task) = start(&srv, "198.51.100.20");
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert!(
        c.cmd("MAIL FROM:<x@none.example>")
            .await
            .starts_with("250 2.1.0")
    );
    assert_eq!(
        c.cmd("RCPT TO:<nobody@tandem.test>").await,
        "550 5.1.1 <nobody@tandem.test>: no such user"
    );
    assert_eq!(
        c.cmd("RCPT TO:<victim@elsewhere.example>").await,
        "550 5.7.1 <victim@elsewhere.example>: relay not permitted"
    );
    assert!(
        c.cmd("RCPT TO:<Alice@tandem.test>")
            .await
            .starts_with("250 2.1.5")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"From: x@none.example\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await, "250 2.0.0 message accepted as TEST1");
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
    let got = b.accepted();
    assert_eq!(got.len(), 1);
    let (env, msg, folder) = &got[0];
    assert_eq!(env.rcpt_to, vec!["Alice@tandem.test".to_string()]);
    assert_eq!(*folder, Folder::Inbox);
    let text = String::from_utf8_lossy(msg);
    assert!(text.starts_with("Return-Path: <x@none.example>\r\nReceived: from client.example ([198.51.100.20])\r\n\tby mx.tandem.test (Tandem) with ESMTP\r\n\tfor <Alice@tandem.test>; "), "{text}");
    assert!(
        text.contains(&format!("Authentication-Results: {HOST};")),
        "{text}"
    );
    assert!(text.contains("spf=none"), "{text}");
    assert!(text.contains("dmarc=none"), "{text}");
    assert!(text.contains("\tdkim=none\r\n"), "{text}");
    assert!(text.ends_with("From: x@none.example\r\nSubject: hi\r\n\r\nhello\r\n"));
}

fn signed(msg: &str) -> Vec<u8> {
    let k = DkimKey::from_pem("sender.example", "sel", dkim_key().private_pem.as_bytes()).unwrap();
    let sig = k.sign(msg.as_bytes()).unwrap();
    format!("{sig}{msg}").into_bytes()
}

const FROM_SENDER: &str = "From: Sam <sam@sender.example>\r\nTo: alice@tandem.test\r\nSubject: signed\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@sender.example>\r\n\r\nhello there\r\n";

/// Runs one MX transaction from `ip` and returns (final reply, accepted message if any).
async fn mx_once(ip: &str, mail_from: &str, msg: &[u8]) -> (String, Option<(Vec<u8>, Folder)>) {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (mut c, task) = start(&srv, ip);
    c.reply().await;
    c.cmd("EHLO mail.sender.example").await;
    let r = send_message(&mut c, mail_from, &["alice@tandem.test"], msg).await;
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
    let got = b.accepted().pop().map(|(_, m, f)| (m, f));
    (r, got)
}

#[tokio::test]
async fn signed_message_from_an_authorised_ip_passes_spf_dkim_dmarc() {
    let (r, got) = mx_once("192.0.2.7", "sam@sender.example", &signed(FROM_SENDER)).await;
    assert!(r.starts_with("250"), "{r}");
    let (m, folder) = got.unwrap();
    let text = String::from_utf8_lossy(&m);
    assert!(text.contains("spf=pass"), "{text}");
    assert!(text.contains("dkim=pass"), "{text}");
    assert!(text.contains("dmarc=pass"), "{text}");
    assert_eq!(folder, Folder::Inbox);
}

#[tokio::test]
async fn signed_message_from_another_ip_passes_on_dkim_alone() {
    let (r, got) = mx_once("198.51.100.9", "sam@sender.example", &signed(FROM_SENDER)).await;
    assert!(r.starts_with("250"), "{r}");
    let text = String::from_utf8_lossy(&got.unwrap().0).into_owned();
    assert!(text.contains("spf=fail"), "{text}");
    assert!(text.contains("dkim=pass"), "{text}");
    assert!(text.contains("dmarc=pass"), "{text}");
}

#[tokio::test]
async fn forged_message_is_rejected_by_dmarc_reject() {
    // Unsigned, from an address sender.example does not authorise.
    let (r, got) = mx_once("198.51.100.9", "sam@sender.example", FROM_SENDER.as_bytes()).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(r.contains("DMARC"), "{r}");
    assert!(got.is_none());
    // Signed, then tampered with: the signature fails, SPF fails, DMARC rejects.
    let tampered = String::from_utf8(signed(FROM_SENDER))
        .unwrap()
        .replace("hello there", "send money");
    let (r, got) = mx_once("198.51.100.9", "sam@sender.example", tampered.as_bytes()).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(got.is_none());
    // Tampered but from the authorised IP: DKIM fails, SPF passes aligned: delivered.
    let (r, got) = mx_once("192.0.2.7", "sam@sender.example", tampered.as_bytes()).await;
    assert!(r.starts_with("250"), "{r}");
    let text = String::from_utf8_lossy(&got.unwrap().0).into_owned();
    // mail-auth reports a body hash mismatch as neutral (RFC 6376 §6.3 allows either).
    assert!(
        text.contains("dkim=neutral (body hash did not verify)"),
        "{text}"
    );
    assert!(text.contains("spf=pass"), "{text}");
    assert!(text.contains("dmarc=pass"), "{text}");
}

#[tokio::test]
async fn dmarc_quarantine_delivers_to_junk() {
    let msg = "From: q@quarantine.example\r\nSubject: q\r\n\r\nbody\r\n";
    let (r, got) = mx_once("198.51.100.9", "q@quarantine.example", msg.as_bytes()).await;
    assert!(r.starts_with("250"), "{r}");
    let (m, folder) = got.unwrap();
    assert_eq!(folder, Folder::Junk);
    assert!(String::from_utf8_lossy(&m).contains("dmarc=fail"));
}

#[tokio::test]
async fn forged_authentication_results_in_our_name_are_removed() {
    let msg = format!(
        "Authentication-Results: {HOST}; dkim=pass header.d=bank.example\r\nFrom: x@none.example\r\n\r\nhi\r\n"
    );
    let (r, got) = mx_once("198.51.100.9", "x@none.example", msg.as_bytes()).await;
    assert!(r.starts_with("250"), "{r}");
    let text = String::from_utf8_lossy(&got.unwrap().0).into_owned();
    assert!(!text.contains("bank.example"), "{text}");
}

#[tokio::test]
async fn submission_requires_tls_then_auth_and_owned_senders() {
    let b = FakeBackend::new();
    let srv = server(Service::Submission, b.clone(), cfg());
    let (mut c, task) = start(&srv, "198.51.100.30");
    c.reply().await;
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@tandem.test>")
            .await
            .starts_with("530 5.7.0")
    );
    assert!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(b"\0alice@tandem.test\0secret")
        ))
        .await
        .starts_with("530 5.7.0 Must issue a STARTTLS command first")
    );
    // STARTTLS with a command smuggled behind it is refused, and nothing runs.
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n").await;
    assert!(
        c.reply()
            .await
            .starts_with("503 5.5.1 STARTTLS must be the last")
    );
    assert!(c.reply().await.starts_with("530"));
    let mut c = starttls(c).await;
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(b"\0alice@tandem.test\0wrong")
        ))
        .await
        .starts_with("535 5.7.8")
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64(b"alice@tandem.test")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64(b"secret")).await,
        "235 2.7.0 authentication successful"
    );
    assert!(c.cmd("AUTH PLAIN =").await.starts_with("503"));
    // Forged envelope sender.
    assert_eq!(
        c.cmd("MAIL FROM:<bob@tandem.test>").await,
        "553 5.7.1 <bob@tandem.test>: sender address not owned by alice@tandem.test"
    );
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("553 5.7.1"));
    // Forged From: header.
    let r = send_message(
        &mut c,
        "alice@tandem.test",
        &["friend@remote.example"],
        b"From: bob@tandem.test\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(
        r,
        "553 5.7.1 From: <bob@tandem.test> is not an address of alice@tandem.test"
    );
    // Two From: fields, one of them honest.
    let r = send_message(
        &mut c,
        "alice@tandem.test",
        &["friend@remote.example"],
        b"From: alice@tandem.test\r\nFrom: bob@tandem.test\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(r, "553 5.7.1 the message has more than one From: header");
    // The real thing: a remote and a local recipient.
    let r = send_message(
        &mut c,
        "alice@tandem.test",
        &["friend@remote.example", "bob@tandem.test"],
        b"From: Alice <alice@tandem.test>\r\nTo: friend@remote.example\r\nSubject: hello\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        c.cmd("MAIL FROM:<alice@tandem.test>")
            .await
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<nobody@tandem.test>")
            .await
            .starts_with("550 5.1.1")
    );
    c.cmd("QUIT").await;
    c.expect_eof().await;
    task.await.unwrap().unwrap();

    let got = b.accepted();
    assert_eq!(got.len(), 1);
    let (env, msg, _) = &got[0];
    assert_eq!(env.auth_user.as_deref(), Some("alice@tandem.test"));
    assert!(env.tls);
    let text = String::from_utf8_lossy(msg).into_owned();
    assert!(
        text.starts_with(
            "Received: from laptop ([198.51.100.30])\r\n\tby mx.tandem.test (Tandem) with ESMTPSA; "
        ),
        "{text}"
    );
    assert!(
        text.contains("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{text}"
    );
    assert!(text.contains("d=tandem.test"), "{text}");
    assert!(text.contains("Message-ID: <"), "{text}");
    assert!(text.contains("Date: "), "{text}");
    // The signature verifies against the published key (our own MX checks it).
    let v = dns()
        .verify(
            smtp::verify::Origin {
                ip: "203.0.113.50".parse().unwrap(),
                helo: "x",
                mail_from: "alice@tandem.test",
            },
            msg,
            "check.test",
        )
        .await;
    assert_eq!(v.dkim, vec!["pass"], "{}", v.header);
}

#[tokio::test]
async fn submissions_is_tls_from_the_first_byte() {
    let b = FakeBackend::new();
    let srv = server(Service::Submissions, b.clone(), cfg());
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let srv2 = srv.clone();
    let task = tokio::spawn(async move { srv2.serve(server_side, peer("198.51.100.31")).await });
    let connector = client::opportunistic_tls().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = Client::new(connector.connect(name, client).await.unwrap());
    assert!(c.reply().await.starts_with("220"));
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob@tandem.test\0secret")))
            .await
            .starts_with("235")
    );
    let r = send_message(
        &mut c,
        "bob@tandem.test",
        &["alice@tandem.test"],
        b"From: bob@tandem.test\r\n\r\nhi\r\n",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
    assert_eq!(b.accepted().len(), 1);
}

#[tokio::test]
async fn bdat_chunks_are_assembled_and_refused_chunks_are_still_read() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (mut c, task) = start(&srv, "198.51.100.40");
    c.reply().await;
    c.cmd("EHLO client").await;
    // BDAT before MAIL: the chunk is consumed, then refused; the session stays in sync.
    c.send(b"BDAT 5\r\nNOOP!").await;
    assert!(c.reply().await.starts_with("503 5.5.1"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    c.cmd("MAIL FROM:<x@none.example>").await;
    c.cmd("RCPT TO:<bob@tandem.test>").await;
    let part1 = b"From: x@none.example\r\nSubject: chunks\r\n\r\nline one\n";
    let part2 = b"line two\r\n.leading dot\r\n";
    // Pipelined: both chunks and a NOOP in one write.
    let mut wire = format!("BDAT {}\r\n", part1.len()).into_bytes();
    wire.extend_from_slice(part1);
    wire.extend(format!("BDAT {} LAST\r\n", part2.len()).into_bytes());
    wire.extend_from_slice(part2);
    wire.extend_from_slice(b"NOOP\r\n");
    c.send(&wire).await;
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received", part1.len())
    );
    assert!(c.reply().await.starts_with("250 2.0.0 message accepted"));
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    assert!(c.cmd("DATA").await.starts_with("503"));
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
    let got = b.accepted();
    assert_eq!(got.len(), 1);
    assert!(
        got[0]
            .1
            .ends_with(b"\r\n\r\nline one\r\nline two\r\n.leading dot\r\n")
    );
}

#[tokio::test]
async fn oversized_bdat_is_counted_not_kept() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (mut c, task) = start(&srv, "198.51.100.41");
    c.reply().await;
    c.cmd("EHLO client").await;
    c.cmd("MAIL FROM:<x@none.example>").await;
    c.cmd("RCPT TO:<bob@tandem.test>").await;
    let chunk = vec![b'x'; 60_000];
    for last in [false, true] {
        let mut wire = format!(
            "BDAT {}{}\r\n",
            chunk.len(),
            if last { " LAST" } else { "" }
        )
        .into_bytes();
        wire.extend_from_slice(&chunk);
        c.send(&wire).await;
        let r = c.reply().await;
        if last {
            assert!(r.starts_with("552 5.3.4"), "{r}");
        } else {
            assert!(r.starts_with("250"), "{r}");
        }
    }
    assert!(c.cmd("NOOP").await.starts_with("250"));
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
    assert!(b.accepted().is_empty());
}

#[tokio::test]
async fn smtputf8_is_required_for_international_addresses() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b, cfg());
    let (mut c, task) = start(&srv, "198.51.100.42");
    c.reply().await;
    c.cmd("EHLO client").await;
    assert!(
        c.cmd("MAIL FROM:<józef@none.example>")
            .await
            .starts_with("553 5.6.7")
    );
    assert!(
        c.cmd("MAIL FROM:<józef@none.example> SMTPUTF8")
            .await
            .starts_with("250")
    );
    c.cmd("QUIT").await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn per_address_connection_and_message_limits() {
    let b = FakeBackend::new();
    let srv = server(
        Service::Mx,
        b,
        SmtpConfig {
            connections_per_ip_max: 1,
            messages_per_ip_per_minute: 1,
            ..cfg()
        },
    );
    let (mut c1, t1) = start(&srv, "198.51.100.50");
    c1.reply().await;
    let (mut c2, t2) = start(&srv, "198.51.100.50");
    assert!(c2.reply().await.starts_with("421 4.7.0"));
    c2.expect_eof().await;
    t2.await.unwrap().unwrap();
    c1.cmd("EHLO a").await;
    assert!(
        c1.cmd("MAIL FROM:<a@none.example>")
            .await
            .starts_with("250")
    );
    c1.cmd("RSET").await;
    assert!(
        c1.cmd("MAIL FROM:<a@none.example>")
            .await
            .starts_with("451 4.7.1")
    );
    c1.cmd("QUIT").await;
    t1.await.unwrap().unwrap();
}

#[tokio::test]
async fn slow_client_gets_421_when_a_line_takes_too_long() {
    let b = FakeBackend::new();
    let srv = server(
        Service::Mx,
        b,
        SmtpConfig {
            idle_timeout: Duration::from_millis(300),
            ..cfg()
        },
    );
    let (mut c, task) = start(&srv, "198.51.100.60");
    c.reply().await;
    // One byte at a time, each well within the timeout, but the line never completes in time.
    for b in b"EHLO slowly-slowly-slowly" {
        // The server may already have given up and closed: that is the point.
        let _ = c.w.write_all(&[*b]).await;
        let _ = c.w.flush().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(c.reply().await.starts_with("421 4.4.2"));
    c.expect_eof().await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_delivers_to_our_mx_over_starttls_with_per_recipient_results() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let srv2 = srv.clone();
    let task = tokio::spawn(async move { srv2.serve(server_side, peer("198.51.100.70")).await });
    let ccfg = ClientConfig {
        helo: "out.example".into(),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        tls: client::opportunistic_tls(),
    };
    let rcpts = vec![
        "alice@tandem.test".to_string(),
        "ghost@tandem.test".to_string(),
        "bob@tandem.test".to_string(),
    ];
    let msg = b"From: x@none.example\r\nSubject: out\r\n\r\n.dot line\r\nbody\r\n";
    let attempt = client::send(
        client_side,
        "localhost",
        &ccfg,
        Outgoing {
            mail_from: "x@none.example",
            rcpt_to: &rcpts,
            message: msg,
        },
        true,
    )
    .await
    .unwrap();
    task.await.unwrap().unwrap();
    assert!(attempt.tls);
    assert!(matches!(&attempt.rcpts[0], RcptStatus::Delivered(_)));
    assert!(matches!(&attempt.rcpts[1], RcptStatus::PermFail(t) if t.starts_with("550 5.1.1")));
    assert!(matches!(&attempt.rcpts[2], RcptStatus::Delivered(_)));
    let got = b.accepted();
    assert_eq!(got.len(), 1);
    assert!(got[0].1.ends_with(b"\r\n\r\n.dot line\r\nbody\r\n"));
    assert_eq!(got[0].0.rcpt_to.len(), 2);
    assert!(got[0].0.tls);
}

#[tokio::test]
async fn client_reports_relay_refusal_as_permanent() {
    let b = FakeBackend::new();
    let srv = server(Service::Mx, b.clone(), cfg());
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let srv2 = srv.clone();
    let task = tokio::spawn(async move { srv2.serve(server_side, peer("198.51.100.71")).await });
    let ccfg = ClientConfig {
        helo: "out.example".into(),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        tls: None,
    };
    let rcpts = vec!["someone@elsewhere.example".to_string()];
    let attempt = client::send(
        client_side,
        "localhost",
        &ccfg,
        Outgoing {
            mail_from: "",
            rcpt_to: &rcpts,
            message: b"Subject: x\r\n\r\ny\r\n",
        },
        true,
    )
    .await
    .unwrap();
    task.await.unwrap().unwrap();
    assert!(!attempt.tls);
    assert_eq!(
        attempt.rcpts,
        vec![RcptStatus::PermFail(
            "550 5.7.1 <someone@elsewhere.example>: relay not permitted".into()
        )]
    );
}

#[test]
fn generated_key_record_has_the_spki_form_verifiers_expect() {
    let k = dkim_key();
    assert_eq!(k.dns_name, "sel._domainkey.sender.example");
    assert!(
        k.dns_txt
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "{}",
        k.dns_txt
    );
    assert!(
        k.private_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );
    let again =
        smtp::dkim::dns_txt_for_private_pem("sender.example", k.private_pem.as_bytes()).unwrap();
    assert_eq!(again, k.dns_txt);
}
