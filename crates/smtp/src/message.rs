//! Header-section helpers for the SMTP pipeline: find fields, drop forged
//! Authentication-Results, read From: addresses, and build the headers we add. Pure.
//!
//! Messages here have CRLF line endings (the DATA decoder and BDAT normalisation make sure),
//! but the walk also accepts bare LF so a malformed message cannot make it misbehave.

use mail_builder::headers::date::Date;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest client-supplied token (HELO name) copied into a header we write.
const TOKEN_BYTES_MAX: usize = 255;

/// One header field: byte range (including its line ends and continuation lines) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) name: String,
}

/// The header fields of `msg`, in order, stopping at the empty line that ends the section.
pub(crate) fn fields(msg: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match line.first() {
            Some(b' ' | b'\t') => {
                if let Some(last) = out.last_mut() {
                    last.end = end;
                }
            }
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| String::from_utf8_lossy(&line[..i]).trim().to_string())
                    .unwrap_or_default();
                if name.is_empty() {
                    // Not a header line: the header section ended without a blank line.
                    break;
                }
                out.push(Field {
                    start: pos,
                    end,
                    name,
                });
            }
        }
        pos = end;
    }
    out
}

pub(crate) fn has_field(msg: &[u8], name: &str) -> bool {
    fields(msg)
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case(name))
}

/// RFC 8601 §5: remove Authentication-Results fields that claim to be ours (their
/// authserv-id is our host name), so a sender cannot forge our verdicts.
pub(crate) fn strip_own_auth_results(msg: Vec<u8>, authserv_id: &str) -> Vec<u8> {
    let forged: Vec<Field> = fields(&msg)
        .into_iter()
        .filter(|f| f.name.eq_ignore_ascii_case("Authentication-Results"))
        .filter(|f| {
            let value = &msg[f.start..f.end];
            let value = value
                .iter()
                .position(|&b| b == b':')
                .map_or(&value[..0], |i| &value[i + 1..]);
            let id = String::from_utf8_lossy(value);
            let id = id
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            id.eq_ignore_ascii_case(authserv_id)
        })
        .collect();
    if forged.is_empty() {
        return msg;
    }
    let mut out = Vec::with_capacity(msg.len());
    let mut pos = 0;
    for f in forged {
        out.extend_from_slice(&msg[pos..f.start]);
        pos = f.end;
    }
    out.extend_from_slice(&msg[pos..]);
    out
}

/// The addresses in the From: field(s); empty when there is none or it cannot be read.
pub(crate) fn from_addresses(msg: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(msg) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|a| a.address())
        .map(str::to_string)
        .collect()
}

/// A header-safe rendering of client text: printable, no parentheses (our comments), bounded.
pub(crate) fn token(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() || c == '(' || c == ')' || c == ';' {
            '_'
        } else {
            c
        };
        if out.len() + c.len_utf8() > TOKEN_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// What the Received `with` clause says (RFC 3848).
pub(crate) fn with_protocol(lmtp: bool, tls: bool, authenticated: bool) -> &'static str {
    match (lmtp, tls, authenticated) {
        (true, _, _) => "LMTP",
        (false, false, false) => "ESMTP",
        (false, true, false) => "ESMTPS",
        (false, false, true) => "ESMTPA",
        (false, true, true) => "ESMTPSA",
    }
}

/// `Received:` (RFC 5321 §4.4). `for` names the recipient only when there is exactly one,
/// so a multi-recipient message does not reveal its Bcc list.
pub(crate) fn received(
    helo: &str,
    ip: std::net::IpAddr,
    hostname: &str,
    protocol: &str,
    rcpts: &[String],
    now_unix: i64,
) -> String {
    let mut h = format!(
        "Received: from {} ([{ip}])\r\n\tby {} (Tandem) with {protocol}",
        token(helo),
        token(hostname)
    );
    if let [one] = rcpts {
        h.push_str(&format!("\r\n\tfor <{}>", token(one)));
    }
    h.push_str(&format!("; {}\r\n", Date::new(now_unix).to_rfc822()));
    h
}

/// A Message-ID unique on this host: time, process and a counter.
pub(crate) fn message_id(hostname: &str, now_unix: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "<{now_unix:x}.{nanos:x}.{:x}.{n:x}@{}>",
        std::process::id(),
        token(hostname)
    )
}

pub(crate) fn date(now_unix: i64) -> String {
    Date::new(now_unix).to_rfc822()
}

/// `head` + `msg`.
pub(crate) fn prepend(head: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + msg.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice <alice@example.com>\r\n\
Authentication-Results: mx.example.com; dkim=pass\r\n\
Subject: folded\r\n  subject line\r\n\
Authentication-Results: other.example; spf=fail\r\n\
authentication-results: MX.EXAMPLE.COM;\r\n\tspf=pass\r\n\
\r\n\
Authentication-Results: mx.example.com; in the body\r\n";

    #[test]
    fn fields_follow_folding_and_stop_at_the_body() {
        let f = fields(MSG);
        let names: Vec<_> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "From",
                "Authentication-Results",
                "Subject",
                "Authentication-Results",
                "authentication-results"
            ]
        );
        assert_eq!(
            &MSG[f[2].start..f[2].end],
            b"Subject: folded\r\n  subject line\r\n"
        );
        assert!(has_field(MSG, "subject"));
        assert!(!has_field(MSG, "Date"));
    }

    #[test]
    fn only_our_own_auth_results_are_removed() {
        let out = strip_own_auth_results(MSG.to_vec(), "mx.example.com");
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("dkim=pass"));
        assert!(!s.contains("\tspf=pass"));
        assert!(s.contains("Authentication-Results: other.example; spf=fail"));
        assert!(s.contains("Authentication-Results: mx.example.com; in the body"));
        assert!(s.starts_with("From: Alice"));
    }

    #[test]
    fn from_addresses_are_extracted() {
        assert_eq!(from_addresses(MSG), vec!["alice@example.com".to_string()]);
        assert_eq!(
            from_addresses(b"From: a@x.org, \"B\" <b@y.org>\r\n\r\n"),
            vec!["a@x.org".to_string(), "b@y.org".to_string()]
        );
        assert!(from_addresses(b"Subject: none\r\n\r\n").is_empty());
    }

    #[test]
    fn received_is_sanitised() {
        let h = received(
            "evil)\r\nX-Injected: 1",
            "192.0.2.1".parse().unwrap(),
            "mx.example.com",
            "ESMTPS",
            &["a@example.com".to_string()],
            1_700_000_000,
        );
        assert!(h.starts_with("Received: from evil___X-Injected: 1 ([192.0.2.1])\r\n\tby mx.example.com (Tandem) with ESMTPS\r\n\tfor <a@example.com>; "));
        assert_eq!(h.matches("\r\n").count(), 3);
    }
}
