//! Insecure-login records (TLS policy): one row per user and protocol, the atomic
//! notice-window decision, and durability across a reopen.

mod common;

use common::Env;
use store::*;

const ALICE: &str = "alice@example.com";
const DAY: i64 = 86_400;

fn record(slot: &Slot, protocol: &str, at: i64, client: &str) -> bool {
    match slot
        .execute(Op::RecordInsecureLogin {
            user: ALICE.into(),
            protocol: protocol.into(),
            at,
            ip: "192.0.2.1".into(),
            client: client.into(),
            notice_window_secs: Some(DAY),
        })
        .unwrap()
    {
        OpResult::InsecureRecorded { notice_due } => notice_due,
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_notice_per_window_across_protocols_and_rows_survive_reopen() {
    let env = Env::new("insecure");
    let slot = env.create("s");
    slot.execute(Op::EnsureUser { user: ALICE.into() }).unwrap();
    let t0 = 1_750_000_000;
    assert!(record(&slot, "imap", t0, "name=Old"), "first login: notice");
    assert!(
        !record(&slot, "imap", t0 + 60, ""),
        "inside the window: none"
    );
    assert!(!record(&slot, "pop3", t0 + 120, ""), "window is per user");
    assert!(
        record(&slot, "pop3", t0 + DAY, ""),
        "after the window: next"
    );
    let rows = slot.view().insecure_logins(Some(ALICE)).unwrap();
    assert_eq!(rows.len(), 2);
    let imap = rows.iter().find(|r| r.protocol == "imap").unwrap();
    assert_eq!((imap.count, imap.client.as_str()), (2, "name=Old"));
    assert_eq!(imap.last_at, t0 + 60);
    drop(slot);
    let slot = env.open().unwrap();
    assert_eq!(slot.view().insecure_logins(None).unwrap(), rows);
    // Without a window (policy `allow`/`require`) nothing is ever due.
    let r = slot
        .execute(Op::RecordInsecureLogin {
            user: ALICE.into(),
            protocol: "imap".into(),
            at: t0 + 10 * DAY,
            ip: "192.0.2.1".into(),
            client: String::new(),
            notice_window_secs: None,
        })
        .unwrap();
    assert_eq!(r, OpResult::InsecureRecorded { notice_due: false });
    slot.execute(Op::PurgeUser { user: ALICE.into() }).unwrap();
    assert!(slot.view().insecure_logins(None).unwrap().is_empty());
}
