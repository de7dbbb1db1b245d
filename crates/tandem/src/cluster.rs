//! Several hosts: `tandem cluster ...` (CA, host certificates, verify, sync with a
//! progress bar) and the serve-side wiring of replication (`crates/replication`).
//!
//! A host joins a cluster with `host = "NAME"` in its `tandem.toml`; it then reads
//! `cluster.toml` (the same file on every host), holds a copy of every slot that names it
//! as master or replica under `DIR/slots/SLOT` (creating empty copies as needed), and
//! serves IMAP/POP3/LMTP only for the slots it masters.

use crate::admin;
use crate::config::Config;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use cluster::{ClusterConfig, Role};
use replication::status::{SlotStatus, VerifyReport};
use replication::{HostSetup, ReplicaRepairSource, Replication, Tls, TlsFiles};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use store::{BlobHash, Event, EventLog, RepairSource, Slot, SlotHeader, StoreError};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// The cluster CA that signs every host's certificate.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Host certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Validate cluster.toml (or FILE): every problem with its line and the fix.
    /// Exit 0 clean, 1 problems.
    Check { file: Option<PathBuf> },
    /// Compare each replica with this master, record by record, changing nothing.
    /// Exit 0 no difference, 1 differences (listed).
    Verify {
        /// Only this slot (default: every slot this host masters).
        slot: Option<String>,
    },
    /// Compare and bring every replica up to date now (catch-up, bootstrap of a new
    /// replica), with a progress bar.
    Sync {
        /// Only this slot (default: every slot this host masters).
        slot: Option<String>,
    },
    /// Print the cluster state as it is now (slots with master and epoch, host leases,
    /// copy positions; never the account directory), from any backend.
    State {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create DIR/cluster/ca.pem and ca-key.pem (refuses to replace an existing CA).
    Init,
}

#[derive(Subcommand)]
pub enum CertCmd {
    /// Issue HOST.pem and HOST-key.pem, signed by the CA in DIR/cluster.
    Issue {
        host: String,
        /// Write them here instead of DIR/cluster (copy them to HOST's DIR/cluster).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Admin-socket requests of `tandem status` and `tandem cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ClusterRequest {
    Status,
    Verify { slot: Option<String> },
    Sync { slot: Option<String> },
}

const NOT_IN_CLUSTER: &str =
    "this server is not part of a cluster (no host = \"...\" in its tandem.toml)";

/// Replication running in this server, for the admin socket and audit repair.
static REPLICATION: OnceLock<Arc<Replication>> = OnceLock::new();
/// Slots this server serves (masters, or every slot without a cluster), for `status`.
static SERVED: OnceLock<Vec<(String, u64)>> = OnceLock::new();

pub(crate) fn files(dir: &Path, cfg: &Config, host: &str) -> (PathBuf, TlsFiles) {
    let c = &cfg.cluster;
    let rel = |p: &Option<PathBuf>, default: String| {
        dir.join(p.clone().unwrap_or_else(|| default.into()))
    };
    (
        rel(&c.config, "cluster.toml".into()),
        TlsFiles {
            ca: rel(&c.ca, "cluster/ca.pem".into()),
            cert: rel(&c.cert, format!("cluster/{host}.pem")),
            key: rel(&c.key, format!("cluster/{host}-key.pem")),
        },
    )
}

fn io_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.cluster.io_timeout_secs.unwrap_or(30).clamp(1, 3600))
}

/// This host's cluster.toml (`[cluster] config`, default `cluster.toml`).
pub fn load_config(dir: &Path, cfg: &Config) -> Result<ClusterConfig> {
    let path = dir.join(
        cfg.cluster
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("cluster.toml")),
    );
    Ok(ClusterConfig::load(&path)?)
}

fn load(dir: &Path, cfg: &Config, host: &str) -> Result<(ClusterConfig, TlsFiles)> {
    let (path, tls) = files(dir, cfg, host);
    let cluster = ClusterConfig::load(&path)?;
    if cluster.host(host).is_none() {
        bail!(
            "tandem.toml says host = {host:?} but {} has no [hosts.{host}]",
            path.display()
        );
    }
    Ok((cluster, tls))
}

fn refuse_slot(events: &EventLog, name: &str, why: String) {
    let mut ev = Event::alert("slot_refused", format!("not serving: {why}"));
    ev.slot = Some(name.to_string());
    events.raise(ev);
    eprintln!("slot {name} is NOT served: {why}");
}

/// Called by `serve` before anything listens. Without `host` in tandem.toml: `None` (one
/// machine). Otherwise opens this host's slot copies (creating empty ones), promotes
/// those it masters to their configured epoch, starts replication, and returns the slots
/// to serve to clients: the ones mastered here.
pub fn start(
    dir: &Path,
    cfg: &Config,
    events: &Arc<EventLog>,
    clock: &Arc<dyn store::Clock>,
) -> Result<Option<HashMap<String, Slot>>> {
    let Some(host) = cfg.host.clone() else {
        return Ok(None);
    };
    let (cluster, tls) = load(dir, cfg, &host)?;
    // With cluster state, masters and epochs come from it (failover), not from the file.
    let (cluster, following) = match crate::follow::effective_config(dir, cfg, &host, &cluster)? {
        Some((eff, f)) => (eff, Some(f)),
        None => (cluster, None),
    };
    let root = dir.join("slots");
    let mut served = HashMap::new();
    let mut copies = Vec::new();
    let mut replica_copies = Vec::new();
    for (sc, role) in cluster.slots_of(&host) {
        let sdir = root.join(&sc.name);
        let opened = if sdir.join("SLOT").exists() {
            Slot::open(&sdir, events.clone(), clock.clone())
        } else {
            Slot::create(&sdir, &sc.name, &host, events.clone(), clock.clone())
        };
        let slot = match opened {
            Ok(s) => s,
            Err(e) => {
                refuse_slot(events, &sc.name, format!("start-up check failed: {e}"));
                continue;
            }
        };
        if role == Role::Master {
            if let Err(e) = replication::promote(&slot, sc) {
                refuse_slot(events, &sc.name, e.to_string());
                continue;
            }
            served.insert(sc.name.clone(), slot.clone());
        }
        if role != Role::Master {
            replica_copies.push(slot.clone());
        }
        copies.push((slot, role));
    }
    for name in crate::user::slot_names(dir)? {
        if cluster.role(&host, &name).is_none() {
            events.raise(Event::info(
                "slot_not_in_cluster",
                format!("slot {name} is on disk but cluster.toml gives host {host} no role for it: not served"),
            ));
        }
    }
    let repl = Replication::start(HostSetup {
        host: host.clone(),
        cluster,
        tls,
        slots: copies,
        events: events.clone(),
        io_timeout: io_timeout(cfg),
    })
    .context("cannot start replication")?;
    let repl = Arc::new(repl);
    if let Some(mut f) = following {
        f.replicas = replica_copies;
        crate::follow::begin(f, repl.clone(), events.clone())?;
    }
    let _ = REPLICATION.set(repl);
    Ok(Some(served))
}

/// Remembers what `status` reports for a server without a cluster.
pub fn note_served(slots: &HashMap<String, Slot>) {
    let mut v: Vec<_> = slots
        .iter()
        .map(|(n, s)| (n.clone(), s.epoch().0))
        .collect();
    v.sort();
    let _ = SERVED.set(v);
}

/// Stops replication (at shutdown, before the slots are flushed).
pub fn stop() {
    if let Some(r) = REPLICATION.get() {
        r.stop();
    }
}

/// The repair sources of an audit of `slot`: `local` first, then, with `from_replica`,
/// the slot's replicas (through the running server's replication, or directly when no
/// server runs).
pub fn repair_sources(
    dir: &Path,
    slot: &str,
    local: Box<dyn RepairSource>,
    from_replica: bool,
) -> Result<Sources> {
    let mut out = vec![local];
    if from_replica {
        let cfg = Config::load(dir)?;
        let host = cfg
            .host
            .clone()
            .context("--from-replica needs a cluster: set host = \"NAME\" in tandem.toml")?;
        let (cluster, files) = load(dir, &cfg, &host)?;
        let epoch = SlotHeader::read(&dir.join("slots").join(slot))
            .with_context(|| format!("cannot read slot {slot}'s header"))?
            .epoch;
        let events = Arc::new(EventLog::new(
            &dir.join("events.jsonl"),
            Arc::new(store::SystemClock),
        ));
        let src = ReplicaRepairSource::new(
            &cluster,
            &host,
            slot,
            epoch,
            Tls::load(&files)?,
            io_timeout(&cfg),
            events,
        )?;
        out.push(Box::new(src));
    }
    Ok(Sources(out))
}

/// Repair sources tried in order.
pub struct Sources(Vec<Box<dyn RepairSource>>);

impl Sources {
    pub fn none() -> Sources {
        Sources(Vec::new())
    }
}

impl RepairSource for Sources {
    fn describe(&self) -> String {
        let v: Vec<_> = self.0.iter().map(|s| s.describe()).collect();
        v.join(", then ")
    }

    fn fetch_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>, StoreError> {
        let mut last_err = None;
        for s in &self.0 {
            match s.fetch_blob(hash) {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

// ---- the admin socket ---------------------------------------------------------------

fn reply(ok: bool, message: String) -> admin::Reply {
    admin::Reply { ok, message }
}

/// Answers a cluster request on the admin socket; data travels as JSON in `message`.
pub async fn serve_admin(req: ClusterRequest) -> admin::Reply {
    let repl = REPLICATION.get().cloned();
    match req {
        ClusterRequest::Status => {
            let status = match &repl {
                Some(r) => r.status(),
                None => SERVED
                    .get()
                    .map(|v| {
                        v.iter()
                            .map(|(name, epoch)| SlotStatus {
                                slot: name.clone(),
                                role: "master".into(),
                                epoch: *epoch,
                                master: "this host".into(),
                                durability: "local".into(),
                                degraded: false,
                                fenced: None,
                                replicas: Vec::new(),
                                last_apply_unix: None,
                                master_connected: false,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            match serde_json::to_string(&status) {
                Ok(s) => reply(true, s),
                Err(e) => reply(false, e.to_string()),
            }
        }
        ClusterRequest::Verify { slot } => {
            let Some(r) = repl else {
                return reply(false, NOT_IN_CLUSTER.into());
            };
            let names = mastered(&r, slot);
            let res = tokio::task::spawn_blocking(move || {
                let mut out: Vec<VerifyReport> = Vec::new();
                for n in names {
                    out.extend(r.verify(&n).map_err(|e| format!("slot {n}: {e}"))?);
                }
                Ok::<_, String>(out)
            })
            .await;
            match res {
                Ok(Ok(reports)) => match serde_json::to_string(&reports) {
                    Ok(s) => reply(true, s),
                    Err(e) => reply(false, e.to_string()),
                },
                Ok(Err(e)) => reply(false, e),
                Err(_) => reply(false, "internal error".into()),
            }
        }
        ClusterRequest::Sync { slot } => {
            let Some(r) = repl else {
                return reply(false, NOT_IN_CLUSTER.into());
            };
            let names = mastered(&r, slot);
            if names.is_empty() {
                return reply(false, "this host masters no such slot".into());
            }
            for n in &names {
                r.request_full_sync(n);
            }
            reply(true, serde_json::to_string(&names).unwrap_or_default())
        }
    }
}

fn mastered(r: &Replication, slot: Option<String>) -> Vec<String> {
    r.status()
        .into_iter()
        .filter(|s| s.role == "master" && slot.as_ref().is_none_or(|x| *x == s.slot))
        .map(|s| s.slot)
        .collect()
}

/// Asks the running server; fails with a plain reason when none runs.
fn ask(dir: &Path, req: ClusterRequest) -> Result<String> {
    match admin::call(dir, &admin::Request::Cluster(req))? {
        Some(r) if r.ok => Ok(r.message),
        Some(r) => bail!("{}", r.message),
        None => bail!(
            "no server is running on {} (start it with `tandem --data {} serve`)",
            dir.display(),
            dir.display()
        ),
    }
}

/// The server's slot statuses (for `tandem status`).
pub fn fetch_status(dir: &Path) -> Result<Vec<SlotStatus>> {
    let m = ask(dir, ClusterRequest::Status)?;
    serde_json::from_str(&m).context("bad status from the server")
}

// ---- the CLI ------------------------------------------------------------------------

pub fn run(dir: &Path, cmd: ClusterCmd) -> Result<i32> {
    let pki = dir.join("cluster");
    match cmd {
        ClusterCmd::Ca(CaCmd::Init) => {
            let (cert, key) = replication::pki::init_ca(&pki)?;
            println!("made the cluster CA:");
            println!(
                "  {}      copy to every host's DIR/cluster/",
                cert.display()
            );
            println!(
                "  {}  keep here only (it signs host certificates)",
                key.display()
            );
            println!(
                "next: tandem --data {} cluster cert issue HOST   (for each host)",
                dir.display()
            );
            Ok(0)
        }
        ClusterCmd::Cert(CertCmd::Issue { host, out }) => {
            let out = out.unwrap_or_else(|| pki.clone());
            let (cert, key) = replication::pki::issue(&pki, &host, &out)?;
            println!("issued a certificate for host {host}:");
            println!("  {}", cert.display());
            println!("  {}   (private: copy to {host} only)", key.display());
            println!("copy both, and ca.pem, to {host}'s DIR/cluster/");
            Ok(0)
        }
        ClusterCmd::Verify { slot } => {
            let m = ask(dir, ClusterRequest::Verify { slot })?;
            let reports: Vec<VerifyReport> =
                serde_json::from_str(&m).context("bad verify report")?;
            let mut clean = true;
            for r in &reports {
                let head = format!(
                    "{} vs {}: {} users, {} mailboxes, {} messages",
                    r.slot, r.replica, r.users, r.mailboxes, r.messages
                );
                if r.clean() {
                    println!("{head}: no difference");
                } else {
                    clean = false;
                    println!("{head}: DIFFERENT");
                    for d in &r.differences {
                        println!("  {d}");
                    }
                    if r.more_differences > 0 {
                        println!("  ... and {} more", r.more_differences);
                    }
                }
            }
            if reports.is_empty() {
                println!("this host masters no replicated slot");
            }
            Ok(if clean { 0 } else { 1 })
        }
        ClusterCmd::Sync { slot } => sync_with_progress(dir, slot),
        ClusterCmd::Check { file } => crate::fo::check(dir, file),
        ClusterCmd::State { json } => print_state(dir, json),
    }
}

/// `tandem cluster state [--json]`: the snapshot as the configured backend holds it. JSON:
/// `{"revision":N,"now_unix_ms":N,"slots":{NAME:{master,epoch,moving_to?}},
/// "hosts":{NAME:{expires_unix_ms,alive}},"positions":{SLOT:{HOST:{epoch,score,at_unix_ms}}}}`.
fn print_state(dir: &Path, as_json: bool) -> Result<i32> {
    let cfg = Config::load(dir)?;
    let state = crate::follow::open_state(dir, &cfg)?.context(
        "no cluster state: set [cluster] state = \"PATH\" in tandem.toml (docs/cluster.md)",
    )?;
    let snap = state.snapshot()?;
    let now = cluster::state::now_unix_ms();
    if as_json {
        let hosts: serde_json::Map<String, serde_json::Value> = snap
            .hosts
            .iter()
            .map(|(h, l)| {
                let v = serde_json::json!({
                    "expires_unix_ms": l.expires_unix_ms,
                    "alive": l.alive(now),
                });
                (h.clone(), v)
            })
            .collect();
        let out = serde_json::json!({
            "revision": snap.revision,
            "now_unix_ms": now,
            "slots": snap.slots,
            "hosts": hosts,
            "positions": snap.positions,
        });
        println!("{out}");
        return Ok(0);
    }
    println!("revision {}", snap.revision);
    for (name, s) in &snap.slots {
        let moving = s
            .moving_to
            .as_ref()
            .map(|t| format!(" moving to {t}"))
            .unwrap_or_default();
        println!("slot {name} master {} epoch {}{moving}", s.master, s.epoch);
    }
    for (name, l) in &snap.hosts {
        let left = l.expires_unix_ms.saturating_sub(now);
        if l.alive(now) {
            println!("host {name} alive ({left} ms left)");
        } else {
            println!("host {name} DOWN");
        }
    }
    for (slot, copies) in &snap.positions {
        for (host, p) in copies {
            println!(
                "position {slot} {host} epoch {} score {} at {}",
                p.epoch, p.score, p.at_unix_ms
            );
        }
    }
    Ok(0)
}

/// Starts a full compare of each slot and draws its progress until every replica of those
/// slots has finished one (or `SYNC_WAIT_MAX` passed).
fn sync_with_progress(dir: &Path, slot: Option<String>) -> Result<i32> {
    const SYNC_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);
    let before = fetch_status(dir)?;
    let names: Vec<String> =
        serde_json::from_str(&ask(dir, ClusterRequest::Sync { slot })?).context("bad reply")?;
    let done_before: HashMap<(String, String), u64> = before
        .iter()
        .flat_map(|s| {
            s.replicas
                .iter()
                .map(move |r| ((s.slot.clone(), r.host.clone()), r.full_syncs))
        })
        .collect();
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_line = String::new();
    loop {
        let now = fetch_status(dir)?;
        let mut pending = Vec::new();
        let (mut done, mut total) = (0u64, 0u64);
        for s in now.iter().filter(|s| names.contains(&s.slot)) {
            for r in &s.replicas {
                let key = (s.slot.clone(), r.host.clone());
                if r.full_syncs > done_before.get(&key).copied().unwrap_or(0) {
                    continue;
                }
                pending.push(format!("{}→{}", s.slot, r.host));
                if let Some((d, t)) = r.progress {
                    done += d;
                    total += t;
                }
                if !r.connected && started.elapsed() > Duration::from_secs(5) {
                    let why = r
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not connected".into());
                    println!();
                    bail!("replica {} of {} is not reachable: {why}", r.host, s.slot);
                }
            }
        }
        if pending.is_empty() {
            if tty {
                print!("\r{:79}\r", "");
            }
            println!(
                "in sync: {} ({:.1}s)",
                names.join(", "),
                started.elapsed().as_secs_f64()
            );
            return Ok(0);
        }
        let line = progress_line(done, total, &pending.join(" "));
        if tty {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if line != last_line && started.elapsed().as_secs().is_multiple_of(5) {
            println!("{line}");
        }
        last_line = line;
        if started.elapsed() > SYNC_WAIT_MAX {
            bail!("gave up waiting after {}s", SYNC_WAIT_MAX.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `[#########...........]  45%  1234/2740 msgs  s1→b`, at most 79 columns.
pub fn progress_line(done: u64, total: u64, what: &str) -> String {
    const WIDTH: usize = 20;
    let frac = if total == 0 {
        0.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((frac * WIDTH as f64).round() as usize).min(WIDTH);
    let mut s = format!(
        "[{}{}] {:3.0}%  {done}/{total} msgs  {what}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0
    );
    if s.chars().count() > 79 {
        s = s.chars().take(78).collect::<String>() + "…";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::progress_line;

    #[test]
    fn progress_line_fits_80_columns() {
        assert_eq!(
            progress_line(5, 10, "s1→b"),
            "[##########..........]  50%  5/10 msgs  s1→b"
        );
        let long = progress_line(1, 3, &"x".repeat(200));
        assert!(long.chars().count() <= 79);
        assert!(progress_line(0, 0, "s1").starts_with("[....."));
    }
}
