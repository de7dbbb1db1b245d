//! Local delivery: the one place that answers "is this address local, and whose is it"
//! and turns an accepted message into durable records in the recipient's slot.

use std::collections::HashMap;
use std::sync::Arc;
use store::directory::Directory;
use store::{Flags, InternalDate, Op, Slot, StoreError};

pub struct LocalDelivery {
    pub directory: Arc<Directory>,
    pub slots: HashMap<String, Slot>,
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
    /// The account an address delivers to, if it is local.
    fn resolve(&self, address: &str) -> Result<Option<(String, Slot)>, StoreError> {
        let (base, _) = split_detail(address);
        let accounts = self.directory.load()?;
        Ok(accounts.get(&base).and_then(|acct| {
            self.slots
                .get(&acct.slot)
                .map(|s| (acct.address.clone(), s.clone()))
        }))
    }

    async fn deliver_one(&self, rcpt: &str, message: &Arc<[u8]>) -> smtp::DeliveryOutcome {
        use smtp::DeliveryOutcome as D;
        let (user, slot) = match self.resolve(rcpt) {
            Ok(Some(x)) => x,
            Ok(None) => return D::PermFail("no such user".into()),
            Err(e) => return D::TempFail(format!("directory unavailable: {e}")),
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
        if let Some(d) = detail
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
            Err(e) => smtp::RcptVerdict::TempFail(format!("directory unavailable: {e}")),
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
            .map(|r| self.deliver_one(r, &message));
        join_all(futs).await
    }
}

/// Minimal join_all: runs the futures concurrently, returns outputs in order.
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
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
}
