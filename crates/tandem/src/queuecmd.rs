//! `tandem queue list|show|retry|drop`: through the admin socket when the server runs (it
//! owns the schedule), directly on `DIR/queue` when it does not. Output is short plain words
//! that fit a phone screen; every command is idempotent and `drop` has `--dry-run`.

use crate::admin;
use crate::outbound::Outbound;
use crate::queue::{Entry, Queue, RcptState};
use anyhow::{Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use store::{Clock, EventLog, SystemClock};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// One line per queued message.
    #[command(alias = "ls")]
    List,
    /// Everything about one message: recipients, their state and last reply.
    Show { id: String },
    /// Try again now: one message, or every message with --all (clears destination backoff).
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Remove a message from the queue without delivering it (no bounce is sent).
    #[command(alias = "rm")]
    Drop {
        id: String,
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
}

/// The admin-socket form of a queue command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum QueueRequest {
    List,
    Show { id: String },
    Retry { id: Option<String> },
    Drop { id: String, dry_run: bool },
}

fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn sender(e: &Entry) -> &str {
    if e.mail_from.is_empty() {
        "<> (bounce)"
    } else {
        &e.mail_from
    }
}

pub fn format_list(entries: &[Entry], damaged: usize, now: i64) -> String {
    let mut out = match entries.len() {
        0 => "queue is empty".to_string(),
        1 => "1 queued message".to_string(),
        n => format!("{n} queued messages"),
    };
    if damaged > 0 {
        out.push_str(&format!(
            "\n{damaged} damaged records are held back (see `tandem events`)"
        ));
    }
    for e in entries {
        let pending: Vec<&str> = e.pending().map(|r| r.address.as_str()).collect();
        let to = match pending.as_slice() {
            [] => "nothing pending".to_string(),
            [one] => (*one).to_string(),
            [one, rest @ ..] => format!("{one} +{}", rest.len()),
        };
        out.push_str(&format!(
            "\n{}  {:>4}  {} tries  {} -> {to}",
            e.id,
            age(now - e.created_unix),
            e.attempts,
            sender(e)
        ));
        if let Some(reply) = e.pending().find_map(|r| r.last_reply.as_deref()) {
            out.push_str(&format!("\n    last: {reply}"));
        }
    }
    out
}

pub fn format_entry(e: &Entry, now: i64) -> String {
    let mut out = format!(
        "{}\n  from      {}\n  size      {} bytes\n  age       {}\n  attempts  {}\n  next try  in {}",
        e.id,
        sender(e),
        e.body_bytes,
        age(now - e.created_unix),
        e.attempts,
        age(e.next_attempt_unix - now)
    );
    for r in &e.recipients {
        let state = match r.state {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed (bounced)",
        };
        out.push_str(&format!("\n  to {}: {state}", r.address));
        if let Some(reply) = &r.last_reply {
            out.push_str(&format!("\n     {reply}"));
        }
    }
    out
}

fn ok(message: String) -> admin::Reply {
    admin::Reply { ok: true, message }
}

fn fail(message: String) -> admin::Reply {
    admin::Reply { ok: false, message }
}

/// Runs a request on a queue without a live scheduler (server stopped).
pub fn offline(queue: &Queue, now: i64, req: QueueRequest) -> admin::Reply {
    match req {
        QueueRequest::List => match queue.list() {
            Ok((entries, damaged)) => ok(format_list(&entries, damaged.len(), now)),
            Err(e) => fail(format!("{e:#}")),
        },
        QueueRequest::Show { id } => match queue.load(&id) {
            Ok(e) => ok(format_entry(&e, now)),
            Err(e) => fail(format!("{e:#}")),
        },
        QueueRequest::Retry { id } => {
            let entries = match (&id, queue.list()) {
                (_, Err(e)) => return fail(format!("{e:#}")),
                (Some(i), Ok((all, _))) => {
                    let v: Vec<Entry> = all.into_iter().filter(|e| e.id == *i).collect();
                    if v.is_empty() {
                        return fail(format!("no queue entry {i}"));
                    }
                    v
                }
                (None, Ok((all, _))) => all,
            };
            let mut n = 0;
            for mut e in entries {
                e.next_attempt_unix = now;
                if let Err(err) = queue.update(&e) {
                    return fail(format!("{err:#} ({n} messages were marked due first)"));
                }
                n += 1;
            }
            ok(format!(
                "{n} messages will be tried as soon as the server starts"
            ))
        }
        QueueRequest::Drop { id, dry_run } => drop_entry(queue, &id, dry_run, |q, id| q.remove(id)),
    }
}

fn drop_entry(
    queue: &Queue,
    id: &str,
    dry_run: bool,
    remove: impl FnOnce(&Queue, &str) -> Result<bool>,
) -> admin::Reply {
    let e = match queue.load(id) {
        Ok(e) => e,
        Err(_) if crate::queue::valid_id(id) => {
            return ok(format!(
                "{id} is not in the queue (delivered or dropped already); nothing to do"
            ));
        }
        Err(e) => return fail(format!("{e:#}")),
    };
    let pending = e.pending().count();
    if dry_run {
        return ok(format!(
            "would drop {id} from {} with {pending} undelivered recipients (dry run: nothing done)",
            sender(&e)
        ));
    }
    match remove(queue, id) {
        Ok(_) => ok(format!(
            "dropped {id} from {}; {pending} recipients will not get it and no bounce is sent",
            sender(&e)
        )),
        Err(err) => fail(format!("{err:#}")),
    }
}

/// Runs a request against the live scheduler (admin socket).
pub async fn online(
    outbound: Arc<Outbound>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    req: QueueRequest,
) -> admin::Reply {
    let now = clock.now_unix_secs();
    match req {
        QueueRequest::Retry { id } => {
            if let Some(i) = &id
                && queue.load(i).is_err()
            {
                return fail(format!("no queue entry {i}"));
            }
            let n = outbound.retry(id.as_deref());
            ok(format!("{n} messages will be tried now"))
        }
        QueueRequest::Drop { id, dry_run } => tokio::task::spawn_blocking(move || {
            drop_entry(&queue, &id, dry_run, |_, id| outbound.drop_entry(id))
        })
        .await
        .unwrap_or_else(|_| fail("internal error".into())),
        other => tokio::task::spawn_blocking(move || offline(&queue, now, other))
            .await
            .unwrap_or_else(|_| fail("internal error".into())),
    }
}

pub fn run(dir: &Path, cmd: QueueCmd) -> Result<()> {
    let req = match cmd {
        QueueCmd::List => QueueRequest::List,
        QueueCmd::Show { id } => QueueRequest::Show { id },
        QueueCmd::Retry { id, all } => match (id, all) {
            (Some(_), true) => bail!("give a message id or --all, not both"),
            (None, false) => bail!("give a message id, or --all to retry everything"),
            (id, _) => QueueRequest::Retry { id },
        },
        QueueCmd::Drop { id, dry_run } => QueueRequest::Drop { id, dry_run },
    };
    let reply = match admin::call(dir, &admin::Request::Queue(req.clone()))? {
        Some(r) => r,
        None => {
            if !dir.join("queue").is_dir() {
                println!("queue is empty (no queue directory yet)");
                return Ok(());
            }
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
            let q = Queue::at(dir, clock.clone(), events);
            offline(&q, clock.now_unix_secs(), req)
        }
    };
    if !reply.ok {
        bail!("{}", reply.message);
    }
    println!("{}", reply.message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_the_admin_protocol() {
        let r = admin::Request::Queue(QueueRequest::Drop {
            id: "0123456789abcdef0123".into(),
            dry_run: true,
        });
        let json = serde_json::to_string(&r).unwrap();
        let back: admin::Request = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back,
            admin::Request::Queue(QueueRequest::Drop { dry_run: true, .. })
        ));
        let json = serde_json::to_string(&admin::Request::Queue(QueueRequest::List)).unwrap();
        assert!(matches!(
            serde_json::from_str::<admin::Request>(&json).unwrap(),
            admin::Request::Queue(QueueRequest::List)
        ));
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(5 * 86_400), "5d");
        assert_eq!(age(-3), "0s");
    }
}
