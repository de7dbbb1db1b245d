//! QUOTA (RFC 9208): one quota root per user, named `""`, holding every mailbox, with
//! the STORAGE resource (units of 1024 octets).
//!
//! Usage comes from the store (`SlotView::usage_bytes`, the sum of the mailbox headers'
//! sizes); the limit is `UserRecord::quota_bytes` (0 = unlimited: the root has no
//! resource limits and GETQUOTA answers an empty list). The store itself refuses
//! APPEND/COPY/delivery past the limit (`StoreError::OverQuota` → `NO [OVERQUOTA]`),
//! so the check is atomic with the write. SETQUOTA is for administrators and is
//! refused; `QUOTASET` is not advertised.

use imap_proto::write::quoted_or_literal;

use crate::resp::{Reply, store_error};
use crate::session::Session;

/// The one quota root's name.
const ROOT: &str = "";

impl Session {
    /// `* QUOTA "" (STORAGE used limit)` for the logged-in user.
    fn write_quota(&mut self) -> Result<(), Reply> {
        let (user, slot) = self.ctx()?;
        let view = slot.view();
        let usage = view.usage_bytes(&user).map_err(|e| store_error(&e))?;
        let limit = view
            .user(&user)
            .map_err(|e| store_error(&e))?
            .map_or(0, |u| u.quota_bytes);
        let mut line = b"* QUOTA ".to_vec();
        line.extend_from_slice(&quoted_or_literal(ROOT.as_bytes()));
        if limit == 0 {
            line.extend_from_slice(b" ()\r\n");
        } else {
            // Usage rounds up and the limit down, so "used < limit" never hides a full box.
            let used_k = usage.div_ceil(1024);
            let limit_k = limit / 1024;
            line.extend_from_slice(format!(" (STORAGE {used_k} {limit_k})\r\n").as_bytes());
        }
        self.out.extend_from_slice(&line);
        Ok(())
    }

    pub(crate) fn cmd_getquota(&mut self, root: &str) -> Reply {
        if root != ROOT {
            return Reply::no("[NONEXISTENT] No such quota root; use GETQUOTAROOT to find it");
        }
        match self.write_quota() {
            Ok(()) => Reply::ok("GETQUOTA completed"),
            Err(r) => r,
        }
    }

    pub(crate) fn cmd_getquotaroot(&mut self, mailbox: &str) -> Reply {
        if let Err(r) = self.mailbox_header(mailbox) {
            return r;
        }
        let mut line = b"* QUOTAROOT ".to_vec();
        line.extend_from_slice(&self.mailbox_name_out(mailbox));
        line.push(b' ');
        line.extend_from_slice(&quoted_or_literal(ROOT.as_bytes()));
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
        match self.write_quota() {
            Ok(()) => Reply::ok("GETQUOTAROOT completed"),
            Err(r) => r,
        }
    }
}

impl Session {
    /// SETQUOTA: limits are the operator's, set in the account directory.
    pub(crate) fn cmd_setquota(&mut self) -> Reply {
        Reply::no("[NOPERM] Quotas are set by the mail operator, not over IMAP")
    }
}
