//! Expunge tombstones and how far back `changes_since` answers VANISHED exactly
//! (`VANISHED_WINDOW_MODSEQ`, `SlotView::vanished_floor`), and the read APIs the IMAP
//! session engine uses (`messages_range`, `message_uids`).

mod common;

use common::Env;
use store::*;

const USER: &str = "alice@example.com";

fn append_n(slot: &Slot, n: u32) {
    for i in 1..=n {
        let blob = slot
            .put_blob(format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes())
            .unwrap();
        slot.execute(Op::Append {
            user: USER.into(),
            mailbox: "INBOX".into(),
            blob,
            flags: Flags::default(),
            internaldate: InternalDate::default(),
        })
        .unwrap();
    }
}

fn inbox(slot: &Slot) -> MailboxHeader {
    slot.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap()
}

fn expunge(slot: &Slot, uids: &[u32]) {
    let id = inbox(slot).id;
    let uids: Vec<Uid> = uids.iter().map(|&u| Uid(u)).collect();
    slot.execute(Op::Store {
        mailbox: id,
        uids: uids.clone(),
        mode: FlagMode::Add,
        flags: Flags::new(SystemFlags::DELETED, []),
        unchanged_since: None,
    })
    .unwrap();
    slot.execute(Op::Expunge {
        mailbox: id,
        uids: Some(uids),
    })
    .unwrap();
}

fn tombstones(slot: &Slot, since: u64) -> Vec<u32> {
    let mut v: Vec<u32> = slot
        .view()
        .changes_since(inbox(slot).id, ModSeq(since))
        .unwrap()
        .into_iter()
        .filter(|c| c.2 == ChangeKind::Expunged)
        .map(|c| c.0.0)
        .collect();
    v.sort();
    v
}

#[test]
fn tombstones_past_the_window_are_pruned_and_the_floor_says_so() {
    let env = Env::new("vanished");
    let slot = env.create("s");
    slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    slot.debug_set_vanished_window(16);
    append_n(&slot, 10);
    expunge(&slot, &[2, 3]);
    let after_first = inbox(&slot).highestmodseq;
    assert_eq!(tombstones(&slot, 0), vec![2, 3]);
    assert_eq!(
        slot.view().vanished_floor(&inbox(&slot)),
        ModSeq(0),
        "within the window"
    );
    // 40 more modifications: the first expunge falls out of the window and is pruned
    // (pruning runs every min(1024, window) modifications).
    append_n(&slot, 40);
    expunge(&slot, &[20]);
    let h = inbox(&slot);
    let floor = slot.view().vanished_floor(&h);
    assert_eq!(floor, ModSeq(h.highestmodseq.0 - 16));
    assert!(
        floor > after_first,
        "the first expunge is now past the floor"
    );
    assert_eq!(
        tombstones(&slot, 0),
        vec![20],
        "old tombstones are pruned, new kept"
    );
    assert_eq!(
        tombstones(&slot, floor.0),
        vec![20],
        "everything above the floor is exact"
    );
    // Flag-change entries are never pruned: one per live message, at its MODSEQ.
    let changed = slot
        .view()
        .changes_since(h.id, ModSeq(0))
        .unwrap()
        .into_iter()
        .filter(|c| c.2 == ChangeKind::Changed)
        .count();
    assert_eq!(changed as u32, h.exists);
}

#[test]
fn range_reads_and_uid_lists_follow_the_mailbox() {
    let env = Env::new("ranges");
    let slot = env.create("s");
    slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    append_n(&slot, 12);
    expunge(&slot, &[4, 5, 9]);
    let h = inbox(&slot);
    let view = slot.view();
    let uids: Vec<u32> = view
        .message_uids(h.id)
        .unwrap()
        .iter()
        .map(|u| u.0)
        .collect();
    assert_eq!(uids, vec![1, 2, 3, 6, 7, 8, 10, 11, 12]);
    let got: Vec<u32> = view
        .messages_range(&h, Uid(3), Uid(10), 4)
        .unwrap()
        .iter()
        .map(|e| e.as_ref().unwrap().uid.0)
        .collect();
    assert_eq!(got, vec![3, 6, 7, 8], "bounded by max, in UID order");
    assert!(
        view.messages_range(&h, Uid(13), Uid(20), 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        view.messages_range(&h, Uid(5), Uid(4), 10)
            .unwrap()
            .is_empty()
    );
}
