//! FETCH / UID FETCH: every RFC 3501 item plus BINARY[.PEEK]/BINARY.SIZE (RFC 3516)
//! and MODSEQ.
//!
//! Order of work: resolve the set against the session's view; for `UID FETCH ...
//! (CHANGEDSINCE m VANISHED)` (RFC 7162 3.2.6) send the expunged UIDs first; then, per
//! chunk of `FETCH_CHUNK` messages, read the current records from one store snapshot,
//! keep those changed after CHANGEDSINCE (RFC 7162 3.1.4.1), set `\Seen` in one durable
//! STORE if any item is a non-PEEK body fetch on a writable mailbox (and include FLAGS,
//! and MODSEQ once CONDSTORE is on, in their responses, RFC 3501 6.4.5), then read and
//! render message by message, flushing output as it grows.
//!
//! A message whose record or blob fails verification gets no FETCH response; the others
//! are answered and the command ends in `NO [SERVERBUG]` naming the damaged UIDs. A
//! message another session expunged (this session still numbers it, RFC 3501 7.4.1) has
//! no data any more: FETCH ends in `NO [EXPUNGEISSUED]`, UID FETCH skips it.

use std::fmt::Write as _;

use imap_proto::write::astring;
use imap_proto::{FetchArgs, FetchAttr, Section, SectionText, SeqOrSaved};
use store::{FlagMode, Flags, MessageRecord, ModSeq, Op, OpResult, SystemFlags, Uid};

use crate::message::read_message;
use crate::mime::{ParsedMessage, partial};
use crate::resp::{Reply, store_error, write_flags};
use crate::selected::{Lines, ranges_text, read_records, vanished_since};
use crate::session::{OUT_FLUSH_BYTES, Session, SessionError};
use crate::time::internaldate_str;

fn needs_blob(a: &FetchAttr) -> bool {
    !matches!(
        a,
        FetchAttr::Flags
            | FetchAttr::InternalDate
            | FetchAttr::Rfc822Size
            | FetchAttr::Uid
            | FetchAttr::ModSeq
            | FetchAttr::EmailId
            | FetchAttr::ThreadId
    )
}

fn sets_seen(a: &FetchAttr) -> bool {
    match a {
        FetchAttr::Rfc822 | FetchAttr::Rfc822Text => true,
        FetchAttr::BodySection { peek, .. } | FetchAttr::Binary { peek, .. } => !peek,
        _ => false,
    }
}

fn dotted(part: &[u32]) -> String {
    part.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// The section spec as echoed in the response item name, e.g. `1.2.HEADER.FIELDS (To)`.
fn section_spec(s: &Section) -> String {
    let mut out = dotted(&s.part);
    let Some(text) = &s.text else { return out };
    if !out.is_empty() {
        out.push('.');
    }
    let names = |list: &[String]| {
        list.iter()
            .map(|n| String::from_utf8_lossy(&astring(n.as_bytes())).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match text {
        SectionText::Header => out.push_str("HEADER"),
        SectionText::HeaderFields(l) => {
            let _ = write!(out, "HEADER.FIELDS ({})", names(l));
        }
        SectionText::HeaderFieldsNot(l) => {
            let _ = write!(out, "HEADER.FIELDS.NOT ({})", names(l));
        }
        SectionText::Text => out.push_str("TEXT"),
        SectionText::Mime => out.push_str("MIME"),
    }
    out
}

fn literal(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(Lines(out), "{{{}}}\r\n", data.len());
    out.extend_from_slice(data);
}

/// Why one message's FETCH response could not be written.
enum ItemError {
    UnknownCte(String),
}

/// Writes one item (with a leading space unless first).
fn write_item(
    out: &mut Vec<u8>,
    attr: &FetchAttr,
    rec: &MessageRecord,
    recent: bool,
    msg: Option<&ParsedMessage<'_>>,
) -> Result<(), ItemError> {
    let empty = ParsedMessage::parse(b"");
    let msg = msg.unwrap_or(&empty);
    match attr {
        FetchAttr::Uid => {
            let _ = write!(Lines(out), "UID {}", rec.uid.0);
        }
        FetchAttr::Flags => {
            out.extend_from_slice(b"FLAGS ");
            write_flags(out, &rec.flags, recent);
        }
        FetchAttr::InternalDate => {
            let _ = write!(
                Lines(out),
                "INTERNALDATE {}",
                internaldate_str(rec.internaldate)
            );
        }
        FetchAttr::Rfc822Size => {
            let _ = write!(Lines(out), "RFC822.SIZE {}", rec.size);
        }
        FetchAttr::ModSeq => {
            let _ = write!(Lines(out), "MODSEQ ({})", rec.modseq.0);
        }
        FetchAttr::EmailId => crate::objectid::write_email_id(out, &rec.blob),
        FetchAttr::ThreadId => out.extend_from_slice(b"THREADID NIL"),
        FetchAttr::Preview { .. } => {
            out.extend_from_slice(b"PREVIEW ");
            out.extend_from_slice(&imap_proto::write::nstring(
                msg.preview().as_deref().map(str::as_bytes),
            ));
        }
        FetchAttr::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            out.extend_from_slice(&msg.envelope());
        }
        FetchAttr::Body => {
            out.extend_from_slice(b"BODY ");
            out.extend_from_slice(&msg.body_structure(false));
        }
        FetchAttr::BodyStructure => {
            out.extend_from_slice(b"BODYSTRUCTURE ");
            out.extend_from_slice(&msg.body_structure(true));
        }
        FetchAttr::Rfc822 => {
            out.extend_from_slice(b"RFC822 ");
            literal(out, msg.raw());
        }
        FetchAttr::Rfc822Header => {
            out.extend_from_slice(b"RFC822.HEADER ");
            literal(out, msg.header());
        }
        FetchAttr::Rfc822Text => {
            out.extend_from_slice(b"RFC822.TEXT ");
            literal(out, msg.text());
        }
        FetchAttr::BodySection {
            section,
            partial: p,
            ..
        } => {
            let data = msg.section(section);
            let _ = write!(Lines(out), "BODY[{}]", section_spec(section));
            if let Some(p) = p {
                let _ = write!(Lines(out), "<{}>", p.origin);
            }
            out.push(b' ');
            literal(out, partial(&data, *p));
        }
        FetchAttr::Binary {
            part, partial: p, ..
        } => {
            let data = msg.binary_section(part).map_err(
                |crate::mime::BinaryError::UnknownCte { encoding }| ItemError::UnknownCte(encoding),
            )?;
            let _ = write!(Lines(out), "BINARY[{}]", dotted(part));
            if let Some(p) = p {
                let _ = write!(Lines(out), "<{}>", p.origin);
            }
            let data = partial(&data, *p);
            // RFC 3516: binary content goes in a literal8 when it holds NUL.
            if data.contains(&0) {
                out.extend_from_slice(b" ~");
            } else {
                out.push(b' ');
            }
            literal(out, data);
        }
        FetchAttr::BinarySize { part } => {
            let n = msg.binary_size(part).map_err(
                |crate::mime::BinaryError::UnknownCte { encoding }| ItemError::UnknownCte(encoding),
            )?;
            let _ = write!(Lines(out), "BINARY.SIZE[{}] {n}", dotted(part));
        }
    }
    Ok(())
}

/// Messages read and rendered per store round trip: bounds the records held at once
/// and the size of each implicit `\Seen` write.
const FETCH_CHUNK: usize = 256;

impl Session {
    pub(crate) async fn cmd_fetch(
        &mut self,
        uid: bool,
        args: &FetchArgs,
    ) -> Result<Reply, SessionError> {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        let SeqOrSaved::Set(set) = &args.set else {
            return Ok(Reply::bad("No saved search result ($)"));
        };
        if args.vanished && !self.enabled.qresync {
            return Ok(Reply::bad(
                "VANISHED needs ENABLE QRESYNC first (RFC 7162 3.2.6)",
            ));
        }
        let mut attrs = args.attrs.clone();
        // RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ; both turn CONDSTORE on (3.1).
        if args.changed_since.is_some() && !attrs.contains(&FetchAttr::ModSeq) {
            attrs.push(FetchAttr::ModSeq);
        }
        if attrs.contains(&FetchAttr::ModSeq) {
            self.enabled.condstore = true;
        } else if self.enabled.condstore && attrs.contains(&FetchAttr::Flags) {
            // Once CONDSTORE is on, flags travel with their MODSEQ (as Dovecot and
            // Cyrus do): a client can then keep its per-message MODSEQs current.
            attrs.push(FetchAttr::ModSeq);
        }
        if uid && !attrs.contains(&FetchAttr::Uid) {
            // RFC 3501 6.4.8: UID FETCH responses always carry the UID.
            attrs.insert(0, FetchAttr::Uid);
        }
        let modes = self.enabled;
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let idx = match sel.resolve(set, uid) {
            Ok(i) => i,
            Err(why) => return Ok(Reply::bad(why)),
        };
        let view = slot.view();
        let header = match view.mailbox(sel.id) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Reply::no("[NONEXISTENT] The selected mailbox was deleted")),
            Err(e) => return Ok(store_error(&e)),
        };
        if args.vanished
            && let Some(since) = args.changed_since
        {
            // RFC 7162 3.2.6: the expunged UIDs of the set come first.
            match vanished_since(&view, &header, ModSeq(since), Some(set)) {
                Ok(v) => write_vanished_earlier(&mut self.out, &v),
                Err(e) => return Ok(store_error(&e)),
            }
        }
        let set_seen = !sel.read_only && attrs.iter().any(sets_seen);
        let blob_needed = attrs.iter().any(needs_blob);
        let add_flags = !attrs.contains(&FetchAttr::Flags);
        let add_modseq = modes.condstore && !attrs.contains(&FetchAttr::ModSeq);
        let add_uid = modes.condstore && !attrs.contains(&FetchAttr::Uid);
        let mailbox_name = sel.name.clone();
        let mut damaged = Vec::new();
        let mut gone = 0usize;
        let mut unknown_cte = None;
        for chunk in idx.chunks(FETCH_CHUNK) {
            let Some(sel) = self.selected.as_mut() else {
                break;
            };
            let uids: Vec<Uid> = chunk.iter().map(|&i| sel.uid_at(i)).collect();
            let mut recs = match read_records(&view, &header, &uids) {
                Ok(r) => r,
                Err(e) => return Ok(store_error(&e)),
            };
            // RFC 7162 3.1.4.1: with CHANGEDSINCE, only messages changed after it.
            let skip: Vec<bool> = recs
                .iter()
                .map(|r| {
                    args.changed_since
                        .is_some_and(|since| matches!(r, Some(Ok(rec)) if rec.modseq.0 <= since))
                })
                .collect();
            let mut seen_now = vec![false; chunk.len()];
            if set_seen {
                let targets: Vec<Uid> = recs
                    .iter()
                    .zip(&skip)
                    .filter_map(|(r, skip)| match r {
                        Some(Ok(rec)) if !skip && !rec.flags.system.has(SystemFlags::SEEN) => {
                            Some(rec.uid)
                        }
                        _ => None,
                    })
                    .collect();
                if !targets.is_empty() {
                    let op = Op::Store {
                        mailbox: sel.id,
                        uids: targets,
                        mode: FlagMode::Add,
                        flags: Flags::new(SystemFlags::SEEN, []),
                        unchanged_since: None,
                    };
                    let (updated, ours) = match slot.execute_async(op).await {
                        Ok(OpResult::Stored {
                            updated, modseq, ..
                        }) => (updated, modseq),
                        Ok(_) => {
                            return Ok(Reply::no("[SERVERBUG] Unexpected store reply to STORE"));
                        }
                        Err(e) => return Ok(store_error(&e)),
                    };
                    let Some(sel) = self.selected.as_mut() else {
                        break;
                    };
                    if let Some(m) = ours {
                        sel.note_own_change(m);
                    }
                    for (u, m, f) in updated {
                        if let Some(k) = uids.iter().position(|x| *x == u)
                            && let Some(Some(Ok(rec))) = recs.get_mut(k)
                        {
                            rec.flags = f;
                            rec.modseq = m;
                            seen_now[k] = true;
                        }
                    }
                }
            }
            for (k, entry) in recs.into_iter().enumerate() {
                if skip[k] {
                    continue;
                }
                let rec = match entry {
                    None => {
                        gone += 1;
                        continue;
                    }
                    Some(Err(c)) => {
                        damaged.push(c.uid.0);
                        continue;
                    }
                    Some(Ok(r)) => r,
                };
                let Some(sel) = self.selected.as_mut() else {
                    break;
                };
                if seen_now[k] {
                    sel.note_keywords(&rec.flags, &mut self.out);
                }
                let recent = !modes.rev2 && sel.is_recent(rec.uid);
                let blob = if blob_needed {
                    match read_message(&slot, &user, &mailbox_name, &rec).await {
                        Some(b) => Some(b),
                        None => {
                            damaged.push(rec.uid.0);
                            continue;
                        }
                    }
                } else {
                    None
                };
                let parsed = blob.as_deref().map(ParsedMessage::parse);
                let mut line = Vec::new();
                let _ = write!(Lines(&mut line), "* {} FETCH (", chunk[k] + 1);
                let mut failed = false;
                for (n, a) in attrs.iter().enumerate() {
                    if n > 0 {
                        line.push(b' ');
                    }
                    if let Err(ItemError::UnknownCte(enc)) =
                        write_item(&mut line, a, &rec, recent, parsed.as_ref())
                    {
                        unknown_cte = Some(enc);
                        failed = true;
                        break;
                    }
                }
                if failed {
                    continue;
                }
                if seen_now[k] {
                    // RFC 3501 6.4.5 / RFC 7162 3.1: the implicit \Seen shows up in
                    // the response, with UID and MODSEQ once CONDSTORE is on.
                    if add_uid {
                        let _ = write!(Lines(&mut line), " UID {}", rec.uid.0);
                    }
                    if add_flags {
                        line.extend_from_slice(b" FLAGS ");
                        write_flags(&mut line, &rec.flags, recent);
                    }
                    if add_modseq {
                        let _ = write!(Lines(&mut line), " MODSEQ ({})", rec.modseq.0);
                    }
                }
                line.extend_from_slice(b")\r\n");
                self.out.extend_from_slice(&line);
                if self.out.len() > OUT_FLUSH_BYTES {
                    self.flush().await?;
                }
            }
        }
        if !damaged.is_empty() {
            return Ok(crate::resp::damaged(&damaged));
        }
        if let Some(enc) = unknown_cte {
            return Ok(Reply::no(format!(
                "[UNKNOWN-CTE] Cannot decode content-transfer-encoding {enc:?}; fetch BODY[] instead"
            )));
        }
        if gone > 0 && !uid {
            // RFC 2180 4.1.2 / RFC 5530: a message this session still numbers was
            // expunged by another one; its data is gone. A UID FETCH just skips it
            // (RFC 3501 6.4.8: UIDs that do not exist are ignored).
            return Ok(Reply::no(format!(
                "[EXPUNGEISSUED] {gone} of the requested messages were expunged by another session; the others were sent"
            )));
        }
        Ok(Reply::ok("FETCH completed"))
    }
}

/// `* VANISHED (EARLIER) ...`, split so no line exceeds `VANISHED_RANGES_PER_LINE`
/// ranges (RFC 7162 allows several VANISHED responses).
pub(crate) fn write_vanished_earlier(out: &mut Vec<u8>, ranges: &[(u32, u32)]) {
    for chunk in ranges.chunks(VANISHED_RANGES_PER_LINE) {
        out.extend_from_slice(b"* VANISHED (EARLIER) ");
        out.extend_from_slice(ranges_text(chunk).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Ranges per `VANISHED (EARLIER)` line: keeps lines under ~24 KB.
const VANISHED_RANGES_PER_LINE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_specs_echo_the_request() {
        let s = Section {
            part: vec![1, 2],
            text: Some(SectionText::HeaderFields(vec!["From".into(), "To".into()])),
        };
        assert_eq!(section_spec(&s), "1.2.HEADER.FIELDS (From To)");
        assert_eq!(section_spec(&Section::default()), "");
        let t = Section {
            part: vec![],
            text: Some(SectionText::Text),
        };
        assert_eq!(section_spec(&t), "TEXT");
    }
}
