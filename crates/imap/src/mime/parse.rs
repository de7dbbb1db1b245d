//! One pass over the raw message that finds every MIME entity and its exact byte ranges.
//!
//! Why not mail-parser's own part tree: IMAP needs the sizes, line counts and bytes of
//! each part exactly as `BODY[part]` will return them, and RFC 2046 rules for where a
//! part ends (a delimiter is a line that starts with `--boundary`, and the line break
//! before it belongs to the delimiter). mail-parser matches boundaries anywhere in a
//! line and re-parses encoded nested messages from decoded bytes, so its offsets do not
//! always describe the raw message. mail-parser is still used for what it does well:
//! parsing field values (Content-Type with RFC 2231, RFC 2047 words, dates, charsets).
//!
//! Layout: parts live in one arena (`Vec<Part>`), part 0 is the message itself.
//! Each part has `header_start..body_start` (header including the blank line) and
//! `body_start..end` (body, without the line break that precedes the next delimiter).
//!
//! Limits (a message from the outside world may be hostile): nesting deeper than
//! [`MAX_DEPTH`] or more than [`MAX_PARTS`] entities stops the descent; the rest of the
//! bytes stay in the body of the last part as an opaque leaf, so output stays valid.

use mail_parser::parsers::MessageStream;

/// Deepest multipart / message nesting that is parsed into parts.
pub(crate) const MAX_DEPTH: usize = 64;
/// Most entities parsed in one message (Dovecot uses a similar cap).
pub(crate) const MAX_PARTS: usize = 10_000;
/// Most header fields recorded over the whole message. Past it, further lines are
/// kept as folding of the previous field: every byte still belongs to the header it
/// is in (HEADER stays exact), it just cannot be looked up by name. Without a cap a
/// message of short lines would cost ~20x its size in field records.
const MAX_FIELDS: usize = 100_000;
/// Longest boundary accepted; RFC 2046 allows 70, real mail sometimes has more.
const MAX_BOUNDARY_LEN: usize = 998;

/// One header field: `start..end` is the whole field including folding and its line
/// break; `name` is the field name; `value` starts after the colon and ends at `end`.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub start: usize,
    pub name_end: usize,
    pub value_start: usize,
    pub end: usize,
    /// False for a line that is not `name:` (garbage); such a line is kept in the
    /// header bytes but never matches a field name.
    pub valid: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Leaf,
    /// Children in order (part numbers 1..).
    Multipart(Vec<usize>),
    /// message/rfc822 (or message/global): the embedded message's root part.
    Message(usize),
}

/// The effective Content-Type of a part (defaults applied), lowercase type/subtype.
#[derive(Debug, Clone)]
pub(crate) struct ContentType {
    pub ty: String,
    pub subtype: String,
    /// Parameters in header order, names lowercase, values decoded (RFC 2231).
    pub params: Vec<(String, String)>,
}

impl ContentType {
    fn default_text() -> Self {
        ContentType {
            ty: "text".into(),
            subtype: "plain".into(),
            params: vec![("charset".into(), "us-ascii".into())],
        }
    }

    fn default_message() -> Self {
        ContentType {
            ty: "message".into(),
            subtype: "rfc822".into(),
            params: Vec::new(),
        }
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn is_message(&self) -> bool {
        self.ty == "message" && (self.subtype == "rfc822" || self.subtype == "global")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub header_start: usize,
    pub body_start: usize,
    pub end: usize,
    pub fields: Vec<Field>,
    pub ctype: ContentType,
    pub kind: Kind,
}

/// A parsed message: the raw bytes and the part arena.
#[derive(Debug, Clone)]
pub(crate) struct Tree<'a> {
    pub msg: &'a [u8],
    pub parts: Vec<Part>,
}

/// Where a scan stopped: end of input or a delimiter line.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Eof,
    Delim {
        line_start: usize,
        next_line: usize,
        level: usize,
        close: bool,
    },
}

struct Scanner<'a> {
    msg: &'a [u8],
    parts: Vec<Part>,
    /// Active boundaries, outermost first.
    boundaries: Vec<Vec<u8>>,
    /// Fields recorded so far (bounded by [`MAX_FIELDS`]).
    fields: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Default {
    Text,
    Message,
}

impl<'a> Tree<'a> {
    pub(crate) fn parse(msg: &'a [u8]) -> Tree<'a> {
        let mut scanner = Scanner {
            msg,
            parts: Vec::new(),
            boundaries: Vec::new(),
            fields: 0,
        };
        scanner.entity(0, 0, Default::Text);
        Tree {
            msg,
            parts: scanner.parts,
        }
    }

    pub(crate) fn root(&self) -> &Part {
        // `parse` always pushes the root first.
        &self.parts[0]
    }

    pub(crate) fn header_bytes(&self, part: &Part) -> &'a [u8] {
        self.msg
            .get(part.header_start..part.body_start)
            .unwrap_or_default()
    }

    pub(crate) fn body_bytes(&self, part: &Part) -> &'a [u8] {
        self.msg.get(part.body_start..part.end).unwrap_or_default()
    }

    pub(crate) fn field_name(&self, f: &Field) -> &'a [u8] {
        self.msg.get(f.start..f.name_end).unwrap_or_default()
    }

    /// The field value after the colon, including folding and the final line break.
    pub(crate) fn field_value(&self, f: &Field) -> &'a [u8] {
        self.msg.get(f.value_start..f.end).unwrap_or_default()
    }

    pub(crate) fn field_raw(&self, f: &Field) -> &'a [u8] {
        self.msg.get(f.start..f.end).unwrap_or_default()
    }

    /// First field called `name` (ASCII case-insensitive).
    pub(crate) fn find_field<'p>(&self, part: &'p Part, name: &str) -> Option<&'p Field> {
        part.fields
            .iter()
            .find(|f| f.valid && self.field_name(f).eq_ignore_ascii_case(name.as_bytes()))
    }

    pub(crate) fn raw_value(&self, part: &Part, name: &str) -> Option<&'a [u8]> {
        self.find_field(part, name).map(|f| self.field_value(f))
    }

    /// The children that IMAP part numbers index into, seen from `part` when it is
    /// entered by number: a multipart's children; for message/rfc822 the embedded
    /// message's parts (its children if multipart, else the message body as part 1).
    fn numbered_child(&self, id: usize, n: u32) -> Option<usize> {
        let idx = usize::try_from(n).ok()?.checked_sub(1)?;
        match &self.parts.get(id)?.kind {
            Kind::Multipart(children) => children.get(idx).copied(),
            Kind::Message(inner) => self.first_level(*inner, idx),
            Kind::Leaf => None,
        }
    }

    /// Part numbers directly under a message entity `msg_id`.
    fn first_level(&self, msg_id: usize, idx: usize) -> Option<usize> {
        match &self.parts.get(msg_id)?.kind {
            Kind::Multipart(children) => children.get(idx).copied(),
            _ if idx == 0 => Some(msg_id),
            _ => None,
        }
    }

    /// Resolves a non-empty part number path to an arena index.
    pub(crate) fn resolve(&self, path: &[u32]) -> Option<usize> {
        let (first, rest) = path.split_first()?;
        let mut id = self.first_level(0, usize::try_from(*first).ok()?.checked_sub(1)?)?;
        for n in rest {
            id = self.numbered_child(id, *n)?;
        }
        Some(id)
    }
}

/// Length of the line break ending just before `pos` (0, 1 for LF, 2 for CRLF).
fn eol_before(msg: &[u8], pos: usize) -> usize {
    if pos >= 2 && msg.get(pos - 2..pos) == Some(b"\r\n") {
        2
    } else if pos >= 1 && msg.get(pos - 1) == Some(&b'\n') {
        1
    } else {
        0
    }
}

impl Scanner<'_> {
    /// Index just after the `\n` that ends the line starting at `pos`, or the end.
    fn next_line(&self, pos: usize) -> usize {
        match self
            .msg
            .get(pos..)
            .and_then(|s| s.iter().position(|&b| b == b'\n'))
        {
            Some(i) => pos + i + 1,
            None => self.msg.len(),
        }
    }

    /// Is the line at `pos` a delimiter of an active boundary? The longest matching
    /// boundary wins, so `--abc` and `--abcd` nested either way resolve correctly.
    fn delimiter_at(&self, pos: usize) -> Option<Stop> {
        if self.boundaries.is_empty() {
            return None;
        }
        let rest = self.msg.get(pos..)?;
        let rest = rest.strip_prefix(b"--")?;
        let mut best: Option<(usize, usize)> = None;
        for (level, b) in self.boundaries.iter().enumerate() {
            if rest.starts_with(b) && best.is_none_or(|(_, len)| b.len() > len) {
                best = Some((level, b.len()));
            }
        }
        let (level, len) = best?;
        let close = rest.get(len..).is_some_and(|r| r.starts_with(b"--"));
        Some(Stop::Delim {
            line_start: pos,
            next_line: self.next_line(pos),
            level,
            close,
        })
    }

    /// Skips lines from `pos` (a line start) to the next delimiter line or the end.
    fn scan(&self, mut pos: usize) -> Stop {
        if self.boundaries.is_empty() {
            return Stop::Eof;
        }
        while pos < self.msg.len() {
            if let Some(stop) = self.delimiter_at(pos) {
                return stop;
            }
            pos = self.next_line(pos);
        }
        Stop::Eof
    }

    /// Where content stopped by `stop` ends: before the delimiter's leading line break.
    fn end_of(&self, stop: Stop, floor: usize) -> usize {
        match stop {
            Stop::Eof => self.msg.len(),
            Stop::Delim { line_start, .. } => line_start
                .saturating_sub(eol_before(self.msg, line_start))
                .max(floor),
        }
    }

    /// Splits the header starting at `start`. Returns the fields, the body start, and
    /// a stop if a delimiter line cut the header short.
    fn header(&mut self, start: usize) -> (Vec<Field>, usize, Option<Stop>) {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = start;
        while pos < self.msg.len() {
            let line_end = self.next_line(pos);
            let line = self.msg.get(pos..line_end).unwrap_or_default();
            if line == b"\n" || line == b"\r\n" {
                return (fields, line_end, None);
            }
            if let Some(stop) = self.delimiter_at(pos) {
                return (fields, self.end_of(stop, start), Some(stop));
            }
            let continuation =
                matches!(line.first(), Some(b' ' | b'\t')) || self.fields >= MAX_FIELDS;
            match fields.last_mut() {
                Some(last) if continuation => last.end = line_end,
                _ => {
                    let colon = line.iter().position(|&b| b == b':');
                    let (name_end, value_start, valid) = match colon {
                        Some(c) => {
                            let name = line.get(..c).unwrap_or_default();
                            let trimmed = name
                                .iter()
                                .rposition(|b| !matches!(b, b' ' | b'\t'))
                                .map_or(0, |i| i + 1);
                            let valid = trimmed > 0
                                && name[..trimmed].iter().all(|&b| (33..=126).contains(&b));
                            (pos + trimmed, pos + c + 1, valid)
                        }
                        None => (pos, line_end, false),
                    };
                    self.fields += 1;
                    fields.push(Field {
                        start: pos,
                        name_end,
                        value_start,
                        end: line_end,
                        valid,
                    });
                }
            }
            pos = line_end;
        }
        (fields, self.msg.len(), None)
    }

    fn content_type(&self, fields: &[Field], default: Default) -> (ContentType, Option<Vec<u8>>) {
        let fallback = || match default {
            Default::Text => ContentType::default_text(),
            Default::Message => ContentType::default_message(),
        };
        let raw = fields.iter().find(|f| {
            f.valid
                && self
                    .msg
                    .get(f.start..f.name_end)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"content-type"))
        });
        let Some(field) = raw else {
            return (fallback(), None);
        };
        let value = self
            .msg
            .get(field.value_start..field.end)
            .unwrap_or_default();
        let Some(parsed) = parse_content_type(value).filter(|c| !c.subtype.is_empty()) else {
            return (fallback(), None);
        };
        if parsed.ty == "multipart" {
            let boundary = parsed
                .param("boundary")
                .filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY_LEN)
                .map(|b| b.as_bytes().to_vec());
            if boundary.is_none() {
                // A multipart without a usable boundary cannot be split; RFC 2045 says to
                // treat an unusable Content-Type as the default.
                return (ContentType::default_text(), None);
            }
            return (parsed, boundary);
        }
        (parsed, None)
    }

    /// Parses the entity (header + body) at `start`; returns where it stopped.
    fn entity(&mut self, start: usize, depth: usize, default: Default) -> Stop {
        let (fields, body_start, cut) = self.header(start);
        let (ctype, boundary) = self.content_type(&fields, default);
        let id = self.parts.len();
        self.parts.push(Part {
            header_start: start,
            body_start,
            end: body_start,
            fields,
            ctype,
            kind: Kind::Leaf,
        });
        if let Some(stop) = cut {
            return stop;
        }
        let can_descend = depth < MAX_DEPTH && self.parts.len() < MAX_PARTS;
        let is_message = self.parts[id].ctype.is_message();
        let (kind, stop) = match boundary {
            Some(boundary) if can_descend => self.multipart(body_start, depth, id, boundary),
            _ if can_descend && is_message => {
                let inner = self.parts.len();
                let stop = self.entity(body_start, depth + 1, Default::Text);
                (Kind::Message(inner), stop)
            }
            _ => (Kind::Leaf, self.scan(body_start)),
        };
        let end = self.end_of(stop, body_start);
        if let Some(part) = self.parts.get_mut(id) {
            part.kind = kind;
            part.end = end;
        }
        stop
    }

    fn multipart(
        &mut self,
        body_start: usize,
        depth: usize,
        id: usize,
        b: Vec<u8>,
    ) -> (Kind, Stop) {
        let digest = self.parts[id].ctype.subtype == "digest";
        let child_default = if digest {
            Default::Message
        } else {
            Default::Text
        };
        self.boundaries.push(b);
        let level = self.boundaries.len() - 1;
        let mut children = Vec::new();
        let mut stop = self.scan(body_start); // preamble
        let mut popped = false;
        loop {
            match stop {
                Stop::Delim {
                    level: l,
                    close: false,
                    next_line,
                    ..
                } if l == level => {
                    if self.parts.len() >= MAX_PARTS {
                        // Too many parts: the rest of this multipart is left unparsed.
                        self.boundaries.truncate(level);
                        popped = true;
                        stop = self.scan(next_line);
                        break;
                    }
                    children.push(self.parts.len());
                    stop = self.entity(next_line, depth + 1, child_default);
                }
                Stop::Delim {
                    level: l,
                    close: true,
                    next_line,
                    ..
                } if l == level => {
                    // Epilogue: runs to an outer delimiter or the end.
                    self.boundaries.truncate(level);
                    popped = true;
                    stop = self.scan(next_line);
                    break;
                }
                _ => break,
            }
        }
        if !popped {
            self.boundaries.truncate(level);
        }
        (Kind::Multipart(children), stop)
    }
}

/// Parses a Content-Type (or Content-Disposition) value with mail-parser (RFC 2231
/// continuations and charsets handled there). `None` when it has no usable type.
pub(crate) fn parse_content_type(value: &[u8]) -> Option<ContentType> {
    let buf = terminated(value);
    let parsed = MessageStream::new(&buf).parse_content_type();
    let ct = parsed.as_content_type()?;
    let ty = ct.ctype().trim().to_ascii_lowercase();
    if ty.is_empty() {
        return None;
    }
    let subtype = ct
        .subtype()
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let params = ct
        .attributes()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_lowercase(), a.value.to_string()))
        .collect();
    Some(ContentType {
        ty,
        subtype,
        params,
    })
}

/// A copy of a field value that ends in a line break, which mail-parser's field
/// parsers need to see the end of the field.
pub(crate) fn terminated(value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(value.len() + 2);
    buf.extend_from_slice(value);
    if !buf.ends_with(b"\n") {
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

/// Unfolds a raw field value (drops the line breaks of folding) and trims it.
pub(crate) fn unfold(value: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let end = out
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    out.truncate(end);
    let start = out
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(out.len());
    out.drain(..start);
    out
}
