//! APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502), BINARY literals (RFC 3516),
//! UTF8=ACCEPT's `UTF8 (...)` form (RFC 6855) and UIDPLUS APPENDUID.
//!
//! Every message is written as a blob first (fsynced on a blocking thread), then all of
//! them are recorded by one store request (`Op::AppendMany`), so a MULTIAPPEND is all
//! or nothing as RFC 3502 requires: a failure (no such mailbox, over quota, a write
//! error) leaves none of the messages in the mailbox. OK is sent only once the records
//! are durable. Blobs written for a failed APPEND are orphans that audit collects.
//!
//! Binary content: a message whose bytes include NUL (only possible through a `~{n}`
//! literal) has those parts re-encoded as base64 before it is stored (see
//! `mime::encode_binary_parts`); one that cannot be represented gets `NO [UNKNOWN-CTE]`.

use store::{InternalDate, NewMessage, Op, OpResult, SystemFlags};

use crate::resp::{Reply, store_error, to_store_flags, uid_set};
use crate::session::Session;
use crate::time::from_datetime;

impl Session {
    pub(crate) async fn cmd_append(
        &mut self,
        mailbox: &str,
        messages: Vec<imap_proto::AppendMessage>,
    ) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let max = self.server.config.append_bytes_max;
        for m in &messages {
            if m.data.len() as u64 > max {
                return Reply::no(format!(
                    "[TOOBIG] Message of {} bytes is over the limit of {max} bytes",
                    m.data.len()
                ));
            }
        }
        match slot.view().mailbox_by_name(&user, mailbox) {
            Ok(Some(_)) => {}
            Ok(None) => return Reply::no("[TRYCREATE] No such mailbox; create it first"),
            Err(e) => return store_error(&e),
        }
        let now = slot.clock().now_unix_secs();
        let mut staged = Vec::with_capacity(messages.len());
        for m in messages {
            let mut flags = match to_store_flags(&m.flags) {
                Ok(f) => f,
                Err(why) => return Reply::bad(format!("APPEND flags: {why}")),
            };
            flags.system.0 &= SystemFlags::ALL;
            let internaldate = match m.date {
                Some(dt) => from_datetime(dt),
                None => InternalDate {
                    unix_secs: now,
                    zone_minutes: 0,
                },
            };
            let data = match crate::mime::encode_binary_parts(&m.data) {
                Ok(None) => m.data,
                Ok(Some(encoded)) => encoded,
                Err(crate::mime::UnencodableBinary) => {
                    return Reply::no(
                        "[UNKNOWN-CTE] The message has binary data outside any body part; nothing was appended",
                    );
                }
            };
            let s = slot.clone();
            let blob = match tokio::task::spawn_blocking(move || s.put_blob(&data)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return store_error(&e),
                Err(_) => {
                    return Reply::no("[SERVERBUG] Blob write task failed; nothing was appended");
                }
            };
            staged.push(NewMessage {
                blob,
                flags,
                internaldate,
            });
        }
        let op = Op::AppendMany {
            user,
            mailbox: mailbox.to_string(),
            messages: staged,
        };
        match slot.execute_async(op).await {
            Ok(OpResult::AppendedMany {
                uidvalidity, uids, ..
            }) => {
                let uids: Vec<u32> = uids.iter().map(|u| u.0).collect();
                Reply::ok(format!(
                    "[APPENDUID {} {}] APPEND completed",
                    uidvalidity.0,
                    uid_set(&uids)
                ))
            }
            Ok(_) => Reply::no("[SERVERBUG] Unexpected store reply to APPEND"),
            Err(store::StoreError::NoSuchMailbox) => {
                Reply::no("[TRYCREATE] No such mailbox; create it first")
            }
            Err(e) => store_error(&e),
        }
    }
}
