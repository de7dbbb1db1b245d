//! The master end: one thread per (slot, replica). It connects, says hello (fencing: the
//! higher epoch wins), runs a full compare (catch-up and bootstrap are the same thing),
//! then syncs the users the commit hook marks dirty, round after round.
//!
//! A round, for a set of users: ask the replica for their state (per-user rows, mailbox
//! headers); compare with the master's from one snapshot; for each mailbox that differs,
//! send the changes since the replica's highestmodseq (or, when the replica is ahead,
//! diverged, or too far behind for the kept tombstones, a full compare of the record
//! lists); offer the blob hashes, send the blobs the replica lacks, then the batch. The
//! replica applies it in one transaction and answers per mailbox. A digest mismatch
//! falls back to a full compare; a full compare that still does not converge blocks the
//! mailbox (with an alert) until it changes again.
//!
//! Split brain: when a full compare finds messages only the replica holds (at UIDs the
//! master never used or used for something else), the master fetches them (verifying
//! their hashes), and re-appends them with fresh UIDs (`Op::Reconcile`), moving its own
//! messages at contested UIDs too, so no UID ever names two messages. Nothing is dropped;
//! UIDVALIDITY never changes. Then the replica is brought to the master's state.

use crate::ReplError;
use crate::hub::{Hub, Link, lock};
use crate::status::VerifyReport;
use crate::transport::{Conn, Tls};
use crate::wire::{Msg, PROTOCOL_VERSION, Purpose, WireRecord, WireUserState};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::replica::{
    Change, Expunge, MailboxUpdate, RecordEntry, ReplicaBatch, UserRow, UserState, UserUpdate,
};
use store::{
    BlobHash, Epoch, Event, EventLog, InternalDate, MailboxHeader, MailboxId, MailboxOutcome,
    MessageRecord, ModSeq, NewMessage, Op, OpResult, ReadContext, ReconcilePlan, Slot, SlotView,
    SpecialUse, StagedBlob, StoreError, Uid,
};

/// Users per round (one `GetState`).
const ROUND_USERS_MAX: usize = 200;
/// Records and tombstones per round for incremental syncs (a modseq group may exceed it).
const ROUND_RECORDS_MAX: usize = 5_000;
/// Records per round for a full compare's update, which re-lists the mailbox each round.
const FULL_PAGE_RECORDS_MAX: usize = 50_000;
/// Blob bytes a round sends without offering them first; above it, everything is offered.
const DIRECT_PUSH_BYTES_MAX: u64 = 4 << 20;
/// Users whose replica state a session remembers between rounds.
const KNOWN_USERS_MAX: usize = 100_000;
/// Records per `ListRecords` page.
const LIST_PAGE: u32 = 5_000;
/// A mailbox larger than this is never listed whole in memory for a full compare.
const LIST_RECORDS_MAX: usize = 5_000_000;
/// Blob hashes per `GetBlobs`.
const FETCH_BATCH: usize = 256;
/// Rounds for one set of users before giving up with an alert (each round makes progress
/// or reconciles; a huge mailbox takes one round per page).
const PASSES_MAX: usize = 100_000;
/// An idle connection is pinged this often, so a dead replica is noticed.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Everything a link thread needs.
pub(crate) struct LinkCtx {
    pub hub: Arc<Hub>,
    pub link: Arc<Link>,
    pub slot: Slot,
    pub tls: Tls,
    pub host: String,
    pub addr: SocketAddr,
    pub io_timeout: Duration,
    pub events: Arc<EventLog>,
}

impl LinkCtx {
    fn event(&self, mut ev: Event) {
        ev.slot = Some(self.hub.slot.clone());
        self.events.raise(ev);
    }
}

/// The link thread: connect, sync, repeat after failures with backoff, until stopped.
pub(crate) fn run_link(ctx: LinkCtx) {
    let mut backoff = Duration::from_millis(100);
    let mut down_alerted = false;
    while !ctx.link.stopping() {
        if ctx.hub.fenced().is_some() {
            // A fenced copy sends nothing: the copy at the higher epoch is the master.
            sleep_unless_stopped(&ctx.link, BACKOFF_MAX);
            continue;
        }
        let started = Instant::now();
        let res = session(&ctx);
        lock(&ctx.link.stats).connected = false;
        lock(&ctx.link.stats).progress = None;
        match res {
            Ok(()) => return,
            Err(e) => {
                ctx.link.set_error(Some(e.to_string()));
                if !down_alerted {
                    ctx.event(Event::alert(
                        "replica_unreachable",
                        format!("replica {}: {e} (retrying)", ctx.link.host),
                    ));
                    down_alerted = true;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                sleep_unless_stopped(&ctx.link, backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        // `session` marks the link connected; an outage after that is a new outage.
        if lock(&ctx.link.stats).last_error.is_none() {
            down_alerted = false;
        }
    }
}

fn sleep_unless_stopped(link: &Link, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !link.stopping() {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// Who dials whom: this host's copy of a slot (name and epoch), and one replica of it.
pub(crate) struct Dial<'a> {
    pub tls: &'a Tls,
    pub slot: &'a str,
    pub epoch: Epoch,
    pub host: &'a str,
    pub replica: &'a str,
    pub addr: SocketAddr,
    pub io_timeout: Duration,
}

/// Opens a connection and says hello; a replica at a higher epoch fences this copy.
pub(crate) fn open(
    d: &Dial<'_>,
    purpose: Purpose,
    hub: Option<&Hub>,
) -> Result<(Conn, Epoch), ReplError> {
    let Dial {
        tls,
        slot,
        epoch,
        host,
        replica,
        addr,
        io_timeout,
    } = *d;
    let mut conn = tls.connect(addr, replica, io_timeout)?;
    let hello = Msg::Hello {
        version: PROTOCOL_VERSION,
        slot: slot.to_string(),
        from_host: host.to_string(),
        purpose,
    };
    let fence = |theirs: Epoch, why: &str| {
        if let Some(h) = hub {
            h.fence(format!(
                "replica {replica} is at epoch {} and this copy at {}: {why}",
                theirs.0, epoch.0
            ));
        }
    };
    match conn.call(epoch, &hello) {
        Ok(f) => match f.msg {
            Msg::HelloOk { .. } if f.epoch > epoch => {
                fence(f.epoch, "another copy was promoted");
                Err(ReplError::Fenced(f.epoch))
            }
            Msg::HelloOk { .. } => Ok((conn, epoch)),
            other => Err(ReplError::Protocol(format!(
                "{replica} answered Hello with {}",
                other.name()
            ))),
        },
        Err(ReplError::Refused {
            epoch: theirs,
            reason,
            peer,
        }) => {
            if theirs > epoch {
                fence(theirs, &reason);
                return Err(ReplError::Fenced(theirs));
            }
            Err(ReplError::Refused {
                peer,
                epoch: theirs,
                reason,
            })
        }
        Err(e) => Err(e),
    }
}

fn session(ctx: &LinkCtx) -> Result<(), ReplError> {
    let dial = Dial {
        tls: &ctx.tls,
        slot: ctx.slot.name(),
        epoch: ctx.slot.epoch(),
        host: &ctx.host,
        replica: &ctx.link.host,
        addr: ctx.addr,
        io_timeout: ctx.io_timeout,
    };
    let (conn, epoch) = open(&dial, Purpose::Sync, Some(&ctx.hub))?;
    {
        let mut s = lock(&ctx.link.stats);
        s.connected = true;
        s.last_error = None;
    }
    ctx.event(Event::info(
        "replica_connected",
        format!("replica {} connected at epoch {}", ctx.link.host, epoch.0),
    ));
    let mut sync = Sync {
        conn,
        epoch,
        slot: ctx.slot.clone(),
        events: ctx.events.clone(),
        peer: ctx.link.host.clone(),
        force_full: HashSet::new(),
        blocked: HashMap::new(),
        partial: HashSet::new(),
        known: HashMap::new(),
        unfaithful: false,
        link: Some(ctx.link.clone()),
    };
    // Every (re)connection starts with a full compare: it is how a replica that was down,
    // restored, or brand new catches up.
    ctx.link.request_full();
    let mut idle_since = Instant::now();
    // Confirmations are held while the replica is known not to hold what it was sent,
    // until a full compare finds it faithful again.
    let mut hold = false;
    loop {
        if ctx.link.stopping() {
            return Ok(());
        }
        if let Some(f) = ctx.hub.fenced() {
            return Err(ReplError::Protocol(format!("fenced: {f}")));
        }
        let (users, covered, full) = ctx.link.take(ROUND_USERS_MAX);
        sync.unfaithful = false;
        if full {
            sync.full_sync()?;
        } else if !users.is_empty()
            && let Err(e) = sync.sync_users(&users)
        {
            ctx.link.put_back(users);
            return Err(e);
        }
        if sync.unfaithful {
            hold = true;
        } else if full {
            hold = false;
        }
        if let Some(seq) = covered
            && !hold
            && seq > ctx.link.acked.load(std::sync::atomic::Ordering::Acquire)
        {
            ctx.hub.ack(&ctx.link, seq);
        }
        if full || !users.is_empty() {
            lock(&ctx.link.stats).last_sync_unix = Some(crate::hub::now_unix());
        }
        if full || !users.is_empty() {
            idle_since = Instant::now();
            continue;
        }
        ctx.link.wait(PING_INTERVAL);
        if idle_since.elapsed() >= PING_INTERVAL {
            match sync.conn.call(epoch, &Msg::Ping)?.msg {
                Msg::Pong => idle_since = Instant::now(),
                other => {
                    return Err(ReplError::Protocol(format!(
                        "Ping answered with {}",
                        other.name()
                    )));
                }
            }
        }
    }
}

/// The replica's view of one user, decoded and verified here.
#[derive(Clone)]
struct ReplicaUser {
    rows: Vec<UserRow>,
    mailboxes: Vec<MailboxHeader>,
    complete: bool,
}

fn decode_state(w: WireUserState) -> ReplicaUser {
    let mut complete = w.complete;
    let mut mailboxes = Vec::with_capacity(w.mailboxes.len());
    for h in w.mailboxes {
        match MailboxHeader::decode(&h.id.0.to_be_bytes(), &h.value) {
            Ok(m) if m.id == h.id => mailboxes.push(m),
            _ => complete = false,
        }
    }
    ReplicaUser {
        rows: w.rows,
        mailboxes,
        complete,
    }
}

fn same_header(a: &MailboxHeader, b: &MailboxHeader) -> bool {
    a.user == b.user
        && a.name == b.name
        && a.uidvalidity == b.uidvalidity
        && a.uidnext == b.uidnext
        && a.highestmodseq == b.highestmodseq
        && a.exists == b.exists
        && a.unseen == b.unseen
        && a.size_bytes == b.size_bytes
        && a.digest == b.digest
        && a.special_use == b.special_use
}

fn rows_equal(a: &[UserRow], b: &[UserRow]) -> bool {
    let key = |r: &UserRow| (r.keyspace, r.key.clone(), r.value.clone());
    let sa: BTreeSet<_> = a.iter().map(key).collect();
    let sb: BTreeSet<_> = b.iter().map(key).collect();
    sa == sb
}

/// A blob a batch's records reference.
struct BlobNeed {
    hash: BlobHash,
    size: u32,
    /// The record is new to the replica, so it lacks the blob (or holds it for another
    /// record only): sent without asking.
    surely_absent: bool,
}

/// Why a mailbox stops being synced until it changes.
#[derive(Clone, Copy)]
enum Block {
    /// Everything readable here was applied; damaged data here stayed behind.
    Partial,
    /// Nothing of the update was applied: the replica is not a faithful copy of it.
    Diverged,
}

/// What planning one mailbox produced.
enum Planned {
    Nothing,
    Update {
        update: MailboxUpdate,
        blobs: Vec<BlobNeed>,
        more: bool,
        full: bool,
    },
    /// Master data changed (a reconcile): plan again from a new snapshot.
    Reconciled,
}

/// One connection's sync state (see the module doc).
pub(crate) struct Sync {
    pub conn: Conn,
    pub epoch: Epoch,
    pub slot: Slot,
    pub events: Arc<EventLog>,
    pub peer: String,
    /// Mailboxes whose next sync must be a full compare.
    force_full: HashSet<MailboxId>,
    /// Mailboxes a full compare could not converge, with the master header they were
    /// blocked at: retried when that header changes.
    blocked: HashMap<MailboxId, (ModSeq, u32)>,
    /// Mailboxes whose last page in flight left out damaged data.
    partial: HashSet<MailboxId>,
    /// What the replica holds for users this session synced completely: this session is
    /// the replica's only writer, so the next round needs no `GetState` for them (the
    /// digest check on every last page stays the backstop). Cleared by a full compare.
    known: HashMap<String, ReplicaUser>,
    /// A mailbox failed to apply in this round: what was asked is not on the replica, so
    /// the round must not confirm anything for `durability = "replica"`.
    pub unfaithful: bool,
    link: Option<Arc<Link>>,
}

impl Sync {
    fn event(&self, mut ev: Event) {
        ev.slot = Some(self.slot.name().to_string());
        self.events.raise(ev);
    }

    fn call(&mut self, msg: &Msg) -> Result<Msg, ReplError> {
        Ok(self.conn.call(self.epoch, msg)?.msg)
    }

    fn set_progress(&self, p: Option<(u64, u64)>) {
        if let Some(l) = &self.link {
            lock(&l.stats).progress = p;
        }
    }

    /// Every user of either copy, in order.
    fn all_users(&mut self, view: &SlotView) -> Result<Vec<String>, ReplError> {
        let mut users: BTreeSet<String> = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = view.users_after(after.as_deref(), 10_000)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            users.extend(page);
            after = Some(last);
        }
        let mut after: Option<String> = None;
        loop {
            let names = match self.call(&Msg::ListUsers {
                after: after.clone(),
                limit: 10_000,
            })? {
                Msg::Users { names } => names,
                other => return Err(unexpected("ListUsers", &other)),
            };
            let Some(last) = names.last().cloned() else {
                break;
            };
            users.extend(names);
            after = Some(last);
        }
        Ok(users.into_iter().collect())
    }

    /// A full compare of the whole slot, with progress in messages.
    pub fn full_sync(&mut self) -> Result<(), ReplError> {
        let started = Instant::now();
        // A full compare retries everything, blocked mailboxes included, and trusts no
        // remembered replica state.
        self.blocked.clear();
        self.known.clear();
        let view = self.slot.view();
        let users = self.all_users(&view)?;
        let mut sizes = Vec::with_capacity(users.len());
        let mut total = 0u64;
        for u in &users {
            let n: u64 = view
                .user_state(u)?
                .mailboxes
                .iter()
                .map(|(h, _)| u64::from(h.exists))
                .sum();
            sizes.push(n);
            total += n;
        }
        drop(view);
        let mut done = 0u64;
        self.set_progress(Some((0, total)));
        for (chunk, sizes) in users
            .chunks(ROUND_USERS_MAX)
            .zip(sizes.chunks(ROUND_USERS_MAX))
        {
            self.sync_users(chunk)?;
            done += sizes.iter().sum::<u64>();
            self.set_progress(Some((done, total)));
        }
        self.set_progress(None);
        if let Some(l) = &self.link {
            lock(&l.stats).full_syncs += 1;
        }
        self.event(Event::info(
            "full_sync_done",
            format!(
                "replica {}: compared {} users, {total} messages in {:.1}s",
                self.peer,
                users.len(),
                started.elapsed().as_secs_f64()
            ),
        ));
        Ok(())
    }

    /// Syncs `users` until each is in sync (or blocked, with an alert).
    pub fn sync_users(&mut self, users: &[String]) -> Result<(), ReplError> {
        let mut todo: Vec<String> = users.to_vec();
        for _ in 0..PASSES_MAX {
            if todo.is_empty() {
                return Ok(());
            }
            todo = self.round(&todo)?;
        }
        self.event(Event::alert(
            "replication_stuck",
            format!(
                "replica {}: {} users did not converge in {PASSES_MAX} rounds (first: {})",
                self.peer,
                todo.len(),
                todo.first().cloned().unwrap_or_default()
            ),
        ));
        Ok(())
    }

    /// One round; returns the users that need another.
    fn round(&mut self, users: &[String]) -> Result<Vec<String>, ReplError> {
        let view = self.slot.view();
        let ask: Vec<String> = users
            .iter()
            .filter(|u| !self.known.contains_key(*u))
            .cloned()
            .collect();
        let mut fetched: HashMap<String, ReplicaUser> = HashMap::new();
        if !ask.is_empty() {
            let states = match self.call(&Msg::GetState { users: ask.clone() })? {
                Msg::State { users } => users,
                other => return Err(unexpected("GetState", &other)),
            };
            if states.len() != ask.len() || states.iter().zip(&ask).any(|(s, u)| s.user != *u) {
                return Err(ReplError::Protocol(
                    "State does not answer the users asked".into(),
                ));
            }
            for st in states {
                fetched.insert(st.user.clone(), decode_state(st));
            }
        }
        let mut batch = ReplicaBatch {
            epoch: self.epoch,
            counters: view.counters()?,
            ..ReplicaBatch::default()
        };
        let mut again: BTreeSet<String> = BTreeSet::new();
        let mut owner: HashMap<MailboxId, (String, bool)> = HashMap::new();
        let mut blobs: Vec<(MailboxId, BlobNeed)> = Vec::new();
        let mut budget = ROUND_RECORDS_MAX;
        // The replica state each user was planned from, and whether it can be remembered.
        let mut planned: Vec<(String, ReplicaUser, bool)> = Vec::with_capacity(users.len());
        for user in users {
            let rs = match fetched.remove(user).or_else(|| self.known.remove(user)) {
                Some(r) => r,
                None => continue,
            };
            let ms = view.user_state(user)?;
            let (n_before, d_before) = (batch.mailboxes.len(), batch.delete_mailboxes.len());
            let more = self.plan_user(&view, &ms, &rs, &mut batch, &mut budget, &mut blobs)?;
            for m in &batch.mailboxes[n_before..] {
                owner.insert(m.id, (user.clone(), self.force_full.contains(&m.id)));
            }
            if more {
                again.insert(user.clone());
            }
            let rememberable = !more && rs.complete && batch.delete_mailboxes.len() == d_before;
            planned.push((user.clone(), rs, rememberable));
        }
        drop(view);
        if batch.mailboxes.is_empty() && batch.users.is_empty() && batch.delete_mailboxes.is_empty()
        {
            self.remember(planned, &[], &[], &HashSet::new());
            return Ok(again.into_iter().collect());
        }
        let sent_users: Vec<UserUpdate> = batch.users.clone();
        let sent_headers: Vec<(MailboxId, Vec<u8>)> = batch
            .mailboxes
            .iter()
            .map(|m| (m.id, m.header.clone()))
            .collect();
        let outcomes = self.push(batch, &blobs)?;
        let not_done: HashSet<String> = outcomes
            .iter()
            .filter(|(_, o)| !matches!(o, MailboxOutcome::Applied { complete: true, .. }))
            .filter_map(|(id, _)| owner.get(id).map(|(u, _)| u.clone()))
            .collect();
        self.remember(planned, &sent_users, &sent_headers, &not_done);
        for (id, o) in outcomes {
            let Some((user, was_full)) = owner.get(&id).cloned() else {
                continue;
            };
            match o {
                MailboxOutcome::Applied { complete, .. } => {
                    if complete {
                        self.force_full.remove(&id);
                    } else if self.partial.remove(&id) {
                        // Everything readable was sent; what is damaged here waits for
                        // a repair (the replica keeps its own copies meanwhile).
                        self.block(
                            id,
                            &user,
                            "messages damaged here were not sent; repair them with `tandem audit --repair --from-replica`",
                            Block::Partial,
                        );
                    } else {
                        again.insert(user);
                    }
                }
                MailboxOutcome::Mismatch { detail, .. } => {
                    if !was_full {
                        self.event(user_event(
                            "replica_digest_mismatch",
                            &user,
                            format!(
                                "replica {}: mailbox id {} differs after applying its changes ({detail}); running a full compare",
                                self.peer, id.0
                            ),
                        ));
                    }
                    let why = format!("digest still differs after a full compare ({detail})");
                    self.full_or_block(id, user, was_full, &why, &mut again);
                }
                MailboxOutcome::Ahead { .. } | MailboxOutcome::Divergent { .. } => {
                    let why = format!("{o:?} after a full compare");
                    self.full_or_block(id, user, was_full, &why, &mut again);
                }
                MailboxOutcome::MissingBlob(h) => {
                    let why = format!("blob {h} could not be sent");
                    self.full_or_block(id, user, was_full, &why, &mut again);
                }
                MailboxOutcome::Invalid(why) => {
                    self.block(id, &user, &format!("refused: {why}"), Block::Diverged)
                }
            }
        }
        Ok(again.into_iter().collect())
    }

    /// Updates the remembered replica state after a round: what was planned from, plus what
    /// the replica confirmed applying completely. Anything uncertain is forgotten.
    fn remember(
        &mut self,
        planned: Vec<(String, ReplicaUser, bool)>,
        sent_users: &[UserUpdate],
        sent_headers: &[(MailboxId, Vec<u8>)],
        not_done: &HashSet<String>,
    ) {
        if self.known.len() + planned.len() > KNOWN_USERS_MAX {
            self.known.clear();
        }
        for (user, mut st, ok) in planned {
            if !ok || not_done.contains(&user) {
                continue;
            }
            if let Some(u) = sent_users.iter().find(|u| u.user == user) {
                // Rows not sent were left as the replica had them.
                if let Some(rows) = &u.rows {
                    st.rows = rows.clone();
                }
                st.mailboxes.retain(|h| u.mailboxes.contains(&h.id));
            }
            let mut sound = true;
            for (id, raw) in sent_headers {
                match MailboxHeader::decode(&id.0.to_be_bytes(), raw) {
                    Ok(h) if h.user == user => {
                        st.mailboxes.retain(|x| x.id != h.id);
                        st.mailboxes.push(h);
                    }
                    Ok(_) => {}
                    Err(_) => sound = false,
                }
            }
            if sound {
                self.known.insert(user, st);
            }
        }
    }

    /// A mailbox that did not apply: compared in full next round, or, if that was a full
    /// compare already, blocked until it changes.
    fn full_or_block(
        &mut self,
        id: MailboxId,
        user: String,
        was_full: bool,
        why: &str,
        again: &mut BTreeSet<String>,
    ) {
        if was_full {
            self.block(id, &user, why, Block::Diverged);
        } else {
            self.force_full.insert(id);
            again.insert(user);
        }
    }

    fn block(&mut self, id: MailboxId, user: &str, why: &str, how: Block) {
        let view = self.slot.view();
        if let Ok(Some(h)) = view.mailbox(id) {
            self.blocked.insert(id, (h.highestmodseq, h.digest));
        }
        self.force_full.remove(&id);
        let (kind, what) = match how {
            Block::Partial => (
                "replication_partial",
                "replicated except what is damaged here",
            ),
            Block::Diverged => {
                self.unfaithful = true;
                ("replica_diverged", "not replicated until it changes again")
            }
        };
        self.event(user_event(
            kind,
            user,
            format!(
                "replica {}: mailbox id {} is {what}: {why}",
                self.peer, id.0
            ),
        ));
    }

    /// Plans one user into `b`; true if the user needs another round.
    fn plan_user(
        &mut self,
        view: &SlotView,
        ms: &UserState,
        rs: &ReplicaUser,
        b: &mut ReplicaBatch,
        budget: &mut usize,
        blobs: &mut Vec<(MailboxId, BlobNeed)>,
    ) -> Result<bool, ReplError> {
        let mut again = false;
        let mut touched = false;
        let both_complete = ms.complete && rs.complete;
        let replica_ids: HashMap<MailboxId, &MailboxHeader> =
            rs.mailboxes.iter().map(|h| (h.id, h)).collect();
        let master_ids: HashSet<MailboxId> = ms.mailboxes.iter().map(|(h, _)| h.id).collect();
        for (mh, raw) in &ms.mailboxes {
            let mut rh = replica_ids.get(&mh.id).copied();
            if let Some(r) = rh
                && (r.user != mh.user || r.uidvalidity != mh.uidvalidity)
            {
                // A different mailbox under the same id over there (split brain).
                if !both_complete {
                    continue;
                }
                match self.orphan(view, r)? {
                    true => {
                        b.delete_mailboxes.push(r.id);
                        touched = true;
                        rh = None;
                    }
                    false => {
                        again = true;
                        continue;
                    }
                }
            }
            if self.blocked.get(&mh.id) == Some(&(mh.highestmodseq, mh.digest)) {
                continue;
            }
            self.blocked.remove(&mh.id);
            if let Some(r) = rh
                && same_header(r, mh)
                && !self.force_full.contains(&mh.id)
            {
                continue;
            }
            if *budget == 0 {
                again = true;
                continue;
            }
            let full = self.force_full.contains(&mh.id)
                || rh.is_some_and(|r| {
                    r.uidnext > mh.uidnext
                        || r.highestmodseq > mh.highestmodseq
                        // Tombstones below the vanished floor may be pruned: the change
                        // log no longer says everything since `r.highestmodseq`.
                        || r.highestmodseq < view.vanished_floor(mh)
                });
            let planned = if full {
                self.force_full.insert(mh.id);
                self.full_compare(view, mh, raw, rh, budget)?
            } else {
                plan_incremental(view, mh, raw, rh, budget)?
            };
            match planned {
                Planned::Nothing => {}
                Planned::Reconciled => again = true,
                Planned::Update {
                    update,
                    blobs: bl,
                    more,
                    full,
                } => {
                    if full {
                        self.force_full.insert(mh.id);
                    }
                    blobs.extend(bl.into_iter().map(|b| (mh.id, b)));
                    b.mailboxes.push(update);
                    touched = true;
                    again |= more;
                }
            }
        }
        if both_complete {
            for r in &rs.mailboxes {
                if master_ids.contains(&r.id) {
                    continue;
                }
                if view.mailbox_deleted(r.id)? || self.orphan(view, r)? {
                    b.delete_mailboxes.push(r.id);
                    touched = true;
                } else {
                    again = true;
                }
            }
        }
        let ids_differ = {
            let a: BTreeSet<_> = master_ids.iter().collect();
            let r: BTreeSet<_> = rs.mailboxes.iter().map(|h| &h.id).collect();
            a != r
        };
        if touched || ids_differ || !rows_equal(&ms.rows, &rs.rows) {
            b.users.push(UserUpdate {
                user: ms.user.clone(),
                // Rows are replaced only from a complete read, and not while the user's
                // mailboxes are still being merged here (the merge creates the user).
                rows: (ms.complete && !again).then(|| ms.rows.clone()),
                mailboxes: ms.mailboxes.iter().map(|(h, _)| h.id).collect(),
            });
        }
        Ok(again)
    }

    /// A mailbox the replica holds and the master neither has nor deleted: a copy that
    /// mastered the slot without this one (split brain) made it. Its messages the master
    /// lacks are appended to the master's mailbox of the same name (created if needed).
    /// Returns true when nothing of it is left to merge (the replica's copy may go).
    fn orphan(&mut self, view: &SlotView, r: &MailboxHeader) -> Result<bool, ReplError> {
        let recs = self.list_replica_records(r.id)?;
        let target = view.mailbox_by_name(&r.user, &r.name)?;
        let present: HashSet<(BlobHash, InternalDate)> = match &target {
            Some(t) => master_records(view, t.id)?
                .into_values()
                .filter_map(|e| e.ok())
                .map(|(rec, _)| (rec.blob, rec.internaldate))
                .collect(),
            None => HashSet::new(),
        };
        let missing: Vec<MessageRecord> = recs
            .into_values()
            .flatten()
            .filter(|rec| !present.contains(&(rec.blob, rec.internaldate)))
            .collect();
        if target.is_some() && missing.is_empty() {
            return Ok(true);
        }
        self.event(user_event(
            "split_brain_merge",
            &r.user,
            format!(
                "replica {} holds mailbox {:?} (id {}) with {} messages this master never saw; merging them here with new UIDs",
                self.peer,
                r.name,
                r.id.0,
                missing.len()
            ),
        ));
        // Written by this thread, which is the one that would confirm them: never held
        // for a replica ack.
        self.slot
            .execute(Op::ByReplication(Box::new(Op::EnsureUser {
                user: r.user.clone(),
            })))?;
        if target.is_none() {
            match self
                .slot
                .execute(Op::ByReplication(Box::new(Op::CreateMailbox {
                    user: r.user.clone(),
                    name: r.name.clone(),
                    special_use: SpecialUse::from_bits(r.special_use),
                }))) {
                Ok(_) | Err(StoreError::MailboxExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let t = self
            .slot
            .view()
            .mailbox_by_name(&r.user, &r.name)?
            .ok_or_else(|| {
                ReplError::Protocol(format!("mailbox {:?} vanished during a merge", r.name))
            })?;
        if !missing.is_empty() {
            let appends = self.fetch_as_new(&missing)?;
            self.slot.execute(Op::Reconcile(Box::new(ReconcilePlan {
                mailbox: t.id,
                uidvalidity: t.uidvalidity,
                uidnext_at_least: Uid(1),
                modseq_above: ModSeq(0),
                renumber: Vec::new(),
                appends,
            })))?;
        }
        Ok(false)
    }

    /// The replica's records of a mailbox: uid → record, `None` where its copy is damaged.
    fn list_replica_records(
        &mut self,
        id: MailboxId,
    ) -> Result<BTreeMap<Uid, Option<MessageRecord>>, ReplError> {
        let mut out = BTreeMap::new();
        let mut from = Uid(1);
        loop {
            let (entries, next) = match self.call(&Msg::ListRecords {
                mailbox: id,
                from,
                limit: LIST_PAGE,
            })? {
                Msg::Records {
                    mailbox,
                    entries,
                    next,
                } if mailbox == id => (entries, next),
                other => return Err(unexpected("ListRecords", &other)),
            };
            for e in entries {
                match e {
                    WireRecord::Good { uid, value } => {
                        let key = store_message_key(id, uid);
                        out.insert(uid, MessageRecord::decode(&key, &value).ok());
                    }
                    WireRecord::Corrupt { uid } => {
                        out.insert(uid, None);
                    }
                }
            }
            if out.len() > LIST_RECORDS_MAX {
                return Err(ReplError::Protocol(format!(
                    "mailbox id {} has more than {LIST_RECORDS_MAX} records: too large to compare whole",
                    id.0
                )));
            }
            match next {
                Some(n) if n > from => from = n,
                _ => return Ok(out),
            }
        }
    }

    /// Fetches the replica's copies of `recs`' blobs (verified here) and stages them as new
    /// messages for a reconcile.
    fn fetch_as_new(&mut self, recs: &[MessageRecord]) -> Result<Vec<NewMessage>, ReplError> {
        let want: Vec<BlobHash> = recs
            .iter()
            .map(|r| r.blob)
            .filter(|h| !self.slot.has_blob(h))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut staged: HashMap<BlobHash, StagedBlob> = self.fetch_blobs(&want)?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            let blob = match staged.get(&r.blob) {
                Some(b) => b.clone(),
                None => match self.slot.stage_existing(&r.blob) {
                    Ok(b) => {
                        staged.insert(r.blob, b.clone());
                        b
                    }
                    Err(e) => {
                        return Err(ReplError::Protocol(format!(
                            "cannot merge uid {}: its message is not available from replica {} or here ({e})",
                            r.uid.0, self.peer
                        )));
                    }
                },
            };
            out.push(NewMessage {
                blob,
                flags: r.flags.clone(),
                internaldate: r.internaldate,
            });
        }
        let all: Vec<StagedBlob> = staged.into_values().collect();
        self.slot.sync_blob_dirs(&all)?;
        Ok(out)
    }

    /// Asks the replica for blobs; see [`get_blobs`]. Unavailable ones are alerted.
    fn get_blobs(
        &mut self,
        want: &[BlobHash],
        each: impl FnMut(BlobHash, Vec<u8>) -> Result<(), ReplError>,
    ) -> Result<(), ReplError> {
        let unavailable = get_blobs(&mut self.conn, self.epoch, want, each)?;
        for h in unavailable {
            self.event(Event::alert(
                "replica_blob_unavailable",
                format!("replica {} has no good copy of blob {h}", self.peer),
            ));
        }
        Ok(())
    }

    fn refused_blob(&self, hash: &BlobHash, e: &dyn std::fmt::Display) {
        self.event(Event::alert(
            "replication_refused_blob",
            format!("blob {hash} from {} failed verification: {e}", self.peer),
        ));
    }

    /// Fetches blobs from the replica into this copy's blob store (each verified).
    pub fn fetch_blobs(
        &mut self,
        want: &[BlobHash],
    ) -> Result<HashMap<BlobHash, StagedBlob>, ReplError> {
        let mut out = HashMap::new();
        let mut refused = Vec::new();
        let slot = self.slot.clone();
        self.get_blobs(want, |hash, bytes| {
            match slot.put_blob_verified(&hash, &bytes) {
                Ok(b) => {
                    out.insert(hash, b);
                }
                Err(e) if e.is_corruption() => refused.push((hash, e.to_string())),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        })?;
        for (h, e) in refused {
            self.refused_blob(&h, &e);
        }
        Ok(out)
    }

    fn full_compare(
        &mut self,
        view: &SlotView,
        mh: &MailboxHeader,
        raw: &[u8],
        rh: Option<&MailboxHeader>,
        budget: &mut usize,
    ) -> Result<Planned, ReplError> {
        let theirs = match rh {
            Some(_) => self.list_replica_records(mh.id)?,
            None => BTreeMap::new(),
        };
        let ours = master_records(view, mh.id)?;
        let tombs = view.tombstones(mh.id)?;
        let floor = view.vanished_floor(mh);
        // Master messages by identity, for "already here under another UID".
        let mut by_identity: HashMap<(BlobHash, InternalDate), Vec<Uid>> = HashMap::new();
        for (uid, e) in &ours {
            if let Ok((r, _)) = e {
                by_identity
                    .entry((r.blob, r.internaldate))
                    .or_default()
                    .push(*uid);
            }
        }
        let mut upserts: Vec<(MessageRecord, Vec<u8>)> = Vec::new();
        let mut expunges: Vec<Expunge> = Vec::new();
        let mut renumber: Vec<Uid> = Vec::new();
        let mut reappend: Vec<MessageRecord> = Vec::new();
        let mut partial = false;
        let uids: BTreeSet<Uid> = ours.keys().chain(theirs.keys()).copied().collect();
        for uid in uids {
            match (ours.get(&uid), theirs.get(&uid)) {
                (Some(Ok((m, mraw))), Some(Some(r))) => {
                    if m.blob == r.blob && m.internaldate == r.internaldate {
                        if m != r {
                            upserts.push((m.clone(), mraw.clone()));
                        }
                    } else {
                        // Two different messages under one UID: both move to fresh UIDs.
                        renumber.push(uid);
                        reappend.push(r.clone());
                    }
                }
                (Some(Ok((m, mraw))), _) => upserts.push((m.clone(), mraw.clone())),
                // Damaged here: the replica's copy is left as it is; without one the
                // update cannot be complete.
                (Some(Err(_)), Some(Some(_))) => {}
                (Some(Err(_)), _) => partial = true,
                (None, Some(Some(r))) => {
                    let tomb = tombs.get(&uid);
                    let expunged_here = tomb.is_some_and(|t| t.blob.is_none_or(|b| b == r.blob));
                    let elsewhere_here = by_identity
                        .get(&(r.blob, r.internaldate))
                        .is_some_and(|v| !v.is_empty());
                    let pruned = uid < mh.uidnext && r.modseq <= floor;
                    if expunged_here || elsewhere_here || pruned {
                        expunges.push(Expunge {
                            uid,
                            modseq: tomb.map(|t| t.modseq).unwrap_or(mh.highestmodseq),
                            blob: Some(r.blob),
                        });
                    } else {
                        reappend.push(r.clone());
                    }
                }
                (None, Some(None)) => {
                    if let Some(t) = tombs.get(&uid) {
                        expunges.push(Expunge {
                            uid,
                            modseq: t.modseq,
                            blob: None,
                        });
                    }
                }
                (None, None) => {}
            }
        }
        let ahead =
            rh.is_some_and(|r| r.uidnext > mh.uidnext || r.highestmodseq > mh.highestmodseq);
        if !renumber.is_empty() || !reappend.is_empty() || ahead {
            let r = rh.cloned().unwrap_or_else(|| mh.clone());
            self.event(user_event(
                "split_brain_reconcile",
                &mh.user,
                format!(
                    "replica {} holds changes to {:?} this master never saw: {} messages appended here with new UIDs, {} of ours moved to new UIDs, UIDs raised past {} (UIDVALIDITY unchanged)",
                    self.peer,
                    mh.name,
                    reappend.len(),
                    renumber.len(),
                    r.uidnext.0
                ),
            ));
            let appends = self.fetch_as_new(&reappend)?;
            let res = self.slot.execute(Op::Reconcile(Box::new(ReconcilePlan {
                mailbox: mh.id,
                uidvalidity: mh.uidvalidity,
                uidnext_at_least: r.uidnext,
                modseq_above: r.highestmodseq,
                renumber,
                appends,
            })))?;
            if !matches!(res, OpResult::Reconciled { .. }) {
                return Err(ReplError::Protocol(format!("reconcile answered {res:?}")));
            }
            return Ok(Planned::Reconciled);
        }
        if upserts.is_empty() && expunges.is_empty() && rh.is_some_and(|r| same_header(r, mh)) {
            return Ok(Planned::Nothing);
        }
        upserts.sort_by_key(|(r, _)| (r.modseq, r.uid));
        // A full compare re-lists the mailbox every round, so its pages are large; it takes
        // the rest of the round's budget.
        let (upserts, more) = cut_at_modseq(upserts, FULL_PAGE_RECORDS_MAX);
        let upto = if more {
            upserts
                .last()
                .map(|(r, _)| r.modseq)
                .unwrap_or(mh.highestmodseq)
        } else {
            mh.highestmodseq
        };
        let expunges = if more { Vec::new() } else { expunges };
        *budget = 0;
        let blobs = upserts
            .iter()
            .map(|(r, _)| BlobNeed {
                hash: r.blob,
                size: r.size,
                surely_absent: false,
            })
            .collect();
        Ok(Planned::Update {
            update: MailboxUpdate {
                id: mh.id,
                header: raw.to_vec(),
                upto,
                partial,
                upserts: upserts.into_iter().map(|(r, raw)| (r.uid, raw)).collect(),
                expunges,
            },
            blobs,
            more,
            full: true,
        })
    }

    /// Offers the batch's blobs, sends those the replica lacks, then the batch. A blob that
    /// fails its hash here is never sent: the records needing it stay behind (the replica
    /// keeps what it has), the update is marked partial, and the mailbox is blocked until
    /// it changes or a full compare is asked for.
    fn push(
        &mut self,
        mut b: ReplicaBatch,
        blobs: &[(MailboxId, BlobNeed)],
    ) -> Result<Vec<(MailboxId, MailboxOutcome)>, ReplError> {
        // Newly appended messages' blobs go straight out (one round trip fewer, which is
        // most of a synchronous ack's cost); anything else, or a large batch (a COPY whose
        // blobs the replica already holds), is offered first.
        let direct_bytes: u64 = blobs
            .iter()
            .filter(|(_, b)| b.surely_absent)
            .map(|(_, b)| u64::from(b.size))
            .sum();
        let direct_ok = direct_bytes <= DIRECT_PUSH_BYTES_MAX;
        let direct: BTreeSet<BlobHash> = blobs
            .iter()
            .filter(|(_, b)| direct_ok && b.surely_absent)
            .map(|(_, b)| b.hash)
            .collect();
        let offer: Vec<BlobHash> = blobs
            .iter()
            .map(|(_, b)| b.hash)
            .filter(|h| !direct.contains(h))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let need = if offer.is_empty() {
            Vec::new()
        } else {
            match self.call(&Msg::Offer { hashes: offer })? {
                Msg::Need { hashes } => hashes,
                other => return Err(unexpected("Offer", &other)),
            }
        };
        let mut bad: HashSet<BlobHash> = HashSet::new();
        for h in direct.into_iter().chain(need) {
            let ctx = ReadContext::default();
            match self.slot.read_blob(&h, &ctx) {
                Ok(bytes) => self.conn.send_blob(self.epoch, h, bytes)?,
                Err(e) if e.is_corruption() => {
                    self.event(Event::alert(
                        "replication_withheld",
                        format!(
                            "blob {h} fails verification here and is not sent to replica {}: {e}",
                            self.peer
                        ),
                    ));
                    bad.insert(h);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !bad.is_empty() {
            // Only the records needing a damaged blob stay behind; the rest travels.
            for m in &mut b.mailboxes {
                let before = m.upserts.len();
                let id = m.id;
                m.upserts.retain(|(uid, raw)| {
                    MessageRecord::decode(&store_message_key(id, *uid), raw)
                        .map(|r| !bad.contains(&r.blob))
                        .unwrap_or(false)
                });
                m.partial |= m.upserts.len() != before;
            }
        }
        for m in &b.mailboxes {
            let last_page = MailboxHeader::decode(&m.id.0.to_be_bytes(), &m.header)
                .is_ok_and(|h| h.highestmodseq == m.upto);
            if m.partial && last_page {
                self.partial.insert(m.id);
            }
        }
        match self.call(&Msg::Apply { batch: b })? {
            Msg::Applied { outcomes } => Ok(outcomes),
            other => Err(unexpected("Apply", &other)),
        }
    }

    /// Compares the whole slot with the replica without changing anything.
    pub fn verify(&mut self) -> Result<VerifyReport, ReplError> {
        let mut rep = VerifyReport {
            slot: self.slot.name().to_string(),
            replica: self.peer.clone(),
            ..VerifyReport::default()
        };
        let view = self.slot.view();
        let users = self.all_users(&view)?;
        rep.users = users.len() as u64;
        for chunk in users.chunks(ROUND_USERS_MAX) {
            let states = match self.call(&Msg::GetState {
                users: chunk.to_vec(),
            })? {
                Msg::State { users } => users,
                other => return Err(unexpected("GetState", &other)),
            };
            for (user, st) in chunk.iter().zip(states) {
                let ms = view.user_state(user)?;
                let rs = decode_state(st);
                if !ms.complete || !rs.complete {
                    rep.differ(format!("{user}: some of its data is damaged on one side"));
                }
                if !rows_equal(&ms.rows, &rs.rows) {
                    rep.differ(format!("{user}: account record or subscriptions differ"));
                }
                let theirs: HashMap<MailboxId, &MailboxHeader> =
                    rs.mailboxes.iter().map(|h| (h.id, h)).collect();
                for r in &rs.mailboxes {
                    if !ms.mailboxes.iter().any(|(h, _)| h.id == r.id) {
                        rep.differ(format!("{user}: mailbox {:?} only on the replica", r.name));
                    }
                }
                for (mh, _) in &ms.mailboxes {
                    rep.mailboxes += 1;
                    rep.messages += u64::from(mh.exists);
                    let Some(r) = theirs.get(&mh.id) else {
                        rep.differ(format!(
                            "{user}: mailbox {:?} missing on the replica",
                            mh.name
                        ));
                        continue;
                    };
                    if !same_header(r, mh) {
                        rep.differ(format!(
                            "{user} {:?}: header differs (uidnext {} / {}, modseq {} / {}, exists {} / {}, digest {:08x} / {:08x})",
                            mh.name,
                            mh.uidnext.0,
                            r.uidnext.0,
                            mh.highestmodseq.0,
                            r.highestmodseq.0,
                            mh.exists,
                            r.exists,
                            mh.digest,
                            r.digest
                        ));
                    }
                    let theirs = self.list_replica_records(mh.id)?;
                    let ours = master_records(&view, mh.id)?;
                    let uids: BTreeSet<Uid> = ours.keys().chain(theirs.keys()).copied().collect();
                    for uid in uids {
                        let same = match (ours.get(&uid), theirs.get(&uid)) {
                            (Some(Ok((m, _))), Some(Some(r))) => m == r,
                            _ => false,
                        };
                        if !same {
                            rep.differ(format!(
                                "{user} {:?} uid {}: records differ",
                                mh.name, uid.0
                            ));
                        }
                    }
                }
            }
        }
        Ok(rep)
    }
}

/// Incremental: the changes since the replica's highestmodseq, one budget's worth.
fn plan_incremental(
    view: &SlotView,
    mh: &MailboxHeader,
    raw: &[u8],
    rh: Option<&MailboxHeader>,
    budget: &mut usize,
) -> Result<Planned, ReplError> {
    let since = rh.map(|r| r.highestmodseq).unwrap_or(ModSeq(0));
    let page = view.changes_after(mh.id, since, *budget)?;
    let mut upserts = Vec::new();
    let mut expunges = Vec::new();
    let mut blobs = Vec::new();
    let mut partial = false;
    let mut last = since;
    for c in page.changes {
        match c {
            Change::Record(r, v) => {
                last = last.max(r.modseq);
                match rh {
                    // A flag change of a message the replica holds: no blob travels.
                    Some(h) if r.uid < h.uidnext => {}
                    // Appended since: the replica cannot have it under this record yet.
                    Some(_) => blobs.push(BlobNeed {
                        hash: r.blob,
                        size: r.size,
                        surely_absent: true,
                    }),
                    None => blobs.push(BlobNeed {
                        hash: r.blob,
                        size: r.size,
                        surely_absent: false,
                    }),
                }
                upserts.push((r.uid, v));
            }
            Change::Expunged(e) => {
                last = last.max(e.modseq);
                expunges.push(e);
            }
            // Damaged here (alerted by the read): not sent; the replica keeps its copy.
            Change::Corrupt { .. } => partial = true,
        }
    }
    let upto = if page.truncated {
        last
    } else {
        mh.highestmodseq
    };
    *budget = budget.saturating_sub(upserts.len() + expunges.len());
    Ok(Planned::Update {
        update: MailboxUpdate {
            id: mh.id,
            header: raw.to_vec(),
            upto,
            partial,
            upserts,
            expunges,
        },
        blobs,
        more: page.truncated,
        full: false,
    })
}

type MasterRecords = BTreeMap<Uid, Result<(MessageRecord, Vec<u8>), ()>>;

/// The master's records of a mailbox, by uid (`Err` where damaged).
fn master_records(view: &SlotView, id: MailboxId) -> Result<MasterRecords, ReplError> {
    let mut out = BTreeMap::new();
    let mut from = Uid(1);
    loop {
        let (entries, next) = view.record_entries(id, from, LIST_PAGE as usize)?;
        for e in entries {
            match e {
                RecordEntry::Good(r, v) => {
                    out.insert(r.uid, Ok((r, v)));
                }
                RecordEntry::Corrupt(uid) => {
                    out.insert(uid, Err(()));
                }
            }
        }
        if out.len() > LIST_RECORDS_MAX {
            return Err(ReplError::Protocol(format!(
                "mailbox id {} has more than {LIST_RECORDS_MAX} records",
                id.0
            )));
        }
        match next {
            Some(n) => from = n,
            None => return Ok(out),
        }
    }
}

/// The first `page` records (more if the modseq at the cut continues), and whether any
/// were left out.
fn cut_at_modseq(
    mut v: Vec<(MessageRecord, Vec<u8>)>,
    page: usize,
) -> (Vec<(MessageRecord, Vec<u8>)>, bool) {
    if v.len() <= page {
        return (v, false);
    }
    let mut end = page.max(1);
    let m = v[end - 1].0.modseq;
    while end < v.len() && v[end].0.modseq == m {
        end += 1;
    }
    let more = end < v.len();
    v.truncate(end);
    (v, more)
}

fn store_message_key(id: MailboxId, uid: Uid) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&uid.0.to_be_bytes());
    k
}

fn unexpected(req: &str, got: &Msg) -> ReplError {
    ReplError::Protocol(format!("{req} answered with {}", got.name()))
}

fn user_event(kind: &str, user: &str, detail: String) -> Event {
    let mut ev = Event::alert(kind, detail);
    ev.user = Some(user.to_string());
    ev
}

/// Sends `GetBlobs` for `want` (in chunks) and hands each blob received to `each`, which
/// must verify it. Returns the hashes the replica lacks or holds damaged.
pub(crate) fn get_blobs(
    conn: &mut Conn,
    epoch: Epoch,
    want: &[BlobHash],
    mut each: impl FnMut(BlobHash, Vec<u8>) -> Result<(), ReplError>,
) -> Result<Vec<BlobHash>, ReplError> {
    let mut unavailable = Vec::new();
    for chunk in want.chunks(FETCH_BATCH) {
        conn.send(
            epoch,
            &Msg::GetBlobs {
                hashes: chunk.to_vec(),
            },
        )?;
        let asked: HashSet<&BlobHash> = chunk.iter().collect();
        loop {
            match conn.recv()?.msg {
                Msg::Blob { hash, bytes } => {
                    if !asked.contains(&hash) {
                        return Err(ReplError::Protocol(format!(
                            "{} sent blob {hash} nobody asked for",
                            conn.peer
                        )));
                    }
                    each(hash, bytes)?;
                }
                Msg::BlobsEnd { missing, corrupt } => {
                    unavailable.extend(missing);
                    unavailable.extend(corrupt);
                    break;
                }
                Msg::Error { reason } => return Err(ReplError::Protocol(reason)),
                other => return Err(unexpected("GetBlobs", &other)),
            }
        }
    }
    Ok(unavailable)
}

/// A one-off connection to a replica for reading (verify).
pub(crate) fn one_off(slot: &Slot, d: &Dial<'_>, events: Arc<EventLog>) -> Result<Sync, ReplError> {
    let (conn, epoch) = open(d, Purpose::Fetch, None)?;
    Ok(Sync {
        conn,
        epoch,
        slot: slot.clone(),
        events,
        peer: d.replica.to_string(),
        force_full: HashSet::new(),
        blocked: HashMap::new(),
        partial: HashSet::new(),
        known: HashMap::new(),
        unfaithful: false,
        link: None,
    })
}
