//! The store's replication ops (`replica.rs`): a replica applies its master's records
//! verbatim, verified, in one transaction; refuses stale epochs, damaged records, missing
//! blobs and updates that would hide its own newer data; the master's reconcile op merges
//! a former master's messages with fresh UIDs. The protocol is tested in
//! `crates/replication`; here batches are built by hand from a master's views.

mod common;

use common::Env;
use std::sync::{Arc, Mutex};
use store::replica::*;
use store::*;

const USER: &str = "alice@example.com";

fn deliver(slot: &Slot, mailbox: &str, body: &str) -> Uid {
    slot.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    let blob = slot.put_blob(body.as_bytes()).unwrap();
    match slot
        .execute(Op::Append {
            user: USER.into(),
            mailbox: mailbox.into(),
            blob,
            flags: Flags::default(),
            internaldate: InternalDate {
                unix_secs: 1_700_000_000,
                zone_minutes: 0,
            },
        })
        .unwrap()
    {
        OpResult::Appended { uid, .. } => uid,
        other => panic!("{other:?}"),
    }
}

/// What a master sends for `user`: every mailbox that differs, changes since the
/// replica's highestmodseq; mailboxes the master deleted are deleted.
fn batch_for(master: &Slot, replica: &Slot, user: &str) -> ReplicaBatch {
    let mv = master.view();
    let rv = replica.view();
    let ms = mv.user_state(user).unwrap();
    let rs = rv.user_state(user).unwrap();
    let mut b = ReplicaBatch {
        epoch: master.epoch(),
        counters: mv.counters().unwrap(),
        ..ReplicaBatch::default()
    };
    for (h, raw) in &ms.mailboxes {
        let since = rs
            .mailboxes
            .iter()
            .find(|(r, _)| r.id == h.id)
            .map(|(r, _)| r.highestmodseq)
            .unwrap_or_default();
        let page = mv.changes_after(h.id, since, usize::MAX).unwrap();
        let mut upd = MailboxUpdate {
            id: h.id,
            header: raw.clone(),
            upto: h.highestmodseq,
            partial: false,
            upserts: Vec::new(),
            expunges: Vec::new(),
        };
        for c in page.changes {
            match c {
                Change::Record(r, raw) => upd.upserts.push((r.uid, raw)),
                Change::Expunged(e) => upd.expunges.push(e),
                Change::Corrupt { .. } => {}
            }
        }
        b.mailboxes.push(upd);
    }
    for (h, _) in &rs.mailboxes {
        if mv.mailbox_deleted(h.id).unwrap() {
            b.delete_mailboxes.push(h.id);
        }
    }
    b.users.push(UserUpdate {
        user: user.into(),
        rows: Some(ms.rows.clone()),
        mailboxes: ms.mailboxes.iter().map(|(h, _)| h.id).collect(),
    });
    b
}

fn apply(replica: &Slot, b: ReplicaBatch) -> Vec<(MailboxId, MailboxOutcome)> {
    match replica.execute(Op::ApplyReplica(Box::new(b))).unwrap() {
        OpResult::ReplicaApplied(o) => o,
        other => panic!("{other:?}"),
    }
}

/// Mailboxes by name with their records: what a user would see.
fn contents(slot: &Slot) -> Vec<(MailboxHeader, Vec<MessageRecord>)> {
    let v = slot.view();
    v.mailboxes(USER)
        .unwrap()
        .into_iter()
        .map(|h| {
            let recs = v
                .messages(&h)
                .unwrap()
                .into_iter()
                .map(|e| e.unwrap())
                .collect();
            (h, recs)
        })
        .collect()
}

fn assert_same(master: &Slot, replica: &Slot) {
    let (m, r) = (contents(master), contents(replica));
    assert_eq!(m, r, "replica differs from master");
    let (mv, rv) = (master.view(), replica.view());
    assert_eq!(
        mv.subscriptions(USER).unwrap(),
        rv.subscriptions(USER).unwrap()
    );
    assert_eq!(mv.user(USER).unwrap(), rv.user(USER).unwrap());
    for (h, recs) in &r {
        for rec in recs {
            assert!(
                replica.has_blob(&rec.blob),
                "{} uid {} blob",
                h.name,
                rec.uid.0
            );
        }
    }
}

fn copy_blobs(master: &Slot, replica: &Slot) {
    for (_, recs) in contents(master) {
        for r in recs {
            if !replica.has_blob(&r.blob) {
                let bytes = master.read_blob(&r.blob, &ReadContext::default()).unwrap();
                let staged = replica.put_blob_verified(&r.blob, &bytes).unwrap();
                replica.sync_blob_dirs(&[staged]).unwrap();
            }
        }
    }
}

fn pair() -> (Env, Env, Slot, Slot) {
    let (em, er) = (Env::new("repl-master"), Env::new("repl-replica"));
    let m = em.create("s1");
    let r = er.create("s1");
    (em, er, m, r)
}

#[test]
fn replica_converges_through_appends_flags_expunges_renames_deletes_and_quota() {
    let (_em, _er, m, r) = pair();
    for i in 0..5 {
        deliver(&m, "INBOX", &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    copy_blobs(&m, &r);
    let out = apply(&r, batch_for(&m, &r, USER));
    assert!(
        out.iter()
            .all(|(_, o)| matches!(o, MailboxOutcome::Applied { complete: true, .. })),
        "{out:?}"
    );
    assert_same(&m, &r);

    // Flags, an expunge, a folder created, renamed, subscribed, then deleted; quota.
    let inbox = m.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    m.execute(Op::Store {
        mailbox: inbox.id,
        uids: vec![Uid(2), Uid(3)],
        mode: FlagMode::Add,
        flags: Flags::new(
            SystemFlags::DELETED | SystemFlags::SEEN,
            ["$Label1".to_string()],
        ),
        unchanged_since: None,
    })
    .unwrap();
    m.execute(Op::Expunge {
        mailbox: inbox.id,
        uids: Some(vec![Uid(2)]),
    })
    .unwrap();
    for op in [
        Op::CreateMailbox {
            user: USER.into(),
            name: "Work".into(),
            special_use: vec![],
        },
        Op::CreateMailbox {
            user: USER.into(),
            name: "Gone".into(),
            special_use: vec![],
        },
        Op::RenameMailbox {
            user: USER.into(),
            from: "Work".into(),
            to: "Projects/2026".into(),
        },
        Op::Subscribe {
            user: USER.into(),
            name: "Projects/2026".into(),
            subscribe: true,
        },
        Op::SetQuota {
            user: USER.into(),
            quota_bytes: 1 << 30,
        },
        Op::RecordInsecureLogin {
            user: USER.into(),
            protocol: "imap".into(),
            at: 1_750_000_000,
            ip: "192.0.2.7".into(),
            client: "name=OldMail".into(),
            notice_window_secs: Some(86_400),
        },
    ] {
        m.execute(op).unwrap();
    }
    deliver(&m, "Projects/2026", "Subject: w\r\n\r\nwork\r\n");
    copy_blobs(&m, &r);
    apply(&r, batch_for(&m, &r, USER));
    assert_same(&m, &r);
    // TLS-policy records travel with the user's other rows.
    let logins = r.view().insecure_logins(Some(USER)).unwrap();
    assert_eq!(logins, m.view().insecure_logins(Some(USER)).unwrap());
    assert_eq!(logins.len(), 1);

    m.execute(Op::DeleteMailbox {
        user: USER.into(),
        name: "Gone".into(),
    })
    .unwrap();
    let b = batch_for(&m, &r, USER);
    assert_eq!(
        b.delete_mailboxes.len(),
        1,
        "the master's tombstone names the deleted mailbox"
    );
    apply(&r, b);
    assert_same(&m, &r);
    assert!(r.view().mailbox_by_name(USER, "Gone").unwrap().is_none());

    // The replica's tombstones carry the hash: VANISHED works after a failover.
    let rin = r.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    let t = r.view().tombstones(rin.id).unwrap();
    assert!(t[&Uid(2)].blob.is_some());
    // A copy that applied everything passes the start-up check.
    r.check().unwrap();
}

#[test]
fn a_damaged_record_or_missing_blob_is_never_applied_and_nothing_else_of_that_mailbox_is() {
    let (_em, _er, m, r) = pair();
    for i in 0..3 {
        deliver(&m, "INBOX", &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
    }
    copy_blobs(&m, &r);
    let good = batch_for(&m, &r, USER);

    // One bit flipped in one record on the way.
    let mut bad = good.clone();
    let inbox = bad
        .mailboxes
        .iter_mut()
        .find(|u| !u.upserts.is_empty())
        .unwrap();
    inbox.upserts[1].1[6] ^= 0x10;
    let id = inbox.id;
    let out = apply(&r, bad);
    let o = &out.iter().find(|(i, _)| *i == id).unwrap().1;
    assert!(
        matches!(o, MailboxOutcome::Invalid(d) if d.contains("CRC")),
        "{o:?}"
    );
    assert!(
        r.view().mailbox(id).unwrap().is_none(),
        "nothing of that mailbox applied"
    );

    // A record whose blob the replica lacks.
    let er = Env::new("repl-empty");
    let empty = er.create("s1");
    let out = apply(&empty, good.clone());
    assert!(
        out.iter()
            .any(|(_, o)| matches!(o, MailboxOutcome::MissingBlob(_))),
        "{out:?}"
    );

    // A batch from a lower epoch is refused whole.
    r.execute(Op::SetEpoch {
        epoch: Epoch(3),
        promote: false,
    })
    .unwrap();
    assert_eq!(r.epoch(), Epoch(3));
    assert_eq!(SlotHeader::read(r.dir()).unwrap().epoch, Epoch(3));
    match r.execute(Op::ApplyReplica(Box::new(good))) {
        Err(StoreError::Refused(why)) => assert!(why.contains("epoch"), "{why}"),
        other => panic!("stale batch: {other:?}"),
    }
    assert!(
        r.execute(Op::SetEpoch {
            epoch: Epoch(2),
            promote: false
        })
        .is_err()
    );
}

#[test]
fn a_replica_ahead_of_its_master_refuses_and_reconcile_keeps_every_message_once() {
    let (_em, _er, m, r) = pair();
    for i in 0..3 {
        deliver(&m, "INBOX", &format!("Subject: common {i}\r\n\r\n{i}\r\n"));
    }
    copy_blobs(&m, &r);
    apply(&r, batch_for(&m, &r, USER));
    // Split brain: each side appends different messages at the same UIDs.
    r.execute(Op::SetEpoch {
        epoch: Epoch(1),
        promote: true,
    })
    .unwrap();
    let ra = deliver(
        &r,
        "INBOX",
        "Subject: only on the old master A\r\n\r\na1\r\n",
    );
    deliver(
        &r,
        "INBOX",
        "Subject: only on the old master B\r\n\r\na2\r\n",
    );
    let mb = deliver(&m, "INBOX", "Subject: only on the new master\r\n\r\nb1\r\n");
    assert_eq!(ra, mb, "both sides used UID {}", ra.0);
    copy_blobs(&m, &r);
    let out = apply(&r, batch_for(&m, &r, USER));
    let inbox = m.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    let o = &out.iter().find(|(i, _)| *i == inbox.id).unwrap().1;
    assert!(matches!(o, MailboxOutcome::Ahead { .. }), "{o:?}");

    // The master reconciles: its own message at the contested UID moves, the replica's
    // two are appended, UIDs are raised past both sides.
    let rin = r.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    let mut appends = Vec::new();
    for uid in [Uid(4), Uid(5)] {
        let rec = r.view().message(&rin, uid).unwrap().unwrap();
        let bytes = r.read_blob(&rec.blob, &ReadContext::default()).unwrap();
        let blob = m.put_blob_verified(&rec.blob, &bytes).unwrap();
        m.sync_blob_dirs(std::slice::from_ref(&blob)).unwrap();
        appends.push(NewMessage {
            blob,
            flags: rec.flags.clone(),
            internaldate: rec.internaldate,
        });
    }
    let res = m
        .execute(Op::Reconcile(Box::new(ReconcilePlan {
            mailbox: inbox.id,
            uidvalidity: inbox.uidvalidity,
            uidnext_at_least: rin.uidnext,
            modseq_above: rin.highestmodseq,
            renumber: vec![mb],
            appends,
        })))
        .unwrap();
    let OpResult::Reconciled {
        renumbered,
        appended,
        uidvalidity,
    } = res
    else {
        panic!("{res:?}")
    };
    assert_eq!(uidvalidity, inbox.uidvalidity, "UIDVALIDITY unchanged");
    assert_eq!(renumbered, vec![(Uid(4), Uid(6))]);
    assert_eq!(appended, vec![Uid(7), Uid(8)]);
    let after = m.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(after.exists, 6);
    assert!(after.highestmodseq > rin.highestmodseq);
    let t = m.view().tombstones(inbox.id).unwrap();
    assert!(
        t.contains_key(&Uid(4)),
        "the contested UID is expunged, never reused"
    );
    m.check().unwrap();
}

#[test]
fn a_copy_promoted_to_a_new_epoch_skips_a_gap_of_uids_once() {
    let (_em, _er, m, r) = pair();
    for i in 0..3 {
        deliver(&m, "INBOX", &format!("Subject: m {i}\r\n\r\n{i}\r\n"));
    }
    copy_blobs(&m, &r);
    apply(&r, batch_for(&m, &r, USER));
    let before = r.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(before.uidnext, Uid(4));
    let promote = |e| {
        r.execute(Op::SetEpoch {
            epoch: Epoch(e),
            promote: true,
        })
        .unwrap()
    };
    // Promoted at the epoch it already has (a master's restart): nothing skipped.
    promote(1);
    let same = r.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(same.uidnext, Uid(4));
    promote(2);
    let after = r.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    let gap = store::replica::PROMOTION_GAP;
    assert_eq!(after.uidnext.0, 4 + gap);
    assert_eq!(
        after.highestmodseq, before.highestmodseq,
        "MODSEQs are not skipped"
    );
    assert_eq!((after.exists, after.digest), (before.exists, before.digest));
    promote(2); // a restart at the new epoch: no second gap
    assert_eq!(
        r.view()
            .mailbox_by_name(USER, "INBOX")
            .unwrap()
            .unwrap()
            .uidnext,
        after.uidnext
    );
    // The next message takes a UID no client of the old master can have seen.
    let uid = deliver(&r, "INBOX", "Subject: on the new master\r\n\r\nn\r\n");
    assert_eq!(uid.0, 4 + gap);
    r.check().unwrap();
}

#[derive(Default)]
struct Recorder {
    groups: Mutex<Vec<CommittedGroup>>,
    refuse_commit: Mutex<Option<String>>,
    refuse_admit: Mutex<Option<String>>,
}

impl CommitHook for Recorder {
    fn admit(&self, _op: &Op) -> Result<(), String> {
        match self.refuse_admit.lock().unwrap().clone() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
    fn committed(&self, g: &CommittedGroup) -> Result<(), String> {
        self.groups.lock().unwrap().push(g.clone());
        match self.refuse_commit.lock().unwrap().clone() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

#[test]
fn the_commit_hook_sees_each_writing_group_and_can_hold_or_refuse_acks() {
    let env = Env::new("repl-hook");
    let m = env.create("s1");
    let rec = Arc::new(Recorder::default());
    m.set_commit_hook(Some(rec.clone()));
    deliver(&m, "INBOX", "Subject: x\r\n\r\nx\r\n");
    // EnsureUser that finds the user wrote nothing: no group for it.
    m.execute(Op::EnsureUser { user: USER.into() }).unwrap();
    {
        let g = rec.groups.lock().unwrap();
        assert_eq!(g.len(), 2, "EnsureUser (new) and Append: {g:?}");
        assert!(g.iter().all(|g| g.users == vec![USER.to_string()]));
        assert_eq!(g[1].seq, 2);
        assert_eq!(m.commit_seq(), 2);
    }
    *rec.refuse_commit.lock().unwrap() = Some("no replica confirmed".into());
    let blob = m.put_blob(b"Subject: y\r\n\r\ny\r\n").unwrap();
    let r = m.execute(Op::Append {
        user: USER.into(),
        mailbox: "INBOX".into(),
        blob,
        flags: Flags::default(),
        internaldate: InternalDate::default(),
    });
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    // The write is durable nonetheless (it was committed before the hook refused).
    let inbox = m.view().mailbox_by_name(USER, "INBOX").unwrap().unwrap();
    assert_eq!(inbox.exists, 2);
    *rec.refuse_commit.lock().unwrap() = None;
    *rec.refuse_admit.lock().unwrap() = Some("fenced".into());
    let r = m.execute(Op::Subscribe {
        user: USER.into(),
        name: "INBOX".into(),
        subscribe: false,
    });
    assert!(matches!(r, Err(StoreError::Unavailable { ref reason, .. }) if reason == "fenced"));
    assert_eq!(
        rec.groups.lock().unwrap().len(),
        3,
        "a refused write is no group"
    );
}
