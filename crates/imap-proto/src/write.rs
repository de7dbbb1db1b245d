//! Rendering helpers for responses, and the client-side command serializer.
//!
//! Every string-writing helper picks the simplest form the grammar allows and falls back
//! to a literal `{n}\r\n<bytes>` for anything a quoted string cannot carry (CR, LF, NUL,
//! 8-bit bytes unless UTF-8 is allowed, or very long text), so output is always parseable.

use crate::mutf7::mutf7_encode;
use crate::types::*;

/// Longest text written as a quoted string; longer goes as a literal, which some clients
/// handle better and which never needs escaping.
const QUOTED_BYTES_MAX: usize = 1024;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn quotable(s: &[u8], utf8: bool) -> bool {
    if s.len() > QUOTED_BYTES_MAX {
        return false;
    }
    if utf8 {
        match std::str::from_utf8(s) {
            Ok(text) => text.chars().all(|c| !c.is_control()),
            Err(_) => false,
        }
    } else {
        s.iter().all(|&b| (0x20..0x7f).contains(&b))
    }
}

fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn push_literal(out: &mut Vec<u8>, s: &[u8], marker: &str) {
    out.extend_from_slice(format!("{marker}{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// A quoted string when `s` is printable 7-bit text, else a literal `{n}\r\n...`.
pub fn quoted_or_literal(s: &[u8]) -> Vec<u8> {
    string(s, false)
}

/// Like [`quoted_or_literal`], but UTF-8 text may be quoted (IMAP4rev2 / UTF8=ACCEPT).
pub fn quoted_or_literal_utf8(s: &[u8]) -> Vec<u8> {
    string(s, true)
}

fn string(s: &[u8], utf8: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    if quotable(s, utf8) {
        push_quoted(&mut out, s);
    } else {
        push_literal(&mut out, s, "");
    }
    out
}

/// `NIL` for `None`, else a string as in [`quoted_or_literal`].
pub fn nstring(s: Option<&[u8]>) -> Vec<u8> {
    match s {
        None => b"NIL".to_vec(),
        Some(s) => quoted_or_literal(s),
    }
}

/// An astring: a bare atom when safe (and not `NIL`, to avoid any nstring ambiguity),
/// else a string as in [`quoted_or_literal`].
pub fn astring(s: &[u8]) -> Vec<u8> {
    astring_with(s, false, false)
}

fn astring_with(s: &[u8], utf8: bool, wildcards: bool) -> Vec<u8> {
    let bare = !s.is_empty()
        && !s.eq_ignore_ascii_case(b"NIL")
        && s.iter()
            .all(|&b| is_atom_char(b) || b == b']' || (wildcards && (b == b'%' || b == b'*')));
    if bare { s.to_vec() } else { string(s, utf8) }
}

/// A mailbox name as an astring: modified UTF-7 unless `utf8` (UTF8=ACCEPT / IMAP4rev2).
pub fn encode_mailbox(name: &str, utf8: bool) -> Vec<u8> {
    if utf8 {
        astring_with(name.as_bytes(), true, false)
    } else {
        astring_with(mutf7_encode(name).as_bytes(), false, false)
    }
}

/// A LIST pattern (`%` and `*` may stay bare), encoded like [`encode_mailbox`].
pub fn encode_list_mailbox(pattern: &str, utf8: bool) -> Vec<u8> {
    if utf8 {
        astring_with(pattern.as_bytes(), true, true)
    } else {
        astring_with(mutf7_encode(pattern).as_bytes(), false, true)
    }
}

/// One flag as written on the wire (`\Seen`, `$Forwarded`, `\Extension`).
/// `Flag::Extension` holds the name without its backslash.
pub fn flag_str(flag: &Flag) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match flag {
        Flag::Seen => Cow::Borrowed("\\Seen"),
        Flag::Answered => Cow::Borrowed("\\Answered"),
        Flag::Flagged => Cow::Borrowed("\\Flagged"),
        Flag::Deleted => Cow::Borrowed("\\Deleted"),
        Flag::Draft => Cow::Borrowed("\\Draft"),
        Flag::Recent => Cow::Borrowed("\\Recent"),
        Flag::Keyword(k) => Cow::Borrowed(k.as_str()),
        Flag::Extension(e) => Cow::Owned(format!("\\{e}")),
    }
}

/// The wire name of a STATUS item (`MESSAGES`, `HIGHESTMODSEQ`, ...).
pub fn status_item_name(item: &StatusItem) -> &'static str {
    match item {
        StatusItem::Messages => "MESSAGES",
        StatusItem::Recent => "RECENT",
        StatusItem::UidNext => "UIDNEXT",
        StatusItem::UidValidity => "UIDVALIDITY",
        StatusItem::Unseen => "UNSEEN",
        StatusItem::HighestModSeq => "HIGHESTMODSEQ",
        StatusItem::Size => "SIZE",
        StatusItem::Deleted => "DELETED",
        StatusItem::MailboxId => "MAILBOXID",
    }
}

/// The wire name of a SORT key (`ARRIVAL`, `DISPLAYFROM`, ...).
pub fn sort_key_name(k: SortKey) -> &'static str {
    match k {
        SortKey::Arrival => "ARRIVAL",
        SortKey::Cc => "CC",
        SortKey::Date => "DATE",
        SortKey::From => "FROM",
        SortKey::Size => "SIZE",
        SortKey::Subject => "SUBJECT",
        SortKey::To => "TO",
        SortKey::DisplayFrom => "DISPLAYFROM",
        SortKey::DisplayTo => "DISPLAYTO",
    }
}

/// The RFC 6154 mailbox attribute for a special use (`\Sent`, `\Trash`, ...).
pub fn special_use_name(u: SpecialUse) -> &'static str {
    match u {
        SpecialUse::All => "\\All",
        SpecialUse::Archive => "\\Archive",
        SpecialUse::Drafts => "\\Drafts",
        SpecialUse::Flagged => "\\Flagged",
        SpecialUse::Junk => "\\Junk",
        SpecialUse::Sent => "\\Sent",
        SpecialUse::Trash => "\\Trash",
        SpecialUse::Unsupported => "\\Unsupported",
    }
}

/// A parenthesised flag list: `(\Seen $Forwarded)`.
pub fn write_flags(flags: &[Flag]) -> Vec<u8> {
    let mut out = b"(".to_vec();
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(flag_str(f).as_bytes());
    }
    out.push(b')');
    out
}

fn seq_number(n: u32, out: &mut String) {
    if n == STAR {
        out.push('*');
    } else {
        out.push_str(&n.to_string());
    }
}

/// A sequence set: `1:3,7,9:*`.
pub fn write_seq_set(set: &SequenceSet) -> String {
    let mut out = String::new();
    for (i, r) in set.ranges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        seq_number(r.start, &mut out);
        if r.end != r.start {
            out.push(':');
            seq_number(r.end, &mut out);
        }
    }
    out
}

fn write_seq_or_saved(set: &SeqOrSaved) -> String {
    match set {
        SeqOrSaved::Saved => "$".into(),
        SeqOrSaved::Set(s) => write_seq_set(s),
    }
}

fn month_name(month: u8) -> &'static str {
    MONTHS
        .get(usize::from(month.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan")
}

/// A SEARCH date: `1-Feb-1994`.
pub fn format_date(d: Date) -> String {
    format!("{}-{}-{:04}", d.day, month_name(d.month), d.year)
}

/// An INTERNALDATE / APPEND date-time *without* the surrounding DQUOTEs:
/// `17-Jul-1996 02:44:25 -0700`. Wrap it in `"` when writing `INTERNALDATE`.
pub fn format_datetime(dt: DateTime) -> String {
    let sign = if dt.zone_minutes < 0 { '-' } else { '+' };
    let zone = dt.zone_minutes.unsigned_abs();
    format!(
        "{:02}-{}-{:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        dt.date.day,
        month_name(dt.date.month),
        dt.date.year,
        dt.hour,
        dt.minute,
        dt.second,
        zone / 60,
        zone % 60
    )
}

/// How [`Command::to_bytes_with`] writes a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// Write mailbox names as UTF-8 instead of modified UTF-7.
    pub utf8_mailboxes: bool,
    /// Write literals as `{n+}` (LITERAL+) instead of synchronizing `{n}`.
    pub literal_plus: bool,
}

struct W {
    out: Vec<u8>,
    opts: WriteOptions,
}

impl W {
    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        // Rewrite the `{n}` our helpers produce into `{n+}`.
        if self.opts.literal_plus
            && let Some(rest) = b.strip_prefix(b"{")
            && let Some(close) = rest.iter().position(|&c| c == b'}')
        {
            self.out.push(b'{');
            self.out.extend_from_slice(&rest[..close]);
            self.out.extend_from_slice(b"+");
            self.out.extend_from_slice(&rest[close..]);
            return;
        }
        self.out.extend_from_slice(b);
    }

    fn astr(&mut self, s: &[u8]) {
        let v = astring(s);
        self.bytes(&v);
    }

    fn string(&mut self, s: &[u8]) {
        let v = quoted_or_literal(s);
        self.bytes(&v);
    }

    fn mailbox(&mut self, name: &str) {
        let v = encode_mailbox(name, self.opts.utf8_mailboxes);
        self.bytes(&v);
    }

    fn pattern(&mut self, name: &str) {
        let v = encode_list_mailbox(name, self.opts.utf8_mailboxes);
        self.bytes(&v);
    }

    fn literal8(&mut self, data: &[u8], binary: bool) {
        let plus = if self.opts.literal_plus { "+" } else { "" };
        let tilde = if binary { "~" } else { "" };
        self.raw(&format!("{tilde}{{{}{plus}}}\r\n", data.len()));
        self.out.extend_from_slice(data);
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.raw("(");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.raw(" ");
            }
            each(self, item);
        }
        self.raw(")");
    }

    fn status_items(&mut self, items: &[StatusItem]) {
        self.list(items, |w, item| w.raw(status_item_name(item)));
    }

    fn section_part(&mut self, part: &[u32]) {
        let text: Vec<String> = part.iter().map(u32::to_string).collect();
        self.raw(&text.join("."));
    }

    fn partial(&mut self, partial: &Option<Partial>) {
        if let Some(p) = partial {
            self.raw(&format!("<{}.{}>", p.origin, p.count));
        }
    }

    fn fetch_attr(&mut self, attr: &FetchAttr) {
        match attr {
            FetchAttr::Envelope => self.raw("ENVELOPE"),
            FetchAttr::Flags => self.raw("FLAGS"),
            FetchAttr::InternalDate => self.raw("INTERNALDATE"),
            FetchAttr::Rfc822 => self.raw("RFC822"),
            FetchAttr::Rfc822Header => self.raw("RFC822.HEADER"),
            FetchAttr::Rfc822Size => self.raw("RFC822.SIZE"),
            FetchAttr::Rfc822Text => self.raw("RFC822.TEXT"),
            FetchAttr::Body => self.raw("BODY"),
            FetchAttr::BodyStructure => self.raw("BODYSTRUCTURE"),
            FetchAttr::Uid => self.raw("UID"),
            FetchAttr::ModSeq => self.raw("MODSEQ"),
            FetchAttr::EmailId => self.raw("EMAILID"),
            FetchAttr::ThreadId => self.raw("THREADID"),
            FetchAttr::Preview { lazy } => {
                self.raw(if *lazy { "PREVIEW (LAZY)" } else { "PREVIEW" })
            }
            FetchAttr::BodySection {
                section,
                partial,
                peek,
            } => {
                self.raw(if *peek { "BODY.PEEK[" } else { "BODY[" });
                self.section_part(&section.part);
                if let Some(text) = &section.text {
                    if !section.part.is_empty() {
                        self.raw(".");
                    }
                    match text {
                        SectionText::Header => self.raw("HEADER"),
                        SectionText::Text => self.raw("TEXT"),
                        SectionText::Mime => self.raw("MIME"),
                        SectionText::HeaderFields(f) | SectionText::HeaderFieldsNot(f) => {
                            self.raw(if matches!(text, SectionText::HeaderFields(_)) {
                                "HEADER.FIELDS "
                            } else {
                                "HEADER.FIELDS.NOT "
                            });
                            self.list(f, |w, name| w.astr(name.as_bytes()));
                        }
                    }
                }
                self.raw("]");
                self.partial(partial);
            }
            FetchAttr::Binary {
                part,
                partial,
                peek,
            } => {
                self.raw(if *peek { "BINARY.PEEK[" } else { "BINARY[" });
                self.section_part(part);
                self.raw("]");
                self.partial(partial);
            }
            FetchAttr::BinarySize { part } => {
                self.raw("BINARY.SIZE[");
                self.section_part(part);
                self.raw("]");
            }
        }
    }

    fn search_key(&mut self, key: &SearchKey) {
        match key {
            SearchKey::All => self.raw("ALL"),
            SearchKey::Answered => self.raw("ANSWERED"),
            SearchKey::Deleted => self.raw("DELETED"),
            SearchKey::Draft => self.raw("DRAFT"),
            SearchKey::Flagged => self.raw("FLAGGED"),
            SearchKey::New => self.raw("NEW"),
            SearchKey::Old => self.raw("OLD"),
            SearchKey::Recent => self.raw("RECENT"),
            SearchKey::Seen => self.raw("SEEN"),
            SearchKey::Unanswered => self.raw("UNANSWERED"),
            SearchKey::Undeleted => self.raw("UNDELETED"),
            SearchKey::Undraft => self.raw("UNDRAFT"),
            SearchKey::Unflagged => self.raw("UNFLAGGED"),
            SearchKey::Unseen => self.raw("UNSEEN"),
            SearchKey::Bcc(s) => self.key_str("BCC", s),
            SearchKey::Body(s) => self.key_str("BODY", s),
            SearchKey::Cc(s) => self.key_str("CC", s),
            SearchKey::From(s) => self.key_str("FROM", s),
            SearchKey::Subject(s) => self.key_str("SUBJECT", s),
            SearchKey::Text(s) => self.key_str("TEXT", s),
            SearchKey::To(s) => self.key_str("TO", s),
            SearchKey::Before(d) => self.raw(&format!("BEFORE {}", format_date(*d))),
            SearchKey::On(d) => self.raw(&format!("ON {}", format_date(*d))),
            SearchKey::Since(d) => self.raw(&format!("SINCE {}", format_date(*d))),
            SearchKey::SentBefore(d) => self.raw(&format!("SENTBEFORE {}", format_date(*d))),
            SearchKey::SentOn(d) => self.raw(&format!("SENTON {}", format_date(*d))),
            SearchKey::SentSince(d) => self.raw(&format!("SENTSINCE {}", format_date(*d))),
            SearchKey::Header(field, value) => {
                self.raw("HEADER ");
                self.astr(field.as_bytes());
                self.raw(" ");
                self.astr(value);
            }
            SearchKey::Keyword(k) => self.raw(&format!("KEYWORD {k}")),
            SearchKey::Unkeyword(k) => self.raw(&format!("UNKEYWORD {k}")),
            SearchKey::Larger(n) => self.raw(&format!("LARGER {n}")),
            SearchKey::Smaller(n) => self.raw(&format!("SMALLER {n}")),
            SearchKey::Older(n) => self.raw(&format!("OLDER {n}")),
            SearchKey::Younger(n) => self.raw(&format!("YOUNGER {n}")),
            SearchKey::ModSeq(n) => self.raw(&format!("MODSEQ {n}")),
            SearchKey::EmailId(id) => self.raw(&format!("EMAILID {id}")),
            SearchKey::ThreadId(id) => self.raw(&format!("THREADID {id}")),
            SearchKey::Uid(set) => self.raw(&format!("UID {}", write_seq_or_saved(set))),
            SearchKey::Seq(set) => self.raw(&write_seq_or_saved(set)),
            SearchKey::Not(k) => {
                self.raw("NOT ");
                self.search_key(k);
            }
            SearchKey::Or(a, b) => {
                self.raw("OR ");
                self.search_key(a);
                self.raw(" ");
                self.search_key(b);
            }
            SearchKey::And(keys) => self.list(keys, |w, k| w.search_key(k)),
        }
    }

    fn key_str(&mut self, key: &str, s: &[u8]) {
        self.raw(key);
        self.raw(" ");
        self.astr(s);
    }

    fn flags(&mut self, flags: &[Flag]) {
        self.out.extend_from_slice(&write_flags(flags));
    }

    fn select_params(&mut self, condstore: bool, qresync: &Option<QResync>) {
        if !condstore && qresync.is_none() {
            return;
        }
        let mut parts = Vec::new();
        if condstore {
            parts.push("CONDSTORE".to_string());
        }
        if let Some(q) = qresync {
            let mut s = format!("QRESYNC ({} {}", q.uidvalidity, q.modseq);
            if let Some(k) = &q.known_uids {
                s.push(' ');
                s.push_str(&write_seq_set(k));
            }
            if let Some((seqs, uids)) = &q.seq_match {
                s.push_str(&format!(
                    " ({} {})",
                    write_seq_set(seqs),
                    write_seq_set(uids)
                ));
            }
            s.push(')');
            parts.push(s);
        }
        self.raw(&format!(" ({})", parts.join(" ")));
    }

    fn kind(&mut self, kind: &CommandKind) {
        match kind {
            CommandKind::Capability => self.raw("CAPABILITY"),
            CommandKind::Noop => self.raw("NOOP"),
            CommandKind::Logout => self.raw("LOGOUT"),
            CommandKind::StartTls => self.raw("STARTTLS"),
            CommandKind::Namespace => self.raw("NAMESPACE"),
            CommandKind::Idle => self.raw("IDLE"),
            CommandKind::Unauthenticate => self.raw("UNAUTHENTICATE"),
            CommandKind::Check => self.raw("CHECK"),
            CommandKind::Close => self.raw("CLOSE"),
            CommandKind::Unselect => self.raw("UNSELECT"),
            CommandKind::Expunge => self.raw("EXPUNGE"),
            CommandKind::Id(None) => self.raw("ID NIL"),
            CommandKind::Id(Some(pairs)) => {
                self.raw("ID (");
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        self.raw(" ");
                    }
                    self.string(k.as_bytes());
                    self.raw(" ");
                    match v {
                        None => self.raw("NIL"),
                        Some(v) => self.string(v.as_bytes()),
                    }
                }
                self.raw(")");
            }
            CommandKind::Login { user, pass } => {
                self.raw("LOGIN ");
                self.astr(user);
                self.raw(" ");
                self.astr(pass);
            }
            CommandKind::Authenticate { mechanism, initial } => {
                self.raw("AUTHENTICATE ");
                self.raw(mechanism);
                if let Some(ir) = initial {
                    self.raw(" ");
                    self.out.extend_from_slice(ir);
                }
            }
            CommandKind::Enable(caps) => {
                self.raw("ENABLE");
                for c in caps {
                    self.raw(" ");
                    self.raw(c);
                }
            }
            CommandKind::Select {
                mailbox,
                condstore,
                qresync,
            }
            | CommandKind::Examine {
                mailbox,
                condstore,
                qresync,
            } => {
                self.raw(if matches!(kind, CommandKind::Select { .. }) {
                    "SELECT "
                } else {
                    "EXAMINE "
                });
                self.mailbox(mailbox);
                self.select_params(*condstore, qresync);
            }
            CommandKind::Create {
                mailbox,
                special_use,
            } => {
                self.raw("CREATE ");
                self.mailbox(mailbox);
                if !special_use.is_empty() {
                    self.raw(" (USE ");
                    self.list(special_use, |w, u| w.raw(special_use_name(*u)));
                    self.raw(")");
                }
            }
            CommandKind::Delete(m) => {
                self.raw("DELETE ");
                self.mailbox(m);
            }
            CommandKind::Rename { from, to } => {
                self.raw("RENAME ");
                self.mailbox(from);
                self.raw(" ");
                self.mailbox(to);
            }
            CommandKind::Subscribe(m) => {
                self.raw("SUBSCRIBE ");
                self.mailbox(m);
            }
            CommandKind::Unsubscribe(m) => {
                self.raw("UNSUBSCRIBE ");
                self.mailbox(m);
            }
            CommandKind::List(args) => self.list_cmd(args),
            CommandKind::Lsub { reference, pattern } => {
                self.raw("LSUB ");
                self.mailbox(reference);
                self.raw(" ");
                self.pattern(pattern);
            }
            CommandKind::Status { mailbox, items } => {
                self.raw("STATUS ");
                self.mailbox(mailbox);
                self.raw(" ");
                self.status_items(items);
            }
            CommandKind::Append { mailbox, messages } => {
                self.raw("APPEND ");
                self.mailbox(mailbox);
                for m in messages {
                    self.raw(" ");
                    if !m.flags.is_empty() {
                        self.flags(&m.flags);
                        self.raw(" ");
                    }
                    if let Some(dt) = m.date {
                        self.raw(&format!("\"{}\" ", format_datetime(dt)));
                    }
                    self.literal8(&m.data, m.binary);
                }
            }
            CommandKind::GetQuota(root) => {
                self.raw("GETQUOTA ");
                self.astr(root.as_bytes());
            }
            CommandKind::GetQuotaRoot(m) => {
                self.raw("GETQUOTAROOT ");
                self.mailbox(m);
            }
            CommandKind::SetQuota { root, limits } => {
                self.raw("SETQUOTA ");
                self.astr(root.as_bytes());
                self.raw(" ");
                self.list(limits, |w, (name, limit)| w.raw(&format!("{name} {limit}")));
            }
            CommandKind::Compress(mech) => self.raw(&format!("COMPRESS {mech}")),
            CommandKind::Notify(None) => self.raw("NOTIFY NONE"),
            CommandKind::Notify(Some(set)) => self.notify(set),
            CommandKind::Sort {
                uid,
                criteria,
                charset,
                keys,
            } => {
                self.raw(if *uid { "UID SORT " } else { "SORT " });
                self.list(criteria, |w, c| {
                    if c.reverse {
                        w.raw("REVERSE ");
                    }
                    w.raw(sort_key_name(c.key));
                });
                self.raw(" ");
                self.charset_and_keys(charset, keys);
            }
            CommandKind::Thread {
                uid,
                algorithm,
                charset,
                keys,
            } => {
                self.raw(if *uid { "UID THREAD " } else { "THREAD " });
                self.raw(match algorithm {
                    ThreadAlgorithm::OrderedSubject => "ORDEREDSUBJECT ",
                    ThreadAlgorithm::References => "REFERENCES ",
                });
                self.charset_and_keys(charset, keys);
            }
            CommandKind::UidExpunge(set) => {
                self.raw(&format!("UID EXPUNGE {}", write_seq_or_saved(set)));
            }
            CommandKind::Search { uid, args } => {
                self.raw(if *uid { "UID SEARCH" } else { "SEARCH" });
                if let Some(r) = &args.ret {
                    let opts: Vec<&str> = [
                        (r.min, "MIN"),
                        (r.max, "MAX"),
                        (r.count, "COUNT"),
                        (r.all, "ALL"),
                        (r.save, "SAVE"),
                    ]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect();
                    self.raw(&format!(" RETURN ({})", opts.join(" ")));
                }
                if let Some(cs) = &args.charset {
                    self.raw(" CHARSET ");
                    self.astr(cs.as_bytes());
                }
                for k in &args.keys {
                    self.raw(" ");
                    self.search_key(k);
                }
            }
            CommandKind::Fetch { uid, args } => {
                self.raw(if *uid { "UID FETCH " } else { "FETCH " });
                self.raw(&write_seq_or_saved(&args.set));
                self.raw(" ");
                self.list(&args.attrs, |w, a| w.fetch_attr(a));
                let mut mods = Vec::new();
                if let Some(n) = args.changed_since {
                    mods.push(format!("CHANGEDSINCE {n}"));
                }
                if args.vanished {
                    mods.push("VANISHED".into());
                }
                if !mods.is_empty() {
                    self.raw(&format!(" ({})", mods.join(" ")));
                }
            }
            CommandKind::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.raw(if *uid { "UID STORE " } else { "STORE " });
                self.raw(&write_seq_or_saved(set));
                if let Some(n) = unchanged_since {
                    self.raw(&format!(" (UNCHANGEDSINCE {n})"));
                }
                self.raw(match mode {
                    StoreMode::Replace => " FLAGS",
                    StoreMode::Add => " +FLAGS",
                    StoreMode::Remove => " -FLAGS",
                });
                if *silent {
                    self.raw(".SILENT");
                }
                self.raw(" ");
                self.flags(flags);
            }
            CommandKind::Copy { uid, set, mailbox } | CommandKind::Move { uid, set, mailbox } => {
                let verb = if matches!(kind, CommandKind::Copy { .. }) {
                    "COPY"
                } else {
                    "MOVE"
                };
                let prefix = if *uid { "UID " } else { "" };
                self.raw(&format!("{prefix}{verb} {} ", write_seq_or_saved(set)));
                self.mailbox(mailbox);
            }
        }
    }

    fn charset_and_keys(&mut self, charset: &str, keys: &[SearchKey]) {
        self.astr(charset.as_bytes());
        for k in keys {
            self.raw(" ");
            self.search_key(k);
        }
    }

    fn notify(&mut self, set: &NotifySet) {
        self.raw("NOTIFY SET");
        if set.status {
            self.raw(" STATUS");
        }
        for g in &set.groups {
            self.raw(" (");
            match &g.filter {
                NotifyFilter::Selected => self.raw("SELECTED"),
                NotifyFilter::SelectedDelayed => self.raw("SELECTED-DELAYED"),
                NotifyFilter::Inboxes => self.raw("INBOXES"),
                NotifyFilter::Personal => self.raw("PERSONAL"),
                NotifyFilter::Subscribed => self.raw("SUBSCRIBED"),
                NotifyFilter::Subtree(m) | NotifyFilter::Mailboxes(m) => {
                    self.raw(if matches!(g.filter, NotifyFilter::Subtree(_)) {
                        "SUBTREE "
                    } else {
                        "MAILBOXES "
                    });
                    self.list(m, |w, name| w.mailbox(name));
                }
            }
            self.raw(" ");
            if g.events.is_empty() {
                self.raw("NONE");
            } else {
                self.list(&g.events, |w, e| match e {
                    NotifyEvent::MessageNew(attrs) => {
                        w.raw("MessageNew");
                        if !attrs.is_empty() {
                            w.raw(" ");
                            w.list(attrs, |w, a| w.fetch_attr(a));
                        }
                    }
                    NotifyEvent::MessageExpunge => w.raw("MessageExpunge"),
                    NotifyEvent::FlagChange => w.raw("FlagChange"),
                    NotifyEvent::AnnotationChange => w.raw("AnnotationChange"),
                    NotifyEvent::MailboxName => w.raw("MailboxName"),
                    NotifyEvent::SubscriptionChange => w.raw("SubscriptionChange"),
                    NotifyEvent::MailboxMetadataChange => w.raw("MailboxMetadataChange"),
                    NotifyEvent::ServerMetadataChange => w.raw("ServerMetadataChange"),
                    NotifyEvent::Other(name) => w.raw(name),
                });
            }
            self.raw(")");
        }
    }

    fn list_cmd(&mut self, args: &ListArgs) {
        self.raw("LIST ");
        let select: Vec<&str> = [
            (args.select_subscribed, "SUBSCRIBED"),
            (args.select_remote, "REMOTE"),
            (args.select_recursive_match, "RECURSIVEMATCH"),
            (args.select_special_use, "SPECIAL-USE"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if !select.is_empty() {
            self.raw(&format!("({}) ", select.join(" ")));
        }
        self.mailbox(&args.reference);
        self.raw(" ");
        if args.patterns.len() == 1 {
            self.pattern(&args.patterns[0]);
        } else {
            self.list(&args.patterns, |w, p| w.pattern(p));
        }
        let has_return = args.return_subscribed
            || args.return_children
            || args.return_special_use
            || args.return_status.is_some();
        if has_return {
            self.raw(" RETURN (");
            let mut first = true;
            for (on, name) in [
                (args.return_subscribed, "SUBSCRIBED"),
                (args.return_children, "CHILDREN"),
                (args.return_special_use, "SPECIAL-USE"),
            ] {
                if on {
                    if !first {
                        self.raw(" ");
                    }
                    self.raw(name);
                    first = false;
                }
            }
            if let Some(items) = &args.return_status {
                if !first {
                    self.raw(" ");
                }
                self.raw("STATUS ");
                self.status_items(items);
            }
            self.raw(")");
        }
    }
}

impl Command {
    /// Serializes the command as a client would send it (modified UTF-7 mailbox names,
    /// synchronizing literals), ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(WriteOptions::default())
    }

    /// Serializes with explicit options. Anything not safely quotable becomes a literal;
    /// APPEND data is always a literal (`~{n}` when `binary`). RFC 6855 `UTF8 (...)`
    /// APPEND wrapping is not reproduced: it parses to a binary literal.
    pub fn to_bytes_with(&self, opts: WriteOptions) -> Vec<u8> {
        let mut w = W {
            out: Vec::new(),
            opts,
        };
        w.raw(&self.tag);
        w.raw(" ");
        w.kind(&self.kind);
        w.raw("\r\n");
        w.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_choose_quoted_atom_or_literal() {
        assert_eq!(quoted_or_literal(b"hello world"), b"\"hello world\"");
        assert_eq!(quoted_or_literal(b"a\"b\\c"), b"\"a\\\"b\\\\c\"");
        assert_eq!(quoted_or_literal(b"a\r\nb"), b"{4}\r\na\r\nb");
        assert_eq!(quoted_or_literal("café".as_bytes()), b"{5}\r\ncaf\xc3\xa9");
        assert_eq!(
            quoted_or_literal_utf8("café".as_bytes()),
            "\"café\"".as_bytes()
        );
        assert_eq!(astring(b"INBOX"), b"INBOX");
        assert_eq!(astring(b""), b"\"\"");
        assert_eq!(astring(b"nil"), b"\"nil\"");
        assert_eq!(nstring(None), b"NIL");
    }

    #[test]
    fn mailbox_encoding() {
        assert_eq!(encode_mailbox("台北", false), b"&U,BTFw-");
        assert_eq!(encode_mailbox("My Box", false), b"\"My Box\"");
        assert_eq!(encode_mailbox("台北", true), "\"台北\"".as_bytes());
        assert_eq!(encode_list_mailbox("Sent*", false), b"Sent*");
    }

    #[test]
    fn flags_seq_sets_and_dates() {
        assert_eq!(
            write_flags(&[
                Flag::Seen,
                Flag::Keyword("$Forwarded".into()),
                Flag::Extension("X".into())
            ]),
            b"(\\Seen $Forwarded \\X)"
        );
        let set = SequenceSet {
            ranges: vec![
                SeqRange { start: 1, end: 3 },
                SeqRange { start: 7, end: 7 },
                SeqRange {
                    start: 9,
                    end: STAR,
                },
            ],
        };
        assert_eq!(write_seq_set(&set), "1:3,7,9:*");
        let dt = DateTime {
            date: Date {
                year: 1996,
                month: 7,
                day: 17,
            },
            hour: 2,
            minute: 44,
            second: 25,
            zone_minutes: -420,
        };
        assert_eq!(format_datetime(dt), "17-Jul-1996 02:44:25 -0700");
        assert_eq!(
            format_date(Date {
                year: 1994,
                month: 2,
                day: 1
            }),
            "1-Feb-1994"
        );
    }
}
