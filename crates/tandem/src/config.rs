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
    /// Allow LOGIN / AUTH PLAIN on connections without TLS (off by default).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub limits: Limits,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 64 << 20,
            imap_line_bytes_max: 64 << 10,
            connections_max: 20_000,
        }
    }
}

/// The listener keys, their protocol's standard port, and whether this build serves them.
pub const LISTENERS: [(&str, u16, bool); 10] = [
    ("imap", 143, true),
    ("imaps", 993, true),
    ("pop3", 110, false),
    ("pop3s", 995, false),
    ("lmtp", 24, true),
    ("smtp", 25, false),
    ("submission", 587, false),
    ("submissions", 465, false),
    ("http", 80, false),
    ("https", 443, false),
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
# allow_plaintext_auth = false   # allow LOGIN without TLS (never on the internet)

[listen]
# imap = "127.0.0.1:10143"
# imaps = "127.0.0.1:10993"
# lmtp = "127.0.0.1:10024"
# pop3 = "127.0.0.1:10110"          # not served yet
# pop3s = "127.0.0.1:10995"         # not served yet
# smtp = "127.0.0.1:10025"          # not served yet
# submission = "127.0.0.1:10587"    # not served yet
# submissions = "127.0.0.1:10465"   # not served yet
# http = "127.0.0.1:10080"          # not served yet
# https = "127.0.0.1:10443"         # not served yet

[tls]
# cert = "tls/cert.pem"
# key = "tls/key.pem"

[limits]
# message_bytes_max = 67108864
# imap_line_bytes_max = 65536
# connections_max = 20000
"#;
