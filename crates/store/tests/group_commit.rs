//! Group commit: concurrent deliveries to one mailbox share journal fsyncs, and still
//! every acknowledged append has its own uid and is there after a reopen.

mod common;

use common::Env;
use std::collections::BTreeMap;
use std::time::Instant;
use store::*;

const USER: &str = "alice@example.com";
const THREADS: usize = 8;
const PER_THREAD: usize = 100;

fn body(thread: usize, n: usize) -> Vec<u8> {
    let mut b =
        format!("From: t{thread}@example.net\r\nSubject: {thread}/{n}\r\n\r\n").into_bytes();
    // About 1 KiB, different per message, so every append writes its own blob.
    b.extend((0..1024).map(|i| b'a' + ((i * 7 + thread * 31 + n) % 26) as u8));
    b
}

fn append(slot: &Slot, mailbox: &str, bytes: &[u8]) -> Uid {
    let blob = slot.put_blob(bytes).unwrap();
    match slot
        .execute(Op::Append {
            user: USER.into(),
            mailbox: mailbox.into(),
            blob,
            flags: Flags::default(),
            internaldate: InternalDate::default(),
        })
        .unwrap()
    {
        OpResult::Appended { uid, .. } => uid,
        other => panic!("append returned {other:?}"),
    }
}

#[test]
fn concurrent_appends_share_fsyncs_and_all_survive_reopen() {
    let env = Env::new("group");
    let slot = env.create("group");
    slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();

    // Baseline: one connection delivering alone (to another mailbox).
    let f0 = slot.debug_journal_fsyncs();
    let t0 = Instant::now();
    for n in 0..PER_THREAD {
        append(&slot, "Archive", &body(99, n));
    }
    let single_secs = t0.elapsed().as_secs_f64();
    let single_fsyncs = slot.debug_journal_fsyncs() - f0;

    // THREADS connections delivering at once to INBOX.
    let f1 = slot.debug_journal_fsyncs();
    let t1 = Instant::now();
    let acked: Vec<(Uid, usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let slot = slot.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|n| (append(&slot, "INBOX", &body(t, n)), t, n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let multi_secs = t1.elapsed().as_secs_f64();
    let multi_fsyncs = slot.debug_journal_fsyncs() - f1;
    let total = THREADS * PER_THREAD;

    println!(
        "1 thread: {PER_THREAD} appends in {single_secs:.3}s = {:.0}/s, {single_fsyncs} journal fsyncs",
        PER_THREAD as f64 / single_secs
    );
    println!(
        "{THREADS} threads: {total} appends in {multi_secs:.3}s = {:.0}/s, {multi_fsyncs} journal fsyncs ({:.1} appends per fsync)",
        total as f64 / multi_secs,
        total as f64 / multi_fsyncs.max(1) as f64
    );

    // Every acknowledged append got its own uid, and together they are 1..=800.
    let by_uid: BTreeMap<Uid, (usize, usize)> =
        acked.iter().map(|&(u, t, n)| (u, (t, n))).collect();
    assert_eq!(
        by_uid.len(),
        total,
        "two appends were acknowledged with the same uid"
    );
    assert_eq!(by_uid.keys().next(), Some(&Uid(1)));
    assert_eq!(by_uid.keys().last(), Some(&Uid(total as u32)));
    // Each thread saw its own uids increase: a later append never got a lower uid.
    for t in 0..THREADS {
        let mine: Vec<Uid> = acked.iter().filter(|a| a.1 == t).map(|a| a.0).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t} uids {mine:?}"
        );
    }
    assert!(
        multi_fsyncs < total as u64,
        "{total} concurrent appends took {multi_fsyncs} journal fsyncs: no group commit"
    );

    drop(slot);
    let slot = env.open().unwrap();
    let view = slot.view();
    let h = view.mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(h.exists as usize, total);
    assert_eq!(h.uidnext, Uid(total as u32 + 1));
    let recs: Vec<MessageRecord> = view
        .messages(&h)
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(recs.len(), total);
    assert_eq!(h.digest, recs.iter().fold(0, |a, r| a ^ r.digest()));
    for r in &recs {
        let (t, n) = by_uid[&r.uid];
        let want = body(t, n);
        assert_eq!(
            r.blob,
            BlobHash::of(&want),
            "uid {} holds another message",
            r.uid.0
        );
        assert_eq!(
            slot.read_blob(&r.blob, &ReadContext::default()).unwrap(),
            want
        );
    }
    assert!(env.alerts().is_empty(), "alerts: {:?}", env.alerts());
}
