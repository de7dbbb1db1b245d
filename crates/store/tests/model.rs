//! The store against an in-memory model: random sequences of mailbox and message
//! operations, with the whole visible state compared after every one, and the slot
//! reopened at random points to show that what was acknowledged is what is on disk.
//!
//! What the model pins (DESIGN invariants 4 and 5): names, per-mailbox uid → (flags,
//! bytes, internaldate), derived counters and the digest equal what the records say,
//! UIDs are never reused within a mailbox id, uidnext is above every uid, MODSEQ never
//! goes down and moves exactly when a message changes, UIDVALIDITY survives RENAME and
//! differs for a re-created name, and the change log matches the records.

mod common;

use common::Env;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use store::*;

const USERS: [&str; 2] = ["alice@example.com", "bob@example.com"];

/// Names ops pick from (plus every name the model currently holds). Includes INBOX in
/// other cases, hierarchy children, INBOX children, and one invalid name.
const NAME_POOL: &[&str] = &[
    "INBOX",
    "inbox",
    "Drafts",
    "Trash",
    "a",
    "a/b",
    "a/b/c",
    "b",
    "b/a",
    "c",
    "INBOX/x",
    "Inbox/y",
    "bad//name",
];

/// Includes two spellings of one keyword: keywords are case-insensitive.
const KEYWORDS: &[&str] = &["$Forwarded", "$MDNSent", "Work", "work", "Later"];

#[derive(Debug, Clone)]
struct FlagSel {
    system: u8,
    keywords: Vec<u8>,
}

impl FlagSel {
    fn flags(&self) -> Flags {
        Flags::new(
            self.system,
            self.keywords
                .iter()
                .map(|&i| KEYWORDS[usize::from(i) % KEYWORDS.len()].to_string()),
        )
    }
}

/// One generated step. Names, uids and modseqs are selectors resolved against the model
/// at run time, so shrinking keeps sequences meaningful.
#[derive(Debug, Clone)]
enum Step {
    EnsureUser {
        user: usize,
    },
    Create {
        user: usize,
        name: u8,
    },
    Delete {
        user: usize,
        name: u8,
    },
    Rename {
        user: usize,
        from: u8,
        to: u8,
    },
    Append {
        user: usize,
        name: u8,
        body: Vec<u8>,
        flags: FlagSel,
        date: i64,
    },
    Store {
        user: usize,
        mailbox: u8,
        uids: Vec<u8>,
        mode: FlagMode,
        flags: FlagSel,
        since: Option<u8>,
    },
    Expunge {
        user: usize,
        mailbox: u8,
        uids: Option<Vec<u8>>,
    },
    Copy {
        user: usize,
        from: u8,
        uids: Vec<u8>,
        to: u8,
        remove_source: bool,
    },
    Reopen,
}

fn user_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 1 => Just(1usize)]
}

fn flags_strategy() -> impl Strategy<Value = FlagSel> {
    (0u8..32, proptest::collection::vec(any::<u8>(), 0..3))
        .prop_map(|(system, keywords)| FlagSel { system, keywords })
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A few fixed bodies so the same blob is appended more than once.
        (0u8..3).prop_map(|i| format!("Subject: dup {i}\r\n\r\nsame body {i}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn uids_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..6)
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let mode = prop_oneof![
        Just(FlagMode::Replace),
        Just(FlagMode::Add),
        Just(FlagMode::Remove)
    ];
    prop_oneof![
        1 => user_strategy().prop_map(|user| Step::EnsureUser { user }),
        2 => (user_strategy(), any::<u8>()).prop_map(|(user, name)| Step::Create { user, name }),
        1 => (user_strategy(), any::<u8>()).prop_map(|(user, name)| Step::Delete { user, name }),
        2 => (user_strategy(), any::<u8>(), any::<u8>())
            .prop_map(|(user, from, to)| Step::Rename { user, from, to }),
        6 => (user_strategy(), any::<u8>(), body_strategy(), flags_strategy(), -1000i64..2_000_000_000)
            .prop_map(|(user, name, body, flags, date)| Step::Append { user, name, body, flags, date }),
        4 => (user_strategy(), any::<u8>(), uids_strategy(), mode, flags_strategy(),
              proptest::option::of(any::<u8>()))
            .prop_map(|(user, mailbox, uids, mode, flags, since)| Step::Store {
                user, mailbox, uids, mode, flags, since,
            }),
        2 => (user_strategy(), any::<u8>(), proptest::option::of(uids_strategy()))
            .prop_map(|(user, mailbox, uids)| Step::Expunge { user, mailbox, uids }),
        3 => (user_strategy(), any::<u8>(), uids_strategy(), any::<u8>(), any::<bool>())
            .prop_map(|(user, from, uids, to, remove_source)| Step::Copy {
                user, from, uids, to, remove_source,
            }),
        1 => Just(Step::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct MMsg {
    flags: Flags,
    body: Vec<u8>,
    date: InternalDate,
    /// Learned from the store once checked against the rules below.
    modseq: ModSeq,
}

#[derive(Debug, Clone)]
struct MBox {
    /// Learned from the store the first time the mailbox is seen.
    id: Option<MailboxId>,
    uidvalidity: Option<UidValidity>,
    uidnext: u32,
    msgs: BTreeMap<u32, MMsg>,
    /// Last observed highestmodseq (0 before the mailbox was first seen).
    highestmodseq: ModSeq,
    /// Uids the current step changes or adds: their modseq must be above the pre-step
    /// highestmodseq. Cleared by every check.
    dirty: BTreeSet<u32>,
    /// Uids the current step assigns: never assigned before in this mailbox id.
    fresh: BTreeSet<u32>,
}

impl Default for MBox {
    fn default() -> MBox {
        MBox {
            id: None,
            uidvalidity: None,
            uidnext: 1,
            msgs: BTreeMap::new(),
            highestmodseq: ModSeq(0),
            dirty: BTreeSet::new(),
            fresh: BTreeSet::new(),
        }
    }
}

impl MBox {
    fn new() -> MBox {
        MBox::default()
    }

    fn add(&mut self, msg: MMsg) -> u32 {
        let uid = self.uidnext;
        self.uidnext += 1;
        self.msgs.insert(uid, msg);
        self.dirty.insert(uid);
        self.fresh.insert(uid);
        uid
    }
}

#[derive(Debug, Clone, Default)]
struct MUser {
    exists: bool,
    boxes: BTreeMap<String, MBox>,
}

#[derive(Debug, Clone, Default)]
struct Model {
    users: [MUser; 2],
    /// Every uid ever assigned, per mailbox id.
    ever_uids: HashMap<MailboxId, BTreeSet<u32>>,
    ever_ids: BTreeSet<MailboxId>,
    /// Every UIDVALIDITY ever observed at a (user, name).
    uidvalidities: HashMap<(usize, String), BTreeSet<UidValidity>>,
    /// Ids of deleted mailboxes, to aim id-based ops at a mailbox that is gone.
    stale_ids: Vec<MailboxId>,
}

/// Error kinds the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NoSuchMailbox,
    MailboxExists,
    NoSuchUser,
    BadName,
    Refused,
}

fn kind_of(e: &StoreError) -> Option<Kind> {
    match e {
        StoreError::NoSuchMailbox => Some(Kind::NoSuchMailbox),
        StoreError::MailboxExists => Some(Kind::MailboxExists),
        StoreError::NoSuchUser => Some(Kind::NoSuchUser),
        StoreError::BadMailboxName(_) => Some(Kind::BadName),
        StoreError::Refused(_) => Some(Kind::Refused),
        _ => None,
    }
}

/// What the model expects a successful op to return.
#[derive(Debug)]
enum Expect {
    Done,
    /// A new mailbox at this (user, name); its id is compared after the check learns it.
    Mailbox(usize, String),
    Appended {
        uid: Uid,
        uidvalidity: Option<UidValidity>,
    },
    Stored {
        updated: Vec<(Uid, Flags)>,
        modified: Vec<Uid>,
    },
    Expunged(Vec<Uid>),
    Copied {
        uidvalidity: Option<UidValidity>,
        pairs: Vec<(Uid, Uid)>,
    },
}

/// Selectors from here on name `NAME_POOL` entries directly (hand-written sequences).
const POOL_DIRECT: u8 = 240;

fn pick_name(model: &Model, user: usize, sel: u8) -> String {
    if let Some(n) = sel
        .checked_sub(POOL_DIRECT)
        .and_then(|i| NAME_POOL.get(usize::from(i)))
    {
        return n.to_string();
    }
    let mut names: Vec<String> = NAME_POOL.iter().map(|s| s.to_string()).collect();
    for n in model.users[user].boxes.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names[usize::from(sel) % names.len()].clone()
}

/// Like `pick_name`, but mostly an existing mailbox: for ops that need one to do
/// anything interesting.
fn pick_existing(model: &Model, user: usize, sel: u8) -> String {
    let names: Vec<&String> = model.users[user].boxes.keys().collect();
    if !names.is_empty() && sel < 200 {
        names[usize::from(sel) % names.len()].clone()
    } else {
        pick_name(model, user, sel)
    }
}

/// A mailbox id for an id-based op: the named mailbox's, or one that no longer exists.
fn pick_mailbox(model: &Model, user: usize, sel: u8) -> (MailboxId, Option<String>) {
    let name = normalize_mailbox_name(&pick_existing(model, user, sel));
    match model.users[user].boxes.get(&name) {
        Some(b) => (b.id.expect("id learned at creation"), Some(name)),
        None => (
            model
                .stale_ids
                .last()
                .copied()
                .unwrap_or(MailboxId(1 << 40)),
            None,
        ),
    }
}

fn pick_uids(mbox: Option<&MBox>, sels: &[u8], ever: Option<&BTreeSet<u32>>) -> Vec<Uid> {
    let Some(b) = mbox else {
        return sels.iter().map(|&s| Uid(u32::from(s) % 4 + 1)).collect();
    };
    let mut cands: Vec<u32> = b.msgs.keys().copied().collect();
    cands.push(b.uidnext);
    if let Some(gone) = ever.and_then(|e| e.iter().find(|u| !b.msgs.contains_key(u))) {
        cands.push(*gone);
    }
    sels.iter()
        .map(|&s| Uid(cands[usize::from(s) % cands.len()]))
        .collect()
}

fn dedup(uids: &[Uid]) -> Vec<Uid> {
    let mut seen = BTreeSet::new();
    uids.iter().copied().filter(|u| seen.insert(*u)).collect()
}

impl Model {
    fn ever(&self, b: Option<&MBox>) -> Option<&BTreeSet<u32>> {
        b.and_then(|b| b.id).and_then(|id| self.ever_uids.get(&id))
    }

    fn ensure_user(&mut self, user: usize) -> Result<Expect, Kind> {
        let u = &mut self.users[user];
        if !u.exists {
            u.exists = true;
            for (name, _) in DEFAULT_FOLDERS {
                u.boxes.entry(name.to_string()).or_default();
            }
        }
        Ok(Expect::Done)
    }

    fn create(&mut self, user: usize, raw: &str) -> Result<Expect, Kind> {
        let u = &mut self.users[user];
        if !u.exists {
            return Err(Kind::NoSuchUser);
        }
        let name = normalize_mailbox_name(raw);
        if validate_mailbox_name(&name).is_err() {
            return Err(Kind::BadName);
        }
        if u.boxes.contains_key(&name) {
            return Err(Kind::MailboxExists);
        }
        u.boxes.insert(name.clone(), MBox::new());
        Ok(Expect::Mailbox(user, name))
    }

    fn delete(&mut self, user: usize, raw: &str) -> Result<Expect, Kind> {
        let name = normalize_mailbox_name(raw);
        if name == "INBOX" {
            return Err(Kind::Refused);
        }
        let b = self.users[user]
            .boxes
            .remove(&name)
            .ok_or(Kind::NoSuchMailbox)?;
        self.stale_ids.extend(b.id);
        Ok(Expect::Done)
    }

    fn rename(&mut self, user: usize, from: &str, to: &str) -> Result<Expect, Kind> {
        let from = normalize_mailbox_name(from);
        let to = normalize_mailbox_name(to);
        if validate_mailbox_name(&to).is_err() {
            return Err(Kind::BadName);
        }
        if to == "INBOX" {
            return Err(Kind::MailboxExists);
        }
        let u = &mut self.users[user];
        if !u.boxes.contains_key(&from) {
            return Err(Kind::NoSuchMailbox);
        }
        if u.boxes.contains_key(&to) {
            return Err(Kind::MailboxExists);
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Kind::Refused);
        }
        let mut moves = vec![(from.clone(), to.clone())];
        if from != "INBOX" {
            // Children move along; INBOX's children stay (RFC 3501 6.3.5).
            let prefix = format!("{from}/");
            for child in u.boxes.keys().filter(|n| n.starts_with(&prefix)) {
                let new = format!("{to}{}", &child[from.len()..]);
                if u.boxes.contains_key(&new) {
                    return Err(Kind::MailboxExists);
                }
                moves.push((child.clone(), new));
            }
        }
        let moved: Vec<(String, MBox)> = moves
            .iter()
            .map(|(old, new)| (new.clone(), u.boxes.remove(old).expect("listed above")))
            .collect();
        u.boxes.extend(moved);
        if from == "INBOX" {
            // Renaming INBOX moves its messages and leaves a new, empty INBOX.
            u.boxes.insert("INBOX".to_string(), MBox::new());
        }
        Ok(Expect::Done)
    }

    fn append(&mut self, user: usize, raw: &str, msg: MMsg) -> Result<Expect, Kind> {
        let name = normalize_mailbox_name(raw);
        let b = self.users[user]
            .boxes
            .get_mut(&name)
            .ok_or(Kind::NoSuchMailbox)?;
        let uid = b.add(msg);
        Ok(Expect::Appended {
            uid: Uid(uid),
            uidvalidity: b.uidvalidity,
        })
    }

    fn store(
        &mut self,
        at: Option<(usize, String)>,
        uids: &[Uid],
        mode: FlagMode,
        flags: &Flags,
        since: Option<ModSeq>,
    ) -> Result<Expect, Kind> {
        let (user, name) = at.ok_or(Kind::NoSuchMailbox)?;
        let b = self.users[user].boxes.get_mut(&name).expect("resolved");
        let mut updated = Vec::new();
        let mut modified = Vec::new();
        for uid in dedup(uids) {
            let Some(m) = b.msgs.get_mut(&uid.0) else {
                continue;
            };
            if let Some(s) = since
                && m.modseq > s
            {
                modified.push(uid);
                continue;
            }
            let mut new = match mode {
                FlagMode::Replace => flags.clone(),
                FlagMode::Add => {
                    let mut f = m.flags.clone();
                    f.system.0 |= flags.system.0;
                    for k in &flags.keywords {
                        f.add_keyword(k);
                    }
                    f
                }
                FlagMode::Remove => {
                    let mut f = m.flags.clone();
                    f.system.0 &= !flags.system.0;
                    for k in &flags.keywords {
                        f.remove_keyword(k);
                    }
                    f
                }
            };
            new.system.0 &= SystemFlags::ALL;
            if new != m.flags {
                m.flags = new.clone();
                b.dirty.insert(uid.0);
            }
            updated.push((uid, new));
        }
        Ok(Expect::Stored { updated, modified })
    }

    fn expunge(
        &mut self,
        at: Option<(usize, String)>,
        uids: Option<&[Uid]>,
    ) -> Result<Expect, Kind> {
        let (user, name) = at.ok_or(Kind::NoSuchMailbox)?;
        let b = self.users[user].boxes.get_mut(&name).expect("resolved");
        let cands: Vec<u32> = match uids {
            Some(l) => dedup(l).iter().map(|u| u.0).collect(),
            None => b.msgs.keys().copied().collect(),
        };
        let mut gone: Vec<Uid> = cands
            .into_iter()
            .filter(|u| {
                b.msgs
                    .get(u)
                    .is_some_and(|m| m.flags.system.has(SystemFlags::DELETED))
            })
            .map(Uid)
            .collect();
        gone.sort();
        for u in &gone {
            b.msgs.remove(&u.0);
        }
        Ok(Expect::Expunged(gone))
    }

    fn copy(
        &mut self,
        at: Option<(usize, String)>,
        uids: &[Uid],
        to: &str,
        remove_source: bool,
    ) -> Result<Expect, Kind> {
        let (user, from) = at.ok_or(Kind::NoSuchMailbox)?;
        let to = normalize_mailbox_name(to);
        let u = &mut self.users[user];
        if !u.boxes.contains_key(&to) {
            return Err(Kind::NoSuchMailbox);
        }
        if to == from && remove_source {
            return Err(Kind::Refused);
        }
        let src = &u.boxes[&from];
        let recs: Vec<(u32, MMsg)> = dedup(uids)
            .iter()
            .filter_map(|uid| src.msgs.get(&uid.0).map(|m| (uid.0, m.clone())))
            .collect();
        let dst = u.boxes.get_mut(&to).expect("checked");
        let uidvalidity = dst.uidvalidity;
        let mut pairs = Vec::new();
        for (uid, m) in &recs {
            pairs.push((Uid(*uid), Uid(dst.add(m.clone()))));
        }
        if remove_source {
            let src = u.boxes.get_mut(&from).expect("exists");
            for (uid, _) in &recs {
                src.msgs.remove(uid);
            }
        }
        Ok(Expect::Copied { uidvalidity, pairs })
    }
}

// ---------------------------------------------------------------------------------------
// Running a sequence.

struct Run {
    env: Env,
    slot: Option<Slot>,
    model: Model,
    log: Vec<String>,
}

impl Run {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("open")
    }

    fn fail(&self, msg: String) -> ! {
        panic!("{msg}\nafter steps:\n  {}", self.log.join("\n  "))
    }

    fn step(&mut self, step: &Step) {
        if let Step::Reopen = step {
            self.log.push("Reopen".into());
            self.reopen();
            return;
        }
        let mut next = self.model.clone();
        let (op, expect) = self.resolve(step, &mut next);
        self.log.push(format!("{op:?}"));
        let got = self.slot().execute(op);
        match (expect, got) {
            (Err(k), Err(e)) => {
                if kind_of(&e) != Some(k) {
                    self.fail(format!("expected error {k:?}, store said {e:?}"));
                }
                // `next` is dropped: a failed op must write nothing, which the state
                // check below verifies against the unchanged model.
            }
            (Err(k), Ok(r)) => self.fail(format!("expected error {k:?}, store returned {r:?}")),
            (Ok(x), Err(e)) => self.fail(format!("expected {x:?}, store failed: {e:?}")),
            (Ok(x), Ok(r)) => {
                self.model = next;
                self.check_result(&x, &r);
                self.check_state();
                if let Expect::Mailbox(u, name) = &x {
                    let want =
                        OpResult::Mailbox(self.model.users[*u].boxes[name].id.expect("learned"));
                    if r != want {
                        self.fail(format!("create returned {r:?}, the mailbox is {want:?}"));
                    }
                }
                return;
            }
        }
        self.check_state();
    }

    /// Turns a step into a store op and the model's prediction (applied to `next`).
    fn resolve(&self, step: &Step, next: &mut Model) -> (Op, Result<Expect, Kind>) {
        let m = &self.model;
        match step {
            Step::EnsureUser { user } => (
                Op::EnsureUser {
                    user: USERS[*user].into(),
                },
                next.ensure_user(*user),
            ),
            Step::Create { user, name } => {
                let name = pick_name(m, *user, *name);
                let e = next.create(*user, &name);
                (
                    Op::CreateMailbox {
                        user: USERS[*user].into(),
                        name,
                        special_use: Vec::new(),
                    },
                    e,
                )
            }
            Step::Delete { user, name } => {
                let name = pick_name(m, *user, *name);
                let e = next.delete(*user, &name);
                (
                    Op::DeleteMailbox {
                        user: USERS[*user].into(),
                        name,
                    },
                    e,
                )
            }
            Step::Rename { user, from, to } => {
                let from = pick_name(m, *user, *from);
                let to = pick_name(m, *user, *to);
                let e = next.rename(*user, &from, &to);
                (
                    Op::RenameMailbox {
                        user: USERS[*user].into(),
                        from,
                        to,
                    },
                    e,
                )
            }
            Step::Append {
                user,
                name,
                body,
                flags,
                date,
            } => {
                let name = pick_existing(m, *user, *name);
                let blob = self.slot().put_blob(body).unwrap();
                let internaldate = InternalDate {
                    unix_secs: *date,
                    zone_minutes: (*date % 600) as i16,
                };
                let msg = MMsg {
                    flags: flags.flags(),
                    body: body.clone(),
                    date: internaldate,
                    modseq: ModSeq(0),
                };
                let e = next.append(*user, &name, msg);
                (
                    Op::Append {
                        user: USERS[*user].into(),
                        mailbox: name,
                        blob,
                        flags: flags.flags(),
                        internaldate,
                    },
                    e,
                )
            }
            Step::Store {
                user,
                mailbox,
                uids,
                mode,
                flags,
                since,
            } => {
                let (id, name) = pick_mailbox(m, *user, *mailbox);
                let b = name.as_ref().map(|n| &m.users[*user].boxes[n]);
                let uids = pick_uids(b, uids, m.ever(b));
                let since = since.map(|s| {
                    let mut c: BTreeSet<ModSeq> = [ModSeq(0)].into();
                    if let Some(b) = b {
                        c.extend(b.msgs.values().map(|m| m.modseq));
                        c.insert(b.highestmodseq);
                    }
                    let c: Vec<_> = c.into_iter().collect();
                    c[usize::from(s) % c.len()]
                });
                let flags = flags.flags();
                let e = next.store(name.map(|n| (*user, n)), &uids, *mode, &flags, since);
                (
                    Op::Store {
                        mailbox: id,
                        uids,
                        mode: *mode,
                        flags,
                        unchanged_since: since,
                    },
                    e,
                )
            }
            Step::Expunge {
                user,
                mailbox,
                uids,
            } => {
                let (id, name) = pick_mailbox(m, *user, *mailbox);
                let b = name.as_ref().map(|n| &m.users[*user].boxes[n]);
                let uids = uids.as_ref().map(|u| pick_uids(b, u, m.ever(b)));
                let e = next.expunge(name.map(|n| (*user, n)), uids.as_deref());
                (Op::Expunge { mailbox: id, uids }, e)
            }
            Step::Copy {
                user,
                from,
                uids,
                to,
                remove_source,
            } => {
                let (id, name) = pick_mailbox(m, *user, *from);
                let b = name.as_ref().map(|n| &m.users[*user].boxes[n]);
                let uids = pick_uids(b, uids, m.ever(b));
                let to = pick_existing(m, *user, *to);
                let e = next.copy(name.map(|n| (*user, n)), &uids, &to, *remove_source);
                (
                    Op::Copy {
                        from: id,
                        uids,
                        to,
                        remove_source: *remove_source,
                    },
                    e,
                )
            }
            Step::Reopen => unreachable!("handled by the caller"),
        }
    }

    fn check_result(&self, x: &Expect, r: &OpResult) {
        let ok = match (x, r) {
            (Expect::Done, OpResult::Done) => true,
            (Expect::Mailbox(..), OpResult::Mailbox(_)) => true, // compared after learning
            (
                Expect::Appended { uid, uidvalidity },
                OpResult::Appended {
                    uid: u,
                    uidvalidity: v,
                    ..
                },
            ) => uid == u && uidvalidity.is_none_or(|x| x == *v),
            (
                Expect::Stored { updated, modified },
                OpResult::Stored {
                    updated: u,
                    modified: m,
                    ..
                },
            ) => {
                modified == m
                    && updated.len() == u.len()
                    && updated
                        .iter()
                        .zip(u)
                        .all(|((a, f), (b, _, g))| a == b && f == g)
            }
            (Expect::Expunged(a), OpResult::Expunged(b)) => a == b,
            (
                Expect::Copied { uidvalidity, pairs },
                OpResult::Copied {
                    uidvalidity: v,
                    pairs: p,
                },
            ) => pairs == p && uidvalidity.is_none_or(|x| x == *v),
            _ => false,
        };
        if !ok {
            self.fail(format!("model expected {x:?}, store returned {r:?}"));
        }
    }

    /// Compares everything the store shows with the model, learning ids, uidvalidities
    /// and modseqs of new or changed messages after checking them against the rules.
    fn check_state(&mut self) {
        let view = self.slot().view();
        let mut model = std::mem::take(&mut self.model);
        let mut errs: Vec<String> = Vec::new();
        macro_rules! want {
            ($cond:expr, $($fmt:tt)+) => {
                if !$cond {
                    errs.push(format!($($fmt)+));
                }
            };
        }
        for (ui, user) in USERS.iter().enumerate() {
            let mu = &mut model.users[ui];
            want!(
                view.user_exists(user).unwrap() == mu.exists,
                "user {user} exists: store {} model {}",
                !mu.exists,
                mu.exists
            );
            let headers = view.mailboxes(user).unwrap();
            let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
            let want_names: Vec<&str> = mu.boxes.keys().map(String::as_str).collect();
            if names != want_names {
                errs.push(format!(
                    "{user}: store has mailboxes {names:?}, model {want_names:?}"
                ));
                continue;
            }
            for h in &headers {
                let b = mu.boxes.get_mut(&h.name).expect("names equal");
                let at = format!("{user} {} (id {})", h.name, h.id.0);
                want!(
                    h.user == *user && h.name == normalize_mailbox_name(&h.name),
                    "{at}: header {h:?}"
                );
                match b.id {
                    None => {
                        want!(
                            !model.ever_ids.contains(&h.id),
                            "{at}: mailbox id {} reused",
                            h.id.0
                        );
                        model.ever_ids.insert(h.id);
                        b.id = Some(h.id);
                        let seen = model.uidvalidities.entry((ui, h.name.clone())).or_default();
                        want!(
                            !seen.contains(&h.uidvalidity),
                            "{at}: new mailbox reuses UIDVALIDITY {} seen at this name before",
                            h.uidvalidity.0
                        );
                        b.uidvalidity = Some(h.uidvalidity);
                    }
                    Some(id) => {
                        want!(h.id == id, "{at}: model id is {}", id.0);
                        want!(
                            Some(h.uidvalidity) == b.uidvalidity,
                            "{at}: UIDVALIDITY changed from {:?} to {}",
                            b.uidvalidity,
                            h.uidvalidity.0
                        );
                    }
                }
                model
                    .uidvalidities
                    .entry((ui, h.name.clone()))
                    .or_default()
                    .insert(h.uidvalidity);
                want!(
                    h.uidnext.0 == b.uidnext,
                    "{at}: uidnext {} model {}",
                    h.uidnext.0,
                    b.uidnext
                );
                want!(
                    h.highestmodseq >= b.highestmodseq,
                    "{at}: highestmodseq went down from {} to {}",
                    b.highestmodseq.0,
                    h.highestmodseq.0
                );

                let entries = view.messages(h).unwrap();
                let mut recs = Vec::new();
                for e in entries {
                    match e {
                        Ok(r) => recs.push(r),
                        Err(c) => errs.push(format!("{at}: corrupt entry {c:?}")),
                    }
                }
                let uids: Vec<u32> = recs.iter().map(|r| r.uid.0).collect();
                want!(
                    uids.windows(2).all(|w| w[0] < w[1]),
                    "{at}: uids not increasing: {uids:?}"
                );
                let want_uids: Vec<u32> = b.msgs.keys().copied().collect();
                want!(
                    uids == want_uids,
                    "{at}: store uids {uids:?}, model {want_uids:?}"
                );

                let ever = model.ever_uids.entry(h.id).or_default();
                let (mut exists, mut unseen, mut size, mut digest) = (0u32, 0u32, 0u64, 0u32);
                for r in &recs {
                    exists += 1;
                    if !r.flags.system.has(SystemFlags::SEEN) {
                        unseen += 1;
                    }
                    size += u64::from(r.size);
                    digest ^= r.digest();
                    want!(
                        r.uid < h.uidnext,
                        "{at}: uid {} not below uidnext {}",
                        r.uid.0,
                        h.uidnext.0
                    );
                    want!(
                        r.modseq <= h.highestmodseq,
                        "{at}: uid {} modseq {} above highestmodseq {}",
                        r.uid.0,
                        r.modseq.0,
                        h.highestmodseq.0
                    );
                    if b.fresh.contains(&r.uid.0) {
                        want!(!ever.contains(&r.uid.0), "{at}: uid {} reused", r.uid.0);
                    } else {
                        want!(
                            ever.contains(&r.uid.0),
                            "{at}: uid {} appeared from nowhere",
                            r.uid.0
                        );
                    }
                    ever.insert(r.uid.0);
                    let Some(m) = b.msgs.get_mut(&r.uid.0) else {
                        continue;
                    };
                    want!(
                        r.flags == m.flags,
                        "{at}: uid {} flags {:?} model {:?}",
                        r.uid.0,
                        r.flags,
                        m.flags
                    );
                    want!(
                        r.blob == BlobHash::of(&m.body) && r.size as usize == m.body.len(),
                        "{at}: uid {} blob {:?}/{} model {:?}/{}",
                        r.uid.0,
                        r.blob,
                        r.size,
                        BlobHash::of(&m.body),
                        m.body.len()
                    );
                    want!(
                        r.internaldate == m.date,
                        "{at}: uid {} internaldate {:?}",
                        r.uid.0,
                        r.internaldate
                    );
                    if b.dirty.contains(&r.uid.0) {
                        want!(
                            r.modseq > b.highestmodseq,
                            "{at}: uid {} changed but its modseq {} is not above the previous highestmodseq {}",
                            r.uid.0,
                            r.modseq.0,
                            b.highestmodseq.0
                        );
                    } else {
                        want!(
                            r.modseq == m.modseq,
                            "{at}: uid {} unchanged but modseq moved {} -> {}",
                            r.uid.0,
                            m.modseq.0,
                            r.modseq.0
                        );
                    }
                    m.modseq = r.modseq;
                    match self.slot().read_blob(&r.blob, &ReadContext::default()) {
                        Ok(bytes) => want!(bytes == m.body, "{at}: uid {} bytes differ", r.uid.0),
                        Err(e) => errs.push(format!("{at}: uid {} read_blob: {e}", r.uid.0)),
                    }
                }
                want!(
                    h.exists == exists && h.unseen == unseen && h.size_bytes == size,
                    "{at}: header exists/unseen/size {}/{}/{} but records say {exists}/{unseen}/{size}",
                    h.exists,
                    h.unseen,
                    h.size_bytes
                );
                want!(
                    h.digest == digest,
                    "{at}: header digest {:08x} but records XOR to {digest:08x}",
                    h.digest
                );

                // The change log: one Changed entry per live record at its modseq, one
                // Expunged tombstone per uid that was assigned and is gone.
                let changes = view.changes_since(h.id, ModSeq(0)).unwrap();
                want!(
                    changes.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{at}: changes not in modseq order"
                );
                let changed: BTreeMap<u32, ModSeq> = changes
                    .iter()
                    .filter(|c| c.2 == ChangeKind::Changed)
                    .map(|c| (c.0.0, c.1))
                    .collect();
                let live: BTreeMap<u32, ModSeq> =
                    recs.iter().map(|r| (r.uid.0, r.modseq)).collect();
                want!(
                    changed == live,
                    "{at}: changes {changed:?} but records {live:?}"
                );
                let vanished: Vec<u32> = changes
                    .iter()
                    .filter(|c| c.2 == ChangeKind::Expunged)
                    .map(|c| c.0.0)
                    .collect();
                let gone: Vec<u32> = ever
                    .iter()
                    .copied()
                    .filter(|u| !live.contains_key(u))
                    .collect();
                let mut vanished_sorted = vanished.clone();
                vanished_sorted.sort();
                want!(
                    vanished_sorted == gone,
                    "{at}: tombstones {vanished:?} but expunged uids {gone:?}"
                );
                want!(
                    changes.iter().all(|c| c.1 <= h.highestmodseq),
                    "{at}: a change is above highestmodseq"
                );

                b.highestmodseq = h.highestmodseq;
                b.dirty.clear();
                b.fresh.clear();
            }
        }
        self.model = model;
        let alerts: Vec<_> = self
            .env
            .alerts()
            .into_iter()
            .map(|a| a.to_string())
            .collect();
        want!(alerts.is_empty(), "alerts raised: {alerts:?}");
        if !errs.is_empty() {
            self.fail(errs.join("\n"));
        }
    }

    /// Everything a client could see, in a comparable form.
    fn dump(&self) -> String {
        let view = self.slot().view();
        let mut out = String::new();
        for user in USERS {
            out += &format!("user {user} {:?}\n", view.user(user).unwrap());
            out += &format!("  subs {:?}\n", view.subscriptions(user).unwrap());
            for h in view.mailboxes(user).unwrap() {
                out += &format!("  {h:?}\n");
                for e in view.messages(&h).unwrap() {
                    out += &format!("    {e:?}\n");
                }
                out += &format!(
                    "    changes {:?}\n",
                    view.changes_since(h.id, ModSeq(0)).unwrap()
                );
            }
        }
        out
    }

    fn reopen(&mut self) {
        let before = self.dump();
        self.slot = None;
        self.slot = Some(
            self.env
                .open()
                .unwrap_or_else(|e| self.fail(format!("reopen failed: {e}"))),
        );
        let after = self.dump();
        if before != after {
            self.fail(format!(
                "state changed across reopen:\nbefore:\n{before}\nafter:\n{after}"
            ));
        }
        self.check_state();
    }
}

fn run(steps: &[Step]) -> Run {
    let env = Env::new("model");
    let slot = env.create("model");
    let mut r = Run {
        env,
        slot: Some(slot),
        model: Model::default(),
        log: Vec::new(),
    };
    r.check_state();
    // Most sequences are about alice's mail: make sure she exists from the start.
    r.step(&Step::EnsureUser { user: 0 });
    for s in steps {
        r.step(s);
    }
    r.reopen();
    r
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=2000 for a longer hunt; 64 keeps `cargo test` quick.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(steps in proptest::collection::vec(step_strategy(), 1..60)) {
        run(&steps);
    }
}

/// Hand-written sequences for the cases the model must cover even if the generator is
/// unlucky: INBOX rename, hierarchy rename, delete + re-create, and a move.
#[test]
fn model_fixed_sequences() {
    let f = |system| FlagSel {
        system,
        keywords: vec![2],
    };
    let p = |i: u8| POOL_DIRECT + i;
    let (inbox, a, a_b, b, c, inbox_x) = (p(0), p(4), p(5), p(7), p(9), p(10));
    let steps = vec![
        Step::Create { user: 0, name: a },
        Step::Create { user: 0, name: a_b },
        Step::Create {
            user: 0,
            name: inbox_x,
        },
        Step::Append {
            user: 0,
            name: inbox,
            body: b"one".to_vec(),
            flags: f(0),
            date: 1,
        },
        Step::Append {
            user: 0,
            name: inbox,
            body: b"one".to_vec(),
            flags: f(1),
            date: 2,
        },
        Step::Append {
            user: 0,
            name: a_b,
            body: b"two".to_vec(),
            flags: f(8),
            date: 3,
        },
        // INBOX moves to c with its messages; INBOX/x stays; a new empty INBOX appears.
        Step::Rename {
            user: 0,
            from: inbox,
            to: c,
        },
        Step::Reopen,
        // a/b moves along to b/b, keeping its UIDVALIDITY.
        Step::Rename {
            user: 0,
            from: a,
            to: b,
        },
        // Repeated uids must count once.
        Step::Store {
            user: 0,
            mailbox: c,
            uids: vec![0, 1, 0],
            mode: FlagMode::Add,
            flags: f(8),
            since: Some(200),
        },
        Step::Copy {
            user: 0,
            from: c,
            uids: vec![0, 1, 1],
            to: inbox,
            remove_source: true,
        },
        Step::Expunge {
            user: 0,
            mailbox: inbox,
            uids: Some(vec![0, 0]),
        },
        Step::Expunge {
            user: 0,
            mailbox: inbox,
            uids: None,
        },
        // Re-created under an old name: a new UIDVALIDITY.
        Step::Delete { user: 0, name: c },
        Step::Create { user: 0, name: c },
        Step::Reopen,
    ];
    let r = run(&steps);
    let alice = &r.model.users[0].boxes;
    let names: Vec<&str> = alice.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Archive", "Drafts", "INBOX", "INBOX/x", "Junk", "Sent", "Trash", "b", "b/b", "c"
        ]
    );
    assert_eq!(alice["b/b"].msgs.len(), 1, "a/b's message moved with it");
    assert_eq!(
        alice["INBOX"].uidnext, 3,
        "two messages were moved into the new INBOX"
    );
    assert!(alice["c"].msgs.is_empty() && alice["c"].uidnext == 1);
}

/// Regression: a uid named twice in one request (`1,1` or `1:3,2` from a client) used to
/// apply its header delta twice (unseen and exists went wrong, the digest stopped
/// matching the records) and MOVE copied the message twice.
#[test]
fn repeated_uids_in_one_request_count_once() {
    let env = Env::new("repeat");
    let slot = env.create("repeat");
    let user = USERS[0];
    slot.execute(Op::EnsureUser { user: user.into() }).unwrap();
    for i in 0..2 {
        let blob = slot.put_blob(format!("m{i}").as_bytes()).unwrap();
        slot.execute(Op::Append {
            user: user.into(),
            mailbox: "INBOX".into(),
            blob,
            flags: Flags::default(),
            internaldate: InternalDate::default(),
        })
        .unwrap();
    }
    let consistent = |name: &str| {
        let view = slot.view();
        let h = view.mailbox_by_name(user, name).unwrap().unwrap();
        let recs: Vec<MessageRecord> = view
            .messages(&h)
            .unwrap()
            .into_iter()
            .map(|e| e.unwrap())
            .collect();
        let unseen = recs
            .iter()
            .filter(|r| !r.flags.system.has(SystemFlags::SEEN))
            .count();
        assert_eq!(h.exists as usize, recs.len(), "{name}: exists");
        assert_eq!(h.unseen as usize, unseen, "{name}: unseen");
        assert_eq!(
            h.digest,
            recs.iter().fold(0, |a, r| a ^ r.digest()),
            "{name}: digest"
        );
        h
    };
    let id = consistent("INBOX").id;
    let r = slot
        .execute(Op::Store {
            mailbox: id,
            uids: vec![Uid(1), Uid(1)],
            mode: FlagMode::Add,
            flags: Flags::new(SystemFlags::SEEN | SystemFlags::DELETED, []),
            unchanged_since: None,
        })
        .unwrap();
    assert!(
        matches!(r, OpResult::Stored { ref updated, .. } if updated.len() == 1),
        "{r:?}"
    );
    consistent("INBOX");
    let r = slot
        .execute(Op::Expunge {
            mailbox: id,
            uids: Some(vec![Uid(1), Uid(1)]),
        })
        .unwrap();
    assert_eq!(r, OpResult::Expunged(vec![Uid(1)]));
    assert_eq!(consistent("INBOX").exists, 1);
    let r = slot
        .execute(Op::Copy {
            from: id,
            uids: vec![Uid(2), Uid(2)],
            to: "Trash".into(),
            remove_source: true,
        })
        .unwrap();
    assert!(
        matches!(r, OpResult::Copied { ref pairs, .. } if pairs == &[(Uid(2), Uid(1))]),
        "{r:?}"
    );
    assert_eq!(consistent("INBOX").exists, 0);
    assert_eq!(consistent("Trash").exists, 1);
}
