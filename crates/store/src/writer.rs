//! The slot's one writer, with group commit.
//!
//! Every change to a slot goes through this thread. It takes every request queued when it
//! wakes (up to `GROUP_MAX`), and for the whole group:
//!   1. fsyncs each distinct blob directory the group's appends wrote into (so no record can
//!      reference a blob whose directory entry could still vanish);
//!   2. applies each request as its own atomic KV batch (buffered, not yet fsynced) — a
//!      request that fails (no such mailbox, corrupt record) writes nothing;
//!   3. fsyncs the KV journal once (`PersistMode::SyncAll`);
//!   4. publishes a new durable snapshot for readers, notifies sessions, then replies.
//!
//! Replies and snapshots come only after step 3, so nothing is acknowledged, and nothing is
//! shown to any reader, before it is durable (DESIGN invariant 1; and a UID a client has
//! seen can never be reused after a crash, invariant 5). Concurrent deliveries share one
//! journal fsync: this is why throughput grows with the number of connections.

use crate::error::StoreError;
use crate::events::Event;
use crate::records::*;
use crate::slot::{ChangeNotice, SUBSCRIPTIONS_CHANGED, Shared, StagedBlob};
use crate::types::*;
use fjall::{OwnedWriteBatch, PersistMode};
use std::collections::BTreeSet;
use std::sync::{Arc, mpsc};

const GROUP_MAX: usize = 512;
/// Expunge tombstones past the vanished window are pruned once per this many
/// modifications of a mailbox, so the scan that finds them is amortised.
const PRUNE_EVERY_MODSEQ: u64 = 1024;
/// Keywords per message; beyond this STORE/APPEND fail with a clear error.
pub const KEYWORDS_MAX: usize = 128;
const KEYWORD_BYTES_MAX: usize = 128;

pub(crate) struct Request {
    pub op: Op,
    pub reply: tokio::sync::oneshot::Sender<Result<OpResult, StoreError>>,
}

/// A write to a slot.
#[derive(Debug)]
pub enum Op {
    #[doc(hidden)]
    InitCounters {
        uidvalidity_seed: u64,
    },
    /// Creates the user's record and default folders; a no-op if they exist.
    EnsureUser {
        user: String,
    },
    /// Removes the user and every mailbox and message record (blobs become orphans).
    PurgeUser {
        user: String,
    },
    CreateMailbox {
        user: String,
        name: String,
        special_use: Vec<SpecialUse>,
    },
    DeleteMailbox {
        user: String,
        name: String,
    },
    RenameMailbox {
        user: String,
        from: String,
        to: String,
    },
    Subscribe {
        user: String,
        name: String,
        subscribe: bool,
    },
    /// Appends several messages to a mailbox by name, all or none (MULTIAPPEND). UIDs
    /// are consecutive, in order.
    AppendMany {
        user: String,
        mailbox: String,
        messages: Vec<NewMessage>,
    },
    /// Appends one message to a mailbox by name.
    Append {
        user: String,
        mailbox: String,
        blob: StagedBlob,
        flags: Flags,
        internaldate: InternalDate,
    },
    Store {
        mailbox: MailboxId,
        uids: Vec<Uid>,
        mode: FlagMode,
        flags: Flags,
        unchanged_since: Option<ModSeq>,
    },
    /// Expunges messages with `\Deleted` among `uids` (all of them when `None`).
    Expunge {
        mailbox: MailboxId,
        uids: Option<Vec<Uid>>,
    },
    /// Copies (or moves) messages to another mailbox of the same user.
    Copy {
        from: MailboxId,
        uids: Vec<Uid>,
        to: String,
        remove_source: bool,
    },
    SetQuota {
        user: String,
        quota_bytes: u64,
    },
    /// Records a successful login without TLS (TLS policy, see `InsecureLogin`). With
    /// `notice_window_secs`, also decides atomically whether the user is due a notice:
    /// no notice for any of the user's protocols within the window before `at`. When due,
    /// the row's `notified_at` becomes `at`, so concurrent logins cannot both send one.
    RecordInsecureLogin {
        user: String,
        protocol: String,
        at: i64,
        ip: String,
        client: String,
        notice_window_secs: Option<i64>,
    },
    /// Recomputes a mailbox's derivable state (exists, unseen, size, digest, and raises
    /// uidnext/highestmodseq above every stored uid/modseq) from its records, as they are
    /// when the writer runs it. Refused while a record of the mailbox fails its CRC (its
    /// contribution is unknown). Audit repair and `tandem quota rebuild` use it.
    RebuildMailbox {
        mailbox: MailboxId,
    },
    /// Raises the slot counters above every id in use and recreates missing ones.
    RebuildCounters,
    /// Deletes orphan blobs an audit found, in the writer so it is ordered with appends:
    /// skips any referenced by a record committed since the audit armed `gc_watch`, and
    /// any whose file is not older than `older_than` (unix secs, mtime). An append whose
    /// blob file is gone is refused (the delivery retries), never committed dangling.
    CollectOrphans {
        hashes: Vec<BlobHash>,
        older_than: i64,
    },
    /// Test hook: stores raw bytes (or removes the key) in a keyspace, bypassing the
    /// codec, for corruption drills. Never sent by production code.
    #[doc(hidden)]
    DebugPoke {
        keyspace: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Test hook behind `Slot::debug_corrupt_record`: stores a message record's value with
    /// one bit flipped, bypassing the codec, so corruption drills exercise the real read
    /// path. Never sent by production code.
    #[doc(hidden)]
    DebugCorruptRecord {
        mailbox: MailboxId,
        uid: Uid,
    },
    /// A replica applies a batch of its master's data (see `replica.rs`).
    ApplyReplica(Box<crate::replica::ReplicaBatch>),
    /// A write replication makes on the master itself (creating a user or mailbox for a
    /// split-brain merge): applied as the inner op, never held for a replica ack.
    ByReplication(Box<Op>),
    /// A master merges what a former master holds that it never saw (see `replica.rs`).
    Reconcile(Box<crate::replica::ReconcilePlan>),
    /// Raises the copy's fencing epoch; `promote` when this copy masters at it.
    SetEpoch {
        epoch: Epoch,
        promote: bool,
    },
}

/// One message of [`Op::AppendMany`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub blob: StagedBlob,
    pub flags: Flags,
    pub internaldate: InternalDate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Done,
    Mailbox(MailboxId),
    Appended {
        mailbox: MailboxId,
        uidvalidity: UidValidity,
        uid: Uid,
    },
    AppendedMany {
        mailbox: MailboxId,
        uidvalidity: UidValidity,
        uids: Vec<Uid>,
    },
    Stored {
        /// Messages whose flags now are as listed (changed or not), with their modseq.
        updated: Vec<(Uid, ModSeq, Flags)>,
        /// UNCHANGEDSINCE failures (RFC 7162 MODIFIED).
        modified: Vec<Uid>,
        /// The MODSEQ this write gave every message it changed (the mailbox's new
        /// HIGHESTMODSEQ); `None` when it changed nothing (and so raised nothing).
        modseq: Option<ModSeq>,
    },
    Expunged(Vec<Uid>),
    Copied {
        uidvalidity: UidValidity,
        /// (source uid, new uid) pairs in source order.
        pairs: Vec<(Uid, Uid)>,
    },
    /// What a rebuild changed, in plain words (`exists 3 -> 4`); empty if it was right.
    Rebuilt(Vec<String>),
    /// Answer to `RecordInsecureLogin`: whether the caller must now send the notice.
    InsecureRecorded {
        notice_due: bool,
    },
    /// Orphan blobs deleted.
    Collected(Vec<BlobHash>),
    /// What became of each mailbox of an `ApplyReplica` batch.
    ReplicaApplied(Vec<(MailboxId, crate::replica::MailboxOutcome)>),
    Reconciled {
        uidvalidity: UidValidity,
        /// (old uid, new uid) of the master's own messages moved to fresh UIDs.
        renumbered: Vec<(Uid, Uid)>,
        /// Fresh UIDs of the other copy's messages, in plan order.
        appended: Vec<Uid>,
    },
}

pub(crate) fn run(shared: Arc<Shared>, rx: mpsc::Receiver<Request>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if let Some(reason) = &failed {
            for r in group {
                let _ = r.reply.send(Err(StoreError::Unavailable {
                    slot: shared.name.clone(),
                    reason: reason.clone(),
                }));
            }
            continue;
        }
        // Step 1: blob directories.
        let dirs: BTreeSet<_> = group
            .iter()
            .flat_map(|r| match &r.op {
                Op::Append { blob, .. } => vec![blob.dir.clone()],
                Op::AppendMany { messages, .. } => {
                    messages.iter().map(|m| m.blob.dir.clone()).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let mut dir_error = None;
        for d in &dirs {
            if let Err(e) = crate::blob::fsync_dir(d) {
                dir_error = Some(e.to_string());
            }
        }
        // Step 2: apply.
        let mut results = Vec::with_capacity(group.len());
        let mut notices = Vec::new();
        let hook = match shared.commit_hook.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut changed = crate::replica::CommittedGroup::default();
        for r in &group {
            if let Some(Err(reason)) = hook.as_ref().map(|h| h.admit(&r.op)) {
                results.push(Err(StoreError::Unavailable {
                    slot: shared.name.clone(),
                    reason,
                }));
                continue;
            }
            if let (Some(e), Op::Append { .. } | Op::AppendMany { .. }) = (&dir_error, &r.op) {
                results.push(Err(StoreError::Refused(format!(
                    "blob directory fsync failed: {e}"
                ))));
                continue;
            }
            let mut w = Apply {
                s: &shared,
                batch: shared.db.batch(),
                notices: Vec::new(),
                counters: Vec::new(),
            };
            let res = w.apply(&r.op);
            let wrote = !w.batch.is_empty();
            let res = match res {
                Ok(v) => w.batch.commit().map(|_| v).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            if res.is_ok() {
                if wrote {
                    crate::replica::note_changed(&r.op, &w.notices, &mut changed);
                }
                notices.append(&mut w.notices);
            } else if let Err(e) = &res
                && e.is_corruption()
            {
                shared.alert(Event::alert(
                    "corrupt_record",
                    format!("write refused: {e}"),
                ));
            }
            results.push(res);
        }
        // Step 3: one fsync for the whole group.
        if let Err(e) = shared.db.persist(PersistMode::SyncAll) {
            let reason = format!("metadata journal fsync failed: {e}");
            shared.alert(Event::alert("slot_failed", reason.clone()));
            failed = Some(reason.clone());
            for r in group {
                let _ = r.reply.send(Err(StoreError::Unavailable {
                    slot: shared.name.clone(),
                    reason: reason.clone(),
                }));
            }
            continue;
        }
        shared
            .journal_fsyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Step 4: publish, notify, reply.
        let snap = shared.db.snapshot();
        match shared.durable.write() {
            Ok(mut g) => *g = snap,
            Err(p) => *p.into_inner() = snap,
        }
        for n in notices {
            let _ = shared.notify.send(n);
        }
        // Step 5 (replication): `durability = "replica"` waits here for a replica.
        if let Some(h) = &hook
            && changed.ops > 0
            && let Err(reason) = crate::replica::after_commit(&shared, h.as_ref(), changed)
        {
            for res in results.iter_mut().filter(|r| r.is_ok()) {
                *res = Err(StoreError::Unavailable {
                    slot: shared.name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        for (r, res) in group.into_iter().zip(results) {
            let _ = r.reply.send(res);
        }
    }
}

/// One request being applied: reads see every earlier committed request (the live DB),
/// writes go to this request's batch.
struct Apply<'a> {
    s: &'a Shared,
    batch: OwnedWriteBatch,
    notices: Vec<ChangeNotice>,
    counters: Vec<(&'static [u8], u64)>,
}

/// Bound on hashes remembered while an orphan collection is pending; past it the
/// collection keeps every candidate (see `Op::CollectOrphans`).
const GC_WATCH_MAX: usize = 1 << 20;
/// How far a rebuilt `next_mailbox_id` jumps past the largest id in use.
const MAILBOX_ID_REBUILD_GAP: u64 = 1 << 20;
pub(crate) const CTR_MAILBOX_ID: &[u8] = b"next_mailbox_id";
pub(crate) const CTR_UIDVALIDITY: &[u8] = b"next_uidvalidity";

impl Apply<'_> {
    fn apply(&mut self, op: &Op) -> Result<OpResult, StoreError> {
        match op {
            Op::InitCounters { uidvalidity_seed } => {
                if self.s.ks.counters.get(CTR_MAILBOX_ID)?.is_none() {
                    self.put_counter(CTR_MAILBOX_ID, 1);
                    self.put_counter(CTR_UIDVALIDITY, *uidvalidity_seed);
                }
                Ok(OpResult::Done)
            }
            Op::EnsureUser { user } => self.ensure_user(user),
            Op::PurgeUser { user } => self.purge_user(user),
            Op::CreateMailbox {
                user,
                name,
                special_use,
            } => {
                self.require_user(user)?;
                let bits = special_use.iter().fold(0u8, |a, s| a | s.bit());
                self.create_mailbox(user, name, bits).map(OpResult::Mailbox)
            }
            Op::DeleteMailbox { user, name } => self.delete_mailbox(user, name),
            Op::RenameMailbox { user, from, to } => self.rename_mailbox(user, from, to),
            Op::Subscribe {
                user,
                name,
                subscribe,
            } => {
                let name = crate::normalize_mailbox_name(name);
                let key = name_key(user, &name);
                if *subscribe {
                    crate::validate_mailbox_name(&name)?;
                    let v = encode_empty(&key);
                    self.batch.insert(&self.s.ks.subs, key, v);
                } else {
                    self.batch.remove(&self.s.ks.subs, key);
                }
                // NOTIFY SubscriptionChange watchers re-read the list on this.
                self.notices.push(ChangeNotice {
                    user: user.clone(),
                    mailbox: SUBSCRIPTIONS_CHANGED,
                    modseq: ModSeq(0),
                });
                Ok(OpResult::Done)
            }
            Op::Append {
                user,
                mailbox,
                blob,
                flags,
                internaldate,
            } => {
                check_flags(flags)?;
                if !self.s.blobs.exists(&blob.hash) {
                    // Only orphan collection deletes blobs; one can only lose this race
                    // with a clock stepped far ahead. The delivery retries and rewrites it.
                    return Err(StoreError::Refused(
                        "the message file vanished before its record was written; try again".into(),
                    ));
                }
                let id = self
                    .mailbox_id(user, mailbox)?
                    .ok_or(StoreError::NoSuchMailbox)?;
                self.check_quota(user, u64::from(blob.size))?;
                let mut h = self.header(id)?;
                let uid = h.uidnext;
                h.uidnext = Uid(uid.0.checked_add(1).ok_or_else(|| {
                    StoreError::Refused("mailbox has used every UID; it must be recreated".into())
                })?);
                h.highestmodseq = ModSeq(h.highestmodseq.0 + 1);
                let rec = MessageRecord {
                    uid,
                    modseq: h.highestmodseq,
                    flags: flags.clone(),
                    internaldate: *internaldate,
                    size: blob.size,
                    blob: blob.hash,
                };
                self.add_record(&mut h, &rec);
                self.put_header(&h);
                Ok(OpResult::Appended {
                    mailbox: id,
                    uidvalidity: h.uidvalidity,
                    uid,
                })
            }
            Op::AppendMany {
                user,
                mailbox,
                messages,
            } => self.append_many(user, mailbox, messages),
            Op::Store {
                mailbox,
                uids,
                mode,
                flags,
                unchanged_since,
            } => self.store(*mailbox, uids, *mode, flags, *unchanged_since),
            Op::Expunge { mailbox, uids } => self.expunge(*mailbox, uids.as_deref()),
            Op::Copy {
                from,
                uids,
                to,
                remove_source,
            } => self.copy(*from, uids, to, *remove_source),
            Op::DebugCorruptRecord { mailbox, uid } => {
                let k = message_key(*mailbox, *uid);
                let mut v = self
                    .s
                    .ks
                    .messages
                    .get(k)?
                    .ok_or(StoreError::Refused(format!("no record for uid {}", uid.0)))?
                    .to_vec();
                // Byte 5 is inside the body (after the version byte and the uid): only the
                // record CRC can notice the flip.
                let b = v
                    .get_mut(5)
                    .ok_or(StoreError::Refused("record too short to corrupt".into()))?;
                *b ^= 0x01;
                self.batch.insert(&self.s.ks.messages, k, v);
                Ok(OpResult::Done)
            }
            Op::RebuildMailbox { mailbox } => self.rebuild_mailbox(*mailbox),
            Op::RebuildCounters => self.rebuild_counters(),
            Op::CollectOrphans { hashes, older_than } => {
                let watched = self
                    .s
                    .gc_watch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_default();
                let mut gone = Vec::new();
                let (watched, overflowed) = watched;
                if overflowed {
                    return Ok(OpResult::Collected(gone));
                }
                for h in hashes.iter().filter(|h| !watched.contains(h)) {
                    if self.s.blobs.remove_orphan(h, *older_than)? {
                        gone.push(*h);
                    }
                }
                Ok(OpResult::Collected(gone))
            }
            Op::ApplyReplica(b) => crate::replica::apply_replica(self.s, &mut self.batch, b),
            Op::ByReplication(inner) => self.apply(inner),
            Op::Reconcile(p) => {
                let (res, notices) = crate::replica::reconcile(self.s, &mut self.batch, p)?;
                self.notices.extend(notices);
                Ok(res)
            }
            Op::SetEpoch { epoch, promote } => {
                crate::replica::set_epoch(self.s, &mut self.batch, *epoch, *promote)
            }
            Op::DebugPoke {
                keyspace,
                key,
                value,
            } => {
                let ks = self
                    .s
                    .ks
                    .by_name(keyspace)
                    .ok_or_else(|| StoreError::Refused(format!("no keyspace {keyspace}")))?
                    .clone();
                match value {
                    Some(v) => self.batch.insert(&ks, key.clone(), v.clone()),
                    None => self.batch.remove(&ks, key.clone()),
                }
                Ok(OpResult::Done)
            }
            Op::RecordInsecureLogin {
                user,
                protocol,
                at,
                ip,
                client,
                notice_window_secs,
            } => self.record_insecure(user, protocol, *at, ip, client, *notice_window_secs),
            Op::SetQuota { user, quota_bytes } => {
                let mut u = self.user_record(user)?.ok_or(StoreError::NoSuchUser)?;
                u.quota_bytes = *quota_bytes;
                let v = u.encode();
                self.batch.insert(&self.s.ks.users, user.as_bytes(), v);
                Ok(OpResult::Done)
            }
        }
    }

    fn rebuild_mailbox(&mut self, id: MailboxId) -> Result<OpResult, StoreError> {
        let mut h = self.header(id)?;
        let mut d = crate::audit::Derived::default();
        let mut want = std::collections::HashSet::new();
        for g in self.s.ks.messages.prefix(mailbox_key(id)) {
            let (k, v) = g.into_inner()?;
            let rec = MessageRecord::decode(&k, &v).map_err(|e| {
                StoreError::corrupt_record(
                    &k,
                    &format!("cannot rebuild the mailbox while this record is damaged: {e}"),
                )
            })?;
            d.add(&rec);
            want.insert(change_key(id, rec.modseq, rec.uid));
        }
        // Every live record has a `Changed` entry at its modseq (CONDSTORE/QRESYNC read
        // them); `Changed` entries of no live record are stale. Tombstones stay.
        let (mut added, mut removed) = (0, 0);
        for g in self.s.ks.changes.prefix(mailbox_key(id)) {
            let (k, v) = g.into_inner()?;
            d.add_change_key(&k);
            let live = <[u8; 20]>::try_from(&k[..]).is_ok_and(|k| want.remove(&k));
            if !live && decode_change(&k, &v).is_ok_and(|c| c == ChangeKind::Changed) {
                self.batch.remove(&self.s.ks.changes, k.to_vec());
                removed += 1;
            }
        }
        for k in want {
            let v = encode_change(&k, ChangeKind::Changed);
            self.batch.insert(&self.s.ks.changes, k, v);
            added += 1;
        }
        let mut fixed = d.mismatches(&h);
        if added > 0 {
            fixed.push(format!("{added} change entries added"));
        }
        if removed > 0 {
            fixed.push(format!("{removed} stale change entries removed"));
        }
        if !d.mismatches(&h).is_empty() {
            d.apply(&mut h);
            let v = h.encode();
            // Written directly, not through put_header: a rebuild is no client-visible
            // change, so it sends no change notice of its own.
            self.batch.insert(&self.s.ks.mailboxes, mailbox_key(id), v);
        }
        Ok(OpResult::Rebuilt(fixed))
    }

    fn rebuild_counters(&mut self) -> Result<OpResult, StoreError> {
        let mut max_id = 0u64;
        let mut max_uidvalidity = 0u64;
        for g in self.s.ks.mailboxes.iter() {
            let (k, v) = g.into_inner()?;
            if let Ok(b) = <[u8; 8]>::try_from(&k[..]) {
                max_id = max_id.max(u64::from_be_bytes(b));
            }
            if let Ok(h) = MailboxHeader::decode(&k, &v) {
                max_uidvalidity = max_uidvalidity.max(u64::from(h.uidvalidity.0));
            }
        }
        let read = |key: &[u8]| -> Option<u64> {
            let v = self.s.ks.counters.get(key).ok()??;
            decode_u64(key, &v).ok()
        };
        let mut fixed = Vec::new();
        let next_id = read(CTR_MAILBOX_ID);
        if next_id.is_none_or(|n| n <= max_id) {
            // The true value is unknown and may be far above the largest id left (deleted
            // mailboxes): jump ahead so no MAILBOXID is ever handed out twice.
            let want = max_id + 1 + MAILBOX_ID_REBUILD_GAP;
            fixed.push(format!(
                "next_mailbox_id {} -> {want}",
                next_id.map_or("missing".into(), |n| n.to_string())
            ));
            self.put_counter(CTR_MAILBOX_ID, want);
        }
        if read(CTR_UIDVALIDITY).is_none() {
            // A fresh UIDVALIDITY must differ from every one in use: above the largest,
            // and from the clock as at creation.
            let now = self.s.clock.now_unix_secs().clamp(1, u32::MAX as i64 / 2) as u64;
            let want = now.max(max_uidvalidity + 1);
            fixed.push(format!("next_uidvalidity missing -> {want}"));
            self.put_counter(CTR_UIDVALIDITY, want);
        }
        Ok(OpResult::Rebuilt(fixed))
    }

    fn put_counter(&mut self, key: &[u8], v: u64) {
        let enc = encode_u64(key, v);
        self.batch.insert(&self.s.ks.counters, key, enc);
    }

    /// Takes the next value of a counter. A request may take several values before its
    /// batch commits, so values taken by this request are tracked here.
    fn next_counter(&mut self, key: &'static [u8]) -> Result<u64, StoreError> {
        let cur = match self.counters.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => *v,
            None => match self.s.ks.counters.get(key)? {
                Some(v) => decode_u64(key, &v)?,
                None => return Err(StoreError::corrupt_record(key, "counter missing")),
            },
        };
        self.counters.retain(|(k, _)| *k != key);
        self.counters.push((key, cur + 1));
        self.put_counter(key, cur + 1);
        Ok(cur)
    }

    fn user_record(&self, user: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.s.ks.users.get(user.as_bytes())? {
            None => Ok(None),
            Some(v) => UserRecord::decode(user.as_bytes(), &v).map(Some),
        }
    }

    /// Refuses a write that would take `user` past their quota (0 = unlimited). Usage is
    /// the sum of the mailbox headers' sizes, read from the live DB, so requests earlier
    /// in the same group count: two deliveries cannot both squeeze under the limit.
    fn check_quota(&self, user: &str, adding_bytes: u64) -> Result<(), StoreError> {
        let limit_bytes = match self.user_record(user)? {
            Some(u) if u.quota_bytes > 0 => u.quota_bytes,
            _ => return Ok(()),
        };
        let mut usage_bytes = 0u64;
        for g in self.s.ks.names.prefix(user_prefix(user)) {
            let (k, v) = g.into_inner()?;
            let h = self.header(MailboxId(decode_u64(&k, &v)?))?;
            usage_bytes = usage_bytes.saturating_add(h.size_bytes);
        }
        if usage_bytes.saturating_add(adding_bytes) > limit_bytes {
            return Err(StoreError::OverQuota {
                usage_bytes,
                adding_bytes,
                limit_bytes,
            });
        }
        Ok(())
    }

    fn append_many(
        &mut self,
        user: &str,
        mailbox: &str,
        messages: &[NewMessage],
    ) -> Result<OpResult, StoreError> {
        if messages.is_empty() {
            return Err(StoreError::Refused("no messages to append".into()));
        }
        for m in messages {
            check_flags(&m.flags)?;
        }
        let id = self
            .mailbox_id(user, mailbox)?
            .ok_or(StoreError::NoSuchMailbox)?;
        let total = messages.iter().map(|m| u64::from(m.blob.size)).sum();
        self.check_quota(user, total)?;
        let mut h = self.header(id)?;
        h.highestmodseq = ModSeq(h.highestmodseq.0 + 1);
        let mut uids = Vec::with_capacity(messages.len());
        for m in messages {
            let uid = h.uidnext;
            h.uidnext = Uid(uid.0.checked_add(1).ok_or_else(|| {
                StoreError::Refused("mailbox has used every UID; it must be recreated".into())
            })?);
            let rec = MessageRecord {
                uid,
                modseq: h.highestmodseq,
                flags: m.flags.clone(),
                internaldate: m.internaldate,
                size: m.blob.size,
                blob: m.blob.hash,
            };
            self.add_record(&mut h, &rec);
            uids.push(uid);
        }
        self.put_header(&h);
        Ok(OpResult::AppendedMany {
            mailbox: id,
            uidvalidity: h.uidvalidity,
            uids,
        })
    }

    fn require_user(&self, user: &str) -> Result<(), StoreError> {
        self.user_record(user)?
            .map(|_| ())
            .ok_or(StoreError::NoSuchUser)
    }

    fn ensure_user(&mut self, user: &str) -> Result<OpResult, StoreError> {
        if user.is_empty() || user.contains('\0') || user.len() > 255 {
            return Err(StoreError::Refused("invalid user name".into()));
        }
        if self.user_record(user)?.is_some() {
            return Ok(OpResult::Done);
        }
        let rec = UserRecord {
            user: user.to_string(),
            quota_bytes: 0,
        };
        let v = rec.encode();
        self.batch.insert(&self.s.ks.users, user.as_bytes(), v);
        for (name, special) in DEFAULT_FOLDERS {
            if self.mailbox_id(user, name)?.is_none() {
                self.create_mailbox(user, name, special.map(|s| s.bit()).unwrap_or(0))?;
                let key = name_key(user, name);
                let v = encode_empty(&key);
                self.batch.insert(&self.s.ks.subs, key, v);
            }
        }
        Ok(OpResult::Done)
    }

    fn record_insecure(
        &mut self,
        user: &str,
        protocol: &str,
        at: i64,
        ip: &str,
        client: &str,
        window: Option<i64>,
    ) -> Result<OpResult, StoreError> {
        self.require_user(user)?;
        let mut last_notice = 0;
        let mut row = None;
        for g in self.s.ks.insecure.prefix(user_prefix(user)) {
            let (k, v) = g.into_inner()?;
            let r = InsecureLogin::decode(&k, &v)?;
            last_notice = last_notice.max(r.notified_at);
            if r.protocol == protocol {
                row = Some(r);
            }
        }
        let mut row = row.unwrap_or_else(|| InsecureLogin {
            user: user.to_string(),
            protocol: protocol.to_string(),
            first_at: at,
            last_at: at,
            ip: String::new(),
            client: String::new(),
            count: 0,
            notified_at: 0,
        });
        row.last_at = at;
        row.ip = ip.to_string();
        // A client that sent no ID this time is most likely the same one as before.
        if !client.is_empty() {
            row.client = client.to_string();
        }
        row.count = row.count.saturating_add(1);
        let notice_due =
            window.is_some_and(|w| last_notice == 0 || at.saturating_sub(last_notice) >= w);
        if notice_due {
            row.notified_at = at;
        }
        let key = InsecureLogin::key(user, protocol);
        let v = row.encode();
        self.batch.insert(&self.s.ks.insecure, key, v);
        Ok(OpResult::InsecureRecorded { notice_due })
    }

    fn purge_user(&mut self, user: &str) -> Result<OpResult, StoreError> {
        let names: Vec<(Vec<u8>, MailboxId)> = self
            .s
            .ks
            .names
            .prefix(user_prefix(user))
            .map(|g| {
                let (k, v) = g.into_inner()?;
                Ok((k.to_vec(), MailboxId(decode_u64(&k, &v)?)))
            })
            .collect::<Result<_, StoreError>>()?;
        for (k, id) in names {
            self.remove_mailbox_contents(id)?;
            self.batch.remove(&self.s.ks.mailboxes, mailbox_key(id));
            self.batch.remove(&self.s.ks.names, k);
        }
        let subs: Vec<_> = self
            .s
            .ks
            .subs
            .prefix(user_prefix(user))
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for k in subs {
            self.batch.remove(&self.s.ks.subs, k);
        }
        let insecure: Vec<_> = self
            .s
            .ks
            .insecure
            .prefix(user_prefix(user))
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<_, _>>()?;
        for k in insecure {
            self.batch.remove(&self.s.ks.insecure, k);
        }
        self.batch.remove(&self.s.ks.users, user.as_bytes());
        Ok(OpResult::Done)
    }

    fn mailbox_id(&self, user: &str, name: &str) -> Result<Option<MailboxId>, StoreError> {
        let name = crate::normalize_mailbox_name(name);
        let key = name_key(user, &name);
        match self.s.ks.names.get(&key)? {
            None => Ok(None),
            Some(v) => Ok(Some(MailboxId(decode_u64(&key, &v)?))),
        }
    }

    fn header(&self, id: MailboxId) -> Result<MailboxHeader, StoreError> {
        let key = mailbox_key(id);
        match self.s.ks.mailboxes.get(key)? {
            None => Err(StoreError::NoSuchMailbox),
            Some(v) => MailboxHeader::decode(&key, &v),
        }
    }

    fn put_header(&mut self, h: &MailboxHeader) {
        let v = h.encode();
        self.batch
            .insert(&self.s.ks.mailboxes, mailbox_key(h.id), v);
        // Every write raises highestmodseq by exactly one, so this runs once per
        // PRUNE_EVERY_MODSEQ modifications of the mailbox (more often only under a test
        // window smaller than that).
        let every = PRUNE_EVERY_MODSEQ.min(self.vanished_window().max(1));
        if h.highestmodseq.0.is_multiple_of(every) {
            self.prune_tombstones(h);
        }
        self.notices.push(ChangeNotice {
            user: h.user.clone(),
            mailbox: h.id,
            modseq: h.highestmodseq,
        });
    }

    fn create_mailbox(
        &mut self,
        user: &str,
        name: &str,
        special_use: u8,
    ) -> Result<MailboxId, StoreError> {
        let name = crate::normalize_mailbox_name(name);
        crate::validate_mailbox_name(&name)?;
        if self.mailbox_id(user, &name)?.is_some() {
            return Err(StoreError::MailboxExists);
        }
        let id = MailboxId(self.next_counter(CTR_MAILBOX_ID)?);
        let uidvalidity = self.next_counter(CTR_UIDVALIDITY)?;
        let h = MailboxHeader {
            id,
            user: user.to_string(),
            name: name.clone(),
            uidvalidity: UidValidity((uidvalidity % (u32::MAX as u64 - 1)) as u32 + 1),
            uidnext: Uid(1),
            highestmodseq: ModSeq(1),
            exists: 0,
            unseen: 0,
            size_bytes: 0,
            digest: 0,
            special_use,
        };
        self.put_header(&h);
        let key = name_key(user, &name);
        let v = encode_u64(&key, id.0);
        self.batch.insert(&self.s.ks.names, key, v);
        Ok(id)
    }

    fn remove_mailbox_contents(&mut self, id: MailboxId) -> Result<(), StoreError> {
        let prefix = mailbox_key(id);
        for ks in [&self.s.ks.messages, &self.s.ks.changes] {
            let keys: Vec<_> = ks
                .prefix(prefix)
                .map(|g| g.key().map(|k| k.to_vec()))
                .collect::<Result<_, _>>()?;
            for k in keys {
                self.batch.remove(ks, k);
            }
        }
        // Replication tells "deleted here" from "never seen here" by this tombstone (no
        // live mailbox has one, so the key is not among those removed above).
        let tk = crate::replica::mailbox_tombstone_key(id);
        let tv = crate::replica::encode_mailbox_tombstone(&tk);
        self.batch.insert(&self.s.ks.changes, tk, tv);
        Ok(())
    }

    fn delete_mailbox(&mut self, user: &str, name: &str) -> Result<OpResult, StoreError> {
        let name = crate::normalize_mailbox_name(name);
        if name == "INBOX" {
            return Err(StoreError::Refused("INBOX cannot be deleted".into()));
        }
        let id = self
            .mailbox_id(user, &name)?
            .ok_or(StoreError::NoSuchMailbox)?;
        let gone = self.header(id)?;
        self.remove_mailbox_contents(id)?;
        self.batch.remove(&self.s.ks.mailboxes, mailbox_key(id));
        self.batch.remove(&self.s.ks.names, name_key(user, &name));
        // Sessions with the mailbox selected (IDLE, NOTIFY) learn it is gone.
        self.notices.push(ChangeNotice {
            user: user.to_string(),
            mailbox: id,
            modseq: ModSeq(gone.highestmodseq.0 + 1),
        });
        Ok(OpResult::Done)
    }

    fn rename_mailbox(&mut self, user: &str, from: &str, to: &str) -> Result<OpResult, StoreError> {
        let from = crate::normalize_mailbox_name(from);
        let to = crate::normalize_mailbox_name(to);
        crate::validate_mailbox_name(&to)?;
        if to == "INBOX" {
            // INBOX always exists.
            return Err(StoreError::MailboxExists);
        }
        let id = self
            .mailbox_id(user, &from)?
            .ok_or(StoreError::NoSuchMailbox)?;
        if self.mailbox_id(user, &to)?.is_some() {
            return Err(StoreError::MailboxExists);
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(StoreError::Refused(
                "cannot rename a mailbox into itself".into(),
            ));
        }
        // The mailbox keeps its id, UIDs and UIDVALIDITY: only the name moves.
        let mut moves = vec![(from.clone(), to.clone(), id)];
        if from != "INBOX" {
            // Children move along (RFC 3501); INBOX's children stay (also RFC 3501).
            let prefix = name_key(user, &format!("{from}/"));
            for g in self.s.ks.names.prefix(&prefix) {
                let (k, v) = g.into_inner()?;
                let child = String::from_utf8_lossy(&k[user.len() + 1..]).into_owned();
                let new = format!("{to}{}", &child[from.len()..]);
                crate::validate_mailbox_name(&new)?;
                if self.mailbox_id(user, &new)?.is_some() {
                    return Err(StoreError::MailboxExists);
                }
                moves.push((child, new, MailboxId(decode_u64(&k, &v)?)));
            }
        }
        for (old, new, mid) in &moves {
            let mut h = self.header(*mid)?;
            h.name = new.clone();
            h.highestmodseq = ModSeq(h.highestmodseq.0 + 1);
            self.put_header(&h);
            if old != "INBOX" {
                // INBOX's name entry is overwritten below; one key must not be both
                // removed and inserted in a batch.
                self.batch.remove(&self.s.ks.names, name_key(user, old));
            }
            let key = name_key(user, new);
            let v = encode_u64(&key, mid.0);
            self.batch.insert(&self.s.ks.names, key, v);
        }
        if from == "INBOX" {
            // RFC 3501: renaming INBOX moves its messages and leaves an empty INBOX.
            let inbox = self.create_mailbox_unchecked_name(user, "INBOX")?;
            let key = name_key(user, "INBOX");
            let v = encode_u64(&key, inbox.0);
            self.batch.insert(&self.s.ks.names, key, v);
        }
        Ok(OpResult::Done)
    }

    /// create_mailbox without the existence check, for replacing INBOX inside a rename
    /// whose batch has not removed the old name yet.
    fn create_mailbox_unchecked_name(
        &mut self,
        user: &str,
        name: &str,
    ) -> Result<MailboxId, StoreError> {
        let id = MailboxId(self.next_counter(CTR_MAILBOX_ID)?);
        let uidvalidity = self.next_counter(CTR_UIDVALIDITY)?;
        let h = MailboxHeader {
            id,
            user: user.to_string(),
            name: name.to_string(),
            uidvalidity: UidValidity((uidvalidity % (u32::MAX as u64 - 1)) as u32 + 1),
            uidnext: Uid(1),
            highestmodseq: ModSeq(1),
            exists: 0,
            unseen: 0,
            size_bytes: 0,
            digest: 0,
            special_use: 0,
        };
        self.put_header(&h);
        Ok(id)
    }

    fn record(&self, id: MailboxId, uid: Uid) -> Result<Option<MessageRecord>, StoreError> {
        let k = message_key(id, uid);
        match self.s.ks.messages.get(k)? {
            None => Ok(None),
            Some(v) => MessageRecord::decode(&k, &v).map(Some),
        }
    }

    fn add_record(&mut self, h: &mut MailboxHeader, rec: &MessageRecord) {
        if let Some(w) = self
            .s
            .gc_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if w.0.len() < GC_WATCH_MAX {
                w.0.insert(rec.blob);
            } else {
                w.1 = true;
            }
        }
        h.exists += 1;
        if !rec.flags.system.has(SystemFlags::SEEN) {
            h.unseen += 1;
        }
        h.size_bytes += u64::from(rec.size);
        h.digest ^= rec.digest();
        let v = rec.encode(h.id);
        self.batch
            .insert(&self.s.ks.messages, message_key(h.id, rec.uid), v);
        let ck = change_key(h.id, rec.modseq, rec.uid);
        let cv = encode_change(&ck, ChangeKind::Changed);
        self.batch.insert(&self.s.ks.changes, ck, cv);
    }

    /// Removes the expunge tombstones of `h` older than the vanished window (see
    /// `VANISHED_WINDOW_MODSEQ` in `slot.rs`): readers treat everything at or below
    /// `highestmodseq - window` as possibly pruned, so what remains is always exact above
    /// that floor. Best effort: a read error or a damaged entry leaves tombstones in place
    /// (keeping one too long is harmless) and never fails the client's write. Scans the
    /// change entries below the floor, live messages' included: O(mailbox) once per
    /// `PRUNE_EVERY_MODSEQ` writes.
    fn prune_tombstones(&mut self, h: &MailboxHeader) {
        let floor = h.highestmodseq.0.saturating_sub(self.vanished_window());
        if floor == 0 {
            return;
        }
        let start = change_key(h.id, ModSeq(0), Uid(0));
        let end = change_key(h.id, ModSeq(floor), Uid(u32::MAX));
        let mut doomed = Vec::new();
        for g in self.s.ks.changes.range(start..=end) {
            let Ok((k, v)) = g.into_inner() else { return };
            if matches!(decode_change(&k, &v), Ok(ChangeKind::Expunged)) {
                doomed.push(k.to_vec());
            }
        }
        for k in doomed {
            self.batch.remove(&self.s.ks.changes, k);
        }
    }

    fn vanished_window(&self) -> u64 {
        self.s
            .vanished_window
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn remove_record(&mut self, h: &mut MailboxHeader, rec: &MessageRecord, modseq: ModSeq) {
        h.exists = h.exists.saturating_sub(1);
        if !rec.flags.system.has(SystemFlags::SEEN) {
            h.unseen = h.unseen.saturating_sub(1);
        }
        h.size_bytes = h.size_bytes.saturating_sub(u64::from(rec.size));
        h.digest ^= rec.digest();
        self.batch
            .remove(&self.s.ks.messages, message_key(h.id, rec.uid));
        self.batch
            .remove(&self.s.ks.changes, change_key(h.id, rec.modseq, rec.uid));
        let ck = change_key(h.id, modseq, rec.uid);
        let cv = crate::replica::encode_tombstone(&ck, Some(&rec.blob));
        self.batch.insert(&self.s.ks.changes, ck, cv);
    }

    fn store(
        &mut self,
        id: MailboxId,
        uids: &[Uid],
        mode: FlagMode,
        flags: &Flags,
        unchanged_since: Option<ModSeq>,
    ) -> Result<OpResult, StoreError> {
        check_flags(flags)?;
        let mut h = self.header(id)?;
        let modseq = ModSeq(h.highestmodseq.0 + 1);
        let mut updated = Vec::new();
        let mut modified = Vec::new();
        let mut changed_any = false;
        for uid in distinct(uids) {
            let Some(old) = self.record(id, uid)? else {
                continue;
            };
            if let Some(since) = unchanged_since
                && old.modseq > since
            {
                modified.push(uid);
                continue;
            }
            let mut new_flags = match mode {
                FlagMode::Replace => flags.clone(),
                FlagMode::Add => {
                    let mut f = old.flags.clone();
                    f.system.0 |= flags.system.0;
                    for k in &flags.keywords {
                        f.add_keyword(k);
                    }
                    f
                }
                FlagMode::Remove => {
                    let mut f = old.flags.clone();
                    f.system.0 &= !flags.system.0;
                    for k in &flags.keywords {
                        f.remove_keyword(k);
                    }
                    f
                }
            };
            new_flags.system.0 &= SystemFlags::ALL;
            if new_flags.keywords.len() > KEYWORDS_MAX {
                return Err(StoreError::Refused(format!(
                    "a message may carry at most {KEYWORDS_MAX} keywords"
                )));
            }
            if new_flags == old.flags {
                updated.push((uid, old.modseq, old.flags));
                continue;
            }
            changed_any = true;
            let rec = MessageRecord {
                modseq,
                flags: new_flags,
                ..old.clone()
            };
            // Replace: remove the old contribution, add the new one.
            h.digest ^= old.digest() ^ rec.digest();
            let was_seen = old.flags.system.has(SystemFlags::SEEN);
            let is_seen = rec.flags.system.has(SystemFlags::SEEN);
            if was_seen && !is_seen {
                h.unseen += 1;
            } else if !was_seen && is_seen {
                h.unseen = h.unseen.saturating_sub(1);
            }
            let v = rec.encode(id);
            self.batch
                .insert(&self.s.ks.messages, message_key(id, uid), v);
            self.batch
                .remove(&self.s.ks.changes, change_key(id, old.modseq, uid));
            let ck = change_key(id, modseq, uid);
            let cv = encode_change(&ck, ChangeKind::Changed);
            self.batch.insert(&self.s.ks.changes, ck, cv);
            updated.push((uid, modseq, rec.flags));
        }
        if changed_any {
            h.highestmodseq = modseq;
            self.put_header(&h);
        }
        Ok(OpResult::Stored {
            updated,
            modified,
            modseq: changed_any.then_some(modseq),
        })
    }

    fn expunge(&mut self, id: MailboxId, uids: Option<&[Uid]>) -> Result<OpResult, StoreError> {
        let mut h = self.header(id)?;
        let modseq = ModSeq(h.highestmodseq.0 + 1);
        let candidates: Vec<MessageRecord> = match uids {
            Some(list) => {
                let mut v = Vec::with_capacity(list.len());
                for u in distinct(list) {
                    if let Some(r) = self.record(id, u)? {
                        v.push(r);
                    }
                }
                v
            }
            None => self
                .s
                .ks
                .messages
                .prefix(mailbox_key(id))
                .map(|g| {
                    let (k, v) = g.into_inner()?;
                    MessageRecord::decode(&k, &v)
                })
                .collect::<Result<_, _>>()?,
        };
        let mut gone = Vec::new();
        for r in candidates {
            if r.flags.system.has(SystemFlags::DELETED) {
                self.remove_record(&mut h, &r, modseq);
                gone.push(r.uid);
            }
        }
        if !gone.is_empty() {
            h.highestmodseq = modseq;
            self.put_header(&h);
        }
        gone.sort();
        Ok(OpResult::Expunged(gone))
    }

    fn copy(
        &mut self,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
        remove_source: bool,
    ) -> Result<OpResult, StoreError> {
        let mut src = self.header(from)?;
        let to_id = self
            .mailbox_id(&src.user, to)?
            .ok_or(StoreError::NoSuchMailbox)?;
        if to_id == from && remove_source {
            return Err(StoreError::Refused(
                "cannot move messages into the same mailbox".into(),
            ));
        }
        let mut recs = Vec::with_capacity(uids.len());
        for u in distinct(uids) {
            if let Some(r) = self.record(from, u)? {
                recs.push(r);
            }
        }
        if recs.is_empty() {
            return Ok(OpResult::Copied {
                uidvalidity: self.header(to_id)?.uidvalidity,
                pairs: Vec::new(),
            });
        }
        if !remove_source {
            // A MOVE between a user's own mailboxes does not change their usage.
            let adding = recs.iter().map(|r| u64::from(r.size)).sum();
            self.check_quota(&src.user, adding)?;
        }
        let mut dst = self.header(to_id)?;
        dst.highestmodseq = ModSeq(dst.highestmodseq.0 + 1);
        let mut pairs = Vec::with_capacity(recs.len());
        for r in &recs {
            let uid = dst.uidnext;
            dst.uidnext = Uid(uid.0.checked_add(1).ok_or_else(|| {
                StoreError::Refused("destination mailbox has used every UID".into())
            })?);
            // RFC 3501 and RFC 6851: copies keep every flag of the source.
            let rec = MessageRecord {
                uid,
                modseq: dst.highestmodseq,
                ..r.clone()
            };
            self.add_record(&mut dst, &rec);
            pairs.push((r.uid, uid));
        }
        self.put_header(&dst);
        if remove_source {
            let modseq = ModSeq(src.highestmodseq.0 + 1);
            for r in &recs {
                self.remove_record(&mut src, r, modseq);
            }
            src.highestmodseq = modseq;
            self.put_header(&src);
        }
        Ok(OpResult::Copied {
            uidvalidity: dst.uidvalidity,
            pairs,
        })
    }
}

/// `uids` without repeats, first occurrence kept. A uid set may name a message twice
/// (`1,1`, `1:3,2`); reads here see the DB, not this request's batch, so a repeat would
/// apply its header delta (counts, digest) twice, or copy the message twice.
fn distinct(uids: &[Uid]) -> Vec<Uid> {
    let mut seen = std::collections::HashSet::with_capacity(uids.len());
    uids.iter().copied().filter(|u| seen.insert(*u)).collect()
}

fn check_flags(flags: &Flags) -> Result<(), StoreError> {
    if flags.keywords.len() > KEYWORDS_MAX {
        return Err(StoreError::Refused(format!(
            "a message may carry at most {KEYWORDS_MAX} keywords"
        )));
    }
    for k in &flags.keywords {
        if k.is_empty()
            || k.len() > KEYWORD_BYTES_MAX
            || k.bytes()
                .any(|b| b <= b' ' || b >= 0x7f || b"(){%*\"\\]".contains(&b))
        {
            return Err(StoreError::Refused(format!("invalid keyword {k:?}")));
        }
    }
    Ok(())
}
