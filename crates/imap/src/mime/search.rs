//! SEARCH over a message's bytes (RFC 3501 6.4.4, RFC 9051 6.4.4).
//!
//! Matching is a case-insensitive substring test after decoding: header values are
//! RFC 2047-decoded to UTF-8, bodies are transfer-decoded and charset-decoded to
//! UTF-8; both sides are lowercased with Unicode rules (`str::to_lowercase`).
//! The decoded, lowercased body and header texts are built on first use and kept, so
//! one `SearchMessage` answers any number of keys for the cost of one decode.
//! Memory: about twice the message size at most while the view lives.

use std::cell::OnceCell;

use imap_proto::{Date, SearchKey};
use mail_parser::{HeaderValue, parsers::MessageStream};

use super::ParsedMessage;
use super::parse::{Kind, Part, Tree, terminated};
use super::section::decode_body;

/// A message parsed once for evaluating many SEARCH keys.
pub struct SearchMessage<'a> {
    parsed: ParsedMessage<'a>,
    header_text: OnceCell<String>,
    body_text: OnceCell<String>,
}

/// Lowercased UTF-8 form of a needle (invalid UTF-8 replaced, which then only
/// matches the same replacement in the text).
fn fold(needle: &[u8]) -> String {
    String::from_utf8_lossy(needle).to_lowercase()
}

/// RFC 2047-decodes one raw field value (mail-parser's unstructured parser).
pub(super) fn decode_value(raw: &[u8]) -> String {
    let buf = terminated(raw);
    match MessageStream::new(&buf).parse_unstructured() {
        HeaderValue::Text(t) => t.into_owned(),
        _ => String::new(),
    }
}

/// A leaf part's body as UTF-8: transfer-decoded, then charset-decoded (unknown
/// charsets are read as UTF-8 with replacement characters).
pub(super) fn part_text(tree: &Tree<'_>, part: &Part) -> String {
    let bytes = decode_body(tree, part);
    match part
        .ctype
        .param("charset")
        .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
    {
        Some(decoder) => decoder(&bytes),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl<'a> SearchMessage<'a> {
    pub fn parse(msg: &'a [u8]) -> SearchMessage<'a> {
        Self::from_parsed(ParsedMessage::parse(msg))
    }

    pub fn from_parsed(parsed: ParsedMessage<'a>) -> SearchMessage<'a> {
        SearchMessage {
            parsed,
            header_text: OnceCell::new(),
            body_text: OnceCell::new(),
        }
    }

    pub fn parsed(&self) -> &ParsedMessage<'a> {
        &self.parsed
    }

    /// True when the top-level header has a field `field` whose decoded value
    /// contains `needle` (case-insensitive). An empty needle matches any message
    /// that has the field (RFC 3501 HEADER).
    pub fn header_contains(&self, field: &str, needle: &[u8]) -> bool {
        let tree = &self.parsed.tree;
        let needle = fold(needle);
        tree.root()
            .fields
            .iter()
            .filter(|f| f.valid && tree.field_name(f).eq_ignore_ascii_case(field.as_bytes()))
            .any(|f| {
                needle.is_empty()
                    || decode_value(tree.field_value(f))
                        .to_lowercase()
                        .contains(&needle)
            })
    }

    pub fn from_contains(&self, needle: &[u8]) -> bool {
        self.header_contains("from", needle)
    }

    pub fn to_contains(&self, needle: &[u8]) -> bool {
        self.header_contains("to", needle)
    }

    pub fn cc_contains(&self, needle: &[u8]) -> bool {
        self.header_contains("cc", needle)
    }

    pub fn bcc_contains(&self, needle: &[u8]) -> bool {
        self.header_contains("bcc", needle)
    }

    pub fn subject_contains(&self, needle: &[u8]) -> bool {
        self.header_contains("subject", needle)
    }

    /// BODY: the decoded text of every text/* part (nested messages included).
    pub fn body_contains(&self, needle: &[u8]) -> bool {
        self.body_text().contains(&fold(needle))
    }

    /// TEXT: the decoded top-level header or the body.
    pub fn text_contains(&self, needle: &[u8]) -> bool {
        let needle = fold(needle);
        self.header_text().contains(&needle) || self.body_text().contains(&needle)
    }

    /// The Date: header's calendar date in the header's own zone (RFC 3501 SENT*
    /// keys disregard time and timezone); `None` if absent or unparsable. RFC 3501
    /// does not say what such a message matches; [`Self::eval`] treats it as no match
    /// (Dovecot falls back to INTERNALDATE, a session may do that instead).
    pub fn sent_date(&self) -> Option<Date> {
        let tree = &self.parsed.tree;
        let raw = tree.raw_value(tree.root(), "date")?;
        let buf = terminated(raw);
        let HeaderValue::DateTime(dt) = MessageStream::new(&buf).parse_date() else {
            return None;
        };
        let valid = (1..=12).contains(&dt.month) && (1..=31).contains(&dt.day) && dt.year > 0;
        valid.then_some(Date {
            year: dt.year,
            month: dt.month,
            day: dt.day,
        })
    }

    /// Evaluates a key that depends only on the message bytes. `None` for keys that
    /// need store data (flags, UIDs, sizes, internal date, MODSEQ) or that combine
    /// other keys (AND/OR/NOT): the session evaluates those and calls back here for
    /// the leaves. SENT* keys on a message without a usable Date: are false.
    pub fn eval(&self, key: &SearchKey) -> Option<bool> {
        Some(match key {
            SearchKey::Bcc(n) => self.bcc_contains(n),
            SearchKey::Body(n) => self.body_contains(n),
            SearchKey::Cc(n) => self.cc_contains(n),
            SearchKey::From(n) => self.from_contains(n),
            SearchKey::Header(f, n) => self.header_contains(f, n),
            SearchKey::Subject(n) => self.subject_contains(n),
            SearchKey::Text(n) => self.text_contains(n),
            SearchKey::To(n) => self.to_contains(n),
            SearchKey::SentBefore(d) => self.sent_date().is_some_and(|s| s < *d),
            SearchKey::SentOn(d) => self.sent_date().is_some_and(|s| s == *d),
            SearchKey::SentSince(d) => self.sent_date().is_some_and(|s| s >= *d),
            _ => return None,
        })
    }

    fn header_text(&self) -> &str {
        self.header_text.get_or_init(|| {
            let tree = &self.parsed.tree;
            let mut text = String::new();
            for f in &tree.root().fields {
                text.push_str(&String::from_utf8_lossy(tree.field_name(f)));
                text.push_str(": ");
                text.push_str(&decode_value(tree.field_value(f)));
                text.push('\n');
            }
            text.to_lowercase()
        })
    }

    fn body_text(&self) -> &str {
        self.body_text.get_or_init(|| {
            let tree = &self.parsed.tree;
            let mut text = String::new();
            for part in &tree.parts {
                if !matches!(part.kind, Kind::Leaf) || part.ctype.ty != "text" {
                    continue;
                }
                let decoded = part_text(tree, part);
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&decoded);
            }
            text.to_lowercase()
        })
    }
}
