//! Crash test (DESIGN invariants 1 and 5): a writer process appending in a loop is
//! SIGKILLed at a random moment; every append it acknowledged must be there after
//! reopen, byte for byte, with no uid reused and no record failing its CRC.
//!
//! The test binary re-executes itself as the writer (`crash_writer_child`, a no-op unless
//! `CHILD_ENV` is set). The writer prints one `ACK` line per acknowledged append and
//! flushes it, so a line the parent reads was printed after `execute` returned.
//!
//! Limit: SIGKILL loses the process, not the page cache, so this pins atomicity and
//! "acknowledged only after commit", not fsync placement (a power cut would be needed).

mod common;

use common::{TempDir, open_retrying, read_events};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::*;

const CHILD_ENV: &str = "TANDEM_STORE_CRASH_CHILD";
const USER: &str = "alice@example.com";
const ROUNDS: u32 = 10;
/// Kill somewhere in the first this-many ms after spawn: early kills land in exec or
/// recovery, later ones in the middle of appends.
const KILL_WITHIN_MS: u64 = 450;
/// The child's own bounds, in case the parent dies without killing it.
const CHILD_APPENDS_MAX: u64 = 100_000;
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(30);
const CHILD_THREADS: usize = 2;

/// Message `n` of round `round`: unique bytes, sizes from a few hundred bytes to ~48 KiB
/// so kills also land inside blob writes.
fn body(round: u32, n: u64) -> Vec<u8> {
    let mut b = format!("Subject: round {round} message {n}\r\n\r\n").into_bytes();
    let len = 200 + (n * 7919 % 48) as usize * 1024;
    b.extend((0..len).map(|i| b'a' + ((i as u64 + n + u64::from(round)) % 26) as u8));
    b
}

fn events_path(slot_dir: &Path) -> PathBuf {
    slot_dir.parent().unwrap().join("events.jsonl")
}

fn handles(slot_dir: &Path) -> (Arc<EventLog>, Arc<dyn Clock>) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_750_000_000));
    (
        Arc::new(EventLog::new(&events_path(slot_dir), clock.clone())),
        clock,
    )
}

/// The child: appends to INBOX from a few threads until killed.
#[test]
fn crash_writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // an ordinary run: nothing to do
    };
    let (dir, round) = spec.split_once('\n').unwrap();
    let round: u32 = round.parse().unwrap();
    let dir = PathBuf::from(dir);
    let (events, clock) = handles(&dir);
    let slot = open_retrying(&dir, events, clock).unwrap();
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CHILD_THREADS {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= CHILD_APPENDS_MAX || started.elapsed() > CHILD_LIFETIME_MAX {
                        return;
                    }
                    let bytes = body(round, n);
                    let blob = slot.put_blob(&bytes).unwrap();
                    let hash = blob.hash;
                    let r = slot
                        .execute(Op::Append {
                            user: USER.into(),
                            mailbox: "INBOX".into(),
                            blob,
                            flags: Flags::default(),
                            internaldate: InternalDate::default(),
                        })
                        .unwrap();
                    let OpResult::Appended { uid, .. } = r else {
                        panic!("append returned {r:?}");
                    };
                    // One write per line under the lock, flushed: the parent never sees
                    // an ack that was not returned.
                    let mut out = std::io::stdout().lock();
                    out.write_all(format!("ACK {round} {n} {} {hash}\n", uid.0).as_bytes())
                        .unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

struct Ack {
    round: u32,
    n: u64,
    hash: BlobHash,
}

fn parse_acks(stdout: &[u8], round: u32) -> Vec<(u32, Ack)> {
    let mut out = Vec::new();
    // Only complete lines: a line cut by the kill was never fully acknowledged.
    for line in stdout.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let Some(pos) = line.find("ACK ") else {
            continue;
        };
        let f: Vec<&str> = line[pos..].split_whitespace().collect();
        assert_eq!(f.len(), 5, "bad ack line {line:?}");
        assert_eq!(f[1].parse::<u32>().unwrap(), round);
        out.push((
            f[3].parse().unwrap(),
            Ack {
                round,
                n: f[2].parse().unwrap(),
                hash: BlobHash::from_hex(f[4]).unwrap(),
            },
        ));
    }
    out
}

/// A small xorshift: the kill moments need to vary, not to be cryptographic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let root = TempDir::new("crash");
    let dir = root.path().join("slot");
    let (events, clock) = handles(&dir);
    {
        let slot = Slot::create(&dir, "crash", "host-a", events.clone(), clock.clone()).unwrap();
        slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill-time seed {seed}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked: BTreeMap<u32, Ack> = BTreeMap::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}\n{round}", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stdout.read_to_end(&mut b);
            b
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(&mut stderr).read_to_string(&mut s);
            s
        });
        let delay_ms = rng.next() % KILL_WITHIN_MS;
        std::thread::sleep(Duration::from_millis(delay_ms));
        if let Some(status) = child.try_wait().unwrap() {
            let err = err_reader.join().unwrap();
            panic!("round {round}: the writer exited by itself ({status}) before the kill:\n{err}");
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let out = out_reader.join().unwrap();
        let _ = err_reader.join();

        let new = parse_acks(&out, round);
        println!(
            "round {round}: killed after {delay_ms} ms, {} acks",
            new.len()
        );
        for (uid, ack) in new {
            if let Some(old) = acked.get(&uid) {
                panic!(
                    "round {round}: uid {uid} acknowledged for message {} but already for round {} message {}",
                    ack.n, old.round, old.n
                );
            }
            acked.insert(uid, ack);
        }

        let slot = open_retrying(&dir, events.clone(), clock.clone())
            .unwrap_or_else(|e| panic!("round {round}: slot does not reopen after kill: {e}"));
        let view = slot.view();
        let h = view.mailbox_by_name(USER, "INBOX").unwrap().unwrap();
        let mut live = BTreeMap::new();
        for e in view.messages(&h).unwrap() {
            let r = e.unwrap_or_else(|c| panic!("round {round}: record fails its check: {c:?}"));
            assert!(
                r.uid < h.uidnext,
                "round {round}: uid {} not below uidnext {}",
                r.uid.0,
                h.uidnext.0
            );
            // Unacknowledged appends that made it are fine, but must be whole too.
            let bytes = slot
                .read_blob(&r.blob, &ReadContext::default())
                .unwrap_or_else(|e| panic!("round {round}: uid {}: {e}", r.uid.0));
            assert_eq!(bytes.len() as u32, r.size);
            live.insert(r.uid.0, r);
        }
        assert_eq!(h.exists as usize, live.len());
        assert_eq!(h.digest, live.values().fold(0, |a, r| a ^ r.digest()));
        for (uid, ack) in &acked {
            assert!(
                *uid < h.uidnext.0,
                "acked uid {uid} not below uidnext {}",
                h.uidnext.0
            );
            let r = live.get(uid).unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged uid {uid} (round {} message {}) is gone",
                    ack.round, ack.n
                )
            });
            assert_eq!(r.blob, ack.hash, "uid {uid} holds another message");
            let bytes = slot.read_blob(&r.blob, &ReadContext::default()).unwrap();
            assert!(bytes == body(ack.round, ack.n), "uid {uid}: bytes differ");
        }
        let alerts: Vec<_> = read_events(&events_path(&dir))
            .into_iter()
            .filter(|e| e["level"] == "alert")
            .collect();
        assert!(alerts.is_empty(), "round {round}: alerts {alerts:?}");
        drop(view);
        drop(slot);
    }
    println!(
        "{} acknowledged appends over {ROUNDS} kills in {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        !acked.is_empty(),
        "no round got far enough to acknowledge an append"
    );
}
