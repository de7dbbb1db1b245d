//! `cluster.toml`: the desired topology, written by operators and read by every host (the
//! same file everywhere; each host finds itself by the `host = "name"` of its
//! `tandem.toml`). The full format is in `docs/cluster.md`; [`check`] validates a file and
//! names, for every problem, the line and the fix. What is *true now* (which copy masters a
//! slot, at which epoch, which hosts are alive) is the cluster state: [`state`].
//! Unknown keys are an error so a typo never silently does nothing.
//!
//! ```toml
//! name = "example"                   # the cluster's name (shown by tandem status)
//! datacentres = ["nyc", "rek"]       # optional; when given, every host must use one
//!
//! [hosts.a]
//! datacentre = "nyc"
//! addresses = ["10.0.0.2"]           # client-facing addresses (must be unique)
//! replication = "10.0.0.2:7400"      # where this host accepts replication connections
//! proxy = "10.0.0.2:7410"            # where frontends reach this store host (mTLS, cluster CA)
//! roles = ["store", "frontend"]      # default ["store"]
//!
//! [slots.s1]
//! home = "a"                         # the master in normal operation (old name: master)
//! replicas = ["b"]
//! epoch = 1                          # the first epoch; cluster state raises it later
//! durability = "replica"             # "local" (default) or "replica"
//! replica_timeout_ms = 2000          # how long an ack may wait for a replica
//! on_replica_timeout = "degrade"     # "degrade" (default: carry on locally) or "strict"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Bounds on what one file may describe: past them the file is refused.
pub const HOSTS_MAX: usize = 1000;
pub const SLOTS_MAX: usize = 100_000;
pub const REPLICAS_MAX: usize = 8;
pub const ADDRESSES_MAX: usize = 16;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fo;
pub mod state;
/// Longest allowed `replica_timeout_ms` (ten minutes): an ack held longer than this helps
/// no sender, who will have timed out long before.
pub const REPLICA_TIMEOUT_MS_MAX: u64 = 600_000;
pub const REPLICA_TIMEOUT_MS_DEFAULT: u64 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// How far a write must travel before the client hears OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged once fsynced on the master.
    #[default]
    Local,
    /// Acknowledged once also applied and fsynced on at least one replica.
    Replica,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Replica => "replica",
        }
    }
}

/// What a `durability = "replica"` slot does when no replica answers in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnReplicaTimeout {
    /// Carry on with local durability (an alert says so) until a replica catches up.
    #[default]
    Degrade,
    /// Refuse writes (temporary failure) until a replica catches up.
    Strict,
}

/// What a host does. A `store` host holds slot copies; a `frontend` host accepts client and
/// MX connections and routes them to each slot's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    Store,
    Frontend,
}

impl HostRole {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRole::Store => "store",
            HostRole::Frontend => "frontend",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub name: String,
    pub datacentre: String,
    /// Client-facing addresses (IMAP, LMTP, …); frontends connect to a master on these.
    pub addresses: Vec<IpAddr>,
    /// Address this host accepts replication connections on (TLS, cluster CA).
    pub replication: SocketAddr,
    /// Where a store host accepts proxied client connections from frontends (TLS with
    /// mutual authentication by the cluster CA). Required on store hosts as soon as any
    /// host has the frontend role.
    pub proxy: Option<SocketAddr>,
    pub roles: Vec<HostRole>,
}

impl HostConfig {
    pub fn has_role(&self, role: HostRole) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    pub name: String,
    /// The slot's **home**: the host that masters it in normal operation. Without cluster
    /// state this is also the master; with it, the state says who masters now.
    pub master: String,
    pub replicas: Vec<String>,
    /// The first epoch (DESIGN invariant 6); the cluster state raises it at each promotion.
    pub epoch: u64,
    pub durability: Durability,
    pub replica_timeout_ms: u64,
    pub on_replica_timeout: OnReplicaTimeout,
}

impl SlotConfig {
    /// Every host holding a copy: home first, then the replicas in file order.
    pub fn copies(&self) -> Vec<&str> {
        std::iter::once(self.master.as_str())
            .chain(self.replicas.iter().map(String::as_str))
            .collect()
    }
}

/// What a host is for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterConfig {
    pub name: Option<String>,
    pub datacentres: Vec<String>,
    pub hosts: BTreeMap<String, HostConfig>,
    pub slots: BTreeMap<String, SlotConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<String>,
    #[serde(default)]
    datacentres: Vec<String>,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    slots: BTreeMap<String, RawSlot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    datacentre: String,
    #[serde(default)]
    addresses: Vec<String>,
    replication: String,
    proxy: Option<String>,
    roles: Option<Vec<HostRole>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    #[serde(alias = "master")]
    home: String,
    #[serde(default)]
    replicas: Vec<String>,
    #[serde(default = "one")]
    epoch: u64,
    #[serde(default)]
    durability: Durability,
    #[serde(default = "default_timeout")]
    replica_timeout_ms: u64,
    #[serde(default)]
    on_replica_timeout: OnReplicaTimeout,
}

fn one() -> u64 {
    1
}

fn default_timeout() -> u64 {
    REPLICA_TIMEOUT_MS_DEFAULT
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file is refused: hosts will not start with it.
    Error,
    /// The file works but is unsafe (e.g. all copies of a slot in one datacentre):
    /// `tandem cluster check` fails on it, `serve` starts and raises nothing.
    Unsafe,
}

/// One thing wrong with a `cluster.toml`: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// 1-based line of the section or key at fault, when it can be found.
    pub line: Option<usize>,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        write!(f, "{}; fix: {}", self.what, self.fix)
    }
}

/// Finds the 1-based line of `[section]` (or, failing that, of the first line mentioning
/// `needle`), so every message can point at the text the operator must edit.
fn line_of(text: &str, section: &str, needle: Option<&str>) -> Option<usize> {
    let header = format!("[{section}]");
    let mut in_section = false;
    let mut section_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_section = t.replace(' ', "") == header;
            if in_section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if in_section
            && let Some(n) = needle
            && t.contains(n)
        {
            return Some(i + 1);
        }
    }
    section_line
}

/// Validates the text of a `cluster.toml`: the config when it has no error, and every
/// problem found (errors and unsafe choices), each naming its line and the fix.
pub fn check(text: &str) -> (Option<ClusterConfig>, Vec<Problem>) {
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            let msg = e.message().to_string();
            let fix = if msg.contains("unknown field") {
                "check the spelling; docs/cluster.md lists every key"
            } else if msg.contains("unknown variant") {
                "use one of the values listed in the message"
            } else if msg.contains("missing field") {
                "add the missing key"
            } else {
                "correct the TOML syntax at that line"
            };
            return (
                None,
                vec![Problem {
                    severity: Severity::Error,
                    line,
                    what: msg,
                    fix: fix.into(),
                }],
            );
        }
    };
    let mut problems = Vec::new();
    let mut err = |line: Option<usize>, what: String, fix: &str| {
        problems.push(Problem {
            severity: Severity::Error,
            line,
            what,
            fix: fix.into(),
        })
    };
    if raw.hosts.len() > HOSTS_MAX {
        err(
            None,
            format!("more than {HOSTS_MAX} hosts"),
            "split the cluster",
        );
    }
    if raw.slots.len() > SLOTS_MAX {
        err(
            None,
            format!("more than {SLOTS_MAX} slots"),
            "split the cluster",
        );
    }
    if let Some(n) = &raw.name
        && (n.trim().is_empty() || n.len() > 64)
    {
        err(
            line_of(text, "", Some("name")),
            format!("cluster name {n:?} must be 1-64 characters"),
            "give the cluster a short name",
        );
    }
    let mut out = ClusterConfig {
        name: raw.name.clone(),
        datacentres: raw.datacentres.clone(),
        ..ClusterConfig::default()
    };
    let mut seen_addr: BTreeMap<String, String> = BTreeMap::new();
    for (name, h) in raw.hosts {
        let sec = format!("hosts.{name}");
        let at = |needle: &str| line_of(text, &sec, Some(needle));
        if let Err(e) = check_host_name(&name) {
            err(
                line_of(text, &sec, None),
                e,
                "rename the host (it is the name in its certificate)",
            );
        }
        if h.datacentre.trim().is_empty() {
            err(
                at("datacentre"),
                format!("[{sec}] datacentre is empty"),
                "name the datacentre, e.g. datacentre = \"nyc\"",
            );
        } else if !raw.datacentres.is_empty() && !raw.datacentres.contains(&h.datacentre) {
            err(
                at("datacentre"),
                format!(
                    "[{sec}] datacentre {:?} is not in datacentres = {:?}",
                    h.datacentre, raw.datacentres
                ),
                "fix the spelling or add it to datacentres",
            );
        }
        let replication: Option<SocketAddr> = match h.replication.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                err(
                    at("replication"),
                    format!(
                        "[{sec}] replication = {:?} is not an address like \"10.0.0.2:7400\"",
                        h.replication
                    ),
                    "write IP:PORT",
                );
                None
            }
        };
        if let Some(a) = replication
            && let Some(other) = seen_addr.insert(a.to_string(), name.clone())
        {
            err(
                at("replication"),
                format!("[{sec}] replication address {a} is also used by host {other}"),
                "give every host its own address",
            );
        }
        if h.addresses.len() > ADDRESSES_MAX {
            err(
                at("addresses"),
                format!("[{sec}] has more than {ADDRESSES_MAX} addresses"),
                "list fewer",
            );
        }
        let mut addresses = Vec::new();
        for a in &h.addresses {
            match a.parse::<IpAddr>() {
                Ok(ip) => {
                    if let Some(other) = seen_addr.insert(ip.to_string(), name.clone()) {
                        err(
                            at("addresses"),
                            format!("[{sec}] address {ip} is also used by host {other}"),
                            "give every host its own addresses",
                        );
                    }
                    addresses.push(ip);
                }
                Err(_) => err(
                    at("addresses"),
                    format!("[{sec}] address {a:?} is not an IP address"),
                    "write addresses = [\"10.0.0.2\"] (no port)",
                ),
            }
        }
        if addresses.is_empty()
            && let Some(r) = replication
        {
            // A host without client addresses is reached where it replicates.
            addresses.push(r.ip());
        }
        let proxy: Option<SocketAddr> = match &h.proxy {
            None => None,
            Some(p) => match p.parse::<SocketAddr>() {
                Ok(a) => {
                    if let Some(other) = seen_addr.insert(a.to_string(), name.clone()) {
                        err(
                            at("proxy"),
                            format!("[{sec}] proxy address {a} is also used by host {other}"),
                            "give every host its own proxy address",
                        );
                    }
                    Some(a)
                }
                Err(_) => {
                    err(
                        at("proxy"),
                        format!("[{sec}] proxy = {p:?} is not an address like \"10.0.0.2:7410\""),
                        "write IP:PORT",
                    );
                    None
                }
            },
        };
        let mut roles = h.roles.unwrap_or_else(|| vec![HostRole::Store]);
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            err(
                at("roles"),
                format!("[{sec}] has no roles"),
                "write roles = [\"store\"] or [\"frontend\"] or both",
            );
        }
        out.hosts.insert(
            name.clone(),
            HostConfig {
                name,
                datacentre: h.datacentre,
                addresses,
                replication: replication.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                proxy,
                roles,
            },
        );
    }
    // Frontends reach a slot's master through its proxy listener: with any frontend, every
    // store host needs one.
    if out.hosts.values().any(|h| h.has_role(HostRole::Frontend)) {
        for h in out.hosts.values() {
            if h.has_role(HostRole::Store) && h.proxy.is_none() {
                let sec = format!("hosts.{}", h.name);
                let ip = h.replication.ip();
                err(
                    line_of(text, &sec, None),
                    format!(
                        "[{sec}] has no proxy address, but frontends must reach every store host"
                    ),
                    &format!("add proxy = \"{ip}:7410\" (an IP:PORT of its own)"),
                );
            }
        }
    }
    for (name, s) in raw.slots {
        let sec = format!("slots.{name}");
        let at = |needle: &str| line_of(text, &sec, Some(needle));
        if let Err(e) = check_slot_name(&name) {
            err(line_of(text, &sec, None), e, "rename the slot");
        }
        let known = |h: &str| -> Option<(String, String)> {
            match out.hosts.get(h) {
                Some(hc) if hc.has_role(HostRole::Store) => None,
                Some(_) => Some((
                    format!("[{sec}] names host {h:?}, which has no \"store\" role"),
                    "add \"store\" to its roles or pick another host".into(),
                )),
                None => {
                    let names: Vec<&str> = out.hosts.keys().map(String::as_str).collect();
                    Some((
                        format!("[{sec}] names host {h:?}, which has no [hosts.{h}]"),
                        format!("use one of {names:?} or add [hosts.{h}]"),
                    ))
                }
            }
        };
        if let Some((what, fix)) = known(&s.home) {
            err(at("home").or(at("master")), what, &fix);
        }
        if s.replicas.len() > REPLICAS_MAX {
            err(
                at("replicas"),
                format!("[{sec}] has more than {REPLICAS_MAX} replicas"),
                "list fewer replicas",
            );
        }
        for (i, r) in s.replicas.iter().enumerate() {
            if let Some((what, fix)) = known(r) {
                err(at("replicas"), what, &fix);
            }
            if *r == s.home {
                err(
                    at("replicas"),
                    format!("[{sec}] lists its master/home {r:?} as a replica"),
                    "remove it from replicas",
                );
            }
            if s.replicas[..i].contains(r) {
                err(
                    at("replicas"),
                    format!("[{sec}] lists replica {r:?} twice"),
                    "remove one",
                );
            }
        }
        if s.epoch == 0 {
            err(
                at("epoch"),
                format!("[{sec}] epoch must be 1 or more"),
                "write epoch = 1 or remove the line",
            );
        }
        if s.replica_timeout_ms == 0 || s.replica_timeout_ms > REPLICA_TIMEOUT_MS_MAX {
            err(
                at("replica_timeout_ms"),
                format!("[{sec}] replica_timeout_ms must be 1 to {REPLICA_TIMEOUT_MS_MAX}"),
                "2000 is the default",
            );
        }
        if s.durability == Durability::Replica && s.replicas.is_empty() {
            err(
                at("durability"),
                format!("[{sec}] durability = \"replica\" needs at least one replica"),
                "add replicas = [\"HOST\"] or use durability = \"local\"",
            );
        }
        out.slots.insert(
            name.clone(),
            SlotConfig {
                name,
                master: s.home,
                replicas: s.replicas,
                epoch: s.epoch,
                durability: s.durability,
                replica_timeout_ms: s.replica_timeout_ms,
                on_replica_timeout: s.on_replica_timeout,
            },
        );
    }
    // Unsafe choices: a datacentre can burn down; a slot whose copies all sit in one is lost.
    for s in out.slots.values() {
        let Some(home) = out.hosts.get(&s.master) else {
            continue;
        };
        let off_dc =
            |h: &&HostConfig| h.datacentre != home.datacentre && h.has_role(HostRole::Store);
        let elsewhere: Vec<&str> = out
            .hosts
            .values()
            .filter(off_dc)
            .map(|h| h.name.as_str())
            .collect();
        let has_off = s
            .replicas
            .iter()
            .filter_map(|r| out.hosts.get(r))
            .any(|h| h.datacentre != home.datacentre);
        if !elsewhere.is_empty() && !has_off {
            problems.push(Problem {
                severity: Severity::Unsafe,
                line: line_of(text, &format!("slots.{}", s.name), Some("replicas")),
                what: format!(
                    "[slots.{}] has no replica outside datacentre {}: losing it loses the slot",
                    s.name, home.datacentre
                ),
                fix: format!("add one of {elsewhere:?} to replicas"),
            });
        }
    }
    let has_error = problems.iter().any(|p| p.severity == Severity::Error);
    (if has_error { None } else { Some(out) }, problems)
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ClusterConfig::parse(&text).map_err(|detail| ClusterError::Invalid {
            path: path.to_path_buf(),
            detail,
        })
    }

    /// Parses and validates the text of a `cluster.toml`; the error names the first
    /// problem, its line and the fix. Unsafe-but-working choices are accepted here (see
    /// [`check`]).
    pub fn parse(text: &str) -> Result<ClusterConfig, String> {
        let (cfg, problems) = check(text);
        match cfg {
            Some(c) => Ok(c),
            None => Err(problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    pub fn host(&self, name: &str) -> Option<&HostConfig> {
        self.hosts.get(name)
    }

    /// The role `host` plays for `slot` by config (home = master), if any.
    pub fn role(&self, host: &str, slot: &str) -> Option<Role> {
        let s = self.slots.get(slot)?;
        if s.master == host {
            Some(Role::Master)
        } else if s.replicas.iter().any(|r| r == host) {
            Some(Role::Replica)
        } else {
            None
        }
    }

    /// Every slot `host` holds a copy of, with its role, in name order.
    pub fn slots_of(&self, host: &str) -> Vec<(&SlotConfig, Role)> {
        self.slots
            .values()
            .filter_map(|s| self.role(host, &s.name).map(|r| (s, r)))
            .collect()
    }

    /// Hosts with the frontend role, in name order.
    pub fn frontends(&self) -> Vec<&HostConfig> {
        self.hosts
            .values()
            .filter(|h| h.has_role(HostRole::Frontend))
            .collect()
    }
}

/// Host names double as TLS server names in host certificates, so they must be DNS labels.
fn check_host_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host name {name:?} must be 1-63 of a-z, 0-9 and -, not all digits, not starting or ending with -"
        ))
    }
}

/// Slot names are directory names under `DIR/slots`.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "slot name {name:?} must be 1-64 of A-Z, a-z, 0-9, - and _"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[hosts.a]
datacentre = "nyc"
replication = "127.0.0.2:7400"
[hosts.b]
datacentre = "rek"
replication = "127.0.0.3:7400"
[slots.s1]
master = "a"
replicas = ["b"]
durability = "replica"
[slots.s2]
master = "b"
"#;

    #[test]
    fn parses_hosts_slots_and_roles_with_defaults() {
        let c = ClusterConfig::parse(GOOD).unwrap();
        assert_eq!(c.hosts["a"].datacentre, "nyc");
        assert_eq!(c.hosts["b"].replication, "127.0.0.3:7400".parse().unwrap());
        let s1 = &c.slots["s1"];
        assert_eq!(s1.epoch, 1);
        assert_eq!(s1.durability, Durability::Replica);
        assert_eq!(s1.replica_timeout_ms, REPLICA_TIMEOUT_MS_DEFAULT);
        assert_eq!(s1.on_replica_timeout, OnReplicaTimeout::Degrade);
        assert_eq!(c.slots["s2"].durability, Durability::Local);
        assert_eq!(c.role("a", "s1"), Some(Role::Master));
        assert_eq!(c.role("b", "s1"), Some(Role::Replica));
        assert_eq!(c.role("a", "s2"), None);
        let of_b: Vec<_> = c
            .slots_of("b")
            .iter()
            .map(|(s, r)| (s.name.clone(), *r))
            .collect();
        assert_eq!(
            of_b,
            vec![("s1".into(), Role::Replica), ("s2".into(), Role::Master)]
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let cases = [
            (
                GOOD.replace("replicas = [\"b\"]", "replicas = [\"c\"]"),
                "no [hosts.c]",
            ),
            (
                GOOD.replace("replicas = [\"b\"]", "replicas = [\"a\"]"),
                "its master",
            ),
            (
                GOOD.replace("replicas = [\"b\"]", "replicas = [\"b\", \"b\"]"),
                "twice",
            ),
            (
                GOOD.replace("replicas = [\"b\"]", "replicas = []"),
                "at least one replica",
            ),
            (GOOD.replace("[hosts.b]", "[hosts.B_x]"), "host name"),
            (GOOD.replace("127.0.0.2:7400", "nowhere"), "not an address"),
            (
                GOOD.replace("durability = \"replica\"", "durablity = \"replica\""),
                "unknown field",
            ),
            (
                GOOD.replace("durability = \"replica\"", "durability = \"sync\""),
                "unknown variant",
            ),
            (format!("{GOOD}epoch = 0\n"), "epoch"),
            (
                format!("{GOOD}replica_timeout_ms = 0\n"),
                "replica_timeout_ms",
            ),
        ];
        for (text, want) in cases {
            let e = ClusterConfig::parse(&text).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    /// The docs/cluster.md example: 3 hosts, 2 datacentres.
    const FULL: &str = r#"name = "example"
datacentres = ["nyc", "rek"]

[hosts.imap1]
datacentre = "nyc"
addresses = ["10.0.0.11"]
replication = "10.0.0.11:7400"
proxy = "10.0.0.11:7410"
roles = ["store", "frontend"]

[hosts.imap2]
datacentre = "nyc"
addresses = ["10.0.0.12"]
replication = "10.0.0.12:7400"
proxy = "10.0.0.12:7410"
roles = ["store", "frontend"]

[hosts.imap3]
datacentre = "rek"
addresses = ["10.1.0.13"]
replication = "10.1.0.13:7400"
proxy = "10.1.0.13:7410"

[slots.s1]
home = "imap1"
replicas = ["imap3"]
durability = "replica"

[slots.s2]
home = "imap2"
replicas = ["imap3", "imap1"]

[slots.s3]
home = "imap3"
replicas = ["imap1"]
"#;

    #[test]
    fn frontends_need_a_proxy_address_on_every_store_host() {
        let with_fe = format!(
            "{GOOD}[hosts.f]\ndatacentre = \"nyc\"\nreplication = \"127.0.0.4:7400\"\nroles = [\"frontend\"]\n"
        );
        let (c, problems) = check(&with_fe);
        assert!(c.is_none());
        let msgs: Vec<String> = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("[hosts.a] has no proxy address"),
            "{msgs:?}"
        );
        assert!(msgs[0].contains("line 2"), "{msgs:?}");
        assert!(
            msgs[0].contains("add proxy = \"127.0.0.2:7410\""),
            "{msgs:?}"
        );
        let fixed = with_fe
            .replace(
                "\"127.0.0.2:7400\"\n",
                "\"127.0.0.2:7400\"\nproxy = \"127.0.0.2:7410\"\n",
            )
            .replace(
                "\"127.0.0.3:7400\"\n",
                "\"127.0.0.3:7400\"\nproxy = \"127.0.0.3:7410\"\n",
            );
        let c = ClusterConfig::parse(&fixed).unwrap();
        assert_eq!(c.hosts["a"].proxy, Some("127.0.0.2:7410".parse().unwrap()));
        assert_eq!(c.hosts["f"].proxy, None);
        let dup = fixed.replace("127.0.0.3:7410", "127.0.0.2:7410");
        assert!(
            ClusterConfig::parse(&dup)
                .unwrap_err()
                .contains("proxy address 127.0.0.2:7410 is also used")
        );
        let bad = fixed.replace("127.0.0.3:7410", "nowhere");
        assert!(
            ClusterConfig::parse(&bad)
                .unwrap_err()
                .contains("proxy = \"nowhere\" is not an address")
        );
    }

    #[test]
    fn full_example_is_clean() {
        let (c, problems) = check(FULL);
        assert!(problems.is_empty(), "{problems:?}");
        let c = c.unwrap();
        assert_eq!(c.name.as_deref(), Some("example"));
        assert_eq!(c.hosts["imap3"].roles, vec![HostRole::Store]);
        assert_eq!(
            c.hosts["imap3"].addresses,
            vec!["10.1.0.13".parse::<IpAddr>().unwrap()]
        );
        let fe: Vec<_> = c.frontends().iter().map(|h| h.name.clone()).collect();
        assert_eq!(fe, vec!["imap1", "imap2"]);
        assert_eq!(c.slots["s2"].copies(), vec!["imap2", "imap3", "imap1"]);
    }

    #[test]
    fn cluster_check_names_line_and_fix_for_every_kind_of_mistake() {
        // (broken text, words the message must contain, the line it must name)
        let cases: Vec<(String, &str, usize)> = vec![
            (
                FULL.replace(
                    "replicas = [\"imap3\"]\ndurability",
                    "replicas = [\"imap9\"]\ndurability",
                ),
                "no [hosts.imap9]",
                26,
            ),
            (
                FULL.replace("home = \"imap1\"", "home = \"imap7\""),
                "no [hosts.imap7]",
                25,
            ),
            (
                FULL.replace("10.0.0.12\"]", "10.0.0.11\"]"),
                "also used by host imap1",
                13,
            ),
            (
                FULL.replace("10.0.0.12:7400", "10.0.0.11:7400"),
                "also used by host imap1",
                14,
            ),
            (
                FULL.replace("datacentre = \"rek\"", "datacentre = \"reykjavik\""),
                "not in datacentres",
                19,
            ),
            (
                FULL.replace(
                    "addresses = [\"10.1.0.13\"]",
                    "addresses = [\"10.1.0.13:143\"]",
                ),
                "not an IP address",
                20,
            ),
            (
                FULL.replace(
                    "replicas = [\"imap1\"]\n",
                    "replicas = [\"imap1\", \"imap1\"]\n",
                ),
                "twice",
                35,
            ),
            (
                FULL.replace(
                    "replicas = [\"imap3\", \"imap1\"]",
                    "replicas = [\"imap2\"]",
                ),
                "as a replica",
                31,
            ),
            (
                FULL.replace(
                    "roles = [\"store\", \"frontend\"]\n\n[hosts.imap2]",
                    "roles = [\"frontend\"]\n\n[hosts.imap2]",
                ),
                "no \"store\" role",
                25,
            ),
            (
                FULL.replace(
                    "roles = [\"store\", \"frontend\"]\n\n[hosts.imap2]",
                    "roles = [\"mx\"]\n\n[hosts.imap2]",
                ),
                "unknown variant",
                9,
            ),
            (
                FULL.replace("durability = \"replica\"", "durablity = \"replica\""),
                "unknown field",
                27,
            ),
            (FULL.replace("[slots.s3]", "[slots.s3"), "table header", 33),
        ];
        for (text, want, line) in cases {
            let (cfg, problems) = check(&text);
            assert!(cfg.is_none(), "accepted: {want}");
            let p = &problems[0];
            let shown = p.to_string();
            assert!(shown.contains(want), "{want:?} not in {shown:?}");
            assert!(shown.contains("fix: "), "{shown}");
            assert_eq!(p.line, Some(line), "{shown}");
        }
    }

    #[test]
    fn slot_without_off_datacentre_replica_is_unsafe_when_one_exists() {
        let text = FULL.replace(
            "home = \"imap1\"\nreplicas = [\"imap3\"]",
            "home = \"imap1\"\nreplicas = [\"imap2\"]",
        );
        let (cfg, problems) = check(&text);
        // It still runs (serve accepts it) but `cluster check` reports it.
        assert!(cfg.is_some());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].severity, Severity::Unsafe);
        assert!(
            problems[0]
                .to_string()
                .contains("no replica outside datacentre nyc")
        );
        assert!(problems[0].fix.contains("imap3"));
        assert_eq!(problems[0].line, Some(26));
        // One datacentre only: nothing to complain about.
        let one_dc = GOOD.replace("\"rek\"", "\"nyc\"");
        assert!(check(&one_dc).1.is_empty());
    }
}
