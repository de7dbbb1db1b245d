//! `tandem quota show|set|rebuild`. The limit lives in each user's `UserRecord`; usage is
//! never stored on its own: it is the sum of the user's mailbox sizes, which are derived
//! from the message records and can always be rebuilt from them (`rebuild`).

use crate::admin;
use crate::audit::{Action, IntegrityRequest, human_bytes};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use store::directory::{self, Directory};
use store::{EventLog, Op, OpResult, Slot, SystemClock};

#[derive(clap::Subcommand)]
pub enum QuotaCmd {
    /// Usage and limit of one account, or of every account.
    Show {
        address: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set an account's limit: bytes, or with a unit (500M, 2G, 1.5T); 0 or none = no limit.
    Set { address: String, limit: String },
    /// Recompute mailbox sizes and counts (and so usage) from the message records.
    Rebuild { address: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAction {
    Show { address: Option<String> },
    Set { address: String, limit_bytes: u64 },
    Rebuild { address: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub address: String,
    pub slot: String,
    pub usage_bytes: u64,
    pub messages: u64,
    /// 0 = unlimited.
    pub limit_bytes: u64,
}

/// `500M` → 500_000_000; `2G`, `1.5T`, `1024`, `0`, `none`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "none" || t == "unlimited" {
        return Ok(0);
    }
    let u = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match u.chars().last() {
        Some('k') => (&u[..u.len() - 1], 1e3),
        Some('m') => (&u[..u.len() - 1], 1e6),
        Some('g') => (&u[..u.len() - 1], 1e9),
        Some('t') => (&u[..u.len() - 1], 1e12),
        _ => (u, 1.0),
    };
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a size like 500M, 2G or 1073741824"))?;
    if !(0.0..=1e18).contains(&n) {
        bail!("{s:?} is out of range");
    }
    Ok((n * mult) as u64)
}

pub fn run(dir: &Path, cmd: QuotaCmd) -> Result<i32> {
    let (action, json) = match cmd {
        QuotaCmd::Show { address, json } => (
            QuotaAction::Show {
                address: address.as_deref().map(directory::normalize_address),
            },
            json,
        ),
        QuotaCmd::Set { address, limit } => (
            QuotaAction::Set {
                address: directory::normalize_address(&address),
                limit_bytes: parse_size(&limit)?,
            },
            false,
        ),
        QuotaCmd::Rebuild { address } => (
            QuotaAction::Rebuild {
                address: address.as_deref().map(directory::normalize_address),
            },
            false,
        ),
    };
    let req = admin::Request::Integrity(IntegrityRequest {
        action: Action::Quota(action.clone()),
    });
    let mut data = serde_json::Value::Null;
    let reply = admin::call_stream(dir, &req, |v| {
        if let Some(d) = v.get("data") {
            data = d.clone();
        }
    })?;
    let text = match reply {
        Some(r) if !r.ok => bail!("{}", r.message),
        Some(r) => r.message,
        None => {
            // No server: open only the slots this touches.
            let d = Directory::new(dir);
            let events = Arc::new(EventLog::new(
                &dir.join("events.jsonl"),
                Arc::new(SystemClock),
            ));
            let mut slots = HashMap::new();
            for name in crate::user::slot_names(dir)? {
                let s = Slot::open(
                    &dir.join("slots").join(&name),
                    events.clone(),
                    Arc::new(SystemClock),
                )
                .with_context(|| {
                    format!("slot {name} does not open; see `tandem check` and `tandem audit`")
                })?;
                slots.insert(name, s);
            }
            let (text, d) = apply(&slots, &d, &action).map_err(anyhow::Error::msg)?;
            data = d;
            text
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{text}");
    }
    Ok(0)
}

/// Carries out a quota action on open slots; shared by the CLI and the admin socket.
/// Returns the plain-words text and the data for `--json`.
pub fn apply(
    slots: &HashMap<String, Slot>,
    directory: &Directory,
    action: &QuotaAction,
) -> Result<(String, serde_json::Value), String> {
    let accounts = directory.load().map_err(|e| e.to_string())?;
    let pick = |address: &Option<String>| -> Result<Vec<(String, String)>, String> {
        match address {
            Some(a) => {
                let acct = accounts
                    .get(a)
                    .ok_or_else(|| format!("{a} is not an account here"))?;
                Ok(vec![(acct.address.clone(), acct.slot.clone())])
            }
            None => Ok(accounts
                .accounts
                .iter()
                .map(|a| (a.address.clone(), a.slot.clone()))
                .collect()),
        }
    };
    let slot_of = |name: &str| -> Result<&Slot, String> {
        slots.get(name).ok_or_else(|| {
            format!("slot {name} is not served (it failed its start-up check; see `tandem check`)")
        })
    };
    match action {
        QuotaAction::Show { address } => {
            let mut out = Vec::new();
            let mut text = String::new();
            for (addr, slot) in pick(address)? {
                let s = slot_of(&slot)?;
                let view = s.view();
                let boxes = view.mailboxes(&addr).map_err(|e| e.to_string())?;
                let limit = view
                    .user(&addr)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |u| u.quota_bytes);
                let u = Usage {
                    address: addr.clone(),
                    slot,
                    usage_bytes: boxes.iter().map(|m| m.size_bytes).sum(),
                    messages: boxes.iter().map(|m| u64::from(m.exists)).sum(),
                    limit_bytes: limit,
                };
                let of = match u.usage_bytes.saturating_mul(100).checked_div(u.limit_bytes) {
                    None => ", no limit".to_string(),
                    Some(pct) => format!(" of {} ({pct}%)", human_bytes(u.limit_bytes)),
                };
                text.push_str(&format!(
                    "{}\n  {}{of}, {} messages\n",
                    u.address,
                    human_bytes(u.usage_bytes),
                    u.messages
                ));
                out.push(u);
            }
            if out.is_empty() {
                text.push_str("no accounts\n");
            }
            Ok((text, serde_json::to_value(out).unwrap_or_default()))
        }
        QuotaAction::Set {
            address,
            limit_bytes,
        } => {
            let (addr, slot) = pick(&Some(address.clone()))?.remove(0);
            let s = slot_of(&slot)?;
            // The user record appears at first login or delivery; make it now.
            s.execute(Op::EnsureUser { user: addr.clone() })
                .map_err(|e| e.to_string())?;
            s.execute(Op::SetQuota {
                user: addr.clone(),
                quota_bytes: *limit_bytes,
            })
            .map_err(|e| e.to_string())?;
            let what = if *limit_bytes == 0 {
                "no limit".to_string()
            } else {
                human_bytes(*limit_bytes)
            };
            Ok((
                format!("{addr}: limit set to {what}\n"),
                serde_json::json!({ "address": addr, "limit_bytes": limit_bytes }),
            ))
        }
        QuotaAction::Rebuild { address } => {
            let mut text = String::new();
            let mut fixed_total = 0;
            let mut out = Vec::new();
            for (addr, slot) in pick(address)? {
                let s = slot_of(&slot)?;
                let boxes = s.view().mailboxes(&addr).map_err(|e| e.to_string())?;
                for m in boxes {
                    match s.execute(Op::RebuildMailbox { mailbox: m.id }) {
                        Ok(OpResult::Rebuilt(v)) if !v.is_empty() => {
                            fixed_total += 1;
                            text.push_str(&format!("{addr} {}: {}\n", m.name, v.join(", ")));
                            out.push(serde_json::json!({
                                "address": addr, "mailbox": m.name, "fixed": v }));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            text.push_str(&format!("{addr} {}: NOT rebuilt: {e}\n", m.name));
                            return Err(format!(
                                "{text}stopped: mailbox {} of {addr} cannot be rebuilt; \
                                 run `tandem audit --user {addr}`",
                                m.name
                            ));
                        }
                    }
                }
            }
            text.push_str(&if fixed_total == 0 {
                "every mailbox was already right\n".to_string()
            } else {
                format!("{fixed_total} mailboxes rebuilt from their records\n")
            });
            Ok((text, serde_json::Value::Array(out)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("500M").unwrap(), 500_000_000);
        assert_eq!(parse_size("2g").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1.5T").unwrap(), 1_500_000_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("10kB").unwrap(), 10_000);
        assert_eq!(parse_size("none").unwrap(), 0);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-5M").is_err());
    }
}
