//! End-to-end IMAP sessions against a real server on a loopback socket.

mod common;

use std::time::Duration;

use common::*;

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_capabilities_and_login() {
    let env = start().await;
    let mut c = Client::connect(env.addr).await;
    assert!(
        c.greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{}",
        c.greeting
    );
    assert!(c.greeting.contains("AUTH=PLAIN") && c.greeting.ends_with("Tandem ready"));
    let (_, done) = c.cmd("SELECT INBOX").await;
    assert!(done.starts_with("t1 BAD"), "{done}");
    let (_, done) = c.cmd(&format!("LOGIN {USER} wrong")).await;
    assert!(done.contains("NO [AUTHENTICATIONFAILED]"), "{done}");
    let (_, done) = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(
        done.contains("OK [CAPABILITY") && !done.contains("AUTH=PLAIN"),
        "{done}"
    );
    let (u, done) = c.cmd("CAPABILITY").await;
    assert!(done.contains("OK"));
    assert!(u[0].contains("IDLE") && u[0].contains("UIDPLUS") && u[0].contains("MOVE"));
    let (u, _) = c.cmd("NAMESPACE").await;
    assert_eq!(u, vec!["* NAMESPACE ((\"\" \"/\")) NIL NIL"]);
    let (u, done) = c.cmd("LOGOUT").await;
    assert!(u[0].starts_with("* BYE") && done.contains("OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_login_refused_without_tls() {
    let env = start_with(|c| c.allow_plaintext_auth = false).await;
    let mut c = Client::connect(env.addr).await;
    assert!(c.greeting.contains("LOGINDISABLED") && !c.greeting.contains("AUTH=PLAIN"));
    let (_, done) = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(done.contains("NO [PRIVACYREQUIRED]"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_plain_with_initial_response_and_continuation() {
    use base64::Engine as _;
    let env = start().await;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASS}"));
    let mut c = Client::connect(env.addr).await;
    let (_, done) = c.cmd(&format!("AUTHENTICATE PLAIN {token}")).await;
    assert!(done.contains("OK"), "{done}");

    let mut c = Client::connect(env.addr).await;
    c.send(b"a1 AUTHENTICATE PLAIN\r\n").await;
    let cont = c.read_response().await.unwrap();
    assert!(cont.starts_with('+'), "{cont}");
    c.send(format!("{token}\r\n").as_bytes()).await;
    let (_, done) = c.until_tagged("a1").await;
    assert!(done.contains("a1 OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_list_create_rename_delete_status() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let (u, done) = c.cmd("LIST \"\" \"*\"").await;
    assert!(done.contains("OK"));
    assert!(has(&u, "* LIST (\\HasNoChildren) \"/\" INBOX"), "{u:?}");
    assert!(has(&u, "\\Sent) \"/\" Sent"), "{u:?}");
    assert!(has(&u, "\\Trash) \"/\" Trash"), "{u:?}");
    let (_, done) = c.cmd("CREATE Work/2026").await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = c.cmd("CREATE Work/2026").await;
    assert!(done.contains("NO [ALREADYEXISTS]"), "{done}");
    let (u, _) = c.cmd("LIST \"\" \"%\"").await;
    assert!(has(&u, "(\\Noselect \\HasChildren) \"/\" Work"), "{u:?}");
    assert!(!has(&u, "Work/2026"), "{u:?}");
    let (u, _) = c.cmd("LIST \"\" \"Work/*\"").await;
    assert!(has(&u, "(\\HasNoChildren) \"/\" Work/2026"), "{u:?}");
    let (u, _) = c.cmd("LIST \"\" \"\"").await;
    assert_eq!(u, vec!["* LIST (\\Noselect) \"/\" \"\""]);
    // Non-ASCII names travel as modified UTF-7.
    let (_, done) = c.cmd("CREATE \"R&AOk-sum&AOk-\"").await;
    assert!(done.contains("OK"), "{done}");
    let (u, _) = c.cmd("LIST \"\" \"R*\"").await;
    assert!(has(&u, "\"/\" R&AOk-sum&AOk-"), "{u:?}");

    let (_, done) = c.cmd("RENAME Work Play").await;
    assert!(done.contains("NO [NONEXISTENT]"), "{done}");
    let (_, done) = c.cmd("RENAME Work/2026 Play/2026").await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = c.cmd("SELECT Play/2026").await;
    assert!(done.contains("OK [READ-WRITE]"), "{done}");
    let (_, done) = c.cmd("DELETE Play/2026").await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = c.cmd("SELECT Play/2026").await;
    assert!(done.contains("NO [NONEXISTENT]"), "{done}");
    let (_, done) = c.cmd("DELETE INBOX").await;
    assert!(done.contains("NO"), "{done}");
    let (_, done) = c.cmd("CREATE a//b").await;
    assert!(done.contains("NO [CANNOT]"), "{done}");

    // RENAME INBOX moves its messages and leaves an empty INBOX.
    c.append("INBOX", "", SIMPLE).await;
    let (_, done) = c.cmd("RENAME INBOX Old").await;
    assert!(done.contains("OK"), "{done}");
    let (u, _) = c.cmd("STATUS Old (MESSAGES UIDNEXT UNSEEN)").await;
    assert_eq!(u, vec!["* STATUS Old (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"]);
    let (u, _) = c.cmd("STATUS INBOX (MESSAGES)").await;
    assert_eq!(u, vec!["* STATUS INBOX (MESSAGES 0)"]);

    let (_, done) = c.cmd("SUBSCRIBE Old").await;
    assert!(done.contains("OK"));
    let (u, _) = c.cmd("LSUB \"\" \"O*\"").await;
    assert_eq!(u, vec!["* LSUB () \"/\" Old"]);
    let (_, done) = c.cmd("UNSUBSCRIBE Old").await;
    assert!(done.contains("OK"));
    let (u, _) = c.cmd("LSUB \"\" \"O*\"").await;
    assert!(u.is_empty());
    let (_, done) = c.cmd("STATUS Nope (MESSAGES)").await;
    assert!(done.contains("NO [NONEXISTENT]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_select_fetch_store_search() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let (_, done) = c.append("INBOX", "\\Flagged", SIMPLE).await;
    assert!(done.contains("OK [APPENDUID "), "{done}");
    assert!(done.contains(" 1] APPEND completed"), "{done}");
    // LITERAL+ and an internal date.
    let tag = c.next_tag();
    c.send(
        format!(
            "{tag} APPEND INBOX \"17-Jul-1996 02:44:25 -0700\" {{{}+}}\r\n",
            MULTIPART.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(MULTIPART).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains(" 2] APPEND completed"), "{done}");
    let (_, done) = c.append("Nope", "", SIMPLE).await;
    assert!(done.contains("NO [TRYCREATE]"), "{done}");

    let (u, done) = c.cmd("SELECT INBOX").await;
    assert!(done.contains("OK [READ-WRITE]"), "{done}");
    assert!(has(&u, "* 2 EXISTS") && has(&u, "* 2 RECENT"), "{u:?}");
    assert!(
        has(&u, "* OK [UIDVALIDITY ") && has(&u, "* OK [UIDNEXT 3]"),
        "{u:?}"
    );
    assert!(
        has(&u, "* OK [UNSEEN 1]") && has(&u, "PERMANENTFLAGS"),
        "{u:?}"
    );

    let (u, done) = c.cmd("FETCH 1 (FLAGS UID RFC822.SIZE ENVELOPE)").await;
    assert!(done.contains("OK"), "{done}");
    assert_eq!(u.len(), 1);
    assert!(
        u[0].starts_with("* 1 FETCH (FLAGS (\\Flagged \\Recent) UID 1 RFC822.SIZE "),
        "{}",
        u[0]
    );
    assert!(
        u[0].contains(&format!("RFC822.SIZE {}", SIMPLE.len())),
        "{}",
        u[0]
    );
    assert!(
        u[0].contains("ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" \"Lunch plans\""),
        "{}",
        u[0]
    );
    let (u, _) = c.cmd("FETCH 2 (INTERNALDATE BODYSTRUCTURE)").await;
    assert!(
        u[0].contains("INTERNALDATE \"17-Jul-1996 02:44:25 -0700\""),
        "{}",
        u[0]
    );
    assert!(
        u[0].contains("\"MIXED\"") || u[0].contains("\"mixed\""),
        "{}",
        u[0]
    );

    // PEEK leaves \Seen alone; BODY[] sets it and reports FLAGS.
    let (u, _) = c.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject)]").await;
    assert!(
        u[0].contains("BODY[HEADER.FIELDS (Subject)] {24}\r\nSubject: Lunch plans\r\n\r\n"),
        "{}",
        u[0]
    );
    assert!(!u[0].contains("\\Seen"));
    let (u, _) = c.cmd("FETCH 1 BODY[TEXT]<0.5>").await;
    assert!(u[0].contains("BODY[TEXT]<0> {5}\r\nShall"), "{}", u[0]);
    assert!(
        u[0].contains("FLAGS (\\Seen \\Flagged \\Recent)"),
        "{}",
        u[0]
    );
    let (u, _) = c.cmd("UID FETCH 2 (BODY.PEEK[1] BINARY.PEEK[2])").await;
    assert!(u[0].contains("UID 2"), "{}", u[0]);
    assert!(
        u[0].contains("BODY[1] {35}\r\nThe quarterly numbers are attached. BINARY"),
        "{}",
        u[0]
    );
    assert!(
        u[0].contains("BINARY[2] ~{5}\r\n\0\x01\x02\x03\x04"),
        "{:?}",
        u[0]
    );

    // STORE variants.
    let (u, _) = c.cmd("STORE 2 +FLAGS ($Work \\Answered)").await;
    assert!(has(&u, "* FLAGS (") && has(&u, "$Work"), "{u:?}");
    assert!(
        has(&u, "* 2 FETCH (FLAGS (\\Answered \\Recent $Work))"),
        "{u:?}"
    );
    let (u, _) = c.cmd("UID STORE 2 -FLAGS.SILENT (\\Answered)").await;
    assert!(u.is_empty(), "{u:?}");
    let (u, _) = c.cmd("STORE 1 FLAGS (\\Deleted)").await;
    assert!(has(&u, "* 1 FETCH (FLAGS (\\Deleted \\Recent))"), "{u:?}");
    let (_, done) = c.cmd("STORE 9 FLAGS (\\Deleted)").await;
    assert!(done.contains("BAD"), "{done}");

    // SEARCH: flags, content, headers, sizes, dates, NOT/OR, UID.
    let (u, _) = c.cmd("SEARCH DELETED").await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (u, _) = c.cmd("SEARCH BODY quarterly").await;
    assert_eq!(u, vec!["* SEARCH 2"]);
    let (u, _) = c.cmd("SEARCH FROM bob SUBJECT LUNCH").await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (u, _) = c.cmd("UID SEARCH OR KEYWORD $Work TEXT noon").await;
    assert_eq!(u, vec!["* SEARCH 1 2"]);
    let (u, _) = c.cmd("SEARCH NOT SEEN NOT DELETED").await;
    assert_eq!(u, vec!["* SEARCH 2"]);
    let (u, _) = c.cmd("SEARCH SENTBEFORE 8-Feb-1994").await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (u, _) = c.cmd("SEARCH BEFORE 1-Jan-2000").await;
    assert_eq!(u, vec!["* SEARCH 2"]);
    let (u, _) = c.cmd(&format!("SEARCH LARGER {}", SIMPLE.len())).await;
    assert_eq!(u, vec!["* SEARCH 2"]);
    let (u, _) = c.cmd("SEARCH CHARSET UTF-8 HEADER Message-ID lunch@").await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (_, done) = c.cmd("SEARCH CHARSET KOI8-R ALL").await;
    assert!(done.contains("NO [BADCHARSET (UTF-8 US-ASCII)]"), "{done}");
    let (u, _) = c.cmd("SEARCH 2:* UNDELETED").await;
    assert_eq!(u, vec!["* SEARCH 2"]);

    // EXAMINE is read-only: no \Seen side effect, no STORE.
    let (_, done) = c.cmd("EXAMINE INBOX").await;
    assert!(done.contains("OK [READ-ONLY]"), "{done}");
    let (_, done) = c.cmd("STORE 2 +FLAGS (\\Seen)").await;
    assert!(done.contains("NO"), "{done}");
    let (u, _) = c.cmd("FETCH 2 BODY[TEXT]").await;
    assert!(!u[0].contains("\\Seen"), "{}", u[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_move_expunge_close() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    for _ in 0..4 {
        c.append("INBOX", "", SIMPLE).await;
    }
    c.cmd("SELECT INBOX").await;
    let (_, done) = c.cmd("COPY 1:2 Archive").await;
    assert!(
        done.contains("OK [COPYUID ") && done.contains(" 1:2 1:2] COPY completed"),
        "{done}"
    );
    let (_, done) = c.cmd("COPY 1 Nope").await;
    assert!(done.contains("NO [TRYCREATE]"), "{done}");
    let (u, done) = c.cmd("UID MOVE 2:3 Trash").await;
    assert!(done.contains("OK"), "{done}");
    assert!(
        has(&u, "* OK [COPYUID ") && has(&u, " 2:3 1:2] Moved"),
        "{u:?}"
    );
    assert_eq!(
        u.iter().filter(|l| l.ends_with(" EXPUNGE")).count(),
        2,
        "{u:?}"
    );
    let expunges: Vec<&String> = u.iter().filter(|l| l.ends_with(" EXPUNGE")).collect();
    assert_eq!(expunges, ["* 3 EXPUNGE", "* 2 EXPUNGE"], "{u:?}");
    let (u, _) = c.cmd("UID SEARCH ALL").await;
    assert_eq!(u, vec!["* SEARCH 1 4"]);
    let (u, _) = c.cmd("STATUS Trash (MESSAGES)").await;
    assert_eq!(u, vec!["* STATUS Trash (MESSAGES 2)"]);

    c.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)").await;
    let (_, done) = c.cmd("UID EXPUNGE 4").await;
    assert!(done.contains("OK"), "{done}");
    let (u, done) = c.cmd("EXPUNGE").await;
    assert!(done.contains("OK"));
    assert_eq!(u, vec!["* 1 EXPUNGE"]);
    let (u, _) = c.cmd("SEARCH ALL").await;
    assert_eq!(u, vec!["* SEARCH"]);

    c.cmd("SELECT Archive").await;
    c.cmd("STORE 1 +FLAGS (\\Deleted)").await;
    let (u, done) = c.cmd("CLOSE").await;
    assert!(done.contains("OK") && u.is_empty(), "{u:?}");
    let (_, done) = c.cmd("FETCH 1 FLAGS").await;
    assert!(done.contains("BAD"), "{done}");
    let (u, _) = c.cmd("STATUS Archive (MESSAGES)").await;
    assert_eq!(u, vec!["* STATUS Archive (MESSAGES 1)"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunge_from_another_session_waits_for_an_allowed_point() {
    let env = start().await;
    let mut a = Client::login(env.addr).await;
    let mut b = Client::login(env.addr).await;
    for _ in 0..3 {
        a.append("INBOX", "", SIMPLE).await;
    }
    a.cmd("SELECT INBOX").await;
    b.cmd("SELECT INBOX").await;
    b.cmd("STORE 2 +FLAGS (\\Deleted)").await;
    b.cmd("EXPUNGE").await;
    // During FETCH the EXPUNGE is held back and message 2 keeps its number; its data
    // is gone, which the tagged NO says (RFC 2180 4.1.2, RFC 5530 EXPUNGEISSUED).
    let (u, done) = a.cmd("FETCH 1:3 UID").await;
    assert!(done.contains("NO [EXPUNGEISSUED]"), "{done}");
    assert!(!has(&u, "EXPUNGE"), "{u:?}");
    assert!(has(&u, "* 3 FETCH (UID 3)"), "{u:?}");
    // UID FETCH skips it quietly (UIDs that do not exist are ignored), and may carry
    // the EXPUNGE (RFC 3501 7.4.1), after its FETCH responses.
    let (u, done) = a.cmd("UID FETCH 1:3 FLAGS").await;
    assert!(done.contains("OK"), "{done}");
    assert_eq!(
        u,
        vec![
            "* 1 FETCH (UID 1 FLAGS (\\Recent))",
            "* 3 FETCH (UID 3 FLAGS (\\Recent))",
            "* 2 EXPUNGE"
        ]
    );
    let (u, _) = a.cmd("NOOP").await;
    assert!(u.is_empty(), "{u:?}");
    let (u, _) = a.cmd("FETCH 2 UID").await;
    assert_eq!(u, vec!["* 2 FETCH (UID 3)"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_a_delivery_from_another_connection() {
    let env = start().await;
    let mut a = Client::login(env.addr).await;
    let mut b = Client::login(env.addr).await;
    a.cmd("SELECT INBOX").await;
    a.send(b"i1 IDLE\r\n").await;
    let cont = a.read_response().await.unwrap();
    assert!(cont.starts_with("+ "), "{cont}");
    let started = std::time::Instant::now();
    b.append("INBOX", "", SIMPLE).await;
    let line = a.read_response().await.unwrap();
    assert_eq!(line, "* 1 EXISTS");
    assert!(started.elapsed() < Duration::from_secs(2));
    let line = a.read_response().await.unwrap();
    assert_eq!(line, "* 1 RECENT");
    b.cmd("SELECT INBOX").await;
    b.cmd("STORE 1 +FLAGS (\\Seen)").await;
    let line = a.read_response().await.unwrap();
    assert_eq!(line, "* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))");
    a.send(b"DONE\r\n").await;
    let (_, done) = a.until_tagged("i1").await;
    assert!(done.contains("OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_blob_fails_only_that_message() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    c.append("INBOX", "", SIMPLE).await;
    c.append("INBOX", "", MULTIPART).await;
    let path = env.slot.blob_path(&store::BlobHash::of(SIMPLE));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x20;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, bytes).unwrap();

    c.cmd("SELECT INBOX").await;
    let (u, done) = c.cmd("FETCH 1:2 (UID BODY.PEEK[])").await;
    assert_eq!(
        done,
        "t5 NO [SERVERBUG] message 1 is damaged and cannot be read; the operators have been alerted"
    );
    assert_eq!(u.len(), 1);
    assert!(u[0].starts_with("* 2 FETCH (UID 2 BODY[] "), "{}", u[0]);
    // Metadata of the damaged message is still served; the session keeps working.
    let (u, done) = c.cmd("FETCH 1 (UID FLAGS)").await;
    assert!(done.contains("OK"), "{done}");
    assert_eq!(u, vec!["* 1 FETCH (UID 1 FLAGS (\\Recent))"]);
    let (u, done) = c
        .cmd("UID FETCH 2 BODY.PEEK[HEADER.FIELDS (Subject)]")
        .await;
    assert!(
        done.contains("OK") && u[0].contains("Subject: Report"),
        "{u:?}"
    );
    let events = std::fs::read_to_string(env.dir.join("events.log")).unwrap_or_default();
    assert!(events.contains("corrupt_blob"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_bounded() {
    let env = start_with(|c| c.append_bytes_max = 1000).await;
    let mut c = Client::login(env.addr).await;
    let (_, done) = c.cmd("FROB").await;
    assert!(done.starts_with("t2 BAD"), "{done}");
    c.send(b"\r\n").await;
    let line = c.read_response().await.unwrap();
    assert!(line.starts_with("* BAD"), "{line}");
    // A literal over the limit is refused before it is sent.
    c.send(b"big APPEND INBOX {5000}\r\n").await;
    let line = c.read_response().await.unwrap();
    assert!(line.starts_with("big NO [TOOBIG]"), "{line}");
    let (_, done) = c.cmd("NOOP").await;
    assert!(done.contains("OK"));
    // Invalid UTF-8 in a mailbox name is BAD, never a panic.
    c.send(b"u1 SELECT \"\xff\xfe\"\r\n").await;
    let (_, done) = c.until_tagged("u1").await;
    assert!(done.contains("BAD") || done.contains("NO"), "{done}");
    // Twenty bad commands in a row end the session.
    for _ in 0..25 {
        c.send(b"x BOGUS\r\n").await;
    }
    let mut bye = false;
    while let Some(line) = c.read_response().await {
        if line.starts_with("* BYE") {
            bye = true;
        }
    }
    assert!(bye);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_session_is_logged_out_after_its_timer() {
    let env = start_with(|c| c.unauth_timeout = Duration::from_millis(300)).await;
    let mut c = Client::connect(env.addr).await;
    let line = c.read_response().await.unwrap();
    assert!(line.starts_with("* BYE Autologout"), "{line}");
    assert!(c.read_response().await.is_none());
}
