//! The command grammar shared by LMTP (RFC 2033) and SMTP (RFC 5321): a pure function from
//! one command line (bytes, with or without its CRLF) to a [`Command`]. No I/O, no session
//! state: whether a command is allowed *now*, or in this dialect, is the session's business.
//!
//! Leniency, on purpose (a mail server that bounces real mail over pedantry loses mail):
//! - verbs and parameter keywords are case-insensitive; trailing spaces/tabs are ignored;
//! - a bare LF may end the line (the CR is optional);
//! - `MAIL FROM: <a@b>` (space after the colon) is accepted;
//! - a dot-string local part may contain empty atoms (`a..b@x`, `a.@x`): such addresses exist
//!   in the wild and the deliverer, not the grammar, decides whether they are deliverable;
//! - bytes >= 0x80 are accepted in local parts and domains when the address is valid UTF-8,
//!   so internationalised addresses reach the deliverer instead of failing here;
//! - source routes (`<@a,@b:user@c>`) are accepted and dropped (RFC 5321 §4.1.1.3 MUST);
//! - `RCPT TO:<postmaster>` without a domain is accepted (RFC 5321 §4.1.1.3 MUST).
//!
//! Strict: addresses need `local@domain` (except the two cases above and the null sender
//! `<>`), must be in angle brackets, and may not contain control characters; parameters must
//! be well formed; unknown parameters are refused (we advertise SIZE, BODY, SMTPUTF8 and the
//! RFC 4954 AUTH= parameter; whether a dialect accepts SMTPUTF8 is the session's business).

use thiserror::Error;

/// Longest SIZE value in decimal digits; u64::MAX has 20.
const SIZE_DIGITS_MAX: usize = 20;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// LMTP's greeting command (RFC 2033 §4.1).
    Lhlo {
        domain: String,
    },
    /// SMTP greetings; refused in LMTP.
    Helo {
        domain: String,
    },
    Ehlo {
        domain: String,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy {
        target: String,
    },
    Help,
    /// RFC 3207.
    StartTls,
    /// RFC 4954: `AUTH mechanism [initial-response]`. The mechanism is upper-cased; the
    /// initial response is the base64 text as sent (`=` means an empty response).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// RFC 3030 CHUNKING: `BDAT size [LAST]`; `size` octets of message follow the line.
    Bdat {
        size: u64,
        last: bool,
    },
}

/// The MAIL FROM path: the null sender `<>` (bounces) or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(String),
}

impl ReversePath {
    /// The address as the envelope carries it: empty for the null sender.
    pub fn as_str(&self) -> &str {
        match self {
            ReversePath::Null => "",
            ReversePath::Mailbox(m) => m,
        }
    }
}

/// The RCPT TO path: a mailbox, or the domain-less `<postmaster>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(String),
}

impl ForwardPath {
    /// The address handed to the deliverer: `postmaster` for the domain-less form.
    pub fn as_str(&self) -> &str {
        match self {
            ForwardPath::Postmaster => "postmaster",
            ForwardPath::Mailbox(m) => m,
        }
    }
}

/// MAIL FROM parameters we advertise (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8,
/// RFC 4954 AUTH).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// Declared message size in bytes.
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// The client asked for internationalised handling (RFC 6531).
    pub smtputf8: bool,
    /// An `AUTH=` parameter was given. Its value (the original submitter when relaying) is
    /// not used: we trust only the session's own authentication.
    pub auth: bool,
}

/// The BODY= parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// Why a line is not a valid command. The session maps each to a reply:
/// `Empty`/`UnknownCommand` → 500 5.5.2, `Syntax` → 501 5.5.4, `UnsupportedParameter` →
/// 555 5.5.4.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("empty command line")]
    Empty,
    #[error("command not recognized")]
    UnknownCommand,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The keyword is already validated (letters, digits, '-'), safe to echo.
    #[error("parameter {0} not recognized")]
    UnsupportedParameter(String),
}

/// Parse one command line. `line` may include its terminating CRLF or LF.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = strip_line_end(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    if is(b"LHLO") {
        Ok(Command::Lhlo {
            domain: text_arg(args, "LHLO needs a domain")?,
        })
    } else if is(b"HELO") {
        Ok(Command::Helo {
            domain: text_arg(args, "HELO needs a domain")?,
        })
    } else if is(b"EHLO") {
        Ok(Command::Ehlo {
            domain: text_arg(args, "EHLO needs a domain")?,
        })
    } else if is(b"MAIL") {
        parse_mail(args)
    } else if is(b"RCPT") {
        parse_rcpt(args)
    } else if is(b"DATA") {
        no_args(args, Command::Data, "DATA takes no arguments")
    } else if is(b"RSET") {
        no_args(args, Command::Rset, "RSET takes no arguments")
    } else if is(b"QUIT") {
        no_args(args, Command::Quit, "QUIT takes no arguments")
    } else if is(b"NOOP") {
        // RFC 5321 §4.1.1.9: a NOOP argument is allowed and ignored.
        Ok(Command::Noop)
    } else if is(b"HELP") {
        Ok(Command::Help)
    } else if is(b"VRFY") {
        Ok(Command::Vrfy {
            target: text_arg(args, "VRFY needs an argument")?,
        })
    } else if is(b"STARTTLS") {
        no_args(args, Command::StartTls, "STARTTLS takes no arguments")
    } else if is(b"AUTH") {
        parse_auth(args)
    } else if is(b"BDAT") {
        parse_bdat(args)
    } else {
        Err(ParseError::UnknownCommand)
    }
}

/// Drop one trailing LF (and a CR before it), then trailing spaces and tabs.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let mut line = line.strip_suffix(b"\n").unwrap_or(line);
    line = line.strip_suffix(b"\r").unwrap_or(line);
    while let [rest @ .., b' ' | b'\t'] = line {
        line = rest;
    }
    line
}

fn no_args(args: Option<&[u8]>, cmd: Command, msg: &'static str) -> Result<Command, ParseError> {
    match args {
        None => Ok(cmd),
        Some(a) if a.iter().all(|&b| b == b' ' || b == b'\t') => Ok(cmd),
        Some(_) => Err(ParseError::Syntax(msg)),
    }
}

/// A free-text argument: non-empty, valid UTF-8, no control characters.
fn text_arg(args: Option<&[u8]>, missing: &'static str) -> Result<String, ParseError> {
    let args = args.unwrap_or_default();
    let args = trim_start_sp(args);
    if args.is_empty() {
        return Err(ParseError::Syntax(missing));
    }
    if args.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::Syntax("control character in argument"));
    }
    String::from_utf8(args.to_vec()).map_err(|_| ParseError::Syntax("argument is not UTF-8"))
}

fn trim_start_sp(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// `args` after the verb must begin with `keyword` (e.g. `FROM:`), case-insensitively.
fn after_keyword<'a>(
    args: Option<&'a [u8]>,
    keyword: &[u8],
    msg: &'static str,
) -> Result<&'a [u8], ParseError> {
    let args = args.ok_or(ParseError::Syntax(msg))?;
    match args.get(..keyword.len()) {
        Some(head) if head.eq_ignore_ascii_case(keyword) => {
            Ok(trim_start_sp(&args[keyword.len()..]))
        }
        _ => Err(ParseError::Syntax(msg)),
    }
}

fn parse_mail(args: Option<&[u8]>) -> Result<Command, ParseError> {
    let rest = after_keyword(args, b"FROM:", "expected MAIL FROM:<address>")?;
    let mut p = Cursor::new(rest);
    p.expect(b'<', "expected MAIL FROM:<address>")?;
    let from = if p.eat(b'>') {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(parse_mailbox_in_path(&mut p)?)
    };
    let mut params = MailParams::default();
    for (key, value) in parse_params(p.rest())? {
        if key.eq_ignore_ascii_case(b"SIZE") {
            if params.size.is_some() {
                return Err(ParseError::Syntax("SIZE given twice"));
            }
            params.size = Some(parse_size(value)?);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            if params.body.is_some() {
                return Err(ParseError::Syntax("BODY given twice"));
            }
            params.body = Some(match value {
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => Body::EightBitMime,
                _ => return Err(ParseError::Syntax("BODY must be 7BIT or 8BITMIME")),
            });
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() || params.smtputf8 {
                return Err(ParseError::Syntax("SMTPUTF8 takes no value"));
            }
            params.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"AUTH") {
            if value.is_none() || params.auth {
                return Err(ParseError::Syntax("AUTH= needs one value"));
            }
            params.auth = true;
        } else {
            return Err(unsupported(key));
        }
    }
    Ok(Command::Mail { from, params })
}

/// Longest SASL mechanism name (RFC 4422 §3.1: 1 to 20 characters).
const MECHANISM_BYTES_MAX: usize = 20;

fn parse_auth(args: Option<&[u8]>) -> Result<Command, ParseError> {
    let args = trim_start_sp(args.unwrap_or_default());
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mech = words
        .next()
        .ok_or(ParseError::Syntax("AUTH needs a mechanism"))?;
    if mech.len() > MECHANISM_BYTES_MAX
        || !mech
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ParseError::Syntax("malformed SASL mechanism name"));
    }
    let initial = match words.next() {
        None => None,
        Some(w) if w == b"=" || is_base64_text(w) => {
            // The parser above already rejected non-ASCII bytes.
            Some(String::from_utf8_lossy(w).into_owned())
        }
        Some(_) => return Err(ParseError::Syntax("initial response is not base64")),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax(
            "AUTH takes a mechanism and one response",
        ));
    }
    Ok(Command::Auth {
        mechanism: String::from_utf8_lossy(mech).to_ascii_uppercase(),
        initial,
    })
}

/// Base64 alphabet and padding only (the decoder checks the rest).
pub(crate) fn is_base64_text(w: &[u8]) -> bool {
    w.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

fn parse_bdat(args: Option<&[u8]>) -> Result<Command, ParseError> {
    let args = trim_start_sp(args.unwrap_or_default());
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(ParseError::Syntax("BDAT needs a chunk size"))?;
    if size.is_empty() || size.len() > SIZE_DIGITS_MAX || !size.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Syntax(
            "BDAT chunk size must be a decimal number",
        ));
    }
    let size =
        parse_size(Some(size)).map_err(|_| ParseError::Syntax("BDAT chunk size too large"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(ParseError::Syntax("expected BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax("expected BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_rcpt(args: Option<&[u8]>) -> Result<Command, ParseError> {
    let rest = after_keyword(args, b"TO:", "expected RCPT TO:<address>")?;
    let mut p = Cursor::new(rest);
    p.expect(b'<', "expected RCPT TO:<address>")?;
    let to = if p.eat_ignore_case(b"postmaster>") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(parse_mailbox_in_path(&mut p)?)
    };
    // We advertise no RCPT parameters (no DSN yet), so any is unsupported.
    if let Some((key, _)) = parse_params(p.rest())?.into_iter().next() {
        return Err(unsupported(key));
    }
    Ok(Command::Rcpt { to })
}

fn unsupported(key: &[u8]) -> ParseError {
    // parse_params only yields keywords of letters, digits and '-', so this is ASCII.
    ParseError::UnsupportedParameter(String::from_utf8_lossy(key).to_ascii_uppercase())
}

fn parse_size(value: Option<&[u8]>) -> Result<u64, ParseError> {
    let v = value.ok_or(ParseError::Syntax("SIZE needs a value"))?;
    if v.is_empty() || v.len() > SIZE_DIGITS_MAX || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Syntax("SIZE must be a decimal number"));
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::Syntax("SIZE too large"))
    })
}

/// After the closing `>`: nothing, or ` KEY[=VALUE]` groups separated by spaces.
/// KEY = ALPHA/DIGIT then ALPHA/DIGIT/'-'; VALUE = %d33-60 / %d62-126 (RFC 5321 §4.1.2).
type Param<'a> = (&'a [u8], Option<&'a [u8]>);

fn parse_params(rest: &[u8]) -> Result<Vec<Param<'_>>, ParseError> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    if rest[0] != b' ' {
        return Err(ParseError::Syntax("expected space after address"));
    }
    let mut out = Vec::new();
    for word in rest.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
            && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(ParseError::Syntax("malformed parameter keyword"));
        }
        if let Some(v) = value
            && (v.is_empty() || !v.iter().all(|&b| (33..=126).contains(&b) && b != b'='))
        {
            return Err(ParseError::Syntax("malformed parameter value"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Byte cursor over an argument string.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, i: 0 }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_ignore_case(&mut self, word: &[u8]) -> bool {
        match self.s.get(self.i..self.i + word.len()) {
            Some(w) if w.eq_ignore_ascii_case(word) => {
                self.i += word.len();
                true
            }
            _ => false,
        }
    }
    fn expect(&mut self, b: u8, msg: &'static str) -> Result<(), ParseError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(ParseError::Syntax(msg))
        }
    }
    fn rest(&self) -> &'a [u8] {
        self.s.get(self.i..).unwrap_or_default()
    }
}

/// After `<`: `[source-route:]local@domain>`. Returns `local@domain` as written.
fn parse_mailbox_in_path(p: &mut Cursor<'_>) -> Result<String, ParseError> {
    if p.peek() == Some(b'@') {
        skip_source_route(p)?;
    }
    let start = p.i;
    parse_local_part(p)?;
    p.expect(b'@', "address needs local@domain")?;
    parse_domain(p)?;
    let end = p.i;
    p.expect(b'>', "expected '>' after address")?;
    let addr = &p.s[start..end];
    String::from_utf8(addr.to_vec()).map_err(|_| ParseError::Syntax("address is not UTF-8"))
}

/// `@a.example,@b.example:` — accepted and ignored (RFC 5321 §4.1.1.3, Appendix C).
fn skip_source_route(p: &mut Cursor<'_>) -> Result<(), ParseError> {
    loop {
        p.expect(b'@', "malformed source route")?;
        parse_domain(p)?;
        if p.eat(b':') {
            return Ok(());
        }
        p.expect(b',', "malformed source route")?;
    }
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

fn parse_local_part(p: &mut Cursor<'_>) -> Result<(), ParseError> {
    if p.eat(b'"') {
        // Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP = "\" %d32-126.
        loop {
            match p.peek() {
                Some(b'"') => {
                    p.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    p.i += 1;
                    match p.peek() {
                        Some(b) if (32..=126).contains(&b) => p.i += 1,
                        _ => return Err(ParseError::Syntax("bad escape in quoted local part")),
                    }
                }
                Some(b) if (32..=126).contains(&b) || b >= 0x80 => p.i += 1,
                _ => return Err(ParseError::Syntax("unterminated quoted local part")),
            }
        }
    }
    let start = p.i;
    while let Some(b) = p.peek() {
        if is_atext(b) || b == b'.' {
            p.i += 1;
        } else {
            break;
        }
    }
    if p.i == start {
        return Err(ParseError::Syntax("empty local part"));
    }
    Ok(())
}

fn parse_domain(p: &mut Cursor<'_>) -> Result<(), ParseError> {
    if p.eat(b'[') {
        // address-literal: printable ASCII other than brackets and backslash.
        let start = p.i;
        while let Some(b) = p.peek() {
            if (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\') {
                p.i += 1;
            } else {
                break;
            }
        }
        if p.i == start {
            return Err(ParseError::Syntax("empty address literal"));
        }
        return p.expect(b']', "unterminated address literal");
    }
    loop {
        let start = p.i;
        while let Some(b) = p.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80 {
                p.i += 1;
            } else {
                break;
            }
        }
        if p.i == start {
            return Err(ParseError::Syntax("malformed domain"));
        }
        if !p.eat(b'.') {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mailbox(s: &str) -> ReversePath {
        ReversePath::Mailbox(s.to_string())
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse_command(b"DATA\r\n"), Ok(Command::Data));
        assert_eq!(parse_command(b"data"), Ok(Command::Data));
        assert_eq!(parse_command(b"RSET \r\n"), Ok(Command::Rset));
        assert_eq!(parse_command(b"QUIT\n"), Ok(Command::Quit));
        assert_eq!(parse_command(b"NOOP hello"), Ok(Command::Noop));
        assert_eq!(
            parse_command(b"LHLO mx.example.com\r\n"),
            Ok(Command::Lhlo {
                domain: "mx.example.com".into()
            })
        );
        assert_eq!(
            parse_command(b"VRFY bob"),
            Ok(Command::Vrfy {
                target: "bob".into()
            })
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(parse_command(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(parse_command(b"XBDAT 10"), Err(ParseError::UnknownCommand));
        assert!(matches!(
            parse_command(b"DATA now"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(parse_command(b"LHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse_command(b"MAIL TO:<a@b>"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn mail_from_forms() {
        assert_eq!(
            parse_command(b"MAIL FROM:<>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            })
        );
        assert_eq!(
            parse_command(b"mail from: <a.b+c@ex-ample.com> size=123 BODY=8bitmime"),
            Ok(Command::Mail {
                from: mailbox("a.b+c@ex-ample.com"),
                params: MailParams {
                    size: Some(123),
                    body: Some(Body::EightBitMime),
                    ..MailParams::default()
                }
            })
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<@relay.example,@r2.example:u@x.example>"),
            Ok(Command::Mail {
                from: mailbox("u@x.example"),
                params: MailParams::default()
            })
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<\"john doe\\\"x\"@[192.0.2.1]>"),
            Ok(Command::Mail {
                from: mailbox("\"john doe\\\"x\"@[192.0.2.1]"),
                params: MailParams::default()
            })
        );
    }

    #[test]
    fn mail_from_rejects() {
        for line in [
            &b"MAIL FROM:a@b"[..],
            b"MAIL FROM:<a@b",
            b"MAIL FROM:<a>",
            b"MAIL FROM:<@b>",
            b"MAIL FROM:<a@>",
            b"MAIL FROM:<a@b.>",
            b"MAIL FROM:<a@b>x",
            b"MAIL FROM:<a@b> SIZE=",
            b"MAIL FROM:<a@b> SIZE=12a",
            b"MAIL FROM:<a@b> SIZE=99999999999999999999999",
            b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
            b"MAIL FROM:<a@b> BODY=BINARYMIME",
            b"MAIL FROM:<a\r@b>",
            b"MAIL FROM:<a\xff@b>",
        ] {
            assert!(
                matches!(parse_command(line), Err(ParseError::Syntax(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(line),
                parse_command(line)
            );
        }
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b> RET=HDRS"),
            Err(ParseError::UnsupportedParameter("RET".into()))
        );
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b> SMTPUTF8=yes"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn rcpt_to_forms() {
        assert_eq!(
            parse_command(b"RCPT TO:<user+tag@example.com>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox("user+tag@example.com".into())
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<PostMaster>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Postmaster
            })
        );
        assert!(matches!(
            parse_command(b"RCPT TO:<>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"RCPT TO:<user>"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            parse_command(b"RCPT TO:<a@b> NOTIFY=NEVER"),
            Err(ParseError::UnsupportedParameter("NOTIFY".into()))
        );
    }

    #[test]
    fn smtp_extensions() {
        assert_eq!(parse_command(b"STARTTLS\r\n"), Ok(Command::StartTls));
        assert!(matches!(
            parse_command(b"STARTTLS now"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            parse_command(b"auth plain AGFAYgBj"),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFAYgBj".into())
            })
        );
        assert_eq!(
            parse_command(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(
            parse_command(b"AUTH PLAIN ="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("=".into())
            })
        );
        for bad in [
            &b"AUTH"[..],
            b"AUTH PL\x01AIN",
            b"AUTH PLAIN a b",
            b"AUTH PLAIN a*b",
        ] {
            assert!(matches!(parse_command(bad), Err(ParseError::Syntax(_))));
        }
        assert_eq!(
            parse_command(b"BDAT 1000 LAST"),
            Ok(Command::Bdat {
                size: 1000,
                last: true
            })
        );
        assert_eq!(
            parse_command(b"bdat 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        for bad in [
            &b"BDAT"[..],
            b"BDAT x",
            b"BDAT 1 FIRST",
            b"BDAT -1",
            b"BDAT 1 LAST x",
        ] {
            assert!(matches!(parse_command(bad), Err(ParseError::Syntax(_))));
        }
        assert_eq!(
            parse_command(b"MAIL FROM:<\xc3\xa9@b.example> SMTPUTF8 AUTH=<>"),
            Ok(Command::Mail {
                from: mailbox("\u{e9}@b.example"),
                params: MailParams {
                    smtputf8: true,
                    auth: true,
                    ..MailParams::default()
                }
            })
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_command(&line);
        }

        #[test]
        fn parser_never_panics_on_plausible_lines(
            verb in "(MAIL FROM:|RCPT TO:|LHLO|VRFY|DATA|mail from: |AUTH |BDAT |STARTTLS)",
            tail in "[<>@.\"\\\\\\[\\]:,= a-zA-Z0-9\\x80-\\xff]{0,60}",
        ) {
            let _ = parse_command(format!("{verb}{tail}").as_bytes());
        }

        #[test]
        fn mail_from_round_trips(
            local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,16}(\\.[a-z0-9]{1,8}){0,2}",
            domain in "[a-z0-9]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
            size in proptest::option::of(any::<u64>()),
            body in proptest::option::of(prop_oneof![Just(Body::SevenBit), Just(Body::EightBitMime)]),
            verb in "(MAIL|mail|Mail) (FROM|from):",
        ) {
            let addr = format!("{local}@{domain}");
            let mut line = format!("{verb}<{addr}>");
            if let Some(s) = size { line.push_str(&format!(" SIZE={s}")); }
            match body {
                Some(Body::SevenBit) => line.push_str(" BODY=7BIT"),
                Some(Body::EightBitMime) => line.push_str(" BODY=8BITMIME"),
                None => {}
            }
            line.push_str("\r\n");
            prop_assert_eq!(
                parse_command(line.as_bytes()),
                Ok(Command::Mail { from: ReversePath::Mailbox(addr), params: MailParams { size, body, ..MailParams::default() } })
            );
        }
    }
}
