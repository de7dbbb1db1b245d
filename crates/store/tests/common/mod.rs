//! Helpers shared by the store's integration tests (each test file is its own crate and
//! uses a different subset, hence `dead_code`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::{Clock, EventLog, ManualClock, Slot, StoreError};

/// A directory removed on drop (best effort), unique per process and call.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tandem-store-{tag}-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a slot needs besides its directory: a stepped clock and an event log
/// outside the slot directory (so the slot directory holds only the slot).
pub struct Env {
    pub root: TempDir,
    pub clock: Arc<ManualClock>,
    pub events: Arc<EventLog>,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let root = TempDir::new(tag);
        let clock = Arc::new(ManualClock::new(1_750_000_000));
        let c: Arc<dyn Clock> = clock.clone();
        let events = Arc::new(EventLog::new(&root.path().join("events.jsonl"), c));
        Env {
            root,
            clock,
            events,
        }
    }

    pub fn slot_dir(&self) -> PathBuf {
        self.root.path().join("slot")
    }

    pub fn clock_dyn(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn create(&self, name: &str) -> Slot {
        Slot::create(
            &self.slot_dir(),
            name,
            "host-a",
            self.events.clone(),
            self.clock_dyn(),
        )
        .unwrap()
    }

    /// Opens the slot, waiting for a just-dropped handle's writer thread to release the
    /// database lock (the writer exits asynchronously once the last handle is gone).
    pub fn open(&self) -> Result<Slot, StoreError> {
        open_retrying(&self.slot_dir(), self.events.clone(), self.clock_dyn())
    }

    /// Every event line written so far, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        read_events(self.events.path())
    }

    /// Event lines at level `alert`.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["level"] == "alert")
            .collect()
    }
}

pub fn open_retrying(
    dir: &Path,
    events: Arc<EventLog>,
    clock: Arc<dyn Clock>,
) -> Result<Slot, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    // fjall retries a held lock only after 100 ms sleeps; waiting here for the old
    // writer to let go keeps reopen-heavy tests fast. (`flock` locks of two opens
    // conflict even within one process.)
    let lock = dir.join("meta").join("lock");
    if let Ok(f) = std::fs::File::open(&lock) {
        while f.try_lock().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    loop {
        match Slot::open(dir, events.clone(), clock.clone()) {
            Err(StoreError::Unavailable { reason, .. })
                if reason.contains("ocked") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}
