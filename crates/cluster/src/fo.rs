//! Failover planning: what `tandem fo` will do, decided from the config (who may hold a
//! copy) and one snapshot of the cluster state (who masters what, who is alive). Pure, so
//! `--dry-run` prints exactly what a real run does and a second run finds nothing to do.

use crate::ClusterConfig;
use crate::state::Snapshot;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `fo SLOT [--to HOST]`: clean switchover of one slot.
    Slot { slot: String, to: Option<String> },
    /// `fo -K HOST`: HOST is dead; promote a live replica of each slot it mastered.
    Kill { host: String },
    /// `fo -a HOST`: move every slot mastered on HOST elsewhere.
    All { host: String },
    /// `fo -m HOST`: move back every slot whose home is HOST and is mastered elsewhere.
    Home { host: String },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The master is alive: ask it to stop writes, drain to `to`, and promote `to`.
    Move {
        slot: String,
        from: String,
        to: String,
        epoch: u64,
    },
    /// The master is dead (or being killed): promote `to` by compare-epoch once the old
    /// master's lease has expired. `auto`: `to` was not named by the operator, so the
    /// run may promote a more current live copy instead (the positions the copies publish
    /// once the master's lease is gone decide).
    Promote {
        slot: String,
        from: String,
        to: String,
        epoch: u64,
        auto: bool,
    },
    /// Nothing to do for this slot (already where it should be).
    Nothing { slot: String, why: String },
    /// Cannot be done: the reason names what the operator must fix.
    Stuck { slot: String, why: String },
}

impl Action {
    pub fn slot(&self) -> &str {
        match self {
            Action::Move { slot, .. }
            | Action::Promote { slot, .. }
            | Action::Nothing { slot, .. }
            | Action::Stuck { slot, .. } => slot,
        }
    }

    /// One line, at most 80 columns for ordinary names.
    pub fn describe(&self) -> String {
        match self {
            Action::Move {
                slot,
                from,
                to,
                epoch,
            } => {
                format!(
                    "{slot}: move {from} -> {to} (epoch {epoch} -> {})",
                    epoch + 1
                )
            }
            Action::Promote {
                slot,
                from,
                to,
                epoch,
                auto,
            } => {
                format!(
                    "{slot}: {from} dead, promote {}{to} (epoch {epoch} -> {})",
                    if *auto { "the most current of " } else { "" },
                    epoch + 1
                )
            }
            Action::Nothing { slot, why } => format!("{slot}: nothing to do, {why}"),
            Action::Stuck { slot, why } => format!("{slot}: CANNOT, {why}"),
        }
    }
}

/// The copy to promote for `slot` instead of `from`: the home if it is a live other copy,
/// else the first live replica in config order, preferring `preferred`.
fn pick(
    cfg: &ClusterConfig,
    snap: &Snapshot,
    slot: &str,
    from: &str,
    preferred: Option<&str>,
    now_ms: u64,
) -> Result<String, String> {
    let sc = cfg
        .slots
        .get(slot)
        .ok_or_else(|| format!("no [slots.{slot}] in cluster.toml"))?;
    let copies = sc.copies();
    if let Some(p) = preferred {
        if !copies.contains(&p) {
            return Err(format!("{p} holds no copy (copies: {})", copies.join(", ")));
        }
        if !snap.alive(p, now_ms) {
            return Err(format!("{p} is not alive (no lease): start it first"));
        }
        return Ok(p.to_string());
    }
    copies
        .into_iter()
        .find(|h| *h != from && snap.alive(h, now_ms))
        .map(str::to_string)
        .ok_or_else(|| "no live copy to promote: start a replica host".to_string())
}

fn step(
    cfg: &ClusterConfig,
    snap: &Snapshot,
    slot: &str,
    to: Option<&str>,
    dead: Option<&str>,
    now_ms: u64,
) -> Action {
    let Some(st) = snap.slots.get(slot) else {
        return Action::Stuck {
            slot: slot.into(),
            why: "not in the cluster state (no host of it has started)".into(),
        };
    };
    if to == Some(st.master.as_str()) {
        return Action::Nothing {
            slot: slot.into(),
            why: format!("{} masters it (epoch {})", st.master, st.epoch),
        };
    }
    let target = match pick(cfg, snap, slot, &st.master, to, now_ms) {
        Ok(t) => t,
        Err(why) => {
            return Action::Stuck {
                slot: slot.into(),
                why,
            };
        }
    };
    let master_dead = dead == Some(st.master.as_str()) || !snap.alive(&st.master, now_ms);
    let (slot, from, epoch) = (slot.to_string(), st.master.clone(), st.epoch);
    if master_dead {
        Action::Promote {
            slot,
            from,
            to: target,
            epoch,
            auto: to.is_none(),
        }
    } else {
        Action::Move {
            slot,
            from,
            to: target,
            epoch,
        }
    }
}

/// The most current of `slot`'s live copies other than `from`, by the positions they
/// published at or after `after_ms` (highest epoch, then highest score; ties go to the
/// earlier copy in config order). `None` until at least one live copy published.
/// The bool is true when every live copy has published (so waiting longer changes
/// nothing).
pub fn most_current(
    cfg: &ClusterConfig,
    snap: &Snapshot,
    slot: &str,
    from: &str,
    after_ms: u64,
    now_ms: u64,
) -> (Option<String>, bool) {
    let Some(sc) = cfg.slots.get(slot) else {
        return (None, true);
    };
    let published = snap.positions.get(slot);
    let mut best: Option<(&str, u64, u64)> = None;
    let mut all = true;
    for h in sc.copies() {
        if h == from || !snap.alive(h, now_ms) {
            continue;
        }
        match published
            .and_then(|p| p.get(h))
            .filter(|p| p.at_unix_ms >= after_ms)
        {
            Some(p) => {
                if best.is_none_or(|(_, e, s)| (p.epoch, p.score) > (e, s)) {
                    best = Some((h, p.epoch, p.score));
                }
            }
            None => all = false,
        }
    }
    (best.map(|b| b.0.to_string()), all)
}

/// What `tandem fo` would do now. Every slot concerned gets exactly one action.
pub fn plan(cfg: &ClusterConfig, snap: &Snapshot, mode: &Mode, now_ms: u64) -> Vec<Action> {
    let mastered_by = |host: &str| -> Vec<String> {
        snap.slots
            .iter()
            .filter(|(name, s)| s.master == host && cfg.slots.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect()
    };
    match mode {
        Mode::Slot { slot, to } => {
            if !cfg.slots.contains_key(slot) {
                return vec![Action::Stuck {
                    slot: slot.clone(),
                    why: format!("no [slots.{slot}] in cluster.toml"),
                }];
            }
            vec![step(cfg, snap, slot, to.as_deref(), None, now_ms)]
        }
        Mode::Kill { host } => mastered_by(host)
            .iter()
            .map(|s| step(cfg, snap, s, None, Some(host), now_ms))
            .collect(),
        Mode::All { host } => mastered_by(host)
            .iter()
            .map(|s| step(cfg, snap, s, None, None, now_ms))
            .collect(),
        Mode::Home { host } => cfg
            .slots
            .values()
            .filter(|s| s.master == *host)
            .filter(|s| snap.slots.get(&s.name).is_some_and(|st| st.master != *host))
            .map(|s| step(cfg, snap, &s.name, Some(host), None, now_ms))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HostLease, SlotState};

    const CFG: &str = r#"
[hosts.a]
datacentre = "nyc"
replication = "127.0.0.2:7400"
[hosts.b]
datacentre = "nyc"
replication = "127.0.0.3:7400"
[hosts.c]
datacentre = "rek"
replication = "127.0.0.4:7400"
[slots.s1]
home = "a"
replicas = ["c", "b"]
[slots.s2]
home = "b"
replicas = ["c"]
"#;

    const NOW: u64 = 1_000_000;

    fn snap(masters: &[(&str, &str, u64)], alive: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for (slot, m, e) in masters {
            s.slots.insert(
                slot.to_string(),
                SlotState {
                    master: m.to_string(),
                    epoch: *e,
                    moving_to: None,
                },
            );
        }
        for h in alive {
            s.hosts.insert(
                h.to_string(),
                HostLease {
                    expires_unix_ms: NOW + 3000,
                },
            );
        }
        s
    }

    fn cfg() -> ClusterConfig {
        ClusterConfig::parse(CFG).unwrap()
    }

    #[test]
    fn switchover_moves_to_the_named_host_and_a_second_run_does_nothing() {
        let c = cfg();
        let mode = Mode::Slot {
            slot: "s1".into(),
            to: Some("b".into()),
        };
        let p = plan(&c, &snap(&[("s1", "a", 1)], &["a", "b", "c"]), &mode, NOW);
        assert_eq!(
            p,
            vec![Action::Move {
                slot: "s1".into(),
                from: "a".into(),
                to: "b".into(),
                epoch: 1
            }]
        );
        assert_eq!(p[0].describe(), "s1: move a -> b (epoch 1 -> 2)");
        let again = plan(&c, &snap(&[("s1", "b", 2)], &["a", "b", "c"]), &mode, NOW);
        assert!(matches!(again[0], Action::Nothing { .. }), "{again:?}");
    }

    #[test]
    fn switchover_without_to_picks_the_first_live_replica() {
        let c = cfg();
        let mode = Mode::Slot {
            slot: "s1".into(),
            to: None,
        };
        let p = plan(&c, &snap(&[("s1", "a", 1)], &["a", "b"]), &mode, NOW);
        assert!(
            matches!(&p[0], Action::Move { to, .. } if to == "b"),
            "{p:?}"
        );
    }

    #[test]
    fn kill_promotes_a_live_replica_of_each_slot_the_dead_host_mastered() {
        let c = cfg();
        let s = snap(&[("s1", "a", 4), ("s2", "b", 1)], &["a", "b", "c"]);
        let p = plan(&c, &s, &Mode::Kill { host: "a".into() }, NOW);
        assert_eq!(
            p,
            vec![Action::Promote {
                slot: "s1".into(),
                from: "a".into(),
                to: "c".into(),
                epoch: 4,
                auto: true,
            }]
        );
        // After it, a second run finds nothing mastered on a.
        let s = snap(&[("s1", "c", 5), ("s2", "b", 1)], &["b", "c"]);
        assert!(plan(&c, &s, &Mode::Kill { host: "a".into() }, NOW).is_empty());
    }

    #[test]
    fn no_live_replica_is_reported_not_ignored() {
        let c = cfg();
        let s = snap(&[("s2", "b", 1)], &["b"]);
        let p = plan(&c, &s, &Mode::Kill { host: "b".into() }, NOW);
        assert!(matches!(&p[0], Action::Stuck { why, .. } if why.contains("no live copy")));
        let p = plan(
            &c,
            &s,
            &Mode::Slot {
                slot: "s2".into(),
                to: Some("a".into()),
            },
            NOW,
        );
        assert!(matches!(&p[0], Action::Stuck { why, .. } if why.contains("holds no copy")));
        let p = plan(
            &c,
            &s,
            &Mode::Slot {
                slot: "zz".into(),
                to: None,
            },
            NOW,
        );
        assert!(matches!(&p[0], Action::Stuck { .. }));
    }

    #[test]
    fn all_moves_everything_off_and_home_moves_it_back() {
        let c = cfg();
        let s = snap(&[("s1", "a", 1), ("s2", "b", 1)], &["a", "b", "c"]);
        let p = plan(&c, &s, &Mode::All { host: "b".into() }, NOW);
        assert!(matches!(&p[..], [Action::Move { slot, to, .. }] if slot == "s2" && to == "c"));
        let s = snap(&[("s1", "a", 1), ("s2", "c", 2)], &["a", "b", "c"]);
        assert!(plan(&c, &s, &Mode::All { host: "b".into() }, NOW).is_empty());
        let p = plan(&c, &s, &Mode::Home { host: "b".into() }, NOW);
        assert!(
            matches!(&p[..], [Action::Move { slot, from, to, epoch: 2 }] if slot == "s2" && from == "c" && to == "b")
        );
        let s = snap(&[("s1", "a", 1), ("s2", "b", 3)], &["a", "b", "c"]);
        assert!(plan(&c, &s, &Mode::Home { host: "b".into() }, NOW).is_empty());
    }

    #[test]
    fn a_master_whose_lease_expired_is_promoted_over_not_asked() {
        let c = cfg();
        let s = snap(&[("s2", "b", 1)], &["c"]);
        let p = plan(&c, &s, &Mode::All { host: "b".into() }, NOW);
        assert!(matches!(&p[..], [Action::Promote { to, .. }] if to == "c"));
    }

    #[test]
    fn the_most_current_live_copy_wins_once_positions_are_published() {
        use crate::state::CopyPosition;
        let c = cfg();
        let mut s = snap(&[("s1", "a", 4)], &["b", "c"]);
        let pos = |score, at| CopyPosition {
            epoch: 4,
            score,
            at_unix_ms: at,
        };
        // Nothing published since the master died: no choice yet.
        assert_eq!(
            most_current(&c, &s, "s1", "a", NOW - 10, NOW),
            (None, false)
        );
        let p = s.positions.entry("s1".into()).or_default();
        p.insert("c".into(), pos(10, NOW - 5));
        p.insert("b".into(), pos(99, NOW - 100)); // stale: from before the master died
        assert_eq!(
            most_current(&c, &s, "s1", "a", NOW - 10, NOW),
            (Some("c".into()), false)
        );
        s.positions
            .get_mut("s1")
            .unwrap()
            .insert("b".into(), pos(12, NOW - 1));
        assert_eq!(
            most_current(&c, &s, "s1", "a", NOW - 10, NOW),
            (Some("b".into()), true)
        );
        // A copy of a later epoch beats any score of an earlier one.
        s.positions.get_mut("s1").unwrap().insert(
            "c".into(),
            CopyPosition {
                epoch: 5,
                score: 1,
                at_unix_ms: NOW - 1,
            },
        );
        assert_eq!(
            most_current(&c, &s, "s1", "a", NOW - 10, NOW).0.as_deref(),
            Some("c")
        );
    }
}
