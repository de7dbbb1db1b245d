//! The store's hot paths: a durable append (blob fsync, directory fsync, one KV batch,
//! journal fsync) alone and with concurrent writers sharing a group commit, and the O(1)
//! mailbox digest update every flag change makes.
//!
//! `cargo bench -p store --bench store`. Appends hit the disk under the system temp dir,
//! so their figures are the machine's fsync latency as much as the store's. Not a
//! pass/fail test.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::{
    BlobHash, Clock, EventLog, Flags, InternalDate, MessageRecord, ModSeq, Op, Slot, SystemClock,
    SystemFlags, Uid,
};

const USER: &str = "bench@example.com";

/// A slot in a fresh temp dir, removed on drop.
struct TempSlot {
    dir: PathBuf,
    slot: Slot,
}

impl TempSlot {
    fn new(name: &str) -> TempSlot {
        let dir = std::env::temp_dir().join(format!("store-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
        let slot = Slot::create(&dir.join("slot"), "bench", "c1", events, clock).unwrap();
        slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
        TempSlot { dir, slot }
    }
}

impl Drop for TempSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A distinct ~4 KB message per call: equal bytes would share one blob file.
fn message(n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: a@example.org\r\nTo: {USER}\r\nSubject: bench {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n"
    )
    .into_bytes();
    m.extend(b"All work and no play makes a dull inbox.\r\n".repeat(100));
    m
}

fn append_one(slot: &Slot, n: u64) {
    let blob = slot.put_blob(&message(n)).unwrap();
    slot.execute(Op::Append {
        user: USER.into(),
        mailbox: "INBOX".into(),
        blob,
        flags: Flags::default(),
        internaldate: InternalDate {
            unix_secs: 1_736_157_600,
            zone_minutes: 0,
        },
    })
    .unwrap();
}

fn append(c: &mut Criterion) {
    let t = TempSlot::new("append");
    let counter = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("store_append");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    g.bench_function("durable_4k_sequential", |b| {
        b.iter(|| append_one(&t.slot, counter.fetch_add(1, Ordering::Relaxed)))
    });
    // 16 writers at once, as 16 LMTP connections: they share journal fsyncs.
    const WRITERS: u64 = 16;
    g.throughput(Throughput::Elements(WRITERS));
    g.bench_function("durable_4k_16_concurrent", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|s| {
                    for _ in 0..WRITERS {
                        let (slot, counter) = (&t.slot, &counter);
                        s.spawn(move || append_one(slot, counter.fetch_add(1, Ordering::Relaxed)));
                    }
                });
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn digest(c: &mut Criterion) {
    let rec = |system: u8, keywords: &[&str]| MessageRecord {
        uid: Uid(12_345),
        modseq: ModSeq(99_999),
        flags: Flags::new(system, keywords.iter().map(|k| k.to_string())),
        internaldate: InternalDate {
            unix_secs: 1_736_157_600,
            zone_minutes: 60,
        },
        size: 4_096,
        blob: BlobHash::of(b"bench"),
    };
    let old = rec(0, &[]);
    let new = rec(SystemFlags::SEEN, &["$Important", "Work"]);
    let mut g = c.benchmark_group("mailbox_digest");
    g.bench_function("record_digest", |b| b.iter(|| black_box(&new).digest()));
    // What the writer does for a flag change: remove the old record's term, add the new.
    g.bench_function("flag_change_update", |b| {
        let mut header_digest = 0u32;
        b.iter(|| {
            header_digest ^= black_box(&old).digest() ^ black_box(&new).digest();
            header_digest
        })
    });
    g.finish();
}

criterion_group!(benches, append, digest);
criterion_main!(benches);
