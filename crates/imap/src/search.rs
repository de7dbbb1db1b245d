//! SEARCH / UID SEARCH: every RFC 3501 key, plus MODSEQ, OLDER/YOUNGER and the ESEARCH
//! `RETURN (MIN MAX COUNT ALL)` form the parser accepts.
//!
//! Keys are evaluated in three-valued logic: first from the cached record alone
//! (flags, UID, size, dates); only when the answer still depends on content is the
//! message read and parsed (`mime::SearchMessage`). Messages whose record or blob is
//! damaged are left out and the command ends in `NO [SERVERBUG]` after the results.

use std::collections::HashMap;
use std::fmt::Write as _;

use imap_proto::{SearchArgs, SearchKey, SeqOrSaved};
use store::{MessageRecord, ReadContext, SystemFlags};

use crate::mime::SearchMessage;
use crate::resp::{Reply, uid_set};
use crate::selected::{Lines, Selected};
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
            let mut hit = vec![false; sel.msgs.len()];
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
                let n = self.msgs.len() as u32;
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

impl Session {
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
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let key = SearchKey::And(args.keys.clone());
        let now = slot.clock().now_unix_secs();
        let mut hits: Vec<(usize, u32)> = Vec::new();
        let mut damaged = Vec::new();
        let mut sets = HashMap::new();
        resolve_sets(&key, sel, &mut sets);
        for (index, m) in sel.msgs.iter().enumerate() {
            if m.expunged {
                continue;
            }
            let rec = match &m.entry {
                Ok(r) => r,
                Err(c) => {
                    damaged.push(c.uid.0);
                    continue;
                }
            };
            let ctx = Ctx {
                index,
                rec,
                recent: m.recent,
                now_unix_secs: now,
                sets: &sets,
            };
            let matched = match eval(&key, &ctx, None) {
                Some(b) => b,
                None => {
                    let (s, hash) = (slot.clone(), rec.blob);
                    let rctx = ReadContext {
                        user: Some(user.clone()),
                        mailbox: Some(sel.name.clone()),
                        uid: Some(rec.uid.0),
                    };
                    match tokio::task::spawn_blocking(move || s.read_blob(&hash, &rctx)).await {
                        Ok(Ok(bytes)) => {
                            let msg = SearchMessage::parse(&bytes);
                            eval(&key, &ctx, Some(&msg)).unwrap_or(false)
                        }
                        _ => {
                            damaged.push(rec.uid.0);
                            false
                        }
                    }
                }
            };
            if matched {
                hits.push((index + 1, m.uid.0));
            }
        }
        let nums: Vec<u32> = hits
            .iter()
            .map(|&(seq, u)| if uid { u } else { seq as u32 })
            .collect();
        let mut line = Vec::new();
        match &args.ret {
            None => {
                line.extend_from_slice(b"* SEARCH");
                for n in &nums {
                    let _ = write!(Lines(&mut line), " {n}");
                }
            }
            Some(ret) => {
                let _ = write!(Lines(&mut line), "* ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.extend_from_slice(b" UID");
                }
                let all = !(ret.min || ret.max || ret.count || ret.all);
                if !nums.is_empty() {
                    if ret.min {
                        let _ = write!(Lines(&mut line), " MIN {}", nums[0]);
                    }
                    if ret.max {
                        let _ = write!(Lines(&mut line), " MAX {}", nums[nums.len() - 1]);
                    }
                }
                if ret.count {
                    let _ = write!(Lines(&mut line), " COUNT {}", nums.len());
                }
                if (ret.all || all) && !nums.is_empty() {
                    let _ = write!(Lines(&mut line), " ALL {}", uid_set(&nums));
                }
            }
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        if !damaged.is_empty() {
            return Ok(crate::resp::damaged(&damaged));
        }
        Ok(Reply::ok("SEARCH completed"))
    }
}
