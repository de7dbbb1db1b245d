//! What SORT (RFC 5256, RFC 5957) and THREAD (RFC 5256) need from a message's header:
//! the base subject, the sent date, the first From/To/Cc addresses and display names,
//! and the Message-ID / References / In-Reply-To links.
//!
//! Only the top-level header is parsed (the body is never scanned), so the cost per
//! message is its header size.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;

use super::envelope::{EnvAddr, parse_addresses};
use super::parse::{Tree, terminated, unfold};
use super::search::decode_value;

/// Most message-ids taken from one References header; the newest ones are kept,
/// which is all threading needs (RFC 5256 looks at the last ones first).
const REFERENCES_MAX: usize = 100;

/// The header data SORT and THREAD work on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortFields {
    /// RFC 5256 2.1 base subject (decoded, reply/forward markers removed).
    pub base_subject: String,
    /// The subject had `Re:`, `Fwd:`, `(fwd)` or `[fwd: ...]` markers (RFC 5256 2.1:
    /// the message is a reply or forward).
    pub is_reply: bool,
    /// The Date: header as Unix seconds (UTC), if present and valid.
    pub sent_unix_secs: Option<i64>,
    /// addr-mailbox of the first address (RFC 5256 FROM/TO/CC), as written.
    pub from: String,
    pub to: String,
    pub cc: String,
    /// RFC 5957 display name of the first address (or its addr-spec), lowercased.
    pub display_from: String,
    pub display_to: String,
    /// The Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// References (or, without it, the first In-Reply-To id), oldest first.
    pub references: Vec<String>,
}

fn header_only(msg: &[u8]) -> &[u8] {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| msg.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .unwrap_or(msg.len());
    &msg[..end]
}

fn first_addr(tree: &Tree<'_>, name: &str) -> Option<EnvAddr> {
    let raw = tree.raw_value(tree.root(), name)?;
    parse_addresses(&unfold(raw))
        .into_iter()
        .find(|a| a.host.is_some())
}

fn mailbox_of(a: &Option<EnvAddr>) -> String {
    a.as_ref()
        .and_then(|a| a.mailbox.as_ref())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// RFC 5957: the decoded display name, or else `mailbox@host`.
fn display_of(a: &Option<EnvAddr>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    if let Some(name) = &a.name {
        let decoded = decode_value(name);
        let trimmed = decoded.trim();
        if !trimmed.is_empty() {
            return trimmed.to_lowercase();
        }
    }
    let part = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    format!("{}@{}", part(&a.mailbox), part(&a.host)).to_lowercase()
}

/// `<a@b> <c@d>` → `["a@b", "c@d"]`; tolerant of missing brackets and junk.
fn msg_ids(value: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(value);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else { break };
        let id = after[..close].trim();
        if !id.is_empty() && !id.contains(char::is_whitespace) {
            out.push(id.to_string());
        }
        rest = &after[close + 1..];
    }
    out
}

impl SortFields {
    pub fn parse(msg: &[u8]) -> SortFields {
        let tree = Tree::parse(header_only(msg));
        let raw = |name: &str| tree.raw_value(tree.root(), name);
        let subject = raw("subject").map(decode_value).unwrap_or_default();
        let (base_subject, is_reply) = base_subject(&subject);
        let sent_unix_secs = raw("date").and_then(|v| {
            let buf = terminated(v);
            match MessageStream::new(&buf).parse_date() {
                HeaderValue::DateTime(dt) if dt.is_valid() => Some(dt.to_timestamp()),
                _ => None,
            }
        });
        let from = first_addr(&tree, "from");
        let to = first_addr(&tree, "to");
        let cc = first_addr(&tree, "cc");
        let message_id = raw("message-id").and_then(|v| msg_ids(v).into_iter().next());
        let mut references = raw("references").map(msg_ids).unwrap_or_default();
        if references.is_empty() {
            references = raw("in-reply-to")
                .map(msg_ids)
                .unwrap_or_default()
                .into_iter()
                .take(1)
                .collect();
        }
        if references.len() > REFERENCES_MAX {
            references.drain(..references.len() - REFERENCES_MAX);
        }
        SortFields {
            base_subject,
            is_reply,
            sent_unix_secs,
            from: mailbox_of(&from),
            to: mailbox_of(&to),
            cc: mailbox_of(&cc),
            display_from: display_of(&from),
            display_to: display_of(&to),
            message_id,
            references,
        }
    }
}

/// Strips one `subj-blob` (`[...]` and trailing spaces) at the start, if any.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(['[', ']'])?;
    if !rest[close..].starts_with(']') {
        return None;
    }
    Some(rest[close + 1..].trim_start_matches([' ', '\t']))
}

/// Strips one `subj-refwd` (`re`/`fw`/`fwd`, spaces, an optional blob, `:`), after any
/// leading blobs (`subj-leader`), if present.
fn strip_leader(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(r) = strip_blob(rest) {
        rest = r;
    }
    let lower = rest.get(..3).unwrap_or(rest).to_ascii_lowercase();
    let n = if lower.starts_with("fwd") {
        3
    } else if lower.starts_with("re") || lower.starts_with("fw") {
        2
    } else {
        return None;
    };
    let mut after = rest[n..].trim_start_matches([' ', '\t']);
    if let Some(r) = strip_blob(after) {
        after = r;
    }
    after.strip_prefix(':')
}

/// RFC 5256 2.1 base subject of an already-decoded subject, and whether any
/// reply/forward marker was removed.
pub fn base_subject(subject: &str) -> (String, bool) {
    // Step 1: whitespace runs (tabs, folding) become one space.
    let mut s: String = subject
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut is_reply = false;
    loop {
        // Step 2: trailing "(fwd)" and spaces.
        loop {
            let t = s.trim_end_matches(' ');
            let lower = t.to_ascii_lowercase();
            if lower.ends_with("(fwd)") {
                s = t[..t.len() - 5].to_string();
                is_reply = true;
            } else {
                s = t.to_string();
                break;
            }
        }
        // Steps 3-5: leading spaces, reply markers and blobs.
        loop {
            let trimmed = s.trim_start_matches(' ');
            if let Some(r) = strip_leader(trimmed) {
                s = r.to_string();
                is_reply = true;
                continue;
            }
            if let Some(r) = strip_blob(trimmed)
                && !r.is_empty()
            {
                s = r.to_string();
                continue;
            }
            if trimmed.len() != s.len() {
                s = trimmed.to_string();
                continue;
            }
            break;
        }
        // Step 6: "[fwd: ...]" wrapping.
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
            is_reply = true;
            continue;
        }
        return (s, is_reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_per_rfc_5256() {
        assert_eq!(base_subject("Re: lunch"), ("lunch".into(), true));
        assert_eq!(base_subject("RE: Re: re: lunch"), ("lunch".into(), true));
        assert_eq!(
            base_subject("Fwd: [list] Re: lunch (fwd)"),
            ("lunch".into(), true)
        );
        assert_eq!(base_subject("[fwd: Re: lunch]"), ("lunch".into(), true));
        assert_eq!(base_subject("[list] lunch"), ("lunch".into(), false));
        assert_eq!(base_subject("[list]"), ("[list]".into(), false));
        assert_eq!(
            base_subject("  lunch\t  plans "),
            ("lunch plans".into(), false)
        );
        assert_eq!(base_subject("Re[2]: lunch"), ("lunch".into(), true));
        assert_eq!(base_subject("Reply"), ("Reply".into(), false));
        assert_eq!(base_subject(""), (String::new(), false));
    }

    #[test]
    fn fields_from_a_header() {
        let msg = b"From: =?utf-8?q?Zo=C3=AB?= <ZOE@Example.org>\r\nTo: bob@x.org\r\nSubject: Re: Hi\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <m2@x>\r\nReferences: <m0@x>\r\n <m1@x>\r\n\r\nbody\r\n";
        let f = SortFields::parse(msg);
        assert_eq!(f.base_subject, "Hi");
        assert!(f.is_reply);
        assert_eq!(f.from, "ZOE");
        assert_eq!(f.display_from, "zoë");
        assert_eq!(f.display_to, "bob@x.org");
        assert_eq!(f.message_id.as_deref(), Some("m2@x"));
        assert_eq!(f.references, vec!["m0@x", "m1@x"]);
        assert_eq!(f.sent_unix_secs, Some(760_686_745));
    }
}
