//! Feeds arbitrary bytes through the Framer (split at fuzzer-chosen points, with small
//! limits so the limit paths are reached) and every framed command through the parser.
//! Also parses the raw input directly, and checks that commands which parse re-serialize
//! to bytes that parse to the same command.
//!
//! Run: `cargo +nightly fuzz run parse` from `crates/imap-proto`.

#![no_main]

use imap_proto::write::WriteOptions;
use imap_proto::{Frame, Framer, Limits, ParseOptions, parse_command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: option bits; second: chunk size for pushes.
    let (opts_byte, rest) = data.split_first().unwrap_or((&0, &[]));
    let (chunk_byte, input) = rest.split_first().unwrap_or((&0, &[]));
    let opts = ParseOptions {
        utf8_mailboxes: opts_byte & 1 == 1,
    };
    let limits = Limits {
        line_bytes_max: 256,
        literal_bytes_max: 128,
        command_bytes_max: 1024,
    };
    let chunk = usize::from(*chunk_byte).max(1);

    let mut framer = Framer::new(limits);
    for piece in input.chunks(chunk) {
        framer.push(piece);
        while let Some(frame) = framer.next() {
            if let Frame::Command(bytes) = frame {
                assert!(bytes.len() <= limits.command_bytes_max);
                check(&bytes, opts);
            }
        }
        assert!(framer.buffered_bytes() <= limits.line_bytes_max + limits.command_bytes_max);
        if opts_byte & 2 == 2 {
            let _ = framer.take_line();
        }
    }
    check(input, opts);
});

fn check(bytes: &[u8], opts: ParseOptions) {
    if let Ok(cmd) = parse_command(bytes, &opts) {
        let wire = cmd.to_bytes_with(WriteOptions {
            utf8_mailboxes: opts.utf8_mailboxes,
            literal_plus: true,
        });
        // Mailbox names and flags are normalised by parsing, so compare ASTs, not bytes.
        assert_eq!(parse_command(&wire, &opts).as_ref(), Ok(&cmd));
    }
}
