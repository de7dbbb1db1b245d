//! Randomized multi-client state checker for the selected-mailbox engine.
//!
//! Several sessions share two mailboxes for a bounded time, each running a seeded random
//! mix of APPEND, STORE (plain, UID, UNCHANGEDSINCE), EXPUNGE, UID MOVE, NOOP, FETCH,
//! IDLE and (for QRESYNC sessions) disconnect + `SELECT ... (QRESYNC ...)`. Sessions use
//! every reporting mode: IMAP4rev1 plain, CONDSTORE, QRESYNC (VANISHED), IMAP4rev2.
//!
//! Each session keeps the client-side model a real client would keep, built only from
//! what the server sent it (sequence number → UID, flags and MODSEQ per UID), and checks
//! every response against it as it arrives:
//! - sequence numbers and UIDs agree (EXPUNGE/VANISHED/FETCH name messages the session
//!   knows, UIDs ascend with sequence numbers, EXISTS never shrinks the view);
//! - MODSEQ never goes down, per message and for the mailbox (HIGHESTMODSEQ);
//! - immutable fields (RFC822.SIZE, INTERNALDATE, EMAILID) of a UID never change, across
//!   all sessions.
//!
//! At the end every session catches up (NOOP) and its model must equal the store's
//! state exactly (UIDs and flags; MODSEQs where the session tracks them), and a final
//! QRESYNC reconnect from each QRESYNC session's cache must converge to it too. The
//! expunge-tombstone window is shrunk so that reconnects exercise both the exact
//! (tombstone) and the fallback (known UIDs minus live UIDs) VANISHED paths, and pruning.
//!
//! `TANDEM_CHECKER_SEED` replays a failing run; `TANDEM_CHECKER_SECS` changes the length.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use store::{MailboxHeader, SystemFlags};

const MAILBOXES: [&str; 2] = ["INBOX", "Shared"];
const KEYWORDS: [&str; 3] = ["$Work", "$Junk", "Later"];
/// Modifications an expunge tombstone is kept for in this test (production: 100,000).
const VANISHED_WINDOW: u64 = 40;
const TRANSCRIPT_LINES: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    CondStore,
    QResync,
    Rev2,
}

/// A tiny deterministic PRNG (xorshift64*): no dependency, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What every session has seen of immutable fields, by (mailbox, uid).
type Immutable = Arc<Mutex<HashMap<(String, u32), BTreeMap<&'static str, String>>>>;

/// The client-side model of one session.
struct Model {
    label: String,
    mode: Mode,
    mailbox: &'static str,
    uidvalidity: u32,
    /// Sequence number - 1 → UID (0: announced by EXISTS, UID not fetched yet).
    uids: Vec<u32>,
    flags: HashMap<u32, BTreeSet<String>>,
    modseqs: HashMap<u32, u64>,
    /// Highest HIGHESTMODSEQ response code seen (it must never go down).
    announced: u64,
    /// What QRESYNC resumes from: the last HIGHESTMODSEQ announced while every message
    /// of the view had a known UID. (One announced while EXISTS had just added messages
    /// whose UIDs are not fetched yet covers them; resuming from it would skip them.)
    highestmodseq: u64,
    /// A HIGHESTMODSEQ waiting for the unknown UIDs to be fetched.
    pending_modseq: Option<u64>,
    transcript: Vec<String>,
    immutable: Immutable,
}

#[derive(Debug)]
enum Tok {
    Atom(String),
    List(Vec<Tok>),
}

fn tokenize(s: &str) -> Vec<Tok> {
    fn list(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Vec<Tok> {
        let mut out = Vec::new();
        while let Some(&c) = chars.peek() {
            match c {
                ' ' => {
                    chars.next();
                }
                '(' => {
                    chars.next();
                    out.push(Tok::List(list(chars)));
                }
                ')' => {
                    chars.next();
                    return out;
                }
                '"' => {
                    chars.next();
                    let mut q = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => q.extend(chars.next()),
                            '"' => break,
                            c => q.push(c),
                        }
                    }
                    out.push(Tok::Atom(q));
                }
                _ => {
                    let mut a = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == ' ' || c == '(' || c == ')' {
                            break;
                        }
                        // BODY[...] sections keep their brackets and inner spaces.
                        if c == '[' {
                            for c in chars.by_ref() {
                                a.push(c);
                                if c == ']' {
                                    break;
                                }
                            }
                            continue;
                        }
                        a.push(c);
                        chars.next();
                    }
                    out.push(Tok::Atom(a));
                }
            }
        }
        out
    }
    list(&mut s.chars().peekable())
}

fn atom(t: &Tok) -> &str {
    match t {
        Tok::Atom(a) => a,
        Tok::List(_) => "",
    }
}

fn parse_set(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                out.extend(a.min(b)..=a.max(b));
            }
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

fn code_value(line: &str, code: &str) -> Option<u64> {
    let start = line.find(&format!("[{code} "))? + code.len() + 2;
    line[start..].split(']').next()?.parse().ok()
}

impl Model {
    fn fail(&self, why: String) -> ! {
        panic!(
            "{}: {why}\n--- last responses of {} ---\n{}",
            self.label,
            self.label,
            self.transcript.join("\n")
        );
    }

    fn note(&mut self, line: &str) {
        if self.transcript.len() >= TRANSCRIPT_LINES {
            self.transcript.remove(0);
        }
        let mut l = line.to_string();
        l.truncate(300);
        self.transcript.push(l);
    }

    fn check_order(&self) {
        let known: Vec<u32> = self.uids.iter().copied().filter(|&u| u != 0).collect();
        if known.windows(2).any(|w| w[0] >= w[1]) {
            self.fail(format!(
                "UIDs not ascending with sequence numbers: {known:?}"
            ));
        }
    }

    fn highestmodseq(&mut self, m: u64) {
        if m < self.announced {
            self.fail(format!(
                "HIGHESTMODSEQ went down: {} -> {m}",
                self.announced
            ));
        }
        self.announced = m;
        if self.uids.contains(&0) {
            self.pending_modseq = Some(m);
        } else {
            self.highestmodseq = m;
        }
    }

    /// Adopts a pending HIGHESTMODSEQ once every UID is known.
    fn settle_modseq(&mut self) {
        if !self.uids.contains(&0)
            && let Some(m) = self.pending_modseq.take()
        {
            self.highestmodseq = self.highestmodseq.max(m);
        }
    }

    fn remove_uid(&mut self, uid: u32) {
        if let Some(i) = self.uids.iter().position(|&u| u == uid) {
            self.uids.remove(i);
            self.flags.remove(&uid);
            self.modseqs.remove(&uid);
            return;
        }
        // A message announced by EXISTS whose UID the client has not fetched yet: it is
        // one of the unknown slots between the known UIDs around it, and those slots are
        // interchangeable, so removing one of them keeps the map right (RFC 7162 3.2.10).
        let slot = (0..self.uids.len()).find(|&i| {
            let below = self.uids[..i]
                .iter()
                .rev()
                .find(|&&u| u != 0)
                .copied()
                .unwrap_or(0);
            let above = self.uids[i..]
                .iter()
                .find(|&&u| u != 0)
                .copied()
                .unwrap_or(u32::MAX);
            self.uids[i] == 0 && below < uid && uid < above
        });
        match slot {
            Some(i) => {
                self.uids.remove(i);
            }
            None => self.fail(format!("VANISHED names UID {uid}, unknown here")),
        }
    }

    /// Applies one response line (tagged lines only carry response codes).
    fn apply(&mut self, line: &str) {
        self.note(line);
        if let Some(m) = code_value(line, "HIGHESTMODSEQ") {
            self.highestmodseq(m);
        }
        let Some(rest) = line.strip_prefix("* ") else {
            return;
        };
        if let Some(set) = rest.strip_prefix("VANISHED (EARLIER) ") {
            // Resync: UIDs the client may or may not know; unknown ones are ignored.
            for u in parse_set(set) {
                if self.uids.contains(&u) {
                    self.remove_uid(u);
                }
            }
            return;
        }
        if let Some(set) = rest.strip_prefix("VANISHED ") {
            if self.mode != Mode::QResync {
                self.fail("VANISHED sent to a session without QRESYNC".into());
            }
            for u in parse_set(set) {
                self.remove_uid(u);
            }
            return;
        }
        let mut words = rest.splitn(3, ' ');
        let (Some(n), Some(kind)) = (words.next(), words.next()) else {
            return;
        };
        let Ok(n) = n.parse::<usize>() else {
            return;
        };
        match kind {
            "EXISTS" => {
                if n < self.uids.len() {
                    self.fail(format!("EXISTS {n} below the {} known", self.uids.len()));
                }
                self.uids.resize(n, 0);
            }
            "EXPUNGE" => {
                if self.mode == Mode::QResync {
                    self.fail("EXPUNGE sent to a QRESYNC session".into());
                }
                if n == 0 || n > self.uids.len() {
                    self.fail(format!("EXPUNGE {n} but {} messages", self.uids.len()));
                }
                let uid = self.uids.remove(n - 1);
                self.flags.remove(&uid);
                self.modseqs.remove(&uid);
            }
            "RECENT" if self.mode == Mode::Rev2 => {
                self.fail("RECENT sent to an IMAP4rev2 session".into());
            }
            "FETCH" => self.apply_fetch(n, words.next().unwrap_or("")),
            _ => {}
        }
    }

    fn apply_fetch(&mut self, seq: usize, items: &str) {
        if seq == 0 || seq > self.uids.len() {
            self.fail(format!(
                "FETCH for message {seq} but {} messages",
                self.uids.len()
            ));
        }
        let toks = tokenize(items);
        let Some(Tok::List(items)) = toks.first() else {
            self.fail(format!("unparsable FETCH {items}"));
        };
        let mut fields: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut uid = None;
        let mut flags = None;
        let mut modseq = None;
        let mut it = items.iter();
        while let Some(name) = it.next() {
            let value = it.next();
            match atom(name) {
                "UID" => uid = value.map(|v| atom(v).parse::<u32>().unwrap()),
                "FLAGS" => {
                    if let Some(Tok::List(l)) = value {
                        let set: BTreeSet<String> = l
                            .iter()
                            .map(|t| atom(t).to_string())
                            .filter(|f| f != "\\Recent")
                            .collect();
                        if self.mode == Mode::Rev2 && l.iter().any(|t| atom(t) == "\\Recent") {
                            self.fail("\\Recent sent to an IMAP4rev2 session".into());
                        }
                        flags = Some(set);
                    }
                }
                "MODSEQ" => {
                    if let Some(Tok::List(l)) = value {
                        modseq = l.first().map(|t| atom(t).parse::<u64>().unwrap());
                    }
                }
                "RFC822.SIZE" => {
                    fields.insert("size", value.map(atom).unwrap_or("").to_string());
                }
                "INTERNALDATE" => {
                    fields.insert("date", value.map(atom).unwrap_or("").to_string());
                }
                "EMAILID" => {
                    if let Some(Tok::List(l)) = value {
                        fields.insert("emailid", l.first().map(atom).unwrap_or("").into());
                    }
                }
                _ => {}
            }
        }
        let known = self.uids[seq - 1];
        let uid = match (uid, known) {
            (Some(u), 0) => {
                self.uids[seq - 1] = u;
                self.check_order();
                u
            }
            (Some(u), k) if u != k => self.fail(format!(
                "FETCH says message {seq} is UID {u}, known as UID {k}"
            )),
            (Some(u), _) => u,
            (None, 0) => self.fail(format!("FETCH without UID for unknown message {seq}")),
            (None, k) => k,
        };
        if let Some(m) = modseq {
            if self.mode == Mode::Plain {
                self.fail("MODSEQ sent to a session without CONDSTORE".into());
            }
            let old = self.modseqs.get(&uid).copied().unwrap_or(0);
            if m < old {
                self.fail(format!("MODSEQ of UID {uid} went down: {old} -> {m}"));
            }
            self.modseqs.insert(uid, m);
        }
        if let Some(f) = flags {
            self.flags.insert(uid, f);
        }
        if !fields.is_empty() {
            let mut changed = None;
            {
                let mut seen = self.immutable.lock().unwrap_or_else(|p| p.into_inner());
                let entry = seen.entry((self.mailbox.to_string(), uid)).or_default();
                for (k, v) in fields {
                    match entry.get(k) {
                        Some(old) if *old != v => changed = Some(format!("{k}: {old} -> {v}")),
                        Some(_) => {}
                        None => {
                            entry.insert(k, v);
                        }
                    }
                }
            }
            if let Some(c) = changed {
                self.fail(format!("an immutable field of UID {uid} changed: {c}"));
            }
        }
    }
}

struct Player {
    client: Client,
    model: Model,
    rng: Rng,
    addr: std::net::SocketAddr,
    appended: u32,
    /// To tell which QRESYNC path a reconnect takes (the test's view, not the client's).
    slot: store::Slot,
    /// Reconnects whose MODSEQ was within / past the tombstone window.
    resyncs_exact: u32,
    resyncs_past_window: u32,
}

fn flag_list(rng: &mut Rng) -> String {
    let mut f = Vec::new();
    for (name, p) in [("\\Seen", 50), ("\\Flagged", 30), ("\\Answered", 20)] {
        if rng.chance(p) {
            f.push(name.to_string());
        }
    }
    for k in KEYWORDS {
        if rng.chance(25) {
            f.push(k.to_string());
        }
    }
    f.join(" ")
}

impl Player {
    async fn run(&mut self, text: &str) -> String {
        let (untagged, done) = self.client.cmd(text).await;
        for l in &untagged {
            self.model.apply(l);
        }
        self.model.apply(&done);
        if !done.contains(" OK") && !done.contains("[EXPUNGEISSUED]") {
            self.model.fail(format!("{text} answered {done}"));
        }
        done
    }

    fn fetch_items(&self) -> &'static str {
        match self.model.mode {
            Mode::Plain => "(UID FLAGS RFC822.SIZE INTERNALDATE EMAILID)",
            _ => "(UID FLAGS MODSEQ RFC822.SIZE INTERNALDATE EMAILID)",
        }
    }

    /// Like a real client: learn the UIDs and flags of messages EXISTS announced.
    async fn fetch_unknown(&mut self) {
        for _ in 0..3 {
            self.model.settle_modseq();
            let Some(first) = self.model.uids.iter().position(|&u| u == 0) else {
                return;
            };
            let items = self.fetch_items();
            let cmd = format!("FETCH {}:* {items}", first + 1);
            self.run(&cmd).await;
        }
    }

    async fn select(&mut self, resync: bool) {
        let mode = self.model.mode;
        let enable = match mode {
            Mode::Plain => None,
            Mode::CondStore => Some("ENABLE CONDSTORE"),
            Mode::QResync => Some("ENABLE QRESYNC"),
            Mode::Rev2 => Some("ENABLE IMAP4rev2"),
        };
        if let Some(e) = enable {
            self.run(e).await;
        }
        let mb = self.model.mailbox;
        let cmd = if resync && self.model.uidvalidity != 0 {
            let known: Vec<String> = self
                .model
                .uids
                .iter()
                .filter(|&&u| u != 0)
                .map(u32::to_string)
                .collect();
            let known = if known.is_empty() {
                String::new()
            } else {
                format!(" {}", known.join(","))
            };
            format!(
                "SELECT {mb} (QRESYNC ({} {}{known}))",
                self.model.uidvalidity, self.model.highestmodseq
            )
        } else {
            format!("SELECT {mb}")
        };
        let (untagged, done) = self.client.cmd(&cmd).await;
        if !done.contains("OK [READ-WRITE]") {
            self.model.fail(format!("{cmd}: {done}"));
        }
        let validity = untagged
            .iter()
            .find_map(|l| code_value(l, "UIDVALIDITY"))
            .unwrap_or(0) as u32;
        if !resync || validity != self.model.uidvalidity {
            self.model.uids.clear();
            self.model.flags.clear();
            self.model.modseqs.clear();
            self.model.highestmodseq = 0;
            self.model.pending_modseq = None;
        }
        self.model.announced = 0;
        let resynced = resync && validity == self.model.uidvalidity;
        self.model.uidvalidity = validity;
        if resynced {
            self.resync_sequence_map(&untagged);
        }
        // The SELECT's own EXISTS (the first) was used for the resync; a later one comes
        // from messages that arrived while SELECT ran, and is applied as usual.
        let mut first_exists = resynced;
        for l in &untagged {
            let skip = if l.ends_with(" EXISTS") {
                std::mem::replace(&mut first_exists, false)
            } else {
                resynced && l.starts_with("* VANISHED (EARLIER) ")
            };
            if skip {
                self.model.note(l);
                continue;
            }
            self.model.apply(l);
        }
        self.model.apply(&done);
        self.fetch_unknown().await;
    }

    /// After a QRESYNC SELECT, the cached UIDs minus `VANISHED (EARLIER)` plus the UIDs
    /// of the FETCH responses (changed and new messages) must be exactly EXISTS
    /// messages: that is the new sequence map. The FETCHes are then applied against it,
    /// which checks each one's sequence number.
    fn resync_sequence_map(&mut self, untagged: &[String]) {
        let mut exists = None;
        let mut uids: BTreeSet<u32> = self
            .model
            .uids
            .iter()
            .copied()
            .filter(|&u| u != 0)
            .collect();
        let mut vanished = BTreeSet::new();
        for l in untagged {
            let Some(r) = l.strip_prefix("* ") else {
                continue;
            };
            if let Some(n) = r.strip_suffix(" EXISTS") {
                exists = exists.or(n.parse::<usize>().ok());
            } else if let Some(set) = r.strip_prefix("VANISHED (EARLIER) ") {
                vanished.extend(parse_set(set));
            } else if let Some(i) = r.find(" FETCH (UID ") {
                let uid: u32 = r[i + 12..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                uids.insert(uid);
            }
        }
        for v in &vanished {
            uids.remove(v);
            self.model.flags.remove(v);
            self.model.modseqs.remove(v);
        }
        let uids: Vec<u32> = uids.into_iter().collect();
        if Some(uids.len()) != exists {
            self.model.fail(format!(
                "after QRESYNC the cache and FETCHes give {} messages but EXISTS is {exists:?}: {uids:?}\nresponses:\n{}",
                uids.len(),
                untagged.join("\n")
            ));
        }
        self.model.uids = uids;
    }

    async fn step(&mut self) {
        let mode = self.model.mode;
        let n = self.model.uids.len();
        let roll = self.rng.below(100);
        match roll {
            0..=17 => {
                let mb = MAILBOXES[self.rng.below(2)];
                self.appended += 1;
                let body = format!(
                    "From: a@example.org\r\nSubject: {} {}\r\n\r\nbody {}\r\n",
                    self.model.label,
                    self.appended,
                    self.rng.next()
                );
                let flags = flag_list(&mut self.rng);
                let (u, done) = self.client.append(mb, &flags, body.as_bytes()).await;
                for l in &u {
                    self.model.apply(l);
                }
                self.model.apply(&done);
                if !done.contains("OK") {
                    self.model.fail(format!("APPEND: {done}"));
                }
            }
            18..=44 if n > 0 => {
                let a = 1 + self.rng.below(n);
                let b = (a + self.rng.below(3)).min(n);
                let op = ["+", "-", ""][self.rng.below(3)];
                let mut flags = flag_list(&mut self.rng);
                if flags.is_empty() {
                    flags = "$Work".into();
                }
                let use_uid = self.rng.chance(50);
                let set = if use_uid {
                    let (ua, ub) = (self.model.uids[a - 1], self.model.uids[b - 1]);
                    if ua == 0 || ub == 0 {
                        return;
                    }
                    format!("UID STORE {ua}:{ub}")
                } else {
                    format!("STORE {a}:{b}")
                };
                let cond = if mode != Mode::Plain && self.rng.chance(30) {
                    let uid = self.model.uids[a - 1];
                    let m = self.model.modseqs.get(&uid).copied().unwrap_or(1);
                    format!(" (UNCHANGEDSINCE {m})")
                } else {
                    String::new()
                };
                self.run(&format!("{set}{cond} {op}FLAGS ({flags})")).await;
            }
            45..=54 if n > 0 => {
                let a = 1 + self.rng.below(n);
                self.run(&format!("STORE {a} +FLAGS (\\Deleted)")).await;
                if self.rng.chance(50) {
                    self.run("EXPUNGE").await;
                } else if let Some(&uid) = self.model.uids.get(a - 1)
                    && uid != 0
                {
                    self.run(&format!("UID EXPUNGE {uid}")).await;
                }
            }
            55..=62 if n > 0 => {
                let uid = self.model.uids[self.rng.below(n)];
                if uid != 0 {
                    let to = if self.model.mailbox == "INBOX" {
                        "Shared"
                    } else {
                        "INBOX"
                    };
                    self.run(&format!("UID MOVE {uid} {to}")).await;
                }
            }
            63..=74 => {
                self.run("NOOP").await;
            }
            75..=84 => {
                let items = self.fetch_items();
                let cmd = if self.rng.chance(50) {
                    format!("UID FETCH 1:* {items}")
                } else if n > 0 {
                    format!("FETCH 1:* {items}")
                } else {
                    "NOOP".into()
                };
                self.run(&cmd).await;
            }
            85..=91 => self.idle().await,
            92..=99 if mode == Mode::QResync => self.reconnect().await,
            _ => {
                self.run("NOOP").await;
            }
        }
        self.fetch_unknown().await;
    }

    async fn idle(&mut self) {
        let tag = self.client.next_tag();
        self.client.send(format!("{tag} IDLE\r\n").as_bytes()).await;
        loop {
            let line = self.client.read_response().await.unwrap();
            if line.starts_with('+') {
                break;
            }
            if !line.starts_with("* ") {
                self.model.fail(format!("IDLE: {line}"));
            }
            self.model.apply(&line);
        }
        let until = Instant::now() + Duration::from_millis(20 + self.rng.below(150) as u64);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.client.read_response()).await {
                Ok(Some(line)) => self.model.apply(&line),
                Ok(None) => self.model.fail("connection closed in IDLE".into()),
                Err(_) => break,
            }
        }
        self.client.send(b"DONE\r\n").await;
        let (u, done) = self.client.until_tagged(&tag).await;
        for l in &u {
            self.model.apply(l);
        }
        self.model.apply(&done);
    }

    async fn reconnect(&mut self) {
        let _ = self.client.cmd("LOGOUT").await;
        if self.rng.chance(30) {
            // Offline for a while, as a phone is: the others keep changing the mailbox,
            // often past the tombstone window.
            tokio::time::sleep(Duration::from_millis(200 + self.rng.below(400) as u64)).await;
        }
        self.resume().await;
    }

    /// Reconnects at once, without going offline.
    async fn resume_now(&mut self) {
        let _ = self.client.cmd("LOGOUT").await;
        self.resume().await;
    }

    /// Logs in again and resynchronises with QRESYNC from the cached state.
    async fn resume(&mut self) {
        self.client = Client::login(self.addr).await;
        let view = self.slot.view();
        if let Ok(Some(h)) = view.mailbox_by_name(USER, self.model.mailbox) {
            if self.model.highestmodseq < view.vanished_floor(&h).0 {
                self.resyncs_past_window += 1;
            } else {
                self.resyncs_exact += 1;
            }
        }
        self.select(true).await;
    }
}

/// The store's truth for a mailbox: UID → (flags as the client sees them, MODSEQ).
fn truth(env: &Env, mailbox: &str) -> (MailboxHeader, BTreeMap<u32, (BTreeSet<String>, u64)>) {
    let view = env.slot.view();
    let h = view.mailbox_by_name(USER, mailbox).unwrap().unwrap();
    let mut out = BTreeMap::new();
    for e in view.messages(&h).unwrap() {
        let r = e.unwrap();
        let mut f: BTreeSet<String> = r.flags.keywords.iter().cloned().collect();
        for (bit, name) in [
            (SystemFlags::SEEN, "\\Seen"),
            (SystemFlags::ANSWERED, "\\Answered"),
            (SystemFlags::FLAGGED, "\\Flagged"),
            (SystemFlags::DELETED, "\\Deleted"),
            (SystemFlags::DRAFT, "\\Draft"),
        ] {
            if r.flags.system.has(bit) {
                f.insert(name.to_string());
            }
        }
        out.insert(r.uid.0, (f, r.modseq.0));
    }
    (h, out)
}

fn converged(p: &Player, want: &BTreeMap<u32, (BTreeSet<String>, u64)>) {
    let m = &p.model;
    let uids: Vec<u32> = want.keys().copied().collect();
    if m.uids != uids {
        m.fail(format!(
            "did not converge on {}: session has UIDs {:?}, the store {uids:?}",
            m.mailbox, m.uids
        ));
    }
    for (uid, (flags, modseq)) in want {
        if m.flags.get(uid) != Some(flags) {
            m.fail(format!(
                "UID {uid} has flags {:?} here, {flags:?} in the store",
                m.flags.get(uid)
            ));
        }
        if m.mode != Mode::Plain
            && let Some(mine) = m.modseqs.get(uid)
            && mine != modseq
        {
            m.fail(format!(
                "UID {uid} has MODSEQ {mine} here, {modseq} in the store"
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_converge() {
    let seed: u64 = std::env::var("TANDEM_CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let secs: u64 = std::env::var("TANDEM_CHECKER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("state checker: seed {seed} ({secs} s); replay with TANDEM_CHECKER_SEED={seed}");
    let env = start_with(|c| {
        c.commands_per_second = 0;
        // Every SELECT goes through the server's scan cache (`scan_cache.rs`), so its
        // catch-up is checked too.
        c.select_cache_min_messages = 0;
    })
    .await;
    env.slot.debug_set_vanished_window(VANISHED_WINDOW);
    let mut setup = Client::login(env.addr).await;
    let (_, done) = setup.cmd("CREATE Shared").await;
    assert!(done.contains("OK"), "{done}");
    for i in 0..6 {
        for mb in MAILBOXES {
            let body = format!("Subject: seed {i}\r\n\r\n{mb} {i}\r\n");
            setup.append(mb, "", body.as_bytes()).await;
        }
    }
    let immutable: Immutable = Arc::default();
    let plan = [
        (Mode::Plain, "INBOX"),
        (Mode::CondStore, "INBOX"),
        (Mode::QResync, "INBOX"),
        (Mode::Rev2, "Shared"),
        (Mode::QResync, "Shared"),
    ];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (k, (mode, mailbox)) in plan.into_iter().enumerate() {
        let addr = env.addr;
        let immutable = immutable.clone();
        let slot = env.slot.clone();
        tasks.push(tokio::spawn(async move {
            let mut p = Player {
                client: Client::login(addr).await,
                model: Model {
                    label: format!("session {k} ({mode:?} on {mailbox})"),
                    mode,
                    mailbox,
                    uidvalidity: 0,
                    uids: Vec::new(),
                    flags: HashMap::new(),
                    modseqs: HashMap::new(),
                    announced: 0,
                    highestmodseq: 0,
                    pending_modseq: None,
                    transcript: Vec::new(),
                    immutable,
                },
                rng: Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k as u64 + 1))),
                addr,
                appended: 0,
                slot,
                resyncs_exact: 0,
                resyncs_past_window: 0,
            };
            p.select(false).await;
            let mut steps = 0u32;
            while Instant::now() < deadline {
                p.step().await;
                steps += 1;
                if p.rng.chance(30) {
                    tokio::time::sleep(Duration::from_millis(p.rng.below(4) as u64)).await;
                }
            }
            (p, steps)
        }));
    }
    let mut players = Vec::new();
    for t in tasks {
        match t.await {
            Ok(p) => players.push(p),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let total: u32 = players.iter().map(|p| p.1).sum();
    let exact: u32 = players.iter().map(|p| p.0.resyncs_exact).sum();
    let past: u32 = players.iter().map(|p| p.0.resyncs_past_window).sum();
    eprintln!(
        "state checker: {total} steps in {secs} s; QRESYNC reconnects: {exact} within the \
         tombstone window, {past} past it"
    );
    // Quiet now: every session catches up and must match the store exactly.
    for (p, _) in players.iter_mut() {
        p.run("NOOP").await;
        p.fetch_unknown().await;
        let (_, want) = truth(&env, p.model.mailbox);
        converged(p, &want);
    }
    // Each QRESYNC client goes offline while its mailbox changes well past the tombstone
    // window (so the fallback VANISHED path is taken for sure), then reconnects; then
    // reconnects again at once (the exact path). Both must converge.
    for (p, _) in players.iter_mut() {
        if p.model.mode != Mode::QResync {
            continue;
        }
        let _ = p.client.cmd("LOGOUT").await;
        let mut other = Client::login(env.addr).await;
        other.cmd(&format!("SELECT {}", p.model.mailbox)).await;
        other
            .append(p.model.mailbox, "", b"Subject: gone\r\n\r\nsoon gone\r\n")
            .await;
        other.cmd("STORE * +FLAGS (\\Deleted)").await;
        other.cmd("EXPUNGE").await;
        for i in 0..VANISHED_WINDOW + 5 {
            let op = if i % 2 == 0 { "+" } else { "-" };
            other.cmd(&format!("STORE 1 {op}FLAGS (Toggle)")).await;
        }
        let _ = other.cmd("LOGOUT").await;
        let past_before = p.resyncs_past_window;
        p.resume().await;
        assert_eq!(
            p.resyncs_past_window,
            past_before + 1,
            "{}: not past the window",
            p.model.label
        );
        let (_, want) = truth(&env, p.model.mailbox);
        converged(p, &want);
        let exact_before = p.resyncs_exact;
        p.resume_now().await;
        assert_eq!(p.resyncs_exact, exact_before + 1, "{}", p.model.label);
        converged(p, &want);
    }
    // What SELECT says about the whole mailbox (from the scan cache, caught up across
    // all the changes above): the first unseen message and the keywords in use.
    for (p, _) in players.iter_mut() {
        let (_, want) = truth(&env, p.model.mailbox);
        let (untagged, done) = p.client.cmd(&format!("EXAMINE {}", p.model.mailbox)).await;
        assert!(done.contains("OK"), "{done}");
        let unseen = untagged.iter().find_map(|l| code_value(l, "UNSEEN"));
        let first = want
            .values()
            .position(|(f, _)| !f.contains("\\Seen"))
            .map(|i| i as u64 + 1);
        if p.model.mode != Mode::Rev2 {
            assert_eq!(unseen, first, "{}: UNSEEN in SELECT", p.model.label);
        }
        let flags_line = untagged
            .iter()
            .find(|l| l.starts_with("* FLAGS ("))
            .cloned()
            .unwrap_or_default();
        for (f, _) in want.values() {
            for k in f.iter().filter(|k| !k.starts_with('\\')) {
                assert!(
                    flags_line.contains(k.as_str()),
                    "{}: keyword {k} missing from {flags_line}",
                    p.model.label
                );
            }
        }
    }
    for mb in MAILBOXES {
        let (h, want) = truth(&env, mb);
        let top = want.values().map(|v| v.1).max().unwrap_or(0);
        assert!(
            top <= h.highestmodseq.0,
            "a message MODSEQ is above HIGHESTMODSEQ"
        );
    }
}
