//! SEARCH / UID SEARCH: every RFC 3501 key, plus MODSEQ, OLDER/YOUNGER and the ESEARCH
//! `RETURN (MIN MAX COUNT ALL)` form the parser accepts.
//!
//! Keys are evaluated in three-valued logic: first from the message's current record
//! alone (flags, UID, size, dates; records are read from one store snapshot in bounded
//! chunks); only when the answer still depends on content is the message read and parsed
//! (`mime::SearchMessage`). Messages whose record or blob is damaged are left out and the
//! command ends in `NO [SERVERBUG]` after the results. Messages expunged by another
//! session but not yet reported to this one are left out too.
//!
//! RFC 7162 3.1.5: a search using the MODSEQ key reports the highest MODSEQ of the
//! matches (`* SEARCH 2 5 (MODSEQ 917162500)`, or `MODSEQ` in ESEARCH). IMAP4rev2
//! sessions always get ESEARCH (RFC 9051 6.4.4), `RETURN (ALL)` when none was given.

use std::collections::HashMap;
use std::fmt::Write as _;

use imap_proto::{SearchArgs, SearchKey, SearchReturn, SeqOrSaved};
use store::{MessageRecord, ModSeq, SystemFlags, Uid};

use crate::message::read_message;
use crate::mime::SearchMessage;
use crate::resp::Reply;
use crate::resp::store_error;
use crate::selected::{Lines, SCAN_CHUNK, Selected, read_records};
use crate::session::{Session, SessionError};
use crate::time::date_of;

/// What a key needs to know about one message.
struct Ctx<'a> {
    index: usize,
    rec: &'a MessageRecord,
    recent: bool,
    now_unix_secs: i64,
    /// Every sequence set in the key, resolved once (keyed by its address in the key).
    sets: &'a HashMap<usize, Vec<bool>>,
}

/// Resolves each UID/sequence set of `key` against the view once, so evaluating a set
/// key per message is O(1).
fn resolve_sets(key: &SearchKey, sel: &Selected, out: &mut HashMap<usize, Vec<bool>>) {
    match key {
        SearchKey::Uid(SeqOrSaved::Set(s)) | SearchKey::Seq(SeqOrSaved::Set(s)) => {
            let uid = matches!(key, SearchKey::Uid(_));
            let mut hit = vec![false; sel.len()];
            for i in sel.resolve_lenient(s, uid) {
                hit[i] = true;
            }
            out.insert(s as *const _ as usize, hit);
        }
        SearchKey::Not(k) => resolve_sets(k, sel, out),
        SearchKey::Or(a, b) => {
            resolve_sets(a, sel, out);
            resolve_sets(b, sel, out);
        }
        SearchKey::And(keys) => keys.iter().for_each(|k| resolve_sets(k, sel, out)),
        _ => {}
    }
}

fn sys(ctx: &Ctx<'_>, bit: u8) -> bool {
    ctx.rec.flags.system.has(bit)
}

fn in_set(ctx: &Ctx<'_>, set: &SeqOrSaved) -> bool {
    match set {
        SeqOrSaved::Saved => false,
        SeqOrSaved::Set(s) => ctx
            .sets
            .get(&(s as *const _ as usize))
            .and_then(|hit| hit.get(ctx.index).copied())
            .unwrap_or(false),
    }
}

/// `Some(answer)`, or `None` when the answer needs the message content and `content`
/// was not given.
fn eval(key: &SearchKey, ctx: &Ctx<'_>, content: Option<&SearchMessage<'_>>) -> Option<bool> {
    use SearchKey as K;
    Some(match key {
        K::All => true,
        K::Answered => sys(ctx, SystemFlags::ANSWERED),
        K::Unanswered => !sys(ctx, SystemFlags::ANSWERED),
        K::Deleted => sys(ctx, SystemFlags::DELETED),
        K::Undeleted => !sys(ctx, SystemFlags::DELETED),
        K::Draft => sys(ctx, SystemFlags::DRAFT),
        K::Undraft => !sys(ctx, SystemFlags::DRAFT),
        K::Flagged => sys(ctx, SystemFlags::FLAGGED),
        K::Unflagged => !sys(ctx, SystemFlags::FLAGGED),
        K::Seen => sys(ctx, SystemFlags::SEEN),
        K::Unseen => !sys(ctx, SystemFlags::SEEN),
        K::Recent => ctx.recent,
        K::Old => !ctx.recent,
        K::New => ctx.recent && !sys(ctx, SystemFlags::SEEN),
        K::Keyword(k) => keyword(ctx, k),
        K::Unkeyword(k) => !keyword(ctx, k),
        K::Before(d) => date_of(ctx.rec.internaldate) < *d,
        K::On(d) => date_of(ctx.rec.internaldate) == *d,
        K::Since(d) => date_of(ctx.rec.internaldate) >= *d,
        K::Larger(n) => ctx.rec.size > *n,
        K::Smaller(n) => ctx.rec.size < *n,
        K::ModSeq(n) => ctx.rec.modseq.0 >= *n,
        K::Older(secs) => ctx.now_unix_secs - ctx.rec.internaldate.unix_secs >= i64::from(*secs),
        K::Younger(secs) => ctx.now_unix_secs - ctx.rec.internaldate.unix_secs <= i64::from(*secs),
        // RFC 8474: EMAILID names the blob; no message has a THREADID here.
        K::EmailId(id) => crate::objectid::email_id(&ctx.rec.blob) == *id,
        K::ThreadId(_) => false,
        K::Uid(set) => in_set(ctx, set),
        K::Seq(set) => in_set(ctx, set),
        K::Not(k) => !eval(k, ctx, content)?,
        K::And(keys) => {
            let mut unknown = false;
            for k in keys {
                match eval(k, ctx, content) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    Some(true) => {}
                }
            }
            if unknown {
                return None;
            }
            true
        }
        K::Or(a, b) => match (eval(a, ctx, content), eval(b, ctx, content)) {
            (Some(true), _) | (_, Some(true)) => true,
            (Some(false), Some(false)) => false,
            _ => return None,
        },
        content_key => return content.and_then(|c| c.eval(content_key)),
    })
}

/// System flag names are accepted as KEYWORD arguments too (`KEYWORD \Seen` is odd
/// but harmless).
fn keyword(ctx: &Ctx<'_>, k: &str) -> bool {
    let bit = match k.to_ascii_lowercase().as_str() {
        "\\seen" => SystemFlags::SEEN,
        "\\answered" => SystemFlags::ANSWERED,
        "\\flagged" => SystemFlags::FLAGGED,
        "\\deleted" => SystemFlags::DELETED,
        "\\draft" => SystemFlags::DRAFT,
        _ => return ctx.rec.flags.has_keyword(k),
    };
    sys(ctx, bit)
}

impl Selected {
    /// Like `resolve`, but sequence numbers past the end are ignored (inside SEARCH a
    /// set is a filter, not a reference).
    pub(crate) fn resolve_lenient(&self, set: &imap_proto::SequenceSet, uid: bool) -> Vec<usize> {
        match self.resolve(set, uid) {
            Ok(v) => v,
            Err(_) => {
                let n = self.len() as u32;
                let clamped = imap_proto::SequenceSet {
                    ranges: set
                        .ranges
                        .iter()
                        .filter_map(|r| {
                            let c = |x: u32| if x == imap_proto::STAR { x } else { x.min(n) };
                            let (a, b) = (c(r.start), c(r.end));
                            (a != 0 && b != 0).then_some(imap_proto::SeqRange { start: a, end: b })
                        })
                        .collect(),
                };
                self.resolve(&clamped, uid).unwrap_or_default()
            }
        }
    }
}

/// The messages a SEARCH program matched.
pub(crate) struct Matches {
    /// `(sequence number, uid)` of each match, ascending.
    pub hits: Vec<(u32, u32)>,
    /// UIDs of messages whose record or blob failed verification (left out of `hits`).
    pub damaged: Vec<u32>,
}

/// Does the program use the MODSEQ key anywhere (RFC 7162 3.1.5)?
fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::And(keys) => keys.iter().any(uses_modseq),
        _ => false,
    }
}

impl Session {
    /// Runs a search program (the top-level keys, ANDed) over the selected mailbox.
    /// Shared by SEARCH, SORT and THREAD.
    pub(crate) async fn search_matches(&mut self, keys: &[SearchKey]) -> Result<Matches, Reply> {
        self.search_with_modseq(keys).await.map(|(m, _)| m)
    }

    /// [`Session::search_matches`] plus the highest MODSEQ among the matches.
    async fn search_with_modseq(&mut self, keys: &[SearchKey]) -> Result<(Matches, ModSeq), Reply> {
        let (user, slot) = self.ctx()?;
        let Some(sel) = self.selected.as_ref() else {
            return Err(Reply::bad("No mailbox selected"));
        };
        let key = SearchKey::And(keys.to_vec());
        let now = slot.clock().now_unix_secs();
        let view = slot.view();
        let header = match view.mailbox(sel.id) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(Reply::no("[NONEXISTENT] The selected mailbox was deleted")),
            Err(e) => return Err(store_error(&e)),
        };
        let rev2 = self.enabled.rev2;
        let mut hits: Vec<(u32, u32)> = Vec::new();
        let mut damaged = Vec::new();
        let mut top = ModSeq(0);
        let mut sets = HashMap::new();
        resolve_sets(&key, sel, &mut sets);
        let mut start = 0;
        while start < sel.len() {
            let end = (start + SCAN_CHUNK).min(sel.len());
            let uids: Vec<Uid> = (start..end).map(|i| sel.uid_at(i)).collect();
            let entries = read_records(&view, &header, &uids).map_err(|e| store_error(&e))?;
            for (k, entry) in entries.into_iter().enumerate() {
                let index = start + k;
                let rec = match entry {
                    // Expunged meanwhile: no longer matches anything.
                    None => continue,
                    Some(Ok(r)) => r,
                    Some(Err(c)) => {
                        damaged.push(c.uid.0);
                        continue;
                    }
                };
                let ctx = Ctx {
                    index,
                    rec: &rec,
                    recent: !rev2 && sel.is_recent(rec.uid),
                    now_unix_secs: now,
                    sets: &sets,
                };
                let matched = match eval(&key, &ctx, None) {
                    Some(b) => b,
                    None => match read_message(&slot, &user, &sel.name, &rec).await {
                        Some(bytes) => {
                            let msg = SearchMessage::parse(&bytes);
                            eval(&key, &ctx, Some(&msg)).unwrap_or(false)
                        }
                        None => {
                            damaged.push(rec.uid.0);
                            false
                        }
                    },
                };
                if matched {
                    hits.push((index as u32 + 1, rec.uid.0));
                    top = top.max(rec.modseq);
                }
            }
            start = end;
        }
        Ok((Matches { hits, damaged }, top))
    }

    pub(crate) async fn cmd_search(
        &mut self,
        tag: &str,
        uid: bool,
        args: &SearchArgs,
    ) -> Result<Reply, SessionError> {
        if let Some(cs) = &args.charset
            && !cs.eq_ignore_ascii_case("UTF-8")
            && !cs.eq_ignore_ascii_case("US-ASCII")
        {
            return Ok(Reply::no(
                "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset",
            ));
        }
        let with_modseq = args.keys.iter().any(uses_modseq);
        if with_modseq {
            // RFC 7162 3.1: SEARCH MODSEQ is a CONDSTORE-enabling command.
            self.enabled.condstore = true;
        }
        let (Matches { hits, damaged }, top) = match self.search_with_modseq(&args.keys).await {
            Ok(m) => m,
            Err(r) => return Ok(r),
        };
        // RFC 7162 3.1.5: no MODSEQ when nothing matched.
        let modseq = (with_modseq && !hits.is_empty()).then_some(top.0);
        let ret = match &args.ret {
            Some(r) => Some(*r),
            None if self.enabled.rev2 => Some(SearchReturn {
                all: true,
                ..SearchReturn::default()
            }),
            None => None,
        };
        if let Some(ret) = &ret {
            self.finish_esearch(tag, uid, ret, &hits, modseq);
        } else {
            let mut line = b"* SEARCH".to_vec();
            for &(seq, u) in &hits {
                let _ = write!(Lines(&mut line), " {}", if uid { u } else { seq });
            }
            if let Some(m) = modseq {
                let _ = write!(Lines(&mut line), " (MODSEQ {m})");
            }
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
        if !damaged.is_empty() {
            return Ok(crate::resp::damaged(&damaged));
        }
        Ok(Reply::ok("SEARCH completed"))
    }
}
