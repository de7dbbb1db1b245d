//! Corruption drills (DESIGN invariants 2, 3 and 8): damaged bytes on disk are detected
//! on read, reported as errors (never served as data), raise an alert naming the slot,
//! and leave the rest of the slot working.

mod common;

use common::Env;
use store::*;

const USER: &str = "alice@example.com";
const SLOT: &str = "drill-slot";

fn body(n: u32) -> Vec<u8> {
    format!("Subject: message {n}\r\n\r\nbody of message {n}, long enough to flip a byte in\r\n")
        .into_bytes()
}

/// A slot with `n` messages in alice's INBOX (uids 1..=n).
fn slot_with_messages(env: &Env, n: u32) -> Slot {
    let slot = env.create(SLOT);
    slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    for i in 1..=n {
        let blob = slot.put_blob(&body(i)).unwrap();
        let r = slot
            .execute(Op::Append {
                user: USER.into(),
                mailbox: "INBOX".into(),
                blob,
                flags: Flags::default(),
                internaldate: InternalDate::default(),
            })
            .unwrap();
        assert!(matches!(r, OpResult::Appended { uid, .. } if uid == Uid(i)));
    }
    slot
}

fn inbox(slot: &Slot) -> MailboxHeader {
    slot.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap()
}

fn ctx(uid: u32) -> ReadContext {
    ReadContext {
        user: Some(USER.into()),
        mailbox: Some("INBOX".into()),
        uid: Some(uid),
    }
}

fn alerts_of_kind(env: &Env, kind: &str) -> Vec<serde_json::Value> {
    env.alerts()
        .into_iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

#[test]
fn flipped_byte_in_a_blob_is_an_error_and_an_alert_and_other_messages_still_read() {
    let env = Env::new("blob");
    let slot = slot_with_messages(&env, 3);
    let view = slot.view();
    let recs: Vec<MessageRecord> = view
        .messages(&inbox(&slot))
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    assert!(env.alerts().is_empty());

    let victim = &recs[1];
    let path = slot.blob_path(&victim.blob);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();

    match slot.read_blob(&victim.blob, &ctx(2)) {
        Err(StoreError::CorruptBlob { hash, .. }) => assert_eq!(hash, victim.blob.to_hex()),
        other => panic!("corrupt blob read as {other:?}"),
    }
    let alerts = alerts_of_kind(&env, "corrupt_blob");
    assert_eq!(alerts.len(), 1, "alerts: {alerts:?}");
    assert_eq!(alerts[0]["slot"], SLOT);
    assert_eq!(alerts[0]["user"], USER);
    assert_eq!(alerts[0]["mailbox"], "INBOX");
    assert_eq!(alerts[0]["uid"], 2);
    assert!(
        alerts[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&victim.blob.to_hex())
    );

    for (i, r) in recs.iter().enumerate().filter(|(i, _)| *i != 1) {
        let n = i as u32 + 1;
        assert_eq!(slot.read_blob(&r.blob, &ctx(n)).unwrap(), body(n));
    }

    // A missing blob is corruption too, not an empty message.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        slot.read_blob(&victim.blob, &ctx(2)),
        Err(StoreError::CorruptBlob { .. })
    ));
    assert_eq!(alerts_of_kind(&env, "corrupt_blob").len(), 2);
    // The metadata is untouched: the slot still lists all three messages.
    assert_eq!(slot.view().messages(&inbox(&slot)).unwrap().len(), 3);
}

#[test]
fn damaged_slot_header_refuses_to_open() {
    let env = Env::new("header");
    drop(slot_with_messages(&env, 1));
    let path = env.slot_dir().join("SLOT");
    let good = std::fs::read(&path).unwrap();

    let expect_corrupt =
        |what: &str| match Slot::open(&env.slot_dir(), env.events.clone(), env.clock_dyn()) {
            Err(StoreError::CorruptHeader { .. }) => {}
            Err(e) => panic!("{what}: open failed with {e:?}, not CorruptHeader"),
            Ok(_) => panic!("{what}: slot opened"),
        };

    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            std::fs::write(&path, &bad).unwrap();
            expect_corrupt(&format!("bit {bit:#x} of byte {i} flipped"));
        }
    }
    for len in [0, 1, 8, 31, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        expect_corrupt(&format!("truncated to {len} bytes"));
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&path, &longer).unwrap();
    expect_corrupt("one byte appended");
    std::fs::remove_file(&path).unwrap();
    expect_corrupt("SLOT missing");

    // Put back, the copy opens with its data.
    std::fs::write(&path, &good).unwrap();
    let slot = env.open().unwrap();
    assert_eq!(inbox(&slot).exists, 1);
}

#[test]
fn record_with_bad_crc_is_listed_as_corrupt_alerted_and_isolated() {
    let env = Env::new("record");
    let slot = slot_with_messages(&env, 4);
    let h = inbox(&slot);
    slot.debug_corrupt_record(h.id, Uid(2)).unwrap();
    assert!(env.alerts().is_empty(), "writing the drill raised an alert");

    let check = |slot: &Slot, alerts_before: usize| {
        let h = inbox(slot);
        let view = slot.view();
        let entries = view.messages(&h).unwrap();
        assert_eq!(entries.len(), 4, "the corrupt record still holds its place");
        for (i, e) in entries.iter().enumerate() {
            let uid = Uid(i as u32 + 1);
            if uid == Uid(2) {
                match e {
                    Err(c) => {
                        assert_eq!(c.uid, uid);
                        assert!(c.detail.contains("CRC"), "detail: {}", c.detail);
                    }
                    Ok(r) => panic!("corrupt record served as {r:?}"),
                }
            } else {
                let r = e.as_ref().unwrap();
                assert_eq!(r.uid, uid);
                assert_eq!(slot.read_blob(&r.blob, &ctx(uid.0)).unwrap(), body(uid.0));
            }
        }
        let alerts = alerts_of_kind(&env, "corrupt_record");
        assert_eq!(alerts.len(), alerts_before + 1, "alerts: {alerts:?}");
        let a = alerts.last().unwrap();
        assert_eq!(a["slot"], SLOT);
        assert_eq!(a["mailbox"], "INBOX");
        assert_eq!(a["uid"], 2);

        assert!(matches!(
            view.message(&h, Uid(2)),
            Err(StoreError::CorruptRecord { .. })
        ));
        // The same damage read again is not alerted again (no flood from retrying clients).
        assert_eq!(
            alerts_of_kind(&env, "corrupt_record").len(),
            alerts_before + 1
        );
        for u in [1, 3, 4] {
            assert_eq!(view.message(&h, Uid(u)).unwrap().unwrap().uid, Uid(u));
        }
    };
    check(&slot, 0);

    // The rest of the mailbox keeps working: flags on a good message, a new delivery.
    let r = slot
        .execute(Op::Store {
            mailbox: h.id,
            uids: vec![Uid(3)],
            mode: FlagMode::Add,
            flags: Flags::new(SystemFlags::SEEN, []),
            unchanged_since: None,
        })
        .unwrap();
    assert!(matches!(r, OpResult::Stored { ref updated, .. } if updated.len() == 1));
    let blob = slot.put_blob(&body(5)).unwrap();
    let r = slot
        .execute(Op::Append {
            user: USER.into(),
            mailbox: "INBOX".into(),
            blob,
            flags: Flags::default(),
            internaldate: InternalDate::default(),
        })
        .unwrap();
    assert!(matches!(r, OpResult::Appended { uid: Uid(5), .. }));
    // A write that must read the corrupt record is refused (nothing is built on it).
    let before = alerts_of_kind(&env, "corrupt_record").len();
    let e = slot
        .execute(Op::Store {
            mailbox: h.id,
            uids: vec![Uid(2)],
            mode: FlagMode::Add,
            flags: Flags::new(SystemFlags::FLAGGED, []),
            unchanged_since: None,
        })
        .unwrap_err();
    assert!(e.is_corruption(), "{e:?}");
    assert_eq!(alerts_of_kind(&env, "corrupt_record").len(), before + 1);

    // The damage is durable and still contained after a reopen: the slot opens (the quick
    // check reads headers, not every record) and the same uid is still flagged.
    drop(slot);
    let slot = env.open().unwrap();
    let h = inbox(&slot);
    assert_eq!(h.exists, 5);
    let entries = slot.view().messages(&h).unwrap();
    assert_eq!(entries.iter().filter(|e| e.is_err()).count(), 1);
    assert!(matches!(&entries[1], Err(c) if c.uid == Uid(2)));
}
