//! FETCH rendering and SEARCH evaluation over raw messages (`imap::mime`): the CPU cost
//! per message of `FETCH 1:* (ENVELOPE)`, `(BODYSTRUCTURE)`, header fields and
//! `SEARCH SUBJECT`/`BODY`, without any I/O.
//!
//! `cargo bench -p imap --bench fetch_render`. Not a pass/fail test.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imap::mime::{ParsedMessage, SearchMessage};
use imap_proto::{Section, SectionText};
use std::hint::black_box;

const HEADER: &str = "Return-Path: <alice@example.org>\r\n\
Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n\tby mail.example.com with LMTP; Mon, 6 Jan 2025 10:00:00 +0000\r\n\
From: Alice Example <alice@example.org>\r\n\
To: Bob <bob@example.com>, \"Carol, Team\" <carol@example.com>\r\n\
Cc: dave@example.net\r\n\
Subject: =?UTF-8?Q?Quarterly_report_=E2=80=94_draft?=\r\n\
Date: Mon, 6 Jan 2025 10:00:00 +0000\r\n\
Message-ID: <20250106100000.1234@example.org>\r\n\
In-Reply-To: <20250105090000.99@example.com>\r\n\
MIME-Version: 1.0\r\n";

fn text(bytes: usize) -> String {
    let line = "The quarterly numbers are in the attached sheet; please review by Friday.\r\n";
    line.repeat(bytes / line.len() + 1)
}

/// A 4 KB text/plain message (most mail).
fn plain() -> Vec<u8> {
    format!(
        "{HEADER}Content-Type: text/plain; charset=utf-8\r\n\r\n{}",
        text(4_000)
    )
    .into_bytes()
}

/// A ~70 KB multipart/mixed with a multipart/alternative body and a base64 attachment.
fn multipart() -> Vec<u8> {
    // 76-character base64 lines, as mail clients write attachments.
    let b64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
        .repeat(50_000 / 76);
    format!(
        "{HEADER}Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{t}\r\n\
--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>{t}</p>\r\n\
--inner--\r\n\
--outer\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\
--outer--\r\n",
        t = text(8_000)
    )
    .into_bytes()
}

fn render(c: &mut Criterion) {
    let header_fields = Section {
        part: vec![],
        text: Some(SectionText::HeaderFields(
            [
                "From",
                "To",
                "Cc",
                "Subject",
                "Date",
                "Message-ID",
                "References",
            ]
            .map(String::from)
            .to_vec(),
        )),
    };
    for (name, msg) in [("plain_4k", plain()), ("multipart_70k", multipart())] {
        let mut g = c.benchmark_group(format!("fetch_render/{name}"));
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function("envelope", |b| {
            b.iter(|| ParsedMessage::parse(black_box(&msg)).envelope())
        });
        g.bench_function("bodystructure", |b| {
            b.iter(|| ParsedMessage::parse(black_box(&msg)).body_structure(true))
        });
        g.bench_function("header_fields", |b| {
            b.iter(|| {
                ParsedMessage::parse(black_box(&msg))
                    .section(&header_fields)
                    .len()
            })
        });
        // What one message of `FETCH (ENVELOPE BODYSTRUCTURE BODY.PEEK[])` costs: one
        // parse, every item rendered from it.
        g.bench_function("envelope_bodystructure_body", |b| {
            b.iter(|| {
                let p = ParsedMessage::parse(black_box(&msg));
                (p.envelope(), p.body_structure(true), p.raw().len())
            })
        });
        g.bench_function("search_subject", |b| {
            b.iter(|| SearchMessage::parse(black_box(&msg)).subject_contains(b"report"))
        });
        g.bench_function("search_body", |b| {
            b.iter(|| SearchMessage::parse(black_box(&msg)).body_contains(b"quokkafern"))
        });
        g.finish();
    }
}

criterion_group!(benches, render);
criterion_main!(benches);
