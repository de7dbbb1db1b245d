//! FETCH / UID FETCH: every RFC 3501 item plus BINARY[.PEEK]/BINARY.SIZE (RFC 3516)
//! and MODSEQ.
//!
//! Order of work: resolve the set; if any item is a non-PEEK body fetch on a writable
//! mailbox, set `\Seen` on the messages lacking it in one durable STORE (and include
//! FLAGS in their responses, RFC 3501 6.4.5); then read and render message by message,
//! flushing output as it grows. A message whose record or blob fails verification
//! gets no FETCH response; the others are answered and the command ends in
//! `NO [SERVERBUG]` naming the damaged UIDs.

use std::collections::HashSet;
use std::fmt::Write as _;

use imap_proto::write::astring;
use imap_proto::{FetchArgs, FetchAttr, Section, SectionText, SeqOrSaved};
use store::{FlagMode, Flags, MessageRecord, Op, OpResult, ReadContext, SystemFlags, Uid};

use crate::mime::{ParsedMessage, partial};
use crate::resp::{Reply, store_error, write_flags};
use crate::selected::Lines;
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
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        let SeqOrSaved::Set(set) = &args.set else {
            return Ok(Reply::bad("No saved search result ($)"));
        };
        let mut idx = match sel.resolve(set, uid) {
            Ok(i) => i,
            Err(why) => return Ok(Reply::bad(why)),
        };
        if let Some(since) = args.changed_since {
            idx.retain(|&i| sel.msgs[i].entry.as_ref().is_ok_and(|r| r.modseq.0 > since));
        }
        let mut attrs = args.attrs.clone();
        if uid && !attrs.contains(&FetchAttr::Uid) {
            // RFC 3501 6.4.8: UID FETCH responses always carry the UID.
            attrs.insert(0, FetchAttr::Uid);
        }
        let blob_needed = attrs.iter().any(needs_blob);
        let mut seen_now = HashSet::new();
        if !sel.read_only && attrs.iter().any(sets_seen) {
            let targets: Vec<Uid> = idx
                .iter()
                .map(|&i| &sel.msgs[i])
                .filter(|m| {
                    !m.expunged && m.flags().is_some_and(|f| !f.system.has(SystemFlags::SEEN))
                })
                .map(|m| m.uid)
                .collect();
            if !targets.is_empty() {
                let op = Op::Store {
                    mailbox: sel.id,
                    uids: targets,
                    mode: FlagMode::Add,
                    flags: Flags::new(SystemFlags::SEEN, []),
                    unchanged_since: None,
                };
                match slot.execute_async(op).await {
                    Ok(OpResult::Stored { updated, .. }) => {
                        for (u, m, f) in updated {
                            if let Some(i) = sel.update_flags(u, m, f) {
                                seen_now.insert(i);
                            }
                        }
                    }
                    Ok(_) => return Ok(Reply::no("[SERVERBUG] Unexpected store reply to STORE")),
                    Err(e) => return Ok(store_error(&e)),
                }
            }
        }
        let add_flags = !attrs.contains(&FetchAttr::Flags);
        let mailbox_name = sel.name.clone();
        let mut damaged = Vec::new();
        let mut unknown_cte = None;
        for i in idx {
            let Some(sel) = self.selected.as_ref() else {
                break;
            };
            let m = &sel.msgs[i];
            let recent = m.recent;
            let rec = match &m.entry {
                Ok(r) => r.clone(),
                Err(c) => {
                    damaged.push(c.uid.0);
                    continue;
                }
            };
            let blob = if blob_needed {
                let (s, hash) = (slot.clone(), rec.blob);
                let ctx = ReadContext {
                    user: Some(user.clone()),
                    mailbox: Some(mailbox_name.clone()),
                    uid: Some(rec.uid.0),
                };
                match tokio::task::spawn_blocking(move || s.read_blob(&hash, &ctx)).await {
                    Ok(Ok(b)) => Some(b),
                    _ => {
                        damaged.push(rec.uid.0);
                        continue;
                    }
                }
            } else {
                None
            };
            let parsed = blob.as_deref().map(ParsedMessage::parse);
            let mut line = Vec::new();
            let _ = write!(Lines(&mut line), "* {} FETCH (", i + 1);
            let mut failed = false;
            for (k, a) in attrs.iter().enumerate() {
                if k > 0 {
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
            if add_flags && seen_now.contains(&i) {
                line.extend_from_slice(b" FLAGS ");
                write_flags(&mut line, &rec.flags, recent);
            }
            line.extend_from_slice(b")\r\n");
            self.out.extend_from_slice(&line);
            if self.out.len() > OUT_FLUSH_BYTES {
                self.flush().await?;
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
        Ok(Reply::ok("FETCH completed"))
    }
}

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
