//! Replies: a three-digit code (RFC 5321 §4.2), an optional enhanced status code (RFC 3463,
//! advertised as ENHANCEDSTATUSCODES per RFC 2034) and human-readable text.
//!
//! Wire format, one line per text line, every line ending in CRLF:
//! `CODE-ENH TEXT` for all lines but the last, `CODE ENH TEXT` for the last. The greeting and
//! the LHLO/EHLO reply carry no enhanced code (RFC 2034 §3), so `enhanced` is optional.
//!
//! Reply text can come from a deliverer (`TempFail(reason)`) or echo a client's address, so
//! every text line is sanitised on construction: control characters become spaces (a CR/LF in
//! a reason must never start a forged reply line) and a line is cut at
//! [`REPLY_TEXT_BYTES_MAX`] bytes so the reply stays well under the 512-octet reply line limit.

use std::fmt;

/// Longest text of one reply line in bytes; longer text is cut on a char boundary.
/// 400 leaves room for `CODE-X.YYY.ZZZ ` and CRLF inside RFC 5321's 512-octet reply line.
pub const REPLY_TEXT_BYTES_MAX: usize = 400;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// 2.0.0 other, undefined status (generic success).
    pub const OK: Self = Self::new(2, 0, 0);
    /// 2.1.0 originator address valid.
    pub const SENDER_OK: Self = Self::new(2, 1, 0);
    /// 2.1.5 destination address valid.
    pub const RECIPIENT_OK: Self = Self::new(2, 1, 5);
    /// 4.3.0 other or undefined mail system status (temporary).
    pub const TEMP_SYSTEM: Self = Self::new(4, 3, 0);
    /// 4.4.2 bad connection (used for the idle timeout).
    pub const BAD_CONNECTION: Self = Self::new(4, 4, 2);
    /// 4.5.3 too many recipients.
    pub const TOO_MANY_RECIPIENTS: Self = Self::new(4, 5, 3);
    /// 4.7.0 other security or policy status (too many errors).
    pub const TEMP_POLICY: Self = Self::new(4, 7, 0);
    /// 5.1.1 bad destination mailbox address.
    pub const NO_SUCH_USER: Self = Self::new(5, 1, 1);
    /// 5.2.2 mailbox full.
    pub const MAILBOX_FULL: Self = Self::new(5, 2, 2);
    /// 5.3.0 other or undefined mail system status (permanent).
    pub const PERM_SYSTEM: Self = Self::new(5, 3, 0);
    /// 5.3.4 message too big for system.
    pub const MESSAGE_TOO_BIG: Self = Self::new(5, 3, 4);
    /// 5.5.1 invalid command (also: bad sequence).
    pub const INVALID_COMMAND: Self = Self::new(5, 5, 1);
    /// 5.5.2 syntax error (unrecognised command, overlong line).
    pub const SYNTAX_ERROR: Self = Self::new(5, 5, 2);
    /// 5.5.4 invalid command arguments.
    pub const INVALID_ARGUMENTS: Self = Self::new(5, 5, 4);
    /// 2.7.0 other security status (authentication succeeded, RFC 4954).
    pub const AUTH_OK: Self = Self::new(2, 7, 0);
    /// 4.7.1 delivery not authorised now (rate limit: try later).
    pub const TEMP_NOT_AUTHORIZED: Self = Self::new(4, 7, 1);
    /// 5.7.0 other security or policy status (authentication required, AUTH cancelled).
    pub const PERM_POLICY: Self = Self::new(5, 7, 0);
    /// 5.7.1 delivery not authorised (relay denied, sender not owned, DMARC reject).
    pub const NOT_AUTHORIZED: Self = Self::new(5, 7, 1);
    /// 5.7.8 authentication credentials invalid (RFC 4954).
    pub const AUTH_INVALID: Self = Self::new(5, 7, 8);
    /// 5.7.11 encryption required for the requested authentication mechanism (RFC 4954).
    pub const ENCRYPTION_REQUIRED: Self = Self::new(5, 7, 11);
    /// 5.6.7 non-ASCII address without SMTPUTF8 (RFC 6531).
    pub const UTF8_REQUIRED: Self = Self::new(5, 6, 7);
    /// 5.6.0 other or undefined media error (unparseable message).
    pub const MEDIA_ERROR: Self = Self::new(5, 6, 0);
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One reply, possibly multi-line. Construct with [`Reply::new`] or [`Reply::multiline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    /// Never empty; every line already sanitised.
    lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. `code` must be a three-digit reply code (200..=599).
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl AsRef<str>) -> Self {
        debug_assert!((200..600).contains(&code), "reply code {code} out of range");
        Self {
            code,
            enhanced,
            lines: vec![sanitize(text.as_ref())],
        }
    }

    /// A multi-line reply without enhanced code (greeting, LHLO/EHLO capabilities).
    /// An empty `lines` yields one empty text line, never an empty reply.
    pub fn multiline(code: u16, lines: impl IntoIterator<Item = String>) -> Self {
        let mut lines: Vec<String> = lines.into_iter().map(|l| sanitize(&l)).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// 2xx and 3xx replies are positive; 4xx/5xx report an error.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Append the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let mut head = format!("{}{}", self.code, sep);
            if let Some(enh) = self.enhanced {
                head.push_str(&enh.to_string());
                if !line.is_empty() {
                    head.push(' ');
                }
            }
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes (for tests and logging).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Control characters become spaces (no CR/LF can reach the wire inside a line); the text is
/// cut at [`REPLY_TEXT_BYTES_MAX`] bytes on a char boundary.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(REPLY_TEXT_BYTES_MAX));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > REPLY_TEXT_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        let r = Reply::new(250, Some(EnhancedCode::RECIPIENT_OK), "<a@b> OK");
        assert_eq!(r.to_bytes(), b"250 2.1.5 <a@b> OK\r\n");
    }

    #[test]
    fn multiline_uses_dash_continuation() {
        let r = Reply::multiline(250, ["host".to_string(), "PIPELINING".to_string()]);
        assert_eq!(r.to_bytes(), b"250-host\r\n250 PIPELINING\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(
            451,
            Some(EnhancedCode::TEMP_SYSTEM),
            "disk\r\n250 2.0.0 fake",
        );
        assert_eq!(r.to_bytes(), b"451 4.3.0 disk  250 2.0.0 fake\r\n");
    }

    #[test]
    fn long_text_is_cut_on_char_boundary() {
        let text = "é".repeat(REPLY_TEXT_BYTES_MAX);
        let r = Reply::new(250, None, text);
        assert!(r.lines()[0].len() <= REPLY_TEXT_BYTES_MAX);
        assert!(r.to_bytes().len() <= 512);
    }
}
