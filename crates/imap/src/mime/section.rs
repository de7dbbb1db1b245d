//! `BODY[section]`, `<partial>` and RFC 3516 `BINARY[part]` contents.
//!
//! Every section is a byte range of the raw message except `HEADER.FIELDS[.NOT]` (a
//! selection of field lines plus the terminating blank line) and BINARY (decoded), so
//! the common cases borrow the message instead of copying it.

use std::borrow::Cow;

use imap_proto::{Partial, Section, SectionText};

use super::parse::{Kind, Part, Tree, unfold};

/// RFC 3516: the part's Content-Transfer-Encoding is not one the server can decode;
/// the session answers `NO [UNKNOWN-CTE]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot decode content-transfer-encoding {encoding:?}; fetch BODY[] instead")]
    UnknownCte { encoding: String },
}

pub(crate) fn section<'a>(tree: &Tree<'a>, s: &Section) -> Cow<'a, [u8]> {
    if s.part.is_empty() {
        return match &s.text {
            None => Cow::Borrowed(tree.msg),
            // MIME needs a part number (RFC 3501); without one it names nothing.
            Some(SectionText::Mime) => Cow::Borrowed(&[]),
            Some(text) => entity_text(tree, tree.root(), text),
        };
    }
    let Some(part) = tree.resolve(&s.part).and_then(|id| tree.parts.get(id)) else {
        return Cow::Borrowed(&[]);
    };
    match &s.text {
        None => Cow::Borrowed(tree.body_bytes(part)),
        Some(SectionText::Mime) => Cow::Borrowed(tree.header_bytes(part)),
        // HEADER/TEXT after a part number apply to an embedded message only.
        Some(text) => match part.kind {
            Kind::Message(inner) => match tree.parts.get(inner) {
                Some(inner) => entity_text(tree, inner, text),
                None => Cow::Borrowed(&[]),
            },
            _ => Cow::Borrowed(&[]),
        },
    }
}

/// HEADER / HEADER.FIELDS / HEADER.FIELDS.NOT / TEXT of a message entity.
fn entity_text<'a>(tree: &Tree<'a>, part: &Part, text: &SectionText) -> Cow<'a, [u8]> {
    match text {
        SectionText::Header => Cow::Borrowed(tree.header_bytes(part)),
        SectionText::Text => Cow::Borrowed(tree.body_bytes(part)),
        SectionText::HeaderFields(names) => Cow::Owned(header_fields(tree, part, names, true)),
        SectionText::HeaderFieldsNot(names) => Cow::Owned(header_fields(tree, part, names, false)),
        SectionText::Mime => Cow::Borrowed(&[]),
    }
}

/// The field lines (as written, folding kept, message order) whose name is (`keep`)
/// or is not (`!keep`) in `names`, then the blank line. Lines that are not fields
/// at all only show up in the `.NOT` form, since they match no name.
fn header_fields(tree: &Tree<'_>, part: &Part, names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in &part.fields {
        let name = tree.field_name(f);
        let listed = f.valid
            && names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
        if listed == keep {
            let raw = tree.field_raw(f);
            out.extend_from_slice(raw);
            if !raw.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `<origin.count>`: the bytes from `origin`, at most `count` of them; empty when the
/// origin is past the end (RFC 3501 6.4.5).
pub fn partial(data: &[u8], p: Option<Partial>) -> &[u8] {
    let Some(p) = p else { return data };
    let start = usize::try_from(p.origin)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let count = usize::try_from(p.count).unwrap_or(usize::MAX);
    let end = start.saturating_add(count).min(data.len());
    data.get(start..end).unwrap_or_default()
}

pub(crate) fn binary<'a>(tree: &Tree<'a>, path: &[u32]) -> Result<Cow<'a, [u8]>, BinaryError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed(tree.msg));
    }
    let Some(part) = tree.resolve(path).and_then(|id| tree.parts.get(id)) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let body = tree.body_bytes(part);
    let cte = tree
        .raw_value(part, "content-transfer-encoding")
        .map(unfold)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_slice() {
        b"" | b"7bit" | b"8bit" | b"binary" => Ok(Cow::Borrowed(body)),
        b"base64" => Ok(Cow::Owned(decode_base64(body))),
        b"quoted-printable" => Ok(Cow::Owned(decode_qp(body))),
        other => Err(BinaryError::UnknownCte {
            encoding: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

/// Decodes a transfer-encoded body for searching: unknown encodings are searched raw.
pub(crate) fn decode_body<'a>(tree: &Tree<'a>, part: &Part) -> Cow<'a, [u8]> {
    let body = tree.body_bytes(part);
    let cte = tree
        .raw_value(part, "content-transfer-encoding")
        .map(unfold)
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_slice() {
        b"base64" => Cow::Owned(decode_base64(body)),
        b"quoted-printable" => Cow::Owned(decode_qp(body)),
        _ => Cow::Borrowed(body),
    }
}

/// Lenient base64 (RFC 2045 6.8): characters outside the alphabet are ignored and `=`
/// ends the data, as MUAs do; a broken attachment still yields its good prefix.
pub(crate) fn decode_base64(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lenient quoted-printable (RFC 2045 6.7): soft breaks removed, `=XY` decoded, a
/// malformed `=` kept as is, trailing blanks before a line break dropped.
pub(crate) fn decode_qp(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    // Blanks written literally at the end of `out`: transport padding that RFC 2045
    // says to drop before a line break (unlike `=20`, which is data).
    let mut literal_blanks = 0usize;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'=' {
            let next = data.get(i + 1..).unwrap_or_default();
            let blanks = next
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            let after = next.get(blanks..).unwrap_or_default();
            if after.starts_with(b"\r\n") {
                // Soft line break (blanks after `=` tolerated).
                i += 1 + blanks + 2;
            } else if after.starts_with(b"\n") {
                i += 1 + blanks + 1;
            } else if after.is_empty() {
                i = data.len();
            } else if let (Some(h), Some(l)) = (
                next.first().copied().and_then(hex),
                next.get(1).copied().and_then(hex),
            ) {
                out.push((h << 4) | l);
                literal_blanks = 0;
                i += 3;
            } else {
                out.push(b'=');
                literal_blanks = 0;
                i += 1;
            }
            continue;
        }
        match b {
            b'\r' | b'\n' => {
                out.truncate(out.len() - literal_blanks);
                literal_blanks = 0;
            }
            b' ' | b'\t' => literal_blanks += 1,
            _ => literal_blanks = 0,
        }
        out.push(b);
        i += 1;
    }
    out
}
