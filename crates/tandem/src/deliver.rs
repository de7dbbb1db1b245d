//! Local delivery: the one place that answers "is this address local, and whose is it"
//! and turns an accepted message into durable records in the recipient's slot.
//!
//! On a host with the frontend role, an account whose slot is mastered elsewhere is still
//! local (it is ours): [`LocalDelivery::remote`] is set, and delivery to such an account
//! goes by LMTP to the slot's master (`frontend/lmtp.rs`). Without it (store hosts) such
//! an account is a temporary failure, as before.

use std::collections::HashMap;
use std::sync::Arc;
use store::directory::Directory;
use store::{Flags, InternalDate, Op, Slot, StoreError};

pub struct LocalDelivery {
    pub directory: Arc<Directory>,
    pub slots: HashMap<String, Slot>,
    /// `[domains] local` from tandem.toml, lower case; `None`: the domains of existing
    /// accounts plus `localhost` (recomputed as accounts come and go).
    pub local_domains: Option<Vec<String>>,
    /// Set on frontend hosts: where mail for accounts whose slot is not served here goes.
    pub remote: std::sync::OnceLock<Arc<crate::frontend::lmtp::RemoteDelivery>>,
}

/// What an address is to this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locality {
    /// Delivers to this account (canonical address).
    Local(String),
    /// A local domain, but no such account: `550 5.1.1`.
    UnknownLocal,
    /// Another domain: relay (submission) or refuse (MX).
    Remote,
}

/// `alice+lists@example.com` → (`alice@example.com`, Some(`lists`)).
pub fn split_detail(address: &str) -> (String, Option<String>) {
    let a = address.trim().trim_matches(|c| c == '<' || c == '>');
    if let Some((local, domain)) = a.rsplit_once('@')
        && let Some((base, detail)) = local.split_once('+')
        && !base.is_empty()
        && !detail.is_empty()
    {
        return (format!("{base}@{domain}"), Some(detail.to_string()));
    }
    (a.to_string(), None)
}

impl LocalDelivery {
    /// Is `domain` one of ours?
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, StoreError> {
        let d = domain.trim().trim_end_matches('.').to_lowercase();
        Ok(match &self.local_domains {
            Some(list) => list.contains(&d),
            None => {
                d == "localhost"
                    || self
                        .directory
                        .load()?
                        .accounts
                        .iter()
                        .any(|a| a.address.rsplit_once('@').is_some_and(|(_, ad)| ad == d))
            }
        })
    }

    /// The one answer to "is this address local, and whose is it". The domain-less
    /// `postmaster` (RFC 5321 §4.1.1.3) means postmaster at the first local domain.
    pub fn classify(&self, address: &str) -> Result<Locality, StoreError> {
        let address = if address.eq_ignore_ascii_case("postmaster") {
            self.postmaster_address()?
        } else {
            address.to_string()
        };
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(Locality::UnknownLocal);
        };
        if !self.is_local_domain(domain)? {
            return Ok(Locality::Remote);
        }
        if self.remote.get().is_some() {
            // A frontend: the account decides, wherever its slot is served.
            return Ok(match self.account_of(&address)? {
                Some(a) => Locality::Local(a.address),
                None => Locality::UnknownLocal,
            });
        }
        Ok(match self.resolve(&address)? {
            Some((user, _)) => Locality::Local(user),
            None => Locality::UnknownLocal,
        })
    }

    /// The account an address delivers to, whether or not its slot is served on this
    /// host: what a frontend routes by. The domain-less `postmaster` is mapped as in
    /// [`LocalDelivery::classify`]; `+detail` is dropped.
    pub fn account_of(
        &self,
        address: &str,
    ) -> Result<Option<store::directory::Account>, StoreError> {
        let address = if address.eq_ignore_ascii_case("postmaster") {
            self.postmaster_address()?
        } else {
            address.to_string()
        };
        let (base, _) = split_detail(&address);
        Ok(self.directory.load()?.get(&base).cloned())
    }

    fn postmaster_address(&self) -> Result<String, StoreError> {
        let first = match &self.local_domains {
            Some(list) => list.first().cloned(),
            None => self
                .directory
                .load()?
                .accounts
                .first()
                .and_then(|a| a.address.rsplit_once('@').map(|(_, d)| d.to_string())),
        };
        Ok(format!(
            "postmaster@{}",
            first.unwrap_or_else(|| "localhost".into())
        ))
    }

    /// The account an address delivers to, if it is local.
    pub(crate) fn resolve(&self, address: &str) -> Result<Option<(String, Slot)>, StoreError> {
        let (base, _) = split_detail(address);
        let accounts = self.directory.load()?;
        let Some(acct) = accounts.get(&base) else {
            return Ok(None);
        };
        match self.slots.get(&acct.slot) {
            Some(s) => Ok(Some((acct.address.clone(), s.clone()))),
            // The account exists but its slot is not served here (it failed its start-up
            // check, invariant 8): a temporary failure, never "no such user".
            None => Err(StoreError::Unavailable {
                slot: acct.slot.clone(),
                reason: "the mailbox store is not served on this host right now".into(),
            }),
        }
    }

    /// Why a lookup failed, in words for a `451 4.3.0` reply.
    fn unavailable_text(e: &StoreError) -> String {
        match e {
            StoreError::Unavailable { .. } => format!("mailbox temporarily unavailable: {e}"),
            _ => format!("directory unavailable: {e}"),
        }
    }

    /// Delivers to one local recipient, into INBOX (or its `+detail` folder) or, for
    /// `Folder::Junk`, the user's Junk folder. Durable when it returns `Delivered`. On a
    /// frontend, a recipient whose slot is mastered elsewhere goes to that master.
    pub async fn deliver_one(
        &self,
        rcpt: &str,
        message: &Arc<[u8]>,
        folder: smtp::Folder,
    ) -> smtp::DeliveryOutcome {
        self.deliver(rcpt, message, folder, true).await
    }

    /// `forward`: may a recipient whose slot is not served here go to its master? Never
    /// on the LMTP path (`smtp::Deliver`), which is also what the proxy listener runs: a
    /// host whose view of the state is stale must not send mail to itself in a loop.
    async fn deliver(
        &self,
        rcpt: &str,
        message: &Arc<[u8]>,
        folder: smtp::Folder,
        forward: bool,
    ) -> smtp::DeliveryOutcome {
        use smtp::DeliveryOutcome as D;
        // Only the domain-less postmaster needs classify's mapping; everyone else resolves
        // directly (one directory look-up per delivery, not two).
        let rcpt = &match rcpt.eq_ignore_ascii_case("postmaster") {
            true => match self.classify(rcpt) {
                Ok(Locality::Local(user)) => user,
                _ => rcpt.to_string(),
            },
            false => rcpt.to_string(),
        };
        let (user, slot) = match self.resolve(rcpt) {
            Ok(Some(x)) => x,
            Ok(None) => return D::PermFail("no such user".into()),
            Err(StoreError::Unavailable { .. }) if forward && self.remote.get().is_some() => {
                // Not mastered here: to the slot's master (a frontend). The null sender:
                // LMTP adds no header from it, and no bounce goes back through us.
                let remote = self.remote.get().cloned();
                return match remote {
                    Some(r) => r.deliver_one(rcpt, message).await,
                    None => D::TempFail("mailbox temporarily unavailable".into()),
                };
            }
            Err(e) => return D::TempFail(Self::unavailable_text(&e)),
        };
        let (_, detail) = split_detail(rcpt);
        let msg = message.clone();
        let s2 = slot.clone();
        let staged = match tokio::task::spawn_blocking(move || s2.put_blob(&msg)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return D::TempFail(format!("cannot store message: {e}")),
            Err(_) => return D::TempFail("storage task failed".into()),
        };
        if let Err(e) = slot
            .execute_async(Op::EnsureUser { user: user.clone() })
            .await
        {
            return D::TempFail(e.to_string());
        }
        let internaldate = InternalDate {
            unix_secs: slot.clock().now_unix_secs(),
            zone_minutes: 0,
        };
        // `+detail` delivers to the folder of that name when it exists, else INBOX.
        let mut targets = Vec::new();
        if folder == smtp::Folder::Junk
            && let Ok(boxes) = slot.view().mailboxes(&user)
            && let Some(junk) = boxes
                .iter()
                .find(|m| m.special_uses().contains(&store::SpecialUse::Junk))
        {
            targets.push(junk.name.clone());
        } else if let Some(d) = detail
            && let Ok(Some(_)) = slot.view().mailbox_by_name(&user, &d)
        {
            targets.push(d);
        }
        targets.push("INBOX".to_string());
        let mut last_err = None;
        for mailbox in targets {
            let op = Op::Append {
                user: user.clone(),
                mailbox,
                blob: staged.clone(),
                flags: Flags::default(),
                internaldate,
            };
            match slot.execute_async(op).await {
                Ok(_) => return D::Delivered,
                // The detail folder may have been deleted meanwhile: fall back to INBOX.
                Err(StoreError::NoSuchMailbox) => continue,
                Err(StoreError::OverQuota { .. }) => return D::OverQuota,
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        D::TempFail(
            last_err
                .map(|e| e.to_string())
                .unwrap_or_else(|| "INBOX is missing".into()),
        )
    }
}

impl smtp::Deliver for LocalDelivery {
    async fn check_recipient(&self, address: &str) -> smtp::RcptVerdict {
        match self.resolve(address) {
            Ok(Some(_)) => smtp::RcptVerdict::Accept,
            Ok(None) => smtp::RcptVerdict::UnknownUser,
            Err(e) => smtp::RcptVerdict::TempFail(Self::unavailable_text(&e)),
        }
    }

    async fn deliver(
        &self,
        envelope: &smtp::Envelope,
        message: Arc<[u8]>,
    ) -> Vec<smtp::DeliveryOutcome> {
        // Recipients are delivered concurrently so they share the slot's group commit.
        let futs = envelope
            .rcpt_to
            .iter()
            .map(|r| self.deliver(r, &message, smtp::Folder::Inbox, false));
        join_all(futs).await
    }
}

/// Minimal join_all: runs the futures concurrently, returns outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::split_detail;

    #[test]
    fn detail_is_split_off_the_local_part() {
        assert_eq!(
            split_detail("a+b@x.org"),
            ("a@x.org".into(), Some("b".into()))
        );
        assert_eq!(split_detail("<a@x.org>"), ("a@x.org".into(), None));
        assert_eq!(split_detail("+b@x.org"), ("+b@x.org".into(), None));
    }

    /// RFC 9208 / issue 3: a full mailbox answers LMTP with `552 5.2.2`, not a retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivery_over_quota_is_over_quota() {
        use super::LocalDelivery;
        use std::collections::HashMap;
        use std::sync::Arc;
        use store::directory::{Account, Directory};
        use store::{EventLog, Op, Slot, SystemClock};
        let dir = std::env::temp_dir().join(format!("tandem-deliver-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clock = Arc::new(SystemClock);
        let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
        let slot = tokio::task::block_in_place(|| {
            Slot::create(&dir.join("s1"), "s1", "test", events, clock)
        })
        .unwrap();
        let directory = Arc::new(Directory::new(&dir));
        directory
            .update(|a| {
                a.accounts.push(Account {
                    address: "full@example.com".into(),
                    password: String::new(),
                    slot: "s1".into(),
                });
                Ok(())
            })
            .unwrap();
        let user = "full@example.com".to_string();
        slot.execute_async(Op::EnsureUser { user: user.clone() })
            .await
            .unwrap();
        slot.execute_async(Op::SetQuota {
            user,
            quota_bytes: 100,
        })
        .await
        .unwrap();
        let d = LocalDelivery {
            directory,
            slots: HashMap::from([("s1".to_string(), slot)]),
            local_domains: None,
            remote: Default::default(),
        };
        let small: Arc<[u8]> = Arc::from(&b"Subject: hi\r\n\r\nx\r\n"[..]);
        let big: Arc<[u8]> = Arc::from(vec![b'x'; 200]);
        let ok = d
            .deliver_one("full@example.com", &small, smtp::Folder::Inbox)
            .await;
        assert_eq!(ok, smtp::DeliveryOutcome::Delivered);
        let full = d
            .deliver_one("full@example.com", &big, smtp::Folder::Inbox)
            .await;
        assert_eq!(full, smtp::DeliveryOutcome::OverQuota);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
