//! LMTP sessions end to end over real tokio I/O (`duplex` and loopback TCP), against an
//! in-memory deliverer that records what it was given.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Client;
use smtp::data::dot_stuff;
use smtp::{Deliver, DeliveryOutcome, Envelope, LmtpConfig, RcptVerdict, serve_lmtp};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

/// How the fake store treats one address.
#[derive(Clone, Copy)]
enum User {
    Ok,
    TempFailAtDelivery,
    PermFailAtDelivery,
    OverQuota,
    TempFailAtRcpt,
}

#[derive(Default)]
struct FakeDeliver {
    users: HashMap<String, User>,
    delivered: Mutex<Vec<(Envelope, Vec<u8>)>>,
}

impl FakeDeliver {
    fn with(users: &[(&str, User)]) -> Arc<Self> {
        Arc::new(Self {
            users: users.iter().map(|(a, u)| (a.to_string(), *u)).collect(),
            delivered: Mutex::new(Vec::new()),
        })
    }

    fn deliveries(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.delivered.lock().unwrap().clone()
    }
}

impl Deliver for FakeDeliver {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        match self.users.get(address) {
            None => RcptVerdict::UnknownUser,
            Some(User::TempFailAtRcpt) => RcptVerdict::TempFail("directory unavailable".into()),
            Some(_) => RcptVerdict::Accept,
        }
    }

    async fn deliver(&self, envelope: &Envelope, message: Arc<[u8]>) -> Vec<DeliveryOutcome> {
        self.delivered
            .lock()
            .unwrap()
            .push((envelope.clone(), message.to_vec()));
        envelope
            .rcpt_to
            .iter()
            .map(|a| match self.users.get(a) {
                Some(User::TempFailAtDelivery) => DeliveryOutcome::TempFail("disk busy".into()),
                Some(User::PermFailAtDelivery) => {
                    DeliveryOutcome::PermFail("mailbox disabled".into())
                }
                Some(User::OverQuota) => DeliveryOutcome::OverQuota,
                _ => DeliveryOutcome::Delivered,
            })
            .collect()
    }
}

fn users() -> Arc<FakeDeliver> {
    FakeDeliver::with(&[
        ("alice@example.com", User::Ok),
        ("bob@example.com", User::Ok),
        ("carol+lists@example.com", User::Ok),
        ("busy@example.com", User::TempFailAtDelivery),
        ("gone@example.com", User::PermFailAtDelivery),
        ("full@example.com", User::OverQuota),
        ("flaky@example.com", User::TempFailAtRcpt),
    ])
}

fn cfg() -> LmtpConfig {
    LmtpConfig {
        hostname: "lmtp.test".into(),
        ..LmtpConfig::default()
    }
}

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

fn start(
    deliver: Arc<FakeDeliver>,
    cfg: LmtpConfig,
) -> (Client<tokio::io::DuplexStream>, JoinHandle<io::Result<()>>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move { serve_lmtp(server, peer(), &*deliver, &cfg).await });
    (Client::new(client), task)
}

async fn finish<S: AsyncRead + AsyncWrite>(mut c: Client<S>, task: JoinHandle<io::Result<()>>) {
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 lmtp.test closing connection"
    );
    c.expect_eof().await;
    task.await.unwrap().unwrap();
}

const MESSAGE: &[u8] = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n";

#[tokio::test]
async fn lhlo_advertises_capabilities() {
    let d = users();
    let (mut c, task) = start(d, cfg());
    assert_eq!(c.reply().await, "220 lmtp.test LMTP Tandem ready");
    assert_eq!(
        c.cmd("LHLO client.test").await,
        "250-lmtp.test\n250-PIPELINING\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250 SIZE 67108864"
    );
    finish(c, task).await;
}

#[tokio::test]
async fn multi_recipient_transaction_gets_one_reply_per_recipient() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    assert_eq!(
        c.cmd("MAIL FROM:<sender@example.org> SIZE=44 BODY=8BITMIME")
            .await,
        "250 2.1.0 <sender@example.org> sender OK"
    );
    for rcpt in [
        "alice@example.com",
        "bob@example.com",
        "carol+lists@example.com",
    ] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).await,
            format!("250 2.1.5 <{rcpt}> recipient OK")
        );
    }
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&dot_stuff(MESSAGE)).await;
    for rcpt in [
        "alice@example.com",
        "bob@example.com",
        "carol+lists@example.com",
    ] {
        assert_eq!(c.reply().await, format!("250 2.1.5 <{rcpt}> delivered"));
    }
    let got = d.deliveries();
    assert_eq!(got.len(), 1);
    let (env, msg) = &got[0];
    assert_eq!(
        msg, MESSAGE,
        "message must be stored byte for byte, no headers added"
    );
    assert_eq!(env.mail_from, "sender@example.org");
    assert_eq!(
        env.rcpt_to,
        [
            "alice@example.com",
            "bob@example.com",
            "carol+lists@example.com"
        ]
    );
    assert_eq!(env.peer, peer());
    assert_eq!(env.size_declared, Some(44));
    assert!(env.body_8bit);
    finish(c, task).await;
}

#[tokio::test]
async fn unknown_recipient_is_refused_and_gets_no_data_reply() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 <> sender OK");
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.com>").await,
        "550 5.1.1 <nobody@example.com>: no such user"
    );
    assert_eq!(
        c.cmd("RCPT TO:<flaky@example.com>").await,
        "451 4.3.0 <flaky@example.com>: directory unavailable"
    );
    assert!(
        c.cmd("RCPT TO:<alice@example.com>")
            .await
            .starts_with("250 2.1.5")
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&dot_stuff(MESSAGE)).await;
    assert_eq!(c.reply().await, "250 2.1.5 <alice@example.com> delivered");
    // Exactly one reply: the next reply must be NOOP's.
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    let got = d.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.mail_from, "", "null sender is an empty mail_from");
    assert_eq!(got[0].0.rcpt_to, ["alice@example.com"]);
    finish(c, task).await;
}

#[tokio::test]
async fn data_without_valid_recipients_is_503() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<nobody@example.com>").await;
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 no valid recipients");
    assert!(d.deliveries().is_empty());
    finish(c, task).await;
}

#[tokio::test]
async fn pipelined_transaction_in_one_write() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    let mut all =
        b"LHLO client.test\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\n\
RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            .to_vec();
    all.extend_from_slice(&dot_stuff(MESSAGE));
    all.extend_from_slice(b"MAIL FROM:<t@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
    all.extend_from_slice(&dot_stuff(b"second\r\n"));
    all.extend_from_slice(b"QUIT\r\n");
    c.send(&all).await;
    let expected = [
        "220 lmtp.test LMTP Tandem ready",
        "250-lmtp.test\n250-PIPELINING\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250 SIZE 67108864",
        "250 2.1.0 <s@example.org> sender OK",
        "250 2.1.5 <alice@example.com> recipient OK",
        "550 5.1.1 <nobody@example.com>: no such user",
        "250 2.1.5 <bob@example.com> recipient OK",
        "354 end data with <CR><LF>.<CR><LF>",
        "250 2.1.5 <alice@example.com> delivered",
        "250 2.1.5 <bob@example.com> delivered",
        "250 2.1.0 <t@example.org> sender OK",
        "250 2.1.5 <bob@example.com> recipient OK",
        "354 end data with <CR><LF>.<CR><LF>",
        "250 2.1.5 <bob@example.com> delivered",
        "221 2.0.0 lmtp.test closing connection",
    ];
    for e in expected {
        assert_eq!(c.reply().await, e);
    }
    c.expect_eof().await;
    task.await.unwrap().unwrap();
    let got = d.deliveries();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, MESSAGE);
    assert_eq!(got[1].1, b"second\r\n");
}

/// Send one message to alice and return what the store received.
async fn round_trip(wire_body: &[u8], cfg: LmtpConfig) -> Vec<u8> {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg);
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(wire_body).await;
    assert_eq!(c.reply().await, "250 2.1.5 <alice@example.com> delivered");
    finish(c, task).await;
    let mut got = d.deliveries();
    assert_eq!(got.len(), 1);
    got.remove(0).1
}

#[tokio::test]
async fn dot_stuffing_round_trip() {
    let message = b".starts with a dot\r\n..two dots\r\n.\r\nlone dot above\r\n. \r\n.";
    let stored = round_trip(&dot_stuff(message), cfg()).await;
    // The client's dot_stuff ends an unterminated last line with CRLF.
    let mut expected = message.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn bare_lf_is_stored_as_crlf_and_never_ends_data() {
    let stored = round_trip(
        b"Subject: lf\nbody line\n.\nstill body\r\n.\nmore\n.\r\nend\r\n.\r\n",
        cfg(),
    )
    .await;
    assert_eq!(
        stored,
        b"Subject: lf\r\nbody line\r\n\r\nstill body\r\n\r\nmore\r\n\r\nend\r\n"
    );
}

#[tokio::test]
async fn nul_bytes_and_long_lines_are_kept() {
    let mut message = b"Subject: nul\r\n\r\na\0b\0\0c\r\n".to_vec();
    message.extend(std::iter::repeat_n(b'x', 5000));
    message.extend_from_slice(b"\r\n");
    let stored = round_trip(&dot_stuff(&message), cfg()).await;
    assert_eq!(stored, message);
}

#[tokio::test]
async fn oversized_message_is_read_and_refused_per_recipient() {
    let d = users();
    let cfg = LmtpConfig {
        message_bytes_max: 1000,
        ..cfg()
    };
    let (mut c, task) = start(d.clone(), cfg);
    c.hello().await;
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.org> SIZE=1001").await,
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let big: Vec<u8> = b"0123456789abcdef\r\n".repeat(10_000);
    c.send(&dot_stuff(&big)).await;
    for _ in 0..2 {
        assert_eq!(
            c.reply().await,
            "552 5.3.4 message size exceeds fixed maximum message size"
        );
    }
    assert!(d.deliveries().is_empty());
    // The session continues; a message of exactly the limit passes.
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let exact = b"x".repeat(998);
    c.send(&dot_stuff(&exact)).await;
    assert_eq!(c.reply().await, "250 2.1.5 <alice@example.com> delivered");
    assert_eq!(d.deliveries()[0].1.len(), 1000);
    finish(c, task).await;
}

#[tokio::test]
async fn overlong_command_line_is_refused_and_session_continues() {
    let d = users();
    let cfg = LmtpConfig {
        line_bytes_max: 512,
        ..cfg()
    };
    let (mut c, task) = start(d, cfg);
    c.hello().await;
    let long = format!("NOOP {}", "x".repeat(100_000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 line too long");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // 512 bytes including CRLF is still fine.
    let fits = format!("NOOP {}", "y".repeat(512 - 7));
    assert_eq!(c.cmd(&fits).await, "250 2.0.0 OK");
    finish(c, task).await;
}

#[tokio::test]
async fn abrupt_disconnect_mid_data_delivers_nothing() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: cut\r\n\r\nhalf a mess").await;
    drop(c);
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    result
        .expect("server must notice the disconnect")
        .unwrap()
        .unwrap();
    assert!(d.deliveries().is_empty());
}

#[tokio::test]
async fn rset_drops_the_transaction_but_keeps_the_greeting() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 need MAIL before DATA");
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.com>").await,
        "503 5.5.1 need MAIL before RCPT"
    );
    // No new LHLO needed after RSET.
    c.cmd("MAIL FROM:<s2@example.org>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&dot_stuff(MESSAGE)).await;
    assert_eq!(c.reply().await, "250 2.1.5 <bob@example.com> delivered");
    let got = d.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.mail_from, "s2@example.org");
    assert_eq!(
        got[0].0.rcpt_to,
        ["bob@example.com"],
        "alice was reset away"
    );
    finish(c, task).await;
}

#[tokio::test]
async fn mixed_delivery_outcomes_map_to_per_recipient_replies() {
    let d = users();
    let (mut c, task) = start(d.clone(), cfg());
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    for r in [
        "alice@example.com",
        "busy@example.com",
        "full@example.com",
        "gone@example.com",
        "bob@example.com",
    ] {
        assert!(
            c.cmd(&format!("RCPT TO:<{r}>"))
                .await
                .starts_with("250 2.1.5")
        );
    }
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&dot_stuff(MESSAGE)).await;
    assert_eq!(c.reply().await, "250 2.1.5 <alice@example.com> delivered");
    assert_eq!(c.reply().await, "451 4.3.0 <busy@example.com>: disk busy");
    assert_eq!(
        c.reply().await,
        "552 5.2.2 <full@example.com>: mailbox full"
    );
    assert_eq!(
        c.reply().await,
        "550 5.3.0 <gone@example.com>: mailbox disabled"
    );
    assert_eq!(c.reply().await, "250 2.1.5 <bob@example.com> delivered");
    finish(c, task).await;
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let d = users();
    let (mut c, task) = start(d, cfg());
    assert!(c.reply().await.starts_with("220 "));
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.org>").await,
        "503 5.5.1 send LHLO first"
    );
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "500 5.5.1 this is LMTP (RFC 2033): use LHLO"
    );
    assert_eq!(
        c.cmd("HELO client.test").await,
        "500 5.5.1 this is LMTP (RFC 2033): use LHLO"
    );
    c.cmd("LHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "500 5.5.2 command not recognized");
    assert_eq!(
        c.cmd("MAIL FROM:s@example.org").await,
        "501 5.5.4 expected MAIL FROM:<address>"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.org> SMTPUTF8").await,
        "555 5.5.4 parameter SMTPUTF8 not recognized"
    );
    c.cmd("MAIL FROM:<s@example.org>").await;
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.org>").await,
        "503 5.5.1 nested MAIL command"
    );
    assert_eq!(
        c.cmd("RCPT TO:<no-domain>").await,
        "501 5.5.4 address needs local@domain"
    );
    assert!(c.cmd("VRFY alice").await.starts_with("252 "));
    finish(c, task).await;
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let d = users();
    let cfg = LmtpConfig {
        errors_max: 3,
        ..cfg()
    };
    let (mut c, task) = start(d, cfg);
    c.hello().await;
    assert!(c.cmd("BOGUS").await.starts_with("500 "));
    assert!(c.cmd("BOGUS").await.starts_with("500 "));
    assert_eq!(
        c.cmd("BOGUS").await,
        "421 4.7.0 lmtp.test too many errors, closing connection"
    );
    c.expect_eof().await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_timeout_sends_421_and_closes() {
    let d = users();
    let cfg = LmtpConfig {
        idle_timeout: Duration::from_millis(200),
        ..cfg()
    };
    let (mut c, task) = start(d.clone(), cfg);
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    c.cmd("RCPT TO:<alice@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"partial body\r\n").await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 lmtp.test idle timeout, closing connection"
    );
    c.expect_eof().await;
    task.await.unwrap().unwrap();
    assert!(d.deliveries().is_empty());
}

#[tokio::test]
async fn recipients_over_the_limit_get_452() {
    let d = users();
    let cfg = LmtpConfig {
        recipients_max: 2,
        ..cfg()
    };
    let (mut c, task) = start(d.clone(), cfg);
    c.hello().await;
    c.cmd("MAIL FROM:<s@example.org>").await;
    assert!(
        c.cmd("RCPT TO:<alice@example.com>")
            .await
            .starts_with("250 ")
    );
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<carol+lists@example.com>").await,
        "452 4.5.3 too many recipients"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(&dot_stuff(MESSAGE)).await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("250 "));
    assert_eq!(d.deliveries()[0].0.rcpt_to.len(), 2);
    finish(c, task).await;
}

#[tokio::test]
async fn transaction_over_loopback_tcp() {
    let d = users();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_d = d.clone();
    let task = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        serve_lmtp(stream, peer, &*server_d, &cfg()).await
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut c = Client::new(stream);
    c.hello().await;
    // A 1 MiB message, to cross many socket reads.
    let big: Vec<u8> = b".line with a leading dot and some text to make it long\r\n".repeat(20_000);
    let mut wire = b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n".to_vec();
    c.send(&wire).await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354 "));
    wire = dot_stuff(&big);
    c.send(&wire).await;
    assert_eq!(c.reply().await, "250 2.1.5 <alice@example.com> delivered");
    assert_eq!(c.reply().await, "250 2.1.5 <bob@example.com> delivered");
    finish(c, task).await;
    let got = d.deliveries();
    assert_eq!(got[0].1, big);
    assert_eq!(got[0].0.peer, local);
}
