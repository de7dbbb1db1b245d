//! Inbound sender authentication for the MX: SPF (RFC 7208) on the MAIL FROM identity (the
//! HELO identity for the null sender), DKIM (RFC 6376) on every signature, DMARC (RFC 7489 /
//! DMARCbis) on the From: domain, with mail-auth doing the checking and [`Resolver`] the DNS.
//!
//! The verdicts become one `Authentication-Results:` header (RFC 8601) naming our host as the
//! authserv-id, and a [`PolicyAction`]: DMARC `p=reject` that fails → refuse at end of data;
//! `p=quarantine` that fails → deliver to Junk. A DNS failure (temperror) never rejects: we
//! would rather deliver a message than bounce a legitimate one because a resolver hiccupped.

use std::net::IpAddr;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, SpfResult};

use crate::resolver::Resolver;

/// What to do with a message after DMARC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAction {
    Deliver,
    /// DMARC failed under `p=quarantine`: deliver to the recipient's Junk folder.
    Quarantine {
        domain: String,
    },
    /// DMARC failed under `p=reject`: refuse with `550 5.7.1`.
    Reject {
        domain: String,
    },
}

/// The checks' outcome, summarised for callers and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// The full header line(s), CRLF-terminated, to prepend to the message.
    pub header: String,
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`.
    pub spf: &'static str,
    /// One per signature: `pass`, `fail`, `neutral`, `temperror`, `permerror`; empty if unsigned.
    pub dkim: Vec<&'static str>,
    /// `pass`, `fail`, `none`, `temperror`, `permerror`.
    pub dmarc: &'static str,
    pub action: PolicyAction,
}

/// The envelope facts the checks need.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// Empty for the null sender.
    pub mail_from: &'a str,
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

impl Resolver {
    /// Runs SPF, DKIM and DMARC for one message. `hostname` is our authserv-id.
    pub async fn verify(&self, origin: Origin<'_>, message: &[u8], hostname: &str) -> Verdicts {
        let helo = if origin.helo.is_empty() {
            "unknown"
        } else {
            origin.helo
        };
        let spf = if origin.mail_from.is_empty() {
            self.auth
                .verify_spf(self.params(SpfParameters::verify_ehlo(origin.ip, helo, hostname)))
                .await
        } else {
            self.auth
                .verify_spf(self.params(SpfParameters::verify_mail_from(
                    origin.ip,
                    helo,
                    hostname,
                    origin.mail_from,
                )))
                .await
        };
        let mail_from_domain = origin
            .mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_string();
        let mut results = AuthenticationResults::new(hostname);
        results = if origin.mail_from.is_empty() {
            results.with_spf_ehlo_result(&spf, origin.ip, helo)
        } else {
            results.with_spf_mailfrom_result(&spf, origin.ip, origin.mail_from, helo)
        };
        let Some(msg) = AuthenticatedMessage::parse(message) else {
            // No header section to speak of: nothing to verify beyond SPF.
            return Verdicts {
                header: results.to_header(),
                spf: spf_word(spf.result()),
                dkim: Vec::new(),
                dmarc: "none",
                action: PolicyAction::Deliver,
            };
        };
        let dkim = self.auth.verify_dkim(self.params(&msg)).await;
        let header_from = msg.from.first().cloned().unwrap_or_default();
        let dmarc = self
            .auth
            .verify_dmarc(self.params(DmarcParameters::new(&msg, &dkim, &mail_from_domain, &spf)))
            .await;
        let results = results
            .with_dkim_results(&dkim, &header_from)
            .with_dmarc_result(&dmarc);
        let dmarc_result = dmarc.result();
        let action = match (&dmarc_result, dmarc.policy()) {
            (DmarcResult::Fail(_), Policy::Reject) => PolicyAction::Reject {
                domain: dmarc.domain().to_string(),
            },
            (DmarcResult::Fail(_), Policy::Quarantine) => PolicyAction::Quarantine {
                domain: dmarc.domain().to_string(),
            },
            _ => PolicyAction::Deliver,
        };
        let mut header = results.to_header();
        if dkim.is_empty() {
            // mail-auth says nothing for an unsigned message; RFC 8601 readers (and people)
            // are better served by an explicit "none".
            header.truncate(header.trim_end_matches("\r\n").len());
            header.push_str(";\r\n\tdkim=none\r\n");
        }
        Verdicts {
            header,
            spf: spf_word(spf.result()),
            dkim: dkim.iter().map(|d| dkim_word(d.result())).collect(),
            dmarc: dmarc_word(&dmarc_result),
            action,
        }
    }
}
