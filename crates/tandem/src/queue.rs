//! The outbound queue on disk: messages accepted for recipients we could not (yet) deliver
//! to — remote recipients of submitted mail, local deliveries that failed temporarily, and
//! bounces. Format documented in `docs/formats/queue.md`; the summary:
//!
//! ```text
//! DIR/queue/msg/<id>.eml    the message bytes exactly as they will be sent; immutable
//! DIR/queue/msg/<id>.meta   TANDEM-QUEUE 1 crc32c=<8 hex>\n<JSON record>\n
//! DIR/queue/tmp/            staging for both (emptied at start)
//! DIR/queue/corrupt/        records that failed their checks (kept for the operator)
//! ```
//!
//! The record names the body's BLAKE3 hash and length; the CRC32C covers the JSON bytes. Both
//! are computed before writing and checked after every read (invariant 2).
//!
//! Commit protocol (enqueue): write the body to `tmp/`, fsync, rename into `msg/`; write the
//! record to `tmp/`, fsync, rename into `msg/`; fsync `msg/`. Only then is the message
//! acknowledged (invariant 1). A record update (attempt results) is the same tmp → fsync →
//! rename → fsync-dir dance for the record alone. Removal deletes the record first, then the
//! body, then fsyncs the directory.
//!
//! Recovery at start: `tmp/` is emptied (nothing there was acknowledged); a body without a
//! record is deleted (the crash came before the acknowledgement); a record whose CRC, JSON or
//! body check fails is moved to `corrupt/` and an alert raised — never sent, never silently
//! dropped; a record without its body is treated the same way.
//!
//! Delivery semantics: at least once. After a remote server answers 250 to the final dot we
//! rewrite the record before doing anything else, but a crash in the milliseconds between
//! the 250 and that fsync means the message is sent again after restart. Exactly-once would
//! need the receiver's help (there is no SMTP mechanism for it); duplicates are rare and carry
//! the same Message-ID, which receivers and clients deduplicate. Losing mail is not an option,
//! so that is the side we err on.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{Clock, Event, EventLog};

const MAGIC: &str = "TANDEM-QUEUE 1 crc32c=";
/// Largest record we read; a record lists recipients and replies, never the message.
const META_BYTES_MAX: u64 = 16 << 20;
/// Most recipients in one queue entry (the SMTP transaction limit bounds it well below).
pub const RECIPIENTS_MAX: usize = 10_000;
/// Longest reply text kept per recipient.
const REPLY_BYTES_MAX: usize = 1000;

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptState {
    Pending,
    Delivered,
    /// Permanently failed; the sender has been sent a bounce (or had none to send).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub state: RcptState,
    /// The last reply about this recipient (`250 ...`, `451 ...`, or our own reason).
    #[serde(default)]
    pub last_reply: Option<String>,
    #[serde(default)]
    pub remote_mta: Option<String>,
}

/// One queued message: the metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// Wall-clock seconds at acceptance (for max age and the bounce's Arrival-Date).
    pub created_unix: i64,
    /// Envelope sender; empty for a bounce (null sender: never bounced itself).
    pub mail_from: String,
    pub body_blake3: String,
    pub body_bytes: u64,
    pub recipients: Vec<Recipient>,
    /// Delivery attempts so far (drives the retry interval).
    pub attempts: u32,
    /// Wall-clock seconds before which no attempt is made.
    pub next_attempt_unix: i64,
}

impl Entry {
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
    }

    pub fn is_done(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// Cut a reply to the stored bound, on a char boundary.
pub fn bounded_reply(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > REPLY_BYTES_MAX {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

pub struct Queue {
    root: PathBuf,
    clock: Arc<dyn Clock>,
    events: Arc<EventLog>,
}

/// A record that failed its checks at start-up.
#[derive(Debug)]
pub struct Damaged {
    pub id: String,
    pub why: String,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", dir.display()))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Queue ids: 20 hex digits, unique on this host (time, process, counter through BLAKE3),
/// so ids never collide after a restart even if the clock stepped back.
fn new_id(now_unix: i64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&now_unix.to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..20].to_string()
}

pub fn valid_id(id: &str) -> bool {
    id.len() == 20
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub fn encode_meta(e: &Entry) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(e).context("cannot encode a queue record")?;
    let mut out = format!("{MAGIC}{:08x}\n", crc32c::crc32c(&body)).into_bytes();
    out.extend_from_slice(&body);
    out.push(b'\n');
    Ok(out)
}

pub fn decode_meta(data: &[u8]) -> Result<Entry> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| anyhow!("missing header line"))?;
    let head = std::str::from_utf8(&data[..nl]).map_err(|_| anyhow!("header is not UTF-8"))?;
    let crc = head
        .strip_prefix(MAGIC)
        .ok_or_else(|| anyhow!("bad magic (not a Tandem queue record, or a newer format)"))?;
    let stored = u32::from_str_radix(crc, 16).map_err(|_| anyhow!("bad CRC field"))?;
    let body = data[nl + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&data[nl + 1..]);
    if crc32c::crc32c(body) != stored {
        bail!("CRC32C mismatch: the record is damaged");
    }
    let e: Entry = serde_json::from_slice(body).context("record JSON")?;
    if !valid_id(&e.id) {
        bail!("record has an invalid id {:?}", e.id);
    }
    Ok(e)
}

impl Queue {
    /// Opens (creating) `DIR/queue`, runs recovery, and returns the live entries plus the
    /// records that failed their checks (moved to `corrupt/`, alerts raised).
    pub fn open(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        events: Arc<EventLog>,
    ) -> Result<(Queue, Vec<Entry>, Vec<Damaged>)> {
        let q = Queue {
            root: data_dir.join("queue"),
            clock,
            events,
        };
        for d in ["msg", "tmp", "corrupt"] {
            let p = q.root.join(d);
            fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        // Nothing in tmp/ was ever acknowledged.
        for e in fs::read_dir(q.root.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let (entries, damaged) = q.scan(true)?;
        Ok((q, entries, damaged))
    }

    /// Opens without recovery or creation (for read-only CLI use while no server runs).
    pub fn at(data_dir: &Path, clock: Arc<dyn Clock>, events: Arc<EventLog>) -> Queue {
        Queue {
            root: data_dir.join("queue"),
            clock,
            events,
        }
    }

    fn msg_dir(&self) -> PathBuf {
        self.root.join("msg")
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.msg_dir().join(format!("{id}.meta"))
    }

    fn body_path(&self, id: &str) -> PathBuf {
        self.msg_dir().join(format!("{id}.eml"))
    }

    /// Reads every record. With `repair`, orphan bodies are deleted and damaged records
    /// moved aside with an alert.
    fn scan(&self, repair: bool) -> Result<(Vec<Entry>, Vec<Damaged>)> {
        let mut entries = Vec::new();
        let mut damaged = Vec::new();
        let dir = self.msg_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((entries, damaged)),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut metas = Vec::new();
        let mut bodies = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".meta") {
                metas.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".eml") {
                bodies.push(id.to_string());
            }
        }
        metas.sort();
        for id in &metas {
            match self.load(id) {
                Ok(e) => match self.check_body(&e) {
                    Ok(()) => entries.push(e),
                    Err(why) => damaged.push(Damaged {
                        id: id.clone(),
                        why: why.to_string(),
                    }),
                },
                Err(why) => damaged.push(Damaged {
                    id: id.clone(),
                    why: format!("{why:#}"),
                }),
            }
        }
        if repair {
            for id in bodies.iter().filter(|b| !metas.contains(b)) {
                // Body written, record not: the client never got its 250.
                let _ = fs::remove_file(self.body_path(id));
            }
            for d in &damaged {
                self.quarantine(&d.id, &d.why);
            }
            fsync_dir(&dir)?;
        }
        entries.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        Ok((entries, damaged))
    }

    /// Moves a damaged record and its body to `corrupt/` and raises an alert.
    fn quarantine(&self, id: &str, why: &str) {
        let dest = self.root.join("corrupt");
        for p in [self.meta_path(id), self.body_path(id)] {
            if let Some(name) = p.file_name() {
                let _ = fs::rename(&p, dest.join(name));
            }
        }
        self.events.raise(Event::alert(
            "queue_record_damaged",
            format!(
                "queue entry {id} failed its check and is not sent: {why}; kept in queue/corrupt/"
            ),
        ));
    }

    /// The record's body exists and has the recorded length (the hash is checked on send).
    fn check_body(&self, e: &Entry) -> Result<()> {
        let p = self.body_path(&e.id);
        let len = fs::metadata(&p)
            .with_context(|| format!("the message file {} is missing", p.display()))?
            .len();
        if len != e.body_bytes {
            bail!(
                "the message file is {len} bytes, the record says {}",
                e.body_bytes
            );
        }
        Ok(())
    }

    /// Makes `body` durable for `recipients`. Returns only after everything is on disk.
    pub fn enqueue(&self, mail_from: &str, recipients: &[String], body: &[u8]) -> Result<Entry> {
        if recipients.is_empty() || recipients.len() > RECIPIENTS_MAX {
            bail!("a queue entry needs 1 to {RECIPIENTS_MAX} recipients");
        }
        let now = self.clock.now_unix_secs();
        let id = new_id(now);
        let entry = Entry {
            id: id.clone(),
            created_unix: now,
            mail_from: mail_from.to_string(),
            body_blake3: blake3::hash(body).to_hex().to_string(),
            body_bytes: body.len() as u64,
            recipients: recipients
                .iter()
                .map(|a| Recipient {
                    address: a.clone(),
                    state: RcptState::Pending,
                    last_reply: None,
                    remote_mta: None,
                })
                .collect(),
            attempts: 0,
            next_attempt_unix: now,
        };
        let tmp = self.root.join("tmp");
        let tmp_body = tmp.join(format!("{id}.eml"));
        write_synced(&tmp_body, body)?;
        fs::rename(&tmp_body, self.body_path(&id))
            .context("cannot move the message into the queue")?;
        let tmp_meta = tmp.join(format!("{id}.meta"));
        write_synced(&tmp_meta, &encode_meta(&entry)?)?;
        fs::rename(&tmp_meta, self.meta_path(&id))
            .context("cannot move the record into the queue")?;
        fsync_dir(&self.msg_dir())?;
        Ok(entry)
    }

    /// Atomically replaces the record of `e` (which must still be queued).
    pub fn update(&self, e: &Entry) -> Result<()> {
        if !self.meta_path(&e.id).exists() {
            bail!("queue entry {} is gone (dropped?)", e.id);
        }
        let tmp = self.root.join("tmp").join(format!("{}.meta", e.id));
        write_synced(&tmp, &encode_meta(e)?)?;
        fs::rename(&tmp, self.meta_path(&e.id)).context("cannot replace a queue record")?;
        fsync_dir(&self.msg_dir())
    }

    /// Removes an entry: record first (so a crash leaves an orphan body, which recovery
    /// deletes, never a record without its body).
    pub fn remove(&self, id: &str) -> Result<bool> {
        if !valid_id(id) {
            bail!("{id:?} is not a queue id (20 hex digits)");
        }
        let existed = match fs::remove_file(self.meta_path(id)) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).context("cannot remove a queue record"),
        };
        let _ = fs::remove_file(self.body_path(id));
        fsync_dir(&self.msg_dir())?;
        Ok(existed)
    }

    /// One record, checked.
    pub fn load(&self, id: &str) -> Result<Entry> {
        if !valid_id(id) {
            bail!("{id:?} is not a queue id (20 hex digits)");
        }
        let p = self.meta_path(id);
        let len = fs::metadata(&p)
            .with_context(|| format!("no queue entry {id}"))?
            .len();
        if len > META_BYTES_MAX {
            bail!("queue record {id} is larger than {META_BYTES_MAX} bytes");
        }
        let data = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let e = decode_meta(&data).with_context(|| format!("queue record {id}"))?;
        if e.id != id {
            bail!("queue record {id} names itself {}", e.id);
        }
        Ok(e)
    }

    /// The message bytes, checked against the recorded BLAKE3 hash. A mismatch raises an
    /// alert and moves the entry to `corrupt/`: damaged mail is never sent.
    pub fn read_body(&self, e: &Entry) -> Result<Vec<u8>> {
        let p = self.body_path(&e.id);
        let body = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let actual = blake3::hash(&body).to_hex().to_string();
        if actual != e.body_blake3 {
            let why = format!(
                "message content hashes to {actual}, the record says {}",
                e.body_blake3
            );
            self.quarantine(&e.id, &why);
            bail!("queue entry {}: {why}", e.id);
        }
        Ok(body)
    }

    /// Every live record (no repair), oldest first.
    pub fn list(&self) -> Result<(Vec<Entry>, Vec<Damaged>)> {
        self.scan(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::ManualClock;

    fn tempdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tandem-queue-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn open(dir: &Path) -> (Queue, Vec<Entry>, Vec<Damaged>) {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000));
        let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
        Queue::open(dir, clock, events).unwrap()
    }

    #[test]
    fn enqueue_survives_reopen_and_updates_are_atomic() {
        let d = tempdir();
        let (q, live, _) = open(&d);
        assert!(live.is_empty());
        let mut e = q
            .enqueue(
                "a@example.com",
                &["b@remote.example".into(), "c@remote.example".into()],
                b"hello\r\n",
            )
            .unwrap();
        e.recipients[0].state = RcptState::Delivered;
        e.attempts = 1;
        q.update(&e).unwrap();
        drop(q);
        let (q, live, damaged) = open(&d);
        assert!(damaged.is_empty());
        assert_eq!(live, vec![e.clone()]);
        assert_eq!(q.read_body(&e).unwrap(), b"hello\r\n");
        assert!(q.remove(&e.id).unwrap());
        assert!(!q.remove(&e.id).unwrap());
        assert!(
            q.update(&e).is_err(),
            "an update never resurrects a removed entry"
        );
        let (_, live, _) = open(&d);
        assert!(live.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn recovery_deletes_unacknowledged_files_and_quarantines_damage() {
        let d = tempdir();
        let (q, _, _) = open(&d);
        let good = q.enqueue("a@x.org", &["b@y.org".into()], b"good").unwrap();
        let flipped = q
            .enqueue("a@x.org", &["b@y.org".into()], b"flipme")
            .unwrap();
        let short = q
            .enqueue("a@x.org", &["b@y.org".into()], b"short body")
            .unwrap();
        // A crash between the body rename and the record rename leaves an orphan body.
        fs::write(d.join("queue/msg/0123456789abcdef0123.eml"), b"orphan").unwrap();
        fs::write(d.join("queue/tmp/half.meta"), b"half").unwrap();
        // A flipped bit in a record.
        let p = d.join(format!("queue/msg/{}.meta", flipped.id));
        let mut bytes = fs::read(&p).unwrap();
        let i = bytes.len() - 5;
        bytes[i] ^= 0x01;
        fs::write(&p, bytes).unwrap();
        // A truncated body.
        fs::write(d.join(format!("queue/msg/{}.eml", short.id)), b"short").unwrap();
        drop(q);
        let (q, live, damaged) = open(&d);
        assert_eq!(
            live.iter().map(|e| &e.id).collect::<Vec<_>>(),
            vec![&good.id]
        );
        let mut bad: Vec<_> = damaged.iter().map(|x| x.id.clone()).collect();
        bad.sort();
        let mut want = vec![flipped.id.clone(), short.id.clone()];
        want.sort();
        assert_eq!(bad, want);
        assert!(!d.join("queue/msg/0123456789abcdef0123.eml").exists());
        assert!(!d.join("queue/tmp/half.meta").exists());
        assert!(
            d.join(format!("queue/corrupt/{}.meta", flipped.id))
                .exists()
        );
        let events = fs::read_to_string(d.join("events.jsonl")).unwrap();
        assert_eq!(events.matches("queue_record_damaged").count(), 2);
        // A body changed in place is caught when it is read for sending.
        fs::write(d.join(format!("queue/msg/{}.eml", good.id)), b"evil").unwrap();
        assert!(q.read_body(&good).is_err());
        assert!(d.join(format!("queue/corrupt/{}.eml", good.id)).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn record_codec_round_trips_and_rejects_damage() {
        let e = Entry {
            id: "0123456789abcdef0123".into(),
            created_unix: 5,
            mail_from: String::new(),
            body_blake3: "00".into(),
            body_bytes: 0,
            recipients: vec![],
            attempts: 0,
            next_attempt_unix: 0,
        };
        let bytes = encode_meta(&e).unwrap();
        assert_eq!(decode_meta(&bytes).unwrap(), e);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            if let Ok(x) = decode_meta(&b) {
                // Only a flip inside the hex CRC digits' case can decode the same.
                assert_eq!(x, e, "flip at {i} decoded to something else");
            }
        }
        assert!(valid_id("0123456789abcdef0123"));
        assert!(!valid_id("../../etc/passwd0000"));
        assert!(!valid_id("0123456789ABCDEF0123"));
    }
}
