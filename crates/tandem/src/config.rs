//! `DIR/tandem.toml`: the host's own settings. Every key is optional; unset keys keep the
//! defaults below. Unknown keys are an error, so a typo never silently does nothing.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name used in greetings and the self-signed certificate.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Allow LOGIN / AUTH PLAIN (IMAP) and USER/PASS / AUTH PLAIN (POP3) on connections
    /// without TLS (off by default).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub smtp: SmtpSettings,
    #[serde(default)]
    pub outbound: OutboundSettings,
    #[serde(default)]
    pub domains: Domains,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub integrity: Integrity,
    #[serde(default)]
    pub events: Events,
    /// This host's name in `cluster.toml` (several hosts, replication); unset: one machine.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub cluster: ClusterFiles,
    /// `[tls_policy]`: allow / notify / require TLS for logins (see `tlspolicy.rs`).
    #[serde(default)]
    pub tls_policy: crate::tlspolicy::Settings,
    /// `[frontend]`: listeners of the frontend role (see `frontend/mod.rs`).
    #[serde(default)]
    pub frontend: crate::frontend::FrontendListen,
    /// `[testing]`: test-only knobs (see `tlspolicy::Testing`).
    #[serde(default)]
    pub testing: crate::tlspolicy::Testing,
}

/// `[cluster]`: where the multi-host files are (see `cluster.rs`). Paths are relative to
/// the data directory.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterFiles {
    /// The cluster config, the same file on every host; default `cluster.toml`.
    pub config: Option<PathBuf>,
    /// The cluster CA certificate; default `cluster/ca.pem`.
    pub ca: Option<PathBuf>,
    /// This host's certificate and key; default `cluster/HOST.pem`, `cluster/HOST-key.pem`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Bound on each replication socket read and write; default 30.
    pub io_timeout_secs: Option<u64>,
    /// Cluster state: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, or a directory every
    /// host of this machine points at (embedded backend; see docs/cluster.md). Unset:
    /// masters are fixed by cluster.toml, no failover.
    pub state: Option<String>,
    /// How long a host's lease lasts; a master stops writing before it can expire.
    /// Default 3000.
    pub lease_ttl_ms: Option<u64>,
}

/// `[integrity]`: background scrubbing and audit defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Integrity {
    /// One background pass re-verifies every blob and record of every slot in this
    /// many days; 0 turns scrubbing off.
    pub scrub_period_days: f64,
    /// Upper bound on the scrubber's reads, per slot.
    pub scrub_rate_mb_s: f64,
    /// Unreferenced blobs younger than this are never listed or collected by audit.
    pub orphan_grace_hours: f64,
}

impl Default for Integrity {
    fn default() -> Self {
        Integrity {
            scrub_period_days: 7.0,
            scrub_rate_mb_s: 4.0,
            orphan_grace_hours: 24.0,
        }
    }
}

/// `[events]`: where alerts go besides `events.jsonl`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// `http://host:port/path`: every alert is POSTed there as its JSON object.
    pub webhook_url: Option<String>,
}

/// `[smtp]`: the MX (`smtp`) and submission listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// A command line, or each piece of message data, must arrive within this.
    pub idle_timeout_secs: u64,
    /// Concurrent connections per client address (IPv6: per /64); 0 = unlimited.
    pub connections_per_ip_max: usize,
    /// MX messages per client address per minute; 0 = unlimited.
    pub messages_per_ip_per_minute: u32,
    pub recipients_max: usize,
    /// Check SPF, DKIM and DMARC on the MX and apply DMARC policy.
    pub verify: bool,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        let d = smtp::SmtpConfig::default();
        SmtpSettings {
            idle_timeout_secs: d.idle_timeout.as_secs(),
            connections_per_ip_max: d.connections_per_ip_max,
            messages_per_ip_per_minute: d.messages_per_ip_per_minute,
            recipients_max: d.recipients_max,
            verify: true,
        }
    }
}

/// `[outbound]`: delivery of queued mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Send all outbound mail through this "host:port" instead of the recipients' MX hosts.
    pub relay: Option<String>,
    /// Port of remote MX hosts.
    pub port: u16,
    /// First retry after this long; doubles per attempt up to `retry_max_secs`.
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// Give up (bounce) after this long.
    pub max_age_secs: u64,
    /// Concurrent transactions per destination domain (or relay).
    pub per_destination_max: usize,
    /// Concurrent outbound transactions in total.
    pub connections_max: usize,
    pub connect_timeout_secs: u64,
    /// Per command reply (RFC 5321 §4.5.3.2: 5 minutes).
    pub command_timeout_secs: u64,
    /// For the reply to the final dot (RFC 5321: 10 minutes).
    pub data_timeout_secs: u64,
    /// Use STARTTLS when the receiving server offers it.
    pub tls: bool,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            relay: None,
            port: 25,
            retry_initial_ms: 60_000,
            retry_max_secs: 3600,
            max_age_secs: 5 * 86_400,
            per_destination_max: 4,
            connections_max: 64,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            tls: true,
        }
    }
}

/// `[domains]`: which mail domains this host receives for.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Domains {
    /// Default: the domains of existing accounts, plus `localhost`.
    pub local: Option<Vec<String>>,
}

/// `[dns]`: where mail DNS answers come from.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Answer every mail DNS question from this table and never from the network (tests,
    /// labs): `"name" = ["TXT v=spf1 ...", "MX 10 host", "A 192.0.2.1", "AAAA ::1"]`.
    #[serde(rename = "static")]
    pub static_records: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub imap: Option<String>,
    pub imaps: Option<String>,
    pub pop3: Option<String>,
    pub pop3s: Option<String>,
    pub lmtp: Option<String>,
    pub smtp: Option<String>,
    pub submission: Option<String>,
    pub submissions: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain; default `DIR/tls/cert.pem` (self-signed, made on first start).
    pub cert: Option<PathBuf>,
    /// PEM private key; default `DIR/tls/key.pem`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted by LMTP or APPEND.
    pub message_bytes_max: u64,
    /// Longest IMAP command line (without literals).
    pub imap_line_bytes_max: usize,
    /// Concurrent client connections per listener.
    pub connections_max: usize,
    /// IMAP commands per second per connection (bursts of 5 s worth pass); over it a
    /// command is answered `NO [LIMIT]`. 0 = no limit.
    pub imap_commands_per_second: u32,
    /// Open IMAP connections per client IP address; over it `* BYE [UNAVAILABLE]`.
    /// 0 = no limit.
    pub imap_connections_per_ip_max: u32,
    /// Logged-in IMAP sessions per account; over it LOGIN gets `NO [LIMIT]`. 0 = no limit.
    pub imap_connections_per_user_max: u32,
    /// Autologout of a logged-in IMAP session with no client activity, in seconds
    /// (RFC 3501/9051: at least 30 minutes; IDLE clients re-issue IDLE before then).
    pub imap_idle_timeout_secs: u64,
    /// Autologout of an IMAP connection that has not logged in, in seconds.
    pub imap_unauth_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 64 << 20,
            imap_line_bytes_max: 64 << 10,
            connections_max: 20_000,
            imap_commands_per_second: 200,
            imap_connections_per_ip_max: 200,
            imap_connections_per_user_max: 50,
            imap_idle_timeout_secs: 30 * 60,
            imap_unauth_timeout_secs: 60,
        }
    }
}

/// The listener keys, their protocol's standard port, and whether this build serves them.
pub const LISTENERS: [(&str, u16, bool); 10] = [
    ("imap", 143, true),
    ("imaps", 993, true),
    ("pop3", 110, true),
    ("pop3s", 995, true),
    ("lmtp", 24, true),
    ("smtp", 25, true),
    ("submission", 587, true),
    ("submissions", 465, true),
    ("http", 80, true),
    ("https", 443, true),
];

impl Config {
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join("tandem.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| "localhost".into())
    }

    /// The configured (or default) address of a listener key.
    pub fn listen_addr(&self, key: &str) -> Result<SocketAddr> {
        let l = &self.listen;
        let set = match key {
            "imap" => &l.imap,
            "imaps" => &l.imaps,
            "pop3" => &l.pop3,
            "pop3s" => &l.pop3s,
            "lmtp" => &l.lmtp,
            "smtp" => &l.smtp,
            "submission" => &l.submission,
            "submissions" => &l.submissions,
            "http" => &l.http,
            "https" => &l.https,
            _ => bail!("unknown listener {key}"),
        };
        match set {
            Some(s) => s.parse().with_context(|| {
                format!("[listen] {key} = {s:?} is not an address like \"127.0.0.1:10143\"")
            }),
            None => {
                let port = LISTENERS
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, p, _)| p + 10_000)
                    .unwrap_or(0);
                Ok(SocketAddr::from(([127, 0, 0, 1], port)))
            }
        }
    }
}

/// Written on first start so operators find every knob in one place.
pub const DEFAULT_TOML: &str = r#"# Tandem host settings. Every key is optional; shown values are the defaults.
# hostname = "localhost"
# allow_plaintext_auth = false   # old spelling of [tls_policy] tls = "allow" (true) / "require" (false)
# host = "a"                     # this host's name in cluster.toml: several hosts, replication

[listen]
# imap = "127.0.0.1:10143"
# imaps = "127.0.0.1:10993"
# lmtp = "127.0.0.1:10024"
# pop3 = "127.0.0.1:10110"
# pop3s = "127.0.0.1:10995"
# smtp = "127.0.0.1:10025"          # MX: inbound mail for local domains
# submission = "127.0.0.1:10587"    # STARTTLS + AUTH, for mail clients
# submissions = "127.0.0.1:10465"   # implicit TLS + AUTH
# http = "127.0.0.1:10080"          # web: help pages (/help/tls)
# https = "127.0.0.1:10443"         # the same over TLS

[tls]
# cert = "tls/cert.pem"
# key = "tls/key.pem"

[tls_policy]                      # logins without TLS; see docs/tls.md
# notice_window_hours = 24          # under "notify": at most one notice per user per window
# help_url = "http://HOSTNAME:HTTPPORT/help/tls"
# [tls_policy.imap]                 # also [tls_policy.pop3], [tls_policy.submission]
# tls = "require"                   # "allow" | "notify" | "require"; default from allow_plaintext_auth
# require_after = "2026-06-30"      # "notify" becomes "require" on this date (UTC)

[limits]
# message_bytes_max = 67108864
# imap_line_bytes_max = 65536
# connections_max = 20000

[integrity]
# scrub_period_days = 7.0           # re-verify every blob and record once per period; 0 = off
# scrub_rate_mb_s = 4.0             # the scrubber reads at most this fast, per slot
# orphan_grace_hours = 24.0         # audit leaves unreferenced blobs younger than this alone

[cluster]                         # only with host = "..." (see docs/replication.md)
# config = "cluster.toml"           # the same file on every host
# ca = "cluster/ca.pem"             # from `tandem cluster ca init`
# cert = "cluster/HOST.pem"         # from `tandem cluster cert issue HOST`
# key = "cluster/HOST-key.pem"
# io_timeout_secs = 30
# state = "/srv/tandem-state"      # embedded cluster state shared by the hosts (docs/cluster.md)
# lease_ttl_ms = 3000

[frontend]                        # hosts whose cluster.toml roles include "frontend"
# imap = "0.0.0.0:143"              # unset keys are not served; with the store role too,
# imaps = "0.0.0.0:993"             #   use other addresses than [listen]
# pop3 = "0.0.0.0:110"
# pop3s = "0.0.0.0:995"
# lmtp = "10.0.0.11:24"             # from the MX hosts
# submission = "0.0.0.0:587"
# submissions = "0.0.0.0:465"

[events]
# webhook_url = "http://127.0.0.1:9000/tandem"   # POST each alert as JSON (plain HTTP only)

[domains]
# local = ["example.com"]           # default: the domains of existing accounts, and localhost

[smtp]
# idle_timeout_secs = 300
# connections_per_ip_max = 20
# messages_per_ip_per_minute = 600
# recipients_max = 1000
# verify = true                     # SPF/DKIM/DMARC on inbound mail

[outbound]
# relay = "smarthost.example.net:25"   # default: deliver to each domain's MX hosts
# port = 25
# retry_initial_ms = 60000
# retry_max_secs = 3600
# max_age_secs = 432000             # 5 days, then the sender gets a bounce
# per_destination_max = 4
# connections_max = 64
# connect_timeout_secs = 30
# command_timeout_secs = 300
# data_timeout_secs = 600
# tls = true

# [dns.static]                      # answer DNS from this table only (tests, labs)
# "example.org" = ["TXT v=spf1 ip4:192.0.2.1 -all", "MX 10 mx.example.org"]
# imap_commands_per_second = 200      # per connection, bursts of 5 s pass; 0 = no limit
# imap_connections_per_ip_max = 200   # 0 = no limit
# imap_connections_per_user_max = 50  # 0 = no limit
# imap_idle_timeout_secs = 1800       # autologout when logged in (RFC: at least 1800)
# imap_unauth_timeout_secs = 60       # autologout before login
"#;
