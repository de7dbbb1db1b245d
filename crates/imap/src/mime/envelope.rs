//! ENVELOPE (RFC 3501 7.4.2, RFC 9051 7.5.2).
//!
//! The strings are the raw header values, not RFC 2047-decoded: clients decode them.
//! Addresses come from a small RFC 5322 address-list parser over the raw bytes
//! (mail-parser's decodes encoded words and drops the route, which ENVELOPE must keep).
//! An address with no domain gets host `MISSING_DOMAIN` (as Dovecot does) so that a
//! client never mistakes it for the start of a group (`host` NIL means group syntax).

use super::parse::{Part, Tree, unfold};
use super::write::nstring;

const MISSING_DOMAIN: &[u8] = b"MISSING_DOMAIN";
const MISSING_MAILBOX: &[u8] = b"MISSING_MAILBOX";

/// Most addresses rendered per field; a header with more is cut there so one hostile
/// header cannot blow up every FETCH ENVELOPE response.
const MAX_ADDRESSES: usize = 10_000;

/// One ENVELOPE address: `(name adl mailbox host)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EnvAddr {
    pub name: Option<Vec<u8>>,
    pub adl: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
}

/// Renders the ENVELOPE of the message entity `part` (the root or an embedded message).
pub(crate) fn write_envelope(tree: &Tree<'_>, part: &Part, out: &mut Vec<u8>) {
    let text = |name: &str| tree.raw_value(part, name).map(unfold);
    let addrs = |name: &str| {
        tree.raw_value(part, name)
            .map(|v| parse_addresses(&unfold(v)))
            .unwrap_or_default()
    };
    let from = addrs("from");
    let mut sender = addrs("sender");
    if sender.is_empty() {
        sender = from.clone();
    }
    let mut reply_to = addrs("reply-to");
    if reply_to.is_empty() {
        reply_to = from.clone();
    }
    out.push(b'(');
    nstring(out, text("date").as_deref());
    out.push(b' ');
    nstring(out, text("subject").as_deref());
    for list in [
        &from,
        &sender,
        &reply_to,
        &addrs("to"),
        &addrs("cc"),
        &addrs("bcc"),
    ] {
        out.push(b' ');
        write_address_list(out, list);
    }
    out.push(b' ');
    nstring(out, text("in-reply-to").as_deref());
    out.push(b' ');
    nstring(out, text("message-id").as_deref());
    out.push(b')');
}

fn write_address_list(out: &mut Vec<u8>, list: &[EnvAddr]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.push(b' ');
        nstring(out, a.adl.as_deref());
        out.push(b' ');
        nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'v> {
    /// Atom or quoted string: `content` is unescaped, `raw` is as written.
    Word {
        content: Vec<u8>,
        raw: &'v [u8],
    },
    Comment(Vec<u8>),
    /// `[...]` domain literal, raw.
    Literal(&'v [u8]),
    Special(u8),
}

fn is_special(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'@' | b',' | b';' | b':' | b'"' | b'[' | b']'
    )
}

/// Splits an unfolded address header into RFC 5322 tokens. `.` is an atom character
/// here so `john.doe` and `J. Smith` stay single words. Unterminated quotes, comments
/// and literals run to the end of the value.
fn tokenize(v: &[u8]) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'"' => {
                let start = i;
                let mut content = Vec::new();
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        i += 1;
                    }
                    content.push(v[i]);
                    i += 1;
                }
                i = (i + 1).min(v.len());
                toks.push(Tok::Word {
                    content,
                    raw: &v[start..i],
                });
            }
            b'(' => {
                let mut depth = 0usize;
                let mut content = Vec::new();
                while i < v.len() {
                    match v[i] {
                        b'\\' if i + 1 < v.len() => {
                            i += 1;
                            content.push(v[i]);
                        }
                        b'(' => {
                            if depth > 0 {
                                content.push(b'(');
                            }
                            depth += 1;
                        }
                        b')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                            content.push(b')');
                        }
                        c => content.push(c),
                    }
                    i += 1;
                }
                toks.push(Tok::Comment(content));
            }
            b'[' => {
                let start = i;
                while i < v.len() && v[i] != b']' {
                    i += 1;
                }
                i = (i + 1).min(v.len());
                toks.push(Tok::Literal(&v[start..i]));
            }
            _ if is_special(b) => {
                toks.push(Tok::Special(b));
                i += 1;
            }
            _ => {
                let start = i;
                while i < v.len()
                    && !is_special(v[i])
                    && !matches!(v[i], b' ' | b'\t' | b'\r' | b'\n')
                {
                    i += 1;
                }
                toks.push(Tok::Word {
                    content: v[start..i].to_vec(),
                    raw: &v[start..i],
                });
            }
        }
    }
    toks
}

fn join(parts: &[Vec<u8>], sep: &[u8]) -> Vec<u8> {
    parts.join(sep)
}

fn non_empty(v: Vec<u8>) -> Option<Vec<u8>> {
    (!v.is_empty()).then_some(v)
}

/// Collects raw words/literals (a local part or a domain) until a stop special.
fn collect_raw(
    toks: &[Tok<'_>],
    i: &mut usize,
    stops: &[u8],
    comment: &mut Option<Vec<u8>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(t) = toks.get(*i) {
        match t {
            Tok::Special(c) if stops.contains(c) => break,
            Tok::Special(c) => out.push(*c),
            Tok::Word { raw, .. } => out.extend_from_slice(raw),
            Tok::Literal(raw) => out.extend_from_slice(raw),
            Tok::Comment(c) => *comment = Some(c.clone()),
        }
        *i += 1;
    }
    out
}

/// Parses an address list (with groups) into ENVELOPE addresses.
pub(crate) fn parse_addresses(value: &[u8]) -> Vec<EnvAddr> {
    let toks = tokenize(value);
    let mut out: Vec<EnvAddr> = Vec::new();
    let mut in_group = false;
    let mut i = 0;
    while i < toks.len() && out.len() < MAX_ADDRESSES {
        let mut phrase: Vec<Vec<u8>> = Vec::new();
        let mut raw_phrase: Vec<Vec<u8>> = Vec::new();
        let mut comment: Option<Vec<u8>> = None;
        let mut special = None;
        while let Some(t) = toks.get(i) {
            match t {
                Tok::Word { content, raw } => {
                    phrase.push(content.clone());
                    raw_phrase.push(raw.to_vec());
                }
                Tok::Literal(raw) => {
                    phrase.push(raw.to_vec());
                    raw_phrase.push(raw.to_vec());
                }
                Tok::Comment(c) => comment = Some(c.clone()),
                Tok::Special(c) => {
                    special = Some(*c);
                    break;
                }
            }
            i += 1;
        }
        let name = non_empty(join(&phrase, b" "));
        match special {
            None | Some(b',' | b';') => {
                if !raw_phrase.is_empty() {
                    // A bare word without `@` (e.g. `undisclosed-recipients`).
                    out.push(EnvAddr {
                        name: comment.and_then(non_empty),
                        adl: None,
                        mailbox: Some(join(&raw_phrase, b"")),
                        host: Some(MISSING_DOMAIN.to_vec()),
                    });
                }
                if special == Some(b';') && in_group {
                    out.push(EnvAddr::default());
                    in_group = false;
                }
                i += 1;
            }
            Some(b':') if !in_group => {
                out.push(EnvAddr {
                    mailbox: Some(name.unwrap_or_default()),
                    ..EnvAddr::default()
                });
                in_group = true;
                i += 1;
            }
            Some(b'<') => {
                i += 1;
                let mut adl = None;
                if toks.get(i) == Some(&Tok::Special(b'@')) {
                    let mut scratch = None;
                    let route = collect_raw(&toks, &mut i, b":>", &mut scratch);
                    if toks.get(i) == Some(&Tok::Special(b':')) {
                        i += 1;
                        adl = non_empty(route);
                    }
                }
                let mut inner_comment = None;
                let local = collect_raw(&toks, &mut i, b"@>,;", &mut inner_comment);
                let mut domain = Vec::new();
                if toks.get(i) == Some(&Tok::Special(b'@')) {
                    i += 1;
                    domain = collect_raw(&toks, &mut i, b">,;", &mut inner_comment);
                }
                if toks.get(i) == Some(&Tok::Special(b'>')) {
                    i += 1;
                }
                // Trailing comments after `>` up to the next separator.
                while let Some(Tok::Comment(c)) = toks.get(i) {
                    comment = Some(c.clone());
                    i += 1;
                }
                out.push(EnvAddr {
                    name: name.or(comment.and_then(non_empty)),
                    adl,
                    mailbox: Some(non_empty(local).unwrap_or_else(|| MISSING_MAILBOX.to_vec())),
                    host: Some(non_empty(domain).unwrap_or_else(|| MISSING_DOMAIN.to_vec())),
                });
            }
            Some(b'@') => {
                i += 1;
                let domain = collect_raw(&toks, &mut i, b",;<", &mut comment);
                let local = join(&raw_phrase, b"");
                out.push(EnvAddr {
                    name: comment.and_then(non_empty),
                    adl: None,
                    mailbox: Some(non_empty(local).unwrap_or_else(|| MISSING_MAILBOX.to_vec())),
                    host: Some(non_empty(domain).unwrap_or_else(|| MISSING_DOMAIN.to_vec())),
                });
            }
            // Stray `>`, `:` inside a group, `)` or `]`: skip it.
            Some(_) => i += 1,
        }
    }
    if in_group {
        out.push(EnvAddr::default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: Option<&str>, mailbox: &str, host: &str) -> EnvAddr {
        EnvAddr {
            name: name.map(|n| n.as_bytes().to_vec()),
            adl: None,
            mailbox: Some(mailbox.as_bytes().to_vec()),
            host: Some(host.as_bytes().to_vec()),
        }
    }

    #[test]
    fn plain_and_named_addresses() {
        let got = parse_addresses(b"\"Doe, John\" <john@example.com>, jane@example.org (Jane R.)");
        assert_eq!(
            got,
            vec![
                a(Some("Doe, John"), "john", "example.com"),
                a(Some("Jane R."), "jane", "example.org")
            ]
        );
    }

    #[test]
    fn group_syntax() {
        let got = parse_addresses(b"Friends: a@x.org, B <b@y.org>;, c@z.org");
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].mailbox.as_deref(), Some(&b"Friends"[..]));
        assert_eq!(got[0].host, None);
        assert_eq!(got[3], EnvAddr::default());
        assert_eq!(got[4], a(None, "c", "z.org"));
        let empty = parse_addresses(b"undisclosed-recipients:;");
        assert_eq!(empty.len(), 2);
    }

    #[test]
    fn route_and_encoded_name_kept_raw() {
        let got = parse_addresses(b"=?utf-8?q?J=C3=B6rg?= <@relay.example:jorg@example.com>");
        assert_eq!(got[0].name.as_deref(), Some(&b"=?utf-8?q?J=C3=B6rg?="[..]));
        assert_eq!(got[0].adl.as_deref(), Some(&b"@relay.example"[..]));
        assert_eq!(got[0].mailbox.as_deref(), Some(&b"jorg"[..]));
    }

    #[test]
    fn garbage_never_loses_host() {
        for v in [
            &b"<>"[..],
            b"foo",
            b"@",
            b"<<<>>>",
            b"\"unterminated",
            b"(((",
            b"a@",
            b"@b",
        ] {
            for addr in parse_addresses(v) {
                if addr.mailbox.is_some() && addr.host.is_none() {
                    // only group starts may have NIL host
                    continue;
                }
                assert!(addr.host.is_some() || addr == EnvAddr::default(), "{v:?}");
            }
        }
    }
}
