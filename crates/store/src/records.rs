//! Metadata records and their keys. See `lib.rs` for the full on-disk layout.

use crate::codec::{Dec, Enc};
use crate::error::StoreError;
use crate::types::*;

/// Keyspace names inside `<slot>/meta`.
pub const KS_MAILBOXES: &str = "mailboxes";
pub const KS_NAMES: &str = "names";
pub const KS_MESSAGES: &str = "messages";
pub const KS_CHANGES: &str = "changes";
pub const KS_SUBS: &str = "subscriptions";
pub const KS_USERS: &str = "users";
pub const KS_COUNTERS: &str = "counters";
pub const KS_INSECURE: &str = "insecure_logins";

pub fn mailbox_key(id: MailboxId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub fn name_key(user: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + name.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn user_prefix(user: &str) -> Vec<u8> {
    name_key(user, "")
}

pub fn message_key(id: MailboxId, uid: Uid) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&uid.0.to_be_bytes());
    k
}

pub fn uid_of_message_key(k: &[u8]) -> Option<Uid> {
    let b: [u8; 4] = k.get(8..12)?.try_into().ok()?;
    Some(Uid(u32::from_be_bytes(b)))
}

pub fn change_key(id: MailboxId, modseq: ModSeq, uid: Uid) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..16].copy_from_slice(&modseq.0.to_be_bytes());
    k[16..].copy_from_slice(&uid.0.to_be_bytes());
    k
}

/// Per-mailbox state. One record per mailbox under `mailboxes/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxHeader {
    pub id: MailboxId,
    pub user: String,
    pub name: String,
    pub uidvalidity: UidValidity,
    pub uidnext: Uid,
    pub highestmodseq: ModSeq,
    /// Number of live messages (derivable; audit recomputes it).
    pub exists: u32,
    /// Number of live messages without `\Seen` (derivable).
    pub unseen: u32,
    /// Sum of live message sizes in bytes (derivable; quota usage sums these).
    pub size_bytes: u64,
    /// XOR of `record_digest` over live records (derivable, O(1) per change).
    pub digest: u32,
    pub special_use: u8,
}

impl MailboxHeader {
    pub fn encode(&self) -> Vec<u8> {
        let key = mailbox_key(self.id);
        Enc::new()
            .u64(self.id.0)
            .str(&self.user)
            .str(&self.name)
            .u32(self.uidvalidity.0)
            .u32(self.uidnext.0)
            .u64(self.highestmodseq.0)
            .u32(self.exists)
            .u32(self.unseen)
            .u64(self.size_bytes)
            .u32(self.digest)
            .u8(self.special_use)
            .seal(&key)
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Result<MailboxHeader, StoreError> {
        let mut d = Dec::open(key, v)?;
        let h = MailboxHeader {
            id: MailboxId(d.u64()?),
            user: d.string()?,
            name: d.string()?,
            uidvalidity: UidValidity(d.u32()?),
            uidnext: Uid(d.u32()?),
            highestmodseq: ModSeq(d.u64()?),
            exists: d.u32()?,
            unseen: d.u32()?,
            size_bytes: d.u64()?,
            digest: d.u32()?,
            special_use: d.u8()?,
        };
        if key != mailbox_key(h.id) {
            return Err(StoreError::corrupt_record(
                key,
                "mailbox id does not match key",
            ));
        }
        Ok(h)
    }

    pub fn special_uses(&self) -> Vec<SpecialUse> {
        SpecialUse::from_bits(self.special_use)
    }
}

/// One message in one mailbox, under `messages/<mailbox id><uid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub uid: Uid,
    pub modseq: ModSeq,
    pub flags: Flags,
    pub internaldate: InternalDate,
    pub size: u32,
    pub blob: BlobHash,
}

impl MessageRecord {
    pub fn encode(&self, mailbox: MailboxId) -> Vec<u8> {
        let key = message_key(mailbox, self.uid);
        let mut e = Enc::new()
            .u32(self.uid.0)
            .u64(self.modseq.0)
            .u8(self.flags.system.0)
            .i64(self.internaldate.unix_secs)
            .i16(self.internaldate.zone_minutes)
            .u32(self.size)
            .raw(&self.blob.0)
            .u16(self.flags.keywords.len() as u16);
        for k in &self.flags.keywords {
            e = e.str(k);
        }
        e.seal(&key)
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Result<MessageRecord, StoreError> {
        let mut d = Dec::open(key, v)?;
        let uid = Uid(d.u32()?);
        let modseq = ModSeq(d.u64()?);
        let system = d.u8()?;
        let unix_secs = d.i64()?;
        let zone_minutes = d.i16()?;
        let size = d.u32()?;
        let mut blob = [0u8; 32];
        blob.copy_from_slice(d.raw(32)?);
        let n = d.u16()?;
        let mut keywords = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            keywords.push(d.string()?);
        }
        if uid_of_message_key(key) != Some(uid) {
            return Err(StoreError::corrupt_record(key, "uid does not match key"));
        }
        Ok(MessageRecord {
            uid,
            modseq,
            flags: Flags {
                system: SystemFlags(system),
                keywords,
            },
            internaldate: InternalDate {
                unix_secs,
                zone_minutes,
            },
            size,
            blob: BlobHash(blob),
        })
    }

    /// This record's contribution to its mailbox digest: a CRC of exactly the fields a
    /// replica must agree on (Cyrus's sync_crc idea).
    pub fn digest(&self) -> u32 {
        let mut c = crc32c::crc32c(&self.uid.0.to_le_bytes());
        c = crc32c::crc32c_append(c, &self.modseq.0.to_le_bytes());
        c = crc32c::crc32c_append(c, &[self.flags.system.0]);
        for k in &self.flags.keywords {
            c = crc32c::crc32c_append(c, k.to_ascii_lowercase().as_bytes());
            c = crc32c::crc32c_append(c, b" ");
        }
        c = crc32c::crc32c_append(c, &self.internaldate.unix_secs.to_le_bytes());
        crc32c::crc32c_append(c, &self.blob.0)
    }
}

/// What a `changes` entry records about a uid at a modseq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Appended or flags changed.
    Changed,
    /// Expunged (a tombstone kept for QRESYNC VANISHED).
    Expunged,
}

pub fn encode_change(key: &[u8], kind: ChangeKind) -> Vec<u8> {
    Enc::new()
        .u8(match kind {
            ChangeKind::Changed => 0,
            ChangeKind::Expunged => 1,
        })
        .seal(key)
}

pub fn decode_change(key: &[u8], v: &[u8]) -> Result<ChangeKind, StoreError> {
    let mut d = Dec::open(key, v)?;
    match d.u8()? {
        0 => Ok(ChangeKind::Changed),
        1 => Ok(ChangeKind::Expunged),
        k => Err(StoreError::corrupt_record(
            key,
            &format!("unknown change kind {k}"),
        )),
    }
}

/// Per-user record under `users/<user>`: existence and quota limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: String,
    /// 0 = unlimited.
    pub quota_bytes: u64,
}

impl UserRecord {
    pub fn encode(&self) -> Vec<u8> {
        Enc::new()
            .str(&self.user)
            .u64(self.quota_bytes)
            .seal(self.user.as_bytes())
    }
    pub fn decode(key: &[u8], v: &[u8]) -> Result<UserRecord, StoreError> {
        let mut d = Dec::open(key, v)?;
        Ok(UserRecord {
            user: d.string()?,
            quota_bytes: d.u64()?,
        })
    }
}

/// The latest login of a user over one protocol on a connection without TLS, under
/// `insecure_logins/<user> \0 <protocol>`: one row per user and protocol, so the keyspace
/// is bounded by users x protocols however often a client logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsecureLogin {
    pub user: String,
    /// `imap`, `pop3` or `submission`.
    pub protocol: String,
    /// Unix seconds of the first and the latest insecure login.
    pub first_at: i64,
    pub last_at: i64,
    /// Client IP address of the latest login, as text.
    pub ip: String,
    /// What the client said about itself (IMAP `ID`), empty if nothing.
    pub client: String,
    pub count: u64,
    /// Unix seconds of the last notice sent because of this row; 0 = none.
    pub notified_at: i64,
}

impl InsecureLogin {
    pub fn key(user: &str, protocol: &str) -> Vec<u8> {
        name_key(user, protocol)
    }
    pub fn encode(&self) -> Vec<u8> {
        Enc::new()
            .str(&self.user)
            .str(&self.protocol)
            .i64(self.first_at)
            .i64(self.last_at)
            .str(&self.ip)
            .str(&self.client)
            .u64(self.count)
            .i64(self.notified_at)
            .seal(&Self::key(&self.user, &self.protocol))
    }
    pub fn decode(key: &[u8], v: &[u8]) -> Result<InsecureLogin, StoreError> {
        let mut d = Dec::open(key, v)?;
        Ok(InsecureLogin {
            user: d.string()?,
            protocol: d.string()?,
            first_at: d.i64()?,
            last_at: d.i64()?,
            ip: d.string()?,
            client: d.string()?,
            count: d.u64()?,
            notified_at: d.i64()?,
        })
    }
}

pub fn encode_u64(key: &[u8], v: u64) -> Vec<u8> {
    Enc::new().u64(v).seal(key)
}

pub fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    Dec::open(key, v)?.u64()
}

pub fn encode_empty(key: &[u8]) -> Vec<u8> {
    Enc::new().seal(key)
}

pub fn check_empty(key: &[u8], v: &[u8]) -> Result<(), StoreError> {
    Dec::open(key, v).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_record_round_trips() {
        let r = MessageRecord {
            uid: Uid(42),
            modseq: ModSeq(7),
            flags: Flags::new(SystemFlags::SEEN, ["$Forwarded".to_string()]),
            internaldate: InternalDate {
                unix_secs: 1_700_000_000,
                zone_minutes: -420,
            },
            size: 1234,
            blob: BlobHash::of(b"x"),
        };
        let v = r.encode(MailboxId(3));
        let k = message_key(MailboxId(3), Uid(42));
        assert_eq!(MessageRecord::decode(&k, &v).unwrap(), r);
        let other = message_key(MailboxId(3), Uid(43));
        assert!(MessageRecord::decode(&other, &v).is_err());
    }
}
