//! The IMAP extensions real clients use, each over a real socket, with the exchanges
//! taken from the RFCs' examples where they give one.

mod common;

use std::time::Duration;

use common::*;
use store::Op;

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn msg(
    from: &str,
    to: &str,
    subject: &str,
    date: &str,
    id: &str,
    refs: &str,
    body: &str,
) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}>\r\n"
    );
    if !refs.is_empty() {
        m.push_str(&format!("References: {refs}\r\n"));
    }
    m.push_str(&format!("\r\n{body}\r\n"));
    m.into_bytes()
}

async fn set_quota(env: &Env, bytes: u64) {
    env.slot
        .execute_async(Op::SetQuota {
            user: USER.into(),
            quota_bytes: bytes,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_every_extension() {
    let env = start().await;
    let mut c = Client::connect(env.addr).await;
    for cap in [
        "ESEARCH",
        "SEARCHRES",
        "WITHIN",
        "LIST-EXTENDED",
        "LIST-STATUS",
        "CHILDREN",
        "STATUS=SIZE",
        "SORT",
        "SORT=DISPLAY",
        "THREAD=REFERENCES",
        "THREAD=ORDEREDSUBJECT",
        "QUOTA",
        "QUOTA=RES-STORAGE",
        "BINARY",
        "MULTIAPPEND",
        "UTF8=ACCEPT",
        "OBJECTID",
        "PREVIEW",
        "CREATE-SPECIAL-USE",
        "NOTIFY",
    ] {
        assert!(
            c.greeting.contains(&format!(" {cap} ")) || c.greeting.contains(&format!(" {cap}]")),
            "{cap}: {}",
            c.greeting
        );
    }
    assert!(!c.greeting.contains("UNAUTHENTICATE") && !c.greeting.contains("COMPRESS"));
    let (_, done) = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(
        done.contains("UNAUTHENTICATE") && done.contains("COMPRESS=DEFLATE"),
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esearch_rfc4731_and_searchres_rfc5182() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    for i in 0..5 {
        let flags = if i % 2 == 0 { "\\Flagged" } else { "" };
        c.append("INBOX", flags, SIMPLE).await;
    }
    c.cmd("SELECT INBOX").await;
    // RFC 4731 3.1; the response echoes the command's tag.
    let mut esearch = async |text: &str| {
        let (u, done) = c.cmd(text).await;
        assert!(done.contains(" OK "), "{done}");
        let tag = done.split(' ').next().unwrap_or_default().to_string();
        u.iter()
            .map(|l| l.replace(&format!("(TAG \"{tag}\")"), "(TAG)"))
            .collect::<Vec<_>>()
    };
    let u = esearch("SEARCH RETURN (MIN COUNT) FLAGGED").await;
    assert_eq!(u, vec!["* ESEARCH (TAG) MIN 1 COUNT 3"]);
    let u = esearch("UID SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED").await;
    assert_eq!(u, vec!["* ESEARCH (TAG) UID MIN 1 MAX 5 COUNT 3 ALL 1,3,5"]);
    let u = esearch("SEARCH RETURN () UNFLAGGED").await;
    assert_eq!(u, vec!["* ESEARCH (TAG) ALL 2,4"]);
    let u = esearch("SEARCH RETURN (MIN MAX) DELETED").await;
    assert_eq!(u, vec!["* ESEARCH (TAG)"]);
    // RFC 5182 2.4: SAVE alone returns no ESEARCH; `$` then names the result.
    let (u, done) = c.cmd("SEARCH RETURN (SAVE) FLAGGED").await;
    assert!(u.is_empty() && done.contains("OK"), "{u:?}");
    let (u, _) = c.cmd("FETCH $ (UID)").await;
    assert_eq!(
        u,
        vec![
            "* 1 FETCH (UID 1)",
            "* 3 FETCH (UID 3)",
            "* 5 FETCH (UID 5)"
        ]
    );
    let (u, _) = c.cmd("UID SEARCH UID $ NOT 1").await;
    assert_eq!(u, vec!["* SEARCH 3 5"]);
    let (_, done) = c.cmd("STORE $ +FLAGS.SILENT (\\Seen)").await;
    assert!(done.contains("OK"));
    let (u, _) = c.cmd("SEARCH SEEN").await;
    assert_eq!(u, vec!["* SEARCH 1 3 5"]);
    // RFC 5182 2.4: with MIN/MAX only, only those are saved.
    c.cmd("SEARCH RETURN (MIN MAX SAVE) ALL").await;
    let (u, _) = c.cmd("UID FETCH $ (FLAGS)").await;
    assert_eq!(u.len(), 2, "{u:?}");
    assert!(
        u[0].starts_with("* 1 FETCH") && u[1].starts_with("* 5 FETCH"),
        "{u:?}"
    );
    // A new SELECT forgets the result: `$` is empty.
    c.cmd("SELECT INBOX").await;
    let (u, done) = c.cmd("FETCH $ (UID)").await;
    assert!(
        u.iter().all(|l| !l.contains("FETCH")) && done.contains("OK"),
        "{u:?} {done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_older_and_younger_rfc5032() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let tag = c.next_tag();
    c.send(
        format!(
            "{tag} APPEND INBOX \"01-Jan-2001 00:00:00 +0000\" {{{}+}}\r\n",
            SIMPLE.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(SIMPLE).await;
    c.send(b"\r\n").await;
    c.until_tagged(&tag).await;
    c.append("INBOX", "", SIMPLE).await;
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("SEARCH OLDER 3600").await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (u, _) = c.cmd("SEARCH YOUNGER 3600").await;
    assert_eq!(u, vec!["* SEARCH 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_extended_rfc5258_list_status_rfc5819_status_size_rfc8438() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    for m in [
        "Fruit",
        "Fruit/Apple",
        "Fruit/Banana",
        "Tofu",
        "Vegetable/Broccoli",
    ] {
        assert!(c.cmd(&format!("CREATE {m}")).await.1.contains("OK"));
    }
    for m in ["Fruit/Banana", "Tofu", "Vegetable/Broccoli", "Gone"] {
        c.cmd(&format!("SUBSCRIBE {m}")).await;
    }
    c.append("Tofu", "", SIMPLE).await;
    let (u, _) = c.cmd("LIST (SUBSCRIBED) \"\" \"*\"").await;
    assert!(
        has(&u, "(\\HasNoChildren \\Subscribed) \"/\" Fruit/Banana"),
        "{u:?}"
    );
    assert!(
        has(
            &u,
            "(\\NonExistent \\HasNoChildren \\Subscribed) \"/\" Gone"
        ),
        "{u:?}"
    );
    assert!(
        !has(&u, "\"/\" Fruit\r") && !u.iter().any(|l| l.ends_with("\"/\" Fruit")),
        "{u:?}"
    );
    // RFC 5258 example 5.5-style: RECURSIVEMATCH reports parents with CHILDINFO.
    let (u, _) = c.cmd("LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"").await;
    assert!(
        has(&u, "\"/\" Fruit (\"CHILDINFO\" (\"SUBSCRIBED\"))"),
        "{u:?}"
    );
    assert!(
        has(
            &u,
            "(\\NonExistent \\HasChildren) \"/\" Vegetable (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{u:?}"
    );
    assert!(has(&u, "\\Subscribed) \"/\" Tofu"), "{u:?}");
    assert!(!has(&u, "Fruit/Banana"), "{u:?}");
    let (_, done) = c.cmd("LIST (RECURSIVEMATCH) \"\" \"%\"").await;
    assert!(done.contains("BAD"), "{done}");
    // RETURN options, several patterns, LIST-STATUS with STATUS=SIZE.
    let (u, _) = c.cmd("LIST \"\" (\"Tofu\" \"Fruit\") RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))").await;
    let size = SIMPLE.len();
    assert_eq!(
        u,
        vec![
            "* LIST (\\HasChildren) \"/\" Fruit".to_string(),
            "* STATUS Fruit (MESSAGES 0 UNSEEN 0 SIZE 0)".to_string(),
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" Tofu".to_string(),
            format!("* STATUS Tofu (MESSAGES 1 UNSEEN 1 SIZE {size})"),
        ]
    );
    let (u, _) = c
        .cmd("LIST (SPECIAL-USE) \"\" \"*\" RETURN (SPECIAL-USE)")
        .await;
    assert!(
        u.iter().all(|l| l.contains("\\Sent")
            || l.contains("\\Trash")
            || l.contains("\\Drafts")
            || l.contains("\\Junk")
            || l.contains("\\Archive")),
        "{u:?}"
    );
    assert!(has(&u, "\\Sent"), "{u:?}");
    let (u, _) = c.cmd("STATUS Tofu (SIZE MESSAGES)").await;
    assert_eq!(u, vec![format!("* STATUS Tofu (SIZE {size} MESSAGES 1)")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_special_use_rfc6154() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    // RFC 6154 5.2.
    let (_, done) = c.cmd("CREATE MySpecial (USE (\\Drafts \\Sent))").await;
    assert!(done.contains("OK"), "{done}");
    let (u, _) = c.cmd("LIST \"\" MySpecial").await;
    assert_eq!(
        u,
        vec!["* LIST (\\HasNoChildren \\Drafts \\Sent) \"/\" MySpecial"]
    );
    let (_, done) = c.cmd("CREATE Other (USE (\\Important))").await;
    assert!(done.contains("NO [USEATTR]"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_rfc5256_and_sort_display_rfc5957() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let msgs = [
        msg(
            "\"Zed\" <a@x.org>",
            "c@x.org",
            "Re: beta",
            "Tue, 3 Feb 2004 10:00:00 +0000",
            "1@x",
            "",
            "one",
        ),
        msg(
            "\"Amy\" <z@x.org>",
            "b@x.org",
            "alpha",
            "Mon, 2 Feb 2004 10:00:00 +0000",
            "2@x",
            "",
            "two two",
        ),
        msg(
            "m@x.org",
            "a@x.org",
            "[list] Beta",
            "Wed, 4 Feb 2004 10:00:00 +0000",
            "3@x",
            "",
            "three three three",
        ),
    ];
    for m in &msgs {
        c.append("INBOX", "", m).await;
    }
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("SORT (SUBJECT) UTF-8 ALL").await;
    assert_eq!(u, vec!["* SORT 2 1 3"]);
    let (u, _) = c.cmd("SORT (REVERSE DATE) UTF-8 ALL").await;
    assert_eq!(u, vec!["* SORT 3 1 2"]);
    let (u, _) = c.cmd("SORT (FROM) UTF-8 ALL").await;
    assert_eq!(u, vec!["* SORT 1 3 2"]);
    let (u, _) = c.cmd("SORT (TO SIZE) US-ASCII ALL").await;
    assert_eq!(u, vec!["* SORT 3 2 1"]);
    let (u, _) = c.cmd("SORT (DISPLAYFROM) UTF-8 ALL").await;
    assert_eq!(u, vec!["* SORT 2 3 1"]);
    let (u, _) = c.cmd("UID SORT (REVERSE SIZE) UTF-8 NOT 2").await;
    assert_eq!(u, vec!["* SORT 3 1"]);
    let (u, _) = c.cmd("SORT (SUBJECT) UTF-8 TEXT \"not in mailbox\"").await;
    assert_eq!(u, vec!["* SORT"]);
    let (_, done) = c.cmd("SORT (SUBJECT) KOI8-R ALL").await;
    assert!(done.contains("NO [BADCHARSET"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_references_and_orderedsubject_rfc5256() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let d = |n: u32| format!("Mon, {n} Feb 2004 10:00:00 +0000");
    let msgs = [
        msg("a@x", "b@x", "Lunch", &d(1), "a@x", "", "."),
        msg("b@x", "a@x", "Re: Lunch", &d(2), "b@x", "<a@x>", "."),
        msg("c@x", "a@x", "Re: Lunch", &d(3), "c@x", "<a@x> <b@x>", "."),
        msg("d@x", "a@x", "Other", &d(4), "d@x", "", "."),
        msg("e@x", "a@x", "Re: Lunch", &d(5), "e@x", "<a@x>", "."),
    ];
    for m in &msgs {
        c.append("INBOX", "", m).await;
    }
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("THREAD REFERENCES UTF-8 ALL").await;
    assert_eq!(u, vec!["* THREAD (1 (2 3)(5))(4)"]);
    let (u, _) = c.cmd("THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert_eq!(u, vec!["* THREAD (1 (2)(3)(5))(4)"]);
    let (u, _) = c.cmd("UID THREAD REFERENCES US-ASCII NOT 1").await;
    // 1 is missing: its replies hang under a dummy (RFC 5256 2.2 step 3).
    assert_eq!(u, vec!["* THREAD ((2 3)(5))(4)"]);
    let (u, _) = c.cmd("THREAD REFERENCES UTF-8 DELETED").await;
    assert_eq!(u, vec!["* THREAD"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_rfc9208_and_overquota() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let (u, _) = c.cmd("GETQUOTAROOT INBOX").await;
    assert_eq!(u, vec!["* QUOTAROOT INBOX \"\"", "* QUOTA \"\" ()"]);
    c.append("INBOX", "", SIMPLE).await;
    set_quota(&env, 3 * 1024).await;
    let (u, done) = c.cmd("GETQUOTA \"\"").await;
    assert_eq!(u, vec!["* QUOTA \"\" (STORAGE 1 3)"]);
    assert!(done.contains("OK"));
    let (_, done) = c.cmd("GETQUOTA other").await;
    assert!(done.contains("NO"), "{done}");
    let (_, done) = c.cmd("SETQUOTA \"\" (STORAGE 10)").await;
    assert!(done.contains("NO [NOPERM]"), "{done}");
    let big = vec![b'x'; 4000];
    let mut m = b"Subject: big\r\n\r\n".to_vec();
    m.extend_from_slice(&big);
    let (_, done) = c.append("INBOX", "", &m).await;
    assert!(done.contains("NO [OVERQUOTA]"), "{done}");
    // COPY past the limit too (each copy counts).
    for _ in 0..8 {
        c.append("Trash", "", SIMPLE).await;
    }
    set_quota(&env, 9 * SIMPLE.len() as u64 + 100).await;
    c.cmd("SELECT Trash").await;
    let (_, done) = c.cmd("COPY 1:* INBOX").await;
    assert!(done.contains("NO [OVERQUOTA]"), "{done}");
    let (u, _) = c.cmd("STATUS INBOX (MESSAGES)").await;
    assert_eq!(u, vec!["* STATUS INBOX (MESSAGES 1)"]);
    // MOVE does not change usage, so it is allowed.
    let (_, done) = c.cmd("MOVE 1 INBOX").await;
    assert!(done.contains("OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiappend_rfc3502_is_all_or_nothing() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let tag = c.next_tag();
    let (a, b) = (SIMPLE, MULTIPART);
    c.send(format!("{tag} APPEND INBOX (\\Seen) {{{}+}}\r\n", a.len()).as_bytes())
        .await;
    c.send(a).await;
    c.send(format!(" \"7-Feb-1994 22:43:04 -0800\" {{{}+}}\r\n", b.len()).as_bytes())
        .await;
    c.send(b).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(
        done.contains("OK [APPENDUID ") && done.contains(" 1:2] "),
        "{done}"
    );
    // Second message over quota: the first is not kept either.
    set_quota(&env, (a.len() + b.len() + 1000) as u64).await;
    let big = vec![b'y'; 2000];
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND INBOX {{{}+}}\r\n", a.len()).as_bytes())
        .await;
    c.send(a).await;
    c.send(format!(" {{{}+}}\r\n", big.len()).as_bytes()).await;
    c.send(&big).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains("NO [OVERQUOTA]"), "{done}");
    let (u, _) = c.cmd("STATUS INBOX (MESSAGES UIDNEXT)").await;
    assert_eq!(u, vec!["* STATUS INBOX (MESSAGES 2 UIDNEXT 3)"]);
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND Nope {{{}+}}\r\n", a.len()).as_bytes())
        .await;
    c.send(a).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains("NO [TRYCREATE]"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_append_rfc3516_keeps_nul_bytes() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let m: &[u8] = b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\n\x02\r\n--b--\r\n";
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND INBOX ~{{{}}}\r\n", m.len()).as_bytes())
        .await;
    let cont = c.read_response().await.unwrap();
    assert!(cont.starts_with('+'), "{cont}");
    c.send(m).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains("OK [APPENDUID"), "{done}");
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])").await;
    assert_eq!(
        u,
        vec!["* 1 FETCH (BINARY.SIZE[2] 5 BINARY[2] ~{5}\r\n\0\x01\r\n\x02)"]
    );
    let (u, _) = c.cmd("FETCH 1 (BODY.PEEK[2.MIME])").await;
    assert!(has(&u, "Content-Transfer-Encoding: base64"), "{u:?}");
    let (u, _) = c.cmd("FETCH 1 (BODY.PEEK[])").await;
    assert!(!u[0].contains('\0'), "{u:?}");
    let bad: &[u8] = b"Subject: \x00\r\n\r\nx\r\n";
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND INBOX ~{{{}+}}\r\n", bad.len()).as_bytes())
        .await;
    c.send(bad).await;
    c.send(b"\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains("NO [UNKNOWN-CTE]"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticate_rfc8437_returns_to_the_greeting_state() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    c.cmd("SELECT INBOX").await;
    let (_, done) = c.cmd("UNAUTHENTICATE").await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = c.cmd("SELECT INBOX").await;
    assert!(done.contains("BAD"), "{done}");
    let (u, _) = c.cmd("CAPABILITY").await;
    assert!(
        u[0].contains("AUTH=PLAIN") && !u[0].contains("UNAUTHENTICATE"),
        "{u:?}"
    );
    let (_, done) = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = c.cmd("SELECT INBOX").await;
    assert!(done.contains("OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_accept_rfc6855_names_in_utf8() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    c.cmd("CREATE \"R&AOk-sum&AOk-\"").await;
    let (u, _) = c.cmd("ENABLE UTF8=ACCEPT").await;
    assert_eq!(u, vec!["* ENABLED UTF8=ACCEPT"]);
    let (u, _) = c.cmd("LIST \"\" \"R*\"").await;
    assert_eq!(u, vec!["* LIST (\\HasNoChildren) \"/\" \"Résumé\""]);
    let (_, done) = c.cmd("CREATE \"Ärger\"").await;
    assert!(done.contains("OK"), "{done}");
    let (u, _) = c.cmd("STATUS \"Ärger\" (MESSAGES)").await;
    assert_eq!(u, vec!["* STATUS \"Ärger\" (MESSAGES 0)"]);
    // An 8-bit header through the RFC 6855 APPEND form.
    let m = "Subject: Grüße\r\n\r\nhallo\r\n".as_bytes();
    let tag = c.next_tag();
    c.send(format!("{tag} APPEND INBOX UTF8 (~{{{}+}}\r\n", m.len()).as_bytes())
        .await;
    c.send(m).await;
    c.send(b")\r\n").await;
    let (_, done) = c.until_tagged(&tag).await;
    assert!(done.contains("OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objectid_rfc8474() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    let (_, done) = c.cmd("CREATE foo").await;
    let id = done
        .split("[MAILBOXID (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("MAILBOXID in CREATE")
        .to_string();
    let (u, _) = c.cmd("STATUS foo (MAILBOXID)").await;
    assert_eq!(u, vec![format!("* STATUS foo (MAILBOXID ({id}))")]);
    c.cmd("RENAME foo bar").await;
    let (u, _) = c.cmd("STATUS bar (MAILBOXID)").await;
    assert_eq!(u, vec![format!("* STATUS bar (MAILBOXID ({id}))")]);
    let (u, _) = c.cmd("SELECT bar").await;
    assert!(has(&u, &format!("* OK [MAILBOXID ({id})]")), "{u:?}");
    c.append("INBOX", "", SIMPLE).await;
    c.append("INBOX", "", MULTIPART).await;
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("FETCH 1:2 (EMAILID THREADID)").await;
    let emailid = u[0]
        .split("EMAILID (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_string();
    assert!(u[0].ends_with("THREADID NIL)"), "{u:?}");
    assert!(!u[1].contains(&emailid));
    let (u, _) = c.cmd(&format!("SEARCH EMAILID {emailid}")).await;
    assert_eq!(u, vec!["* SEARCH 1"]);
    let (u, _) = c.cmd("SEARCH THREADID T1").await;
    assert_eq!(u, vec!["* SEARCH"]);
    c.cmd("COPY 1 bar").await;
    c.cmd("SELECT bar").await;
    let (u, _) = c.cmd("FETCH 1 (EMAILID)").await;
    assert_eq!(u, vec![format!("* 1 FETCH (EMAILID ({emailid}))")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_rfc8970() {
    let env = start().await;
    let mut c = Client::login(env.addr).await;
    c.append("INBOX", "", SIMPLE).await;
    c.append("INBOX", "", MULTIPART).await;
    c.append("INBOX", "", b"Content-Type: image/png\r\n\r\nPNG\r\n")
        .await;
    c.cmd("SELECT INBOX").await;
    let (u, _) = c.cmd("FETCH 1:3 (PREVIEW)").await;
    assert_eq!(
        u,
        vec![
            "* 1 FETCH (PREVIEW \"Shall we meet at noon?\")",
            "* 2 FETCH (PREVIEW \"The quarterly numbers are attached.\")",
            "* 3 FETCH (PREVIEW NIL)",
        ]
    );
    let (u, _) = c.cmd("UID FETCH 1 (PREVIEW (LAZY))").await;
    assert_eq!(
        u,
        vec!["* 1 FETCH (UID 1 PREVIEW \"Shall we meet at noon?\")"]
    );
    // PREVIEW does not set \Seen.
    let (u, _) = c.cmd("FETCH 1 (FLAGS)").await;
    assert_eq!(u, vec!["* 1 FETCH (FLAGS (\\Recent))"]);
}

/// A raw client that switches to DEFLATE after COMPRESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_deflate_rfc4978() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start().await;
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let mut text = String::new();
    async fn read_until(
        s: &mut tokio::net::TcpStream,
        buf: &mut [u8],
        text: &mut String,
        needle: &str,
    ) {
        while !text.contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed; got {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    read_until(&mut s, &mut buf, &mut text, "\r\n").await;
    s.write_all(format!("a LOGIN {USER} {PASS}\r\nb COMPRESS DEFLATE\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut s, &mut buf, &mut text, "b OK").await;
    assert!(text.ends_with("b OK DEFLATE active\r\n"), "{text}");
    let mut deflate = Compress::new(Compression::default(), false);
    let mut inflate = Decompress::new(false);
    let mut out = Vec::with_capacity(4096);
    deflate
        .compress_vec(
            b"c NOOP\r\nd COMPRESS DEFLATE\r\ne LIST \"\" \"*\"\r\n",
            &mut out,
            FlushCompress::Sync,
        )
        .unwrap();
    s.write_all(&out).await.unwrap();
    let mut plain = Vec::new();
    while !String::from_utf8_lossy(&plain).contains("e OK") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        let mut chunk = Vec::with_capacity(65536);
        inflate
            .decompress_vec(&buf[..n], &mut chunk, FlushDecompress::Sync)
            .unwrap();
        plain.extend_from_slice(&chunk);
    }
    let plain = String::from_utf8_lossy(&plain);
    assert!(plain.contains("c OK"), "{plain}");
    assert!(plain.contains("d NO [COMPRESSIONACTIVE]"), "{plain}");
    assert!(
        plain.contains("* LIST (\\HasNoChildren) \"/\" INBOX"),
        "{plain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_rfc5465_selected_and_inbox() {
    let env = start().await;
    let mut a = Client::login(env.addr).await;
    let mut b = Client::login(env.addr).await;
    a.cmd("CREATE Work").await;
    a.cmd("SELECT Work").await;
    let (_, done) = a.cmd("NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange)) (inboxes (MessageNew MessageExpunge MailboxName))").await;
    assert!(done.contains("OK"), "{done}");
    // A delivery to INBOX (not selected) arrives as STATUS, with no command from A.
    b.append("INBOX", "", SIMPLE).await;
    let line = a.read_response().await.unwrap();
    assert!(
        line.starts_with("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 "),
        "{line}"
    );
    // A new message in the selected mailbox: EXISTS, then the FETCH asked for.
    b.append("Work", "", SIMPLE).await;
    let mut lines = Vec::new();
    while !has(&lines, "FETCH") {
        lines.push(a.read_response().await.unwrap());
    }
    assert!(has(&lines, "* 1 EXISTS"), "{lines:?}");
    assert!(has(&lines, "* 1 FETCH (UID 1 FLAGS ("), "{lines:?}");
    // Mailbox created by another session.
    b.cmd("CREATE Projects").await;
    let line = a.read_response().await.unwrap();
    assert_eq!(line, "* LIST (\\HasNoChildren) \"/\" Projects");
    b.cmd("RENAME Projects Archive2").await;
    let line = a.read_response().await.unwrap();
    assert_eq!(
        line,
        "* LIST (\\HasNoChildren) \"/\" Archive2 (\"OLDNAME\" (Projects))"
    );
    b.cmd("DELETE Archive2").await;
    let line = a.read_response().await.unwrap();
    assert_eq!(line, "* LIST (\\NonExistent) \"/\" Archive2");
    // Unsupported events and malformed sets.
    let (_, done) = a.cmd("NOTIFY SET (personal (AnnotationChange))").await;
    assert!(
        done.contains(
            "NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"
        ),
        "{done}"
    );
    let (_, done) = a.cmd("NOTIFY SET (selected (MessageNew))").await;
    assert!(done.contains("BAD"), "{done}");
    let (_, done) = a
        .cmd("NOTIFY SET STATUS (mailboxes INBOX (MessageNew MessageExpunge))")
        .await;
    assert!(done.contains("OK"), "{done}");
    let (_, done) = a.cmd("NOTIFY NONE").await;
    assert!(done.contains("OK"), "{done}");
    b.append("INBOX", "", SIMPLE).await;
    let (u, _) = a.cmd("NOOP").await;
    assert!(!has(&u, "STATUS"), "{u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_set_status_reports_watched_mailboxes_first() {
    let env = start().await;
    let mut a = Client::login(env.addr).await;
    a.append("INBOX", "", SIMPLE).await;
    let (u, done) = a
        .cmd("NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge))")
        .await;
    assert!(done.contains("OK"));
    assert!(
        has(&u, "* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY "),
        "{u:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_rate_limit_answers_no_limit() {
    let env = start_with(|c| c.commands_per_second = 2).await;
    let mut c = Client::login(env.addr).await;
    let mut limited = None;
    for i in 0..20 {
        let (_, done) = c.cmd("NOOP").await;
        if done.contains("NO [LIMIT]") {
            limited = Some(i);
            break;
        }
    }
    // Burst of 5 s x 2/s = 10 commands, LOGIN included.
    assert_eq!(limited, Some(9));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, done) = c.cmd("NOOP").await;
    assert!(done.contains("OK"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_ip_and_per_user() {
    let env = start_with(|c| {
        c.connections_per_ip_max = 3;
        c.connections_per_user_max = 1;
    })
    .await;
    let _a = Client::login(env.addr).await;
    let mut b = Client::connect(env.addr).await;
    let (_, done) = b.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(done.contains("NO [LIMIT]"), "{done}");
    let _c = Client::connect(env.addr).await;
    let mut d = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut d, &mut buf)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("* BYE [UNAVAILABLE] Too many connections"),
        "{text}"
    );
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, done) = b.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(done.contains("OK"), "{done}");
}
