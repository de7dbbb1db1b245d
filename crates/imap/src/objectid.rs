//! RFC 8474 OBJECTID: stable identifiers for mailboxes and messages.
//!
//! - MAILBOXID: `F<id>-<uidvalidity>` in hex. The store's `MailboxId` comes from a slot
//!   counter that never repeats, and a mailbox keeps both its id and its UIDVALIDITY
//!   across RENAME, which is what RFC 8474 asks (same id after rename, never reused).
//! - EMAILID: `M` + the first 96 bits of the message's BLAKE3 blob hash in hex. Copies
//!   and moves keep the blob, so they keep the id; identical bytes delivered twice
//!   share it too, which RFC 8474 allows (the id names the immutable content).
//! - THREADID: the store keeps no thread index, so it is `NIL` (RFC 8474 5.2: a server
//!   that does not thread returns NIL) and `SEARCH THREADID` matches nothing.

use store::{BlobHash, MailboxHeader};

/// Hex digits of the blob hash kept in an EMAILID (96 bits: collisions are not a
/// practical concern within one user's mail).
const EMAILID_HEX_DIGITS: usize = 24;

pub(crate) fn mailbox_id(h: &MailboxHeader) -> String {
    format!("F{:x}-{:x}", h.id.0, h.uidvalidity.0)
}

pub(crate) fn email_id(blob: &BlobHash) -> String {
    let hex = blob.to_hex();
    format!("M{}", &hex[..EMAILID_HEX_DIGITS.min(hex.len())])
}

/// `EMAILID (M...)` for FETCH.
pub(crate) fn write_email_id(out: &mut Vec<u8>, blob: &BlobHash) {
    out.extend_from_slice(b"EMAILID (");
    out.extend_from_slice(email_id(blob).as_bytes());
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_objectids() {
        let id = email_id(&BlobHash::of(b"hello"));
        assert_eq!(id.len(), 25);
        assert!(id.starts_with('M') && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(id, email_id(&BlobHash::of(b"hello")));
        assert_ne!(id, email_id(&BlobHash::of(b"hello!")));
    }
}
