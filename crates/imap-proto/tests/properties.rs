//! Property tests: serializer/parser round trip, byte soup, and chunking independence.

use imap_proto::parse::MODSEQ_MAX;
use imap_proto::write::WriteOptions;
use imap_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------- generators over the AST ----------

fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..max).prop_map(String::from_iter),
        "[ -~]{0,12}",
        "[a-zA-Z0-9/.&]{1,12}",
    ]
}

fn mailbox() -> impl Strategy<Value = String> {
    // INBOX is normalised to upper case by the parser; keep other spellings out.
    prop_oneof![
        1 => Just("INBOX".to_string()),
        6 => any_text(12).prop_filter("non-canonical INBOX", |s| {
            s == "INBOX" || !s.eq_ignore_ascii_case("INBOX")
        }),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..24),
        "[ -~]{0,16}".prop_map(String::into_bytes),
        "[a-zA-Z0-9]{1,8}".prop_map(String::into_bytes),
    ]
}

fn keyword() -> impl Strategy<Value = String> {
    "[A-Za-z$][A-Za-z0-9$_.-]{0,9}"
}

fn flag() -> impl Strategy<Value = Flag> {
    prop_oneof![
        Just(Flag::Seen),
        Just(Flag::Answered),
        Just(Flag::Flagged),
        Just(Flag::Deleted),
        Just(Flag::Draft),
        Just(Flag::Recent),
        keyword().prop_map(Flag::Keyword),
        "[A-Za-z][A-Za-z0-9]{0,8}"
            .prop_filter("system flag", |s| {
                !["SEEN", "ANSWERED", "FLAGGED", "DELETED", "DRAFT", "RECENT"]
                    .contains(&s.to_ascii_uppercase().as_str())
            })
            .prop_map(Flag::Extension),
    ]
}

fn seq_number() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..100, 1u32..STAR, Just(STAR)]
}

fn seq_set() -> impl Strategy<Value = SequenceSet> {
    vec((seq_number(), seq_number(), any::<bool>()), 1..4).prop_map(|rs| SequenceSet {
        ranges: rs
            .into_iter()
            .map(|(a, b, single)| SeqRange {
                start: a,
                end: if single { a } else { b },
            })
            .collect(),
    })
}

fn seq_or_saved() -> impl Strategy<Value = SeqOrSaved> {
    prop_oneof![4 => seq_set().prop_map(SeqOrSaved::Set), 1 => Just(SeqOrSaved::Saved)]
}

fn date() -> impl Strategy<Value = Date> {
    (1000u16..=9999, 1u8..=12, 1u8..=28).prop_map(|(year, month, day)| Date { year, month, day })
}

fn datetime() -> impl Strategy<Value = DateTime> {
    (date(), 0u8..24, 0u8..60, 0u8..=60, -1439i16..=1439).prop_map(
        |(date, hour, minute, second, zone_minutes)| DateTime {
            date,
            hour,
            minute,
            second,
            zone_minutes,
        },
    )
}

fn modseq() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, 0u64..=MODSEQ_MAX]
}

fn search_key() -> impl Strategy<Value = SearchKey> {
    let leaf = prop_oneof![
        prop_oneof![
            Just(SearchKey::All),
            Just(SearchKey::Answered),
            Just(SearchKey::Deleted),
            Just(SearchKey::Draft),
            Just(SearchKey::Flagged),
            Just(SearchKey::New),
            Just(SearchKey::Old),
            Just(SearchKey::Recent),
            Just(SearchKey::Seen),
            Just(SearchKey::Unanswered),
            Just(SearchKey::Undeleted),
            Just(SearchKey::Undraft),
            Just(SearchKey::Unflagged),
            Just(SearchKey::Unseen),
        ],
        prop_oneof![
            bytes().prop_map(SearchKey::Bcc),
            bytes().prop_map(SearchKey::Body),
            bytes().prop_map(SearchKey::Cc),
            bytes().prop_map(SearchKey::From),
            bytes().prop_map(SearchKey::Subject),
            bytes().prop_map(SearchKey::Text),
            bytes().prop_map(SearchKey::To),
            ("[ -~]{1,10}", bytes()).prop_map(|(f, v)| SearchKey::Header(f, v)),
        ],
        prop_oneof![
            date().prop_map(SearchKey::Before),
            date().prop_map(SearchKey::On),
            date().prop_map(SearchKey::Since),
            date().prop_map(SearchKey::SentBefore),
            date().prop_map(SearchKey::SentOn),
            date().prop_map(SearchKey::SentSince),
        ],
        prop_oneof![
            keyword().prop_map(SearchKey::Keyword),
            keyword().prop_map(SearchKey::Unkeyword),
            any::<u32>().prop_map(SearchKey::Larger),
            any::<u32>().prop_map(SearchKey::Smaller),
            (1u32..).prop_map(SearchKey::Older),
            (1u32..).prop_map(SearchKey::Younger),
            modseq().prop_map(SearchKey::ModSeq),
            seq_or_saved().prop_map(SearchKey::Uid),
            seq_or_saved().prop_map(SearchKey::Seq),
            "[A-Za-z0-9_-]{1,20}".prop_map(SearchKey::EmailId),
            "[A-Za-z0-9_-]{1,20}".prop_map(SearchKey::ThreadId),
        ],
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|k| SearchKey::Not(Box::new(k))),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| SearchKey::Or(Box::new(a), Box::new(b))),
            vec(inner, 1..4).prop_map(SearchKey::And),
        ]
    })
}

fn part() -> impl Strategy<Value = Vec<u32>> {
    vec(1u32..20, 0..4)
}

fn partial() -> impl Strategy<Value = Option<Partial>> {
    option::of((any::<u32>(), 1u32..).prop_map(|(origin, count)| Partial { origin, count }))
}

fn section() -> impl Strategy<Value = Section> {
    let fields = || vec("[ -~]{1,10}", 1..4);
    (
        part(),
        prop_oneof![
            Just(None),
            Just(Some(SectionText::Header)),
            Just(Some(SectionText::Text)),
            Just(Some(SectionText::Mime)),
            fields().prop_map(|f| Some(SectionText::HeaderFields(f))),
            fields().prop_map(|f| Some(SectionText::HeaderFieldsNot(f))),
        ],
    )
        .prop_map(|(part, text)| {
            // MIME needs a part number.
            let text = if part.is_empty() && text == Some(SectionText::Mime) {
                None
            } else {
                text
            };
            Section { part, text }
        })
}

fn fetch_attr() -> impl Strategy<Value = FetchAttr> {
    prop_oneof![
        prop_oneof![
            Just(FetchAttr::Envelope),
            Just(FetchAttr::Flags),
            Just(FetchAttr::InternalDate),
            Just(FetchAttr::Rfc822),
            Just(FetchAttr::Rfc822Header),
            Just(FetchAttr::Rfc822Size),
            Just(FetchAttr::Rfc822Text),
            Just(FetchAttr::Body),
            Just(FetchAttr::BodyStructure),
            Just(FetchAttr::Uid),
            Just(FetchAttr::ModSeq),
            Just(FetchAttr::EmailId),
            Just(FetchAttr::ThreadId),
            any::<bool>().prop_map(|lazy| FetchAttr::Preview { lazy }),
        ],
        (section(), partial(), any::<bool>()).prop_map(|(section, partial, peek)| {
            FetchAttr::BodySection {
                section,
                partial,
                peek,
            }
        }),
        (part(), partial(), any::<bool>()).prop_map(|(part, partial, peek)| FetchAttr::Binary {
            part,
            partial,
            peek
        }),
        part().prop_map(|part| FetchAttr::BinarySize { part }),
    ]
}

fn status_item() -> impl Strategy<Value = StatusItem> {
    prop_oneof![
        Just(StatusItem::Messages),
        Just(StatusItem::Recent),
        Just(StatusItem::UidNext),
        Just(StatusItem::UidValidity),
        Just(StatusItem::Unseen),
        Just(StatusItem::HighestModSeq),
        Just(StatusItem::Size),
        Just(StatusItem::Deleted),
        Just(StatusItem::MailboxId),
    ]
}

fn special_use() -> impl Strategy<Value = SpecialUse> {
    prop_oneof![
        Just(SpecialUse::All),
        Just(SpecialUse::Archive),
        Just(SpecialUse::Drafts),
        Just(SpecialUse::Flagged),
        Just(SpecialUse::Junk),
        Just(SpecialUse::Sent),
        Just(SpecialUse::Trash),
    ]
}

fn qresync() -> impl Strategy<Value = QResync> {
    (
        1u32..,
        modseq(),
        option::of(seq_set()),
        option::of((seq_set(), seq_set())),
    )
        .prop_map(|(uidvalidity, modseq, known_uids, seq_match)| QResync {
            uidvalidity,
            modseq,
            known_uids,
            seq_match,
        })
}

fn list_args() -> impl Strategy<Value = ListArgs> {
    (
        any_text(8),
        vec(any_text(8), 1..4),
        any::<[bool; 4]>(),
        any::<[bool; 3]>(),
        option::of(vec(status_item(), 1..4)),
    )
        .prop_map(|(reference, patterns, sel, ret, return_status)| ListArgs {
            reference,
            patterns,
            select_subscribed: sel[0],
            select_remote: sel[1],
            // RECURSIVEMATCH must come with SUBSCRIBED or SPECIAL-USE.
            select_recursive_match: sel[2] && (sel[0] || sel[3]),
            select_special_use: sel[3],
            return_subscribed: ret[0],
            return_children: ret[1],
            return_special_use: ret[2],
            return_status,
        })
}

fn append_message() -> impl Strategy<Value = AppendMessage> {
    (
        vec(flag(), 0..3),
        option::of(datetime()),
        vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(flags, date, data, binary)| AppendMessage {
            flags,
            date,
            data,
            binary,
        })
}

fn search_args() -> impl Strategy<Value = SearchArgs> {
    (
        option::of(any::<[bool; 5]>().prop_map(|r| SearchReturn {
            min: r[0],
            max: r[1],
            count: r[2],
            all: r[3],
            save: r[4],
        })),
        option::of("[A-Za-z0-9-]{1,10}"),
        vec(search_key(), 1..4),
    )
        .prop_map(|(ret, charset, keys)| SearchArgs { ret, charset, keys })
}

fn fetch_args(uid: bool) -> impl Strategy<Value = FetchArgs> {
    (
        seq_or_saved(),
        vec(fetch_attr(), 1..5),
        option::of(modseq()),
        any::<bool>(),
    )
        .prop_map(move |(set, attrs, changed_since, vanished)| FetchArgs {
            set,
            attrs,
            // VANISHED only with UID FETCH and CHANGEDSINCE.
            vanished: vanished && uid && changed_since.is_some(),
            changed_since,
        })
}

fn sort_criterion() -> impl Strategy<Value = SortCriterion> {
    (
        any::<bool>(),
        prop_oneof![
            Just(SortKey::Arrival),
            Just(SortKey::Cc),
            Just(SortKey::Date),
            Just(SortKey::From),
            Just(SortKey::Size),
            Just(SortKey::Subject),
            Just(SortKey::To),
            Just(SortKey::DisplayFrom),
            Just(SortKey::DisplayTo),
        ],
    )
        .prop_map(|(reverse, key)| SortCriterion { reverse, key })
}

fn notify_set() -> impl Strategy<Value = NotifySet> {
    let filter = prop_oneof![
        Just(NotifyFilter::Selected),
        Just(NotifyFilter::SelectedDelayed),
        Just(NotifyFilter::Inboxes),
        Just(NotifyFilter::Personal),
        Just(NotifyFilter::Subscribed),
        vec(mailbox(), 1..3).prop_map(NotifyFilter::Subtree),
        vec(mailbox(), 1..3).prop_map(NotifyFilter::Mailboxes),
    ];
    let event = prop_oneof![
        vec(fetch_attr(), 0..3).prop_map(NotifyEvent::MessageNew),
        Just(NotifyEvent::MessageExpunge),
        Just(NotifyEvent::FlagChange),
        Just(NotifyEvent::AnnotationChange),
        Just(NotifyEvent::MailboxName),
        Just(NotifyEvent::SubscriptionChange),
        Just(NotifyEvent::MailboxMetadataChange),
        Just(NotifyEvent::ServerMetadataChange),
        "X-[A-Z]{1,6}".prop_map(NotifyEvent::Other),
    ];
    (any::<bool>(), vec((filter, vec(event, 0..3)), 1..3)).prop_map(|(status, groups)| NotifySet {
        status,
        groups: groups
            .into_iter()
            .map(|(filter, events)| NotifyGroup { filter, events })
            .collect(),
    })
}

fn command_kind() -> impl Strategy<Value = CommandKind> {
    let simple = prop_oneof![
        Just(CommandKind::Capability),
        Just(CommandKind::Noop),
        Just(CommandKind::Logout),
        Just(CommandKind::StartTls),
        Just(CommandKind::Namespace),
        Just(CommandKind::Idle),
        Just(CommandKind::Unauthenticate),
        Just(CommandKind::Check),
        Just(CommandKind::Close),
        Just(CommandKind::Unselect),
        Just(CommandKind::Expunge),
    ];
    let auth = prop_oneof![
        option::of(vec((any_text(8), option::of(any_text(8))), 0..4)).prop_map(CommandKind::Id),
        (bytes(), bytes()).prop_map(|(user, pass)| CommandKind::Login { user, pass }),
        (
            "[A-Z0-9-]{1,10}",
            option::of(prop_oneof![
                "[A-Za-z0-9+/]{1,20}={0,2}",
                Just("=".to_string())
            ])
        )
            .prop_map(|(mechanism, initial)| CommandKind::Authenticate {
                mechanism,
                initial: initial.map(String::into_bytes)
            }),
        vec("[A-Z0-9=+-]{1,12}", 1..4).prop_map(CommandKind::Enable),
    ];
    let mailboxes = prop_oneof![
        (mailbox(), any::<bool>(), option::of(qresync())).prop_map(
            |(mailbox, condstore, qresync)| {
                CommandKind::Select {
                    mailbox,
                    condstore,
                    qresync,
                }
            }
        ),
        (mailbox(), any::<bool>(), option::of(qresync())).prop_map(
            |(mailbox, condstore, qresync)| {
                CommandKind::Examine {
                    mailbox,
                    condstore,
                    qresync,
                }
            }
        ),
        (mailbox(), vec(special_use(), 0..3)).prop_map(|(mailbox, special_use)| {
            CommandKind::Create {
                mailbox,
                special_use,
            }
        }),
        mailbox().prop_map(CommandKind::Delete),
        (mailbox(), mailbox()).prop_map(|(from, to)| CommandKind::Rename { from, to }),
        mailbox().prop_map(CommandKind::Subscribe),
        mailbox().prop_map(CommandKind::Unsubscribe),
        list_args().prop_map(CommandKind::List),
        (any_text(8), any_text(8))
            .prop_map(|(reference, pattern)| CommandKind::Lsub { reference, pattern }),
        (mailbox(), vec(status_item(), 1..5))
            .prop_map(|(mailbox, items)| CommandKind::Status { mailbox, items }),
        (mailbox(), vec(append_message(), 1..3))
            .prop_map(|(mailbox, messages)| CommandKind::Append { mailbox, messages }),
        any_text(8).prop_map(CommandKind::GetQuota),
        mailbox().prop_map(CommandKind::GetQuotaRoot),
        (
            any_text(8),
            vec(("[A-Z][A-Z0-9-]{0,8}", 0u64..=MODSEQ_MAX), 0..3)
        )
            .prop_map(|(root, limits)| CommandKind::SetQuota { root, limits }),
        "[A-Z][A-Z0-9]{0,7}".prop_map(CommandKind::Compress),
        option::of(notify_set()).prop_map(CommandKind::Notify),
    ];
    let selected = prop_oneof![
        seq_or_saved().prop_map(CommandKind::UidExpunge),
        (any::<bool>(), search_args()).prop_map(|(uid, args)| CommandKind::Search { uid, args }),
        any::<bool>().prop_flat_map(
            |uid| fetch_args(uid).prop_map(move |args| CommandKind::Fetch { uid, args })
        ),
        (
            any::<bool>(),
            seq_or_saved(),
            prop_oneof![
                Just(StoreMode::Replace),
                Just(StoreMode::Add),
                Just(StoreMode::Remove)
            ],
            any::<bool>(),
            vec(flag(), 0..4),
            option::of(modseq())
        )
            .prop_map(|(uid, set, mode, silent, flags, unchanged_since)| {
                CommandKind::Store {
                    uid,
                    set,
                    mode,
                    silent,
                    flags,
                    unchanged_since,
                }
            }),
        (any::<bool>(), seq_or_saved(), mailbox())
            .prop_map(|(uid, set, mailbox)| CommandKind::Copy { uid, set, mailbox }),
        (any::<bool>(), seq_or_saved(), mailbox())
            .prop_map(|(uid, set, mailbox)| CommandKind::Move { uid, set, mailbox }),
        (
            any::<bool>(),
            vec(sort_criterion(), 1..4),
            "[A-Z0-9-]{1,10}",
            vec(search_key(), 1..3)
        )
            .prop_map(|(uid, criteria, charset, keys)| CommandKind::Sort {
                uid,
                criteria,
                charset,
                keys
            }),
        (
            any::<bool>(),
            prop_oneof![
                Just(ThreadAlgorithm::OrderedSubject),
                Just(ThreadAlgorithm::References)
            ],
            "[A-Z0-9-]{1,10}",
            vec(search_key(), 1..3)
        )
            .prop_map(|(uid, algorithm, charset, keys)| CommandKind::Thread {
                uid,
                algorithm,
                charset,
                keys
            }),
    ];
    prop_oneof![1 => simple, 2 => auth, 4 => mailboxes, 4 => selected]
}

fn command() -> impl Strategy<Value = Command> {
    ("[A-Za-z0-9.]{1,8}", command_kind()).prop_map(|(tag, kind)| Command { tag, kind })
}

// ---------- helpers ----------

fn drain(f: &mut Framer) -> Vec<Frame> {
    std::iter::from_fn(|| f.next()).collect()
}

fn soup_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..40),
        prop_oneof![
            Just("\r\n"),
            Just("\n"),
            Just("{5}\r\n"),
            Just("{3+}\r\n"),
            Just("~{2}\r\n"),
            Just("{99999999999999999999999}\r\n"),
            Just("{40+}\r\n"),
            Just(" "),
            Just("a1 "),
            Just("("),
            Just(")"),
            Just("\""),
            Just("SEARCH "),
            Just("FETCH 1:* "),
            Just("BODY[1.HEADER.FIELDS (A)]<0.5> "),
            Just("NOT "),
            Just("OR "),
            Just("APPEND INBOX "),
            Just("&U,BTFw-"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        command().prop_map(|c| c.to_bytes()),
    ]
}

fn small_limits() -> Limits {
    Limits {
        line_bytes_max: 64,
        literal_bytes_max: 32,
        command_bytes_max: 200,
    }
}

fn frames_chunked(input: &[u8], cuts: &[usize], limits: Limits) -> Vec<Frame> {
    let mut f = Framer::new(limits);
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(input.len())) {
        f.push(&input[prev..c]);
        out.extend(drain(&mut f));
        prev = c;
    }
    out
}

/// Whatever parses must serialize to bytes that parse back to the same command (the
/// fuzz target checks the same).
fn reparse_is_stable(bytes: &[u8], utf8: bool) -> Result<(), TestCaseError> {
    let opts = ParseOptions {
        utf8_mailboxes: utf8,
    };
    if let Ok(cmd) = parse_command(bytes, &opts) {
        let wire = cmd.to_bytes_with(WriteOptions {
            utf8_mailboxes: utf8,
            literal_plus: true,
        });
        prop_assert_eq!(parse_command(&wire, &opts), Ok(cmd));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// parse(to_bytes(cmd)) == cmd, in both mailbox encodings and literal styles, and the
    /// framer hands back exactly the serialized bytes as one command.
    #[test]
    fn serializer_parser_round_trip(cmd in command(), utf8 in any::<bool>(), literal_plus in any::<bool>()) {
        let wire = cmd.to_bytes_with(WriteOptions { utf8_mailboxes: utf8, literal_plus });
        let parsed = parse_command(&wire, &ParseOptions { utf8_mailboxes: utf8 });
        prop_assert_eq!(parsed.as_ref(), Ok(&cmd), "wire: {:?}", String::from_utf8_lossy(&wire));

        let mut f = Framer::new(Limits::default());
        f.push(&wire);
        let frames = drain(&mut f);
        let (last, rest) = frames.split_last().expect("at least one frame");
        prop_assert_eq!(last, &Frame::Command(wire.clone()));
        for fr in rest {
            prop_assert!(!literal_plus && matches!(fr, Frame::NeedContinuation { .. }), "{:?}", fr);
        }
        prop_assert!(f.is_idle());
    }

    /// Arbitrary bytes never panic the framer or parser, and memory stays bounded.
    #[test]
    fn byte_soup_never_panics_and_stays_bounded(
        pieces in vec(soup_piece(), 0..30),
        cuts in vec(any::<usize>(), 0..20),
        utf8 in any::<bool>(),
    ) {
        let input: Vec<u8> = pieces.concat();
        let limits = small_limits();
        let mut f = Framer::new(limits);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut prev = 0;
        for c in cuts.into_iter().chain(std::iter::once(input.len())) {
            f.push(&input[prev..c]);
            let pushed = c - prev;
            prev = c;
            while let Some(frame) = f.next() {
                // Mid-drain, the unconsumed part of this push is still held.
                prop_assert!(
                    f.buffered_bytes() <= limits.line_bytes_max + limits.command_bytes_max + pushed
                );
                if let Frame::Command(bytes) = frame {
                    prop_assert!(bytes.len() <= limits.command_bytes_max);
                    reparse_is_stable(&bytes, utf8)?;
                }
            }
            // Drained: only a partial line and the partial command remain.
            prop_assert!(f.buffered_bytes() <= limits.line_bytes_max + limits.command_bytes_max);
            // Interleave raw-line reads the way IDLE / AUTHENTICATE would.
            if c % 7 == 0 {
                let _ = f.take_line();
            }
        }
        reparse_is_stable(&input, utf8)?;
    }

    /// Splitting the same stream at arbitrary points yields the same frames.
    #[test]
    fn framing_is_independent_of_chunking(
        pieces in vec(soup_piece(), 0..20),
        cuts in vec(any::<usize>(), 0..30),
        small in any::<bool>(),
    ) {
        let input: Vec<u8> = pieces.concat();
        let limits = if small { small_limits() } else { Limits::default() };
        let whole = frames_chunked(&input, &[], limits);
        let chunked = frames_chunked(&input, &cuts, limits);
        prop_assert_eq!(&whole, &chunked);
        let bytewise: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(&whole, &frames_chunked(&input, &bytewise, limits));
    }
}
