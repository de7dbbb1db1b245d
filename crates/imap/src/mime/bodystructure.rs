//! BODY and BODYSTRUCTURE (RFC 3501 7.4.2, RFC 9051 7.5.2).
//!
//! Sizes and line counts are taken from the same byte ranges that `BODY[part]` returns,
//! so a client that trusts them gets exactly that many octets. Lines are the number of
//! LF bytes in the part body (a last line without a line break is not counted).
//!
//! Output conventions (as Dovecot): type, subtype and parameter names lowercase;
//! missing Content-Type is `"text" "plain" ("charset" "us-ascii")`; missing encoding is
//! `"7bit"`; a multipart with no parts is given one empty text/plain part because the
//! grammar needs at least one (`body-type-mpart = 1*body SP media-subtype`).

use super::envelope::write_envelope;
use super::parse::{ContentType, Kind, MAX_DEPTH, Part, Tree, parse_content_type, unfold};
use super::write::{nstring, number, string};

const EMPTY_TEXT: &[u8] = b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)";
const EMPTY_TEXT_EXT: &[u8] =
    b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 NIL NIL NIL NIL)";
const EMPTY_ENVELOPE: &[u8] = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)";

pub(crate) fn write_body(tree: &Tree<'_>, id: usize, ext: bool, out: &mut Vec<u8>, depth: usize) {
    let Some(part) = tree.parts.get(id) else {
        out.extend_from_slice(if ext { EMPTY_TEXT_EXT } else { EMPTY_TEXT });
        return;
    };
    // The parser never nests deeper than MAX_DEPTH; this guard keeps output recursion
    // bounded even if that changes.
    if depth > MAX_DEPTH + 1 {
        out.extend_from_slice(if ext { EMPTY_TEXT_EXT } else { EMPTY_TEXT });
        return;
    }
    match &part.kind {
        Kind::Multipart(children) => {
            out.push(b'(');
            if children.is_empty() {
                out.extend_from_slice(if ext { EMPTY_TEXT_EXT } else { EMPTY_TEXT });
            }
            for &child in children {
                write_body(tree, child, ext, out, depth + 1);
            }
            out.push(b' ');
            string(out, part.ctype.subtype.as_bytes());
            if ext {
                out.push(b' ');
                write_params(out, &part.ctype);
                write_ext_tail(tree, part, out);
            }
            out.push(b')');
        }
        kind => {
            let body = tree.body_bytes(part);
            let leaf_multipart = part.ctype.ty == "multipart";
            out.push(b'(');
            if leaf_multipart {
                // Only reachable at the nesting limit: not split, so not a multipart.
                out.extend_from_slice(b"\"application\" \"octet-stream\"");
            } else {
                string(out, part.ctype.ty.as_bytes());
                out.push(b' ');
                string(out, part.ctype.subtype.as_bytes());
            }
            out.push(b' ');
            if part.ctype.ty == "text" && part.ctype.params.is_empty() {
                // RFC 2045 5.2: text without parameters is us-ascii; say so as Dovecot does.
                out.extend_from_slice(b"(\"charset\" \"us-ascii\")");
            } else {
                write_params(out, &part.ctype);
            }
            out.push(b' ');
            nstring(
                out,
                tree.raw_value(part, "content-id").map(unfold).as_deref(),
            );
            out.push(b' ');
            nstring(
                out,
                tree.raw_value(part, "content-description")
                    .map(unfold)
                    .as_deref(),
            );
            out.push(b' ');
            let enc = tree
                .raw_value(part, "content-transfer-encoding")
                .map(unfold)
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| b"7bit".to_vec());
            string(out, &enc);
            out.push(b' ');
            number(out, body.len());
            let lines = || body.iter().filter(|&&b| b == b'\n').count();
            if part.ctype.is_message() && !leaf_multipart {
                out.push(b' ');
                match kind {
                    Kind::Message(inner) => match tree.parts.get(*inner) {
                        Some(inner_part) => {
                            write_envelope(tree, inner_part, out);
                            out.push(b' ');
                            write_body(tree, *inner, ext, out, depth + 1);
                        }
                        None => empty_message(out, ext),
                    },
                    _ => empty_message(out, ext),
                }
                out.push(b' ');
                number(out, lines());
            } else if part.ctype.ty == "text" {
                out.push(b' ');
                number(out, lines());
            }
            if ext {
                out.push(b' ');
                nstring(
                    out,
                    tree.raw_value(part, "content-md5").map(unfold).as_deref(),
                );
                write_ext_tail(tree, part, out);
            }
            out.push(b')');
        }
    }
}

/// A message/rfc822 part that was not descended into (nesting limit).
fn empty_message(out: &mut Vec<u8>, ext: bool) {
    out.extend_from_slice(EMPTY_ENVELOPE);
    out.push(b' ');
    out.extend_from_slice(if ext { EMPTY_TEXT_EXT } else { EMPTY_TEXT });
}

/// ` disposition language location` (each preceded by a space).
fn write_ext_tail(tree: &Tree<'_>, part: &Part, out: &mut Vec<u8>) {
    out.push(b' ');
    match tree
        .raw_value(part, "content-disposition")
        .and_then(parse_content_type)
    {
        Some(dsp) => {
            out.push(b'(');
            string(out, dsp.ty.as_bytes());
            out.push(b' ');
            write_params(out, &dsp);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    let langs: Vec<Vec<u8>> = tree
        .raw_value(part, "content-language")
        .map(|v| {
            unfold(v)
                .split(|&b| b == b',')
                .map(unfold)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    match langs.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    let loc: Option<Vec<u8>> = tree.raw_value(part, "content-location").map(|v| {
        // RFC 2557: folding whitespace inside a URL is not part of it.
        unfold(v)
            .into_iter()
            .filter(|b| !matches!(b, b' ' | b'\t'))
            .collect()
    });
    nstring(out, loc.as_deref());
}

/// `("name" "value" ...)` or NIL. mail-parser has decoded RFC 2231 values; a value
/// that is not ASCII is written back as `name*` = `utf-8''%XX..` (RFC 2231) so the
/// response stays 7-bit for IMAP4rev1 clients.
fn write_params(out: &mut Vec<u8>, ct: &ContentType) {
    if ct.params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in ct.params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if value.is_ascii() {
            string(out, name.as_bytes());
            out.push(b' ');
            string(out, value.as_bytes());
        } else {
            let mut n = name.clone().into_bytes();
            n.push(b'*');
            string(out, &n);
            out.push(b' ');
            let mut v = b"utf-8''".to_vec();
            for &b in value.as_bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    v.push(b);
                } else {
                    v.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            string(out, &v);
        }
    }
    out.push(b')');
}
