//! The POP3 command grammar (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH) and
//! the line framer. Pure functions over bytes: no I/O, never panics on any input (the
//! proptests below feed arbitrary bytes).
//!
//! Grammar as accepted: a keyword of letters (case-insensitive), then arguments separated
//! by spaces. We are lenient where clients are known to be sloppy (runs of spaces, a
//! trailing space) and strict where a wrong guess would act on the wrong message (a
//! message number is 1 to 10 ASCII digits, nothing else). `PASS` takes the rest of the
//! line verbatim, because RFC 1939 7 lets a password contain spaces.

/// A 1-based message number as the client wrote it (its meaning depends on the session's
/// snapshot of the maildrop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgNum(pub u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(Vec<u8>),
    /// `AUTH` alone lists the mechanisms (a pre-RFC 5034 habit some clients still have).
    /// `initial`: the initial response as sent (base64 text, or `=` for empty).
    Auth {
        mechanism: Option<String>,
        initial: Option<Vec<u8>>,
    },
    /// Recognised so the answer can say it is not offered (no stored plaintext secrets).
    Apop,
    Stls,
    Capa,
    Stat,
    List(Option<MsgNum>),
    Uidl(Option<MsgNum>),
    Retr(MsgNum),
    Top {
        msg: MsgNum,
        lines: u32,
    },
    Dele(MsgNum),
    Noop,
    Rset,
    Quit,
}

/// Why a line is not a command; `message` is the text for the `-ERR` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
}

fn err(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
    }
}

/// Longest argument we take (RFC 1939 says 40 octets; user names are addresses, which
/// may be up to 254, and SASL initial responses are longer still).
pub const ARG_BYTES_MAX: usize = 1024;

/// Parses one command line, without its line ending (a trailing CR/LF is tolerated).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = trim_line_end(line);
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    if keyword.is_empty() {
        return Err(err("Empty command"));
    }
    if keyword.len() > 4 || !keyword.iter().all(u8::is_ascii_alphabetic) {
        return Err(err("Unknown command"));
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];
    if kw == b"PASS" {
        // Verbatim: spaces are part of the password. Only the separator space was removed.
        if rest.is_empty() {
            return Err(err("PASS needs a password"));
        }
        if rest.len() > ARG_BYTES_MAX {
            return Err(err("Password too long"));
        }
        return Ok(Command::Pass(rest.to_vec()));
    }
    let args: Vec<&[u8]> = rest
        .split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    if args.iter().any(|a| a.len() > ARG_BYTES_MAX) {
        return Err(err("Argument too long"));
    }
    let none = |cmd: Command| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(err(format!(
                "{} takes no arguments",
                String::from_utf8_lossy(kw)
            )))
        }
    };
    match kw {
        b"USER" => match args.as_slice() {
            [name] => std::str::from_utf8(name)
                .map(|s| Command::User(s.to_string()))
                .map_err(|_| err("User name is not valid UTF-8")),
            _ => Err(err("USER needs exactly one argument: the account address")),
        },
        b"AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [mech] | [mech, _] if !is_token(mech) => Err(err("Invalid mechanism name")),
            [mech] => Ok(Command::Auth {
                mechanism: Some(ascii(mech)),
                initial: None,
            }),
            [mech, initial] => Ok(Command::Auth {
                mechanism: Some(ascii(mech)),
                initial: Some(initial.to_vec()),
            }),
            _ => Err(err(
                "AUTH takes a mechanism and an optional initial response",
            )),
        },
        b"APOP" => Ok(Command::Apop),
        b"STLS" => none(Command::Stls),
        b"CAPA" => none(Command::Capa),
        b"STAT" => none(Command::Stat),
        b"NOOP" => none(Command::Noop),
        b"RSET" => none(Command::Rset),
        b"QUIT" => none(Command::Quit),
        b"LIST" | b"UIDL" => {
            let msg = match args.as_slice() {
                [] => None,
                [n] => Some(msg_num(n)?),
                _ => return Err(err("At most one message number")),
            };
            Ok(if kw == b"LIST" {
                Command::List(msg)
            } else {
                Command::Uidl(msg)
            })
        }
        b"RETR" | b"DELE" => match args.as_slice() {
            [n] => {
                let n = msg_num(n)?;
                Ok(if kw == b"RETR" {
                    Command::Retr(n)
                } else {
                    Command::Dele(n)
                })
            }
            _ => Err(err("Exactly one message number needed")),
        },
        b"TOP" => match args.as_slice() {
            [n, lines] => Ok(Command::Top {
                msg: msg_num(n)?,
                lines: count(lines)?,
            }),
            _ => Err(err("TOP needs a message number and a line count")),
        },
        _ => Err(err("Unknown command")),
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Some clients end commands with a space or tab before CRLF.
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn is_token(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 20
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

fn msg_num(b: &[u8]) -> Result<MsgNum, ParseError> {
    match digits(b).and_then(|n| u32::try_from(n).ok()) {
        Some(0) => Err(err("Message numbers start at 1")),
        Some(n) => Ok(MsgNum(n)),
        None => Err(err("Invalid message number")),
    }
}

/// A line count for TOP: any non-negative number; past `u32::MAX` it means "all".
fn count(b: &[u8]) -> Result<u32, ParseError> {
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        if b.len() > 10 {
            return Ok(u32::MAX);
        }
        return Ok(digits(b).map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)));
    }
    Err(err("Invalid line count"))
}

/// What the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its line ending.
    Complete(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded up to its end.
    TooLong,
}

/// Splits the client's byte stream into lines. Memory is bounded: at most `max + 1` bytes
/// of an unfinished line are kept; a longer line is reported once as `TooLong` and the
/// rest of it is skipped as it arrives.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf` (consumed lines are compacted lazily, so
    /// many pipelined commands do not cost a copy each).
    start: usize,
    /// Inside an over-long line whose end has not arrived yet.
    discarding: bool,
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Drops everything buffered (STLS: bytes sent before the handshake were plaintext
    /// and may have been injected by a man in the middle).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next line if one is complete. `max`: longest line accepted, in bytes without
    /// the line ending.
    pub fn next_line(&mut self, max: usize) -> Option<Line> {
        loop {
            let pending = &self.buf[self.start..];
            match pending.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = self.start + i;
                    let was_discarding = std::mem::take(&mut self.discarding);
                    let mut line = &self.buf[self.start..end];
                    line = line.strip_suffix(b"\r").unwrap_or(line);
                    let out = if was_discarding {
                        None
                    } else if line.len() > max {
                        Some(Line::TooLong)
                    } else {
                        Some(Line::Complete(line.to_vec()))
                    };
                    self.start = end + 1;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    match out {
                        Some(l) => return Some(l),
                        // The tail of an over-long line: already answered, skip it.
                        None => continue,
                    }
                }
                None => {
                    self.buf.drain(..self.start);
                    self.start = 0;
                    // `max + 1`: a CR may be waiting for its LF.
                    if self.buf.len() > max.saturating_add(1) {
                        self.buf.clear();
                        if !std::mem::replace(&mut self.discarding, true) {
                            return Some(Line::TooLong);
                        }
                    } else if self.discarding {
                        self.buf.clear();
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_commands_any_case() {
        assert_eq!(parse_command(b"STAT"), Ok(Command::Stat));
        assert_eq!(parse_command(b"stat\r\n"), Ok(Command::Stat));
        assert_eq!(parse_command(b"Quit "), Ok(Command::Quit));
        assert_eq!(parse_command(b"capa"), Ok(Command::Capa));
        assert_eq!(parse_command(b"STLS"), Ok(Command::Stls));
        assert_eq!(parse_command(b"NOOP"), Ok(Command::Noop));
        assert_eq!(parse_command(b"RSET"), Ok(Command::Rset));
        assert!(parse_command(b"STAT 1").is_err());
        assert!(parse_command(b"").is_err());
        assert!(parse_command(b"XYZZY").is_err());
        assert!(parse_command(b"LIST\x001").is_err());
    }

    #[test]
    fn message_numbers_are_strict() {
        assert_eq!(parse_command(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse_command(b"LIST 2"), Ok(Command::List(Some(MsgNum(2)))));
        assert_eq!(
            parse_command(b"uidl  7 "),
            Ok(Command::Uidl(Some(MsgNum(7))))
        );
        assert_eq!(parse_command(b"RETR 1"), Ok(Command::Retr(MsgNum(1))));
        assert_eq!(
            parse_command(b"DELE 4294967295"),
            Ok(Command::Dele(MsgNum(u32::MAX)))
        );
        for bad in [
            &b"RETR 0"[..],
            b"RETR -1",
            b"RETR +1",
            b"RETR 1x",
            b"RETR 4294967296",
            b"RETR",
            b"RETR 1 2",
            b"DELE 99999999999",
            b"LIST 1 2",
        ] {
            assert!(
                parse_command(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_command(b"TOP 3 0"),
            Ok(Command::Top {
                msg: MsgNum(3),
                lines: 0
            })
        );
        assert_eq!(
            parse_command(b"TOP 3 123456789012345"),
            Ok(Command::Top {
                msg: MsgNum(3),
                lines: u32::MAX
            })
        );
        assert!(parse_command(b"TOP 3").is_err());
        assert!(parse_command(b"TOP 3 -1").is_err());
    }

    #[test]
    fn pass_keeps_spaces_and_auth_takes_initial_response() {
        assert_eq!(
            parse_command(b"PASS my secret  pw\r\n"),
            Ok(Command::Pass(b"my secret  pw".to_vec()))
        );
        assert!(parse_command(b"PASS").is_err());
        assert_eq!(
            parse_command(b"USER alice@example.com"),
            Ok(Command::User("alice@example.com".into()))
        );
        assert!(parse_command(b"USER").is_err());
        assert!(parse_command(b"USER a b").is_err());
        assert_eq!(
            parse_command(b"AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial: None
            })
        );
        assert_eq!(
            parse_command(b"auth plain"),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial: None
            })
        );
        assert_eq!(
            parse_command(b"AUTH PLAIN AGFsaWNlAHB3"),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial: Some(b"AGFsaWNlAHB3".to_vec())
            })
        );
        assert!(parse_command(b"AUTH PL@IN").is_err());
        assert_eq!(
            parse_command(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Ok(Command::Apop)
        );
    }

    #[test]
    fn line_reader_splits_bounds_and_recovers() {
        let mut r = LineReader::new();
        r.push(b"USER a\r\nPASS b\r\nST");
        assert_eq!(r.next_line(16), Some(Line::Complete(b"USER a".to_vec())));
        assert_eq!(r.next_line(16), Some(Line::Complete(b"PASS b".to_vec())));
        assert_eq!(r.next_line(16), None);
        r.push(b"AT\n");
        assert_eq!(r.next_line(16), Some(Line::Complete(b"STAT".to_vec())));
        // Over-long: reported once, the rest skipped, then the next line is normal.
        r.push(&[b'x'; 40]);
        assert_eq!(r.next_line(16), Some(Line::TooLong));
        r.push(&[b'x'; 40]);
        assert_eq!(r.next_line(16), None);
        assert!(r.buffered() <= 17);
        r.push(b"xx\r\nNOOP\r\n");
        assert_eq!(r.next_line(16), Some(Line::Complete(b"NOOP".to_vec())));
        // Over-long but complete in one push.
        r.push(&[b'y'; 20]);
        r.push(b"\r\nQUIT\r\n");
        assert_eq!(r.next_line(16), Some(Line::TooLong));
        assert_eq!(r.next_line(16), Some(Line::Complete(b"QUIT".to_vec())));
        // Exactly at the limit is fine, with or without CR.
        r.push(b"0123456789abcdef\r\n0123456789abcdef\n");
        assert!(matches!(r.next_line(16), Some(Line::Complete(l)) if l.len() == 16));
        assert!(matches!(r.next_line(16), Some(Line::Complete(l)) if l.len() == 16));
        r.push(b"junk");
        r.clear();
        assert_eq!(r.buffered(), 0);
    }

    proptest! {
        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse_command(&line);
        }

        #[test]
        fn parser_never_panics_on_plausible_lines(
            verb in "(USER|PASS|AUTH|APOP|STLS|CAPA|STAT|LIST|UIDL|RETR|TOP|DELE|NOOP|RSET|QUIT|top|list)",
            tail in "[ 0-9a-zA-Z=+/\\-\\x80-\\xff\\t\\r]{0,40}",
        ) {
            let _ = parse_command(format!("{verb} {tail}").as_bytes());
        }

        #[test]
        fn numbered_commands_round_trip(n in 1u32.., lines in any::<u32>(), lower in any::<bool>()) {
            let kw = |s: &str| if lower { s.to_lowercase() } else { s.to_string() };
            prop_assert_eq!(parse_command(format!("{} {n}\r\n", kw("RETR")).as_bytes()), Ok(Command::Retr(MsgNum(n))));
            prop_assert_eq!(parse_command(format!("{} {n}", kw("DELE")).as_bytes()), Ok(Command::Dele(MsgNum(n))));
            prop_assert_eq!(parse_command(format!("{} {n}", kw("LIST")).as_bytes()), Ok(Command::List(Some(MsgNum(n)))));
            prop_assert_eq!(
                parse_command(format!("{} {n} {lines}", kw("TOP")).as_bytes()),
                Ok(Command::Top { msg: MsgNum(n), lines })
            );
        }

        /// Whatever the chunking, the reader yields the same lines, never holds more than
        /// the limit plus one read, and never panics.
        #[test]
        fn line_reader_is_chunking_independent(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..600),
            cuts in proptest::collection::vec(1usize..50, 1..40),
            max in 0usize..40,
        ) {
            let collect = |chunks: Vec<&[u8]>| {
                let mut r = LineReader::new();
                let mut out = Vec::new();
                for c in chunks {
                    r.push(c);
                    while let Some(l) = r.next_line(max) {
                        out.push(l);
                    }
                    assert!(r.buffered() <= max + 1 + c.len());
                }
                out
            };
            let whole = collect(vec![&data]);
            let mut chunks = Vec::new();
            let mut rest = &data[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let (a, b) = rest.split_at((*c).min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            // An over-long line may be reported before its end arrives (chunked) or at its
            // end (whole); either way it is reported once, so the sequences match.
            prop_assert_eq!(collect(chunks), whole);
        }
    }
}
