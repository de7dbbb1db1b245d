//! `tandem audit` and `tandem check` (DESIGN invariants 2, 3, 4, 8, 9), their side of the
//! admin socket, and the background scrubber.
//!
//! A running server holds every slot's database open (fjall locks it), so both commands
//! go through `DIR/admin.sock` when a server runs — the audit then runs inside the server
//! on a snapshot, with progress streamed back as JSON lines — and run in-process
//! otherwise. A slot the server refused at start is not open: the server audits or checks
//! its directory directly.

use crate::admin;
use crate::config::Config;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use store::directory::Directory;
use store::{
    AuditOptions, AuditProgress, AuditReport, Event, EventLog, LocalBlobDirs, NoRepairSource, Slot,
    SystemClock,
};
use tokio::io::AsyncWriteExt;

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Only this slot (default: every slot).
    #[arg(long, value_name = "SLOT")]
    slot: Option<String>,
    /// Only this account's mailboxes and messages.
    #[arg(long, value_name = "ADDRESS")]
    user: Option<String>,
    /// Rebuild derivable state, move damaged files to quarantine, delete old orphans.
    #[arg(long)]
    repair: bool,
    /// Print the full report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Read at most N megabytes per second (default: as fast as the disk goes).
    #[arg(long, value_name = "N")]
    rate_mb_s: Option<f64>,
    /// Leave unreferenced blobs younger than this alone (default: tandem.toml, 24).
    #[arg(long, value_name = "HOURS")]
    grace_hours: Option<f64>,
    /// Also fetch good copies of damaged blobs from the slot's replicas (cluster.toml),
    /// each verified by the replica before sending and again here.
    #[arg(long)]
    from_replica: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Only this slot (default: every slot).
    #[arg(long, value_name = "SLOT")]
    slot: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Admin-socket request of the integrity commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntegrityRequest {
    pub action: Action,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Audit {
        slot: Option<String>,
        user: Option<String>,
        repair: bool,
        rate_bytes_per_s: Option<u64>,
        grace_secs: Option<u64>,
        #[serde(default)]
        from_replica: bool,
    },
    Check {
        slot: Option<String>,
    },
    Quota(crate::quota::QuotaAction),
}

/// One slot's start-up check result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub slot: String,
    pub ok: bool,
    /// Served by the running server (`None` when no server runs).
    pub served: Option<bool>,
    pub detail: String,
}

/// What the server knows for integrity requests; installed once by `serve`.
pub struct ServerCtx {
    pub dir: PathBuf,
    pub slots: HashMap<String, Slot>,
    pub events: Arc<EventLog>,
    pub directory: Arc<Directory>,
    pub grace_secs: u64,
}

static SERVER: OnceLock<Arc<ServerCtx>> = OnceLock::new();

/// Bytes per MB in `--rate-mb-s` and `scrub_rate_mb_s`.
const MB: f64 = 1_000_000.0;
/// Slowest the scrubber ever reads: a pass over a huge slot must still end.
const SCRUB_RATE_MIN_BYTES_PER_S: u64 = 256 * 1024;
/// Findings printed per slot in the plain summary (all of them are in `--json`).
const SUMMARY_FINDINGS_MAX: usize = 20;

/// Called by `serve` once its slots are open: makes integrity requests answerable, starts
/// the scrubber and the webhook. Fails on a bad `[events] webhook_url`.
pub fn start(
    dir: &Path,
    cfg: &Config,
    events: &Arc<EventLog>,
    directory: &Arc<Directory>,
    slots: &HashMap<String, Slot>,
) -> Result<()> {
    if let Some(url) = &cfg.events.webhook_url {
        let hook = crate::events::Webhook::parse(url)?;
        tokio::spawn(crate::events::run_webhook(hook, events.subscribe()));
    }
    let grace_secs = (cfg.integrity.orphan_grace_hours.max(0.0) * 3600.0) as u64;
    let _ = SERVER.set(Arc::new(ServerCtx {
        dir: dir.to_path_buf(),
        slots: slots.clone(),
        events: events.clone(),
        directory: directory.clone(),
        grace_secs,
    }));
    let period_days = cfg.integrity.scrub_period_days;
    if period_days > 0.0 && period_days.is_finite() {
        let period = Duration::from_secs_f64(period_days * 86_400.0);
        let rate_max = ((cfg.integrity.scrub_rate_mb_s.max(0.01)) * MB) as u64;
        for slot in slots.values() {
            let slot = slot.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name(format!("scrub-{}", slot.name()))
                .spawn(move || scrub_loop(slot, events, period, rate_max, grace_secs))
                .context("cannot start the scrubber")?;
        }
    }
    Ok(())
}

/// Re-verifies a slot once per `period`, reading just fast enough to finish in time
/// (between `SCRUB_RATE_MIN_BYTES_PER_S` and `rate_max`). Problems raise alerts (the
/// audit raises one per problem); each pass ends with a `scrub_done` notice.
fn scrub_loop(slot: Slot, events: Arc<EventLog>, period: Duration, rate_max: u64, grace: u64) {
    // Let start-up traffic settle first.
    std::thread::sleep((period / 10).min(Duration::from_secs(300)));
    let mut last_bytes: Option<u64> = None;
    loop {
        let started = Instant::now();
        let rate = match last_bytes {
            Some(b) => ((b as f64 / period.as_secs_f64()) as u64)
                .clamp(SCRUB_RATE_MIN_BYTES_PER_S.min(rate_max), rate_max),
            None => rate_max,
        };
        let opts = AuditOptions {
            rate_bytes_per_s: Some(rate),
            orphan_grace_secs: grace,
            threads: 1,
            ..AuditOptions::default()
        };
        let r = slot.audit(&opts, &NoRepairSource, &|_| {});
        last_bytes = Some(r.stats.blob_bytes + r.stats.db_bytes);
        let mut ev = Event::info(
            "scrub_done",
            format!(
                "scrubbed {} blobs ({}), {} records: {} problems",
                r.stats.blobs,
                human_bytes(r.stats.blob_bytes),
                r.stats.records,
                r.problems
            ),
        );
        ev.slot = Some(slot.name().to_string());
        events.raise(ev);
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

// ---------------------------------------------------------------------------------
// the CLI side

pub fn run_audit(dir: &Path, a: AuditArgs) -> Result<i32> {
    let cfg = Config::load(dir)?;
    let grace_secs = a
        .grace_hours
        .map(|h| (h.max(0.0) * 3600.0) as u64)
        .unwrap_or((cfg.integrity.orphan_grace_hours.max(0.0) * 3600.0) as u64);
    let rate_bytes_per_s = match a.rate_mb_s {
        Some(r) if r > 0.0 && r.is_finite() => Some((r * MB) as u64),
        Some(_) => bail!("--rate-mb-s must be a positive number"),
        None => None,
    };
    let user = a.user.as_deref().map(store::directory::normalize_address);
    let action = Action::Audit {
        slot: a.slot.clone(),
        user: user.clone(),
        repair: a.repair,
        rate_bytes_per_s,
        grace_secs: Some(grace_secs),
        from_replica: a.from_replica,
    };
    let mut progress = ProgressBar::new();
    let req = admin::Request::Integrity(IntegrityRequest { action });
    let mut data = None;
    let reply = admin::call_stream(dir, &req, |v| {
        if let Some(p) = v.get("progress") {
            if let Ok(p) = serde_json::from_value::<ProgressLine>(p.clone()) {
                progress.show(&p);
            }
        } else if let Some(d) = v.get("data") {
            data = Some(d.clone());
        }
    })?;
    let reports: Vec<AuditReport> = match reply {
        Some(r) if !r.ok => bail!("{}", r.message),
        Some(_) => {
            let d = data.context("the server sent no audit report")?;
            serde_json::from_value::<Vec<AuditReport>>(d)
                .context("bad audit report from the server")?
        }
        None => {
            let plan = plan_audit(dir, a.slot.as_deref(), user.as_deref())?;
            let events = Arc::new(EventLog::new(
                &dir.join("events.jsonl"),
                Arc::new(SystemClock),
            ));
            let opts = AuditOptions {
                user: user.clone(),
                repair: a.repair,
                rate_bytes_per_s,
                orphan_grace_secs: grace_secs,
                ..AuditOptions::default()
            };
            let mut out = Vec::new();
            for name in plan {
                let local = Box::new(local_source(dir, &name)?);
                let source = crate::cluster::repair_sources(dir, &name, local, a.from_replica)?;
                let slot_dir = dir.join("slots").join(&name);
                let p = std::sync::Mutex::new(&mut progress);
                out.push(store::audit::audit_dir(
                    &slot_dir,
                    &name,
                    events.clone(),
                    Arc::new(SystemClock),
                    &opts,
                    &source,
                    &|ap: &AuditProgress| {
                        if let Ok(mut p) = p.lock() {
                            p.show(&ProgressLine::from(ap));
                        }
                    },
                ));
            }
            out
        }
    };
    progress.clear();
    let exit = reports.iter().map(|r| r.exit_code()).max().unwrap_or(0);
    if a.json {
        let v = serde_json::json!({ "exit": exit, "slots": reports });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", summary(&reports, a.repair));
    }
    Ok(exit)
}

/// Which slots an audit covers.
fn plan_audit(dir: &Path, slot: Option<&str>, user: Option<&str>) -> Result<Vec<String>> {
    let names = crate::user::slot_names(dir)?;
    if names.is_empty() {
        bail!(
            "no slots in {}: start the server once to create one",
            dir.display()
        );
    }
    let want = match (slot, user) {
        (_, Some(u)) => {
            let accounts = Directory::new(dir).load()?;
            let acct = accounts
                .get(u)
                .with_context(|| format!("{u} is not an account here"))?;
            if slot.is_some_and(|s| s != acct.slot) {
                bail!(
                    "{u} lives in slot {}, not {}",
                    acct.slot,
                    slot.unwrap_or("")
                );
            }
            vec![acct.slot.clone()]
        }
        (Some(s), None) => vec![s.to_string()],
        (None, None) => names.clone(),
    };
    for w in &want {
        if !names.contains(w) {
            bail!(
                "no slot {w} in {} (slots: {})",
                dir.display(),
                names.join(", ")
            );
        }
    }
    Ok(want)
}

/// Blobs of the other slots on this host: the same message may be stored there too.
fn local_source(dir: &Path, except: &str) -> Result<LocalBlobDirs> {
    Ok(LocalBlobDirs {
        dirs: crate::user::slot_names(dir)?
            .into_iter()
            .filter(|n| n != except)
            .map(|n| dir.join("slots").join(n).join("blobs"))
            .collect(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProgressLine {
    slot: String,
    phase: String,
    bytes_done: u64,
    bytes_total: u64,
    records_done: u64,
    records_total: u64,
    elapsed_ms: u64,
}

impl From<&AuditProgress> for ProgressLine {
    fn from(p: &AuditProgress) -> Self {
        ProgressLine {
            slot: p.slot.clone(),
            phase: p.phase.to_string(),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            records_done: p.records_done,
            records_total: p.records_total,
            elapsed_ms: p.elapsed_ms,
        }
    }
}

/// Progress on standard error: a redrawn bar on a terminal, a plain line per phase and
/// every 10 s otherwise (logs, pipes).
struct ProgressBar {
    tty: bool,
    drawn: bool,
    last_plain: Option<(String, Instant)>,
}

impl ProgressBar {
    fn new() -> ProgressBar {
        ProgressBar {
            tty: std::io::stderr().is_terminal(),
            drawn: false,
            last_plain: None,
        }
    }

    fn show(&mut self, p: &ProgressLine) {
        let secs = (p.elapsed_ms as f64 / 1000.0).max(0.001);
        let mb_s = p.bytes_done as f64 / MB / secs;
        let rec_s = p.records_done as f64 / secs;
        let eta = if p.phase == "blobs" && p.bytes_done > 0 && p.bytes_total > p.bytes_done {
            let left = (p.bytes_total - p.bytes_done) as f64 / (p.bytes_done as f64 / secs);
            format!(" ETA {}", clock(left as u64))
        } else {
            String::new()
        };
        let pct = (p.bytes_done * 100)
            .checked_div(p.bytes_total)
            .map(|n| format!(" {n:3}%"))
            .unwrap_or_default();
        let line = format!(
            "{} {:<8}{pct} {}/{} {mb_s:.1} MB/s {rec_s:.0} rec/s{eta}",
            p.slot,
            short_phase(&p.phase),
            human_bytes(p.bytes_done),
            human_bytes(p.bytes_total),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", cut(&line, 79));
            let _ = err.flush();
            self.drawn = true;
        } else {
            // Quiet for quick audits; then a line per phase and every 10 s.
            let due = p.elapsed_ms >= 2000
                && p.phase != "done"
                && match &self.last_plain {
                    Some((phase, t)) => *phase != p.phase || t.elapsed() >= Duration::from_secs(10),
                    None => true,
                };
            if due {
                let _ = writeln!(err, "{line}");
                self.last_plain = Some((p.phase.clone(), Instant::now()));
            }
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

fn short_phase(p: &str) -> &str {
    match p {
        "database files" => "db files",
        other => other,
    }
}

fn clock(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The plain-words summary: short lines, most important first, fits a phone screen.
pub fn summary(reports: &[AuditReport], repair: bool) -> String {
    let mut s = String::new();
    for r in reports {
        let head = if r.problems == 0 {
            "clean".to_string()
        } else if r.unrepaired == 0 {
            format!("{} problems, all repaired", r.problems)
        } else if r.repaired > 0 {
            format!(
                "{} problems, {} repaired, {} LEFT",
                r.problems, r.repaired, r.unrepaired
            )
        } else {
            format!("{} problems", r.problems)
        };
        s.push_str(&format!("slot {}: {head}\n", r.slot));
        let st = &r.stats;
        s.push_str(&format!(
            "  checked {} blobs ({}), {} records, {} db files in {:.1} s\n",
            st.blobs,
            human_bytes(st.blob_bytes),
            st.records,
            st.db_files,
            st.elapsed_ms as f64 / 1000.0
        ));
        let mut shown = 0;
        for f in r.findings.iter().filter(|f| f.problem) {
            if shown == SUMMARY_FINDINGS_MAX {
                break;
            }
            shown += 1;
            let tag = if f.repaired { "FIXED" } else { "LEFT " };
            s.push_str(&format!("  {tag} {}\n", f.kind.words()));
            let mut at = Vec::new();
            if let Some(u) = &f.user {
                at.push(u.clone());
            }
            if let Some(m) = &f.mailbox {
                at.push(m.clone());
            }
            if let Some(u) = f.uid {
                at.push(format!("uid {u}"));
            }
            if !at.is_empty() {
                s.push_str(&format!("        {}\n", at.join(" ")));
            }
            s.push_str(&format!("        {}\n", f.detail));
            if !f.action.is_empty() {
                s.push_str(&format!("        -> {}\n", f.action));
            }
        }
        let problems_listed = r.findings.iter().filter(|f| f.problem).count();
        let more = problems_listed.saturating_sub(shown) as u64 + r.findings_not_listed;
        if more > 0 {
            s.push_str(&format!("  ... and {more} more (--json lists them)\n"));
        }
        if r.garbage > 0 {
            let collected = r
                .findings
                .iter()
                .filter(|f| !f.problem && f.repaired)
                .count();
            if repair {
                s.push_str(&format!(
                    "  garbage: {} unused files, {collected} removed\n",
                    r.garbage
                ));
            } else {
                s.push_str(&format!(
                    "  garbage: {} unused files (--repair removes them)\n",
                    r.garbage
                ));
            }
        }
        if r.stats.orphans_recent > 0 {
            s.push_str(&format!(
                "  {} new unreferenced blobs left alone (grace period)\n",
                r.stats.orphans_recent
            ));
        }
        if r.cancelled {
            s.push_str("  STOPPED before the end: the rest is unchecked\n");
        }
    }
    let exit = reports.iter().map(|r| r.exit_code()).max().unwrap_or(0);
    let left: u64 = reports.iter().map(|r| r.unrepaired).sum();
    s.push_str(&match exit {
        0 => "result: clean (exit 0)\n".to_string(),
        1 => "result: problems found, all repaired (exit 1)\n".to_string(),
        _ if !repair && left > 0 => {
            format!("result: {left} problems (exit 2); --repair fixes what can be derived\n")
        }
        _ => format!("result: {left} problems LEFT (exit 2); they need a replica or backup copy\n"),
    });
    s
}

pub fn run_check(dir: &Path, a: CheckArgs) -> Result<i32> {
    let action = Action::Check {
        slot: a.slot.clone(),
    };
    let req = admin::Request::Integrity(IntegrityRequest { action });
    let mut data = None;
    let reply = admin::call_stream(dir, &req, |v| {
        if let Some(d) = v.get("data") {
            data = Some(d.clone());
        }
    })?;
    let results: Vec<CheckResult> = match reply {
        Some(r) if !r.ok => bail!("{}", r.message),
        Some(_) => serde_json::from_value(data.context("the server sent no check result")?)
            .context("bad check result from the server")?,
        None => {
            let names = plan_audit(dir, a.slot.as_deref(), None)?;
            let events = Arc::new(EventLog::new(
                &dir.join("events.jsonl"),
                Arc::new(SystemClock),
            ));
            names
                .into_iter()
                .map(|n| check_dir(dir, &n, &events, None))
                .collect()
        }
    };
    let bad = results.iter().filter(|r| !r.ok).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let serving = match r.served {
                Some(true) => " (serving)",
                Some(false) => " (NOT served)",
                None => "",
            };
            if r.ok {
                println!("slot {}: ok{serving}", r.slot);
            } else {
                println!("slot {}: FAILED{serving}\n  {}", r.slot, r.detail);
            }
            if r.ok && r.served == Some(false) {
                println!("  it passes now: restart tandem to serve it");
            }
        }
        if bad > 0 {
            println!("{bad} slot(s) failed; run `tandem audit --slot S` for the details");
        }
    }
    Ok(if bad > 0 { 2 } else { 0 })
}

/// Runs the start-up check on a slot directory that nobody holds open.
fn check_dir(dir: &Path, name: &str, events: &Arc<EventLog>, served: Option<bool>) -> CheckResult {
    let slot_dir = dir.join("slots").join(name);
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Slot::open(&slot_dir, events.clone(), Arc::new(SystemClock))
    }));
    let (ok, detail) = match opened {
        Ok(Ok(_)) => (true, "passes its start-up check".to_string()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (
            false,
            "the database engine panicked opening it (damaged files)".to_string(),
        ),
    };
    CheckResult {
        slot: name.to_string(),
        ok,
        served,
        detail,
    }
}

/// `tandem debug-create-slot NAME` (a test hook until slots are managed by the cluster).
pub fn create_slot(dir: &Path, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("slot names are 1 to 64 of a-z, 0-9 and -");
    }
    let events = Arc::new(EventLog::new(
        &dir.join("events.jsonl"),
        Arc::new(SystemClock),
    ));
    Slot::create(
        &dir.join("slots").join(name),
        name,
        "localhost",
        events,
        Arc::new(SystemClock),
    )
    .with_context(|| format!("cannot create slot {name}"))?;
    println!("created slot {name}; it is served from the next start");
    Ok(())
}

// ---------------------------------------------------------------------------------
// the server side

/// Answers one integrity request on the admin socket: progress and data lines are
/// written here, the returned `Reply` is written by the caller as the last line.
pub async fn serve_admin<W: tokio::io::AsyncWrite + Unpin>(
    req: IntegrityRequest,
    w: &mut W,
) -> admin::Reply {
    let Some(ctx) = SERVER.get().cloned() else {
        return fail("the server is still starting; try again in a moment");
    };
    match req.action {
        Action::Audit {
            slot,
            user,
            repair,
            rate_bytes_per_s,
            grace_secs,
            from_replica,
        } => {
            let plan = match plan_audit(&ctx.dir, slot.as_deref(), user.as_deref()) {
                Ok(p) => p,
                Err(e) => return fail(&format!("{e:#}")),
            };
            // --from-replica that cannot work is refused before anything is read.
            for name in plan.iter().filter(|_| from_replica) {
                let none = Box::new(store::NoRepairSource);
                if let Err(e) = crate::cluster::repair_sources(&ctx.dir, name, none, true) {
                    return fail(&format!("{e:#}"));
                }
            }
            let opts = AuditOptions {
                user,
                repair,
                rate_bytes_per_s,
                orphan_grace_secs: grace_secs.unwrap_or(ctx.grace_secs),
                cancel: Some(Arc::new(AtomicBool::new(false))),
                ..AuditOptions::default()
            };
            let cancel = opts.cancel.clone();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
            let c2 = ctx.clone();
            let job = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for name in plan {
                    let progress = |p: &AuditProgress| {
                        let line = serde_json::json!({ "progress": ProgressLine::from(p) });
                        if let Ok(mut b) = serde_json::to_vec(&line) {
                            b.push(b'\n');
                            // A slow reader loses progress lines, never the audit.
                            let _ = tx.try_send(b);
                        }
                    };
                    let local = match local_source(&c2.dir, &name) {
                        Ok(s) => s,
                        Err(_) => LocalBlobDirs { dirs: Vec::new() },
                    };
                    let source = crate::cluster::repair_sources(
                        &c2.dir,
                        &name,
                        Box::new(local),
                        from_replica,
                    )
                    .unwrap_or_else(|_| crate::cluster::Sources::none());
                    let report = match c2.slots.get(&name) {
                        Some(s) => s.audit(&opts, &source, &progress),
                        // Refused at start, so not open: audit its files directly.
                        None => store::audit::audit_dir(
                            &c2.dir.join("slots").join(&name),
                            &name,
                            c2.events.clone(),
                            Arc::new(SystemClock),
                            &opts,
                            &source,
                            &progress,
                        ),
                    };
                    out.push(report);
                }
                out
            });
            while let Some(line) = rx.recv().await {
                if w.write_all(&line).await.is_err()
                    && let Some(c) = &cancel
                {
                    // The operator went away (Ctrl-C): stop reading disks for nobody.
                    c.store(true, Ordering::Relaxed);
                }
            }
            let reports = match job.await {
                Ok(r) => r,
                Err(_) => return fail("the audit failed inside the server"),
            };
            let exit = reports.iter().map(|r| r.exit_code()).max().unwrap_or(0);
            let line = serde_json::json!({ "data": reports });
            if let Ok(mut b) = serde_json::to_vec(&line) {
                b.push(b'\n');
                let _ = w.write_all(&b).await;
            }
            admin::Reply {
                ok: true,
                message: format!("audit finished (exit {exit})"),
            }
        }
        Action::Check { slot } => {
            let names = match plan_audit(&ctx.dir, slot.as_deref(), None) {
                Ok(p) => p,
                Err(e) => return fail(&format!("{e:#}")),
            };
            let c2 = ctx.clone();
            let results = tokio::task::spawn_blocking(move || {
                names
                    .iter()
                    .map(|n| match c2.slots.get(n) {
                        Some(s) => {
                            let r = catch_unwind(AssertUnwindSafe(|| s.check()));
                            let (ok, detail) = match r {
                                Ok(Ok(())) => (true, "passes its start-up check".to_string()),
                                Ok(Err(e)) => (false, e.to_string()),
                                Err(_) => (false, "the database engine panicked".to_string()),
                            };
                            CheckResult {
                                slot: n.clone(),
                                ok,
                                served: Some(true),
                                detail,
                            }
                        }
                        None => check_dir(&c2.dir, n, &c2.events, Some(false)),
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let line = serde_json::json!({ "data": results });
            if let Ok(mut b) = serde_json::to_vec(&line) {
                b.push(b'\n');
                let _ = w.write_all(&b).await;
            }
            admin::Reply {
                ok: true,
                message: "checked".into(),
            }
        }
        Action::Quota(q) => {
            let c2 = ctx.clone();
            let res = tokio::task::spawn_blocking(move || {
                crate::quota::apply(&c2.slots, &c2.directory, &q)
            })
            .await;
            match res {
                Ok(Ok((text, data))) => {
                    let line = serde_json::json!({ "data": data });
                    if let Ok(mut b) = serde_json::to_vec(&line) {
                        b.push(b'\n');
                        let _ = w.write_all(&b).await;
                    }
                    admin::Reply {
                        ok: true,
                        message: text,
                    }
                }
                Ok(Err(e)) => fail(&e),
                Err(_) => fail("the quota command failed inside the server"),
            }
        }
    }
}

fn fail(message: &str) -> admin::Reply {
    admin::Reply {
        ok: false,
        message: message.to_string(),
    }
}
