//! APPEND of binary content (RFC 3516 `~{n}` literals): messages whose parts carry raw
//! binary bytes (NUL included) are rewritten so that every part with a NUL byte is
//! base64 with a matching Content-Transfer-Encoding. IMAP can then return the message
//! in an ordinary literal (which may not hold NUL), and `BINARY[part]` still returns
//! the original bytes (it removes the base64 again).
//!
//! Only leaf bodies are rewritten; a NUL anywhere else (a header, a multipart preamble)
//! cannot be represented and the caller refuses the message (`NO [UNKNOWN-CTE]`).

use super::ParsedMessage;
use super::parse::Kind;

/// Longest base64 line (RFC 2045 6.8).
const BASE64_LINE_CHARS: usize = 76;

fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / BASE64_LINE_CHARS * 2 + 2);
    for chunk in text.as_bytes().chunks(BASE64_LINE_CHARS) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A NUL byte outside any leaf body: the message cannot be stored as IMAP text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("binary data outside any body part")]
pub struct UnencodableBinary;

/// `Ok(None)`: no NUL, keep the message as it is. `Ok(Some(bytes))`: the rewritten
/// message.
pub fn encode_binary_parts(msg: &[u8]) -> Result<Option<Vec<u8>>, UnencodableBinary> {
    if !msg.contains(&0) {
        return Ok(None);
    }
    let parsed = ParsedMessage::parse(msg);
    let tree = &parsed.tree;
    // (start, end, replacement), non-overlapping, in message order.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for part in &tree.parts {
        if !matches!(part.kind, Kind::Leaf) || !tree.body_bytes(part).contains(&0) {
            continue;
        }
        let cte = b"Content-Transfer-Encoding: base64\r\n".to_vec();
        match tree.find_field(part, "content-transfer-encoding") {
            Some(f) => edits.push((f.start, f.end, cte)),
            None => {
                // Insert before the blank line that ends the header.
                let head = &msg[part.header_start..part.body_start];
                let blank = if head.ends_with(b"\r\n") { 2 } else { 1 };
                let at = part.body_start.saturating_sub(blank).max(part.header_start);
                edits.push((at, at, cte));
            }
        }
        let mut body = base64_lines(tree.body_bytes(part));
        // The line break before the next delimiter belongs to the delimiter; drop ours.
        if part.end < msg.len() && body.ends_with(b"\r\n") {
            body.truncate(body.len() - 2);
        }
        edits.push((part.body_start, part.end, body));
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = Vec::with_capacity(msg.len() * 4 / 3 + 256);
    let mut pos = 0;
    for (start, end, text) in edits {
        if start < pos {
            return Err(UnencodableBinary);
        }
        out.extend_from_slice(&msg[pos..start]);
        out.extend_from_slice(&text);
        pos = end;
    }
    out.extend_from_slice(&msg[pos..]);
    if out.contains(&0) {
        return Err(UnencodableBinary);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_parts_become_base64_and_decode_back() {
        let msg = b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\x02\xff\r\n--b--\r\n";
        let out = encode_binary_parts(msg).unwrap().unwrap();
        assert!(!out.contains(&0));
        let p = ParsedMessage::parse(&out);
        assert_eq!(
            p.binary_section(&[2]).unwrap().as_ref(),
            b"\x00\x01\x02\xff"
        );
        assert_eq!(p.binary_section(&[1]).unwrap().as_ref(), b"hello");
        assert_eq!(
            encode_binary_parts(b"Subject: x\r\n\r\nplain\r\n"),
            Ok(None)
        );
        assert_eq!(
            encode_binary_parts(b"Subject: \x00\r\n\r\nx\r\n"),
            Err(UnencodableBinary)
        );
        let single = encode_binary_parts(b"Subject: x\r\n\r\n\x00z")
            .unwrap()
            .unwrap();
        assert_eq!(
            ParsedMessage::parse(&single)
                .binary_section(&[1])
                .unwrap()
                .as_ref(),
            b"\x00z"
        );
    }
}
