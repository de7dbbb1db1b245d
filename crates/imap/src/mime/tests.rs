//! Hand-made messages with hand-worked expected IMAP output, plus property tests.
//! Expected sizes are written as `.len()` of the literal substrings the client will
//! receive, so they do not depend on the parser under test.

use imap_proto::{Date, SearchKey, Section, SectionText};
use proptest::prelude::*;

use super::*;

fn s(x: &[u8]) -> String {
    String::from_utf8_lossy(x).into_owned()
}

fn sec(part: &[u32], text: Option<SectionText>) -> Section {
    Section {
        part: part.to_vec(),
        text,
    }
}

fn fields(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Minimal IMAP syntax check of a parenthesised response item: NIL, numbers, atoms,
/// quoted strings (only `\"`/`\\` escapes, no CR/LF/8-bit), literals and lists.
fn assert_valid_imap(out: &[u8]) {
    fn value(b: &[u8], mut i: usize, depth: usize) -> Result<usize, String> {
        if depth > 200 {
            return Err("too deep".into());
        }
        match b.get(i) {
            Some(b'(') => {
                i += 1;
                let mut first = true;
                loop {
                    match b.get(i) {
                        Some(b')') => return Ok(i + 1),
                        Some(b' ') if !first => i += 1,
                        Some(b'(') if !first => {}
                        None => return Err("unterminated list".into()),
                        _ if !first => return Err(format!("missing separator at {i}")),
                        _ => {}
                    }
                    i = value(b, i, depth + 1)?;
                    first = false;
                }
            }
            Some(b'"') => {
                i += 1;
                loop {
                    match b.get(i) {
                        Some(b'"') => return Ok(i + 1),
                        Some(b'\\') => match b.get(i + 1) {
                            Some(b'"' | b'\\') => i += 2,
                            _ => return Err(format!("bad escape at {i}")),
                        },
                        Some(&c) if c == 0 || c >= 0x80 || c == b'\r' || c == b'\n' => {
                            return Err(format!("bad quoted byte {c} at {i}"));
                        }
                        Some(_) => i += 1,
                        None => return Err("unterminated quoted".into()),
                    }
                }
            }
            Some(b'{') => {
                let close = b[i..]
                    .iter()
                    .position(|&c| c == b'}')
                    .ok_or("bad literal")?
                    + i;
                let n: usize = std::str::from_utf8(&b[i + 1..close])
                    .map_err(|e| e.to_string())?
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                if b.get(close + 1..close + 3) != Some(b"\r\n") {
                    return Err("literal without CRLF".into());
                }
                let end = close + 3 + n;
                let data = b.get(close + 3..end).ok_or("short literal")?;
                if data.contains(&0) {
                    return Err("NUL in literal".into());
                }
                Ok(end)
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let len = b[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
                let atom = &b[i..i + len];
                if atom != b"NIL" && !atom.iter().all(u8::is_ascii_digit) {
                    return Err(format!("unexpected atom {:?}", s(atom)));
                }
                Ok(i + len)
            }
            other => Err(format!("unexpected {other:?} at {i}")),
        }
    }
    assert_eq!(out.first(), Some(&b'('), "{}", s(out));
    match value(out, 0, 0) {
        Ok(end) => assert_eq!(end, out.len(), "trailing bytes in {}", s(out)),
        Err(e) => panic!("invalid IMAP ({e}): {}", s(out)),
    }
}

const SIMPLE: &[u8] = b"From: Alice <alice@example.com>\r\n\
To: bob@example.org\r\n\
Subject: Hello\r\n\
Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\
Message-ID: <1@example.com>\r\n\
\r\n\
Hi Bob,\r\n\
bye\r\n";

#[test]
fn simple_text_message() {
    let body = "Hi Bob,\r\nbye\r\n";
    assert_eq!(
        s(&body_structure(SIMPLE, false)),
        format!(
            "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" {} 2)",
            body.len()
        )
    );
    assert_eq!(
        s(&body_structure(SIMPLE, true)),
        format!(
            "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" {} 2 NIL NIL NIL NIL)",
            body.len()
        )
    );
    let alice = "((\"Alice\" NIL \"alice\" \"example.com\"))";
    assert_eq!(
        s(&envelope(SIMPLE)),
        format!(
            "(\"Mon, 7 Feb 1994 21:52:25 -0800\" \"Hello\" {alice} {alice} {alice} \
             ((NIL NIL \"bob\" \"example.org\")) NIL NIL NIL \"<1@example.com>\")"
        )
    );
    assert_eq!(section(SIMPLE, &Section::default()), SIMPLE);
    assert_eq!(
        s(&section(SIMPLE, &sec(&[], Some(SectionText::Text)))),
        body
    );
    assert_eq!(s(&section(SIMPLE, &sec(&[1], None))), body);
    // Part 1 of a non-multipart message is its body; its MIME header is the header.
    let header = &SIMPLE[..SIMPLE.len() - body.len()];
    assert_eq!(section(SIMPLE, &sec(&[1], Some(SectionText::Mime))), header);
    assert_eq!(
        section(SIMPLE, &sec(&[], Some(SectionText::Header))),
        header
    );
    assert!(section(SIMPLE, &sec(&[2], None)).is_empty());
    assert!(section(SIMPLE, &sec(&[1, 1], None)).is_empty());
    assert!(section(SIMPLE, &sec(&[1], Some(SectionText::Header))).is_empty());
    assert_eq!(
        s(&section(
            SIMPLE,
            &sec(
                &[],
                Some(SectionText::HeaderFields(fields(&[
                    "subject", "FROM", "x-none"
                ])))
            )
        )),
        "From: Alice <alice@example.com>\r\nSubject: Hello\r\n\r\n"
    );
    assert_eq!(
        s(&section(
            SIMPLE,
            &sec(&[], Some(SectionText::HeaderFields(fields(&["x-none"]))))
        )),
        "\r\n"
    );
    assert_eq!(
        s(&section(
            SIMPLE,
            &sec(
                &[],
                Some(SectionText::HeaderFieldsNot(fields(&[
                    "from",
                    "date",
                    "message-id"
                ])))
            )
        )),
        "To: bob@example.org\r\nSubject: Hello\r\n\r\n"
    );
    assert_eq!(binary_section(SIMPLE, &[1]).unwrap(), body.as_bytes());
}

const MIXED_TEXT: &str = "caf=C3=A9";
const MIXED_PDF: &str = "JVBERi0xLjQK";

fn mixed() -> Vec<u8> {
    format!(
        "From: a@b.c\r\n\
Subject: files\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\
\r\n\
preamble\r\n\
--XX\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
{MIXED_TEXT}\r\n\
--XX\r\n\
Content-Type: application/pdf; name=\"a.pdf\"\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
{MIXED_PDF}\r\n\
--XX--\r\n\
epilogue\r\n"
    )
    .into_bytes()
}

#[test]
fn multipart_mixed_with_base64_attachment() {
    let msg = mixed();
    let (t, p) = (MIXED_TEXT.len(), MIXED_PDF.len());
    assert_eq!(
        s(&body_structure(&msg, true)),
        format!(
            "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" {t} 0 NIL NIL NIL NIL)\
(\"application\" \"pdf\" (\"name\" \"a.pdf\") NIL NIL \"base64\" {p} NIL (\"attachment\" (\"filename\" \"a.pdf\")) NIL NIL) \
\"mixed\" (\"boundary\" \"XX\") NIL NIL NIL)"
        )
    );
    assert_eq!(
        s(&body_structure(&msg, false)),
        format!(
            "((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\" {t} 0)\
(\"application\" \"pdf\" (\"name\" \"a.pdf\") NIL NIL \"base64\" {p}) \"mixed\")"
        )
    );
    assert_eq!(s(&section(&msg, &sec(&[1], None))), MIXED_TEXT);
    assert_eq!(s(&section(&msg, &sec(&[2], None))), MIXED_PDF);
    assert_eq!(
        s(&section(&msg, &sec(&[2], Some(SectionText::Mime)))),
        "Content-Type: application/pdf; name=\"a.pdf\"\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
    );
    assert!(section(&msg, &sec(&[3], None)).is_empty());
    assert!(section(&msg, &sec(&[0], None)).is_empty());
    assert_eq!(binary_section(&msg, &[1]).unwrap(), "café".as_bytes());
    assert_eq!(binary_section(&msg, &[2]).unwrap(), b"%PDF-1.4\n");
    let parsed = ParsedMessage::parse(&msg);
    assert_eq!(parsed.binary_size(&[2]), Ok(9));
    assert!(s(parsed.text()).starts_with("preamble\r\n--XX"));
    assert_eq!(
        [parsed.header(), parsed.text()].concat(),
        msg,
        "HEADER + TEXT is the message"
    );
    // Search sees decoded text in the text part but not the attachment.
    let search = SearchMessage::parse(&msg);
    assert!(search.body_contains("CAFÉ".as_bytes()));
    assert!(!search.body_contains(b"JVBERi"));
    assert!(search.text_contains(b"FILES"));
}

#[test]
fn nested_message_rfc822() {
    let inner_header = "From: inner@y.org\r\n\
Subject: inner\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\r\n";
    let inner_body = "--b2\r\n\
Content-Type: text/plain\r\n\
\r\n\
plain\r\n\
--b2\r\n\
Content-Type: text/html\r\n\
\r\n\
<b>html</b>\r\n\
--b2--";
    let inner = format!("{inner_header}{inner_body}");
    let msg = format!(
        "From: outer@x.org\r\n\
Subject: fwd\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
see attached\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
{inner}\r\n\
--b1--\r\n"
    )
    .into_bytes();
    let lines = inner.matches('\n').count();
    let inner_addr = "((NIL NIL \"inner\" \"y.org\"))";
    let env = format!("(NIL \"inner\" {inner_addr} {inner_addr} {inner_addr} NIL NIL NIL NIL NIL)");
    let ascii = "(\"charset\" \"us-ascii\")";
    assert_eq!(
        s(&body_structure(&msg, true)),
        format!(
            "((\"text\" \"plain\" {ascii} NIL NIL \"7bit\" 12 0 NIL NIL NIL NIL)\
(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" {} {env} \
((\"text\" \"plain\" {ascii} NIL NIL \"7bit\" 5 0 NIL NIL NIL NIL)\
(\"text\" \"html\" {ascii} NIL NIL \"7bit\" 11 0 NIL NIL NIL NIL) \
\"alternative\" (\"boundary\" \"b2\") NIL NIL NIL) {lines} NIL NIL NIL NIL) \
\"mixed\" (\"boundary\" \"b1\") NIL NIL NIL)",
            inner.len()
        )
    );
    assert_eq!(s(&section(&msg, &sec(&[2], None))), inner);
    assert_eq!(
        s(&section(&msg, &sec(&[2], Some(SectionText::Header)))),
        inner_header
    );
    assert_eq!(
        s(&section(&msg, &sec(&[2], Some(SectionText::Text)))),
        inner_body
    );
    assert_eq!(
        s(&section(&msg, &sec(&[2], Some(SectionText::Mime)))),
        "Content-Type: message/rfc822\r\n\r\n"
    );
    assert_eq!(
        s(&section(
            &msg,
            &sec(&[2], Some(SectionText::HeaderFields(fields(&["subject"]))))
        )),
        "Subject: inner\r\n\r\n"
    );
    assert_eq!(s(&section(&msg, &sec(&[2, 1], None))), "plain");
    assert_eq!(s(&section(&msg, &sec(&[2, 2], None))), "<b>html</b>");
    assert_eq!(
        s(&section(&msg, &sec(&[2, 2], Some(SectionText::Mime)))),
        "Content-Type: text/html\r\n\r\n"
    );
    assert!(section(&msg, &sec(&[2, 3], None)).is_empty());
    assert!(section(&msg, &sec(&[1, 1], None)).is_empty());
    assert!(section(&msg, &sec(&[1], Some(SectionText::Header))).is_empty());
    let search = SearchMessage::parse(&msg);
    assert!(search.body_contains(b"HTML</B>"));
    assert!(search.subject_contains(b"fwd"));
    assert!(!search.subject_contains(b"inner"), "only top-level headers");
}

#[test]
fn nested_single_part_message_numbers_its_body_as_1() {
    let msg = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n";
    assert_eq!(s(&section(msg, &sec(&[1, 1], None))), "body\r\n");
    assert_eq!(
        s(&section(msg, &sec(&[1, 1], Some(SectionText::Mime)))),
        "Subject: in\r\n\r\n"
    );
    assert_eq!(
        s(&section(msg, &sec(&[1], Some(SectionText::Header)))),
        "Subject: in\r\n\r\n"
    );
    let bs = s(&body_structure(msg, false));
    assert_eq!(
        bs,
        "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 21 \
(NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL) \
(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1) 3)"
    );
}

#[test]
fn rfc3501_style_example() {
    // The shape of RFC 3501's BODYSTRUCTURE example: two text parts, the second with
    // a name, id, description and base64 encoding.
    let p1 = "line one\r\nline two\r\n";
    let p2 = "aGVsbG8=\r\n";
    let msg = format!(
        "Content-Type: MULTIPART/MIXED; BOUNDARY=\"=-=\"\r\n\r\n\
--=-=\r\n\r\n{p1}\r\n\
--=-=\r\n\
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\r\n\
Content-ID: <960723163407.20117h@cac.washington.edu>\r\n\
Content-Description: Compiled diff\r\n\
Content-Transfer-Encoding: BASE64\r\n\r\n\
{p2}\r\n--=-=--\r\n"
    );
    assert_eq!(
        s(&body_structure(msg.as_bytes(), false)),
        format!(
            "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" {} 2)\
(\"text\" \"plain\" (\"charset\" \"US-ASCII\" \"name\" \"cc.diff\") \
\"<960723163407.20117h@cac.washington.edu>\" \"Compiled diff\" \"BASE64\" {} 1) \"mixed\")",
            p1.len(),
            p2.len()
        )
    );
    assert_eq!(binary_section(msg.as_bytes(), &[2]).unwrap(), b"hello");
}

#[test]
fn missing_content_type_and_digest_default() {
    let msg = b"Subject: x\r\n\r\nno mime here";
    assert_eq!(
        s(&body_structure(msg, false)),
        "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 12 0)"
    );
    let digest = b"Content-Type: multipart/digest; boundary=d\r\n\r\n\
--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n\
--d--\r\n";
    let bs = s(&body_structure(digest, false));
    assert_eq!(
        bs,
        "((\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 21 \
(NIL \"one\" NIL NIL NIL NIL NIL NIL NIL NIL) \
(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 0) 2) \"digest\")"
    );
}

#[test]
fn folded_headers_and_encoded_words() {
    let msg = b"Subject: =?iso-8859-1?q?Caf=E9?=\r\n au\r\n\tlait\r\n\
From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\r\n\r\nx";
    let env = s(&envelope(msg));
    // ENVELOPE keeps the raw (undecoded) text, unfolded.
    assert!(
        env.starts_with("(NIL \"=?iso-8859-1?q?Caf=E9?= au\tlait\" ((\"=?utf-8?q?J=C3=B6rg?=\" NIL \"jorg\" \"example.com\"))"),
        "{env}"
    );
    assert_valid_imap(env.as_bytes());
    assert_eq!(
        s(&section(
            msg,
            &sec(&[], Some(SectionText::HeaderFields(fields(&["Subject"]))))
        )),
        "Subject: =?iso-8859-1?q?Caf=E9?=\r\n au\r\n\tlait\r\n\r\n"
    );
    let search = SearchMessage::parse(msg);
    assert!(search.subject_contains("CAFÉ".as_bytes()));
    assert!(search.subject_contains(b"lait"));
    assert!(search.from_contains("jörg".as_bytes()));
    assert!(search.from_contains(b"JORG@EXAMPLE"));
    assert!(search.header_contains("subject", b""));
    assert!(!search.header_contains("x-missing", b""));
    assert!(!search.to_contains(b""));
}

#[test]
fn group_addresses_in_envelope() {
    let msg = b"From: a@x.org\r\nTo: Friends: b@y.org, \"C D\" <c@z.org>;\r\nCc: undisclosed-recipients:;\r\n\r\n";
    let env = s(&envelope(msg));
    assert_eq!(
        env,
        "(NIL NIL ((NIL NIL \"a\" \"x.org\")) ((NIL NIL \"a\" \"x.org\")) ((NIL NIL \"a\" \"x.org\")) \
((NIL NIL \"Friends\" NIL)(NIL NIL \"b\" \"y.org\")(\"C D\" NIL \"c\" \"z.org\")(NIL NIL NIL NIL)) \
((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL)"
    );
}

#[test]
fn strings_are_quoted_or_literal() {
    let msg = b"Subject: say \"hi\" \\ \xc3\xa9\r\nMessage-ID: <\"q\"\\@x>\r\n\r\n";
    let env = envelope(msg);
    assert_valid_imap(&env);
    let env = s(&env);
    assert!(env.contains("{13}\r\nsay \"hi\" \\ é"), "{env}");
    assert!(env.contains("\"<\\\"q\\\"\\\\@x>\""), "{env}");
}

#[test]
fn sent_date_uses_header_zone() {
    let msg = b"Date: Mon, 31 Jan 1994 23:30:00 -0800\r\n\r\n";
    let search = SearchMessage::parse(msg);
    let d = Date {
        year: 1994,
        month: 1,
        day: 31,
    };
    assert_eq!(search.sent_date(), Some(d));
    assert_eq!(search.eval(&SearchKey::SentOn(d)), Some(true));
    assert_eq!(search.eval(&SearchKey::Seen), None);
    assert_eq!(
        SearchMessage::parse(b"Date: garbage\r\n\r\n").sent_date(),
        None
    );
}

#[test]
fn charset_and_qp_body_search() {
    let msg = b"Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n\
Gr=FC=DFe aus M=DCnchen=\r\n!\r\n";
    let search = SearchMessage::parse(msg);
    assert!(search.body_contains("münchen!".as_bytes()));
    assert!(search.eval(&SearchKey::Body("GRÜSSE".as_bytes().to_vec())) == Some(false));
    assert!(search.body_contains("grüße".as_bytes()));
}

#[test]
fn unknown_cte_is_an_error() {
    let msg = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n";
    assert!(matches!(
        binary_section(msg, &[1]),
        Err(BinaryError::UnknownCte { .. })
    ));
    assert_eq!(binary_section(msg, &[]).unwrap(), msg);
}

#[test]
fn qp_decoding_rules() {
    use super::section::decode_qp;
    assert_eq!(decode_qp(b"a=20\r\nb  \r\nc=\r\nd=4"), b"a \r\nb\r\ncd=4");
    assert_eq!(decode_qp(b"x=3d=3D=\n"), b"x==");
    assert_eq!(super::section::decode_base64(b"aGVs\r\nbG8=\r\n"), b"hello");
}

#[test]
fn partial_ranges() {
    assert_eq!(partial(b"hello", None), b"hello");
    let p = |origin, count| Some(imap_proto::Partial { origin, count });
    assert_eq!(partial(b"hello", p(1, 3)), b"ell");
    assert_eq!(partial(b"hello", p(3, 100)), b"lo");
    assert_eq!(partial(b"hello", p(5, 1)), b"");
    assert_eq!(partial(b"hello", p(u32::MAX, u32::MAX)), b"");
}

#[test]
fn malformed_mime_stays_valid() {
    let cases: Vec<&[u8]> = vec![
        // Missing close delimiter.
        b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\nonly part\r\n",
        // Boundary never appears.
        b"Content-Type: multipart/mixed; boundary=z\r\n\r\nno parts at all\r\n",
        // Multipart without boundary parameter.
        b"Content-Type: multipart/mixed\r\n\r\nbody\r\n",
        // Garbage header lines, NUL bytes, 8-bit.
        b"this is not a header\r\n: empty name\r\n\tcontinuation first\r\nX\x00Y: \x00\xff\xfe\r\n\r\n\x00body\xff",
        // Header only, no blank line, no final newline.
        b"Subject: only header",
        b"",
        b"\r\n",
        // Boundary inside header of a part, nested multipart missing its close.
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/alternative; boundary=b\r\n--a\r\n\r\nx\r\n--a\r\nContent-Type: multipart/related; boundary=c\r\n\r\n--c\r\n\r\ninner\r\n--a--\r\n",
        // Encoded message/rfc822, unknown type, bare LF line ends.
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogaGkKCmJvZHkK\n",
        b"Content-Type: ;;;\r\nContent-Disposition: ((\r\nContent-Language: ,,\r\n\r\n",
        b"From: \"unterminated <a@b\r\nTo: <<<@>>>\r\nCc: (((comment\r\nBcc: a@b@c, ;;; :: <>\r\n\r\n",
    ];
    for msg in cases {
        let p = ParsedMessage::parse(msg);
        assert_valid_imap(&p.envelope());
        assert_valid_imap(&p.body_structure(false));
        assert_valid_imap(&p.body_structure(true));
        assert_eq!(&*p.section(&Section::default()), msg);
        assert_eq!([p.header(), p.text()].concat(), msg);
        for path in [&[1][..], &[1, 1], &[2], &[1, 2, 3]] {
            for text in [None, Some(SectionText::Mime), Some(SectionText::Header)] {
                let _ = p.section(&sec(path, text));
            }
            let _ = p.binary_section(path);
        }
    }
    // The missing-close case still finds its one part; an empty multipart renders a
    // placeholder part because the grammar needs one.
    let bs = body_structure(
        b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\nonly part\r\n",
        false,
    );
    assert_eq!(
        s(&bs),
        "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 11 1) \"mixed\")"
    );
    let bs = body_structure(
        b"Content-Type: multipart/mixed; boundary=z\r\n\r\nnothing\r\n",
        false,
    );
    assert_eq!(
        s(&bs),
        "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\")"
    );
}

#[test]
fn deep_nesting_is_bounded() {
    let mut msg = Vec::new();
    for i in 0..500 {
        msg.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    msg.extend_from_slice(b"\r\nleaf\r\n");
    let p = ParsedMessage::parse(&msg);
    assert_valid_imap(&p.body_structure(true));
    let mut msg = Vec::new();
    for _ in 0..500 {
        msg.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    let p = ParsedMessage::parse(&msg);
    assert_valid_imap(&p.body_structure(true));
    assert_valid_imap(&p.envelope());
}

/// Random messages built from MIME-ish pieces, so the fuzzing reaches the multipart
/// and nested-message paths that pure random bytes almost never hit.
fn mime_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"Content-Type: multipart/mixed; boundary=b\r\n".to_vec()),
        Just(b"Content-Type: multipart/digest; boundary=\"c\"\r\n".to_vec()),
        Just(b"Content-Type: message/rfc822\r\n".to_vec()),
        Just(b"Content-Type: text/plain; charset=utf-8; name*=utf-8''%C3%A9\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
        Just(b"Content-Disposition: attachment; filename=\"a b\"\r\n".to_vec()),
        Just(b"From: \"x\" <a@b>, g: c@d;\r\n".to_vec()),
        Just(b"Subject: =?utf-8?b?w6k=?=\r\n".to_vec()),
        Just(b"Date: Tue, 1 Feb 1994 10:00:00 +0100\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"--b\r\n".to_vec()),
        Just(b"--b--\r\n".to_vec()),
        Just(b"--c\r\n".to_vec()),
        Just(b"--c--".to_vec()),
        Just(b" folded\r\n".to_vec()),
        Just(b"=C3=A9=\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn check_everything(msg: &[u8]) {
    let p = ParsedMessage::parse(msg);
    assert_valid_imap(&p.envelope());
    assert_valid_imap(&p.body_structure(false));
    assert_valid_imap(&p.body_structure(true));
    assert_eq!(section(msg, &Section::default()), msg);
    assert_eq!([p.header(), p.text()].concat(), msg);
    for path in [&[1][..], &[1, 1], &[2], &[2, 1], &[1, 2, 1]] {
        for text in [
            None,
            Some(SectionText::Mime),
            Some(SectionText::Header),
            Some(SectionText::Text),
            Some(SectionText::HeaderFields(fields(&["from", "content-type"]))),
            Some(SectionText::HeaderFieldsNot(fields(&["subject"]))),
        ] {
            let got = p.section(&sec(path, text.clone()));
            if text.is_none()
                || matches!(
                    text,
                    Some(SectionText::Mime | SectionText::Header | SectionText::Text)
                )
            {
                // Contiguous sections are always slices of the message.
                assert!(got.len() <= msg.len());
            }
        }
        let _ = p.binary_section(path);
    }
    let search = SearchMessage::from_parsed(p);
    let _ = search.text_contains("é".as_bytes());
    let _ = search.header_contains("from", b"a");
    let _ = search.sent_date();
}

proptest! {
    #[test]
    fn random_bytes_never_panic(msg in proptest::collection::vec(any::<u8>(), 0..2000)) {
        check_everything(&msg);
    }

    #[test]
    fn mime_soup_never_panics(msg in mime_soup()) {
        check_everything(&msg);
    }
}

#[test]
fn huge_header_is_bounded_and_exact() {
    let mut msg = Vec::new();
    for i in 0..150_000 {
        msg.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    msg.extend_from_slice(b"\r\nbody");
    let p = ParsedMessage::parse(&msg);
    assert_eq!(p.text(), b"body");
    assert_eq!([p.header(), p.text()].concat(), msg);
    let not = p.section(&sec(
        &[],
        Some(SectionText::HeaderFieldsNot(fields(&["x-1"]))),
    ));
    assert_eq!(not.len(), p.header().len() - b"X-1: v\r\n".len());
}

#[test]
fn big_multipart_parses_in_one_pass() {
    // 8 MB of base64 lines in an attachment: must stay linear (a few ms in release).
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5\r\n";
    let body: String = line.repeat(8 * 1024 * 1024 / line.len());
    let msg = format!(
        "Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\nhi\r\n--q\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{body}\r\n--q--\r\n"
    );
    let start = std::time::Instant::now();
    let p = ParsedMessage::parse(msg.as_bytes());
    let bs = p.body_structure(true);
    assert_valid_imap(&bs);
    assert_eq!(p.section(&sec(&[2], None)).len(), body.len());
    assert_eq!(p.binary_size(&[2]).unwrap() % 3, 0);
    eprintln!(
        "8 MB multipart parse + bodystructure: {:?}",
        start.elapsed()
    );
}
