//! The alert/event stream: one JSON object per line in `DIR/events.jsonl`.
//!
//! Each line: `{"ts":<unix secs>,"level":"alert"|"info","kind":"...","slot":...,
//! "user":...,"mailbox":...,"uid":...,"detail":"..."}` (absent fields omitted). Lines are
//! appended with O_APPEND in one write so concurrent writers never interleave, and
//! fsynced because an alert that vanishes in a crash is an alert nobody saw.

use crate::clock::Clock;
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize, Default)]
pub struct Event {
    pub ts: i64,
    pub level: &'static str,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub detail: String,
}

impl Event {
    pub fn alert(kind: &str, detail: impl Into<String>) -> Event {
        Event {
            level: "alert",
            kind: kind.to_string(),
            detail: detail.into(),
            ..Event::default()
        }
    }
    pub fn info(kind: &str, detail: impl Into<String>) -> Event {
        Event {
            level: "info",
            ..Event::alert(kind, detail)
        }
    }
}

pub struct EventLog {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    lock: Mutex<()>,
    /// Live copies of every event for in-process consumers (the webhook). Bounded: a
    /// consumer that falls more than `EVENT_QUEUE_MAX` behind misses events (and is told
    /// so by `RecvError::Lagged`); the file stays complete.
    live: tokio::sync::broadcast::Sender<Event>,
}

const EVENT_QUEUE_MAX: usize = 1024;

impl EventLog {
    pub fn new(path: &Path, clock: Arc<dyn Clock>) -> EventLog {
        EventLog {
            path: path.to_path_buf(),
            clock,
            lock: Mutex::new(()),
            live: tokio::sync::broadcast::channel(EVENT_QUEUE_MAX).0,
        }
    }

    /// Every event raised from now on, as it is written.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an event. Failing to write the log must not fail the operation that
    /// raised it, so the error goes to stderr as a last resort.
    pub fn raise(&self, mut ev: Event) {
        ev.ts = self.clock.now_unix_secs();
        let mut line = match serde_json::to_vec(&ev) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        if ev.level == "alert" {
            eprintln!("ALERT {}: {}", ev.kind, ev.detail);
        }
        let _guard = self.lock.lock();
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line).and_then(|_| f.sync_data()));
        if let Err(e) = res {
            eprintln!("cannot write event log {}: {e}", self.path.display());
        }
        // No receiver is normal (no webhook configured).
        let _ = self.live.send(ev);
    }
}
