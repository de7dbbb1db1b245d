//! APPEND (RFC 3501 6.3.11) with MULTIAPPEND (RFC 3502) and UIDPLUS APPENDUID.
//!
//! Each message is written as a blob (fsynced on a blocking thread) and then recorded by
//! the slot writer; OK is sent only after the last record is durable. MULTIAPPEND is not
//! atomic: if message k fails, messages before it stay appended (the NO says so).

use store::{InternalDate, Op, OpResult, SystemFlags};

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
        let view = slot.view();
        match view.mailbox_by_name(&user, mailbox) {
            Ok(Some(_)) => {}
            Ok(None) => return Reply::no("[TRYCREATE] No such mailbox; create it first"),
            Err(e) => return store_error(&e),
        }
        let now = slot.clock().now_unix_secs();
        let mut uids = Vec::with_capacity(messages.len());
        let mut uidvalidity = 0;
        let total = messages.len();
        for (k, m) in messages.into_iter().enumerate() {
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
            let s = slot.clone();
            let data = m.data;
            let staged = match tokio::task::spawn_blocking(move || s.put_blob(&data)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return partial_failure(store_error(&e), k, total),
                Err(_) => {
                    return Reply::no(
                        "[SERVERBUG] Blob write task failed; the message was not saved",
                    );
                }
            };
            let op = Op::Append {
                user: user.clone(),
                mailbox: mailbox.to_string(),
                blob: staged,
                flags,
                internaldate,
            };
            match slot.execute_async(op).await {
                Ok(OpResult::Appended {
                    uidvalidity: v,
                    uid,
                    ..
                }) => {
                    uidvalidity = v.0;
                    uids.push(uid.0);
                }
                Ok(_) => return Reply::no("[SERVERBUG] Unexpected store reply to APPEND"),
                Err(store::StoreError::NoSuchMailbox) => {
                    return partial_failure(
                        Reply::no("[TRYCREATE] No such mailbox; create it first"),
                        k,
                        total,
                    );
                }
                Err(e) => return partial_failure(store_error(&e), k, total),
            }
        }
        Reply::ok(format!(
            "[APPENDUID {uidvalidity} {}] APPEND completed",
            uid_set(&uids)
        ))
    }
}

/// A NO for message `k` of a MULTIAPPEND, saying what was kept.
fn partial_failure(mut r: Reply, k: usize, total: usize) -> Reply {
    if total > 1 && k > 0 {
        r.text = format!(
            "{} (the first {k} of {total} messages were appended)",
            r.text
        );
    }
    r
}
