//! Modified UTF-7 (RFC 3501 §5.1.3), the mailbox-name encoding of IMAP4rev1.
//!
//! Printable US-ASCII (0x20..=0x7e) stands for itself except `&`, which is written
//! `&-`. Everything else is UTF-16BE, base64-encoded with `,` in place of `/`, no
//! padding, between `&` and `-`. The decoder is strict about what a conforming
//! encoder can never produce (8-bit bytes, unterminated shifts, non-zero pad bits,
//! lone surrogates, printable ASCII inside a shift) because a lenient decoder would
//! let two different wire names map to the same mailbox.

/// Why a byte string is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mutf7Error {
    #[error("byte 0x{byte:02x} at offset {offset} is not printable US-ASCII")]
    NotPrintableAscii { offset: usize, byte: u8 },
    #[error("'&' at offset {offset} starts a base64 run that never ends with '-'")]
    Unterminated { offset: usize },
    #[error("invalid modified-base64 character at offset {offset}")]
    BadBase64 { offset: usize },
    #[error("base64 run at offset {offset} does not decode to whole UTF-16 units")]
    BadLength { offset: usize },
    #[error("base64 run at offset {offset} has an unpaired UTF-16 surrogate")]
    BadUtf16 { offset: usize },
    #[error("base64 run at offset {offset} encodes printable ASCII, which must be sent as itself")]
    NeedlesslyEncoded { offset: usize },
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn is_direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Encodes a UTF-8 mailbox name as modified UTF-7.
pub fn mutf7_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_direct(c) {
            flush_shift(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush_shift(&mut out, &mut pending);
    out
}

fn flush_shift(out: &mut String, pending: &mut Vec<u16>) {
    if pending.is_empty() {
        return;
    }
    out.push('&');
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for unit in pending.drain(..) {
        acc = (acc << 16) | u32::from(unit);
        bits += 16;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(ALPHABET[((acc >> bits) & 0x3f) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - bits)) & 0x3f) as usize]));
    }
    out.push('-');
}

fn b64_value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b',' => Some(63),
        _ => None,
    }
}

/// Decodes a modified UTF-7 mailbox name to UTF-8.
pub fn mutf7_decode(input: &[u8]) -> Result<String, Mutf7Error> {
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'&' {
            let start = i + 1;
            let end = input[start..]
                .iter()
                .position(|&c| c == b'-')
                .map(|p| start + p)
                .ok_or(Mutf7Error::Unterminated { offset: i })?;
            if end == start {
                out.push('&');
            } else {
                decode_shift(&input[start..end], start, &mut out)?;
            }
            i = end + 1;
        } else if (0x20..=0x7e).contains(&b) {
            out.push(char::from(b));
            i += 1;
        } else {
            return Err(Mutf7Error::NotPrintableAscii { offset: i, byte: b });
        }
    }
    Ok(out)
}

fn decode_shift(run: &[u8], offset: usize, out: &mut String) -> Result<(), Mutf7Error> {
    let mut units: Vec<u16> = Vec::with_capacity(run.len() * 6 / 16);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for (k, &b) in run.iter().enumerate() {
        let v = b64_value(b).ok_or(Mutf7Error::BadBase64 { offset: offset + k })?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 16 {
            bits -= 16;
            units.push(((acc >> bits) & 0xffff) as u16);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits are padding: fewer than 6 of them and all zero, or the run was cut.
    if bits >= 6 || acc != 0 || units.is_empty() {
        return Err(Mutf7Error::BadLength { offset });
    }
    for decoded in char::decode_utf16(units) {
        let c = decoded.map_err(|_| Mutf7Error::BadUtf16 { offset })?;
        if is_direct(c) {
            return Err(Mutf7Error::NeedlesslyEncoded { offset });
        }
        out.push(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example_round_trips() {
        // RFC 3501 §5.1.3: "~peter/mail/台北/日本語".
        let wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let name = mutf7_decode(wire.as_bytes()).unwrap();
        assert_eq!(name, "~peter/mail/台北/日本語");
        assert_eq!(mutf7_encode(&name), wire);
    }

    #[test]
    fn ampersand_and_plain_ascii() {
        assert_eq!(mutf7_encode("A&B"), "A&-B");
        assert_eq!(mutf7_decode(b"A&-B").unwrap(), "A&B");
        assert_eq!(mutf7_encode("INBOX"), "INBOX");
    }

    #[test]
    fn astral_plane_uses_surrogate_pairs() {
        let name = "mail 😀 box";
        let wire = mutf7_encode(name);
        assert_eq!(mutf7_decode(wire.as_bytes()).unwrap(), name);
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        assert!(matches!(
            mutf7_decode(b"&U,BTFw"),
            Err(Mutf7Error::Unterminated { .. })
        ));
        assert!(matches!(
            mutf7_decode("caf\u{e9}".as_bytes()),
            Err(Mutf7Error::NotPrintableAscii { .. })
        ));
        assert!(matches!(
            mutf7_decode(b"&U/BTFw-"),
            Err(Mutf7Error::BadBase64 { .. })
        ));
        // "A" encoded: printable ASCII inside a shift.
        assert!(matches!(
            mutf7_decode(b"&AEE-"),
            Err(Mutf7Error::NeedlesslyEncoded { .. })
        ));
        // Lone high surrogate D800.
        assert!(matches!(
            mutf7_decode(b"&2AA-"),
            Err(Mutf7Error::BadUtf16 { .. })
        ));
        // Non-zero pad bits.
        assert!(matches!(
            mutf7_decode(b"&AOkB-"),
            Err(Mutf7Error::BadLength { .. })
        ));
    }
}
