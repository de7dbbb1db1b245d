//! Tandem's slot storage engine: message blobs, checksummed metadata, one writer with
//! group commit, durable read snapshots, and the event log. Files only: no network.
//!
//! # On-disk format of a slot copy
//!
//! ```text
//! <slot>/SLOT                  header: magic, version, epoch, slot name, copy id, CRC32C
//!                              (see `header.rs`)
//! <slot>/meta/                 fjall database (LSM; its own block checksums on every read)
//! <slot>/blobs/ab/<64 hex>     message bodies named by BLAKE3 (see `blob.rs`)
//! <slot>/blobs/tmp/            blob writes not yet renamed (emptied at open)
//! ```
//!
//! Every value in `meta/` is a sealed record: `version u8 | body | crc32c u32` where the
//! CRC covers key and value (see `codec.rs`), computed before the write and verified after
//! every read. Keyspaces (big-endian integers in keys so they sort numerically):
//!
//! | keyspace        | key                                  | value |
//! |-----------------|--------------------------------------|-------|
//! | `mailboxes`     | mailbox id u64                       | `MailboxHeader`: id, user, name, uidvalidity u32, uidnext u32, highestmodseq u64, exists u32, unseen u32, size_bytes u64, digest u32, special_use u8 |
//! | `names`         | user `\0` mailbox name               | mailbox id u64 |
//! | `messages`      | mailbox id u64, uid u32              | `MessageRecord`: uid u32, modseq u64, system flags u8, internaldate i64 + zone i16, size u32, BLAKE3 [32], keywords (u16 count, strings) |
//! | `changes`       | mailbox id u64, modseq u64, uid u32  | kind u8: 0 changed, 1 expunged (tombstone for VANISHED; kept for `VANISHED_WINDOW_MODSEQ` modifications, see `slot.rs`) |
//! | `subscriptions` | user `\0` mailbox name               | empty |
//! | `users`         | user                                 | `UserRecord`: user, quota_bytes u64 |
//! | `counters`      | `next_mailbox_id`, `next_uidvalidity`| u64 |
//! | `insecure_logins` | user `\0` protocol                 | `InsecureLogin`: user, protocol, first_at i64, last_at i64, ip, client, count u64, notified_at i64 |
//!
//! The mailbox **digest** is the XOR of `MessageRecord::digest()` (a CRC32C over uid,
//! modseq, flags, internaldate and blob hash) of every live record, updated in O(1) per
//! change. Replicas compare it; audit recomputes it (DESIGN invariant 4).
//!
//! # Commit protocol
//! See `writer.rs`: blob file fsync → rename → directory fsync (per group) → one KV batch
//! per request → one journal fsync per group → publish durable snapshot → reply.
//!
//! # Recovery
//! fjall replays its journal at open; a request is either wholly present or wholly absent.
//! Blobs without records are orphans (audit collects them). Open then runs a quick check:
//! header CRC, DB opens, counters and every mailbox header decode and agree (no stored
//! uid at or above uidnext, no change above highestmodseq, `exists` zero exactly when
//! empty); a failing copy is not served (`Slot::check`). The full verification and
//! repair is `audit.rs`.

pub mod audit;
mod blob;
mod clock;
mod codec;
pub mod directory;
mod error;
mod events;
pub mod gate;
mod header;
mod records;
pub mod replica;
mod slot;
mod types;
mod writer;

pub use audit::{
    AuditOptions, AuditProgress, AuditReport, Finding, FindingKind, LocalBlobDirs, NoRepairSource,
    RepairSource,
};
pub use blob::BlobStore;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
pub use events::{Event, EventLog};
pub use gate::LoginGate;
pub use header::SlotHeader;
pub use records::{ChangeKind, InsecureLogin, MailboxHeader, MessageRecord, UserRecord};
pub use replica::{CommitHook, CommittedGroup, MailboxOutcome, ReconcilePlan, ReplicaBatch};
pub use slot::{
    ChangeNotice, CorruptEntry, Entry, KEYSPACE_NAMES, ReadContext, SUBSCRIPTIONS_CHANGED, Slot,
    SlotView, StagedBlob, VANISHED_WINDOW_MODSEQ,
};
pub use types::*;
pub use writer::{KEYWORDS_MAX, NewMessage, Op, OpResult};

/// Longest mailbox name in bytes; longer names are refused with a clear error.
pub const MAILBOX_NAME_BYTES_MAX: usize = 1000;

/// `inbox`, `Inbox/x` … → `INBOX`, `INBOX/x`: INBOX is case-insensitive (RFC 3501 5.1).
pub fn normalize_mailbox_name(name: &str) -> String {
    if name.len() >= 5 && name.as_bytes()[..5].eq_ignore_ascii_case(b"INBOX") {
        let rest = &name[5..];
        if rest.is_empty() || rest.starts_with(SEPARATOR) {
            return format!("INBOX{rest}");
        }
    }
    name.to_string()
}

/// Mailbox names are keys, never paths, but we still refuse anything a client or a later
/// exporter could misread: empty components (`a//b`, leading or trailing `/`), `.` and `..`
/// components, control characters, LIST wildcards, and over-long names.
pub fn validate_mailbox_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::BadMailboxName(why.to_string()));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAILBOX_NAME_BYTES_MAX {
        return bad("the name is too long");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("the name contains control characters");
    }
    if name.contains('*') || name.contains('%') {
        return bad("the name contains a wildcard (* or %)");
    }
    for part in name.split(SEPARATOR) {
        if part.is_empty() {
            return bad("the name has an empty hierarchy level");
        }
        if part == "." || part == ".." {
            return bad("the name has a . or .. level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_names_are_normalised_and_path_tricks_refused() {
        assert_eq!(normalize_mailbox_name("inbox"), "INBOX");
        assert_eq!(normalize_mailbox_name("iNbOx/Sub"), "INBOX/Sub");
        assert_eq!(normalize_mailbox_name("Inboxes"), "Inboxes");
        for bad in [
            "", "a//b", "/a", "a/", "../etc", "a/./b", "x\ny", "a*", "b%",
        ] {
            assert!(validate_mailbox_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_mailbox_name("Work/2026 Reports/Q1 ✓").is_ok());
    }
}
