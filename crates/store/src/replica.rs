//! The store's side of replication (DESIGN "Replication", invariants 1, 5, 6): what a
//! master reads to describe a slot copy, the ops a replica applies, the split-brain
//! reconcile op, the epoch op, and the commit hook through which `durability = "replica"`
//! holds acknowledgements. The protocol itself lives in `crates/replication`; this module
//! knows records and keys, never sockets.
//!
//! # What is replicated
//! Per user: the rows of every per-user keyspace (`users`, `subscriptions`, and any added
//! later: list them in [`UserKeyspace`]), the user's mailbox headers, and per mailbox the
//! message records and expunge tombstones. Slot-wide: the id counters (max-merged so a
//! promoted replica never hands out an id already used). `names` rows are rebuilt on the
//! replica from the headers; derived header fields (exists, unseen, size, digest) are
//! recomputed by the replica from what it holds and compared with the master's.
//!
//! # Verification
//! Records travel as the sealed bytes the master stored (CRC32C over key and value,
//! computed when first written): the replica decodes every one through the codec before
//! writing the same bytes, so a record damaged anywhere on the way is refused. A blob is
//! written only if its BLAKE3 equals its name ([`Slot::put_blob_verified`]). A batch is one
//! KV transaction; a mailbox whose recomputed digest differs from the master's is left
//! untouched and reported ([`MailboxOutcome::Mismatch`]) so the master falls back to a
//! full compare.
//!
//! # Tombstones
//! An expunge tombstone (`changes` kind 1) carries the expunged message's BLAKE3 after the
//! kind byte, so a full compare can tell "expunged here" from "a different message that
//! got the same UID on the other side of a split brain". A deleted mailbox leaves a
//! tombstone `changes/<id><u64::MAX><uid 0>` (kind 1, no hash): "deleted here" versus
//! "never seen here".

use crate::codec::{Dec, Enc};
use crate::error::StoreError;
use crate::events::Event;
use crate::header::SlotHeader;
use crate::records::*;
use crate::slot::{ChangeNotice, Shared, Slot, SlotView, StagedBlob};
use crate::types::*;
use crate::writer::{CTR_MAILBOX_ID, CTR_UIDVALIDITY, NewMessage, Op, OpResult};
use fjall::{Keyspace, OwnedWriteBatch, Readable};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Bounds on one replica batch (the replica refuses bigger ones): records and tombstones
/// per batch, users per batch. A modseq group larger than the page size still travels
/// whole (one COPY of a huge mailbox), so the record bound is generous.
pub const BATCH_RECORDS_MAX: usize = 1_000_000;
pub const BATCH_USERS_MAX: usize = 10_000;

/// Called by a slot's writer around each group commit. Replication installs one on a
/// master copy ([`Slot::set_commit_hook`]).
pub trait CommitHook: Send + Sync + 'static {
    /// Before a request is applied. `Err(reason)` refuses it (nothing written): a strict
    /// `durability = "replica"` slot with no replica, or a master fenced by a higher epoch.
    fn admit(&self, op: &Op) -> Result<(), String>;
    /// After the group's journal fsync and snapshot publish, before any reply. May block
    /// (the writer waits; the next group grows meanwhile). `Err(reason)` turns the group's
    /// successful replies into `StoreError::Unavailable` — the writes stay durable here, but
    /// nobody is told OK (a strict slot whose replica did not confirm in time).
    fn committed(&self, group: &CommittedGroup) -> Result<(), String>;
}

/// What one group commit changed, as replication needs it.
#[derive(Debug, Clone, Default)]
pub struct CommittedGroup {
    /// Numbers groups that wrote something, from 1, per open of the slot.
    pub seq: u64,
    /// Requests of the group that wrote something.
    pub ops: usize,
    /// Users whose data changed (sorted, distinct).
    pub users: Vec<String>,
    /// Something was written that no user is known for (a repair, a test hook): only a
    /// full compare is sure to cover it.
    pub unattributed: bool,
    /// Requests of the group issued by replication itself (`Reconcile`): a hook must not
    /// hold them for a replica, as the thread waiting for them is the one that would ack.
    pub internal: usize,
}

/// Writer side: notes what a successful, non-empty request changed.
pub(crate) fn note_changed(op: &Op, notices: &[ChangeNotice], group: &mut CommittedGroup) {
    group.ops += 1;
    for n in notices {
        group.users.push(n.user.clone());
    }
    match op {
        Op::EnsureUser { user }
        | Op::PurgeUser { user }
        | Op::CreateMailbox { user, .. }
        | Op::DeleteMailbox { user, .. }
        | Op::RenameMailbox { user, .. }
        | Op::Subscribe { user, .. }
        | Op::SetQuota { user, .. }
        | Op::RecordInsecureLogin { user, .. }
        | Op::Append { user, .. }
        | Op::AppendMany { user, .. } => group.users.push(user.clone()),
        Op::Reconcile(_) => group.internal += 1,
        Op::ByReplication(inner) => {
            let before = group.ops;
            note_changed(inner, notices, group);
            // Counted once, as internal.
            group.ops = before + 1;
            group.internal += 1;
        }
        // Replicated data arriving, and slot-level state that travels with every batch.
        Op::ApplyReplica(_) | Op::SetEpoch { .. } | Op::InitCounters { .. } => group.internal += 1,
        _ => {
            if notices.is_empty() {
                group.unattributed = true;
            }
        }
    }
}

/// Writer side: numbers the group and runs the hook.
pub(crate) fn after_commit(
    shared: &Shared,
    hook: &dyn CommitHook,
    mut group: CommittedGroup,
) -> Result<(), String> {
    group.users.sort();
    group.users.dedup();
    group.seq = shared.commit_seq.fetch_add(1, Ordering::AcqRel) + 1;
    hook.committed(&group)
}

// ---- what travels ------------------------------------------------------------------

/// A keyspace whose rows belong to one user and are replicated as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserKeyspace {
    /// Key: the user name exactly. Value: `UserRecord`.
    Users,
    /// Key: user `\0` mailbox name. Value: empty.
    Subscriptions,
    /// Key: user `\0` protocol. Value: `InsecureLogin` (TLS policy).
    InsecureLogins,
}

impl UserKeyspace {
    pub const ALL: [UserKeyspace; 3] = [
        UserKeyspace::Users,
        UserKeyspace::Subscriptions,
        UserKeyspace::InsecureLogins,
    ];

    pub fn code(self) -> u8 {
        match self {
            UserKeyspace::Users => 1,
            UserKeyspace::Subscriptions => 2,
            UserKeyspace::InsecureLogins => 3,
        }
    }

    pub fn from_code(c: u8) -> Option<UserKeyspace> {
        UserKeyspace::ALL.into_iter().find(|k| k.code() == c)
    }

    fn keyspace(self, s: &Shared) -> &Keyspace {
        match self {
            UserKeyspace::Users => &s.ks.users,
            UserKeyspace::Subscriptions => &s.ks.subs,
            UserKeyspace::InsecureLogins => &s.ks.insecure,
        }
    }

    /// True if `key` is one of `user`'s rows in this keyspace.
    fn owns(self, user: &str, key: &[u8]) -> bool {
        match self {
            UserKeyspace::Users => key == user.as_bytes(),
            UserKeyspace::Subscriptions | UserKeyspace::InsecureLogins => {
                key.starts_with(&user_prefix(user))
            }
        }
    }

    fn prefix(self, user: &str) -> Vec<u8> {
        match self {
            UserKeyspace::Users => user.as_bytes().to_vec(),
            UserKeyspace::Subscriptions | UserKeyspace::InsecureLogins => user_prefix(user),
        }
    }

    /// Decodes the sealed row (CRC and content) as its keyspace defines it.
    fn verify(self, user: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if !self.owns(user, key) {
            return Err(StoreError::corrupt_record(
                key,
                "row does not belong to the user",
            ));
        }
        match self {
            UserKeyspace::Users => {
                let r = UserRecord::decode(key, value)?;
                if r.user != user {
                    return Err(StoreError::corrupt_record(key, "record names another user"));
                }
                Ok(())
            }
            UserKeyspace::Subscriptions => check_empty(key, value),
            UserKeyspace::InsecureLogins => {
                let r = InsecureLogin::decode(key, value)?;
                if r.user != user {
                    return Err(StoreError::corrupt_record(key, "record names another user"));
                }
                Ok(())
            }
        }
    }
}

/// One sealed row of a per-user keyspace, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub keyspace: UserKeyspace,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A user's data in one copy, every part verified on read.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    pub user: String,
    pub rows: Vec<UserRow>,
    /// Headers of the mailboxes the user's `names` rows point at, with their sealed bytes.
    pub mailboxes: Vec<(MailboxHeader, Vec<u8>)>,
    /// False if a row, name or header failed verification: what is missing from this state
    /// may exist, so nothing may be concluded from its absence.
    pub complete: bool,
}

/// The slot-wide id counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub next_mailbox_id: u64,
    pub next_uidvalidity: u64,
}

/// A message record as listed for a compare: decoded and with its sealed bytes, or the uid
/// of one that failed its CRC.
#[derive(Debug, Clone)]
pub enum RecordEntry {
    Good(MessageRecord, Vec<u8>),
    Corrupt(Uid),
}

/// One entry of a mailbox's change log, resolved.
#[derive(Debug, Clone)]
pub enum Change {
    /// Appended or flags changed: the record as it is now, with its sealed bytes.
    Record(MessageRecord, Vec<u8>),
    Expunged(Expunge),
    /// The record (or its change entry) failed verification: it is not sent.
    Corrupt {
        uid: Uid,
        detail: String,
    },
}

/// An expunge, as a tombstone says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expunge {
    pub uid: Uid,
    pub modseq: ModSeq,
    /// BLAKE3 of the expunged message; `None` for tombstones written before hashes were
    /// kept, and for expunges of messages the other side never described.
    pub blob: Option<BlobHash>,
}

/// A bounded run of a mailbox's change log.
#[derive(Debug, Clone, Default)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// The page ends at a modseq boundary below the end of the log: more follow.
    pub truncated: bool,
}

/// Everything a replica applies in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaBatch {
    /// The master's epoch; must equal the replica's (adopt a higher one with
    /// [`Op::SetEpoch`] first). Lower is refused: fencing, DESIGN invariant 6.
    pub epoch: Epoch,
    /// The master's counters, max-merged.
    pub counters: Counters,
    /// Mailboxes deleted on the master (each leaves a tombstone here too). Applied first.
    pub delete_mailboxes: Vec<MailboxId>,
    pub mailboxes: Vec<MailboxUpdate>,
    /// Applied last: rows, then `names` rebuilt from the headers.
    pub users: Vec<UserUpdate>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub user: String,
    /// The complete set of the user's per-user rows on the master; `None` leaves them (the
    /// master could not read them all). No `users` row means the user is gone.
    pub rows: Option<Vec<UserRow>>,
    /// The user's mailbox ids on the master (for rebuilding `names`).
    pub mailboxes: Vec<MailboxId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxUpdate {
    pub id: MailboxId,
    /// The master's header, sealed (decoded and CRC-checked here).
    pub header: Vec<u8>,
    /// Every master change at or below this modseq is in this update or already here.
    /// Equal to the header's highestmodseq on the last page: then the recomputed digest
    /// must equal the master's.
    pub upto: ModSeq,
    /// The master left out changes it could not read (damaged there): apply the rest and
    /// do not expect the digest to match. The replica keeps whatever it has for those.
    pub partial: bool,
    /// Sealed message records, as the master stores them.
    pub upserts: Vec<(Uid, Vec<u8>)>,
    pub expunges: Vec<Expunge>,
}

/// What became of one mailbox of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxOutcome {
    /// Written. `complete`: this was the last page and the digest matched.
    Applied { digest: u32, complete: bool },
    /// Nothing written: what the update would leave differs from the master's header.
    Mismatch { digest: u32, detail: String },
    /// Nothing written: this copy holds UIDs or MODSEQs beyond the master's (it was a
    /// master the current one never heard from). The master must reconcile.
    Ahead { uidnext: Uid, highestmodseq: ModSeq },
    /// Nothing written: the update would replace or expunge a different message than the
    /// one this copy holds at `uid` (a split brain). The master must full-compare.
    Divergent { uid: Uid },
    /// Nothing written: a record names a blob this copy does not have.
    MissingBlob(BlobHash),
    /// Nothing written: the update itself is malformed or failed verification.
    Invalid(String),
}

/// A split-brain repair on the master (DESIGN invariant 5): raise the mailbox's uidnext and
/// highestmodseq above anything the other copy used, move the master's own messages whose
/// UIDs the other copy gave to different messages to fresh UIDs, and append the other
/// copy's messages the master never saw, with fresh UIDs. Nothing is dropped and
/// UIDVALIDITY is unchanged.
#[derive(Debug, Clone)]
pub struct ReconcilePlan {
    pub mailbox: MailboxId,
    /// Guards against the mailbox having been recreated since the plan was made.
    pub uidvalidity: UidValidity,
    pub uidnext_at_least: Uid,
    /// highestmodseq ends strictly above this.
    pub modseq_above: ModSeq,
    pub renumber: Vec<Uid>,
    /// Blobs must be staged and their directories synced ([`Slot::sync_blob_dirs`]).
    pub appends: Vec<NewMessage>,
}

// ---- keys and values ---------------------------------------------------------------

/// The tombstone of a deleted mailbox (see the module doc).
pub(crate) fn mailbox_tombstone_key(id: MailboxId) -> [u8; 20] {
    change_key(id, ModSeq(u64::MAX), Uid(0))
}

pub(crate) fn encode_mailbox_tombstone(key: &[u8]) -> Vec<u8> {
    encode_change(key, ChangeKind::Expunged)
}

/// An expunge tombstone: kind 1, then the expunged message's BLAKE3.
pub(crate) fn encode_tombstone(key: &[u8], blob: Option<&BlobHash>) -> Vec<u8> {
    match blob {
        Some(h) => Enc::new().u8(1).raw(&h.0).seal(key),
        None => encode_change(key, ChangeKind::Expunged),
    }
}

/// The hash a tombstone carries, if any (the value is verified first).
fn tombstone_hash(key: &[u8], v: &[u8]) -> Result<Option<BlobHash>, StoreError> {
    let mut d = Dec::open(key, v)?;
    d.u8()?;
    Ok(d.raw(32)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(BlobHash))
}

fn parse_change_key(k: &[u8]) -> Option<(MailboxId, ModSeq, Uid)> {
    if k.len() != 20 {
        return None;
    }
    let id = u64::from_be_bytes(k[..8].try_into().ok()?);
    let m = u64::from_be_bytes(k[8..16].try_into().ok()?);
    let u = u32::from_be_bytes(k[16..20].try_into().ok()?);
    Some((MailboxId(id), ModSeq(m), Uid(u)))
}

fn add_to(h: &mut MailboxHeader, r: &MessageRecord) {
    h.exists += 1;
    if !r.flags.system.has(SystemFlags::SEEN) {
        h.unseen += 1;
    }
    h.size_bytes += u64::from(r.size);
    h.digest ^= r.digest();
}

fn take_from(h: &mut MailboxHeader, r: &MessageRecord) {
    h.exists = h.exists.saturating_sub(1);
    if !r.flags.system.has(SystemFlags::SEEN) {
        h.unseen = h.unseen.saturating_sub(1);
    }
    h.size_bytes = h.size_bytes.saturating_sub(u64::from(r.size));
    h.digest ^= r.digest();
}

// ---- reads (master and replica) ----------------------------------------------------

impl SlotView {
    fn alert_here(&self, kind: &str, e: &StoreError, user: Option<&str>) {
        let mut ev = Event::alert(kind, e.to_string());
        ev.user = user.map(str::to_string);
        self.shared.alert(ev);
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        let read = |key: &[u8]| -> Result<u64, StoreError> {
            match self.snap.get(&self.shared.ks.counters, key)? {
                Some(v) => decode_u64(key, &v),
                None => Ok(0),
            }
        };
        Ok(Counters {
            next_mailbox_id: read(CTR_MAILBOX_ID)?,
            next_uidvalidity: read(CTR_UIDVALIDITY)?,
        })
    }

    /// Up to `limit` user names after `after` (exclusive), in order. Names are read from
    /// keys, so a damaged user record is still listed.
    pub fn users_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let start = match after {
            // No user name contains NUL, so `after\0` is the first key after `after`.
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for kv in self.snap.range(&self.shared.ks.users, start..).take(limit) {
            let k = kv.key()?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// The user's rows and mailbox headers, each verified. Damage is alerted and makes the
    /// state incomplete; it never fails the call.
    pub fn user_state(&self, user: &str) -> Result<UserState, StoreError> {
        let mut st = UserState {
            user: user.to_string(),
            complete: true,
            ..UserState::default()
        };
        for ks in UserKeyspace::ALL {
            let tree = ks.keyspace(&self.shared);
            let rows: Vec<_> = match ks {
                UserKeyspace::Users => self
                    .snap
                    .get(tree, user.as_bytes())?
                    .map(|v| (user.as_bytes().to_vec(), v.to_vec()))
                    .into_iter()
                    .collect(),
                _ => self
                    .snap
                    .prefix(tree, ks.prefix(user))
                    .map(|kv| kv.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()?,
            };
            for (key, value) in rows {
                match ks.verify(user, &key, &value) {
                    Ok(()) => st.rows.push(UserRow {
                        keyspace: ks,
                        key,
                        value,
                    }),
                    Err(e) => {
                        self.alert_here("corrupt_record", &e, Some(user));
                        st.complete = false;
                    }
                }
            }
        }
        for kv in self.snap.prefix(&self.shared.ks.names, user_prefix(user)) {
            let (k, v) = kv.into_inner()?;
            let id = match decode_u64(&k, &v) {
                Ok(id) => MailboxId(id),
                Err(e) => {
                    self.alert_here("corrupt_record", &e, Some(user));
                    st.complete = false;
                    continue;
                }
            };
            let key = mailbox_key(id);
            match self.snap.get(&self.shared.ks.mailboxes, key)? {
                None => st.complete = false,
                Some(v) => match MailboxHeader::decode(&key, &v) {
                    Ok(h) if h.user == user => st.mailboxes.push((h, v.to_vec())),
                    Ok(_) => st.complete = false,
                    Err(e) => {
                        self.alert_here("corrupt_record", &e, Some(user));
                        st.complete = false;
                    }
                },
            }
        }
        Ok(st)
    }

    /// Up to `limit` message records of a mailbox from uid `from` on, in UID order, and the
    /// uid to continue from (`None` at the end). Damaged records are listed as corrupt and
    /// alerted.
    pub fn record_entries(
        &self,
        mailbox: MailboxId,
        from: Uid,
        limit: usize,
    ) -> Result<(Vec<RecordEntry>, Option<Uid>), StoreError> {
        let start = message_key(mailbox, from);
        let end = message_key(mailbox, Uid(u32::MAX));
        let mut out = Vec::new();
        let mut last = None;
        for kv in self
            .snap
            .range(&self.shared.ks.messages, start..=end)
            .take(limit.max(1))
        {
            let (k, v) = kv.into_inner()?;
            let uid = uid_of_message_key(&k).unwrap_or(Uid(0));
            last = Some(uid);
            match MessageRecord::decode(&k, &v) {
                Ok(r) => out.push(RecordEntry::Good(r, v.to_vec())),
                Err(e) => {
                    self.alert_here("corrupt_record", &e, None);
                    out.push(RecordEntry::Corrupt(uid));
                }
            }
        }
        let next = match last {
            Some(u) if out.len() >= limit.max(1) && u.0 < u32::MAX => Some(Uid(u.0 + 1)),
            _ => None,
        };
        Ok((out, next))
    }

    /// The mailbox's changes with modseq above `since`, in modseq order, each resolved to
    /// the record as it is now or the tombstone. At most about `limit` entries, cut only
    /// between two modseqs (a modseq's changes always travel together).
    pub fn changes_after(
        &self,
        mailbox: MailboxId,
        since: ModSeq,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        let start = change_key(mailbox, ModSeq(since.0.saturating_add(1)), Uid(0));
        // The mailbox tombstone sits at u64::MAX: never part of a mailbox's log.
        let end = change_key(mailbox, ModSeq(u64::MAX - 1), Uid(u32::MAX));
        let mut page = ChangesPage::default();
        let mut last_modseq = None;
        for kv in self.snap.range(&self.shared.ks.changes, start..=end) {
            let (k, v) = kv.into_inner()?;
            let Some((_, modseq, uid)) = parse_change_key(&k) else {
                continue;
            };
            if page.changes.len() >= limit && last_modseq != Some(modseq) {
                page.truncated = true;
                break;
            }
            last_modseq = Some(modseq);
            match decode_change(&k, &v) {
                Ok(ChangeKind::Changed) => {
                    let mk = message_key(mailbox, uid);
                    match self.snap.get(&self.shared.ks.messages, mk)? {
                        // A change entry whose record is gone is stale: its expunge
                        // tombstone is further on.
                        None => {}
                        Some(rv) => match MessageRecord::decode(&mk, &rv) {
                            Ok(r) => page.changes.push(Change::Record(r, rv.to_vec())),
                            Err(e) => {
                                self.alert_here("corrupt_record", &e, None);
                                page.changes.push(Change::Corrupt {
                                    uid,
                                    detail: e.to_string(),
                                });
                            }
                        },
                    }
                }
                Ok(ChangeKind::Expunged) => page.changes.push(Change::Expunged(Expunge {
                    uid,
                    modseq,
                    blob: tombstone_hash(&k, &v).ok().flatten(),
                })),
                Err(e) => {
                    self.alert_here("corrupt_record", &e, None);
                    page.changes.push(Change::Corrupt {
                        uid,
                        detail: e.to_string(),
                    });
                }
            }
        }
        Ok(page)
    }

    /// Every expunge tombstone of a mailbox that is still kept, by uid (the latest wins).
    pub fn tombstones(&self, mailbox: MailboxId) -> Result<HashMap<Uid, Expunge>, StoreError> {
        let start = change_key(mailbox, ModSeq(0), Uid(0));
        let end = change_key(mailbox, ModSeq(u64::MAX - 1), Uid(u32::MAX));
        let mut out = HashMap::new();
        for kv in self.snap.range(&self.shared.ks.changes, start..=end) {
            let (k, v) = kv.into_inner()?;
            let Some((_, modseq, uid)) = parse_change_key(&k) else {
                continue;
            };
            if let Ok(ChangeKind::Expunged) = decode_change(&k, &v) {
                out.insert(
                    uid,
                    Expunge {
                        uid,
                        modseq,
                        blob: tombstone_hash(&k, &v).ok().flatten(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// True if this copy deleted the mailbox (it left a tombstone).
    pub fn mailbox_deleted(&self, mailbox: MailboxId) -> Result<bool, StoreError> {
        Ok(self
            .snap
            .get(&self.shared.ks.changes, mailbox_tombstone_key(mailbox))?
            .is_some())
    }
}

// ---- slot handles --------------------------------------------------------------------

impl Slot {
    /// The copy's fencing epoch (from its `SLOT` header).
    pub fn epoch(&self) -> Epoch {
        Epoch(self.shared.epoch.load(Ordering::Acquire))
    }

    /// Installs (or removes) the hook the writer calls around each group commit.
    pub fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        match self.shared.commit_hook.write() {
            Ok(mut g) => *g = hook,
            Err(p) => *p.into_inner() = hook,
        }
    }

    /// Groups committed (that wrote something) since open; see [`CommittedGroup::seq`].
    pub fn commit_seq(&self) -> u64 {
        self.shared.commit_seq.load(Ordering::Acquire)
    }

    pub fn has_blob(&self, hash: &BlobHash) -> bool {
        self.shared.blobs.exists(hash)
    }

    /// A [`StagedBlob`] for a blob this copy already holds (verified by reading it), for
    /// an op that references it again.
    pub fn stage_existing(&self, hash: &BlobHash) -> Result<StagedBlob, StoreError> {
        let bytes = self.read_blob(hash, &crate::slot::ReadContext::default())?;
        self.put_blob(&bytes)
    }

    /// Writes a blob received from elsewhere, but only if its bytes hash to `hash`: a
    /// mismatch is `CorruptBlob` and nothing is written.
    pub fn put_blob_verified(
        &self,
        hash: &BlobHash,
        bytes: &[u8],
    ) -> Result<StagedBlob, StoreError> {
        let actual = BlobHash::of(bytes);
        if actual != *hash {
            return Err(StoreError::CorruptBlob {
                hash: hash.to_hex(),
                detail: format!("received bytes hash to {}", actual.to_hex()),
            });
        }
        let size = u32::try_from(bytes.len()).map_err(|_| StoreError::TooBig {
            size: bytes.len() as u64,
            limit: u64::from(u32::MAX),
        })?;
        let staged = self.put_blob(bytes)?;
        if staged.hash != *hash || staged.size != size {
            return Err(StoreError::CorruptBlob {
                hash: hash.to_hex(),
                detail: "blob store wrote something else".into(),
            });
        }
        Ok(staged)
    }

    /// Fsyncs each distinct directory the staged blobs live in, so records written next
    /// can never reference a blob whose directory entry could vanish in a crash.
    pub fn sync_blob_dirs(&self, blobs: &[StagedBlob]) -> Result<(), StoreError> {
        let dirs: BTreeSet<_> = blobs.iter().map(|b| b.dir.clone()).collect();
        for d in dirs {
            crate::blob::fsync_dir(&d)?;
        }
        Ok(())
    }
}

// ---- writes (run by the writer thread) ---------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ks {
    Mailboxes,
    Names,
    Messages,
    Changes,
    Subs,
    Users,
    Counters,
    Insecure,
}

impl Ks {
    fn tree(self, s: &Shared) -> &Keyspace {
        match self {
            Ks::Mailboxes => &s.ks.mailboxes,
            Ks::Names => &s.ks.names,
            Ks::Messages => &s.ks.messages,
            Ks::Changes => &s.ks.changes,
            Ks::Subs => &s.ks.subs,
            Ks::Users => &s.ks.users,
            Ks::Counters => &s.ks.counters,
            Ks::Insecure => &s.ks.insecure,
        }
    }

    fn of(k: UserKeyspace) -> Ks {
        match k {
            UserKeyspace::Users => Ks::Users,
            UserKeyspace::Subscriptions => Ks::Subs,
            UserKeyspace::InsecureLogins => Ks::Insecure,
        }
    }
}

type Writes = BTreeMap<(Ks, Vec<u8>), Option<Vec<u8>>>;

/// Writes staged in memory in two layers: `top` is one mailbox's update, kept or dropped
/// as a whole; reads see top, then base, then the live DB (every earlier committed
/// request). One key is written at most once per batch (fjall must not see a key both
/// removed and inserted in one batch).
struct Stage<'a> {
    s: &'a Shared,
    base: Writes,
    top: Writes,
}

impl<'a> Stage<'a> {
    fn new(s: &'a Shared) -> Stage<'a> {
        Stage {
            s,
            base: Writes::new(),
            top: Writes::new(),
        }
    }

    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = (ks, key.to_vec());
        if let Some(v) = self.top.get(&k).or_else(|| self.base.get(&k)) {
            return Ok(v.clone());
        }
        Ok(ks.tree(self.s).get(key)?.map(|v| v.to_vec()))
    }

    /// Keys under `prefix` as the stage would leave them (DB keys, minus staged removals,
    /// plus staged inserts), in key order.
    fn keys_with_prefix(&self, ks: Ks, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        for g in ks.tree(self.s).prefix(prefix) {
            keys.insert(g.key()?.to_vec());
        }
        for layer in [&self.base, &self.top] {
            for ((k_ks, k), v) in layer.range((ks, prefix.to_vec())..) {
                if *k_ks != ks || !k.starts_with(prefix) {
                    break;
                }
                match v {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn put(&mut self, ks: Ks, key: &[u8], value: Vec<u8>) {
        self.top.insert((ks, key.to_vec()), Some(value));
    }

    fn remove(&mut self, ks: Ks, key: &[u8]) {
        self.top.insert((ks, key.to_vec()), None);
    }

    fn keep_top(&mut self) {
        let top = std::mem::take(&mut self.top);
        self.base.extend(top);
    }

    fn drop_top(&mut self) {
        self.top.clear();
    }

    fn into_batch(mut self, batch: &mut OwnedWriteBatch) {
        self.keep_top();
        for ((ks, k), v) in self.base {
            match v {
                Some(v) => batch.insert(ks.tree(self.s), k, v),
                None => batch.remove(ks.tree(self.s), k),
            }
        }
    }

    fn header(&self, id: MailboxId) -> Result<Option<MailboxHeader>, StoreError> {
        let key = mailbox_key(id);
        match self.get(Ks::Mailboxes, &key)? {
            None => Ok(None),
            Some(v) => MailboxHeader::decode(&key, &v).map(Some),
        }
    }

    /// The record at `uid`: `Ok(None)` absent, `Err` present but damaged.
    fn record(&self, id: MailboxId, uid: Uid) -> Result<Option<MessageRecord>, StoreError> {
        let key = message_key(id, uid);
        match self.get(Ks::Messages, &key)? {
            None => Ok(None),
            Some(v) => MessageRecord::decode(&key, &v).map(Some),
        }
    }

    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.get(Ks::Counters, key)? {
            Some(v) => decode_u64(key, &v),
            None => Ok(0),
        }
    }

    fn raise_counter(&mut self, key: &[u8], at_least: u64) -> Result<(), StoreError> {
        if self.counter(key)? < at_least {
            self.put(Ks::Counters, key, encode_u64(key, at_least));
        }
        Ok(())
    }

    /// Writes a record (verbatim sealed bytes) and moves its change entry.
    fn write_record(
        &mut self,
        id: MailboxId,
        old: Option<&MessageRecord>,
        rec: &MessageRecord,
        raw: Vec<u8>,
    ) {
        if let Some(o) = old {
            self.remove(Ks::Changes, &change_key(id, o.modseq, o.uid));
        }
        self.put(Ks::Messages, &message_key(id, rec.uid), raw);
        let ck = change_key(id, rec.modseq, rec.uid);
        self.put(Ks::Changes, &ck, encode_change(&ck, ChangeKind::Changed));
    }

    /// Removes a record (if `old`) and leaves its tombstone.
    fn expunge_record(&mut self, id: MailboxId, old: Option<&MessageRecord>, e: &Expunge) {
        if let Some(o) = old {
            self.remove(Ks::Messages, &message_key(id, o.uid));
            self.remove(Ks::Changes, &change_key(id, o.modseq, o.uid));
        }
        let ck = change_key(id, e.modseq, e.uid);
        let blob = e.blob.or(old.map(|o| o.blob));
        self.put(Ks::Changes, &ck, encode_tombstone(&ck, blob.as_ref()));
    }

    /// Deletes a mailbox and everything in it, leaving its tombstone.
    fn delete_mailbox(&mut self, id: MailboxId) -> Result<(), StoreError> {
        if let Some(h) = self.header(id)? {
            let nk = name_key(&h.user, &h.name);
            if let Some(v) = self.get(Ks::Names, &nk)?
                && decode_u64(&nk, &v).ok() == Some(id.0)
            {
                self.remove(Ks::Names, &nk);
            }
        }
        self.remove(Ks::Mailboxes, &mailbox_key(id));
        for ks in [Ks::Messages, Ks::Changes] {
            for k in self.keys_with_prefix(ks, &mailbox_key(id))? {
                self.remove(ks, &k);
            }
        }
        let tk = mailbox_tombstone_key(id);
        self.put(Ks::Changes, &tk, encode_mailbox_tombstone(&tk));
        Ok(())
    }
}

/// `Op::ApplyReplica`: see [`ReplicaBatch`].
pub(crate) fn apply_replica(
    s: &Shared,
    batch: &mut OwnedWriteBatch,
    b: &ReplicaBatch,
) -> Result<OpResult, StoreError> {
    let epoch = Epoch(s.epoch.load(Ordering::Acquire));
    if b.epoch != epoch {
        return Err(StoreError::Refused(format!(
            "replica batch at epoch {} refused: this copy is at epoch {}",
            b.epoch.0, epoch.0
        )));
    }
    let records: usize = b
        .mailboxes
        .iter()
        .map(|m| m.upserts.len() + m.expunges.len())
        .sum();
    if records > BATCH_RECORDS_MAX || b.users.len() > BATCH_USERS_MAX {
        return Err(StoreError::Refused(format!(
            "replica batch too large ({records} records, {} users)",
            b.users.len()
        )));
    }
    let mut st = Stage::new(s);
    st.raise_counter(CTR_MAILBOX_ID, b.counters.next_mailbox_id)?;
    st.raise_counter(CTR_UIDVALIDITY, b.counters.next_uidvalidity)?;
    for id in &b.delete_mailboxes {
        st.delete_mailbox(*id)?;
    }
    st.keep_top();
    let batch_users: BTreeSet<&str> = b.users.iter().map(|u| u.user.as_str()).collect();
    let mut outcomes = Vec::with_capacity(b.mailboxes.len());
    for m in &b.mailboxes {
        let outcome = match apply_mailbox(&mut st, m, &batch_users) {
            Ok(o) => o,
            // This copy's own data failed to read: the master's copy will repair it
            // through a full compare.
            Err(e) if e.is_corruption() => MailboxOutcome::Mismatch {
                digest: 0,
                detail: format!("local data damaged: {e}"),
            },
            Err(e) => return Err(e),
        };
        match &outcome {
            MailboxOutcome::Applied { .. } => st.keep_top(),
            MailboxOutcome::Ahead { .. } => {
                st.drop_top();
                let mut ev = Event::alert(
                    "replica_ahead",
                    format!(
                        "mailbox id {} holds changes its master never saw; refusing the update until the master reconciles",
                        m.id.0
                    ),
                );
                ev.slot = Some(s.name.clone());
                s.alert(ev);
            }
            _ => st.drop_top(),
        }
        outcomes.push((m.id, outcome));
    }
    for u in &b.users {
        apply_user(&mut st, u, &b.delete_mailboxes)?;
        st.keep_top();
    }
    st.into_batch(batch);
    Ok(OpResult::ReplicaApplied(outcomes))
}

fn apply_mailbox(
    st: &mut Stage<'_>,
    m: &MailboxUpdate,
    batch_users: &BTreeSet<&str>,
) -> Result<MailboxOutcome, StoreError> {
    let invalid = |why: String| Ok(MailboxOutcome::Invalid(why));
    let key = mailbox_key(m.id);
    let master = match MailboxHeader::decode(&key, &m.header) {
        Ok(h) => h,
        Err(e) => return invalid(format!("master header: {e}")),
    };
    if !batch_users.contains(master.user.as_str()) {
        return invalid("mailbox update without its user's update".into());
    }
    if m.upto > master.highestmodseq {
        return invalid("upto above the master's highestmodseq".into());
    }
    let local = st.header(m.id)?;
    if let Some(l) = &local
        && (l.user != master.user || l.uidvalidity != master.uidvalidity)
    {
        return invalid(format!(
            "mailbox id {} here belongs to {} uidvalidity {}; delete it first",
            m.id.0, l.user, l.uidvalidity.0
        ));
    }
    if let Some(l) = &local
        && (l.uidnext > master.uidnext || l.highestmodseq > master.highestmodseq)
    {
        return Ok(MailboxOutcome::Ahead {
            uidnext: l.uidnext,
            highestmodseq: l.highestmodseq,
        });
    }
    if local.is_none() {
        // Created (again) here: a tombstone from an earlier life of this id must not
        // claim it was deleted.
        st.remove(Ks::Changes, &mailbox_tombstone_key(m.id));
    }
    let mut h = local.clone().unwrap_or(MailboxHeader {
        id: m.id,
        user: master.user.clone(),
        name: master.name.clone(),
        uidvalidity: master.uidvalidity,
        uidnext: Uid(1),
        highestmodseq: ModSeq(0),
        exists: 0,
        unseen: 0,
        size_bytes: 0,
        digest: 0,
        special_use: master.special_use,
    });
    let mut seen_uids = BTreeSet::new();
    let mut recompute = false;
    let mut damaged_left = false;
    for (uid, raw) in &m.upserts {
        let rec = match MessageRecord::decode(&message_key(m.id, *uid), raw) {
            Ok(r) => r,
            Err(e) => return invalid(format!("record uid {}: {e}", uid.0)),
        };
        if rec.uid >= master.uidnext || rec.modseq > m.upto || !seen_uids.insert(rec.uid) {
            return invalid(format!("record uid {} out of range or repeated", uid.0));
        }
        if !st.s.blobs.exists(&rec.blob) {
            return Ok(MailboxOutcome::MissingBlob(rec.blob));
        }
        let old = match st.record(m.id, rec.uid) {
            Ok(o) => o,
            // Ours is damaged: the master's good copy replaces it; counts are recomputed.
            Err(e) if e.is_corruption() => {
                recompute = true;
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(o) = &old {
            if o.blob != rec.blob || o.internaldate != rec.internaldate {
                return Ok(MailboxOutcome::Divergent { uid: rec.uid });
            }
            take_from(&mut h, o);
        }
        add_to(&mut h, &rec);
        st.write_record(m.id, old.as_ref(), &rec, raw.clone());
    }
    for e in &m.expunges {
        if e.uid >= master.uidnext || e.modseq > m.upto || !seen_uids.insert(e.uid) {
            return invalid(format!("expunge uid {} out of range or repeated", e.uid.0));
        }
        let old = match st.record(m.id, e.uid) {
            Ok(o) => o,
            Err(err) if err.is_corruption() => {
                // Damaged here and expunged there: removing it is right either way.
                recompute = true;
                st.remove(Ks::Messages, &message_key(m.id, e.uid));
                None
            }
            Err(err) => return Err(err),
        };
        if let Some(o) = &old {
            if e.blob.is_some_and(|b| b != o.blob) {
                return Ok(MailboxOutcome::Divergent { uid: e.uid });
            }
            take_from(&mut h, o);
        }
        st.expunge_record(m.id, old.as_ref(), e);
    }
    if recompute {
        let mut fresh = MailboxHeader {
            exists: 0,
            unseen: 0,
            size_bytes: 0,
            digest: 0,
            ..h.clone()
        };
        for k in st.keys_with_prefix(Ks::Messages, &mailbox_key(m.id))? {
            let Some(uid) = uid_of_message_key(&k) else {
                continue;
            };
            match st.record(m.id, uid) {
                Ok(Some(r)) => add_to(&mut fresh, &r),
                Ok(None) => {}
                // Another damaged record: its contribution is unknown, so this copy
                // cannot claim to match; the master full-compares (and repairs it).
                Err(e) if e.is_corruption() => damaged_left = true,
                Err(e) => return Err(e),
            }
        }
        h = fresh;
    }
    h.name = master.name.clone();
    h.special_use = master.special_use;
    h.uidnext = master.uidnext;
    h.highestmodseq = h.highestmodseq.max(m.upto);
    let complete = m.upto == master.highestmodseq && !m.partial;
    if complete {
        let mut diffs = Vec::new();
        if damaged_left {
            diffs.push("a record here is damaged".to_string());
        }
        if h.digest != master.digest {
            diffs.push(format!("digest {:08x} != {:08x}", h.digest, master.digest));
        }
        if h.exists != master.exists {
            diffs.push(format!("exists {} != {}", h.exists, master.exists));
        }
        if h.size_bytes != master.size_bytes {
            diffs.push(format!("size {} != {}", h.size_bytes, master.size_bytes));
        }
        if h.unseen != master.unseen {
            diffs.push(format!("unseen {} != {}", h.unseen, master.unseen));
        }
        if !diffs.is_empty() {
            return Ok(MailboxOutcome::Mismatch {
                digest: h.digest,
                detail: diffs.join(", "),
            });
        }
    }
    st.put(Ks::Mailboxes, &mailbox_key(m.id), h.encode());
    Ok(MailboxOutcome::Applied {
        digest: h.digest,
        complete,
    })
}

fn apply_user(st: &mut Stage<'_>, u: &UserUpdate, deleted: &[MailboxId]) -> Result<(), StoreError> {
    if let Some(rows) = &u.rows {
        let mut want: BTreeMap<(Ks, Vec<u8>), &[u8]> = BTreeMap::new();
        for r in rows {
            r.keyspace.verify(&u.user, &r.key, &r.value)?;
            want.insert((Ks::of(r.keyspace), r.key.clone()), &r.value);
        }
        for ks in UserKeyspace::ALL {
            let tree = Ks::of(ks);
            let have = match ks {
                UserKeyspace::Users => st
                    .get(tree, u.user.as_bytes())?
                    .map(|_| vec![u.user.as_bytes().to_vec()])
                    .unwrap_or_default(),
                _ => st.keys_with_prefix(tree, &ks.prefix(&u.user))?,
            };
            for k in have {
                if !want.contains_key(&(tree, k.clone())) {
                    st.remove(tree, &k);
                }
            }
        }
        for ((tree, k), v) in want {
            if st.get(tree, &k)?.as_deref() != Some(v) {
                st.put(tree, &k, v.to_vec());
            }
        }
    }
    // `names`: the master's mailboxes, plus any of ours it did not mention and did not
    // delete (left for a later reconcile), each under the name its header now has.
    let prefix = user_prefix(&u.user);
    let mut have: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for k in st.keys_with_prefix(Ks::Names, &prefix)? {
        if let Some(v) = st.get(Ks::Names, &k)?
            && let Ok(id) = decode_u64(&k, &v)
        {
            have.insert(k, id);
        }
    }
    let mut ids: Vec<MailboxId> = u.mailboxes.clone();
    for id in have.values() {
        let id = MailboxId(*id);
        if !ids.contains(&id) && !deleted.contains(&id) {
            ids.push(id);
        }
    }
    let mut want: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for id in ids {
        if let Ok(Some(h)) = st.header(id)
            && h.user == u.user
        {
            // The master's mailboxes come first, so they win a name both claim.
            want.entry(name_key(&u.user, &h.name)).or_insert(id.0);
        }
    }
    for (k, id) in &have {
        if want.get(k) != Some(id) {
            st.remove(Ks::Names, k);
        }
    }
    for (k, id) in want {
        if have.get(&k) != Some(&id) {
            let v = encode_u64(&k, id);
            st.put(Ks::Names, &k, v);
        }
    }
    Ok(())
}

/// `Op::Reconcile`: see [`ReconcilePlan`]. Returns the result and the change notice.
pub(crate) fn reconcile(
    s: &Shared,
    batch: &mut OwnedWriteBatch,
    p: &ReconcilePlan,
) -> Result<(OpResult, Vec<ChangeNotice>), StoreError> {
    let mut st = Stage::new(s);
    let mut h = st.header(p.mailbox)?.ok_or(StoreError::NoSuchMailbox)?;
    if h.uidvalidity != p.uidvalidity {
        return Err(StoreError::Refused(
            "the mailbox was recreated since the reconcile was planned".into(),
        ));
    }
    h.uidnext = h.uidnext.max(p.uidnext_at_least);
    let modseq = ModSeq(h.highestmodseq.max(p.modseq_above).0 + 1);
    let take_uid = |h: &mut MailboxHeader| -> Result<Uid, StoreError> {
        let uid = h.uidnext;
        h.uidnext = Uid(uid.0.checked_add(1).ok_or_else(|| {
            StoreError::Refused("mailbox has used every UID; it must be recreated".into())
        })?);
        Ok(uid)
    };
    let mut renumbered = Vec::with_capacity(p.renumber.len());
    for uid in distinct(&p.renumber) {
        let Some(old) = st.record(p.mailbox, uid)? else {
            continue;
        };
        take_from(&mut h, &old);
        st.expunge_record(
            p.mailbox,
            Some(&old),
            &Expunge {
                uid,
                modseq,
                blob: Some(old.blob),
            },
        );
        let rec = MessageRecord {
            uid: take_uid(&mut h)?,
            modseq,
            ..old
        };
        add_to(&mut h, &rec);
        st.write_record(p.mailbox, None, &rec, rec.encode(p.mailbox));
        renumbered.push((uid, rec.uid));
    }
    let mut appended = Vec::with_capacity(p.appends.len());
    for m in &p.appends {
        let mut flags = m.flags.clone();
        flags.system.0 &= SystemFlags::ALL;
        let rec = MessageRecord {
            uid: take_uid(&mut h)?,
            modseq,
            flags,
            internaldate: m.internaldate,
            size: m.blob.size,
            blob: m.blob.hash,
        };
        add_to(&mut h, &rec);
        st.write_record(p.mailbox, None, &rec, rec.encode(p.mailbox));
        appended.push(rec.uid);
    }
    h.highestmodseq = modseq;
    st.put(Ks::Mailboxes, &mailbox_key(h.id), h.encode());
    st.into_batch(batch);
    let notice = ChangeNotice {
        user: h.user.clone(),
        mailbox: h.id,
        modseq,
    };
    Ok((
        OpResult::Reconciled {
            uidvalidity: h.uidvalidity,
            renumbered,
            appended,
        },
        vec![notice],
    ))
}

fn distinct(uids: &[Uid]) -> Vec<Uid> {
    let mut seen = BTreeSet::new();
    uids.iter().copied().filter(|u| seen.insert(*u)).collect()
}

/// UIDs every mailbox skips when its copy is promoted to a new epoch (see
/// [`skip_promotion_gap`]).
pub const PROMOTION_GAP: u32 = 100_000;

/// Raises every mailbox's UIDNEXT by [`PROMOTION_GAP`] when a copy becomes master at a
/// new epoch. A master makes a commit visible to its own IMAP sessions before any replica
/// has it, so after an unclean failover (`fo -K`) clients may have seen UIDs the promoted
/// copy never got; without the gap it would give them to other messages, and a client
/// would see one UID name two messages. The dead master's unreplicated tail is far
/// shorter than the gap (replication lag is milliseconds); what it holds comes back when
/// it rejoins, as new messages above the gap (split-brain merge).
///
/// HIGHESTMODSEQ is deliberately *not* raised: the VANISHED floor is HIGHESTMODSEQ minus
/// a window, and raising it would make the old master's unreplicated messages look long
/// expunged to the full compare, which would drop them on rejoin. So a CONDSTORE client
/// of the dead master may miss flag changes made on the new master at MODSEQs it already
/// saw, until its next full resync (documented in docs/cluster.md).
///
/// Runs in the promotion's own batch, only when the epoch goes up: a restart at the same
/// epoch skips nothing. (A crash after the `SLOT` header took the new epoch but before the
/// batch's journal fsync loses the gap; the copy then serves without it.) A header that
/// fails its checksum is left alone, with an alert (audit rebuilds it).
fn skip_promotion_gap(s: &Shared, st: &mut Stage<'_>) -> Result<(), StoreError> {
    let mut bumped = Vec::new();
    for g in s.ks.mailboxes.iter() {
        let (k, v) = g.into_inner()?;
        match MailboxHeader::decode(&k, &v) {
            Ok(mut h) => {
                h.uidnext = Uid(h.uidnext.0.saturating_add(PROMOTION_GAP));
                bumped.push(h);
            }
            Err(e) => s.alert(Event::alert(
                "promotion_gap_skipped",
                format!("a damaged mailbox header kept its UIDNEXT at promotion: {e}"),
            )),
        }
    }
    for h in bumped {
        st.put(Ks::Mailboxes, &mailbox_key(h.id), h.encode());
    }
    Ok(())
}

/// `Op::SetEpoch`: raises the copy's epoch (never lowers it). With `promote` (this copy
/// becomes or stays master at `epoch`), raises `next_mailbox_id` to `(epoch - 1) << 32`,
/// so mailboxes created under different epochs — on both sides of a split brain — never
/// share an id. Idempotent.
pub(crate) fn set_epoch(
    s: &Shared,
    batch: &mut OwnedWriteBatch,
    epoch: Epoch,
    promote: bool,
) -> Result<OpResult, StoreError> {
    let current = s.epoch.load(Ordering::Acquire);
    if epoch.0 < current {
        return Err(StoreError::Refused(format!(
            "epoch {} is below this copy's epoch {current}: a copy's epoch never goes down",
            epoch.0
        )));
    }
    if promote {
        let mut st = Stage::new(s);
        st.raise_counter(CTR_MAILBOX_ID, (epoch.0.saturating_sub(1)) << 32)?;
        if epoch.0 > current {
            skip_promotion_gap(s, &mut st)?;
        }
        st.into_batch(batch);
    }
    if epoch.0 > current {
        // The header is replaced atomically (tmp, fsync, rename, fsync dir) before the
        // group's journal fsync: a crash in between leaves the higher epoch with the
        // counters not yet raised, which the next promotion at start-up raises again.
        let mut h = SlotHeader::read(&s.dir)?;
        h.epoch = epoch;
        h.write(&s.dir)?;
        s.epoch.store(epoch.0, Ordering::Release);
    }
    Ok(OpResult::Done)
}
