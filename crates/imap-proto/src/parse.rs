//! Command parser: one framed command (as produced by [`crate::Framer`]) in, a
//! [`Command`] out.
//!
//! Grammar: RFC 3501 (IMAP4rev1) and RFC 9051 (IMAP4rev2) commands, plus UIDPLUS
//! (RFC 4315), MOVE (RFC 6851), ENABLE (RFC 5161), ID (RFC 2971), NAMESPACE (RFC 2342),
//! IDLE (RFC 2177), SASL-IR (RFC 4959), LITERAL+ (RFC 7888), CONDSTORE/QRESYNC
//! (RFC 7162), ESEARCH (RFC 4731), SEARCHRES (RFC 5182), WITHIN (RFC 5032),
//! LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE and CREATE-SPECIAL-USE
//! (RFC 6154), STATUS=SIZE (RFC 8438), BINARY (RFC 3516), MULTIAPPEND (RFC 3502),
//! UNAUTHENTICATE (RFC 8437), QUOTA (RFC 9208, GETQUOTA/GETQUOTAROOT), UTF8=ACCEPT
//! (RFC 6855, including `APPEND ... UTF8 (~{n}...)`).
//!
//! Keywords are case-insensitive. Parsing is strict about structure (one SP between
//! tokens, nothing after the final CRLF) and tolerant where real clients differ
//! harmlessly (bare LF line ends, a missing final CRLF, one-digit dates, 8-bit bytes in
//! quoted strings). Recursion happens only in SEARCH keys and is bounded by
//! [`SEARCH_DEPTH_MAX`].

use crate::frame::is_tag_char;
use crate::mutf7::mutf7_decode;
use crate::types::*;

/// Deepest nesting of SEARCH parentheses / NOT / OR accepted; deeper is a parse error,
/// which keeps the recursive parser's stack use bounded.
pub const SEARCH_DEPTH_MAX: usize = 64;

/// Largest mod-sequence value (RFC 7162: positive unsigned 63-bit integer).
pub const MODSEQ_MAX: u64 = i64::MAX as u64;

/// Session state that changes how bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// True after `ENABLE UTF8=ACCEPT` or `ENABLE IMAP4rev2`: mailbox names are raw UTF-8.
    /// False: mailbox names are modified UTF-7 and are decoded to UTF-8.
    pub utf8_mailboxes: bool,
}

/// A command that could not be parsed. `tag` is set when the tag was readable, so the
/// session answers `TAG BAD <message>`; otherwise `* BAD <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub tag: Option<String>,
    /// Plain words saying what was wrong, fit to send after `BAD`.
    pub message: String,
}

type R<T> = Result<T, String>;

/// Parses one framed command.
pub fn parse_command(input: &[u8], opts: &ParseOptions) -> Result<Command, ParseError> {
    let mut p = Parser {
        s: input,
        pos: 0,
        utf8: opts.utf8_mailboxes,
    };
    let tag = p
        .tag()
        .map_err(|message| ParseError { tag: None, message })?;
    match p.command_body() {
        Ok(kind) => Ok(Command { tag, kind }),
        Err(message) => Err(ParseError {
            tag: Some(tag),
            message,
        }),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    utf8: bool,
}

fn is_atom_char(b: u8) -> bool {
    // ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ]
    (0x21..0x7f).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(40)];
    String::from_utf8_lossy(cut).into_owned()
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            None => "end of command".into(),
            Some(b'\r') | Some(b'\n') => "end of line".into(),
            Some(b) if (0x21..0x7f).contains(&b) => format!("'{}'", char::from(b)),
            Some(b' ') => "a space".into(),
            Some(b) => format!("byte 0x{b:02x}"),
        }
    }

    /// `expected <what>, found <what is here>`.
    fn expected(&self, what: &str) -> String {
        format!("expected {what}, found {}", self.describe_here())
    }

    fn expect(&mut self, b: u8, what: &str) -> R<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected {what}, found {}", self.describe_here()))
        }
    }

    fn sp(&mut self) -> R<()> {
        self.expect(b' ', "a space")
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'\r') | Some(b'\n'))
    }

    /// The end of the command: CRLF (or LF, or nothing) and no bytes after it.
    fn end(&mut self) -> R<()> {
        let rest = &self.s[self.pos..];
        if rest.is_empty() || rest == b"\r\n" || rest == b"\n" {
            self.pos = self.s.len();
            Ok(())
        } else {
            Err(format!(
                "unexpected text at end of command: {}",
                show(rest.strip_suffix(b"\r\n").unwrap_or(rest))
            ))
        }
    }

    fn tag(&mut self) -> R<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_tag_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err("missing or invalid command tag".into());
        }
        let tag = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        if self.peek() != Some(b' ') {
            return Err(if self.at_line_end() {
                "missing command after tag".into()
            } else {
                format!("invalid character in tag: {}", self.describe_here())
            });
        }
        self.pos += 1;
        Ok(tag)
    }

    /// A keyword-ish name: letters, digits, `.`, `-`, `_`, `=`, upper-cased. Used for
    /// command names, search keys, attribute and option names.
    fn name(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'='))
        {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).to_ascii_uppercase()
    }

    /// Reads a name if the next one equals `word` (case-insensitive); otherwise consumes nothing.
    fn try_word(&mut self, word: &str) -> bool {
        let save = self.pos;
        if self.name() == word && !self.peek().is_some_and(is_atom_char) {
            true
        } else {
            self.pos = save;
            false
        }
    }

    fn atom(&mut self, what: &str) -> R<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(is_atom_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!("expected {what}, found {}", self.describe_here()));
        }
        Ok(&self.s[start..self.pos])
    }

    fn number_digits(&mut self, what: &str) -> R<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!("expected {what}, found {}", self.describe_here()));
        }
        Ok(&self.s[start..self.pos])
    }

    fn number64(&mut self, what: &str, max: u64) -> R<u64> {
        let digits = self.number_digits(what)?;
        let mut n: u64 = 0;
        for &d in digits {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{what} is too large (maximum {max})"))?;
        }
        Ok(n)
    }

    fn number(&mut self, what: &str) -> R<u32> {
        let n = self.number64(what, u64::from(u32::MAX))?;
        u32::try_from(n).map_err(|_| format!("{what} is too large"))
    }

    fn nz_number(&mut self, what: &str) -> R<u32> {
        let n = self.number(what)?;
        if n == 0 {
            return Err(format!("{what} must not be zero"));
        }
        Ok(n)
    }

    fn modseq(&mut self, what: &str) -> R<u64> {
        self.number64(what, MODSEQ_MAX)
    }

    // ---- strings ----

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => {
                    return Err("quoted string is not terminated".into());
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.pos += 1;
                        }
                        _ => {
                            return Err(
                                "backslash in quoted string must be followed by '\"' or '\\'"
                                    .into(),
                            );
                        }
                    }
                }
                Some(0) => return Err("NUL byte in quoted string".into()),
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// `{n}` / `{n+}` literal, or with `binary_ok` also `~{n}` (RFC 3516 literal8).
    /// Returns the payload and whether it was a literal8.
    fn literal(&mut self, binary_ok: bool) -> R<(Vec<u8>, bool)> {
        let binary = self.eat(b'~');
        if binary && !binary_ok {
            return Err("binary literal ~{n} is not allowed here".into());
        }
        self.expect(b'{', "a literal")?;
        let len = self.number64("literal length", u64::MAX)?;
        self.eat(b'+');
        self.expect(b'}', "'}' closing the literal length")?;
        self.eat(b'\r');
        self.expect(b'\n', "line end after literal length")?;
        let available = (self.s.len() - self.pos) as u64;
        if len > available {
            return Err(format!(
                "literal announces {len} bytes but only {available} follow"
            ));
        }
        let len = len as usize; // fits: bounded by the input length
        let data = self.s[self.pos..self.pos + len].to_vec();
        self.pos += len;
        Ok((data, binary))
    }

    fn string(&mut self, what: &str) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => Ok(self.literal(false)?.0),
            _ => Err(format!("expected {what}, found {}", self.describe_here())),
        }
    }

    fn astring(&mut self, what: &str) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.string(what),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(is_astring_char) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(format!("expected {what}, found {}", self.describe_here()));
                }
                Ok(self.s[start..self.pos].to_vec())
            }
        }
    }

    fn nstring(&mut self, what: &str) -> R<Option<Vec<u8>>> {
        if self.peek() != Some(b'"') && self.peek() != Some(b'{') && self.try_word("NIL") {
            return Ok(None);
        }
        self.string(what).map(Some)
    }

    fn utf8_string(bytes: Vec<u8>, what: &str) -> R<String> {
        String::from_utf8(bytes).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn decode_name(&self, raw: Vec<u8>, what: &str) -> R<String> {
        if self.utf8 {
            Self::utf8_string(raw, what)
        } else {
            mutf7_decode(&raw).map_err(|e| format!("{what} is not valid modified UTF-7: {e}"))
        }
    }

    fn mailbox(&mut self) -> R<String> {
        let raw = self.astring("a mailbox name")?;
        let name = self.decode_name(raw, "mailbox name")?;
        // RFC 3501 §5.1: INBOX is case-insensitive; normalise so the session needn't.
        Ok(if name.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            name
        })
    }

    /// LIST/LSUB reference name: a mailbox, decoded but not INBOX-normalised.
    fn reference(&mut self) -> R<String> {
        let raw = self.astring("a reference name")?;
        self.decode_name(raw, "reference name")
    }

    fn list_mailbox(&mut self) -> R<String> {
        let raw = match self.peek() {
            Some(b'"') | Some(b'{') => self.string("a mailbox pattern")?,
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(is_list_char) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(format!(
                        "expected a mailbox pattern, found {}",
                        self.describe_here()
                    ));
                }
                self.s[start..self.pos].to_vec()
            }
        };
        self.decode_name(raw, "mailbox pattern")
    }

    // ---- sets, flags, dates ----

    fn seq_number(&mut self) -> R<u32> {
        if self.eat(b'*') {
            Ok(STAR)
        } else {
            self.nz_number("message number")
        }
    }

    fn seq_set(&mut self) -> R<SequenceSet> {
        let mut ranges = Vec::new();
        loop {
            let start = self.seq_number()?;
            let end = if self.eat(b':') {
                self.seq_number()?
            } else {
                start
            };
            ranges.push(SeqRange { start, end });
            if !self.eat(b',') {
                return Ok(SequenceSet { ranges });
            }
        }
    }

    fn seq_or_saved(&mut self) -> R<SeqOrSaved> {
        if self.eat(b'$') {
            Ok(SeqOrSaved::Saved)
        } else {
            self.seq_set().map(SeqOrSaved::Set)
        }
    }

    fn flag(&mut self) -> R<Flag> {
        if self.eat(b'\\') {
            let name = self.atom("a flag name after '\\'")?;
            let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
            Ok(match upper.as_str() {
                "SEEN" => Flag::Seen,
                "ANSWERED" => Flag::Answered,
                "FLAGGED" => Flag::Flagged,
                "DELETED" => Flag::Deleted,
                "DRAFT" => Flag::Draft,
                "RECENT" => Flag::Recent,
                _ => Flag::Extension(String::from_utf8_lossy(name).into_owned()),
            })
        } else {
            let name = self.atom("a flag")?;
            Ok(Flag::Keyword(String::from_utf8_lossy(name).into_owned()))
        }
    }

    fn flag_list(&mut self) -> R<Vec<Flag>> {
        self.expect(b'(', "'(' starting a flag list")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    fn month(&mut self) -> R<u8> {
        const MONTHS: [&[u8; 3]; 12] = [
            b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV",
            b"DEC",
        ];
        let Some(word) = self.s.get(self.pos..self.pos + 3) else {
            return Err("expected a month name such as Jan".into());
        };
        let upper = word.to_ascii_uppercase();
        let idx = MONTHS
            .iter()
            .position(|m| m.as_slice() == upper.as_slice())
            .ok_or_else(|| format!("unknown month name {}", show(word)))?;
        self.pos += 3;
        Ok(idx as u8 + 1)
    }

    fn digits_exact(&mut self, n: usize, what: &str) -> R<u32> {
        let Some(ds) = self.s.get(self.pos..self.pos + n) else {
            return Err(format!("expected {n} digits for {what}"));
        };
        if !ds.iter().all(u8::is_ascii_digit) {
            return Err(format!("expected {n} digits for {what}"));
        }
        self.pos += n;
        Ok(ds.iter().fold(0, |acc, &d| acc * 10 + u32::from(d - b'0')))
    }

    /// `d-Mon-yyyy` with a one- or two-digit day.
    fn date_text(&mut self) -> R<Date> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) && self.pos - start < 2 {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!(
                "expected a date like 1-Feb-1994, found {}",
                self.describe_here()
            ));
        }
        let day = self.s[start..self.pos]
            .iter()
            .fold(0u8, |acc, &d| acc * 10 + (d - b'0'));
        self.finish_date(day)
    }

    fn finish_date(&mut self, day: u8) -> R<Date> {
        self.expect(b'-', "'-' in date")?;
        let month = self.month()?;
        self.expect(b'-', "'-' in date")?;
        let year = self.digits_exact(4, "the year")? as u16;
        if day == 0 || day > days_in_month(year, month) {
            return Err(format!("day {day} does not exist in that month"));
        }
        Ok(Date { year, month, day })
    }

    /// SEARCH date: `date-text / DQUOTE date-text DQUOTE`.
    fn date(&mut self) -> R<Date> {
        if self.eat(b'"') {
            let d = self.date_text()?;
            self.expect(b'"', "'\"' closing the date")?;
            Ok(d)
        } else {
            self.date_text()
        }
    }

    /// APPEND date-time: `"dd-Mon-yyyy hh:mm:ss +zzzz"` (day may be space-padded).
    fn date_time(&mut self) -> R<DateTime> {
        self.expect(b'"', "'\"' starting a date-time")?;
        self.eat(b' ');
        let date = self.date_text()?;
        self.sp()?;
        let hour = self.digits_exact(2, "the hour")? as u8;
        self.expect(b':', "':' in time")?;
        let minute = self.digits_exact(2, "the minute")? as u8;
        self.expect(b':', "':' in time")?;
        let second = self.digits_exact(2, "the second")? as u8;
        // 60 allows a leap second.
        if hour > 23 || minute > 59 || second > 60 {
            return Err("time of day out of range".into());
        }
        self.sp()?;
        let negative = match self.peek() {
            Some(b'+') => false,
            Some(b'-') => true,
            _ => return Err("expected a time zone like +0100 or -0700".into()),
        };
        self.pos += 1;
        let zh = self.digits_exact(2, "the zone hours")?;
        let zm = self.digits_exact(2, "the zone minutes")?;
        if zh > 23 || zm > 59 {
            return Err("time zone out of range".into());
        }
        let magnitude = (zh * 60 + zm) as i16;
        self.expect(b'"', "'\"' closing the date-time")?;
        Ok(DateTime {
            date,
            hour,
            minute,
            second,
            zone_minutes: if negative { -magnitude } else { magnitude },
        })
    }

    // ---- commands ----

    fn command_body(&mut self) -> R<CommandKind> {
        let name = self.name();
        if self.peek().is_some_and(is_atom_char) {
            return Err(format!(
                "unknown command {}",
                show(&self.s[self.pos - name.len()..])
                    .split(' ')
                    .next()
                    .unwrap_or("")
            ));
        }
        let kind = match name.as_str() {
            "CAPABILITY" => CommandKind::Capability,
            "NOOP" => CommandKind::Noop,
            "LOGOUT" => CommandKind::Logout,
            "STARTTLS" => CommandKind::StartTls,
            "NAMESPACE" => CommandKind::Namespace,
            "IDLE" => CommandKind::Idle,
            "UNAUTHENTICATE" => CommandKind::Unauthenticate,
            "CHECK" => CommandKind::Check,
            "CLOSE" => CommandKind::Close,
            "UNSELECT" => CommandKind::Unselect,
            "EXPUNGE" => CommandKind::Expunge,
            "ID" => {
                self.sp()?;
                self.id_params()?
            }
            "LOGIN" => {
                self.sp()?;
                let user = self.astring("a user name")?;
                self.sp()?;
                let pass = self.astring("a password")?;
                CommandKind::Login { user, pass }
            }
            "AUTHENTICATE" => {
                self.sp()?;
                let mechanism = String::from_utf8_lossy(self.atom("a SASL mechanism name")?)
                    .to_ascii_uppercase();
                let initial = if self.eat(b' ') {
                    let start = self.pos;
                    while self.peek().is_some_and(is_base64_char) {
                        self.pos += 1;
                    }
                    if self.pos == start {
                        return Err("initial response must be base64 or '='".into());
                    }
                    Some(self.s[start..self.pos].to_vec())
                } else {
                    None
                };
                CommandKind::Authenticate { mechanism, initial }
            }
            "ENABLE" => {
                let mut caps = Vec::new();
                while self.eat(b' ') {
                    let cap = self.atom("a capability name")?;
                    caps.push(String::from_utf8_lossy(cap).to_ascii_uppercase());
                }
                if caps.is_empty() {
                    return Err("ENABLE needs at least one capability name".into());
                }
                CommandKind::Enable(caps)
            }
            "SELECT" | "EXAMINE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let (condstore, qresync) = self.select_params()?;
                if name == "SELECT" {
                    CommandKind::Select {
                        mailbox,
                        condstore,
                        qresync,
                    }
                } else {
                    CommandKind::Examine {
                        mailbox,
                        condstore,
                        qresync,
                    }
                }
            }
            "CREATE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let special_use = self.create_params()?;
                CommandKind::Create {
                    mailbox,
                    special_use,
                }
            }
            "DELETE" => {
                self.sp()?;
                CommandKind::Delete(self.mailbox()?)
            }
            "RENAME" => {
                self.sp()?;
                let from = self.mailbox()?;
                self.sp()?;
                let to = self.mailbox()?;
                CommandKind::Rename { from, to }
            }
            "SUBSCRIBE" => {
                self.sp()?;
                CommandKind::Subscribe(self.mailbox()?)
            }
            "UNSUBSCRIBE" => {
                self.sp()?;
                CommandKind::Unsubscribe(self.mailbox()?)
            }
            "LIST" => {
                self.sp()?;
                CommandKind::List(self.list_args()?)
            }
            "LSUB" => {
                self.sp()?;
                let reference = self.reference()?;
                self.sp()?;
                let pattern = self.list_mailbox()?;
                CommandKind::Lsub { reference, pattern }
            }
            "STATUS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                self.sp()?;
                let items = self.status_items()?;
                CommandKind::Status { mailbox, items }
            }
            "APPEND" => {
                self.sp()?;
                self.append()?
            }
            "GETQUOTA" => {
                self.sp()?;
                let root = self.astring("a quota root")?;
                CommandKind::GetQuota(Self::utf8_string(root, "quota root")?)
            }
            "GETQUOTAROOT" => {
                self.sp()?;
                CommandKind::GetQuotaRoot(self.mailbox()?)
            }
            "SETQUOTA" => {
                self.sp()?;
                self.setquota()?
            }
            "COMPRESS" => {
                self.sp()?;
                let mech = self.atom("a compression mechanism")?;
                CommandKind::Compress(String::from_utf8_lossy(mech).to_ascii_uppercase())
            }
            "NOTIFY" => {
                self.sp()?;
                CommandKind::Notify(self.notify()?)
            }
            "SORT" => self.sort(false)?,
            "THREAD" => self.thread(false)?,
            "SEARCH" => CommandKind::Search {
                uid: false,
                args: self.search_args()?,
            },
            "FETCH" => CommandKind::Fetch {
                uid: false,
                args: self.fetch_args(false)?,
            },
            "STORE" => self.store(false)?,
            "COPY" | "MOVE" => self.copy_move(&name, false)?,
            "UID" => {
                self.sp()?;
                let sub = self.name();
                match sub.as_str() {
                    "SEARCH" => CommandKind::Search {
                        uid: true,
                        args: self.search_args()?,
                    },
                    "FETCH" => CommandKind::Fetch {
                        uid: true,
                        args: self.fetch_args(true)?,
                    },
                    "STORE" => self.store(true)?,
                    "COPY" | "MOVE" => self.copy_move(&sub, true)?,
                    "SORT" => self.sort(true)?,
                    "THREAD" => self.thread(true)?,
                    "EXPUNGE" => {
                        self.sp()?;
                        CommandKind::UidExpunge(self.seq_or_saved()?)
                    }
                    "" => return Err("UID must be followed by a command".into()),
                    other => return Err(format!("UID {other} is not a valid command")),
                }
            }
            "" => return Err("missing command name".into()),
            other => return Err(format!("unknown command {other}")),
        };
        self.end()?;
        Ok(kind)
    }

    fn id_params(&mut self) -> R<CommandKind> {
        // RFC 2971 allows at most 30 pairs; more is a client bug worth rejecting.
        const ID_PAIRS_MAX: usize = 30;
        if self.peek() != Some(b'(') {
            if self.try_word("NIL") {
                return Ok(CommandKind::Id(None));
            }
            return Err("ID expects a parenthesised list or NIL".into());
        }
        self.pos += 1;
        let mut pairs = Vec::new();
        if self.eat(b')') {
            return Ok(CommandKind::Id(Some(pairs)));
        }
        loop {
            if pairs.len() == ID_PAIRS_MAX {
                return Err(format!(
                    "ID accepts at most {ID_PAIRS_MAX} field-value pairs"
                ));
            }
            let key = self.string("an ID field name")?;
            self.sp()?;
            let value = self.nstring("an ID field value")?;
            pairs.push((
                String::from_utf8_lossy(&key).into_owned(),
                value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            ));
            if self.eat(b')') {
                return Ok(CommandKind::Id(Some(pairs)));
            }
            self.sp()?;
        }
    }

    fn select_params(&mut self) -> R<(bool, Option<QResync>)> {
        let mut condstore = false;
        let mut qresync = None;
        if !self.eat(b' ') {
            return Ok((condstore, qresync));
        }
        self.expect(b'(', "'(' starting SELECT parameters")?;
        if self.eat(b')') {
            return Ok((condstore, qresync));
        }
        loop {
            match self.name().as_str() {
                "CONDSTORE" => condstore = true,
                "QRESYNC" => {
                    self.sp()?;
                    qresync = Some(self.qresync()?);
                }
                "" => {
                    return Err(format!(
                        "expected a SELECT parameter, found {}",
                        self.describe_here()
                    ));
                }
                other => return Err(format!("unknown SELECT parameter {other}")),
            }
            if self.eat(b')') {
                return Ok((condstore, qresync));
            }
            self.sp()?;
        }
    }

    fn qresync(&mut self) -> R<QResync> {
        self.expect(b'(', "'(' starting QRESYNC parameters")?;
        let uidvalidity = self.nz_number("UIDVALIDITY")?;
        self.sp()?;
        let modseq = self.modseq("mod-sequence")?;
        let mut known_uids = None;
        let mut seq_match = None;
        if self.eat(b' ') {
            if self.peek() != Some(b'(') {
                known_uids = Some(self.seq_set()?);
                if self.eat(b' ') {
                    seq_match = Some(self.seq_match()?);
                }
            } else {
                seq_match = Some(self.seq_match()?);
            }
        }
        self.expect(b')', "')' closing QRESYNC parameters")?;
        Ok(QResync {
            uidvalidity,
            modseq,
            known_uids,
            seq_match,
        })
    }

    fn seq_match(&mut self) -> R<(SequenceSet, SequenceSet)> {
        self.expect(b'(', "'(' starting sequence match data")?;
        let seqs = self.seq_set()?;
        self.sp()?;
        let uids = self.seq_set()?;
        self.expect(b')', "')' closing sequence match data")?;
        Ok((seqs, uids))
    }

    fn create_params(&mut self) -> R<Vec<SpecialUse>> {
        let mut uses = Vec::new();
        if !self.eat(b' ') {
            return Ok(uses);
        }
        self.expect(b'(', "'(' starting CREATE parameters")?;
        if self.eat(b')') {
            return Ok(uses);
        }
        loop {
            match self.name().as_str() {
                "USE" => {
                    self.sp()?;
                    self.expect(b'(', "'(' starting special-use attributes")?;
                    if !self.eat(b')') {
                        loop {
                            uses.push(self.special_use()?);
                            if self.eat(b')') {
                                break;
                            }
                            self.sp()?;
                        }
                    }
                }
                "" => {
                    return Err(format!(
                        "expected a CREATE parameter, found {}",
                        self.describe_here()
                    ));
                }
                other => return Err(format!("unknown CREATE parameter {other}")),
            }
            if self.eat(b')') {
                return Ok(uses);
            }
            self.sp()?;
        }
    }

    fn special_use(&mut self) -> R<SpecialUse> {
        self.expect(b'\\', "a special-use attribute such as \\Sent")?;
        Ok(match self.name().as_str() {
            "ALL" => SpecialUse::All,
            "ARCHIVE" => SpecialUse::Archive,
            "DRAFTS" => SpecialUse::Drafts,
            "FLAGGED" => SpecialUse::Flagged,
            "JUNK" => SpecialUse::Junk,
            "SENT" => SpecialUse::Sent,
            "TRASH" => SpecialUse::Trash,
            "" => return Err("expected a special-use attribute name after '\\'".into()),
            _ => SpecialUse::Unsupported,
        })
    }

    fn list_args(&mut self) -> R<ListArgs> {
        let mut args = ListArgs::default();
        if self.eat(b'(') {
            if !self.eat(b')') {
                loop {
                    match self.name().as_str() {
                        "SUBSCRIBED" => args.select_subscribed = true,
                        "REMOTE" => args.select_remote = true,
                        "RECURSIVEMATCH" => args.select_recursive_match = true,
                        "SPECIAL-USE" => args.select_special_use = true,
                        "" => {
                            return Err(format!(
                                "expected a LIST selection option, found {}",
                                self.describe_here()
                            ));
                        }
                        other => return Err(format!("unknown LIST selection option {other}")),
                    }
                    if self.eat(b')') {
                        break;
                    }
                    self.sp()?;
                }
            }
            // RFC 5258 §3: RECURSIVEMATCH only refines another (non-REMOTE) option.
            if args.select_recursive_match && !args.select_subscribed && !args.select_special_use {
                return Err("RECURSIVEMATCH must be combined with another selection option".into());
            }
            self.sp()?;
        }
        args.reference = self.reference()?;
        self.sp()?;
        if self.eat(b'(') {
            loop {
                args.patterns.push(self.list_mailbox()?);
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        } else {
            args.patterns.push(self.list_mailbox()?);
        }
        if self.eat(b' ') {
            if !self.try_word("RETURN") {
                return Err(format!(
                    "expected RETURN options, found {}",
                    self.describe_here()
                ));
            }
            self.sp()?;
            self.expect(b'(', "'(' starting RETURN options")?;
            if !self.eat(b')') {
                loop {
                    match self.name().as_str() {
                        "SUBSCRIBED" => args.return_subscribed = true,
                        "CHILDREN" => args.return_children = true,
                        "SPECIAL-USE" => args.return_special_use = true,
                        "STATUS" => {
                            self.sp()?;
                            args.return_status = Some(self.status_items()?);
                        }
                        "" => {
                            return Err(format!(
                                "expected a LIST return option, found {}",
                                self.describe_here()
                            ));
                        }
                        other => return Err(format!("unknown LIST return option {other}")),
                    }
                    if self.eat(b')') {
                        break;
                    }
                    self.sp()?;
                }
            }
        }
        Ok(args)
    }

    fn status_items(&mut self) -> R<Vec<StatusItem>> {
        self.expect(b'(', "'(' starting status items")?;
        let mut items = Vec::new();
        loop {
            items.push(match self.name().as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                "SIZE" => StatusItem::Size,
                "DELETED" => StatusItem::Deleted,
                "MAILBOXID" => StatusItem::MailboxId,
                "" => {
                    return Err(format!(
                        "expected a status item, found {}",
                        self.describe_here()
                    ));
                }
                other => return Err(format!("unknown status item {other}")),
            });
            if self.eat(b')') {
                return Ok(items);
            }
            self.sp()?;
        }
    }

    fn append(&mut self) -> R<CommandKind> {
        let mailbox = self.mailbox()?;
        let mut messages = Vec::new();
        // MULTIAPPEND (RFC 3502): one or more `SP [flag-list SP] [date-time SP] literal`.
        while self.eat(b' ') {
            let mut flags = Vec::new();
            let mut date = None;
            if self.peek() == Some(b'(') {
                flags = self.flag_list()?;
                self.sp()?;
            }
            if self.peek() == Some(b'"') {
                date = Some(self.date_time()?);
                self.sp()?;
            }
            let (data, binary) = if self.try_word("UTF8") {
                // RFC 6855 §4: `UTF8 (literal8)`; the payload is what matters here.
                self.sp()?;
                self.expect(b'(', "'(' after UTF8")?;
                let (data, _) = self.literal(true)?;
                self.expect(b')', "')' closing UTF8 data")?;
                (data, true)
            } else {
                self.literal(true)?
            };
            messages.push(AppendMessage {
                flags,
                date,
                data,
                binary,
            });
        }
        if messages.is_empty() {
            return Err("APPEND needs a message literal".into());
        }
        Ok(CommandKind::Append { mailbox, messages })
    }

    fn copy_move(&mut self, name: &str, uid: bool) -> R<CommandKind> {
        self.sp()?;
        let set = self.seq_or_saved()?;
        self.sp()?;
        let mailbox = self.mailbox()?;
        Ok(if name == "COPY" {
            CommandKind::Copy { uid, set, mailbox }
        } else {
            CommandKind::Move { uid, set, mailbox }
        })
    }

    fn store(&mut self, uid: bool) -> R<CommandKind> {
        self.sp()?;
        let set = self.seq_or_saved()?;
        self.sp()?;
        let mut unchanged_since = None;
        if self.eat(b'(') {
            loop {
                match self.name().as_str() {
                    "UNCHANGEDSINCE" => {
                        self.sp()?;
                        unchanged_since = Some(self.modseq("UNCHANGEDSINCE value")?);
                    }
                    "" => {
                        return Err(format!(
                            "expected a STORE modifier, found {}",
                            self.describe_here()
                        ));
                    }
                    other => return Err(format!("unknown STORE modifier {other}")),
                }
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
            self.sp()?;
        }
        let mode = if self.eat(b'+') {
            StoreMode::Add
        } else if self.eat(b'-') {
            StoreMode::Remove
        } else {
            StoreMode::Replace
        };
        let silent = match self.name().as_str() {
            "FLAGS" => false,
            "FLAGS.SILENT" => true,
            _ => return Err("STORE expects FLAGS, +FLAGS or -FLAGS (optionally .SILENT)".into()),
        };
        self.sp()?;
        let flags = if self.peek() == Some(b'(') {
            self.flag_list()?
        } else {
            let mut flags = vec![self.flag()?];
            while self.eat(b' ') {
                flags.push(self.flag()?);
            }
            flags
        };
        Ok(CommandKind::Store {
            uid,
            set,
            mode,
            silent,
            flags,
            unchanged_since,
        })
    }

    fn fetch_args(&mut self, uid: bool) -> R<FetchArgs> {
        self.sp()?;
        let set = self.seq_or_saved()?;
        self.sp()?;
        let mut attrs = Vec::new();
        if self.eat(b'(') {
            attrs = self.fetch_att_list_rest()?;
        } else {
            let save = self.pos;
            match self.name().as_str() {
                "ALL" => attrs.extend([
                    FetchAttr::Flags,
                    FetchAttr::InternalDate,
                    FetchAttr::Rfc822Size,
                    FetchAttr::Envelope,
                ]),
                "FAST" => attrs.extend([
                    FetchAttr::Flags,
                    FetchAttr::InternalDate,
                    FetchAttr::Rfc822Size,
                ]),
                "FULL" => attrs.extend([
                    FetchAttr::Flags,
                    FetchAttr::InternalDate,
                    FetchAttr::Rfc822Size,
                    FetchAttr::Envelope,
                    FetchAttr::Body,
                ]),
                _ => {
                    self.pos = save;
                    attrs.push(self.fetch_att()?);
                }
            }
        }
        let mut changed_since = None;
        let mut vanished = false;
        if self.eat(b' ') {
            self.expect(b'(', "'(' starting FETCH modifiers")?;
            loop {
                match self.name().as_str() {
                    "CHANGEDSINCE" => {
                        self.sp()?;
                        changed_since = Some(self.modseq("CHANGEDSINCE value")?);
                    }
                    "VANISHED" => vanished = true,
                    "" => {
                        return Err(format!(
                            "expected a FETCH modifier, found {}",
                            self.describe_here()
                        ));
                    }
                    other => return Err(format!("unknown FETCH modifier {other}")),
                }
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        }
        // RFC 7162 §3.2.6: VANISHED only with UID FETCH and together with CHANGEDSINCE.
        if vanished && !uid {
            return Err("VANISHED is only allowed with UID FETCH".into());
        }
        if vanished && changed_since.is_none() {
            return Err("VANISHED requires CHANGEDSINCE".into());
        }
        Ok(FetchArgs {
            set,
            attrs,
            changed_since,
            vanished,
        })
    }

    /// `fetch-att *(SP fetch-att) ")"`, after the opening parenthesis.
    fn fetch_att_list_rest(&mut self) -> R<Vec<FetchAttr>> {
        let mut attrs = Vec::new();
        loop {
            attrs.push(self.fetch_att()?);
            if self.eat(b')') {
                return Ok(attrs);
            }
            self.sp()?;
        }
    }

    fn fetch_att(&mut self) -> R<FetchAttr> {
        let name = self.name();
        Ok(match name.as_str() {
            "ENVELOPE" => FetchAttr::Envelope,
            "FLAGS" => FetchAttr::Flags,
            "INTERNALDATE" => FetchAttr::InternalDate,
            "RFC822" => FetchAttr::Rfc822,
            "RFC822.HEADER" => FetchAttr::Rfc822Header,
            "RFC822.SIZE" => FetchAttr::Rfc822Size,
            "RFC822.TEXT" => FetchAttr::Rfc822Text,
            "BODYSTRUCTURE" => FetchAttr::BodyStructure,
            "UID" => FetchAttr::Uid,
            "MODSEQ" => FetchAttr::ModSeq,
            "EMAILID" => FetchAttr::EmailId,
            "THREADID" => FetchAttr::ThreadId,
            "PREVIEW" => FetchAttr::Preview {
                lazy: self.preview_mods()?,
            },
            "BODY" if self.peek() != Some(b'[') => FetchAttr::Body,
            "BODY" | "BODY.PEEK" => {
                let section = self.section()?;
                let partial = self.partial()?;
                FetchAttr::BodySection {
                    section,
                    partial,
                    peek: name == "BODY.PEEK",
                }
            }
            "BINARY" | "BINARY.PEEK" => {
                let part = self.section_binary()?;
                let partial = self.partial()?;
                FetchAttr::Binary {
                    part,
                    partial,
                    peek: name == "BINARY.PEEK",
                }
            }
            "BINARY.SIZE" => FetchAttr::BinarySize {
                part: self.section_binary()?,
            },
            "" => {
                return Err(format!(
                    "expected a FETCH attribute, found {}",
                    self.describe_here()
                ));
            }
            other => return Err(format!("unknown FETCH attribute {other}")),
        })
    }

    fn section_part(&mut self) -> R<Vec<u32>> {
        let mut part = vec![self.nz_number("section part number")?];
        while self.peek() == Some(b'.') && self.s.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            part.push(self.nz_number("section part number")?);
        }
        Ok(part)
    }

    fn section(&mut self) -> R<Section> {
        self.expect(b'[', "'[' starting a section")?;
        let mut section = Section::default();
        if self.eat(b']') {
            return Ok(section);
        }
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            section.part = self.section_part()?;
            if self.eat(b']') {
                return Ok(section);
            }
            self.expect(b'.', "'.' or ']' after the part number")?;
        }
        let text = self.name();
        section.text = Some(match text.as_str() {
            "HEADER" => SectionText::Header,
            "TEXT" => SectionText::Text,
            "MIME" if !section.part.is_empty() => SectionText::Mime,
            "MIME" => return Err("MIME section needs a part number".into()),
            "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
                self.sp()?;
                let fields = self.header_list()?;
                if text == "HEADER.FIELDS" {
                    SectionText::HeaderFields(fields)
                } else {
                    SectionText::HeaderFieldsNot(fields)
                }
            }
            "" => {
                return Err(format!(
                    "expected a section name, found {}",
                    self.describe_here()
                ));
            }
            other => return Err(format!("unknown section {other}")),
        });
        self.expect(b']', "']' closing the section")?;
        Ok(section)
    }

    fn header_list(&mut self) -> R<Vec<String>> {
        self.expect(b'(', "'(' starting header field names")?;
        let mut fields = Vec::new();
        loop {
            let f = self.astring("a header field name")?;
            fields.push(Self::utf8_string(f, "header field name")?);
            if self.eat(b')') {
                return Ok(fields);
            }
            self.sp()?;
        }
    }

    fn section_binary(&mut self) -> R<Vec<u32>> {
        self.expect(b'[', "'[' starting a binary section")?;
        if self.eat(b']') {
            return Ok(Vec::new());
        }
        let part = self.section_part()?;
        self.expect(b']', "']' closing the binary section")?;
        Ok(part)
    }

    fn partial(&mut self) -> R<Option<Partial>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let origin = self.number("partial origin")?;
        self.expect(b'.', "'.' in partial range")?;
        let count = self.nz_number("partial length")?;
        self.expect(b'>', "'>' closing partial range")?;
        Ok(Some(Partial { origin, count }))
    }

    /// RFC 8474 objectid: 1 to 255 letters, digits, `-` and `_`.
    fn objectid(&mut self) -> R<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.pos += 1;
        }
        let len = self.pos - start;
        if len == 0 || len > 255 {
            return Err("expected an object id (1 to 255 letters, digits, - or _)".into());
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    /// RFC 8970 `[SP "(" preview-mod *(SP preview-mod) ")"]` after `PREVIEW`; returns
    /// LAZY. The `(` is only taken when a modifier name follows, so `PREVIEW
    /// (CHANGEDSINCE 1)` still reads as FETCH modifiers.
    fn preview_mods(&mut self) -> R<bool> {
        let save = self.pos;
        if !(self.eat(b' ') && self.eat(b'(')) {
            self.pos = save;
            return Ok(false);
        }
        let mut lazy = false;
        loop {
            match self.name().as_str() {
                "LAZY" => lazy = true,
                _ if !lazy => {
                    self.pos = save;
                    return Ok(false);
                }
                other => return Err(format!("unknown PREVIEW modifier {other}")),
            }
            if self.eat(b')') {
                return Ok(lazy);
            }
            self.sp()?;
        }
    }

    fn setquota(&mut self) -> R<CommandKind> {
        // RFC 9208 allows only a few resources; a long list is a broken client.
        const RESOURCES_MAX: usize = 16;
        let root = self.astring("a quota root")?;
        let root = Self::utf8_string(root, "quota root")?;
        self.sp()?;
        self.expect(b'(', "'(' starting quota limits")?;
        let mut limits = Vec::new();
        if !self.eat(b')') {
            loop {
                if limits.len() == RESOURCES_MAX {
                    return Err(format!(
                        "SETQUOTA accepts at most {RESOURCES_MAX} resources"
                    ));
                }
                let name =
                    String::from_utf8_lossy(self.atom("a resource name")?).to_ascii_uppercase();
                self.sp()?;
                let limit = self.number64("resource limit", MODSEQ_MAX)?;
                limits.push((name, limit));
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        }
        Ok(CommandKind::SetQuota { root, limits })
    }

    /// `charset 1*(SP search-key)` as in SORT and THREAD (the charset is mandatory).
    fn charset_and_keys(&mut self) -> R<(String, Vec<SearchKey>)> {
        let cs = match self.peek() {
            Some(b'"') => self.quoted()?,
            _ => self.atom("a charset name")?.to_vec(),
        };
        let charset = Self::utf8_string(cs, "charset name")?;
        self.sp()?;
        let mut keys = vec![self.search_key(1)?];
        while self.eat(b' ') {
            keys.push(self.search_key(1)?);
        }
        Ok((charset, keys))
    }

    fn sort(&mut self, uid: bool) -> R<CommandKind> {
        self.sp()?;
        self.expect(b'(', "'(' starting sort criteria")?;
        let mut criteria = Vec::new();
        loop {
            let mut reverse = false;
            let mut name = self.name();
            if name == "REVERSE" {
                reverse = true;
                self.sp()?;
                name = self.name();
            }
            let key = match name.as_str() {
                "ARRIVAL" => SortKey::Arrival,
                "CC" => SortKey::Cc,
                "DATE" => SortKey::Date,
                "FROM" => SortKey::From,
                "SIZE" => SortKey::Size,
                "SUBJECT" => SortKey::Subject,
                "TO" => SortKey::To,
                "DISPLAYFROM" => SortKey::DisplayFrom,
                "DISPLAYTO" => SortKey::DisplayTo,
                "" => return Err(self.expected("a sort key")),
                other => return Err(format!("unknown sort key {other}")),
            };
            criteria.push(SortCriterion { reverse, key });
            if self.eat(b')') {
                break;
            }
            self.sp()?;
        }
        self.sp()?;
        let (charset, keys) = self.charset_and_keys()?;
        Ok(CommandKind::Sort {
            uid,
            criteria,
            charset,
            keys,
        })
    }

    fn thread(&mut self, uid: bool) -> R<CommandKind> {
        self.sp()?;
        let algorithm = match self.name().as_str() {
            "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
            "REFERENCES" => ThreadAlgorithm::References,
            "" => return Err(self.expected("a threading algorithm")),
            other => return Err(format!("unsupported threading algorithm {other}")),
        };
        self.sp()?;
        let (charset, keys) = self.charset_and_keys()?;
        Ok(CommandKind::Thread {
            uid,
            algorithm,
            charset,
            keys,
        })
    }

    /// RFC 5465: `NONE` or `SET [SP STATUS] SP event-group *(SP event-group)`.
    fn notify(&mut self) -> R<Option<NotifySet>> {
        // A handful of groups covers every real use; more is a broken client.
        const GROUPS_MAX: usize = 32;
        match self.name().as_str() {
            "NONE" => return Ok(None),
            "SET" => {}
            _ => return Err("NOTIFY expects SET or NONE".into()),
        }
        self.sp()?;
        let status = self.try_word("STATUS");
        if status {
            self.sp()?;
        }
        let mut groups = Vec::new();
        loop {
            if groups.len() == GROUPS_MAX {
                return Err(format!("NOTIFY accepts at most {GROUPS_MAX} event groups"));
            }
            groups.push(self.notify_group()?);
            if !self.eat(b' ') {
                break;
            }
        }
        Ok(Some(NotifySet { status, groups }))
    }

    fn notify_group(&mut self) -> R<NotifyGroup> {
        self.expect(b'(', "'(' starting a NOTIFY event group")?;
        let filter = match self.name().as_str() {
            "SELECTED" => NotifyFilter::Selected,
            "SELECTED-DELAYED" => NotifyFilter::SelectedDelayed,
            "INBOXES" => NotifyFilter::Inboxes,
            "PERSONAL" => NotifyFilter::Personal,
            "SUBSCRIBED" => NotifyFilter::Subscribed,
            "SUBTREE" => {
                self.sp()?;
                NotifyFilter::Subtree(self.one_or_more_mailbox()?)
            }
            "MAILBOXES" => {
                self.sp()?;
                NotifyFilter::Mailboxes(self.one_or_more_mailbox()?)
            }
            "" => return Err(self.expected("a NOTIFY mailbox filter")),
            other => return Err(format!("unknown NOTIFY mailbox filter {other}")),
        };
        self.sp()?;
        let mut events = Vec::new();
        if self.try_word("NONE") {
            // No events for these mailboxes.
        } else if self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            // RFC 5465's own examples write the events without their parentheses.
            events.push(self.notify_event()?);
            while self.eat(b' ') {
                events.push(self.notify_event()?);
            }
        } else {
            self.expect(b'(', "'(' starting NOTIFY events or NONE")?;
            loop {
                events.push(self.notify_event()?);
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        }
        self.expect(b')', "')' closing the NOTIFY event group")?;
        Ok(NotifyGroup { filter, events })
    }

    fn one_or_more_mailbox(&mut self) -> R<Vec<String>> {
        // Bounds the watch list a client can make us keep per session.
        const MAILBOXES_MAX: usize = 1000;
        if !self.eat(b'(') {
            return Ok(vec![self.mailbox()?]);
        }
        let mut boxes = Vec::new();
        loop {
            if boxes.len() == MAILBOXES_MAX {
                return Err(format!("NOTIFY accepts at most {MAILBOXES_MAX} mailboxes"));
            }
            boxes.push(self.mailbox()?);
            if self.eat(b')') {
                return Ok(boxes);
            }
            self.sp()?;
        }
    }

    fn notify_event(&mut self) -> R<NotifyEvent> {
        let name = self.name();
        Ok(match name.as_str() {
            "MESSAGENEW" => {
                let save = self.pos;
                let mut attrs = Vec::new();
                if self.eat(b' ') && self.eat(b'(') {
                    attrs = self.fetch_att_list_rest()?;
                } else {
                    self.pos = save;
                }
                NotifyEvent::MessageNew(attrs)
            }
            "MESSAGEEXPUNGE" => NotifyEvent::MessageExpunge,
            "FLAGCHANGE" => NotifyEvent::FlagChange,
            "ANNOTATIONCHANGE" => NotifyEvent::AnnotationChange,
            "MAILBOXNAME" => NotifyEvent::MailboxName,
            "SUBSCRIPTIONCHANGE" => NotifyEvent::SubscriptionChange,
            "MAILBOXMETADATACHANGE" => NotifyEvent::MailboxMetadataChange,
            "SERVERMETADATACHANGE" => NotifyEvent::ServerMetadataChange,
            "" => return Err(self.expected("a NOTIFY event")),
            _ => NotifyEvent::Other(name),
        })
    }

    fn search_args(&mut self) -> R<SearchArgs> {
        self.sp()?;
        let mut ret = None;
        if self.try_word("RETURN") {
            self.sp()?;
            self.expect(b'(', "'(' starting RETURN options")?;
            let mut r = SearchReturn::default();
            if !self.eat(b')') {
                loop {
                    match self.name().as_str() {
                        "MIN" => r.min = true,
                        "MAX" => r.max = true,
                        "COUNT" => r.count = true,
                        "ALL" => r.all = true,
                        "SAVE" => r.save = true,
                        "" => {
                            return Err(format!(
                                "expected a SEARCH return option, found {}",
                                self.describe_here()
                            ));
                        }
                        other => return Err(format!("unknown SEARCH return option {other}")),
                    }
                    if self.eat(b')') {
                        break;
                    }
                    self.sp()?;
                }
            }
            ret = Some(r);
            self.sp()?;
        }
        let mut charset = None;
        if self.try_word("CHARSET") {
            self.sp()?;
            let cs = self.astring("a charset name")?;
            charset = Some(Self::utf8_string(cs, "charset name")?);
            self.sp()?;
        }
        let mut keys = vec![self.search_key(1)?];
        while self.eat(b' ') {
            keys.push(self.search_key(1)?);
        }
        Ok(SearchArgs { ret, charset, keys })
    }

    fn search_key(&mut self, depth: usize) -> R<SearchKey> {
        if depth > SEARCH_DEPTH_MAX {
            return Err(format!(
                "search keys are nested more than {SEARCH_DEPTH_MAX} levels deep"
            ));
        }
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let mut keys = vec![self.search_key(depth + 1)?];
                while self.eat(b' ') {
                    keys.push(self.search_key(depth + 1)?);
                }
                self.expect(b')', "')' closing the search key list")?;
                return Ok(SearchKey::And(keys));
            }
            Some(b'0'..=b'9' | b'*' | b'$') => return Ok(SearchKey::Seq(self.seq_or_saved()?)),
            _ => {}
        }
        let key = self.name();
        let arg_str = |p: &mut Self| -> R<Vec<u8>> {
            p.sp()?;
            p.astring("a search string")
        };
        let arg_date = |p: &mut Self| -> R<Date> {
            p.sp()?;
            p.date()
        };
        Ok(match key.as_str() {
            "ALL" => SearchKey::All,
            "ANSWERED" => SearchKey::Answered,
            "DELETED" => SearchKey::Deleted,
            "DRAFT" => SearchKey::Draft,
            "FLAGGED" => SearchKey::Flagged,
            "NEW" => SearchKey::New,
            "OLD" => SearchKey::Old,
            "RECENT" => SearchKey::Recent,
            "SEEN" => SearchKey::Seen,
            "UNANSWERED" => SearchKey::Unanswered,
            "UNDELETED" => SearchKey::Undeleted,
            "UNDRAFT" => SearchKey::Undraft,
            "UNFLAGGED" => SearchKey::Unflagged,
            "UNSEEN" => SearchKey::Unseen,
            "BCC" => SearchKey::Bcc(arg_str(self)?),
            "BODY" => SearchKey::Body(arg_str(self)?),
            "CC" => SearchKey::Cc(arg_str(self)?),
            "FROM" => SearchKey::From(arg_str(self)?),
            "SUBJECT" => SearchKey::Subject(arg_str(self)?),
            "TEXT" => SearchKey::Text(arg_str(self)?),
            "TO" => SearchKey::To(arg_str(self)?),
            "BEFORE" => SearchKey::Before(arg_date(self)?),
            "ON" => SearchKey::On(arg_date(self)?),
            "SINCE" => SearchKey::Since(arg_date(self)?),
            "SENTBEFORE" => SearchKey::SentBefore(arg_date(self)?),
            "SENTON" => SearchKey::SentOn(arg_date(self)?),
            "SENTSINCE" => SearchKey::SentSince(arg_date(self)?),
            "HEADER" => {
                self.sp()?;
                let field = self.astring("a header field name")?;
                let field = Self::utf8_string(field, "header field name")?;
                SearchKey::Header(field, arg_str(self)?)
            }
            "KEYWORD" | "UNKEYWORD" => {
                self.sp()?;
                let kw = String::from_utf8_lossy(self.atom("a keyword")?).into_owned();
                if key == "KEYWORD" {
                    SearchKey::Keyword(kw)
                } else {
                    SearchKey::Unkeyword(kw)
                }
            }
            "LARGER" => {
                self.sp()?;
                SearchKey::Larger(self.number("size")?)
            }
            "SMALLER" => {
                self.sp()?;
                SearchKey::Smaller(self.number("size")?)
            }
            "OLDER" => {
                self.sp()?;
                SearchKey::Older(self.nz_number("interval in seconds")?)
            }
            "YOUNGER" => {
                self.sp()?;
                SearchKey::Younger(self.nz_number("interval in seconds")?)
            }
            "UID" => {
                self.sp()?;
                SearchKey::Uid(self.seq_or_saved()?)
            }
            "EMAILID" | "THREADID" => {
                self.sp()?;
                let id = self.objectid()?;
                if key == "EMAILID" {
                    SearchKey::EmailId(id)
                } else {
                    SearchKey::ThreadId(id)
                }
            }
            "NOT" => {
                self.sp()?;
                SearchKey::Not(Box::new(self.search_key(depth + 1)?))
            }
            "OR" => {
                self.sp()?;
                let a = self.search_key(depth + 1)?;
                self.sp()?;
                let b = self.search_key(depth + 1)?;
                SearchKey::Or(Box::new(a), Box::new(b))
            }
            "MODSEQ" => {
                self.sp()?;
                if self.peek() == Some(b'"') {
                    // RFC 7162 entry-name SP entry-type-req: accepted and ignored.
                    let entry = self.quoted()?;
                    if !entry.to_ascii_lowercase().starts_with(b"/flags/") {
                        return Err("MODSEQ entry name must start with /flags/".into());
                    }
                    self.sp()?;
                    match self.name().as_str() {
                        "PRIV" | "SHARED" | "ALL" => {}
                        _ => return Err("MODSEQ entry type must be priv, shared or all".into()),
                    }
                    self.sp()?;
                }
                SearchKey::ModSeq(self.modseq("MODSEQ value")?)
            }
            "" => {
                return Err(format!(
                    "expected a search key, found {}",
                    self.describe_here()
                ));
            }
            other => return Err(format!("unknown search key {other}")),
        })
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}
