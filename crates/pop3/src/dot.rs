//! Multi-line response bodies (RFC 1939 3): every line ends in CRLF, a line starting with
//! `.` gets one more `.` in front ("byte-stuffing"), and the body ends with `.` CRLF.
//! Pure and incremental, so a large message is encoded chunk by chunk into the output
//! buffer and flushed as it grows.
//!
//! Line ends: CRLF is sent as is and a bare LF becomes CRLF (a POP3 client must see CRLF
//! lines, and LMTP-delivered mail is stored with CRLF already). A bare CR is content.
//! A message that does not end with a line end gets one, so the terminator stands alone.

/// Incremental encoder for one multi-line body.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// A CR was the last byte seen; whether it starts a CRLF is known at the next byte.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer::default()
    }

    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + data.len() / 64 + 2);
        for &b in data {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    continue;
                }
                out.push(b'\r');
                self.at_line_start = false;
            }
            match b {
                // Held back: CR LF is a line end, CR anything-else is content.
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                b'.' if self.at_line_start => {
                    out.extend_from_slice(b"..");
                    self.at_line_start = false;
                }
                _ => {
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
    }

    /// Ends the body: closes an unfinished last line and writes the terminator.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            out.push(b'\r');
            self.at_line_start = false;
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Encodes a whole body at once (small bodies: scan listings, TOP).
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    let mut d = DotStuffer::new();
    d.push(body, out);
    d.finish(out);
}

/// The part of a message TOP sends (RFC 1939 7): the header, the empty line that ends
/// it, then at most `lines` lines of the body. A message without an empty line is all
/// header.
pub fn top(message: &[u8], lines: u32) -> &[u8] {
    let Some(body_start) = header_end(message) else {
        return message;
    };
    let mut end = body_start;
    let mut left = lines;
    while left > 0 && end < message.len() {
        match message[end..].iter().position(|&b| b == b'\n') {
            Some(i) => end += i + 1,
            None => end = message.len(),
        }
        left -= 1;
    }
    &message[..end]
}

/// Offset just past the empty line that ends the header (CRLF CRLF or bare LF LF).
fn header_end(m: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    while line_start < m.len() {
        let rest = &m[line_start..];
        if rest.starts_with(b"\r\n") {
            return Some(line_start + 2);
        }
        if rest.starts_with(b"\n") {
            return Some(line_start + 1);
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(body, &mut out);
        out
    }

    /// What a client reconstructs (RFC 1939 3): split at CRLF, drop the terminator,
    /// remove one leading dot of each line.
    fn decode(wire: &[u8]) -> Vec<u8> {
        let body = wire.strip_suffix(b".\r\n").expect("terminator");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_prefix(b".").unwrap_or(line);
            out.extend_from_slice(line);
        }
        out
    }

    fn normalize(m: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in m.iter().enumerate() {
            if b == b'\n' && (i == 0 || m[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn dots_are_stuffed_and_lines_end_in_crlf() {
        assert_eq!(enc(b""), b".\r\n");
        assert_eq!(enc(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(enc(b"a"), b"a\r\n.\r\n");
        assert_eq!(enc(b".\r\n..x\r\nx.\r\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
        assert_eq!(enc(b"a\nb\n.c"), b"a\r\nb\r\n..c\r\n.\r\n");
        assert_eq!(enc(b"\r\n.\r\n"), b"\r\n..\r\n.\r\n");
        assert_eq!(enc(b"a\rb"), b"a\rb\r\n.\r\n");
        assert_eq!(enc(b"a\r"), b"a\r\r\n.\r\n");
    }

    #[test]
    fn top_keeps_header_and_n_body_lines() {
        let m = b"Subject: x\r\nFrom: y\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top(m, 0), b"Subject: x\r\nFrom: y\r\n\r\n");
        assert_eq!(top(m, 2), b"Subject: x\r\nFrom: y\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(top(m, 99), &m[..]);
        assert_eq!(top(b"Subject: only\r\n", 3), b"Subject: only\r\n");
        assert_eq!(top(b"A: b\n\nbody\nmore", 1), b"A: b\n\nbody\n");
        assert_eq!(top(b"A: b\n\nbody\nmore", 2), b"A: b\n\nbody\nmore");
        assert_eq!(top(b"\r\nbody", 0), b"\r\n");
    }

    proptest! {
        #[test]
        fn stuffing_round_trips_in_any_chunking(
            m in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..400),
            cut in 1usize..64,
        ) {
            let mut out = Vec::new();
            let mut d = DotStuffer::new();
            for c in m.chunks(cut) {
                d.push(c, &mut out);
            }
            d.finish(&mut out);
            prop_assert_eq!(&out, &enc(&m));
            // The terminator appears only at the end, and every LF is part of a CRLF.
            let body = &out[..out.len() - 3];
            prop_assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"));
            prop_assert!(!body.starts_with(b".\r\n"));
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r'); }
            }
            prop_assert_eq!(decode(&out), normalize(&m));
        }

        #[test]
        fn top_is_a_prefix_never_panics(m in proptest::collection::vec(any::<u8>(), 0..300), n in 0u32..6) {
            let t = top(&m, n);
            prop_assert!(m.starts_with(t));
        }
    }
}
