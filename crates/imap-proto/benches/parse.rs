//! IMAP command framing and parsing: the cost every command pays before any store work.
//!
//! `cargo bench -p imap-proto --bench parse`. Not a pass/fail test: compare runs of the
//! same machine (scripts/bench is the side-by-side comparison with Dovecot).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imap_proto::{Frame, Framer, Limits, ParseOptions, parse_command};
use std::hint::black_box;

/// Commands a mail client sends all day, in the shapes Thunderbird and iOS Mail use.
const COMMANDS: &[(&str, &[u8])] = &[
    ("noop", b"a1 NOOP\r\n"),
    (
        "uid_fetch_headers",
        b"a2 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc \
          Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To \
          Content-Type Reply-To)])\r\n",
    ),
    (
        "uid_fetch_envelope",
        b"a3 UID FETCH 1,3,5:90,200:* (FLAGS ENVELOPE BODYSTRUCTURE INTERNALDATE)\r\n",
    ),
    (
        "uid_search",
        b"a4 UID SEARCH OR (FROM \"alice\" SUBJECT \"quarterly report\") \
          (SINCE 1-Jan-2025 NOT SEEN) BODY \"budget\"\r\n",
    ),
    (
        "uid_store",
        b"a5 UID STORE 1:10000 +FLAGS.SILENT (\\Seen \\Flagged $Important)\r\n",
    ),
    ("select", b"a6 SELECT \"INBOX/Reports 2025\"\r\n"),
];

fn parse(c: &mut Criterion) {
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("parse_command");
    for (name, line) in COMMANDS {
        assert!(parse_command(line, &opts).is_ok(), "{name} does not parse");
        g.throughput(Throughput::Bytes(line.len() as u64));
        g.bench_function(*name, |b| b.iter(|| parse_command(black_box(line), &opts)));
    }
    g.finish();
}

/// A pipelined stream as a session reads it: 1,000 commands with one 50 KB APPEND
/// literal in every hundred, pushed in 16 KiB socket reads, framed and parsed.
fn frame_and_parse(c: &mut Criterion) {
    let mut stream = Vec::new();
    let body = vec![b'x'; 50_000];
    for i in 0..1000 {
        if i % 100 == 0 {
            stream
                .extend_from_slice(format!("p{i} APPEND INBOX {{{}+}}\r\n", body.len()).as_bytes());
            stream.extend_from_slice(&body);
            stream.extend_from_slice(b"\r\n");
        } else {
            let (_, line) = COMMANDS[i % COMMANDS.len()];
            stream.extend_from_slice(line);
        }
    }
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("framer");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("pipeline_1000_commands", |b| {
        b.iter(|| {
            let mut framer = Framer::new(Limits::default());
            let mut parsed = 0usize;
            for chunk in stream.chunks(16 * 1024) {
                framer.push(chunk);
                while let Some(frame) = framer.next() {
                    if let Frame::Command(cmd) = frame
                        && parse_command(&cmd, &opts).is_ok()
                    {
                        parsed += 1;
                    }
                }
            }
            assert_eq!(parsed, 1000);
            parsed
        })
    });
    g.finish();
}

criterion_group!(benches, parse, frame_and_parse);
criterion_main!(benches);
