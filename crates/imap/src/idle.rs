//! IDLE (RFC 2177): after `+ idling`, push EXISTS/EXPUNGE/FETCH as soon as the store
//! publishes a durable change to the selected mailbox, until the client sends `DONE`.
//!
//! Wake-ups come from the slot's change broadcast (sent right after each group commit,
//! so a delivery shows up within one commit's latency). A lagging receiver just means
//! "something changed": the view is resynced from the store, never from the notices.
//! The idle timeout still applies: RFC 2177 clients re-issue IDLE every 29 minutes.

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::notify::Wake;
use crate::resp::Reply;
use crate::session::{Session, SessionError};

impl Session {
    pub(crate) async fn cmd_idle(&mut self) -> Result<Reply, SessionError> {
        if self.selected.is_some() && !self.sync_selected(true) {
            return Ok(Reply::no("[NONEXISTENT] The selected mailbox was deleted"));
        }
        // Notices queued before now are covered by the sync above.
        if let Some(u) = self.user.as_mut() {
            while !matches!(
                u.notices.try_recv(),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed)
            ) {}
        }
        self.out.extend_from_slice(b"+ idling\r\n");
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + self.inactivity_limit();
        loop {
            match self.framer.take_line() {
                Some(Ok(line)) => {
                    let word = line.trim_ascii();
                    return Ok(if word.eq_ignore_ascii_case(b"DONE") {
                        Reply::ok("IDLE terminated")
                    } else {
                        Reply::bad("Expected DONE to end IDLE")
                    });
                }
                Some(Err(_)) => return Ok(Reply::bad("Expected DONE to end IDLE (line too long)")),
                None => {}
            }
            let Some(wake) = self.wait_wake(deadline).await else {
                return Ok(Reply::bad("Log in first"));
            };
            match wake {
                Wake::Read(Ok(0)) => return Err(gone("client went away during IDLE")),
                Wake::Read(Ok(_)) => {}
                Wake::Read(Err(e)) => return Err(e.into()),
                // RFC 5465 4: under NOTIFY, IDLE sends exactly the NOTIFY events.
                Wake::Notice(n)
                    if self.ext.notify.is_some() && !matches!(n, Err(RecvError::Closed)) =>
                {
                    if !self.on_notice(n.ok()).await {
                        self.untagged("BYE The selected mailbox was deleted; please reconnect");
                        self.flush().await?;
                        return Err(gone("mailbox deleted"));
                    }
                    self.flush().await?;
                }
                Wake::Notice(n) => {
                    let relevant = match n {
                        Ok(n) => self.selected.as_ref().is_some_and(|s| s.id == n.mailbox),
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => {
                            // The slot is gone (shutdown or failover): nothing more
                            // will come; end the session so the client reconnects.
                            self.untagged("BYE Server shutting down; please reconnect");
                            self.flush().await?;
                            return Err(gone("slot closed"));
                        }
                    };
                    if relevant {
                        if !self.sync_selected(true) {
                            self.untagged("BYE The selected mailbox was deleted; please reconnect");
                            self.flush().await?;
                            return Err(gone("mailbox deleted"));
                        }
                        self.flush().await?;
                    }
                }
                Wake::Timeout => {
                    self.untagged("BYE Autologout; idle for too long");
                    self.flush().await?;
                    return Err(gone("IDLE timed out"));
                }
            }
        }
    }
}

fn gone(why: &str) -> SessionError {
    SessionError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        why.to_string(),
    ))
}
