//! End-to-end POP3 sessions against a real server on loopback sockets (plain, STLS and
//! implicit TLS).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use store::SystemFlags;

fn seen(r: &store::MessageRecord) -> bool {
    r.flags.system.has(SystemFlags::SEEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_capa_and_user_pass_login() {
    let env = start().await;
    let mut c = env.connect().await;
    assert!(
        c.greeting.starts_with("+OK test Tandem POP3"),
        "{}",
        c.greeting
    );
    let (st, caps) = c.cmd_multi("CAPA").await;
    assert!(st.starts_with("+OK"), "{st}");
    for cap in [
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "STLS",
        "IMPLEMENTATION Tandem",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
    }
    assert!(c.cmd("STAT").await.starts_with("-ERR"));
    assert!(
        c.cmd("PASS x").await.starts_with("-ERR"),
        "PASS before USER"
    );
    assert!(c.cmd(&format!("USER {USER}")).await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS wrong").await, "-ERR [AUTH] Invalid credentials");
    // A failed PASS forgets the USER.
    assert!(c.cmd(&format!("PASS {PASS}")).await.starts_with("-ERR"));
    c.user_pass(USER, PASS).await;
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
    let (_, caps) = c.cmd_multi("CAPA").await;
    assert!(!caps.iter().any(|c| c == "USER" || c == "STLS"), "{caps:?}");
    assert!(c.cmd(&format!("USER {USER}")).await.starts_with("-ERR"));
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_auth_refused_until_stls() {
    let env = start_with(|c| {
        c.allow_plaintext_auth = false;
        c.implicit_tls_port = 10995;
    })
    .await;
    let mut c = env.connect().await;
    let (_, caps) = c.cmd_multi("CAPA").await;
    assert!(caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert!(
        !caps.iter().any(|c| c == "USER" || c.starts_with("SASL")),
        "{caps:?}"
    );
    let refused = "-ERR [AUTH] Authentication requires TLS; use STLS or port 10995";
    assert_eq!(c.cmd(&format!("USER {USER}")).await, refused);
    assert_eq!(c.cmd(&format!("PASS {PASS}")).await, refused);
    assert_eq!(c.cmd("AUTH PLAIN AGEAYg==").await, refused);

    let mut c = env.stls(c).await;
    let (_, caps) = c.cmd_multi("CAPA").await;
    assert!(caps.iter().any(|c| c == "USER"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "SASL PLAIN"), "{caps:?}");
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    assert!(c.cmd("STLS").await.starts_with("-ERR"));
    c.user_pass(USER, PASS).await;
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stls_discards_plaintext_pipelined_after_it() {
    let env = start_with(|c| c.allow_plaintext_auth = false).await;
    let mut c = env.connect().await;
    // An attacker's injected commands ride along with STLS in one segment.
    c.send(b"STLS\r\nQUIT\r\n").await;
    let r = c.line().await.unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let tcp = c.r.into_inner();
    let mut c = Client {
        r: tokio::io::BufReader::new(env.tls_connect(tcp).await),
        greeting: String::new(),
    };
    // The QUIT was not executed: the session is alive and answers over TLS.
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    c.user_pass(USER, PASS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_listener() {
    let env = start_with(|c| c.allow_plaintext_auth = false).await;
    env.deliver(SIMPLE);
    let mut c = env.connect_tls().await;
    assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
    let (_, caps) = c.cmd_multi("CAPA").await;
    assert!(!caps.iter().any(|c| c == "STLS"), "{caps:?}");
    c.user_pass(USER, PASS).await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}", SIMPLE.len()));
    let r = c.cmd("RETR 1").await;
    assert_eq!(r, format!("+OK {} octets", SIMPLE.len()));
    assert_eq!(c.multiline().await, SIMPLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_initial_response_continuation_and_refusals() {
    let env = start().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token = b64(&format!("\0{USER}\0{PASS}"));

    let mut c = env.connect().await;
    let (st, mechs) = c.cmd_multi("AUTH").await;
    assert!(
        st.starts_with("+OK") && mechs == ["PLAIN"],
        "{st} {mechs:?}"
    );
    assert!(c.cmd("AUTH CRAM-MD5").await.starts_with("-ERR"));
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(&format!("\0{USER}\0nope"))))
        .await;
    assert_eq!(r, "-ERR [AUTH] Invalid credentials");
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("bob@example.com\0{USER}\0{PASS}"))
        ))
        .await;
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, "-ERR Authentication cancelled");
    let r = c.cmd(&format!("AUTH PLAIN {token}")).await;
    assert!(r.starts_with("+OK"), "{r}");
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");

    let mut c = env.connect().await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let r = c.cmd(&token).await;
    assert!(r.starts_with("+OK"), "{r}");
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retr_list_uidl_top_dele_rset_quit() {
    let env = start().await;
    let u1 = env.deliver(SIMPLE);
    let u2 = env.deliver(DOTTY);
    let u3 = env.deliver(SIMPLE);
    let mut c = env.login().await;
    let total = 2 * SIMPLE.len() + DOTTY.len();
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {total}"));
    let (st, list) = c.cmd_multi("LIST").await;
    assert_eq!(st, format!("+OK 3 messages ({total} octets)"));
    assert_eq!(
        list,
        [
            format!("1 {}", SIMPLE.len()),
            format!("2 {}", DOTTY.len()),
            format!("3 {}", SIMPLE.len())
        ]
    );
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {}", DOTTY.len()));
    assert!(c.cmd("LIST 4").await.starts_with("-ERR No such message 4"));

    // UIDL: UID then UIDVALIDITY, 8 uppercase hex digits each.
    let uv = env.inbox().uidvalidity.0;
    let (_, uidl) = c.cmd_multi("UIDL").await;
    let want: Vec<String> = [u1, u2, u3]
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{} {:08X}{uv:08X}", i + 1, u.0))
        .collect();
    assert_eq!(uidl, want);
    assert_eq!(c.cmd("UIDL 3").await, format!("+OK {}", want[2]));

    // RETR: dot-stuffed on the wire, byte-identical after unstuffing.
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets", DOTTY.len()));
    let mut wire = Vec::new();
    loop {
        let l = c.raw_line().await.unwrap();
        let end = l == b".";
        wire.push(l);
        if end {
            break;
        }
    }
    assert!(wire.contains(&b"..".to_vec()) && wire.contains(&b"...two dots".to_vec()));
    assert!(wire.contains(&b"..leading".to_vec()));
    let unstuffed: Vec<u8> = wire[..wire.len() - 1]
        .iter()
        .flat_map(|l| {
            let l = l.strip_prefix(b".").unwrap_or(l);
            [l, b"\r\n"].concat()
        })
        .collect();
    assert_eq!(unstuffed, DOTTY);

    // TOP: header, blank line, n body lines; does not mark \Seen.
    assert!(c.cmd("TOP 2 2").await.starts_with("+OK"));
    assert_eq!(
        c.multiline().await,
        b"From: Carol <carol@example.net>\r\nSubject: Dots\r\n\r\nline one\r\n.\r\n"
    );
    assert!(c.cmd("TOP 1 0").await.starts_with("+OK"));
    assert!(
        c.multiline()
            .await
            .ends_with(b"<lunch@example.org>\r\n\r\n")
    );

    // DELE marks; RSET unmarks; QUIT expunges exactly the marked ones.
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    assert_eq!(c.cmd("DELE 1").await, "-ERR Message 1 is deleted");
    assert!(c.cmd("RETR 1").await.starts_with("-ERR"));
    assert!(c.cmd("LIST 1").await.starts_with("-ERR"));
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}", SIMPLE.len() + DOTTY.len())
    );
    let (_, list) = c.cmd_multi("LIST").await;
    assert_eq!(list.len(), 2);
    assert!(list[0].starts_with("2 "));
    assert!(
        c.cmd("RSET")
            .await
            .starts_with("+OK Maildrop has 3 messages")
    );
    assert_eq!(c.cmd("DELE 3").await, "+OK Message 3 deleted");
    // Nothing is removed before QUIT.
    assert_eq!(env.records().len(), 3);
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Tandem POP3 signing off (1 messages deleted)"
    );
    c.expect_eof().await;
    let recs = env.records();
    assert_eq!(recs.iter().map(|r| r.uid).collect::<Vec<_>>(), [u1, u2]);
    assert!(!seen(&recs[0]), "TOP must not mark \\Seen");
    assert!(seen(&recs[1]), "RETR marks \\Seen");

    // UIDLs are stable across sessions.
    let mut c = env.login().await;
    let (_, uidl) = c.cmd_multi("UIDL").await;
    assert_eq!(uidl, [want[0].clone(), format!("2 {}", &want[1][2..])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_without_quit_deletes_nothing_but_keeps_seen() {
    let env = start().await;
    env.deliver(SIMPLE);
    env.deliver(SIMPLE);
    let mut c = env.login().await;
    assert!(c.cmd("RETR 1").await.starts_with("+OK"));
    c.multiline().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("DELE 2").await.starts_with("+OK"));
    drop(c);
    // The session ends asynchronously: wait for its \Seen write.
    let mut recs = env.records();
    for _ in 0..100 {
        if seen(&recs[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        recs = env.records();
    }
    assert_eq!(recs.len(), 2, "deletions without QUIT are dropped");
    assert!(seen(&recs[0]) && !seen(&recs[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbering_is_a_snapshot_while_imap_changes_the_inbox() {
    let env = start().await;
    let u1 = env.deliver(SIMPLE);
    env.deliver(DOTTY);
    let mut c = env.login().await;
    // Meanwhile an IMAP client expunges message 1 and new mail arrives.
    env.imap_expunge(u1);
    env.deliver(SIMPLE);
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    assert_eq!(
        c.cmd("RETR 1").await,
        "-ERR Message 1 was removed by another session since you logged in"
    );
    assert!(c.cmd("TOP 1 0").await.starts_with("-ERR"));
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets", DOTTY.len()));
    assert_eq!(c.multiline().await, DOTTY);
    assert!(c.cmd("RETR 3").await.starts_with("-ERR No such message 3"));
    // Deleting the vanished message is harmless; QUIT removes the other.
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("DELE 2").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    c.expect_eof().await;
    assert_eq!(env.records().len(), 1, "only the new message is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_message_answers_sys_perm_and_session_continues() {
    let env = start().await;
    env.deliver(SIMPLE);
    env.deliver(DOTTY);
    let rec = env.records()[0].clone();
    let path = env.slot.blob_path(&rec.blob);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    // Message 3's metadata record fails its CRC: it keeps its number but cannot be used.
    let u3 = env.deliver(SIMPLE);
    tokio::task::block_in_place(|| env.slot.debug_corrupt_record(env.inbox().id, u3)).unwrap();

    let mut c = env.login().await;
    let damaged = |n: u32| {
        format!(
            "-ERR [SYS/PERM] message {n} is damaged and cannot be read; the operators have been alerted"
        )
    };
    assert_eq!(c.cmd("RETR 1").await, damaged(1));
    assert_eq!(c.cmd("TOP 1 1").await, damaged(1));
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets", DOTTY.len()));
    assert_eq!(c.multiline().await, DOTTY);
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 3 {}", SIMPLE.len() + DOTTY.len())
    );
    assert_eq!(c.cmd("LIST 3").await, "+OK 3 0");
    assert_eq!(c.cmd("RETR 3").await, damaged(3));
    assert_eq!(c.cmd("DELE 3").await, damaged(3));
    // A damaged blob can still be deleted (its record is intact).
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Tandem POP3 signing off (1 messages deleted)"
    );
    let events = std::fs::read_to_string(env.dir.join("events.jsonl")).unwrap();
    assert!(events.contains("corrupt_blob"), "{events}");
    assert!(events.contains("corrupt_record"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let env = start().await;
    env.deliver(SIMPLE);
    let mut c = env.connect().await;
    c.send(
        format!(
            "USER {USER}\r\nPASS {PASS}\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 1\r\nNOOP\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(c.line().await.unwrap().starts_with("+OK"));
    assert!(
        c.line()
            .await
            .unwrap()
            .starts_with("+OK Logged in; 1 messages")
    );
    assert_eq!(c.line().await.unwrap(), format!("+OK 1 {}", SIMPLE.len()));
    assert!(c.line().await.unwrap().starts_with("+OK 1 messages"));
    assert_eq!(
        c.multiline().await,
        format!("1 {}\r\n", SIMPLE.len()).as_bytes()
    );
    assert!(c.line().await.unwrap().starts_with("+OK 1 "));
    assert!(c.line().await.unwrap().starts_with("+OK"));
    assert_eq!(c.multiline().await, SIMPLE);
    assert_eq!(c.line().await.unwrap(), "+OK");
    assert!(
        c.line()
            .await
            .unwrap()
            .starts_with("+OK Tandem POP3 signing off")
    );
    c.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_bad_commands_and_failed_logins_are_bounded() {
    let env = start_with(|c| c.bad_commands_max = 5).await;
    let mut c = env.connect().await;
    let long = format!("USER {}", "x".repeat(2000));
    assert_eq!(
        c.cmd(&long).await,
        "-ERR Line too long (limit 1024 bytes); command ignored"
    );
    // The session is still in step after the skipped line.
    assert!(c.cmd("NOOP").await.starts_with("+OK"));
    assert!(c.cmd("XYZZY").await.starts_with("-ERR Unknown command"));
    assert!(c.cmd("RETR 0").await.starts_with("-ERR"));
    assert!(c.cmd("STAT").await.starts_with("-ERR Log in first"));
    let last = c.cmd("BOGUS").await;
    assert!(last.contains("too many invalid commands"), "{last}");
    c.expect_eof().await;

    // Five failed logins on one connection close it; the limiter throttles after three.
    let mut c = env.connect().await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        assert!(c.cmd(&format!("USER {USER}")).await.starts_with("+OK"));
        answers.push(c.cmd("PASS nope").await);
    }
    assert_eq!(answers[0], "-ERR [AUTH] Invalid credentials");
    assert_eq!(answers[2], "-ERR [AUTH] Invalid credentials");
    assert!(
        answers[3].starts_with("-ERR [SYS/TEMP] Too many failed logins; try again in "),
        "{answers:?}"
    );
    assert!(answers[4].ends_with("closing it"), "{answers:?}");
    c.expect_eof().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_is_logged_out_without_update() {
    let env = start_with(|c| c.idle_timeout = Duration::from_millis(300)).await;
    env.deliver(SIMPLE);
    let mut c = env.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.line().await.unwrap(), "-ERR Disconnected for inactivity");
    c.expect_eof().await;
    assert_eq!(env.records().len(), 1);
}

#[test]
fn default_config_meets_the_rfc() {
    let c = pop3::Pop3Config::default();
    assert!(c.idle_timeout >= Duration::from_secs(600), "RFC 1939 3");
    assert!(c.line_bytes_max >= 255, "RFC 2449 4");
    assert!(!c.allow_plaintext_auth);
}
