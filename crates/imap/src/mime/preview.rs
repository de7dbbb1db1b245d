//! RFC 8970 PREVIEW: a short plain-text excerpt of the message for list views.
//!
//! The text comes from the first `text/plain` leaf (else the first `text/html` leaf,
//! with tags and entities crudely removed), transfer- and charset-decoded, with quoted
//! lines (`>`) and signature separators dropped and whitespace collapsed, cut at
//! [`PREVIEW_CHARS_MAX`] characters (RFC 8970 3: at most 256). A message without text
//! gives `None` (the response carries NIL). Cost: one decode of one part, capped at
//! [`SCAN_BYTES_MAX`] input bytes.

use super::ParsedMessage;
use super::parse::{Kind, Part, Tree};
use super::search::part_text;

/// RFC 8970 allows 256; 200 is what clients show and keeps responses small.
pub const PREVIEW_CHARS_MAX: usize = 200;
/// Decoded text looked at; a preview never needs more.
const SCAN_BYTES_MAX: usize = 16 * 1024;

fn first_leaf<'p>(tree: &'p Tree<'_>, subtype: &str) -> Option<&'p Part> {
    tree.parts.iter().find(|p| {
        matches!(p.kind, Kind::Leaf)
            && p.ctype.ty == "text"
            && p.ctype.subtype == subtype
            && !tree.raw_value(p, "content-disposition").is_some_and(|d| {
                d.trim_ascii_start()
                    .to_ascii_lowercase()
                    .starts_with(b"attachment")
            })
    })
}

/// Drops tags, `<style>`/`<script>` contents and the commonest entities.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        let rest = &lower[i..];
        if rest.starts_with("<style") || rest.starts_with("<script") {
            let close = if rest.starts_with("<style") {
                "</style>"
            } else {
                "</script>"
            };
            i += rest.find(close).map_or(rest.len(), |p| p + close.len());
            out.push(' ');
        } else if rest.starts_with('<') {
            i += rest.find('>').map_or(rest.len(), |p| p + 1);
            out.push(' ');
        } else if rest.starts_with('&') {
            let end = rest[..rest.len().min(10)].find(';');
            let (text, len) = match end.map(|e| &rest[..=e]) {
                Some("&nbsp;") => (" ", 6),
                Some("&amp;") => ("&", 5),
                Some("&lt;") => ("<", 4),
                Some("&gt;") => (">", 4),
                Some("&quot;") => ("\"", 6),
                Some("&#39;") | Some("&apos;") => ("'", end.map_or(1, |e| e + 1)),
                _ => ("&", 1),
            };
            out.push_str(text);
            i += len;
        } else {
            let ch = html[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Collapses whitespace, drops quoted lines and everything from a `-- ` signature
/// line on, and cuts at [`PREVIEW_CHARS_MAX`] characters.
fn condense(text: &str) -> String {
    let mut words: Vec<&str> = Vec::new();
    let mut chars = 0;
    for line in text.lines() {
        if line == "-- " || line == "--" {
            break;
        }
        if line.trim_start().starts_with('>') {
            continue;
        }
        for w in line.split_whitespace() {
            chars += w.chars().count() + usize::from(!words.is_empty());
            words.push(w);
            if chars >= PREVIEW_CHARS_MAX {
                break;
            }
        }
        if chars >= PREVIEW_CHARS_MAX {
            break;
        }
    }
    words.join(" ").chars().take(PREVIEW_CHARS_MAX).collect()
}

impl ParsedMessage<'_> {
    /// The RFC 8970 preview text, or `None` when the message has no text to show.
    pub fn preview(&self) -> Option<String> {
        let tree = &self.tree;
        let (part, html) = match first_leaf(tree, "plain") {
            Some(p) => (p, false),
            None => (first_leaf(tree, "html")?, true),
        };
        let mut text = part_text(tree, part);
        if text.len() > SCAN_BYTES_MAX {
            let mut cut = SCAN_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if html {
            text = strip_html(&text);
        }
        let out = condense(&text);
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_of_plain_html_and_empty_messages() {
        let plain = b"Subject: x\r\n\r\nHi Bob,\r\n\r\n> old quoted text\r\nSee  you\tat noon.\r\n-- \r\nAlice\r\n";
        assert_eq!(
            ParsedMessage::parse(plain).preview().as_deref(),
            Some("Hi Bob, See you at noon.")
        );
        let html = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><style>p{}</style><p>Caf=C3=A9 &amp; cake</p></html>\r\n";
        assert_eq!(
            ParsedMessage::parse(html).preview().as_deref(),
            Some("Café & cake")
        );
        let binary = b"Content-Type: application/pdf\r\n\r\n%PDF\r\n";
        assert_eq!(ParsedMessage::parse(binary).preview(), None);
        let long = format!("Subject: x\r\n\r\n{}\r\n", "word ".repeat(200));
        let p = ParsedMessage::parse(long.as_bytes()).preview().unwrap();
        assert_eq!(p.chars().count(), PREVIEW_CHARS_MAX);
    }
}
