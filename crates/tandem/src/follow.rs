//! A host following the cluster state (`[cluster] state = ...` in tandem.toml): it serves
//! what the state says (not what cluster.toml's `home` says), holds a lease, fences itself
//! when it cannot renew it, carries out clean switchovers asked of it, and restarts its
//! roles when the state moves a master to or from it.
//!
//! Restarting roles is a re-exec of this process (same pid, same arguments): every client
//! connection of a demoted master is closed (clients reconnect and are routed anew), every
//! slot copy is reopened in its new role, and replication restarts with the new epochs.
//! Acknowledged writes are fsynced, so nothing acknowledged is lost by it; it costs the
//! host's other slots a sub-second blip, which is the price of keeping one code path.

use anyhow::{Context, Result};
use cluster::ClusterConfig;
use cluster::state::{AccountEntry, ClusterState, CopyPosition, LeaseGuard, duties, effective};
use replication::Replication;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::directory::{Account, Directory};
use store::{Event, EventLog, Slot};

/// Default lease; a master stops writing `LEASE_MARGIN` before it runs out.
pub const LEASE_TTL_MS_DEFAULT: u64 = 3000;
const LEASE_MARGIN: Duration = Duration::from_millis(500);
/// How long a switching master waits for the target to confirm everything it holds.
const DRAIN_MAX: Duration = Duration::from_secs(5);

pub struct Following {
    pub state: Arc<dyn ClusterState>,
    pub host: String,
    pub config: ClusterConfig,
    pub ttl_ms: u64,
    /// This host's data directory (its `directory` file mirrors the state's accounts).
    pub dir: std::path::PathBuf,
    /// The copies this host replicates (it publishes their positions when their master
    /// stops renewing its lease, for `fo -K`).
    pub replicas: Vec<Slot>,
}

/// Opens the state, records every slot not there yet at its home, and returns the config
/// as the state makes it true now. `None` when no state is configured.
pub fn effective_config(
    dir: &Path,
    cfg: &crate::config::Config,
    host: &str,
    cluster: &ClusterConfig,
) -> Result<Option<(ClusterConfig, Following)>> {
    let Some(p) = &cfg.cluster.state else {
        return Ok(None);
    };
    let state = cluster::state::open(p, dir)?;
    for s in cluster.slots.values() {
        state.init_slot(&s.name, &s.master, s.epoch)?;
    }
    seed_accounts(state.as_ref(), dir)?;
    mirror_accounts(state.as_ref(), dir)?;
    let snap = state.snapshot()?;
    let eff = effective(cluster, &snap);
    let ttl_ms = cfg
        .cluster
        .lease_ttl_ms
        .unwrap_or(LEASE_TTL_MS_DEFAULT)
        .clamp(1000, cluster::state::LEASE_TTL_MS_MAX);
    Ok(Some((
        eff,
        Following {
            state,
            host: host.to_string(),
            config: cluster.clone(),
            ttl_ms,
            dir: dir.to_path_buf(),
            replicas: Vec::new(),
        },
    )))
}

/// The first host to follow a state whose account directory is empty brings its own
/// accounts in (a single machine growing into a cluster). Never later: a host that was
/// down while an account was deleted must not bring it back.
fn seed_accounts(state: &dyn ClusterState, dir: &Path) -> Result<()> {
    let local = Directory::new(dir).load()?;
    if local.accounts.is_empty() || !state.accounts()?.1.is_empty() {
        return Ok(());
    }
    for a in &local.accounts {
        state.put_account(
            &a.address,
            &AccountEntry {
                password: a.password.clone(),
                slot: a.slot.clone(),
            },
        )?;
    }
    eprintln!(
        "cluster state: brought this host's {} accounts into the empty account directory",
        local.accounts.len()
    );
    Ok(())
}

/// Makes this host's `directory` file a copy of the state's account directory (the file
/// is what IMAP, POP3 and SMTP authenticate against, so a host keeps serving logins from
/// its last copy while the state is unreachable). Returns the accounts' revision.
pub fn mirror_accounts(state: &dyn ClusterState, dir: &Path) -> Result<u64> {
    let rev = state.accounts_revision()?;
    let (_, all) = state.accounts()?;
    let want: Vec<Account> = all
        .into_iter()
        .map(|(address, e)| Account {
            address,
            password: e.password,
            slot: e.slot,
        })
        .collect();
    let d = Directory::new(dir);
    let mut have = d.load()?.accounts.clone();
    have.sort_by(|a, b| a.address.cmp(&b.address));
    if have != want {
        d.update(|a| {
            a.accounts = want;
            Ok(())
        })
        .context("cannot write this host's copy of the account directory")?;
    }
    Ok(rev)
}

/// Publishes how current this host's copy of each slot is whose master no longer holds a
/// lease, so `fo -K` can promote the most current live copy.
fn publish_positions(f: &Following, snap: &cluster::state::Snapshot, events: &EventLog) {
    let now = cluster::state::now_unix_ms();
    for slot in &f.replicas {
        let Some(st) = snap.slots.get(slot.name()) else {
            continue;
        };
        if st.master == f.host || snap.alive(&st.master, now) {
            continue;
        }
        let pos = slot.view().modseq_total().map(|score| CopyPosition {
            epoch: slot.epoch().0,
            score,
            at_unix_ms: cluster::state::now_unix_ms(),
        });
        match pos {
            Ok(p) => {
                if let Err(e) = f.state.publish_position(slot.name(), &f.host, &p) {
                    event(
                        events,
                        true,
                        "position_unpublished",
                        slot.name(),
                        e.to_string(),
                    );
                }
            }
            Err(e) => event(
                events,
                true,
                "position_unreadable",
                slot.name(),
                e.to_string(),
            ),
        }
    }
}

/// Takes the first lease (so masters may write), gates replication on it, and starts the
/// follower thread.
pub fn begin(f: Following, repl: Arc<Replication>, events: Arc<EventLog>) -> Result<()> {
    let ttl = Duration::from_millis(f.ttl_ms);
    let guard = Arc::new(LeaseGuard::new(ttl, LEASE_MARGIN));
    let t = Instant::now();
    f.state
        .renew_lease(&f.host, f.ttl_ms)
        .context("cannot take this host's lease in the cluster state")?;
    let snap = f.state.snapshot()?;
    let started = duties(&effective(&f.config, &snap), &f.host);
    guard.renewed(t);
    repl.set_lease(guard.clone());
    std::thread::Builder::new()
        .name("cluster-follow".into())
        .spawn(move || follow(f, repl, guard, events, started, snap.revision))
        .context("cannot start the cluster follower")?;
    Ok(())
}

fn event(events: &EventLog, level_alert: bool, kind: &str, slot: &str, detail: String) {
    let mut ev = if level_alert {
        Event::alert(kind, detail)
    } else {
        Event::info(kind, detail)
    };
    ev.slot = Some(slot.to_string());
    events.raise(ev);
}

fn follow(
    f: Following,
    repl: Arc<Replication>,
    guard: Arc<LeaseGuard>,
    events: Arc<EventLog>,
    started: Vec<(String, String, u64)>,
    mut seen: u64,
) {
    let mut complained = false;
    let mut renewed_at = Instant::now();
    let mut accounts_seen = None;
    loop {
        // Wake on any change, and when the next renewal is due (every third of the lease).
        // Other hosts' renewals wake us too, but we only read then: renewing on every
        // wake would make the hosts wake each other in a storm of writes.
        let due_in = guard.renew_every().saturating_sub(renewed_at.elapsed());
        let _ = f.state.watch(seen, due_in);
        let t = Instant::now();
        let due = renewed_at.elapsed() >= guard.renew_every() || complained;
        let res = if due {
            f.state.renew_lease(&f.host, f.ttl_ms).map(|_| ())
        } else {
            Ok(())
        };
        let snap = match res.and_then(|()| f.state.snapshot()) {
            Ok(s) => s,
            Err(e) => {
                // The guard is not renewed: writes stop before the lease can expire.
                if !complained {
                    events.raise(Event::alert(
                        "cluster_state_unreachable",
                        format!(
                            "cannot renew this host's lease ({e}); its slots stop accepting writes"
                        ),
                    ));
                    complained = true;
                }
                // A damaged or unreachable state answers at once: do not spin.
                std::thread::sleep(guard.renew_every() / 3);
                continue;
            }
        };
        complained = false;
        seen = snap.revision;
        // Fence every slot the state no longer lets this host master, *before* the guard
        // is renewed, so a host waking from a freeze never acks on a stale view.
        for (slot, master, epoch) in started.iter().filter(|d| d.1 == f.host) {
            let now = snap.slots.get(slot);
            if now.is_none_or(|s| s.master != *master || s.epoch != *epoch) {
                repl.fence(
                    slot,
                    format!(
                        "the cluster state moved the master to {}",
                        now.map(|s| format!("{} at epoch {}", s.master, s.epoch))
                            .unwrap_or_else(|| "nobody".into())
                    ),
                );
            }
        }
        if due {
            guard.renewed(t);
            renewed_at = t;
            publish_positions(&f, &snap, &events);
        }
        match f.state.accounts_revision() {
            Ok(r) if accounts_seen != Some(r) => match mirror_accounts(f.state.as_ref(), &f.dir) {
                Ok(r) => accounts_seen = Some(r),
                Err(e) => events.raise(Event::alert(
                    "directory_unmirrored",
                    format!("cannot copy the account directory from the cluster state: {e:#}"),
                )),
            },
            _ => {}
        }
        for (slot, _, epoch) in started.iter().filter(|d| d.1 == f.host) {
            if let Some(s) = snap.slots.get(slot)
                && s.master == f.host
                && s.epoch == *epoch
                && let Some(to) = &s.moving_to
            {
                switch_over(&f, &repl, &events, slot, *epoch, to);
            }
        }
        let snap = f.state.snapshot().unwrap_or(snap);
        if duties(&effective(&f.config, &snap), &f.host) != started {
            restart(&events);
        }
    }
}

/// Clean switchover of a slot mastered here: stop writes, wait until `to` has everything,
/// promote it in the state (compare-epoch).
fn switch_over(
    f: &Following,
    repl: &Replication,
    events: &EventLog,
    slot: &str,
    epoch: u64,
    to: &str,
) {
    repl.drain(
        slot,
        format!("slot {slot} is switching over to {to}; retry in a moment"),
    );
    let start = Instant::now();
    // A full compare that *starts after the fence* and completes proves `to` holds
    // everything this copy ever acknowledged; lag alone does not cover a link that
    // (re)connected moments ago and is still catching up.
    let full_syncs = |repl: &Replication| -> Option<(u64, bool)> {
        repl.status()
            .into_iter()
            .find(|s| s.slot == slot)
            .and_then(|s| {
                s.replicas.into_iter().find(|r| r.host == to).map(|r| {
                    (
                        r.full_syncs,
                        r.connected && r.lag_changes == 0 && r.progress.is_none(),
                    )
                })
            })
    };
    // A compare already running may have read its snapshot before the fence: then the
    // one asked for now (which follows it) is the proof.
    let running = repl.status().into_iter().any(|s| {
        s.slot == slot
            && s.replicas
                .iter()
                .any(|r| r.host == to && r.progress.is_some())
    });
    let before = full_syncs(repl).map(|x| x.0).unwrap_or(0) + u64::from(running);
    repl.request_full_sync(slot);
    let drained = loop {
        if let Some((n, idle)) = full_syncs(repl)
            && n > before
            && idle
        {
            break true;
        }
        if start.elapsed() > DRAIN_MAX {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !drained {
        // Promote anyway: what `to` lacks comes back when this copy rejoins as its replica
        // (split-brain merge gives it new UIDs; nothing is dropped).
        event(
            events,
            true,
            "switchover_undrained",
            slot,
            format!(
                "{to} did not confirm everything within {}s; promoting it anyway",
                DRAIN_MAX.as_secs()
            ),
        );
    }
    match f.state.promote(slot, epoch, to) {
        Ok(s) => event(
            events,
            false,
            "switchover_done",
            slot,
            format!(
                "{to} masters it now at epoch {} (drained in {} ms)",
                s.epoch,
                start.elapsed().as_millis()
            ),
        ),
        Err(e) => {
            event(events, true, "switchover_failed", slot, e.to_string());
            // Writes are held for the drain: start over clean rather than stay held.
            restart(events);
        }
    }
}

/// Re-executes this process so every role is rebuilt from the state (see the module doc).
fn restart(events: &EventLog) -> ! {
    use std::os::unix::process::CommandExt;
    events.raise(Event::info(
        "roles_changed",
        "the cluster state changed this host's roles: restarting them",
    ));
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    // Could not re-exec: exit so a supervisor restarts us; never serve stale roles.
    eprintln!("tandem: cannot restart roles ({err}); exiting");
    std::process::exit(3);
}

/// The state a `tandem fo`/`status` run sees: opened from this host's tandem.toml.
pub fn open_state(
    dir: &Path,
    cfg: &crate::config::Config,
) -> Result<Option<Arc<dyn ClusterState>>> {
    match &cfg.cluster.state {
        Some(p) => Ok(Some(cluster::state::open(p, dir)?)),
        None => Ok(None),
    }
}

/// For `tandem status`: the whole cluster as the state sees it (hosts with their lease,
/// slots with master, epoch, home), 80 columns. `None` without cluster state. The bool
/// is true when something needs attention (a dead host, a slot away from home).
pub fn cluster_lines(dir: &Path) -> Result<Option<(Vec<String>, bool)>> {
    let cfg = crate::config::Config::load(dir)?;
    let Some(state) = open_state(dir, &cfg)? else {
        return Ok(None);
    };
    let path = dir.join(
        cfg.cluster
            .config
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("cluster.toml")),
    );
    let cluster = ClusterConfig::load(&path)?;
    let snap = state.snapshot()?;
    let now = cluster::state::now_unix_ms();
    let mut attention = false;
    let mut out = vec![format!(
        "CLUSTER {}  (state revision {})",
        cluster.name.as_deref().unwrap_or("-"),
        snap.revision
    )];
    let mut hosts = Vec::new();
    for h in cluster.hosts.values() {
        let up = snap.alive(&h.name, now);
        attention |= !up;
        hosts.push(format!(
            "{} {}/{}",
            h.name,
            h.datacentre,
            if up { "up" } else { "DOWN" }
        ));
    }
    out.push(format!("hosts: {}", hosts.join("  ")));
    for sc in cluster.slots.values() {
        let (master, epoch, moving) = match snap.slots.get(&sc.name) {
            Some(s) => (s.master.clone(), s.epoch, s.moving_to.clone()),
            None => ("-".into(), 0, None),
        };
        let away = master != sc.master;
        attention |= away || !snap.alive(&master, now);
        let mut l = format!(
            "{:<10} master {:<10} epoch {:<4} home {}{}",
            sc.name,
            master,
            epoch,
            sc.master,
            if away { " (away: fo -m)" } else { "" }
        );
        if let Some(to) = moving {
            l.push_str(&format!(" moving to {to}"));
        }
        out.push(l);
    }
    Ok(Some((out, attention)))
}
