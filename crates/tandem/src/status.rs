//! `tandem status`: per slot, its role here, epoch, durability, master, and per replica
//! the connection, replication lag (changes and time), last successful sync and latency —
//! in 80 columns, for a phone at 3:30 in the morning. Exit 0 when all is well, 1 when
//! something needs attention (a replica down, a degraded or fenced slot), with the reason.

use crate::cluster::{fetch_status, progress_line};
use anyhow::Result;
use replication::status::{ReplicaStatus, SlotStatus};
use std::path::Path;

const COLUMNS: usize = 80;

pub fn run(dir: &Path, json: bool) -> Result<i32> {
    // With cluster state: the whole cluster first (it answers even when this host is down).
    let mut cluster_attention = false;
    if !json && let Some((lines, attention)) = crate::follow::cluster_lines(dir)? {
        for l in lines {
            println!("{}", fit(l));
        }
        cluster_attention = attention;
    }
    if !json {
        for l in crate::frontend::status_lines(dir)? {
            println!("{}", fit(l));
        }
    }
    let status = fetch_status(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    let now = now_unix();
    let (lines, attention) = render(&status, now);
    for l in lines {
        println!("{l}");
    }
    Ok(if attention || cluster_attention { 1 } else { 0 })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ago(t: Option<i64>, now: i64) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (now - t).max(0);
            if s < 120 {
                format!("{s}s ago")
            } else if s < 7200 {
                format!("{}m ago", s / 60)
            } else if s < 172_800 {
                format!("{}h ago", s / 3600)
            } else {
                format!("{}d ago", s / 86_400)
            }
        }
    }
}

fn ms(v: u64) -> String {
    if v < 1000 {
        format!("{v} ms")
    } else if v < 120_000 {
        format!("{:.1} s", v as f64 / 1000.0)
    } else {
        format!("{} min", v / 60_000)
    }
}

fn fit(mut s: String) -> String {
    if s.chars().count() > COLUMNS {
        s = s.chars().take(COLUMNS - 1).collect::<String>() + "…";
    }
    s
}

fn replica_line(r: &ReplicaStatus, now: i64) -> String {
    let state = if r.connected { "up" } else { "DOWN" };
    let lag = format!(
        "lag {} chg {}{}",
        r.lag_changes,
        if r.lag_ms_floor { ">" } else { "" },
        ms(r.lag_ms)
    );
    let lat = match (r.latency_p50_ms, r.latency_p99_ms) {
        (Some(a), Some(b)) => format!("p50/p99 {a}/{b} ms"),
        _ => String::new(),
    };
    fit(format!(
        "  → {:<10} {:<4} {:<22} synced {:<8} {lat}",
        r.host,
        state,
        lag,
        ago(r.last_sync_unix, now)
    ))
}

/// The lines to print, and whether anything needs attention.
pub fn render(status: &[SlotStatus], now: i64) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    if status.is_empty() {
        out.push("no slots are open on this server".to_string());
        return (out, true);
    }
    out.push(format!(
        "{:<10} {:<8} {:>5}  {:<10} {}",
        "SLOT", "ROLE", "EPOCH", "DURABILITY", "MASTER"
    ));
    for s in status {
        let mut head = format!(
            "{:<10} {:<8} {:>5}  {:<10} {}",
            s.slot, s.role, s.epoch, s.durability, s.master
        );
        if s.role == "replica" {
            head.push_str(&format!(
                "  applied {}{}",
                ago(s.last_apply_unix, now),
                if s.master_connected {
                    ""
                } else {
                    ", master not connected"
                }
            ));
        }
        out.push(fit(head));
        if let Some(f) = &s.fenced {
            out.push(fit(format!("  FENCED, refusing writes: {f}")));
            problems.push(format!("{} is fenced", s.slot));
        }
        if s.degraded {
            out.push(fit(
                "  DEGRADED: no replica confirms; acks are local only (or refused, strict)".into(),
            ));
            problems.push(format!("{} is degraded", s.slot));
        }
        for r in &s.replicas {
            out.push(replica_line(r, now));
            if let Some((d, t)) = r.progress {
                out.push(fit(format!("    {}", progress_line(d, t, "full compare"))));
            }
            if !r.connected {
                problems.push(format!("replica {} of {} is down", r.host, s.slot));
                if let Some(e) = &r.last_error {
                    out.push(fit(format!("    {e}")));
                }
            }
        }
    }
    if !problems.is_empty() {
        out.push(fit(format!("ATTENTION: {}", problems.join("; "))));
    }
    (out, !problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(host: &str, connected: bool) -> ReplicaStatus {
        ReplicaStatus {
            host: host.into(),
            connected,
            lag_changes: if connected { 0 } else { 1234 },
            lag_ms: if connected { 0 } else { 754_000 },
            lag_ms_floor: false,
            last_sync_unix: Some(1000),
            last_error: (!connected).then(|| {
                "connect to c at 10.0.0.3:7400: Connection refused (os error 111) and a lot more words to overflow".into()
            }),
            latency_p50_ms: Some(3),
            latency_p99_ms: Some(12),
            latency_samples: 10,
            progress: None,
            full_syncs: 1,
        }
    }

    #[test]
    fn status_fits_80_columns_and_flags_what_needs_attention() {
        let s = vec![
            SlotStatus {
                slot: "s1".into(),
                role: "master".into(),
                epoch: 2,
                master: "imap3-nyc".into(),
                durability: "replica".into(),
                degraded: true,
                fenced: None,
                replicas: vec![replica("imap4-nyc", true), replica("imap1-rek", false)],
                last_apply_unix: None,
                master_connected: false,
            },
            SlotStatus {
                slot: "s2".into(),
                role: "replica".into(),
                epoch: 7,
                master: "imap4-nyc".into(),
                durability: "local".into(),
                degraded: false,
                fenced: None,
                replicas: vec![],
                last_apply_unix: Some(1005),
                master_connected: true,
            },
        ];
        let (lines, attention) = render(&s, 1010);
        assert!(attention);
        for l in &lines {
            assert!(l.chars().count() <= COLUMNS, "{l:?} is wider than 80");
        }
        let text = lines.join("\n");
        assert!(text.contains("DEGRADED"), "{text}");
        assert!(text.contains("imap1-rek  DOWN"), "{text}");
        assert!(text.contains("lag 1234 chg 12 min"), "{text}");
        assert!(text.contains("applied 5s ago"), "{text}");
        assert!(lines.last().unwrap().starts_with("ATTENTION"));
        let (_, attention) = render(&s[1..], 1010);
        assert!(!attention);
    }
}
