//! IMAP string output for ENVELOPE and BODYSTRUCTURE (RFC 3501 `string` / `nstring`).

/// Writes `s` as a quoted string when it can be one, else as a literal.
///
/// Quoted strings hold 7-bit bytes except NUL, CR and LF, with `"` and `\` escaped;
/// anything else (8-bit, line breaks) goes in a literal `{n}\r\n...`. NUL is not
/// allowed even in a (non-binary) literal, so it is replaced by `?`: the value is
/// already malformed and the response must stay parseable.
pub(crate) fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.iter().all(|&b| b < 0x80 && b != b'\r' && b != b'\n');
    if quotable {
        out.reserve(s.len() + 2);
        out.push(b'"');
        for &b in s {
            match b {
                b'"' | b'\\' => {
                    out.push(b'\\');
                    out.push(b);
                }
                0 => out.push(b'?'),
                _ => out.push(b),
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend(s.iter().map(|&b| if b == 0 { b'?' } else { b }));
    }
}

pub(crate) fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

pub(crate) fn number(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(n.to_string().as_bytes());
}
