//! What SMTP does with a finished message before handing it to the [`MailBackend`].
//!
//! MX: drop Authentication-Results fields forged in our name, check SPF/DKIM/DMARC, refuse on
//! a failed DMARC `p=reject` (`550 5.7.1`), then prepend Return-Path, Received and
//! Authentication-Results and accept — into Junk on a failed `p=quarantine`.
//!
//! Submission: every From: address must belong to the authenticated user (`553 5.7.1`);
//! Date and Message-ID are added when missing (RFC 6409 §8); the message is DKIM-signed with
//! the From: domain's key when there is one, then Received is prepended and it is accepted.
//! A signing failure is `451 4.3.0`: sending unsigned would fail DMARC at the receiver, so
//! it is better the client retries and the operator sees the error.

use std::net::IpAddr;
use std::sync::Arc;

use crate::dkim::DkimKeys;
use crate::limits::IpLimiter;
use crate::message;
use crate::reply::{EnhancedCode as E, Reply};
use crate::resolver::Resolver;
use crate::session::{Dialect, Handler};
use crate::verify::{Origin, PolicyAction};
use crate::{AcceptOutcome, AuthVerdict, Envelope, Folder, MailBackend, RcptVerdict};

pub(crate) struct SmtpHandler<'a, B> {
    pub(crate) backend: &'a B,
    pub(crate) dialect: Dialect,
    pub(crate) hostname: &'a str,
    pub(crate) resolver: Option<&'a Resolver>,
    pub(crate) dkim: &'a DkimKeys,
    pub(crate) limiter: &'a IpLimiter,
}

impl<B: MailBackend> Handler for SmtpHandler<'_, B> {
    async fn check_recipient(&self, address: &str, user: Option<&str>) -> RcptVerdict {
        self.backend.check_recipient(address, user).await
    }

    async fn authenticate(&self, username: String, password: Vec<u8>, ip: IpAddr) -> AuthVerdict {
        self.backend.authenticate(username, password, ip).await
    }

    fn may_send_as(&self, user: &str, address: &str) -> bool {
        self.backend.may_send_as(user, address)
    }

    fn plaintext_refusal(&self, configured: bool) -> Option<String> {
        self.backend.plaintext_refusal(configured)
    }

    fn insecure_login(&self, user: &str, ip: IpAddr) {
        self.backend.insecure_login(user, ip)
    }

    fn allow_message(&self, ip: IpAddr) -> bool {
        self.limiter.allow_message(ip)
    }

    async fn finish(&self, envelope: Envelope, message: Vec<u8>) -> Vec<Reply> {
        let reply = match self.dialect {
            Dialect::Submission => self.submission(envelope, message).await,
            _ => self.mx(envelope, message).await,
        };
        vec![reply]
    }
}

impl<B: MailBackend> SmtpHandler<'_, B> {
    async fn mx(&self, envelope: Envelope, message: Vec<u8>) -> Reply {
        let message = message::strip_own_auth_results(message, self.hostname);
        let (results, action) = match self.resolver {
            Some(r) => {
                let origin = Origin {
                    ip: envelope.peer.ip(),
                    helo: &envelope.helo,
                    mail_from: &envelope.mail_from,
                };
                let v = r.verify(origin, &message, self.hostname).await;
                (v.header, v.action)
            }
            None => (String::new(), PolicyAction::Deliver),
        };
        let folder = match action {
            PolicyAction::Reject { domain } => {
                return Reply::new(
                    550,
                    Some(E::NOT_AUTHORIZED),
                    format!(
                        "message rejected: it fails the DMARC policy of {domain}, which says reject"
                    ),
                );
            }
            PolicyAction::Quarantine { .. } => Folder::Junk,
            PolicyAction::Deliver => Folder::Inbox,
        };
        let now = self.backend.now_unix_secs();
        let mut head = format!("Return-Path: <{}>\r\n", message::token(&envelope.mail_from));
        if envelope.mail_from.is_empty() {
            head = "Return-Path: <>\r\n".to_string();
        }
        head.push_str(&message::received(
            &envelope.helo,
            envelope.peer.ip(),
            self.hostname,
            message::with_protocol(false, envelope.tls, false),
            &envelope.rcpt_to,
            now,
        ));
        head.push_str(&results);
        let message = message::prepend(&head, &message);
        self.accept(&envelope, message, folder).await
    }

    async fn submission(&self, envelope: Envelope, message: Vec<u8>) -> Reply {
        let Some(user) = envelope.auth_user.as_deref() else {
            return Reply::new(530, Some(E::PERM_POLICY), "authentication required");
        };
        let from_fields = message::fields(&message)
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("From"))
            .count();
        if from_fields > 1 {
            // Which one a reader shows is up to its software: refuse the ambiguity.
            return Reply::new(
                553,
                Some(E::NOT_AUTHORIZED),
                "the message has more than one From: header",
            );
        }
        let froms = message::from_addresses(&message);
        if froms.is_empty() {
            return Reply::new(
                553,
                Some(E::NOT_AUTHORIZED),
                format!("the message needs a From: header naming {user}"),
            );
        }
        if let Some(bad) = froms.iter().find(|f| !self.backend.may_send_as(user, f)) {
            return Reply::new(
                553,
                Some(E::NOT_AUTHORIZED),
                format!("From: <{bad}> is not an address of {user}"),
            );
        }
        let now = self.backend.now_unix_secs();
        let mut added = String::new();
        if !message::has_field(&message, "Date") {
            added.push_str(&format!("Date: {}\r\n", message::date(now)));
        }
        if !message::has_field(&message, "Message-ID") {
            added.push_str(&format!(
                "Message-ID: {}\r\n",
                message::message_id(self.hostname, now)
            ));
        }
        let mut message = message::prepend(&added, &message);
        let from_domain = froms[0]
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let mut head = message::received(
            &envelope.helo,
            envelope.peer.ip(),
            self.hostname,
            message::with_protocol(false, envelope.tls, true),
            &envelope.rcpt_to,
            now,
        );
        if let Some(key) = self.dkim.get(&from_domain) {
            match key.sign(&message) {
                Ok(sig) => head.push_str(&sig),
                Err(e) => {
                    return Reply::new(451, Some(E::TEMP_SYSTEM), format!("{e}; try again later"));
                }
            }
        }
        message = message::prepend(&head, &message);
        self.accept(&envelope, message, Folder::Inbox).await
    }

    async fn accept(&self, envelope: &Envelope, message: Vec<u8>, folder: Folder) -> Reply {
        match self
            .backend
            .accept(envelope, Arc::from(message), folder)
            .await
        {
            AcceptOutcome::Accepted(note) => {
                Reply::new(250, Some(E::OK), format!("message accepted {note}"))
            }
            AcceptOutcome::TempFail(reason) => Reply::new(451, Some(E::TEMP_SYSTEM), reason),
            AcceptOutcome::PermFail(reason) => Reply::new(550, Some(E::PERM_SYSTEM), reason),
        }
    }
}
