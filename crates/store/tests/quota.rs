//! Quota enforcement inside the writer (RFC 9208 OVERQUOTA for IMAP, 552 5.2.2 for LMTP)
//! and the all-or-nothing multi-message append behind MULTIAPPEND (RFC 3502).

mod common;

use common::Env;
use store::*;

const ALICE: &str = "alice@example.com";

fn new_message(slot: &Slot, body: &[u8]) -> NewMessage {
    NewMessage {
        blob: slot.put_blob(body).unwrap(),
        flags: Flags::default(),
        internaldate: InternalDate::default(),
    }
}

fn append(slot: &Slot, body: &[u8]) -> Result<OpResult, StoreError> {
    slot.execute(Op::Append {
        user: ALICE.into(),
        mailbox: "INBOX".into(),
        blob: slot.put_blob(body).unwrap(),
        flags: Flags::default(),
        internaldate: InternalDate::default(),
    })
}

#[test]
fn writes_past_the_quota_are_refused_and_change_nothing() {
    let env = Env::new("quota");
    let slot = env.create("q");
    slot.execute(Op::EnsureUser { user: ALICE.into() }).unwrap();
    slot.execute(Op::SetQuota {
        user: ALICE.into(),
        quota_bytes: 100,
    })
    .unwrap();
    append(&slot, &[b'a'; 60]).unwrap();
    // Exactly at the limit is fine; one byte over is not.
    append(&slot, &[b'b'; 40]).unwrap();
    let err = append(&slot, b"c").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OverQuota {
                usage_bytes: 100,
                adding_bytes: 1,
                limit_bytes: 100
            }
        ),
        "{err:?}"
    );
    let view = slot.view();
    assert_eq!(view.usage_bytes(ALICE).unwrap(), 100);
    let inbox = view.mailbox_by_name(ALICE, "INBOX").unwrap().unwrap();
    // COPY adds usage, MOVE does not.
    let copy = |remove_source| Op::Copy {
        from: inbox.id,
        uids: vec![Uid(1)],
        to: "Trash".into(),
        remove_source,
    };
    assert!(matches!(
        slot.execute(copy(false)),
        Err(StoreError::OverQuota { .. })
    ));
    slot.execute(copy(true)).unwrap();
    // 0 is unlimited.
    slot.execute(Op::SetQuota {
        user: ALICE.into(),
        quota_bytes: 0,
    })
    .unwrap();
    append(&slot, &[b'd'; 1000]).unwrap();
}

#[test]
fn append_many_is_all_or_nothing() {
    let env = Env::new("appendmany");
    let slot = env.create("m");
    slot.execute(Op::EnsureUser { user: ALICE.into() }).unwrap();
    let many = |bodies: &[&[u8]]| Op::AppendMany {
        user: ALICE.into(),
        mailbox: "INBOX".into(),
        messages: bodies.iter().map(|b| new_message(&slot, b)).collect(),
    };
    let r = slot.execute(many(&[b"one", b"two", b"three"])).unwrap();
    let OpResult::AppendedMany { uids, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(uids, vec![Uid(1), Uid(2), Uid(3)]);
    slot.execute(Op::SetQuota {
        user: ALICE.into(),
        quota_bytes: 20,
    })
    .unwrap();
    // The second message would pass the limit: the first is not kept either.
    let err = slot
        .execute(many(&[b"four", b"fifteen bytes.."]))
        .unwrap_err();
    assert!(matches!(err, StoreError::OverQuota { .. }), "{err:?}");
    let view = slot.view();
    let inbox = view.mailbox_by_name(ALICE, "INBOX").unwrap().unwrap();
    assert_eq!((inbox.exists, inbox.uidnext), (3, Uid(4)));
    assert!(matches!(
        slot.execute(Op::AppendMany {
            user: ALICE.into(),
            mailbox: "Nope".into(),
            messages: vec![new_message(&slot, b"x")],
        }),
        Err(StoreError::NoSuchMailbox)
    ));
}
