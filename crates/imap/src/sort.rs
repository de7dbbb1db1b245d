//! SORT and UID SORT (RFC 5256) with DISPLAYFROM / DISPLAYTO (RFC 5957, SORT=DISPLAY).
//!
//! The search program picks the messages (shared with SEARCH); their headers are then
//! read once each (only when a key needs them: ARRIVAL and SIZE come from the record)
//! and sorted by the criteria in order, ties broken by sequence number (RFC 5256 3).
//! String keys compare with i;ascii-casemap (ASCII upper-casing) as RFC 5256 asks;
//! the display keys with Unicode lower-casing, close to RFC 5957's i;unicode-casemap.
//! Cost: one blob read and header parse per matched message, like a FETCH ENVELOPE.

use std::cmp::Ordering;
use std::fmt::Write as _;

use imap_proto::{SearchKey, SortCriterion, SortKey};
use store::MessageRecord;

use crate::mime::SortFields;
use crate::resp::Reply;
use crate::search::Matches;
use crate::selected::Lines;
use crate::session::Session;

/// One matched message with what sorting and threading look at.
pub(crate) struct Item {
    pub seq: u32,
    pub uid: u32,
    pub size: u32,
    pub arrival_unix_secs: i64,
    pub fields: SortFields,
}

impl Item {
    /// RFC 5256: the Date: header, or the internal date when it is missing or invalid.
    pub fn sent_unix_secs(&self) -> i64 {
        self.fields.sent_unix_secs.unwrap_or(self.arrival_unix_secs)
    }
}

/// The charsets SORT, THREAD and SEARCH accept (all text is searched as UTF-8).
pub(crate) fn check_charset(charset: &str) -> Result<(), Reply> {
    if charset.eq_ignore_ascii_case("UTF-8") || charset.eq_ignore_ascii_case("US-ASCII") {
        Ok(())
    } else {
        Err(Reply::no(
            "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset",
        ))
    }
}

fn compare(a: &Item, b: &Item, key: SortKey) -> Ordering {
    let casemap = |x: &str, y: &str| x.to_ascii_uppercase().cmp(&y.to_ascii_uppercase());
    match key {
        SortKey::Arrival => a.arrival_unix_secs.cmp(&b.arrival_unix_secs),
        SortKey::Size => a.size.cmp(&b.size),
        SortKey::Date => a.sent_unix_secs().cmp(&b.sent_unix_secs()),
        SortKey::From => casemap(&a.fields.from, &b.fields.from),
        SortKey::To => casemap(&a.fields.to, &b.fields.to),
        SortKey::Cc => casemap(&a.fields.cc, &b.fields.cc),
        SortKey::Subject => casemap(&a.fields.base_subject, &b.fields.base_subject),
        SortKey::DisplayFrom => a.fields.display_from.cmp(&b.fields.display_from),
        SortKey::DisplayTo => a.fields.display_to.cmp(&b.fields.display_to),
    }
}

/// Sorts by the criteria in order, then by sequence number.
pub(crate) fn sort_items(items: &mut [Item], criteria: &[SortCriterion]) {
    items.sort_by(|a, b| {
        for c in criteria {
            let o = compare(a, b, c.key);
            let o = if c.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.seq.cmp(&b.seq)
    });
}

impl Session {
    /// Runs the search and loads what sorting needs for each match. `headers`: parse
    /// the message headers (else `fields` stay empty). Damaged messages are left out
    /// and reported by UID.
    pub(crate) async fn sort_items(
        &mut self,
        keys: &[SearchKey],
        headers: bool,
    ) -> Result<(Vec<Item>, Vec<u32>), Reply> {
        let Matches { hits, mut damaged } = self.search_matches(keys).await?;
        let (user, slot) = self.ctx()?;
        let Some(sel) = self.selected.as_ref() else {
            return Err(Reply::bad("No mailbox selected"));
        };
        let uids: Vec<store::Uid> = hits.iter().map(|&(_, u)| store::Uid(u)).collect();
        let mut records: Vec<(u32, MessageRecord)> = Vec::with_capacity(hits.len());
        for (&(seq, _), e) in hits.iter().zip(self.records_of(&uids)?) {
            if let Some(Ok(rec)) = e {
                records.push((seq, rec));
            }
        }
        let mailbox = sel.name.clone();
        let mut items = Vec::with_capacity(records.len());
        for (seq, rec) in records {
            let fields = if headers {
                match crate::message::read_message(&slot, &user, &mailbox, &rec).await {
                    Some(bytes) => SortFields::parse(&bytes),
                    None => {
                        damaged.push(rec.uid.0);
                        continue;
                    }
                }
            } else {
                SortFields::default()
            };
            items.push(Item {
                seq,
                uid: rec.uid.0,
                size: rec.size,
                arrival_unix_secs: rec.internaldate.unix_secs,
                fields,
            });
        }
        Ok((items, damaged))
    }

    pub(crate) async fn cmd_sort(
        &mut self,
        uid: bool,
        criteria: &[SortCriterion],
        charset: &str,
        keys: &[SearchKey],
    ) -> Reply {
        if let Err(r) = check_charset(charset) {
            return r;
        }
        let headers = criteria
            .iter()
            .any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size));
        let (mut items, damaged) = match self.sort_items(keys, headers).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        sort_items(&mut items, criteria);
        let mut line = b"* SORT".to_vec();
        for it in &items {
            let _ = write!(Lines(&mut line), " {}", if uid { it.uid } else { it.seq });
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        if !damaged.is_empty() {
            return crate::resp::damaged(&damaged);
        }
        Reply::ok("SORT completed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u32, size: u32, subject: &str, from: &str) -> Item {
        Item {
            seq,
            uid: seq + 100,
            size,
            arrival_unix_secs: i64::from(seq),
            fields: SortFields {
                base_subject: subject.into(),
                from: from.into(),
                ..SortFields::default()
            },
        }
    }

    #[test]
    fn criteria_apply_in_order_then_sequence() {
        let mut v = vec![
            item(1, 30, "b", "x"),
            item(2, 10, "a", "y"),
            item(3, 30, "A", "x"),
            item(4, 20, "b", "X"),
        ];
        let c = |reverse, key| SortCriterion { reverse, key };
        sort_items(
            &mut v,
            &[c(false, SortKey::Subject), c(true, SortKey::Size)],
        );
        assert_eq!(
            v.iter().map(|i| i.seq).collect::<Vec<_>>(),
            vec![3, 2, 1, 4]
        );
        sort_items(&mut v, &[c(false, SortKey::From)]);
        assert_eq!(
            v.iter().map(|i| i.seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 2]
        );
        sort_items(&mut v, &[c(true, SortKey::Arrival)]);
        assert_eq!(
            v.iter().map(|i| i.seq).collect::<Vec<_>>(),
            vec![4, 3, 2, 1]
        );
    }
}
