//! The DATA body decoder (RFC 5321 §4.1.1.4, §4.5.2): a pure, incremental state machine fed
//! with whatever chunks the socket delivers. No I/O, so the session can drive it from its
//! buffered reader and tests can drive it with any chunking.
//!
//! Wire format → stored message:
//! - The body ends at the first `CRLF . CRLF`, where the first CRLF may be the CRLF that ended
//!   the DATA command (an empty message is `.` CRLF right after 354). Nothing else ends it.
//! - Dot-unstuffing: a line that begins with `.` loses that dot (RFC 5321 §4.5.2).
//! - Line endings: CRLF is kept; a **bare LF** is stored as CRLF, so the stored message always
//!   has CRLF line endings (what IMAP serves and what the store's byte comparisons assume).
//!   A bare LF also counts as a line start for dot-unstuffing. But a bare LF never counts
//!   towards the terminator: `LF . LF`, `CRLF . LF` and `LF . CRLF` are body content (the dot
//!   is unstuffed like any leading dot). Recognising only the exact `CRLF . CRLF` is what keeps
//!   us immune to SMTP smuggling; a client that sends bare-LF-only will hang until the idle
//!   timeout, which is its bug, not a silent message split.
//! - A bare CR (not followed by LF) and NUL bytes are stored unchanged.
//! - No line-length limit inside the body (RFC 5321's 1000 is not enforced, mail is never
//!   truncated); only the message size limit applies.
//!
//! Size limit: the decoded size is counted in stored bytes (after unstuffing and LF → CRLF).
//! Once it exceeds `message_bytes_max` the decoder drops the buffer and only counts, so a huge
//! body costs O(1) memory; the session reads to the terminator and answers 552 5.3.4.

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `strict` means the previous line ended with a real CRLF (or
    /// this is the first line), so a lone `.` CRLF here is the terminator.
    LineStart { strict: bool },
    /// Saw a leading `.` (already dropped: unstuffing).
    Dot { strict: bool },
    /// Saw a leading `.` then CR.
    DotCr { strict: bool },
    /// Inside a line.
    Middle,
    /// Inside a line, just after a CR not yet known to be part of CRLF.
    Cr,
    /// Terminator seen; further input is not ours.
    Done,
}

/// Outcome of a finished DATA body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The decoded message, CRLF line endings, at most `message_bytes_max` bytes.
    Message(Vec<u8>),
    /// The decoded message would have been `size_bytes` long, over the limit; it was dropped.
    TooBig { size_bytes: u64 },
}

/// Incremental DATA decoder. Feed it bytes until [`DataDecoder::is_done`], then
/// [`DataDecoder::finish`].
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    message: Vec<u8>,
    /// Decoded bytes so far, counted even after overflow.
    size_bytes: u64,
    message_bytes_max: usize,
    overflow: bool,
}

impl DataDecoder {
    pub fn new(message_bytes_max: usize) -> Self {
        Self {
            state: State::LineStart { strict: true },
            message: Vec::new(),
            size_bytes: 0,
            message_bytes_max,
            overflow: false,
        }
    }

    /// True once the terminating `CRLF . CRLF` has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded bytes so far (including bytes dropped after overflow).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Consume input; returns how many bytes of `input` belong to the body (including the
    /// terminator). Stops right after the terminator, leaving any pipelined command bytes for
    /// the caller. Feeding after completion consumes nothing.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Middle {
                // Fast path: copy the run of ordinary bytes up to the next CR or LF.
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(input.len() - i);
                if run > 0 {
                    self.emit(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            self.step(input[i]);
            i += 1;
        }
        i
    }

    /// Finish: the message, or the size it would have had when over the limit.
    /// Calling this before [`DataDecoder::is_done`] returns what was decoded so far.
    pub fn finish(self) -> DataOutcome {
        if self.overflow {
            DataOutcome::TooBig {
                size_bytes: self.size_bytes,
            }
        } else {
            DataOutcome::Message(self.message)
        }
    }

    fn step(&mut self, b: u8) {
        use State::*;
        self.state = match self.state {
            Done => Done,
            LineStart { strict } => match b {
                b'.' => Dot { strict },
                b'\r' => Cr,
                b'\n' => self.bare_lf(),
                _ => self.ordinary(b),
            },
            // The leading dot is already dropped (unstuffing), whatever follows.
            Dot { strict } => match b {
                b'\r' => DotCr { strict },
                b'\n' => self.bare_lf(),
                _ => self.ordinary(b),
            },
            DotCr { strict } => match b {
                b'\n' if strict => Done,
                // `LF . CRLF`: content (an empty line after unstuffing), never the terminator.
                b'\n' => self.crlf(),
                _ => self.after_bare_cr(b),
            },
            Middle => match b {
                b'\r' => Cr,
                b'\n' => self.bare_lf(),
                _ => self.ordinary(b),
            },
            Cr => match b {
                b'\n' => self.crlf(),
                _ => self.after_bare_cr(b),
            },
        };
    }

    fn ordinary(&mut self, b: u8) -> State {
        self.emit(&[b]);
        State::Middle
    }

    fn crlf(&mut self) -> State {
        self.emit(b"\r\n");
        State::LineStart { strict: true }
    }

    /// A bare LF is stored as CRLF but does not make a strict line start.
    fn bare_lf(&mut self) -> State {
        self.emit(b"\r\n");
        State::LineStart { strict: false }
    }

    /// The pending CR was not followed by LF: store it as-is, then handle `b`.
    fn after_bare_cr(&mut self, b: u8) -> State {
        self.emit(b"\r");
        if b == b'\r' {
            State::Cr
        } else {
            self.ordinary(b)
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size_bytes = self.size_bytes.saturating_add(bytes.len() as u64);
        if self.overflow {
            return;
        }
        if self.size_bytes > self.message_bytes_max as u64 {
            // Over the limit: free the buffer now, keep only the count.
            self.overflow = true;
            self.message = Vec::new();
            return;
        }
        self.message.extend_from_slice(bytes);
    }
}

/// Bare LF → CRLF, so a BDAT message is stored with the same line endings as a DATA one
/// (CRLF kept, bare CR kept). Returns the input unchanged (no copy) when it has no bare LF.
pub fn normalize_line_endings(message: Vec<u8>) -> Vec<u8> {
    let bare_lf = message
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || message[i - 1] != b'\r'));
    if !bare_lf {
        return message;
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut prev = 0u8;
    for &b in &message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Dot-stuff and terminate `message` for the wire: a leading `.` on any line is doubled and
/// `.` CRLF is appended (after a CRLF if the message does not end with one). The inverse of
/// [`DataDecoder`] for CRLF-only messages; used by tests and, later, by the SMTP client side.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(wire: &[u8], max: usize) -> (DataOutcome, usize) {
        let mut d = DataDecoder::new(max);
        let used = d.feed(wire);
        assert!(
            d.is_done(),
            "not terminated: {:?}",
            String::from_utf8_lossy(wire)
        );
        (d.finish(), used)
    }

    fn msg(wire: &[u8]) -> Vec<u8> {
        match decode(wire, 1 << 20).0 {
            DataOutcome::Message(m) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_message() {
        assert_eq!(msg(b".\r\n"), b"");
    }

    #[test]
    fn unstuffs_and_stops_at_terminator() {
        let (out, used) = decode(b"a\r\n..b\r\n.\r\nQUIT\r\n", 100);
        assert_eq!(out, DataOutcome::Message(b"a\r\n.b\r\n".to_vec()));
        assert_eq!(used, 11);
    }

    #[test]
    fn bare_lf_becomes_crlf_but_never_terminates() {
        assert_eq!(msg(b"a\nb\r\n.\r\n"), b"a\r\nb\r\n");
        // Smuggling shapes: LF.LF, CRLF.LF, LF.CRLF are all content.
        assert_eq!(
            msg(b"a\n.\nb\r\n.\nc\n.\r\nd\r\n.\r\n"),
            b"a\r\n\r\nb\r\n\r\nc\r\n\r\nd\r\n"
        );
    }

    #[test]
    fn bare_cr_and_nul_are_kept() {
        assert_eq!(msg(b"a\rb\0c\r\r\n.\r\n"), b"a\rb\0c\r\r\n");
        assert_eq!(msg(b".\rx\r\n.\r\n"), b"\rx\r\n");
    }

    #[test]
    fn long_lines_are_not_truncated() {
        let mut wire = vec![b'x'; 5000];
        wire.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(msg(&wire).len(), 5002);
    }

    #[test]
    fn over_limit_is_counted_not_buffered() {
        let mut d = DataDecoder::new(10);
        d.feed(&[b'x'; 100]);
        assert!(d.message.capacity() <= 10);
        d.feed(b"\r\n.\r\n");
        assert!(d.is_done());
        assert_eq!(d.finish(), DataOutcome::TooBig { size_bytes: 102 });
        // Exactly at the limit is fine.
        assert_eq!(
            decode(b"12345678\r\n.\r\n", 10).0,
            DataOutcome::Message(b"12345678\r\n".to_vec())
        );
    }

    #[test]
    fn line_endings_are_normalized() {
        assert_eq!(
            normalize_line_endings(b"a\nb\r\nc\rd\n".to_vec()),
            b"a\r\nb\r\nc\rd\r\n"
        );
        assert_eq!(normalize_line_endings(b"\n".to_vec()), b"\r\n");
        assert_eq!(normalize_line_endings(b"x\r\n".to_vec()), b"x\r\n");
    }

    #[test]
    fn dot_stuff_round_trip_example() {
        let m = b".hidden\r\n..two\r\n.\r\nend";
        let wire = dot_stuff(m);
        assert_eq!(wire, b"..hidden\r\n...two\r\n..\r\nend\r\n.\r\n");
        assert_eq!(msg(&wire), b".hidden\r\n..two\r\n.\r\nend\r\n");
    }

    /// Messages made of CRLF lines with dots, CRs and NULs sprinkled in.
    fn crlf_message() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    4 => any::<u8>().prop_filter("no line breaks", |b| *b != b'\n' && *b != b'\r'),
                    1 => Just(b'.'),
                    1 => Just(0u8),
                ],
                0..40,
            ),
            0..20,
        )
        .prop_map(|lines| {
            let mut m = Vec::new();
            for l in lines {
                m.extend_from_slice(&l);
                m.extend_from_slice(b"\r\n");
            }
            m
        })
    }

    proptest! {
        #[test]
        fn random_chunking_yields_same_message(
            message in crlf_message(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            trailer in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut wire = dot_stuff(&message);
            let body_len = wire.len();
            wire.extend_from_slice(&trailer);
            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cut_points.sort_unstable();
            let mut d = DataDecoder::new(1 << 20);
            let mut consumed = 0;
            let mut prev = 0;
            for cut in cut_points.into_iter().chain([wire.len()]) {
                if !d.is_done() {
                    consumed += d.feed(&wire[prev..cut]);
                }
                prev = cut;
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(consumed, body_len);
            prop_assert_eq!(d.finish(), DataOutcome::Message(message));
        }

        #[test]
        fn decoder_never_panics_and_stays_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0usize..100,
        ) {
            let mut d = DataDecoder::new(max);
            for c in &chunks {
                d.feed(c);
            }
            match d.finish() {
                DataOutcome::Message(m) => prop_assert!(m.len() <= max),
                DataOutcome::TooBig { size_bytes } => prop_assert!(size_bytes > max as u64),
            }
        }
    }
}
