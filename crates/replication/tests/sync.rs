//! Replication between two hosts in one process, over real TLS on loopback addresses:
//! catch-up, bootstrap, sync durability, corruption that never travels, repair from a
//! replica, split-brain reconcile, and fencing.

use cluster::{ClusterConfig, Role};
use replication::status::SlotStatus;
use replication::{HostSetup, Replication, TlsFiles};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::*;

const USER: &str = "alice@example.com";

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tandem-repl-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port on 127.0.0.1 (the kernel routes all of 127/8 to loopback, and a port free on
/// one address is as good as free on another for a test).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Cluster {
    root: Dir,
    ports: BTreeMap<String, u16>,
}

impl Cluster {
    fn new(hosts: &[&str]) -> Cluster {
        let root = Dir::new("cluster");
        let pki = root.0.join("pki");
        replication::pki::init_ca(&pki).unwrap();
        let mut ports = BTreeMap::new();
        for h in hosts {
            replication::pki::issue(&pki, h, &pki).unwrap();
            ports.insert(h.to_string(), free_port());
        }
        Cluster { root, ports }
    }

    fn config(&self, slot_toml: &str) -> ClusterConfig {
        let mut t = String::new();
        for (i, (h, port)) in self.ports.iter().enumerate() {
            t.push_str(&format!(
                "[hosts.{h}]\ndatacentre = \"dc{i}\"\nreplication = \"127.0.0.{}:{port}\"\n",
                i + 2
            ));
        }
        t.push_str(slot_toml);
        ClusterConfig::parse(&t).unwrap()
    }

    fn events(&self, host: &str) -> Arc<EventLog> {
        Arc::new(EventLog::new(
            &self.root.0.join(format!("{host}-events.jsonl")),
            Arc::new(SystemClock),
        ))
    }

    fn alerts(&self, host: &str, kind: &str) -> Vec<serde_json::Value> {
        let p = self.root.0.join(format!("{host}-events.jsonl"));
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    fn slot_dir(&self, host: &str) -> PathBuf {
        self.root.0.join(host).join("s1")
    }

    /// Opens (creating if new) `host`'s copy of s1.
    fn slot(&self, host: &str) -> Slot {
        let dir = self.slot_dir(host);
        let events = self.events(host);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = if dir.join("SLOT").exists() {
                Slot::open(&dir, events.clone(), clock.clone())
            } else {
                Slot::create(&dir, "s1", host, events.clone(), clock.clone())
            };
            match r {
                Ok(s) => return s,
                // The previous handle's writer thread is still letting go of the lock.
                Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("open {host}: {e}"),
            }
        }
    }

    fn start(&self, host: &str, cfg: &ClusterConfig, slot: &Slot) -> Replication {
        let role = cfg.role(host, "s1").unwrap();
        if role == Role::Master {
            replication::promote(slot, &cfg.slots["s1"]).unwrap();
        }
        let pki = self.root.0.join("pki");
        let (cert, key) = replication::pki::host_paths(&pki, host);
        Replication::start(HostSetup {
            host: host.into(),
            cluster: cfg.clone(),
            tls: TlsFiles {
                ca: pki.join("ca.pem"),
                cert,
                key,
            },
            slots: vec![(slot.clone(), role)],
            events: self.events(host),
            io_timeout: Duration::from_secs(5),
        })
        .unwrap()
    }
}

fn deliver(slot: &Slot, mailbox: &str, body: &str) -> Result<Uid, StoreError> {
    slot.execute(Op::EnsureUser { user: USER.into() })?;
    let blob = slot.put_blob(body.as_bytes())?;
    match slot.execute(Op::Append {
        user: USER.into(),
        mailbox: mailbox.into(),
        blob,
        flags: Flags::default(),
        internaldate: InternalDate {
            unix_secs: 1_700_000_000,
            zone_minutes: 0,
        },
    })? {
        OpResult::Appended { uid, .. } => Ok(uid),
        other => panic!("{other:?}"),
    }
}

fn message(i: usize) -> String {
    format!("From: s{i}@example.net\r\nSubject: message {i}\r\n\r\nbody of message {i}\r\n")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn master_status(r: &Replication) -> SlotStatus {
    r.status().into_iter().find(|s| s.slot == "s1").unwrap()
}

fn dump(c: &Cluster, r: &Replication) -> String {
    let mut out = format!("{:#?}\n", r.status());
    for h in ["a", "b"] {
        let p = c.root.0.join(format!("{h}-events.jsonl"));
        out.push_str(&format!(
            "events of {h}:\n{}\n",
            std::fs::read_to_string(p).unwrap_or_default()
        ));
    }
    out
}

fn caught_up(r: &Replication) -> bool {
    let s = master_status(r);
    s.replicas
        .iter()
        .all(|x| x.connected && x.lag_changes == 0 && x.progress.is_none())
        && s.replicas.iter().all(|x| x.last_sync_unix.is_some())
}

/// Mailboxes by name → (uidvalidity, uid → (blob, flags)), and digests.
type Snapshot = BTreeMap<String, (u32, u32, BTreeMap<u32, (BlobHash, Flags)>)>;

fn snapshot(slot: &Slot) -> Snapshot {
    let v = slot.view();
    let mut out = BTreeMap::new();
    for h in v.mailboxes(USER).unwrap() {
        let recs = v
            .messages(&h)
            .unwrap()
            .into_iter()
            .map(|e| {
                let r = e.unwrap();
                (r.uid.0, (r.blob, r.flags))
            })
            .collect();
        out.insert(h.name.clone(), (h.uidvalidity.0, h.digest, recs));
    }
    out
}

const PAIR: &str = "[slots.s1]\nmaster = \"a\"\nreplicas = [\"b\"]\n";

#[test]
fn replica_bootstraps_follows_every_change_and_a_full_compare_finds_no_difference() {
    let c = Cluster::new(&["a", "b"]);
    let cfg = c.config(PAIR);
    let (sa, sb) = (c.slot("a"), c.slot("b"));
    for i in 0..30 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
    }
    let ra = c.start("a", &cfg, &sa);
    let rb = c.start("b", &cfg, &sb);
    let end = Instant::now() + Duration::from_secs(20);
    while !caught_up(&ra) {
        assert!(Instant::now() < end, "{}", dump(&c, &ra));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(snapshot(&sa), snapshot(&sb));

    let inbox = sa.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    sa.execute(Op::Store {
        mailbox: inbox.id,
        uids: (1..=10).map(Uid).collect(),
        mode: FlagMode::Add,
        flags: Flags::new(
            SystemFlags::DELETED | SystemFlags::SEEN,
            ["$Junk".to_string()],
        ),
        unchanged_since: None,
    })
    .unwrap();
    sa.execute(Op::Expunge {
        mailbox: inbox.id,
        uids: Some((1..=5).map(Uid).collect()),
    })
    .unwrap();
    sa.execute(Op::CreateMailbox {
        user: USER.into(),
        name: "Lists".into(),
        special_use: vec![],
    })
    .unwrap();
    sa.execute(Op::Copy {
        from: inbox.id,
        uids: (6..=20).map(Uid).collect(),
        to: "Lists".into(),
        remove_source: true,
    })
    .unwrap();
    sa.execute(Op::DeleteMailbox {
        user: USER.into(),
        name: "Junk".into(),
    })
    .unwrap();
    sa.execute(Op::SetQuota {
        user: USER.into(),
        quota_bytes: 1 << 30,
    })
    .unwrap();
    wait_until("changes", Duration::from_secs(20), || caught_up(&ra));
    assert_eq!(snapshot(&sa), snapshot(&sb));
    assert_eq!(sa.view().user(USER).unwrap(), sb.view().user(USER).unwrap());
    let reports = ra.verify("s1").unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].clean(), "{:?}", reports[0]);
    assert_eq!(reports[0].messages, 25);
    let st = master_status(&ra);
    assert!(st.replicas[0].latency_p50_ms.is_some());
    drop((ra, rb));
}

#[test]
fn a_stopped_replica_catches_up_and_a_new_one_bootstraps() {
    let c = Cluster::new(&["a", "b"]);
    let cfg = c.config(PAIR);
    let (sa, sb) = (c.slot("a"), c.slot("b"));
    let ra = c.start("a", &cfg, &sa);
    let rb = c.start("b", &cfg, &sb);
    for i in 0..10 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
    }
    wait_until("first sync", Duration::from_secs(20), || caught_up(&ra));
    drop(rb);
    for i in 10..40 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
    }
    wait_until("lag visible", Duration::from_secs(10), || {
        master_status(&ra).replicas[0].lag_changes > 0
    });
    let rb = c.start("b", &cfg, &sb);
    wait_until("catch-up", Duration::from_secs(20), || caught_up(&ra));
    assert_eq!(snapshot(&sa), snapshot(&sb));
    assert!(ra.verify("s1").unwrap()[0].clean());
    drop((ra, rb, sb));
    // A brand-new, empty replica.
    std::fs::remove_dir_all(c.slot_dir("b")).unwrap();
    let sb = c.slot("b");
    let ra = c.start("a", &cfg, &sa);
    let _rb = c.start("b", &cfg, &sb);
    wait_until("bootstrap", Duration::from_secs(20), || caught_up(&ra));
    assert_eq!(snapshot(&sa), snapshot(&sb));
    assert!(ra.verify("s1").unwrap()[0].clean());
}

#[test]
fn sync_durability_acks_only_what_the_replica_holds_and_degrades_or_refuses_without_it() {
    let c = Cluster::new(&["a", "b"]);
    let cfg = c.config(
        "[slots.s1]\nmaster = \"a\"\nreplicas = [\"b\"]\ndurability = \"replica\"\nreplica_timeout_ms = 300\n",
    );
    let (sa, sb) = (c.slot("a"), c.slot("b"));
    let ra = c.start("a", &cfg, &sa);
    let rb = c.start("b", &cfg, &sb);
    wait_until("connected", Duration::from_secs(20), || caught_up(&ra));
    for i in 0..20 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
        // Acknowledged means on the replica already (fsynced there).
        let h = sb.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
        assert_eq!(
            h.exists as usize,
            i + 1,
            "ack {i} came before the replica had it"
        );
    }
    assert!(!master_status(&ra).degraded);
    // Replica gone: after the timeout the slot acks locally, loudly.
    drop(rb);
    let t = Instant::now();
    deliver(&sa, "INBOX", &message(100)).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "did not wait for the replica"
    );
    assert!(master_status(&ra).degraded);
    assert_eq!(c.alerts("a", "durability_degraded").len(), 1);
    // Back: it catches up and acks wait for it again.
    let rb = c.start("b", &cfg, &sb);
    wait_until("restored", Duration::from_secs(20), || {
        !master_status(&ra).degraded
    });
    deliver(&sa, "INBOX", &message(101)).unwrap();
    let h = sb.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(h.exists, 22);
    drop((ra, rb));

    // Strict: no replica, no OK.
    let cfg = c.config(
        "[slots.s1]\nmaster = \"a\"\nreplicas = [\"b\"]\ndurability = \"replica\"\nreplica_timeout_ms = 300\non_replica_timeout = \"strict\"\n",
    );
    let ra = c.start("a", &cfg, &sa);
    let r = deliver(&sa, "INBOX", &message(200));
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    let r = deliver(&sa, "INBOX", &message(201));
    assert!(
        matches!(r, Err(StoreError::Unavailable { .. })),
        "refused at once while degraded: {r:?}"
    );
    let _rb = c.start("b", &cfg, &sb);
    wait_until("strict restored", Duration::from_secs(20), || {
        !master_status(&ra).degraded
    });
    deliver(&sa, "INBOX", &message(202)).unwrap();
}

#[test]
fn corruption_on_the_master_never_reaches_the_replica_and_audit_repairs_from_it() {
    let c = Cluster::new(&["a", "b"]);
    let cfg = c.config(PAIR);
    let (sa, sb) = (c.slot("a"), c.slot("b"));
    for i in 0..5 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
    }
    let ra = c.start("a", &cfg, &sa);
    let rb = c.start("b", &cfg, &sb);
    wait_until("sync", Duration::from_secs(20), || caught_up(&ra));
    let good = snapshot(&sb);
    let inbox = sa.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    let rec = sa.view().message(&inbox, Uid(2)).unwrap().unwrap();
    let original = sa.read_blob(&rec.blob, &ReadContext::default()).unwrap();

    // A flipped bit in a record and a flipped byte in a blob, on the master.
    sa.debug_corrupt_record(inbox.id, Uid(3)).unwrap();
    let path = sa.blob_path(&rec.blob);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    // Changes elsewhere in the mailbox, and a full compare, go on around the damage.
    deliver(&sa, "INBOX", &message(50)).unwrap();
    let fulls = |r: &Replication| master_status(r).replicas[0].full_syncs;
    let before = fulls(&ra);
    ra.request_full_sync("s1");
    wait_until("sync", Duration::from_secs(20), || {
        caught_up(&ra) && fulls(&ra) > before
    });
    let now = snapshot(&sb);
    assert_eq!(
        now["INBOX"].2[&3], good["INBOX"].2[&3],
        "the replica keeps its good record"
    );
    assert!(now["INBOX"].2.contains_key(&6), "the new message arrived");
    assert_eq!(
        sb.read_blob(&rec.blob, &ReadContext::default()).unwrap(),
        original,
        "the replica keeps its good blob"
    );

    // A brand-new replica never receives the damaged blob.
    drop(rb);
    drop(sb);
    std::fs::remove_dir_all(c.slot_dir("b")).unwrap();
    let sb = c.slot("b");
    let before = fulls(&ra);
    let _rb = c.start("b", &cfg, &sb);
    wait_until("bootstrap around damage", Duration::from_secs(20), || {
        fulls(&ra) > before && caught_up(&ra)
    });
    let inbox_b = sb.view().mailbox_by_name(USER, "INBOX").unwrap();
    assert!(inbox_b.is_some(), "the bootstrap went on around the damage");
    assert!(
        !sb.has_blob(&rec.blob),
        "a blob failing its hash on the master was sent"
    );
    assert!(
        !c.alerts("a", "replication_withheld").is_empty(),
        "{}",
        dump(&c, &ra)
    );
    drop(_rb);
    drop(sb);

    // Audit repair: the replica-backed source hands back the verified good bytes.
    std::fs::remove_dir_all(c.slot_dir("b")).unwrap();
    let sb = c.slot("b");
    for i in 0..5 {
        // Same bytes as the master's originals (the blob names match).
        let blob = sb.put_blob(message(i).as_bytes()).unwrap();
        sb.sync_blob_dirs(&[blob]).unwrap();
    }
    let _rb = c.start("b", &cfg, &sb);
    let src = ra.repair_source("s1").unwrap();
    assert_eq!(src.fetch_blob(&rec.blob).unwrap().unwrap(), original);
    assert_eq!(
        src.fetch_blob(&BlobHash::of(b"nobody has this")).unwrap(),
        None
    );
}

#[test]
fn split_brain_keeps_every_message_once_with_fresh_uids_and_the_same_uidvalidity() {
    let c = Cluster::new(&["a", "b"]);
    let cfg1 = c.config(PAIR);
    let (sa, sb) = (c.slot("a"), c.slot("b"));
    for i in 0..5 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
    }
    let ra = c.start("a", &cfg1, &sa);
    let rb = c.start("b", &cfg1, &sb);
    wait_until("sync", Duration::from_secs(20), || caught_up(&ra));
    let uidvalidity = sa
        .view()
        .mailbox_by_name(USER, "INBOX")
        .unwrap()
        .unwrap()
        .uidvalidity;
    // Partition: b stops hearing from a; a keeps accepting mail.
    drop(rb);
    let mut only_a = BTreeSet::new();
    for i in 100..104 {
        deliver(&sa, "INBOX", &message(i)).unwrap();
        only_a.insert(BlobHash::of(message(i).as_bytes()));
    }
    sa.execute(Op::CreateMailbox {
        user: USER.into(),
        name: "Made on a".into(),
        special_use: vec![],
    })
    .unwrap();
    deliver(&sa, "Made on a", &message(150)).unwrap();
    only_a.insert(BlobHash::of(message(150).as_bytes()));
    drop(ra);
    // b is promoted (epoch 2) and accepts different mail at the same UIDs.
    let cfg2 = c.config("[slots.s1]\nmaster = \"b\"\nreplicas = [\"a\"]\nepoch = 2\n");
    let rb = c.start("b", &cfg2, &sb);
    let mut only_b = BTreeSet::new();
    for i in 200..203 {
        deliver(&sb, "INBOX", &message(i)).unwrap();
        only_b.insert(BlobHash::of(message(i).as_bytes()));
    }
    // A stale a (old config, epoch 1) cannot push into b: it is fenced.
    let stale = c.start("a", &cfg1, &sa);
    wait_until("fenced", Duration::from_secs(20), || {
        master_status(&stale).fenced.is_some()
    });
    assert!(matches!(
        deliver(&sa, "INBOX", &message(300)),
        Err(StoreError::Unavailable { .. })
    ));
    drop(stale);
    // a rejoins as b's replica: reconcile.
    let ra = c.start("a", &cfg2, &sa);
    wait_until("reconciled", Duration::from_secs(30), || caught_up(&rb));
    assert!(!c.alerts("b", "split_brain_reconcile").is_empty());
    assert_eq!(snapshot(&sa), snapshot(&sb), "a converged to b");
    let v = sb.view();
    let inbox = v.mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(inbox.uidvalidity, uidvalidity, "UIDVALIDITY unchanged");
    let mut all: Vec<(Uid, BlobHash)> = Vec::new();
    for h in v.mailboxes(USER).unwrap() {
        for e in v.messages(&h).unwrap() {
            let r = e.unwrap();
            all.push((r.uid, r.blob));
        }
    }
    let blobs: Vec<BlobHash> = all.iter().map(|(_, b)| *b).collect();
    let distinct: BTreeSet<BlobHash> = blobs.iter().copied().collect();
    assert_eq!(blobs.len(), distinct.len(), "a message exists twice");
    for b in only_a.iter().chain(&only_b) {
        assert!(distinct.contains(b), "a message of one side was lost");
    }
    for i in 0..5 {
        assert!(distinct.contains(&BlobHash::of(message(i).as_bytes())));
    }
    assert_eq!(distinct.len(), 5 + only_a.len() + only_b.len());
    let inbox_uids: Vec<Uid> = v
        .messages(&inbox)
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap().uid)
        .collect();
    assert!(inbox_uids.windows(2).all(|w| w[0] < w[1]));
    assert!(v.mailbox_by_name(USER, "Made on a").unwrap().is_some());
    assert!(rb.verify("s1").unwrap()[0].clean());
    drop(ra);
}
