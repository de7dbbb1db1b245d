//! `tandem fo` (alias it: `alias fo='tandem --data /srv/tandem fo'`): move slot masters,
//! safe half-asleep (invariant 9). The plan comes from `cluster::fo::plan` (pure), so
//! `--dry-run` shows exactly what a run does, and a second run finds nothing to do. The
//! work happens through the cluster state: a clean move is *asked of* the old master
//! (which stops writes, drains, promotes), a dead master's slot is promoted by
//! compare-epoch once its lease has run out. Also `tandem cluster check`.

use anyhow::{Context, Result, bail};
use cluster::fo::{Action, Mode, plan};
use cluster::state::{ClusterState, StateError, now_unix_ms};
use cluster::{ClusterConfig, Severity};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Event, EventLog};

#[derive(clap::Args)]
pub struct FoArgs {
    /// Switch this slot over to another copy (clean: stop writes, drain, promote).
    #[arg(conflicts_with_all = ["kill", "all", "home"])]
    slot: Option<String>,
    /// With SLOT: the host to promote (default: the first live replica).
    #[arg(long, requires = "slot", value_name = "HOST")]
    to: Option<String>,
    /// HOST is dead: promote a live replica of every slot it mastered (tries a clean
    /// handover first, for a few seconds, then carries on).
    #[arg(short = 'K', value_name = "HOST", conflicts_with_all = ["all", "home"])]
    kill: Option<String>,
    /// Move every slot mastered on HOST (default: this host) elsewhere.
    #[arg(short = 'a', value_name = "HOST", num_args = 0..=1, default_missing_value = "", conflicts_with = "home")]
    all: Option<String>,
    /// Move back every slot whose home is HOST (default: this host).
    #[arg(short = 'm', value_name = "HOST", num_args = 0..=1, default_missing_value = "")]
    home: Option<String>,
    /// Print the plan and change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Give up waiting for each move after this many seconds.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    wait_secs: u64,
}

/// How long `-K` gives a possibly-alive master to hand over cleanly.
const CLEAN_TRY: Duration = Duration::from_secs(2);
/// Lines of actions printed before summarising (the whole output fits 80×10).
const LINES_MAX: usize = 7;

struct Ctx {
    cfg: ClusterConfig,
    state: Arc<dyn ClusterState>,
    events: EventLog,
}

fn open(dir: &Path) -> Result<(Ctx, Option<String>)> {
    let cfg = crate::config::Config::load(dir)?;
    let path = dir.join(
        cfg.cluster
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("cluster.toml")),
    );
    let cluster = ClusterConfig::load(&path)?;
    let state = crate::follow::open_state(dir, &cfg)?.context(
        "no cluster state: set [cluster] state = \"PATH\" in tandem.toml (docs/cluster.md)",
    )?;
    let events = EventLog::new(&dir.join("events.jsonl"), Arc::new(store::SystemClock));
    Ok((
        Ctx {
            cfg: cluster,
            state,
            events,
        },
        cfg.host,
    ))
}

pub fn run(dir: &Path, a: FoArgs) -> Result<i32> {
    let (ctx, me) = open(dir)?;
    let this = |h: String| -> Result<String> {
        if !h.is_empty() {
            return Ok(h);
        }
        me.clone()
            .context("name the host (this data directory has no host = \"...\")")
    };
    let mode = if let Some(slot) = a.slot {
        Mode::Slot { slot, to: a.to }
    } else if let Some(host) = a.kill {
        Mode::Kill { host }
    } else if let Some(h) = a.all {
        Mode::All { host: this(h)? }
    } else if let Some(h) = a.home {
        Mode::Home { host: this(h)? }
    } else {
        bail!("say what to move: fo SLOT [--to HOST] | fo -K HOST | fo -a [HOST] | fo -m [HOST]");
    };
    if let Mode::Kill { host } | Mode::All { host } | Mode::Home { host } = &mode
        && ctx.cfg.host(host).is_none()
    {
        bail!("no host {host:?} in cluster.toml");
    }
    let snap = ctx.state.snapshot()?;
    let actions = plan(&ctx.cfg, &snap, &mode, now_unix_ms());
    if actions.is_empty() || actions.iter().all(|x| matches!(x, Action::Nothing { .. })) {
        let what = match &mode {
            Mode::Kill { host } | Mode::All { host } => format!("{host} masters no slot"),
            Mode::Home { host } => format!("every slot whose home is {host} is mastered there"),
            Mode::Slot { .. } => actions.first().map(Action::describe).unwrap_or_default(),
        };
        println!("nothing to do: {what}");
        return Ok(0);
    }
    if a.dry_run {
        print_lines(actions.iter().map(|x| format!("would {}", x.describe())));
        println!("dry run: nothing changed");
        return Ok(
            if actions.iter().any(|x| matches!(x, Action::Stuck { .. })) {
                1
            } else {
                0
            },
        );
    }
    let wait = Duration::from_secs(a.wait_secs.clamp(1, 3600));
    let dead = if let Mode::Kill { host } = &mode {
        Some(host.clone())
    } else {
        None
    };
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut undone = Vec::new();
    for x in &actions {
        let r = apply(&ctx, x, &snap, dead.as_deref(), wait);
        let (ok, line) = match r {
            Ok(l) => (true, l),
            Err(e) => (false, format!("{}: NOT DONE, {e:#}", x.slot())),
        };
        let mut ev = if ok {
            Event::info("failover", line.clone())
        } else {
            Event::alert("failover_undone", line.clone())
        };
        ev.slot = Some(x.slot().to_string());
        ctx.events.raise(ev);
        if !ok {
            undone.push(x.slot().to_string());
        }
        lines.push(line);
    }
    print_lines(lines.into_iter());
    if undone.is_empty() {
        println!("done in {:.1}s", started.elapsed().as_secs_f64());
        Ok(0)
    } else {
        println!(
            "LEFT UNDONE: {} (see above; re-run to retry)",
            undone.join(" ")
        );
        Ok(1)
    }
}

fn print_lines(lines: impl Iterator<Item = String>) {
    let v: Vec<String> = lines.collect();
    for l in v.iter().take(LINES_MAX) {
        println!("{}", cut(l));
    }
    if v.len() > LINES_MAX {
        println!("... and {} more (tandem events)", v.len() - LINES_MAX);
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        s.chars().take(79).collect::<String>() + "…"
    }
}

/// Waits until `slot` is mastered by `to` at an epoch above `epoch`.
fn wait_master(
    st: &dyn ClusterState,
    slot: &str,
    epoch: u64,
    to: &str,
    wait: Duration,
) -> Result<bool> {
    let start = Instant::now();
    let mut seen = 0;
    loop {
        let snap = st.watch(seen, Duration::from_millis(200))?;
        seen = snap.revision;
        if let Some(s) = snap.slots.get(slot)
            && s.epoch > epoch
        {
            return Ok(s.master == to);
        }
        if start.elapsed() >= wait {
            return Ok(false);
        }
    }
}

/// How long `fo -K` waits for the live copies to tell how current they are (they do at
/// their next lease renewal, every third of the lease).
const POSITIONS_WAIT: Duration = Duration::from_secs(4);

fn apply(
    ctx: &Ctx,
    x: &Action,
    snap: &cluster::state::Snapshot,
    dead: Option<&str>,
    wait: Duration,
) -> Result<String> {
    let st = ctx.state.as_ref();
    match x {
        Action::Nothing { .. } => Ok(x.describe()),
        Action::Stuck { why, .. } => bail!("{why}"),
        Action::Move {
            slot,
            from,
            to,
            epoch,
        } => {
            st.request_move(slot, *epoch, to)?;
            if wait_master(st, slot, *epoch, to, wait)? {
                Ok(format!(
                    "{slot}: moved {from} -> {to} (epoch {})",
                    epoch + 1
                ))
            } else {
                bail!(
                    "{from} did not hand over within {}s; is it running? (fo -K {from} if dead)",
                    wait.as_secs()
                )
            }
        }
        Action::Promote {
            slot,
            from,
            to,
            epoch,
            auto,
        } => {
            let lease = snap.hosts.get(from).map(|l| l.expires_unix_ms).unwrap_or(0);
            if lease > now_unix_ms() && dead.is_some() {
                // Maybe it is alive after all: a clean handover loses nothing.
                st.request_move(slot, *epoch, to)?;
                if wait_master(st, slot, *epoch, to, CLEAN_TRY)? {
                    return Ok(format!("{slot}: {from} handed over to {to} cleanly"));
                }
            }
            // The old master fences itself before its lease ends; promoting after that
            // instant can never make two masters acknowledge writes.
            let now = now_unix_ms();
            let expires = ctx
                .state
                .snapshot()?
                .hosts
                .get(from)
                .map(|l| l.expires_unix_ms)
                .unwrap_or(0)
                .max(lease);
            if expires > now {
                std::thread::sleep(Duration::from_millis(expires - now + 50));
            }
            let (to, why) = if *auto {
                pick_most_current(ctx, slot, from, to, expires, wait)?
            } else {
                (to.clone(), String::new())
            };
            let to = &to;
            match st.promote(slot, *epoch, to) {
                Ok(s) => Ok(format!(
                    "{slot}: {from} dead, {to} promoted (epoch {}){why}",
                    s.epoch
                )),
                Err(StateError::EpochMismatch { current, .. }) if current.master == *to => {
                    Ok(format!("{slot}: {to} masters it (epoch {})", current.epoch))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Once the dead master's lease has run out, every live copy publishes how current it is
/// (at its next lease renewal); waits for them (at most `POSITIONS_WAIT`) and returns the
/// most current, with a note for the output line. Falls back to `planned` (config order)
/// when no copy published in time.
fn pick_most_current(
    ctx: &Ctx,
    slot: &str,
    from: &str,
    planned: &str,
    dead_since_ms: u64,
    wait: Duration,
) -> Result<(String, String)> {
    let start = Instant::now();
    let limit = wait.min(POSITIONS_WAIT);
    let mut seen = 0;
    loop {
        let snap = ctx.state.watch(seen, Duration::from_millis(100))?;
        seen = snap.revision;
        let (best, all) =
            cluster::fo::most_current(&ctx.cfg, &snap, slot, from, dead_since_ms, now_unix_ms());
        if all || start.elapsed() >= limit {
            return Ok(match best {
                Some(b) => {
                    let score = snap.positions[slot][&b].score;
                    let note = if all { "" } else { ", not every copy answered" };
                    (b, format!(", most current: {score} changes{note}"))
                }
                None => (
                    planned.to_string(),
                    ", no copy told how current it is".to_string(),
                ),
            });
        }
    }
}

/// `tandem cluster check [FILE]`: every problem with its line and fix. Exit 0 clean,
/// 1 problems.
pub fn check(dir: &Path, file: Option<PathBuf>) -> Result<i32> {
    let path = match file {
        Some(f) => f,
        None => {
            let cfg = crate::config::Config::load(dir)?;
            dir.join(
                cfg.cluster
                    .config
                    .unwrap_or_else(|| PathBuf::from("cluster.toml")),
            )
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (cfg, problems) = cluster::check(&text);
    for p in &problems {
        let tag = match p.severity {
            Severity::Error => "error",
            Severity::Unsafe => "unsafe",
        };
        println!(
            "{}:{} {tag}: {}",
            path.display(),
            p.line.map(|l| l.to_string()).unwrap_or_default(),
            p.what
        );
        println!("    fix: {}", p.fix);
    }
    match cfg {
        Some(c) if problems.is_empty() => {
            println!(
                "{}: ok: {} hosts in {} datacentres, {} slots, {} frontends",
                path.display(),
                c.hosts.len(),
                c.hosts
                    .values()
                    .map(|h| &h.datacentre)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                c.slots.len(),
                c.frontends().len()
            );
            Ok(0)
        }
        _ => Ok(1),
    }
}
