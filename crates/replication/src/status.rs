//! What `tandem status` and `tandem cluster verify` report, as data (the CLI formats it;
//! it travels as JSON over the admin socket).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot: String,
    /// "master" or "replica".
    pub role: String,
    pub epoch: u64,
    pub master: String,
    /// "local" or "replica".
    pub durability: String,
    /// `durability = "replica"` but no replica confirmed in time: acks are local only
    /// (or refused, when strict) until one catches up.
    pub degraded: bool,
    /// Why this copy refuses writes (a higher epoch was seen elsewhere).
    pub fenced: Option<String>,
    /// Master role: one entry per replica.
    pub replicas: Vec<ReplicaStatus>,
    /// Replica role: when this copy last applied a batch from its master, and whether a
    /// master is connected now.
    pub last_apply_unix: Option<i64>,
    pub master_connected: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub host: String,
    pub connected: bool,
    /// Changes (write requests) committed here that the replica has not confirmed.
    pub lag_changes: u64,
    /// Age of the oldest change the replica has not confirmed.
    pub lag_ms: u64,
    /// `lag_ms` is at least this (older records were dropped to bound memory).
    pub lag_ms_floor: bool,
    pub last_sync_unix: Option<i64>,
    pub last_error: Option<String>,
    /// Commit-to-replica-fsync latency over the last samples.
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
    pub latency_samples: u64,
    /// (done, total) messages of a full compare in progress (catch-up, bootstrap).
    pub progress: Option<(u64, u64)>,
    /// Full compares completed since start.
    pub full_syncs: u64,
}

/// The result of a full compare without changes (`tandem cluster verify`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub slot: String,
    pub replica: String,
    pub users: u64,
    pub mailboxes: u64,
    pub messages: u64,
    /// Differences in plain words, at most `VERIFY_DIFFERENCES_MAX`.
    pub differences: Vec<String>,
    /// Differences found beyond those listed.
    pub more_differences: u64,
}

/// Differences listed by a verify; past it they are counted.
pub const VERIFY_DIFFERENCES_MAX: usize = 100;

impl VerifyReport {
    pub fn differ(&mut self, what: String) {
        if self.differences.len() < VERIFY_DIFFERENCES_MAX {
            self.differences.push(what);
        } else {
            self.more_differences += 1;
        }
    }

    pub fn clean(&self) -> bool {
        self.differences.is_empty() && self.more_differences == 0
    }
}
