//! The TLS policy (issue 9): per protocol `allow`, `notify` or `require` TLS for logins.
//!
//! - Every successful login without TLS is recorded in the user's slot
//!   (`Op::RecordInsecureLogin`, keyspace `insecure_logins`, replicated like the user's
//!   other rows).
//! - Under `notify` the writer decides atomically whether the user is due a notice (none in
//!   the last `notice_window_hours`); if so one is rendered from
//!   `DIR/templates/insecure-notice.txt` and delivered into INBOX through
//!   [`LocalDelivery`], like any mail.
//! - Under `require` (set, or `notify` past `require_after`) the front ends refuse the
//!   password before checking it, naming the help page.
//!
//! `allow_plaintext_auth` is the old spelling: a protocol without `tls = ...` is `allow`
//! when it is true and `require` when it is false (the default), as before.

use crate::config::Config;
use crate::deliver::LocalDelivery;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::{Clock, LoginGate, Op, OpResult};

/// The protocols the policy covers, as named in tandem.toml and in the records.
pub const PROTOCOLS: [&str; 3] = ["imap", "pop3", "submission"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Passwords without TLS are accepted and recorded.
    Allow,
    /// Accepted, recorded, and the user is sent a notice (at most one per window).
    Notify,
    /// Refused before they are checked.
    Require,
}

/// `[tls_policy]` in tandem.toml.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub imap: ProtocolPolicy,
    #[serde(default)]
    pub pop3: ProtocolPolicy,
    #[serde(default)]
    pub submission: ProtocolPolicy,
    /// At most one notice per user per this many hours; default 24.
    pub notice_window_hours: Option<f64>,
    /// The help page named in notices and refusals; default
    /// `http://HOSTNAME:PORT/help/tls` on this host's `http` listener.
    pub help_url: Option<String>,
}

/// `[tls_policy.imap]` (and `.pop3`, `.submission`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProtocolPolicy {
    pub tls: Option<Mode>,
    /// `YYYY-MM-DD` (UTC midnight): from then on `notify` is `require`.
    pub require_after: Option<String>,
}

/// `[testing]` in tandem.toml: TEST ONLY, never set in production.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Testing {
    /// Added to the wall clock the TLS policy reads (notice windows, `require_after`), so
    /// end-to-end tests can step time by restarting with a larger offset.
    #[serde(default)]
    pub clock_offset_secs: i64,
}

/// The system clock moved by `[testing] clock_offset_secs` (0 in production).
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_unix_secs(&self) -> i64 {
        store::SystemClock.now_unix_secs().saturating_add(self.0)
    }
}

/// One row of the secure-settings table (notice, help page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureSetting {
    pub protocol: &'static str,
    pub host: String,
    pub port: u16,
    pub mode: &'static str,
}

/// The secure ways to connect, from the configuration this server runs with.
pub fn secure_settings(cfg: &Config) -> Result<Vec<SecureSetting>> {
    let host = cfg.hostname();
    let mut out = Vec::new();
    for (protocol, key, mode) in [
        ("IMAP", "imaps", "SSL/TLS"),
        ("IMAP", "imap", "STARTTLS"),
        ("POP3", "pop3s", "SSL/TLS"),
        ("POP3", "pop3", "STARTTLS"),
        ("SMTP submission", "submissions", "SSL/TLS"),
        ("SMTP submission", "submission", "STARTTLS"),
    ] {
        out.push(SecureSetting {
            protocol,
            host: host.clone(),
            port: cfg.listen_addr(key)?.port(),
            mode,
        });
    }
    Ok(out)
}

/// The help page address named in notices and refusals.
pub fn help_url(cfg: &Config) -> String {
    match &cfg.tls_policy.help_url {
        Some(u) => u.clone(),
        None => {
            let port = cfg.listen_addr("http").map(|a| a.port()).unwrap_or(80);
            format!("http://{}:{port}/help/tls", cfg.hostname())
        }
    }
}

/// `2026-06-30` → Unix seconds of its UTC midnight.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let t = days_from_civil(y, m, d) * 86_400;
    // `2026-02-31` would silently be March 3rd: refuse days the month does not have.
    let back = format_utc(t);
    (back.get(..10) == Some(&format!("{y:04}-{m:02}-{d:02}")[..])).then_some(t)
}

// Howard Hinnant's days_from_civil (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-28 21:05:00Z` (UTC).
pub fn format_utc(unix: i64) -> String {
    crate::events::utc(unix)
}

/// RFC 5322 `Date:` value.
fn rfc5322_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DD HH:MM:SSZ` from the one civil-date routine (events.rs).
    let t = format_utc(unix);
    let month = t
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    let (y, d, hms) = (
        t.get(..4).unwrap_or("1970"),
        t.get(8..10).unwrap_or("01").trim_start_matches('0'),
        t.get(11..19).unwrap_or("00:00:00"),
    );
    let weekday = DAYS[unix.div_euclid(86_400).rem_euclid(7) as usize];
    format!("{weekday}, {d} {month} {y} {hms} +0000")
}

/// Written on first start; operators edit it. `{name}` placeholders are replaced; the
/// first lines up to the blank line are headers (Subject at least).
pub const DEFAULT_TEMPLATE: &str = "Subject: Your mail program sends your password unencrypted

Hello {user},

On {time}, your mail program ({client}) logged in to your account over
{protocol} from {ip} WITHOUT encryption. Anyone on the network path could
read your password and your mail.

From {cutoff}, unencrypted connections will be refused and your mail program
will stop working until its settings are changed. Please switch it to one of
these secure settings now (your user name and password stay the same):

{settings}
How to change the setting, and what SSL, TLS and STARTTLS mean:
{help_url}

You will receive this message again while insecure logins continue.

-- {hostname}
";

/// Path of the operator-editable notice template.
pub fn template_path(dir: &Path) -> PathBuf {
    dir.join("templates").join("insecure-notice.txt")
}

/// Longest template read; a larger file is refused at start-up.
const TEMPLATE_BYTES_MAX: u64 = 64 * 1024;

/// Creates the template with the default text if it is missing; checks it is readable.
pub fn ensure_template(dir: &Path) -> Result<()> {
    let p = template_path(dir);
    if !p.exists() {
        let parent = dir.join("templates");
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        std::fs::write(&p, DEFAULT_TEMPLATE)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let len = std::fs::metadata(&p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .len();
    if len > TEMPLATE_BYTES_MAX {
        bail!("{} is over {TEMPLATE_BYTES_MAX} bytes", p.display());
    }
    Ok(())
}

/// What a notice is about.
pub struct NoticeFacts<'a> {
    pub user: &'a str,
    pub protocol: &'a str,
    pub client: &'a str,
    pub ip: &'a str,
    pub at: i64,
    pub cutoff: Option<i64>,
}

/// The notice as an RFC 5322 message: the template's headers and body with the
/// placeholders filled, plus From, To, Date, Message-ID and MIME headers.
pub fn render_notice(template: &str, cfg: &Config, f: &NoticeFacts) -> Result<Vec<u8>> {
    let mut table = String::new();
    for s in secure_settings(cfg)? {
        table.push_str(&format!(
            "  {:<16} server {}  port {:<5}  security {}\n",
            s.protocol, s.host, s.port, s.mode
        ));
    }
    let client = if f.client.is_empty() {
        "it did not say which program it is"
    } else {
        f.client
    };
    let cutoff = f
        .cutoff
        .map(|c| format!("{} (UTC)", &format_utc(c)[..10]))
        .unwrap_or_else(|| "a date we will announce".into());
    let hostname = cfg.hostname();
    let filled = template
        .replace("{user}", f.user)
        .replace("{protocol}", &f.protocol.to_uppercase())
        .replace("{client}", client)
        .replace("{ip}", f.ip)
        .replace("{time}", &format_utc(f.at))
        .replace("{cutoff}", &cutoff)
        .replace("{settings}", &table)
        .replace("{help_url}", &help_url(cfg))
        .replace("{hostname}", &hostname);
    let filled = filled.replace("\r\n", "\n");
    let (head, body) = filled.split_once("\n\n").unwrap_or(("", filled.as_str()));
    let mut msg = format!(
        "From: Mail service <postmaster@{hostname}>\r\nTo: <{}>\r\nDate: {}\r\nMessage-ID: <tls-notice.{}.{}@{hostname}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        f.user,
        rfc5322_date(f.at),
        f.at,
        blake3::hash(f.user.as_bytes())
            .to_hex()
            .get(..12)
            .unwrap_or("x"),
    );
    for line in head.lines().filter(|l| !l.trim().is_empty()) {
        msg.push_str(line);
        msg.push_str("\r\n");
    }
    msg.push_str("\r\n");
    for line in body.lines() {
        msg.push_str(line);
        msg.push_str("\r\n");
    }
    Ok(msg.into_bytes())
}

/// The policy as the front ends see it ([`LoginGate`]).
pub struct TlsPolicy {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cfg: Config,
    clock: Arc<dyn Clock>,
    delivery: Arc<LocalDelivery>,
    window_secs: i64,
    /// Per protocol: the mode, and `require_after` as Unix seconds.
    modes: Vec<(&'static str, Mode, Option<i64>)>,
}

impl TlsPolicy {
    /// Checks the `[tls_policy]` settings; an unknown date is a start-up error.
    pub fn new(
        dir: &Path,
        cfg: &Config,
        clock: Arc<dyn Clock>,
        delivery: Arc<LocalDelivery>,
    ) -> Result<TlsPolicy> {
        let p = &cfg.tls_policy;
        let mut modes = Vec::new();
        for (name, pp) in PROTOCOLS.into_iter().zip([&p.imap, &p.pop3, &p.submission]) {
            let mode = pp.tls.unwrap_or(if cfg.allow_plaintext_auth {
                Mode::Allow
            } else {
                Mode::Require
            });
            let after = match &pp.require_after {
                None => None,
                Some(s) => Some(parse_date(s).with_context(|| {
                    format!("[tls_policy.{name}] require_after = {s:?} is not a date like \"2026-06-30\"")
                })?),
            };
            modes.push((name, mode, after));
        }
        let hours = p.notice_window_hours.unwrap_or(24.0);
        if !(hours.is_finite() && hours >= 0.0) {
            bail!("[tls_policy] notice_window_hours must be a number of hours >= 0");
        }
        ensure_template(dir)?;
        Ok(TlsPolicy {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                cfg: cfg.clone(),
                clock,
                delivery,
                window_secs: (hours * 3600.0) as i64,
                modes,
            }),
        })
    }
}

impl Inner {
    fn mode(&self, protocol: &str) -> (Mode, Option<i64>) {
        let Some(&(_, mode, after)) = self.modes.iter().find(|(n, _, _)| *n == protocol) else {
            return (Mode::Require, None);
        };
        match (mode, after) {
            (Mode::Notify, Some(t)) if self.clock.now_unix_secs() >= t => (Mode::Require, after),
            _ => (mode, after),
        }
    }

    async fn record(&self, protocol: &str, user: &str, ip: IpAddr, client: &str) -> Result<()> {
        let (mode, cutoff) = self.mode(protocol);
        let at = self.clock.now_unix_secs();
        let found = match self.delivery.resolve(user) {
            // A frontend: the account's slot is mastered elsewhere; its master records it.
            Err(store::StoreError::Unavailable { .. })
                if protocol == "submission" && self.delivery.remote.get().is_some() =>
            {
                if let Some(r) = self.delivery.remote.get() {
                    r.note_insecure_submission_login(user, ip, client)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot tell the master: {e}"))?;
                }
                return Ok(());
            }
            other => other?,
        };
        let Some((user, slot)) = found else {
            return Ok(());
        };
        // SMTP AUTH may be the account's first use of its slot.
        slot.execute_async(Op::EnsureUser { user: user.clone() })
            .await?;
        let op = Op::RecordInsecureLogin {
            user: user.clone(),
            protocol: protocol.to_string(),
            at,
            ip: ip.to_string(),
            client: client.to_string(),
            notice_window_secs: (mode == Mode::Notify).then_some(self.window_secs),
        };
        let OpResult::InsecureRecorded { notice_due: true } = slot.execute_async(op).await? else {
            return Ok(());
        };
        let path = template_path(&self.dir);
        // Read at each notice, so an operator's edit applies without a restart.
        let template = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let facts = NoticeFacts {
            user: &user,
            protocol,
            client,
            ip: &ip.to_string(),
            at,
            cutoff,
        };
        let msg: Arc<[u8]> = render_notice(&template, &self.cfg, &facts)?.into();
        match self
            .delivery
            .deliver_one(&user, &msg, smtp::Folder::Inbox)
            .await
        {
            smtp::DeliveryOutcome::Delivered => Ok(()),
            other => bail!("notice to {user} not delivered: {other:?}"),
        }
    }
}

impl LoginGate for TlsPolicy {
    fn plaintext_refusal(&self, protocol: &str) -> Option<String> {
        match self.inner.mode(protocol).0 {
            Mode::Require => Some(format!("see {}", help_url(&self.inner.cfg))),
            Mode::Allow | Mode::Notify => None,
        }
    }

    fn insecure_login(&self, protocol: &str, user: &str, ip: IpAddr, client: &str) {
        let inner = self.inner.clone();
        let (protocol, user, client) = (protocol.to_string(), user.to_string(), client.to_string());
        // In the background: the login itself must not wait for a notice's delivery.
        tokio::spawn(async move {
            if let Err(e) = inner.record(&protocol, &user, ip, &client).await {
                eprintln!("tls policy: {user} over {protocol}: {e:#}");
            }
        });
    }
}

/// `tandem report ...`: reports for support staff.
#[derive(clap::Subcommand)]
pub enum ReportCmd {
    /// Users whose mail programs still log in without TLS: user, protocol, last login
    /// (UTC), client address, login count, client name (IMAP ID).
    InsecureClients {
        /// Only users with an insecure login in the last DAYS days.
        #[arg(long, default_value_t = 30)]
        since: u32,
    },
}

/// Runs a report through the running server's admin socket, or over the slots directly
/// when no server runs.
pub fn run_report(dir: &Path, cmd: ReportCmd) -> Result<()> {
    let ReportCmd::InsecureClients { since } = cmd;
    let cfg = Config::load(dir)?;
    let now = OffsetClock(cfg.testing.clock_offset_secs).now_unix_secs();
    let req = crate::admin::Request::InsecureClients {
        since_days: since,
        now,
    };
    let reply = match crate::admin::call(dir, &req)? {
        Some(r) => r,
        None => insecure_report(&crate::user::open_slots_offline(dir)?, now, since),
    };
    if !reply.ok {
        bail!("{}", reply.message);
    }
    print!("{}", reply.message);
    Ok(())
}

/// The insecure-clients report over `slots`, one line per user and protocol.
pub fn insecure_report(slots: &[store::Slot], now: i64, since_days: u32) -> crate::admin::Reply {
    let mut rows = Vec::new();
    for s in slots {
        match s.view().insecure_logins(None) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                return crate::admin::Reply {
                    ok: false,
                    message: format!("cannot read slot {}: {e}", s.name()),
                };
            }
        }
    }
    let mut message = String::new();
    for l in report_lines(&rows, now, since_days) {
        message.push_str(&l);
        message.push('\n');
    }
    crate::admin::Reply { ok: true, message }
}

/// One line per row of `tandem report insecure-clients`.
pub fn report_lines(rows: &[store::InsecureLogin], now: i64, since_days: u32) -> Vec<String> {
    let cutoff = now.saturating_sub(i64::from(since_days) * 86_400);
    let mut rows: Vec<_> = rows.iter().filter(|r| r.last_at >= cutoff).collect();
    rows.sort_by(|a, b| (&a.user, &a.protocol).cmp(&(&b.user, &b.protocol)));
    rows.iter()
        .map(|r| {
            format!(
                "{}\t{}\tlast {}\tfrom {}\tlogins {}\tclient {}",
                r.user,
                r.protocol,
                format_utc(r.last_at),
                r.ip,
                r.count,
                if r.client.is_empty() { "-" } else { &r.client }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-06-30"), Some(1_782_777_600));
        assert_eq!(format_utc(1_782_777_600 + 3661), "2026-06-30 01:01:01Z");
        assert_eq!(
            rfc5322_date(1_782_777_600 + 3661),
            "Tue, 30 Jun 2026 01:01:01 +0000"
        );
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        for bad in [
            "",
            "2026-13-01",
            "2026-06",
            "x-y-z",
            "2026-06-32",
            "2026-02-29",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_default_notice_names_protocol_client_time_cutoff_and_every_secure_setting() {
        let cfg: Config = toml::from_str(
            "hostname = \"mail.example.com\"\n[listen]\nimaps = \"127.0.0.1:993\"\nsubmission = \"127.0.0.1:587\"\n",
        )
        .unwrap();
        let f = NoticeFacts {
            user: "alice@example.com",
            protocol: "imap",
            client: "name=OldMail version=1",
            ip: "192.0.2.1",
            at: 1_782_777_600,
            cutoff: Some(1_782_777_600 + 86_400),
        };
        let msg = String::from_utf8(render_notice(DEFAULT_TEMPLATE, &cfg, &f).unwrap()).unwrap();
        for want in [
            "Subject: Your mail program sends your password unencrypted\r\n",
            "To: <alice@example.com>\r\n",
            "over\r\nIMAP from 192.0.2.1",
            "name=OldMail version=1",
            "2026-06-30 00:00:00Z",
            "From 2026-07-01 (UTC)",
            "IMAP             server mail.example.com  port 993    security SSL/TLS",
            "SMTP submission  server mail.example.com  port 587    security STARTTLS",
            "http://mail.example.com:10080/help/tls",
        ] {
            assert!(msg.contains(want), "{want:?} missing from\n{msg}");
        }
        assert!(!msg.contains('{'), "a placeholder was left: {msg}");
    }
}
