//! `tandem srv all|ROLE start|stop|status`: the service on this host, as the seed's
//! `srv all stop` / `srv all start`. This build runs every role in one `tandem serve`
//! process, so `all`, `store` and `frontend` act on that process; `frontend` is refused
//! on a host whose cluster.toml roles do not include it. The running server's pid is in
//! `DIR/serve.pid` (written once it owns the data directory, removed at a clean stop;
//! `status` says "starting" until it answers); stop is SIGTERM, which drains: listeners
//! close, slots flush, replication stops.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SrvRole {
    All,
    Store,
    Frontend,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SrvAction {
    Start,
    Stop,
    Status,
}

#[derive(clap::Args)]
pub struct SrvArgs {
    role: SrvRole,
    action: SrvAction,
    /// Say what would happen, change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

/// How long start waits for the server to answer, and stop for it to exit.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// `srv frontend` on a host without the frontend role would act on the store process by
/// surprise: refuse, saying why.
fn refuse_unless_frontend(dir: &Path) -> Result<()> {
    let cfg = crate::config::Config::load(dir)?;
    let Some(host) = cfg.host.clone() else {
        bail!(
            "this host is not in a cluster (no host = \"...\" in tandem.toml), so it has no \
             frontend role; use `srv all`"
        );
    };
    let (path, _) = crate::cluster::files(dir, &cfg, &host);
    let cluster = cluster::ClusterConfig::load(&path)?;
    match cluster.host(&host) {
        Some(h) if h.has_role(cluster::HostRole::Frontend) => Ok(()),
        Some(h) => bail!(
            "host {host} has roles {:?} in {}, not \"frontend\"; use `srv all` or `srv store`",
            h.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            path.display()
        ),
        None => bail!("{} has no [hosts.{host}]", path.display()),
    }
}

fn pid_path(dir: &Path) -> PathBuf {
    dir.join("serve.pid")
}

/// Called by `serve` once it owns the data directory (before its admin socket answers).
pub fn wrote_pid(dir: &Path) {
    let _ = std::fs::write(pid_path(dir), format!("{}\n", std::process::id()));
}

/// Called by `serve` at a clean stop.
pub fn removed_pid(dir: &Path) {
    let _ = std::fs::remove_file(pid_path(dir));
}

/// The pid of this directory's running server, if any (a stale file names a dead or
/// unrelated process and is ignored).
fn running_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_path(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !alive(pid) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    (text.contains("tandem") && text.contains("serve")).then_some(pid)
}

/// Whether `pid` still runs (a zombie, exited but not yet reaped by its parent, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn answers(dir: &Path) -> bool {
    dir.join("admin.sock").exists() && crate::cluster::fetch_status(dir).is_ok()
}

pub fn run(dir: &Path, a: SrvArgs) -> Result<i32> {
    if matches!(a.role, SrvRole::Frontend) {
        refuse_unless_frontend(dir)?;
    }
    let pid = running_pid(dir);
    match a.action {
        SrvAction::Status => match pid {
            Some(p) if answers(dir) => {
                let st = crate::cluster::fetch_status(dir)?;
                let masters: Vec<&str> = st
                    .iter()
                    .filter(|s| s.role == "master")
                    .map(|s| s.slot.as_str())
                    .collect();
                println!("serve: running (pid {p}), masters: {}", list(&masters));
                Ok(0)
            }
            Some(p) => {
                println!("serve: pid {p} is up but does not answer (starting or stuck)");
                Ok(1)
            }
            None => {
                println!("serve: stopped");
                Ok(1)
            }
        },
        SrvAction::Stop => {
            let Some(p) = pid else {
                println!("nothing to do: serve is not running");
                return Ok(0);
            };
            if a.dry_run {
                println!("would stop serve (pid {p}); dry run: nothing changed");
                return Ok(0);
            }
            let ok = std::process::Command::new("kill")
                .args(["-TERM", &p.to_string()])
                .status()
                .context("cannot run kill")?
                .success();
            if !ok {
                bail!("could not signal pid {p}");
            }
            let start = Instant::now();
            while alive(p) {
                if start.elapsed() > WAIT_MAX {
                    println!(
                        "NOT DONE: pid {p} still running after {}s",
                        WAIT_MAX.as_secs()
                    );
                    return Ok(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!(
                "stopped serve (pid {p}) in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        SrvAction::Start => {
            if let Some(p) = pid {
                println!("nothing to do: serve is running (pid {p})");
                return Ok(0);
            }
            if a.dry_run {
                println!(
                    "would start serve on {}; dry run: nothing changed",
                    dir.display()
                );
                return Ok(0);
            }
            start(dir)
        }
    }
}

fn list(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

fn start(dir: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let log = dir.join("serve.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let exe = std::env::current_exe().context("cannot find this program")?;
    let child = std::process::Command::new(exe)
        .arg("--data")
        .arg(dir)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: it outlives this command and the shell it ran in.
        .process_group(0)
        .spawn()
        .context("cannot start tandem serve")?;
    let start = Instant::now();
    while !answers(dir) {
        if start.elapsed() > WAIT_MAX {
            println!(
                "NOT DONE: serve (pid {}) does not answer; see {}",
                child.id(),
                log.display()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "started serve (pid {}) in {:.1}s; log {}",
        child.id(),
        start.elapsed().as_secs_f64(),
        log.display()
    );
    Ok(0)
}
