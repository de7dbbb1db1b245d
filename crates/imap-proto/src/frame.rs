//! Incremental command framing: socket bytes in, whole commands out.
//!
//! Wire format (RFC 3501 §2.2 and §4.3, RFC 7888 LITERAL+, RFC 3516 BINARY): a command is
//! a line ending in LF (CRLF on the wire; a bare LF is tolerated). A line that ends with a
//! literal marker — `{n}`, `{n+}`, `~{n}` or `~{n+}` right before the line end — is
//! followed by exactly `n` payload bytes, after which the command continues with another
//! line, and so on until a line that does not end in a marker.
//!
//! - `{n}` / `~{n}` are *synchronizing*: the client waits for a `+` continuation before
//!   sending the payload, so the framer yields [`Frame::NeedContinuation`] and the session
//!   answers `+ Ready` (or a tagged NO/BAD, after which the client abandons the command).
//! - `{n+}` / `~{n+}` are *non-synchronizing*: the payload follows immediately.
//!
//! Limits and what happens at them (memory stays bounded whatever the client sends):
//! - A line segment longer than [`Limits::line_bytes_max`] (counting its CRLF), or one that
//!   would push the command past [`Limits::command_bytes_max`], is discarded as it arrives
//!   (only the last [`TAIL_BYTES`] bytes are remembered, to spot a literal marker) and the
//!   framer yields [`Frame::LineTooLong`] when its line end arrives. If that discarded line
//!   ended in a non-synchronizing literal, the payload and the rest of the command are
//!   skipped silently; a synchronizing one is never answered, so the client gives up.
//! - A literal larger than [`Limits::literal_bytes_max`], or one that would push the command
//!   past `command_bytes_max`, yields [`Frame::LiteralTooLarge`] at once and the command is
//!   dropped. For a synchronizing literal the client sends nothing more for it. For a
//!   non-synchronizing one RFC 7888 §4 says the server must still read the bytes or close
//!   the connection: the framer *reads and discards* them (counting, never storing) and
//!   then discards the rest of the command. The session may close instead when
//!   `literal_bytes` is absurd.
//!
//! Memory: the framer holds at most `command_bytes_max` of accepted command plus the bytes
//! of the most recent `push` that `next()` has not yet consumed, capped by the line limit
//! while scanning a line. Call [`Framer::next`] until it returns `None` after every
//! [`Framer::push`]; `next` consumes everything it can before returning `None`.

/// How many trailing bytes of a discarded line are kept to recognise a literal marker.
/// A marker is `~{` + digits + `+}` + CRLF; 64 bytes covers any number that fits in u64.
pub const TAIL_BYTES: usize = 64;

/// The longest tag reported back in errors; real tags are a handful of characters.
const TAG_REPORT_MAX: usize = 64;

/// Size limits for one connection's command stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line segment (text between literals, including its CRLF). Default 64 KiB.
    pub line_bytes_max: usize,
    /// Largest single literal. Default 64 MiB.
    pub literal_bytes_max: usize,
    /// Largest whole command, lines and literals together (bounds MULTIAPPEND).
    /// Default 65 MiB: one maximal literal plus its lines.
    pub command_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            line_bytes_max: 64 * 1024,
            literal_bytes_max: 64 * 1024 * 1024,
            command_bytes_max: 65 * 1024 * 1024,
        }
    }
}

/// What the framer found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole command: tag through final CRLF, literal markers and payloads included.
    Command(Vec<u8>),
    /// A synchronizing literal of this size was announced; the session must answer
    /// `+ Ready` (or reject the command with a tagged NO/BAD, abandoning it).
    NeedContinuation { literal_bytes: usize },
    /// A line was longer than the limits allow (or made the command too large); it and
    /// the rest of its command were discarded. The session answers `TAG BAD` (or `* BAD`).
    LineTooLong { tag: Option<String> },
    /// A literal was larger than the limits allow; the command is dropped. The session
    /// answers `TAG NO [TOOBIG]` (or BAD). See the module docs for non-sync literals.
    LiteralTooLarge {
        tag: Option<String>,
        literal_bytes: usize,
    },
}

/// [`Framer::take_line`] found a line longer than `line_bytes_max`; it was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than the line limit; it was discarded")]
pub struct LineTooLong;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Scanning for the end of a line segment; the segment so far is in `buf`.
    Line,
    /// Copying `remaining` literal payload bytes into `cmd`.
    Literal { remaining: usize },
    /// Dropping an over-long line up to its LF, remembering its last bytes in `tail`.
    /// `report`: yield `LineTooLong` at the line end (false while skipping the rest of a
    /// command whose error was already reported).
    Discard {
        tag: Option<String>,
        tail: Vec<u8>,
        report: bool,
    },
    /// Dropping an over-long raw line seen by `take_line`.
    DiscardRaw,
    /// Dropping a rejected non-synchronizing literal's payload, then the rest of its command.
    Skip { remaining: u64 },
}

/// Splits a client byte stream into commands. See the module docs.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    /// Received bytes not yet consumed.
    buf: Vec<u8>,
    /// Prefix of `buf` already known to hold no LF, so byte-at-a-time input stays O(n).
    scanned: usize,
    /// The command assembled so far (earlier line segments and literal payloads).
    cmd: Vec<u8>,
    state: State,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            scanned: 0,
            cmd: Vec::new(),
            state: State::Line,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends bytes read from the socket. Call [`Framer::next`] until `None` afterwards.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes currently held (pending input plus the partial command): what the memory
    /// bound in the module docs is about.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() + self.cmd.len()
    }

    /// True when no partial command or unconsumed input is held: a clean place to stop
    /// reading (e.g. before STARTTLS, where buffered plaintext must be refused).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.cmd.is_empty() && self.state == State::Line
    }

    /// Frees buffer capacity beyond what is held now (after a large command, before a
    /// long wait): a session's idle memory is then what it holds, not its high-water mark.
    pub fn release_spare_memory(&mut self) {
        self.buf.shrink_to_fit();
        self.cmd.shrink_to_fit();
    }

    /// Takes the received bytes not yet framed, when no command is half-framed (else
    /// `None`). COMPRESS needs them: whatever the client sent after the command that
    /// switched the stream belongs to the new (compressed) stream.
    pub fn take_unframed(&mut self) -> Option<Vec<u8>> {
        if !self.cmd.is_empty() || self.state != State::Line {
            return None;
        }
        self.scanned = 0;
        Some(std::mem::take(&mut self.buf))
    }

    /// Room left for the current line segment under both the line and command limits.
    fn line_budget(&self) -> usize {
        self.limits
            .line_bytes_max
            .min(self.limits.command_bytes_max.saturating_sub(self.cmd.len()))
    }

    fn find_lf(&mut self) -> Option<usize> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                let i = self.scanned + p;
                self.scanned = 0;
                Some(i)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    fn drain_front(&mut self, n: usize) -> Vec<u8> {
        self.scanned = self.scanned.saturating_sub(n);
        self.buf.drain(..n).collect()
    }

    /// Switches to discarding the current (over-long) line and the rest of its command.
    fn start_discard(&mut self, budget: usize) {
        let tag = if self.cmd.is_empty() {
            // Look only at bytes every chunking of the input has seen by now, so the
            // reported tag does not depend on how the stream was split.
            let seen = self.buf.len().min(budget.saturating_add(1));
            tag_of(&self.buf[..seen])
        } else {
            tag_of(&self.cmd)
        };
        self.cmd = Vec::new();
        self.state = State::Discard {
            tag,
            tail: Vec::new(),
            report: true,
        };
    }

    /// Returns the next frame, or `None` when more input is needed.
    #[allow(clippy::should_implement_trait)] // Not an Iterator: `None` means "push more".
    pub fn next(&mut self) -> Option<Frame> {
        loop {
            match &mut self.state {
                State::Line => {
                    let budget = self.line_budget();
                    let Some(i) = self.find_lf() else {
                        if self.buf.len() > budget {
                            self.start_discard(budget);
                            continue;
                        }
                        return None;
                    };
                    if i + 1 > budget {
                        self.start_discard(budget);
                        continue;
                    }
                    let line = self.drain_front(i + 1);
                    self.cmd.extend_from_slice(&line);
                    let Some(marker) = literal_marker(&line) else {
                        return Some(Frame::Command(std::mem::take(&mut self.cmd)));
                    };
                    let room = self.limits.command_bytes_max.saturating_sub(self.cmd.len());
                    let limit = self.limits.literal_bytes_max.min(room);
                    let literal_bytes = usize::try_from(marker.len).unwrap_or(usize::MAX);
                    if literal_bytes > limit {
                        let tag = tag_of(&self.cmd);
                        self.cmd = Vec::new();
                        if marker.non_sync {
                            self.state = State::Skip {
                                remaining: marker.len,
                            };
                        }
                        return Some(Frame::LiteralTooLarge { tag, literal_bytes });
                    }
                    self.state = State::Literal {
                        remaining: literal_bytes,
                    };
                    if !marker.non_sync {
                        return Some(Frame::NeedContinuation { literal_bytes });
                    }
                }
                State::Literal { remaining } => {
                    let k = (*remaining).min(self.buf.len());
                    *remaining -= k;
                    let done = *remaining == 0;
                    let payload = self.drain_front(k);
                    self.cmd.extend_from_slice(&payload);
                    if !done {
                        return None;
                    }
                    self.state = State::Line;
                }
                State::Skip { remaining } => {
                    let k = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    *remaining -= k as u64;
                    let done = *remaining == 0;
                    self.drain_front(k);
                    if !done {
                        return None;
                    }
                    self.state = State::Discard {
                        tag: None,
                        tail: Vec::new(),
                        report: false,
                    };
                }
                State::DiscardRaw => {
                    // The session switched from take_line back to commands mid-line.
                    self.state = State::Discard {
                        tag: None,
                        tail: Vec::new(),
                        report: true,
                    };
                }
                State::Discard { .. } => {
                    let found = self.find_lf();
                    let end = found.map_or(self.buf.len(), |i| i + 1);
                    let dropped = self.drain_front(end);
                    let State::Discard { tag, tail, report } = &mut self.state else {
                        return None;
                    };
                    keep_tail(tail, &dropped);
                    found?;
                    let marker = literal_marker(tail);
                    let tag = tag.take();
                    let report = *report;
                    self.state = match marker {
                        Some(m) if m.non_sync => State::Skip { remaining: m.len },
                        _ => State::Line,
                    };
                    if report {
                        return Some(Frame::LineTooLong { tag });
                    }
                }
            }
        }
    }

    /// Call after answering [`Frame::NeedContinuation`] with a tagged NO/BAD instead of
    /// `+`: the client will not send the literal, so the half-framed command is dropped
    /// and framing resumes at the next line. A no-op unless a literal is awaited.
    pub fn reject_continuation(&mut self) {
        if matches!(self.state, State::Literal { .. }) {
            self.cmd = Vec::new();
            self.state = State::Line;
        }
    }

    /// Takes one raw line (through its LF) outside command framing: the `DONE` that ends
    /// IDLE, or a SASL response line during AUTHENTICATE. Returns `None` when no whole
    /// line has arrived yet, or when a command is half-framed (call `next` then).
    /// An over-long line is discarded and reported as `Err(LineTooLong)` at its end.
    pub fn take_line(&mut self) -> Option<Result<Vec<u8>, LineTooLong>> {
        if !self.cmd.is_empty() {
            return None;
        }
        match self.state {
            State::Line => {
                let max = self.limits.line_bytes_max;
                match self.find_lf() {
                    None => {
                        if self.buf.len() > max {
                            self.buf.clear();
                            self.scanned = 0;
                            self.state = State::DiscardRaw;
                        }
                        None
                    }
                    Some(i) => {
                        let line = self.drain_front(i + 1);
                        if line.len() > max {
                            Some(Err(LineTooLong))
                        } else {
                            Some(Ok(line))
                        }
                    }
                }
            }
            State::DiscardRaw => match self.find_lf() {
                None => {
                    self.buf.clear();
                    self.scanned = 0;
                    None
                }
                Some(i) => {
                    self.drain_front(i + 1);
                    self.state = State::Line;
                    Some(Err(LineTooLong))
                }
            },
            _ => None,
        }
    }
}

fn keep_tail(tail: &mut Vec<u8>, dropped: &[u8]) {
    if dropped.len() >= TAIL_BYTES {
        tail.clear();
        tail.extend_from_slice(&dropped[dropped.len() - TAIL_BYTES..]);
    } else {
        tail.extend_from_slice(dropped);
        if tail.len() > TAIL_BYTES {
            let excess = tail.len() - TAIL_BYTES;
            tail.drain(..excess);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiteralMarker {
    /// Announced size; saturates at u64::MAX for absurd digit strings.
    pub len: u64,
    pub non_sync: bool,
    pub binary: bool,
}

/// Recognises a literal marker at the end of a line (`...{12}\r\n`, `{12+}`, `~{12}`).
pub(crate) fn literal_marker(line: &[u8]) -> Option<LiteralMarker> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let (line, non_sync) = match line.strip_suffix(b"+") {
        Some(rest) => (rest, true),
        None => (line, false),
    };
    let digits_start = line
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |p| p + 1);
    let digits = &line[digits_start..];
    if digits.is_empty() || line[..digits_start].last() != Some(&b'{') {
        return None;
    }
    let binary = digits_start >= 2 && line[digits_start - 2] == b'~';
    let len = digits.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(LiteralMarker {
        len,
        non_sync,
        binary,
    })
}

pub(crate) fn is_tag_char(b: u8) -> bool {
    // tag = 1*<any ASTRING-CHAR except "+">
    (0x21..0x7f).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
}

/// The tag at the start of a command, if it is well-formed and followed by a space.
pub(crate) fn tag_of(bytes: &[u8]) -> Option<String> {
    let window = &bytes[..bytes.len().min(TAG_REPORT_MAX + 1)];
    let end = window.iter().position(|&b| b == b' ')?;
    let tag = &window[..end];
    if tag.is_empty() || !tag.iter().all(|&b| is_tag_char(b)) {
        return None;
    }
    String::from_utf8(tag.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer) -> Vec<Frame> {
        std::iter::from_fn(|| f.next()).collect()
    }

    fn small() -> Limits {
        Limits {
            line_bytes_max: 32,
            literal_bytes_max: 16,
            command_bytes_max: 64,
        }
    }

    #[test]
    fn splits_pipelined_commands() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a NOOP\r\nb CAPABILITY\r\nc LOG");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Command(b"a NOOP\r\n".to_vec()),
                Frame::Command(b"b CAPABILITY\r\n".to_vec())
            ]
        );
        f.push(b"OUT\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"c LOGOUT\r\n".to_vec())]
        );
        assert!(f.is_idle());
    }

    #[test]
    fn synchronizing_literal_asks_for_continuation() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a LOGIN {5}\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::NeedContinuation { literal_bytes: 5 }]
        );
        f.push(b"fred {6+}\r\nsecret\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(
                b"a LOGIN {5}\r\nfred {6+}\r\nsecret\r\n".to_vec()
            )]
        );
    }

    #[test]
    fn binary_literal_payload_may_hold_crlf_and_nul() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a APPEND x ~{4+}\r\n\0\r\n\n\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::Command(b"a APPEND x ~{4+}\r\n\0\r\n\n\r\n".to_vec())]
        );
    }

    #[test]
    fn overlong_line_is_discarded_and_reported_with_tag() {
        let mut f = Framer::new(small());
        f.push(b"t1 SEARCH ");
        f.push(&[b'x'; 100]);
        assert_eq!(frames(&mut f), vec![]);
        assert!(f.buffered_bytes() <= 64);
        f.push(b"\r\nt2 NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LineTooLong {
                    tag: Some("t1".into())
                },
                Frame::Command(b"t2 NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn oversized_sync_literal_is_refused_without_reading() {
        let mut f = Framer::new(small());
        f.push(b"a APPEND x {17}\r\nb NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("a".into()),
                    literal_bytes: 17
                },
                Frame::Command(b"b NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn oversized_nonsync_literal_is_skipped_with_rest_of_command() {
        let mut f = Framer::new(small());
        f.push(b"a APPEND x {20+}\r\n");
        f.push(&[b'z'; 20]);
        f.push(b" more {2+}\r\nzz tail\r\nb NOOP\r\n");
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LiteralTooLarge {
                    tag: Some("a".into()),
                    literal_bytes: 20
                },
                Frame::Command(b"b NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn overlong_line_ending_in_nonsync_literal_skips_payload() {
        let mut f = Framer::new(small());
        let mut line = b"a SEARCH ".to_vec();
        line.extend_from_slice(&[b'y'; 40]);
        line.extend_from_slice(b" {3+}\r\nb N\r\nc NOOP\r\n");
        f.push(&line);
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::LineTooLong {
                    tag: Some("a".into())
                },
                Frame::Command(b"c NOOP\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn command_limit_counts_all_literals() {
        let mut f = Framer::new(Limits {
            command_bytes_max: 50,
            ..small()
        });
        f.push(b"a APPEND x {16+}\r\n0123456789abcdef {16+}\r\n0123456789abcdef {16+}\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::LiteralTooLarge {
                tag: Some("a".into()),
                literal_bytes: 16
            }]
        );
        // The last skipped literal's payload and the command's end are still due.
        f.push(b"0123456789abcdef\r\n");
        assert_eq!(frames(&mut f), vec![]);
        assert!(f.is_idle());
    }

    #[test]
    fn rejected_continuation_resumes_at_next_command() {
        let mut f = Framer::new(Limits::default());
        f.push(b"a APPEND x {100}\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::NeedContinuation { literal_bytes: 100 }]
        );
        f.reject_continuation();
        f.push(b"b NOOP\r\n");
        assert_eq!(frames(&mut f), vec![Frame::Command(b"b NOOP\r\n".to_vec())]);
        assert!(f.is_idle());
    }

    #[test]
    fn take_line_for_idle_done() {
        let mut f = Framer::new(small());
        f.push(b"a IDLE\r\nDONE\r\nb NOOP\r\n");
        assert_eq!(f.next(), Some(Frame::Command(b"a IDLE\r\n".to_vec())));
        assert_eq!(f.take_line(), Some(Ok(b"DONE\r\n".to_vec())));
        assert_eq!(f.next(), Some(Frame::Command(b"b NOOP\r\n".to_vec())));
        f.push(&[b'q'; 40]);
        assert_eq!(f.take_line(), None);
        f.push(b"\r\nok\r\n");
        assert_eq!(f.take_line(), Some(Err(LineTooLong)));
        assert_eq!(f.take_line(), Some(Ok(b"ok\r\n".to_vec())));
    }

    #[test]
    fn marker_recognition() {
        assert_eq!(
            literal_marker(b"a {12}\r\n"),
            Some(LiteralMarker {
                len: 12,
                non_sync: false,
                binary: false
            })
        );
        assert_eq!(
            literal_marker(b"a ~{0+}\n"),
            Some(LiteralMarker {
                len: 0,
                non_sync: true,
                binary: true
            })
        );
        assert_eq!(literal_marker(b"a {}\r\n"), None);
        assert_eq!(literal_marker(b"a {1a}\r\n"), None);
        assert_eq!(literal_marker(b"a \"x{1}\"\r\n"), None);
    }
}
