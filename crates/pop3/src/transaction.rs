//! The TRANSACTION state (STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP) and the UPDATE
//! state QUIT enters (RFC 1939 5, 6, 7).
//!
//! Reads go to the durable view of the slot; the only writes are the two at the end of
//! the session: `\Seen` for retrieved messages, and `+\Deleted` then an expunge of exactly
//! the messages marked by DELE (QUIT only).

use store::{FlagMode, Flags, Op, OpResult, ReadContext, StoreError, SystemFlags, Uid};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::{Command, MsgNum};
use crate::dot::{self, DotStuffer};
use crate::session::{Conn, Flow, OUT_FLUSH_BYTES, Session, SessionError, State, Transaction};

/// Message bytes encoded into the output buffer at a time (so a large RETR is flushed as
/// it goes instead of doubling its size in memory).
const RETR_CHUNK_BYTES: usize = 64 * 1024;

/// The `-ERR` text for a store failure: permanent for damaged data, temporary otherwise.
pub(crate) fn store_error_text(e: &StoreError) -> String {
    if e.is_corruption() {
        "[SYS/PERM] Stored data is damaged and cannot be read; the operators have been alerted"
            .into()
    } else {
        "[SYS/TEMP] Your mailbox store is unavailable; try again in a few minutes".into()
    }
}

/// The text every damaged-message failure carries (DESIGN invariant 3).
fn damaged(n: MsgNum) -> String {
    format!(
        "[SYS/PERM] message {} is damaged and cannot be read; the operators have been alerted",
        n.0
    )
}

impl Session {
    pub(crate) async fn transaction_cmd<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        cmd: Command,
    ) -> Result<Flow, SessionError> {
        let State::Transaction(tx) = &mut self.state else {
            return Ok(self.bad(conn, "Log in first"));
        };
        let drop = &mut tx.drop;
        match cmd {
            Command::Stat => {
                let (count, octets) = drop.stat();
                conn.ok(&format!("{count} {octets}"));
            }
            Command::List(Some(n)) => match drop.get(n) {
                Ok(m) => conn.ok(&format!("{} {}", n.0, m.size)),
                Err(l) => conn.err(&l.text()),
            },
            Command::List(None) => {
                let (count, octets) = drop.stat();
                conn.ok(&format!("{count} messages ({octets} octets)"));
                let mut body = String::new();
                for (n, m) in drop.live() {
                    body.push_str(&format!("{n} {}\r\n", m.size));
                }
                dot::encode(body.as_bytes(), &mut conn.out);
            }
            Command::Uidl(Some(n)) => match drop.get(n) {
                Ok(m) => conn.ok(&format!("{} {}", n.0, drop.uidl(m))),
                Err(l) => conn.err(&l.text()),
            },
            Command::Uidl(None) => {
                conn.ok("Unique-id listing follows");
                let mut body = String::new();
                for (n, m) in drop.live() {
                    body.push_str(&format!("{n} {}\r\n", drop.uidl(m)));
                }
                dot::encode(body.as_bytes(), &mut conn.out);
            }
            Command::Dele(n) => match drop.get_mut(n) {
                Ok(m) if m.blob.is_none() => conn.err(&damaged(n)),
                Ok(m) => {
                    m.deleted = true;
                    conn.ok(&format!("Message {} deleted", n.0));
                }
                Err(l) => conn.err(&l.text()),
            },
            Command::Rset => {
                drop.undelete_all();
                let (count, octets) = drop.stat();
                conn.ok(&format!("Maildrop has {count} messages ({octets} octets)"));
            }
            Command::Retr(n) => {
                let msg = match tx.read(n).await {
                    Ok(m) => m,
                    Err(text) => {
                        conn.err(&text);
                        return Ok(Flow::Continue);
                    }
                };
                conn.ok(&format!("{} octets", msg.len()));
                let mut stuffer = DotStuffer::new();
                for chunk in msg.chunks(RETR_CHUNK_BYTES) {
                    stuffer.push(chunk, &mut conn.out);
                    if conn.out.len() > OUT_FLUSH_BYTES {
                        conn.flush().await?;
                    }
                }
                stuffer.finish(&mut conn.out);
                if let Ok(m) = tx.drop.get_mut(n) {
                    m.retrieved = true;
                }
            }
            Command::Top { msg: n, lines } => match tx.read(n).await {
                Ok(m) => {
                    conn.ok("Top of message follows");
                    dot::encode(dot::top(&m, lines), &mut conn.out);
                }
                Err(text) => conn.err(&text),
            },
            // The AUTHORIZATION-state commands are dispatched by the session.
            _ => return Ok(self.bad(conn, "Command not valid in the TRANSACTION state")),
        }
        Ok(Flow::Continue)
    }

    /// QUIT in TRANSACTION: the UPDATE state. `+OK` only once the expunge is durable.
    pub(crate) async fn cmd_quit<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Flow {
        let State::Transaction(tx) = std::mem::replace(&mut self.state, State::Done) else {
            conn.ok("Tandem POP3 signing off");
            return Flow::Close;
        };
        match tx.update().await {
            Ok(n) => conn.ok(&format!("Tandem POP3 signing off ({n} messages deleted)")),
            Err(e) if e.is_corruption() => conn.err(
                "[SYS/PERM] Some deleted messages were not removed: stored data is damaged; the operators have been alerted",
            ),
            Err(_) => conn.err(
                "[SYS/TEMP] Some deleted messages were not removed; the store is unavailable, try again in a few minutes",
            ),
        }
        Flow::Close
    }
}

impl Transaction {
    /// The current bytes of message `n`, verified, or the `-ERR` text.
    async fn read(&self, n: MsgNum) -> Result<Vec<u8>, String> {
        let m = self.drop.get(n).map_err(|l| l.text())?;
        if m.blob.is_none() {
            return Err(damaged(n));
        }
        // The snapshot fixed the numbering; whether the message still exists is a
        // question for the store now.
        let rec = match self.slot.view().message(&self.drop.mailbox, m.uid) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(format!(
                    "Message {} was removed by another session since you logged in",
                    n.0
                ));
            }
            Err(e) if e.is_corruption() => return Err(damaged(n)),
            Err(e) => return Err(store_error_text(&e)),
        };
        let ctx = ReadContext {
            user: Some(self.name.clone()),
            mailbox: Some(self.drop.mailbox.name.clone()),
            uid: Some(rec.uid.0),
        };
        let slot = self.slot.clone();
        match tokio::task::spawn_blocking(move || slot.read_blob(&rec.blob, &ctx)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) if e.is_corruption() => Err(damaged(n)),
            Ok(Err(e)) => Err(store_error_text(&e)),
            Err(_) => Err("[SYS/TEMP] Internal error reading the message; try again".into()),
        }
    }

    async fn add_flags(&self, uids: Vec<Uid>, flags: u8) -> Result<(), StoreError> {
        if uids.is_empty() {
            return Ok(());
        }
        self.slot
            .execute_async(Op::Store {
                mailbox: self.drop.mailbox.id,
                uids,
                mode: FlagMode::Add,
                flags: Flags::new(flags, []),
                unchanged_since: None,
            })
            .await
            .map(|_| ())
    }

    /// `\Seen` for every message retrieved.
    pub(crate) async fn mark_seen(&self) -> Result<(), StoreError> {
        self.add_flags(self.drop.seen_uids(), SystemFlags::SEEN)
            .await
    }

    /// The UPDATE state: flags, then the expunge of exactly the messages marked deleted.
    /// Returns how many were removed by this session (others may have been expunged by
    /// another session meanwhile, which is the same outcome for the user).
    async fn update(&self) -> Result<usize, StoreError> {
        self.mark_seen().await?;
        let deleted = self.drop.deleted_uids();
        if deleted.is_empty() {
            return Ok(0);
        }
        self.add_flags(deleted.clone(), SystemFlags::DELETED)
            .await?;
        match self
            .slot
            .execute_async(Op::Expunge {
                mailbox: self.drop.mailbox.id,
                uids: Some(deleted),
            })
            .await?
        {
            OpResult::Expunged(gone) => Ok(gone.len()),
            _ => Ok(0),
        }
    }
}
