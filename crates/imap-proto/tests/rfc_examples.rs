//! Commands from the RFC examples, each parsed to the AST we expect.

use imap_proto::*;

fn parse(s: &str) -> CommandKind {
    parse_bytes(s.as_bytes())
}

fn parse_bytes(s: &[u8]) -> CommandKind {
    match parse_command(s, &ParseOptions::default()) {
        Ok(c) => c.kind,
        Err(e) => panic!("{:?} failed: {e:?}", String::from_utf8_lossy(s)),
    }
}

fn err(s: &str) -> ParseError {
    parse_command(s.as_bytes(), &ParseOptions::default()).expect_err(s)
}

fn set(ranges: &[(u32, u32)]) -> SequenceSet {
    SequenceSet {
        ranges: ranges
            .iter()
            .map(|&(start, end)| SeqRange { start, end })
            .collect(),
    }
}

fn seq(ranges: &[(u32, u32)]) -> SeqOrSaved {
    SeqOrSaved::Set(set(ranges))
}

fn date(day: u8, month: u8, year: u16) -> Date {
    Date { year, month, day }
}

#[test]
fn rfc3501_any_state_and_auth_commands() {
    assert_eq!(parse("a001 CAPABILITY\r\n"), CommandKind::Capability);
    assert_eq!(parse("a002 noop\r\n"), CommandKind::Noop);
    assert_eq!(parse("A023 LOGOUT\r\n"), CommandKind::Logout);
    assert_eq!(parse("a002 STARTTLS\r\n"), CommandKind::StartTls);
    assert_eq!(
        parse("A001 AUTHENTICATE GSSAPI\r\n"),
        CommandKind::Authenticate {
            mechanism: "GSSAPI".into(),
            initial: None
        }
    );
    assert_eq!(
        parse("a001 LOGIN SMITH SESAME\r\n"),
        CommandKind::Login {
            user: b"SMITH".to_vec(),
            pass: b"SESAME".to_vec()
        }
    );
    assert_eq!(
        parse("a001 LOGIN \"fred foo\" {4}\r\np\"s\\\r\n"),
        CommandKind::Login {
            user: b"fred foo".to_vec(),
            pass: b"p\"s\\".to_vec()
        }
    );
    let c = parse_command(b"A1 noop", &ParseOptions::default()).unwrap();
    assert_eq!(c.tag, "A1");
}

#[test]
fn rfc3501_mailbox_commands() {
    let sel = |m: &str| CommandKind::Select {
        mailbox: m.into(),
        condstore: false,
        qresync: None,
    };
    assert_eq!(parse("A142 SELECT INBOX\r\n"), sel("INBOX"));
    assert_eq!(parse("A142 select inbox\r\n"), sel("INBOX"));
    assert_eq!(parse("A142 SELECT \"InBox\"\r\n"), sel("INBOX"));
    assert_eq!(
        parse("A932 EXAMINE blurdybloop\r\n"),
        CommandKind::Examine {
            mailbox: "blurdybloop".into(),
            condstore: false,
            qresync: None
        }
    );
    assert_eq!(
        parse("A003 CREATE owatagusiam/\r\n"),
        CommandKind::Create {
            mailbox: "owatagusiam/".into(),
            special_use: vec![]
        }
    );
    assert_eq!(
        parse("A683 DELETE blurdybloop\r\n"),
        CommandKind::Delete("blurdybloop".into())
    );
    assert_eq!(
        parse("A683 RENAME blurdybloop sarasoop\r\n"),
        CommandKind::Rename {
            from: "blurdybloop".into(),
            to: "sarasoop".into()
        }
    );
    assert_eq!(
        parse("A002 SUBSCRIBE #news.comp.mail.mime\r\n"),
        CommandKind::Subscribe("#news.comp.mail.mime".into())
    );
    assert_eq!(
        parse("A002 UNSUBSCRIBE #news.comp.mail.mime\r\n"),
        CommandKind::Unsubscribe("#news.comp.mail.mime".into())
    );
    let list = |r: &str, p: &str| {
        CommandKind::List(ListArgs {
            reference: r.into(),
            patterns: vec![p.into()],
            ..Default::default()
        })
    };
    assert_eq!(parse("A101 LIST \"\" \"\"\r\n"), list("", ""));
    assert_eq!(
        parse("A102 LIST #news.comp.mail.misc \"\"\r\n"),
        list("#news.comp.mail.misc", "")
    );
    assert_eq!(parse("A202 LIST ~/Mail/ %\r\n"), list("~/Mail/", "%"));
    assert_eq!(parse("A203 LIST \"\" *\r\n"), list("", "*"));
    assert_eq!(
        parse("A002 LSUB \"#news.\" \"comp.mail.*\"\r\n"),
        CommandKind::Lsub {
            reference: "#news.".into(),
            pattern: "comp.mail.*".into()
        }
    );
    assert_eq!(
        parse("A042 STATUS blurdybloop (UIDNEXT MESSAGES)\r\n"),
        CommandKind::Status {
            mailbox: "blurdybloop".into(),
            items: vec![StatusItem::UidNext, StatusItem::Messages]
        }
    );
}

#[test]
fn rfc3501_append_and_multiappend() {
    let body = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n\r\nHello Joe\r\n";
    let cmd = format!(
        "A003 APPEND saved-messages (\\Seen) {{{}}}\r\n{body}\r\n",
        body.len()
    );
    assert_eq!(
        parse(&cmd),
        CommandKind::Append {
            mailbox: "saved-messages".into(),
            messages: vec![AppendMessage {
                flags: vec![Flag::Seen],
                date: None,
                data: body.as_bytes().to_vec(),
                binary: false
            }]
        }
    );
    let cmd = "A1 APPEND INBOX (\\Seen $MDNSent) \" 7-Feb-1994 21:52:25 -0800\" {5+}\r\nhello \"17-Jul-1996 02:44:25 +0130\" ~{3}\r\na\0b\r\n";
    let dt = |d, h, m, s, z| DateTime {
        date: d,
        hour: h,
        minute: m,
        second: s,
        zone_minutes: z,
    };
    assert_eq!(
        parse(cmd),
        CommandKind::Append {
            mailbox: "INBOX".into(),
            messages: vec![
                AppendMessage {
                    flags: vec![Flag::Seen, Flag::Keyword("$MDNSent".into())],
                    date: Some(dt(date(7, 2, 1994), 21, 52, 25, -480)),
                    data: b"hello".to_vec(),
                    binary: false
                },
                AppendMessage {
                    flags: vec![],
                    date: Some(dt(date(17, 7, 1996), 2, 44, 25, 90)),
                    data: b"a\0b".to_vec(),
                    binary: true
                }
            ]
        }
    );
    // RFC 6855 UTF8 data item.
    assert!(matches!(
        parse("A1 APPEND INBOX UTF8 (~{2}\r\nhi)\r\n"),
        CommandKind::Append { messages, .. } if messages[0].binary && messages[0].data == b"hi"
    ));
    assert!(err("A1 APPEND INBOX\r\n").message.contains("literal"));
    assert!(
        err("A1 APPEND INBOX {10}\r\nabc\r\n")
            .message
            .contains("only")
    );
}

#[test]
fn rfc3501_selected_state_commands() {
    assert_eq!(parse("FXXZ CHECK\r\n"), CommandKind::Check);
    assert_eq!(parse("A341 CLOSE\r\n"), CommandKind::Close);
    assert_eq!(parse("A341 UNSELECT\r\n"), CommandKind::Unselect);
    assert_eq!(parse("A202 EXPUNGE\r\n"), CommandKind::Expunge);
    assert_eq!(
        parse("A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"\r\n"),
        CommandKind::Search {
            uid: false,
            args: SearchArgs {
                ret: None,
                charset: None,
                keys: vec![
                    SearchKey::Flagged,
                    SearchKey::Since(date(1, 2, 1994)),
                    SearchKey::Not(Box::new(SearchKey::From(b"Smith".to_vec())))
                ]
            }
        }
    );
    assert_eq!(
        parse_bytes(b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\n\xe5\x8f\xb0\xe5\x8c\x97\r\n"),
        CommandKind::Search {
            uid: false,
            args: SearchArgs {
                ret: None,
                charset: Some("UTF-8".into()),
                keys: vec![SearchKey::Text("台北".as_bytes().to_vec())]
            }
        }
    );
    assert_eq!(
        parse("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n"),
        CommandKind::Fetch {
            uid: false,
            args: FetchArgs {
                set: seq(&[(2, 4)]),
                attrs: vec![
                    FetchAttr::Flags,
                    FetchAttr::BodySection {
                        section: Section {
                            part: vec![],
                            text: Some(SectionText::HeaderFields(vec![
                                "DATE".into(),
                                "FROM".into()
                            ]))
                        },
                        partial: None,
                        peek: false
                    }
                ],
                changed_since: None,
                vanished: false
            }
        }
    );
    assert_eq!(
        parse("A003 STORE 2:4 +FLAGS (\\Deleted)\r\n"),
        CommandKind::Store {
            uid: false,
            set: seq(&[(2, 4)]),
            mode: StoreMode::Add,
            silent: false,
            flags: vec![Flag::Deleted],
            unchanged_since: None
        }
    );
    assert_eq!(
        parse("A003 STORE 1 -flags.silent \\Seen $Junk\r\n"),
        CommandKind::Store {
            uid: false,
            set: seq(&[(1, 1)]),
            mode: StoreMode::Remove,
            silent: true,
            flags: vec![Flag::Seen, Flag::Keyword("$Junk".into())],
            unchanged_since: None
        }
    );
    assert_eq!(
        parse("A003 COPY 2:4 MEETING\r\n"),
        CommandKind::Copy {
            uid: false,
            set: seq(&[(2, 4)]),
            mailbox: "MEETING".into()
        }
    );
    assert_eq!(
        parse("A999 UID FETCH 4827313:4828442 FLAGS\r\n"),
        CommandKind::Fetch {
            uid: true,
            args: FetchArgs {
                set: seq(&[(4827313, 4828442)]),
                attrs: vec![FetchAttr::Flags],
                changed_since: None,
                vanished: false
            }
        }
    );
}

#[test]
fn fetch_macros_sections_and_partials() {
    let attrs = |s: &str| match parse(s) {
        CommandKind::Fetch { args, .. } => args.attrs,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        attrs("a FETCH 1 ALL\r\n"),
        vec![
            FetchAttr::Flags,
            FetchAttr::InternalDate,
            FetchAttr::Rfc822Size,
            FetchAttr::Envelope
        ]
    );
    assert_eq!(
        attrs("a FETCH 1 fast\r\n"),
        vec![
            FetchAttr::Flags,
            FetchAttr::InternalDate,
            FetchAttr::Rfc822Size
        ]
    );
    assert_eq!(attrs("a FETCH 1 FULL\r\n").last(), Some(&FetchAttr::Body));
    assert_eq!(
        attrs(
            "a FETCH 1:* (BODY.PEEK[1.2.MIME]<0.1024> body[] BODY BODYSTRUCTURE RFC822.HEADER)\r\n"
        ),
        vec![
            FetchAttr::BodySection {
                section: Section {
                    part: vec![1, 2],
                    text: Some(SectionText::Mime)
                },
                partial: Some(Partial {
                    origin: 0,
                    count: 1024
                }),
                peek: true
            },
            FetchAttr::BodySection {
                section: Section::default(),
                partial: None,
                peek: false
            },
            FetchAttr::Body,
            FetchAttr::BodyStructure,
            FetchAttr::Rfc822Header,
        ]
    );
    assert_eq!(
        attrs("a FETCH 1 BODY[3.HEADER.FIELDS.NOT (Subject \"X-Spam\")]\r\n"),
        vec![FetchAttr::BodySection {
            section: Section {
                part: vec![3],
                text: Some(SectionText::HeaderFieldsNot(vec![
                    "Subject".into(),
                    "X-Spam".into()
                ]))
            },
            partial: None,
            peek: false
        }]
    );
    assert_eq!(
        attrs("a FETCH 1 BODY[4.TEXT]\r\n"),
        vec![FetchAttr::BodySection {
            section: Section {
                part: vec![4],
                text: Some(SectionText::Text)
            },
            partial: None,
            peek: false
        }]
    );
    // RFC 3516.
    assert_eq!(
        attrs("a FETCH 1 (BINARY.PEEK[1.2]<0.100> BINARY[] BINARY.SIZE[1])\r\n"),
        vec![
            FetchAttr::Binary {
                part: vec![1, 2],
                partial: Some(Partial {
                    origin: 0,
                    count: 100
                }),
                peek: true
            },
            FetchAttr::Binary {
                part: vec![],
                partial: None,
                peek: false
            },
            FetchAttr::BinarySize { part: vec![1] },
        ]
    );
    assert!(err("a FETCH 1 BODY[MIME]\r\n").message.contains("MIME"));
    assert!(err("a FETCH 0 FLAGS\r\n").message.contains("zero"));
    assert!(err("a FETCH 1 (FLAGS\r\n").message.contains("expected"));
}

#[test]
fn rfc4731_esearch_and_rfc5182_searchres() {
    assert_eq!(
        parse("A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"\r\n"),
        CommandKind::Search {
            uid: false,
            args: SearchArgs {
                ret: Some(SearchReturn {
                    min: true,
                    count: true,
                    ..Default::default()
                }),
                charset: None,
                keys: vec![
                    SearchKey::Flagged,
                    SearchKey::Since(date(1, 2, 1994)),
                    SearchKey::Not(Box::new(SearchKey::From(b"Smith".to_vec())))
                ]
            }
        }
    );
    assert!(matches!(
        parse("A283 UID SEARCH RETURN () FLAGGED\r\n"),
        CommandKind::Search { uid: true, args } if args.ret == Some(SearchReturn::default())
    ));
    assert!(matches!(
        parse("A282 SEARCH RETURN (SAVE) FLAGGED\r\n"),
        CommandKind::Search { args, .. } if args.ret.is_some_and(|r| r.save)
    ));
    assert!(matches!(
        parse("A283 FETCH $ (UID INTERNALDATE FLAGS RFC822.SIZE)\r\n"),
        CommandKind::Fetch { args, .. } if args.set == SeqOrSaved::Saved
    ));
    assert_eq!(
        parse("A284 UID COPY $ foo\r\n"),
        CommandKind::Copy {
            uid: true,
            set: SeqOrSaved::Saved,
            mailbox: "foo".into()
        }
    );
    assert!(matches!(
        parse("A285 SEARCH UID $ SMALLER 100\r\n"),
        CommandKind::Search { args, .. } if args.keys == vec![SearchKey::Uid(SeqOrSaved::Saved), SearchKey::Smaller(100)]
    ));
}

#[test]
fn search_keys_nesting_and_dates() {
    let keys = |s: &str| match parse(s) {
        CommandKind::Search { args, .. } => args.keys,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        keys(
            "a SEARCH OR (SEEN FLAGGED) NOT (DELETED 1:5,*) HEADER X-Foo \"\" SENTON \"01-Jan-2000\"\r\n"
        ),
        vec![
            SearchKey::Or(
                Box::new(SearchKey::And(vec![SearchKey::Seen, SearchKey::Flagged])),
                Box::new(SearchKey::Not(Box::new(SearchKey::And(vec![
                    SearchKey::Deleted,
                    SearchKey::Seq(seq(&[(1, 5), (STAR, STAR)]))
                ]))))
            ),
            SearchKey::Header("X-Foo".into(), vec![]),
            SearchKey::SentOn(date(1, 1, 2000)),
        ]
    );
    assert_eq!(
        keys("a search keyword $Forwarded unkeyword Junk larger 0 before 29-feb-2000 uid 1:2\r\n"),
        vec![
            SearchKey::Keyword("$Forwarded".into()),
            SearchKey::Unkeyword("Junk".into()),
            SearchKey::Larger(0),
            SearchKey::Before(date(29, 2, 2000)),
            SearchKey::Uid(seq(&[(1, 2)])),
        ]
    );
    // RFC 5032 WITHIN.
    assert_eq!(
        keys("a1 SEARCH UNSEEN YOUNGER 259200\r\n"),
        vec![SearchKey::Unseen, SearchKey::Younger(259200)]
    );
    assert_eq!(keys("a1 SEARCH OLDER 60\r\n"), vec![SearchKey::Older(60)]);
    assert!(
        err("a SEARCH SINCE 29-Feb-1900\r\n")
            .message
            .contains("day")
    );
    assert!(
        err("a SEARCH SINCE 1-Foo-1900\r\n")
            .message
            .contains("month")
    );
    assert!(err("a SEARCH BOGUS\r\n").message.contains("BOGUS"));
    let deep = format!("a SEARCH {}ALL{}\r\n", "(".repeat(70), ")".repeat(70));
    let e = err(&deep);
    assert_eq!(e.tag.as_deref(), Some("a"));
    assert!(e.message.contains("nested"), "{}", e.message);
    let deep_not = format!("a SEARCH {}ALL\r\n", "NOT ".repeat(100));
    assert!(err(&deep_not).message.contains("nested"));
    let ok_depth = format!("a SEARCH {}ALL{}\r\n", "(".repeat(60), ")".repeat(60));
    parse(&ok_depth);
}

#[test]
fn rfc7162_condstore_qresync() {
    assert_eq!(
        parse("a SELECT INBOX (CONDSTORE)\r\n"),
        CommandKind::Select {
            mailbox: "INBOX".into(),
            condstore: true,
            qresync: None
        }
    );
    assert!(matches!(
        parse("a142 FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n"),
        CommandKind::Fetch { uid: false, args } if args.changed_since == Some(12345) && !args.vanished
    ));
    assert_eq!(
        parse("a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)\r\n"),
        CommandKind::Store {
            uid: true,
            set: seq(&[(6, 6), (4, 4), (8, 8)]),
            mode: StoreMode::Add,
            silent: true,
            flags: vec![Flag::Deleted],
            unchanged_since: Some(12121230045)
        }
    );
    assert!(matches!(
        parse("a SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338\r\n"),
        CommandKind::Search { args, .. } if args.keys == vec![SearchKey::ModSeq(620162338)]
    ));
    assert!(matches!(
        parse("t SEARCH OR NOT MODSEQ 720162338 LARGER 50000\r\n"),
        CommandKind::Search { args, .. } if args.keys.len() == 1
    ));
    assert!(matches!(
        parse("A042 STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)\r\n"),
        CommandKind::Status { items, .. } if items[2] == StatusItem::HighestModSeq
    ));
    assert_eq!(
        parse("A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n"),
        CommandKind::Select {
            mailbox: "INBOX".into(),
            condstore: false,
            qresync: Some(QResync {
                uidvalidity: 67890007,
                modseq: 20050715194045000,
                known_uids: Some(set(&[(41, 41), (43, 211), (214, 541)])),
                seq_match: None
            })
        }
    );
    assert_eq!(
        parse(
            "B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))\r\n"
        ),
        CommandKind::Select {
            mailbox: "INBOX".into(),
            condstore: false,
            qresync: Some(QResync {
                uidvalidity: 67890007,
                modseq: 90060115194045000,
                known_uids: Some(set(&[(1, 29997)])),
                seq_match: Some((
                    set(&[(5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999)]),
                    set(&[
                        (15000, 15000),
                        (22500, 22500),
                        (27000, 27000),
                        (29970, 29970),
                        (29973, 29973),
                        (29976, 29976),
                        (29979, 29979),
                        (29982, 29982),
                        (29985, 29985),
                        (29988, 29988),
                        (29991, 29991),
                        (29994, 29994),
                        (29997, 29997)
                    ])
                ))
            })
        }
    );
    assert!(matches!(
        parse("s100 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n"),
        CommandKind::Fetch { uid: true, args } if args.vanished && args.changed_since == Some(12345)
    ));
    assert!(
        err("s FETCH 300:500 (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
            .message
            .contains("UID")
    );
    assert!(
        err("s UID FETCH 300:500 (FLAGS) (VANISHED)\r\n")
            .message
            .contains("CHANGEDSINCE")
    );
    assert!(err("s SELECT INBOX (FOO)\r\n").message.contains("FOO"));
    assert!(matches!(
        parse("a FETCH 1 (MODSEQ FLAGS)\r\n"),
        CommandKind::Fetch { args, .. } if args.attrs[0] == FetchAttr::ModSeq
    ));
}

#[test]
fn rfc5258_list_extended_5819_list_status_6154_special_use() {
    let list = |s: &str| match parse(s) {
        CommandKind::List(a) => a,
        other => panic!("{other:?}"),
    };
    let a = list("A02 LIST (SUBSCRIBED) \"\" \"*\"\r\n");
    assert!(a.select_subscribed && a.patterns == vec!["*".to_string()]);
    let a = list("A03 LIST () \"\" \"%\" RETURN (CHILDREN)\r\n");
    assert!(a.return_children && !a.select_subscribed);
    let a = list("A04 LIST (REMOTE) \"\" \"%\" RETURN (CHILDREN)\r\n");
    assert!(a.select_remote && a.return_children);
    let a = list("C01 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\" RETURN (SUBSCRIBED)\r\n");
    assert!(a.select_recursive_match && a.return_subscribed);
    let a = list("D01 LIST \"\" (\"INBOX\" \"Drafts\" \"Sent/%\")\r\n");
    assert_eq!(
        a.patterns,
        vec!["INBOX".to_string(), "Drafts".into(), "Sent/%".into()]
    );
    let a = list("A01 LIST \"\" % RETURN (STATUS (MESSAGES UNSEEN))\r\n");
    assert_eq!(
        a.return_status,
        Some(vec![StatusItem::Messages, StatusItem::Unseen])
    );
    let a = list("t3 LIST (SPECIAL-USE) \"\" \"*\" RETURN (SPECIAL-USE)\r\n");
    assert!(a.select_special_use && a.return_special_use);
    assert!(
        err("A LIST (RECURSIVEMATCH) \"\" %\r\n")
            .message
            .contains("RECURSIVEMATCH")
    );
    assert!(err("A LIST (FOO) \"\" %\r\n").message.contains("FOO"));
    assert_eq!(
        parse("t1 CREATE \"Everything\" (USE (\\All \\Archive))\r\n"),
        CommandKind::Create {
            mailbox: "Everything".into(),
            special_use: vec![SpecialUse::All, SpecialUse::Archive]
        }
    );
    // An attribute we do not support parses, so the session can answer NO [USEATTR].
    assert_eq!(
        parse("t1 CREATE x (USE (\\Bogus))\r\n"),
        CommandKind::Create {
            mailbox: "x".into(),
            special_use: vec![SpecialUse::Unsupported]
        }
    );
}

#[test]
fn extensions_id_enable_idle_namespace_quota_move_uidplus() {
    assert_eq!(
        parse("a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"os\" NIL)\r\n"),
        CommandKind::Id(Some(vec![
            ("name".into(), Some("sodr".into())),
            ("version".into(), Some("19.34".into())),
            ("os".into(), None)
        ]))
    );
    assert_eq!(parse("a ID NIL\r\n"), CommandKind::Id(None));
    assert_eq!(parse("a ID ()\r\n"), CommandKind::Id(Some(vec![])));
    assert_eq!(
        parse("a ENABLE condstore QRESYNC UTF8=ACCEPT\r\n"),
        CommandKind::Enable(vec![
            "CONDSTORE".into(),
            "QRESYNC".into(),
            "UTF8=ACCEPT".into()
        ])
    );
    assert_eq!(parse("A002 IDLE\r\n"), CommandKind::Idle);
    assert_eq!(parse("A001 NAMESPACE\r\n"), CommandKind::Namespace);
    assert_eq!(parse("a UNAUTHENTICATE\r\n"), CommandKind::Unauthenticate);
    assert_eq!(
        parse("G GETQUOTAROOT inbox\r\n"),
        CommandKind::GetQuotaRoot("INBOX".into())
    );
    assert_eq!(
        parse("G GETQUOTA \"\"\r\n"),
        CommandKind::GetQuota("".into())
    );
    assert_eq!(
        parse("a01 AUTHENTICATE plain dGVzdAB0ZXN0AHRlc3Q=\r\n"),
        CommandKind::Authenticate {
            mechanism: "PLAIN".into(),
            initial: Some(b"dGVzdAB0ZXN0AHRlc3Q=".to_vec())
        }
    );
    assert_eq!(
        parse("a01 AUTHENTICATE EXTERNAL =\r\n"),
        CommandKind::Authenticate {
            mechanism: "EXTERNAL".into(),
            initial: Some(b"=".to_vec())
        }
    );
    assert_eq!(
        parse("A003 UID EXPUNGE 3000:3002\r\n"),
        CommandKind::UidExpunge(seq(&[(3000, 3002)]))
    );
    assert_eq!(
        parse("a UID MOVE 42:69 foo\r\n"),
        CommandKind::Move {
            uid: true,
            set: seq(&[(42, 69)]),
            mailbox: "foo".into()
        }
    );
    assert_eq!(
        parse("a MOVE 1:* Trash\r\n"),
        CommandKind::Move {
            uid: false,
            set: seq(&[(1, STAR)]),
            mailbox: "Trash".into()
        }
    );
    assert!(matches!(
        parse("a STATUS INBOX (SIZE DELETED)\r\n"),
        CommandKind::Status { items, .. } if items == vec![StatusItem::Size, StatusItem::Deleted]
    ));
}

#[test]
fn mailbox_names_modified_utf7_and_utf8() {
    assert_eq!(
        parse("a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n"),
        CommandKind::Select {
            mailbox: "~peter/mail/台北/日本語".into(),
            condstore: false,
            qresync: None
        }
    );
    let e = err("a SELECT &U,BTF\r\n");
    assert_eq!(e.tag.as_deref(), Some("a"));
    assert!(e.message.contains("modified UTF-7"), "{}", e.message);
    assert!(
        err("a SELECT \"caf\u{e9}\"\r\n")
            .message
            .contains("modified UTF-7")
    );
    let utf8 = ParseOptions {
        utf8_mailboxes: true,
    };
    let c = parse_command("a SELECT \"台北\"\r\n".as_bytes(), &utf8).unwrap();
    assert_eq!(
        c.kind,
        CommandKind::Select {
            mailbox: "台北".into(),
            condstore: false,
            qresync: None
        }
    );
    // In UTF-8 mode `&` is just a character.
    let c = parse_command(b"a DELETE A&B\r\n", &utf8).unwrap();
    assert_eq!(c.kind, CommandKind::Delete("A&B".into()));
}

#[test]
fn errors_carry_tag_when_readable() {
    let e = err("+ NOOP\r\n");
    assert_eq!(e.tag, None);
    let e = err("\r\n");
    assert_eq!(e.tag, None);
    let e = err("a1 FROB\r\n");
    assert_eq!(e.tag.as_deref(), Some("a1"));
    assert!(e.message.contains("FROB"));
    let e = err("a1 NOOP extra\r\n");
    assert!(e.message.contains("unexpected"));
    let e = err("a1\r\n");
    assert_eq!(e.tag, None);
    let e = err("a1 LOGIN \"unterminated\r\n");
    assert!(e.message.contains("terminated"));
    let e = err("a1 UID FROB 1\r\n");
    assert!(e.message.contains("FROB"));
}

#[test]
fn rfc5256_sort_and_thread_rfc5957_display() {
    let c = |reverse, key| SortCriterion { reverse, key };
    // RFC 5256 section 3 examples.
    assert_eq!(
        parse("A282 SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994\r\n"),
        CommandKind::Sort {
            uid: false,
            criteria: vec![c(false, SortKey::Subject)],
            charset: "UTF-8".into(),
            keys: vec![SearchKey::Since(date(1, 2, 1994))],
        }
    );
    assert_eq!(
        parse("A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL\r\n"),
        CommandKind::Sort {
            uid: false,
            criteria: vec![c(false, SortKey::Subject), c(true, SortKey::Date)],
            charset: "UTF-8".into(),
            keys: vec![SearchKey::All],
        }
    );
    assert_eq!(
        parse("A284 SORT (SUBJECT) US-ASCII TEXT \"not in mailbox\"\r\n"),
        CommandKind::Sort {
            uid: false,
            criteria: vec![c(false, SortKey::Subject)],
            charset: "US-ASCII".into(),
            keys: vec![SearchKey::Text(b"not in mailbox".to_vec())],
        }
    );
    assert_eq!(
        parse("A285 UID SORT (DISPLAYFROM) UTF-8 ALL\r\n"),
        CommandKind::Sort {
            uid: true,
            criteria: vec![c(false, SortKey::DisplayFrom)],
            charset: "UTF-8".into(),
            keys: vec![SearchKey::All],
        }
    );
    assert_eq!(
        parse("A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000\r\n"),
        CommandKind::Thread {
            uid: false,
            algorithm: ThreadAlgorithm::OrderedSubject,
            charset: "UTF-8".into(),
            keys: vec![SearchKey::Since(date(5, 3, 2000))],
        }
    );
    assert_eq!(
        parse("A284 UID THREAD REFERENCES US-ASCII TEXT \"gewp\"\r\n"),
        CommandKind::Thread {
            uid: true,
            algorithm: ThreadAlgorithm::References,
            charset: "US-ASCII".into(),
            keys: vec![SearchKey::Text(b"gewp".to_vec())],
        }
    );
    assert!(err("a SORT () UTF-8 ALL\r\n").message.contains("sort key"));
    assert!(err("a THREAD XYZ UTF-8 ALL\r\n").message.contains("XYZ"));
}

#[test]
fn rfc5465_notify_rfc4978_compress_rfc8970_preview_rfc8474_objectid() {
    // RFC 5465 section 3.1 example.
    let kind = parse(
        "b notify set status (selected MessageNew (uid body.peek[header.fields (from to subject)]) MessageExpunge) (subtree Lists MessageNew)\r\n",
    );
    let CommandKind::Notify(Some(set)) = kind else {
        panic!("{kind:?}")
    };
    assert!(set.status);
    assert_eq!(set.groups.len(), 2);
    assert_eq!(set.groups[0].filter, NotifyFilter::Selected);
    assert!(matches!(&set.groups[0].events[0], NotifyEvent::MessageNew(a) if a.len() == 2));
    assert_eq!(set.groups[0].events[1], NotifyEvent::MessageExpunge);
    assert_eq!(
        set.groups[1],
        NotifyGroup {
            filter: NotifyFilter::Subtree(vec!["Lists".into()]),
            events: vec![NotifyEvent::MessageNew(vec![])],
        }
    );
    assert_eq!(parse("a NOTIFY NONE\r\n"), CommandKind::Notify(None));
    let CommandKind::Notify(Some(set)) =
        parse("a notify set (mailboxes (INBOX misc) NONE) (personal (Foo))\r\n")
    else {
        panic!()
    };
    assert!(set.groups[0].events.is_empty());
    assert_eq!(set.groups[1].events, vec![NotifyEvent::Other("FOO".into())]);
    assert_eq!(
        parse("a COMPRESS DEFLATE\r\n"),
        CommandKind::Compress("DEFLATE".into())
    );
    let CommandKind::Fetch { args, .. } =
        parse("a UID FETCH 1:* (PREVIEW (LAZY) EMAILID THREADID) (CHANGEDSINCE 5)\r\n")
    else {
        panic!()
    };
    assert_eq!(
        args.attrs,
        vec![
            FetchAttr::Preview { lazy: true },
            FetchAttr::EmailId,
            FetchAttr::ThreadId
        ]
    );
    assert_eq!(args.changed_since, Some(5));
    let CommandKind::Fetch { args, .. } = parse("a FETCH 1 PREVIEW\r\n") else {
        panic!()
    };
    assert_eq!(args.attrs, vec![FetchAttr::Preview { lazy: false }]);
    assert_eq!(
        parse("a STATUS foo (MAILBOXID)\r\n"),
        CommandKind::Status {
            mailbox: "foo".into(),
            items: vec![StatusItem::MailboxId]
        }
    );
    let CommandKind::Search { args, .. } = parse("a SEARCH EMAILID M6d99ac3275bb4e\r\n") else {
        panic!()
    };
    assert_eq!(
        args.keys,
        vec![SearchKey::EmailId("M6d99ac3275bb4e".into())]
    );
    assert_eq!(
        parse("a SETQUOTA \"\" (STORAGE 512)\r\n"),
        CommandKind::SetQuota {
            root: String::new(),
            limits: vec![("STORAGE".into(), 512)]
        }
    );
}
