//! The replication wire format: pure functions over bytes, no I/O.
//!
//! # Frames
//! Every message is one frame (all integers little-endian):
//! ```text
//! offset size  field
//! 0      4     body length n, 9 <= n <= FRAME_BYTES_MAX
//! 4      4     CRC32C of the body
//! 8      1     message kind (see `Msg`)
//! 9      8     epoch of the sender's copy of the slot (fencing, DESIGN invariant 6)
//! 17     n-9   payload, per kind
//! ```
//! A frame whose length is out of bounds, whose CRC differs, whose kind is unknown or whose
//! payload does not decode exactly (no bytes left over) is a protocol error: the connection
//! is dropped and the sync retried; nothing from it is applied.
//!
//! # Payload encoding
//! `u8 u16 u32 u64` fixed width; `bytes` = u32 length + bytes; `str` = `bytes` holding
//! UTF-8; `hash` = 32 raw bytes (BLAKE3); `opt<T>` = u8 0|1 then T; `vec<T>` = u32 count
//! then the items (a count larger than the bytes left could hold is refused before any
//! allocation). Stored records (message records, headers, per-user rows) travel as the
//! sealed bytes the store wrote, so their own CRC32C is checked again by the receiver.
//!
//! # Conversation (master connects, replica answers; one request, one reply)
//! ```text
//! Hello{version, slot, from_host, purpose}  -> HelloOk{copy_id, counters} | Refused{reason}
//! ListUsers{after, limit}                   -> Users{names}
//! GetState{users}                           -> State{users}
//! ListRecords{mailbox, from, limit}         -> Records{mailbox, entries, next}
//! Offer{hashes}                             -> Need{hashes}; then one Blob{hash, bytes}
//!                                              per needed hash (no replies)
//! Apply{batch}                              -> Applied{outcomes}   (after the replica's fsync)
//! GetBlobs{hashes}                          -> Blob{..}*, BlobsEnd{missing, corrupt}
//! Ping                                      -> Pong
//! ```
//! Either side may answer anything with `Error{reason}` and close.

use store::replica::{
    Counters, Expunge, MailboxOutcome, MailboxUpdate, ReplicaBatch, UserKeyspace, UserRow,
    UserUpdate,
};
use store::{BlobHash, Epoch, MailboxId, ModSeq, Uid};

pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame body: one message blob (64 MiB by default, `limits.message_bytes_max`) plus
/// room. Bigger messages cannot be replicated and are reported, not truncated.
pub const FRAME_BYTES_MAX: usize = 128 << 20;
pub const FRAME_HEADER_BYTES: usize = 8;
const BODY_HEADER_BYTES: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Keep the replica in sync (the long-lived connection of a master).
    Sync,
    /// Fetch blobs for a repair; changes nothing on the replica.
    Fetch,
}

/// A mailbox header as a copy stores it: id and sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub id: MailboxId,
    pub value: Vec<u8>,
}

/// A user's state as the replica reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireUserState {
    pub user: String,
    pub rows: Vec<UserRow>,
    pub mailboxes: Vec<RawHeader>,
    pub complete: bool,
}

/// One message record of a `Records` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireRecord {
    Good {
        uid: Uid,
        value: Vec<u8>,
    },
    /// The replica's record at this uid failed its CRC.
    Corrupt {
        uid: Uid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello {
        version: u16,
        slot: String,
        from_host: String,
        purpose: Purpose,
    },
    HelloOk {
        copy_id: String,
        counters: Counters,
    },
    Refused {
        reason: String,
    },
    ListUsers {
        after: Option<String>,
        limit: u32,
    },
    Users {
        names: Vec<String>,
    },
    GetState {
        users: Vec<String>,
    },
    State {
        users: Vec<WireUserState>,
    },
    ListRecords {
        mailbox: MailboxId,
        from: Uid,
        limit: u32,
    },
    Records {
        mailbox: MailboxId,
        entries: Vec<WireRecord>,
        next: Option<Uid>,
    },
    Offer {
        hashes: Vec<BlobHash>,
    },
    Need {
        hashes: Vec<BlobHash>,
    },
    Blob {
        hash: BlobHash,
        bytes: Vec<u8>,
    },
    Apply {
        batch: ReplicaBatch,
    },
    Applied {
        outcomes: Vec<(MailboxId, MailboxOutcome)>,
    },
    GetBlobs {
        hashes: Vec<BlobHash>,
    },
    BlobsEnd {
        missing: Vec<BlobHash>,
        corrupt: Vec<BlobHash>,
    },
    Ping,
    Pong,
    Error {
        reason: String,
    },
}

impl Msg {
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => 1,
            Msg::HelloOk { .. } => 2,
            Msg::Refused { .. } => 3,
            Msg::ListUsers { .. } => 4,
            Msg::Users { .. } => 5,
            Msg::GetState { .. } => 6,
            Msg::State { .. } => 7,
            Msg::ListRecords { .. } => 8,
            Msg::Records { .. } => 9,
            Msg::Offer { .. } => 10,
            Msg::Need { .. } => 11,
            Msg::Blob { .. } => 12,
            Msg::Apply { .. } => 13,
            Msg::Applied { .. } => 14,
            Msg::GetBlobs { .. } => 15,
            Msg::BlobsEnd { .. } => 16,
            Msg::Ping => 17,
            Msg::Pong => 18,
            Msg::Error { .. } => 19,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::HelloOk { .. } => "HelloOk",
            Msg::Refused { .. } => "Refused",
            Msg::ListUsers { .. } => "ListUsers",
            Msg::Users { .. } => "Users",
            Msg::GetState { .. } => "GetState",
            Msg::State { .. } => "State",
            Msg::ListRecords { .. } => "ListRecords",
            Msg::Records { .. } => "Records",
            Msg::Offer { .. } => "Offer",
            Msg::Need { .. } => "Need",
            Msg::Blob { .. } => "Blob",
            Msg::Apply { .. } => "Apply",
            Msg::Applied { .. } => "Applied",
            Msg::GetBlobs { .. } => "GetBlobs",
            Msg::BlobsEnd { .. } => "BlobsEnd",
            Msg::Ping => "Ping",
            Msg::Pong => "Pong",
            Msg::Error { .. } => "Error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub epoch: Epoch,
    pub msg: Msg,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame length {0} out of bounds")]
    Length(usize),
    #[error("frame CRC32C mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
    #[error("frame kind {0} unknown")]
    Kind(u8),
    #[error("frame payload malformed: {0}")]
    Payload(&'static str),
}

// ---- encoding --------------------------------------------------------------------------

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        // Frames are bounded far below 4 GiB, so every length fits.
        self.u32(n as u32);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn hash(&mut self, h: &BlobHash) {
        self.0.extend_from_slice(&h.0);
    }
    fn hashes(&mut self, hs: &[BlobHash]) {
        self.len(hs.len());
        for h in hs {
            self.hash(h);
        }
    }
    fn strs(&mut self, v: &[String]) {
        self.len(v.len());
        for s in v {
            self.str(s);
        }
    }
    fn opt_hash(&mut self, h: &Option<BlobHash>) {
        match h {
            Some(h) => {
                self.u8(1);
                self.hash(h);
            }
            None => self.u8(0),
        }
    }
    fn row(&mut self, r: &UserRow) {
        self.u8(r.keyspace.code());
        self.bytes(&r.key);
        self.bytes(&r.value);
    }
    fn expunge(&mut self, e: &Expunge) {
        self.u32(e.uid.0);
        self.u64(e.modseq.0);
        self.opt_hash(&e.blob);
    }
    fn outcome(&mut self, o: &MailboxOutcome) {
        match o {
            MailboxOutcome::Applied { digest, complete } => {
                self.u8(0);
                self.u32(*digest);
                self.u8(u8::from(*complete));
            }
            MailboxOutcome::Mismatch { digest, detail } => {
                self.u8(1);
                self.u32(*digest);
                self.str(detail);
            }
            MailboxOutcome::Ahead {
                uidnext,
                highestmodseq,
            } => {
                self.u8(2);
                self.u32(uidnext.0);
                self.u64(highestmodseq.0);
            }
            MailboxOutcome::Divergent { uid } => {
                self.u8(3);
                self.u32(uid.0);
            }
            MailboxOutcome::MissingBlob(h) => {
                self.u8(4);
                self.hash(h);
            }
            MailboxOutcome::Invalid(why) => {
                self.u8(5);
                self.str(why);
            }
        }
    }
    fn batch(&mut self, b: &ReplicaBatch) {
        self.u64(b.counters.next_mailbox_id);
        self.u64(b.counters.next_uidvalidity);
        self.len(b.delete_mailboxes.len());
        for id in &b.delete_mailboxes {
            self.u64(id.0);
        }
        self.len(b.mailboxes.len());
        for m in &b.mailboxes {
            self.u64(m.id.0);
            self.bytes(&m.header);
            self.u64(m.upto.0);
            self.u8(u8::from(m.partial));
            self.len(m.upserts.len());
            for (uid, v) in &m.upserts {
                self.u32(uid.0);
                self.bytes(v);
            }
            self.len(m.expunges.len());
            for e in &m.expunges {
                self.expunge(e);
            }
        }
        self.len(b.users.len());
        for u in &b.users {
            self.str(&u.user);
            match &u.rows {
                Some(rows) => {
                    self.u8(1);
                    self.len(rows.len());
                    for r in rows {
                        self.row(r);
                    }
                }
                None => self.u8(0),
            }
            self.len(u.mailboxes.len());
            for id in &u.mailboxes {
                self.u64(id.0);
            }
        }
    }
}

/// Encodes a whole frame, header included.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut o = Out(Vec::with_capacity(64));
    o.0.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    o.u8(frame.msg.kind());
    o.u64(frame.epoch.0);
    match &frame.msg {
        Msg::Hello {
            version,
            slot,
            from_host,
            purpose,
        } => {
            o.u16(*version);
            o.str(slot);
            o.str(from_host);
            o.u8(match purpose {
                Purpose::Sync => 0,
                Purpose::Fetch => 1,
            });
        }
        Msg::HelloOk { copy_id, counters } => {
            o.str(copy_id);
            o.u64(counters.next_mailbox_id);
            o.u64(counters.next_uidvalidity);
        }
        Msg::Refused { reason } | Msg::Error { reason } => o.str(reason),
        Msg::ListUsers { after, limit } => {
            match after {
                Some(a) => {
                    o.u8(1);
                    o.str(a);
                }
                None => o.u8(0),
            }
            o.u32(*limit);
        }
        Msg::Users { names } => o.strs(names),
        Msg::GetState { users } => o.strs(users),
        Msg::State { users } => {
            o.len(users.len());
            for u in users {
                o.str(&u.user);
                o.u8(u8::from(u.complete));
                o.len(u.rows.len());
                for r in &u.rows {
                    o.row(r);
                }
                o.len(u.mailboxes.len());
                for h in &u.mailboxes {
                    o.u64(h.id.0);
                    o.bytes(&h.value);
                }
            }
        }
        Msg::ListRecords {
            mailbox,
            from,
            limit,
        } => {
            o.u64(mailbox.0);
            o.u32(from.0);
            o.u32(*limit);
        }
        Msg::Records {
            mailbox,
            entries,
            next,
        } => {
            o.u64(mailbox.0);
            o.len(entries.len());
            for e in entries {
                match e {
                    WireRecord::Good { uid, value } => {
                        o.u8(0);
                        o.u32(uid.0);
                        o.bytes(value);
                    }
                    WireRecord::Corrupt { uid } => {
                        o.u8(1);
                        o.u32(uid.0);
                    }
                }
            }
            match next {
                Some(u) => {
                    o.u8(1);
                    o.u32(u.0);
                }
                None => o.u8(0),
            }
        }
        Msg::Offer { hashes } | Msg::Need { hashes } | Msg::GetBlobs { hashes } => o.hashes(hashes),
        Msg::Blob { hash, bytes } => {
            o.hash(hash);
            o.bytes(bytes);
        }
        Msg::Apply { batch } => o.batch(batch),
        Msg::Applied { outcomes } => {
            o.len(outcomes.len());
            for (id, out) in outcomes {
                o.u64(id.0);
                o.outcome(out);
            }
        }
        Msg::BlobsEnd { missing, corrupt } => {
            o.hashes(missing);
            o.hashes(corrupt);
        }
        Msg::Ping | Msg::Pong => {}
    }
    let mut buf = o.0;
    let body_len = buf.len() - FRAME_HEADER_BYTES;
    let crc = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..]);
    buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

// ---- decoding --------------------------------------------------------------------------

/// Checks a frame header; returns the body length to read next.
pub fn body_len(header: &[u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    let n = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(BODY_HEADER_BYTES..=FRAME_BYTES_MAX).contains(&n) {
        return Err(WireError::Length(n));
    }
    Ok(n)
}

struct In<'a> {
    b: &'a [u8],
}

type R<T> = Result<T, WireError>;

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.b.len() < n {
            return Err(WireError::Payload("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> R<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn flag(&mut self) -> R<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Payload("flag is neither 0 nor 1")),
        }
    }
    /// A count of items each at least `min_item_bytes` long, refused if the bytes left
    /// could not hold that many (so a damaged count never drives an allocation).
    fn count(&mut self, min_item_bytes: usize) -> R<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.b.len() {
            return Err(WireError::Payload("count larger than the frame"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> R<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> R<String> {
        String::from_utf8(self.bytes()?).map_err(|_| WireError::Payload("string not UTF-8"))
    }
    fn hash(&mut self) -> R<BlobHash> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(BlobHash(a))
    }
    fn hashes(&mut self) -> R<Vec<BlobHash>> {
        let n = self.count(32)?;
        (0..n).map(|_| self.hash()).collect()
    }
    fn strs(&mut self) -> R<Vec<String>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }
    fn opt_hash(&mut self) -> R<Option<BlobHash>> {
        Ok(if self.flag()? {
            Some(self.hash()?)
        } else {
            None
        })
    }
    fn row(&mut self) -> R<UserRow> {
        let keyspace = UserKeyspace::from_code(self.u8()?)
            .ok_or(WireError::Payload("unknown per-user keyspace"))?;
        Ok(UserRow {
            keyspace,
            key: self.bytes()?,
            value: self.bytes()?,
        })
    }
    fn rows(&mut self) -> R<Vec<UserRow>> {
        let n = self.count(9)?;
        (0..n).map(|_| self.row()).collect()
    }
    fn expunge(&mut self) -> R<Expunge> {
        Ok(Expunge {
            uid: Uid(self.u32()?),
            modseq: ModSeq(self.u64()?),
            blob: self.opt_hash()?,
        })
    }
    fn outcome(&mut self) -> R<MailboxOutcome> {
        Ok(match self.u8()? {
            0 => MailboxOutcome::Applied {
                digest: self.u32()?,
                complete: self.flag()?,
            },
            1 => MailboxOutcome::Mismatch {
                digest: self.u32()?,
                detail: self.str()?,
            },
            2 => MailboxOutcome::Ahead {
                uidnext: Uid(self.u32()?),
                highestmodseq: ModSeq(self.u64()?),
            },
            3 => MailboxOutcome::Divergent {
                uid: Uid(self.u32()?),
            },
            4 => MailboxOutcome::MissingBlob(self.hash()?),
            5 => MailboxOutcome::Invalid(self.str()?),
            _ => return Err(WireError::Payload("unknown outcome")),
        })
    }
    fn batch(&mut self, epoch: Epoch) -> R<ReplicaBatch> {
        let counters = Counters {
            next_mailbox_id: self.u64()?,
            next_uidvalidity: self.u64()?,
        };
        let n = self.count(8)?;
        let delete_mailboxes = (0..n)
            .map(|_| self.u64().map(MailboxId))
            .collect::<R<_>>()?;
        let n = self.count(25)?;
        let mut mailboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let id = MailboxId(self.u64()?);
            let header = self.bytes()?;
            let upto = ModSeq(self.u64()?);
            let partial = self.flag()?;
            let k = self.count(8)?;
            let upserts = (0..k)
                .map(|_| Ok((Uid(self.u32()?), self.bytes()?)))
                .collect::<R<_>>()?;
            let k = self.count(13)?;
            let expunges = (0..k).map(|_| self.expunge()).collect::<R<_>>()?;
            mailboxes.push(MailboxUpdate {
                id,
                header,
                upto,
                partial,
                upserts,
                expunges,
            });
        }
        let n = self.count(9)?;
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.str()?;
            let rows = if self.flag()? {
                Some(self.rows()?)
            } else {
                None
            };
            let k = self.count(8)?;
            let ids = (0..k)
                .map(|_| self.u64().map(MailboxId))
                .collect::<R<_>>()?;
            users.push(UserUpdate {
                user,
                rows,
                mailboxes: ids,
            });
        }
        Ok(ReplicaBatch {
            epoch,
            counters,
            delete_mailboxes,
            mailboxes,
            users,
        })
    }
}

/// Decodes a frame body (after [`body_len`]): CRC first, then kind, epoch and payload.
pub fn decode_body(crc: u32, body: &[u8]) -> Result<Frame, WireError> {
    let computed = crc32c::crc32c(body);
    if computed != crc {
        return Err(WireError::Crc {
            stored: crc,
            computed,
        });
    }
    let mut i = In { b: body };
    let kind = i.u8()?;
    let epoch = Epoch(i.u64()?);
    let msg = match kind {
        1 => Msg::Hello {
            version: i.u16()?,
            slot: i.str()?,
            from_host: i.str()?,
            purpose: match i.u8()? {
                0 => Purpose::Sync,
                1 => Purpose::Fetch,
                _ => return Err(WireError::Payload("unknown purpose")),
            },
        },
        2 => Msg::HelloOk {
            copy_id: i.str()?,
            counters: Counters {
                next_mailbox_id: i.u64()?,
                next_uidvalidity: i.u64()?,
            },
        },
        3 => Msg::Refused { reason: i.str()? },
        4 => Msg::ListUsers {
            after: if i.flag()? { Some(i.str()?) } else { None },
            limit: i.u32()?,
        },
        5 => Msg::Users { names: i.strs()? },
        6 => Msg::GetState { users: i.strs()? },
        7 => {
            let n = i.count(13)?;
            let mut users = Vec::with_capacity(n);
            for _ in 0..n {
                let user = i.str()?;
                let complete = i.flag()?;
                let rows = i.rows()?;
                let k = i.count(12)?;
                let mailboxes = (0..k)
                    .map(|_| {
                        Ok(RawHeader {
                            id: MailboxId(i.u64()?),
                            value: i.bytes()?,
                        })
                    })
                    .collect::<R<_>>()?;
                users.push(WireUserState {
                    user,
                    rows,
                    mailboxes,
                    complete,
                });
            }
            Msg::State { users }
        }
        8 => Msg::ListRecords {
            mailbox: MailboxId(i.u64()?),
            from: Uid(i.u32()?),
            limit: i.u32()?,
        },
        9 => {
            let mailbox = MailboxId(i.u64()?);
            let n = i.count(5)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(match i.u8()? {
                    0 => WireRecord::Good {
                        uid: Uid(i.u32()?),
                        value: i.bytes()?,
                    },
                    1 => WireRecord::Corrupt { uid: Uid(i.u32()?) },
                    _ => return Err(WireError::Payload("unknown record entry")),
                });
            }
            let next = if i.flag()? { Some(Uid(i.u32()?)) } else { None };
            Msg::Records {
                mailbox,
                entries,
                next,
            }
        }
        10 => Msg::Offer {
            hashes: i.hashes()?,
        },
        11 => Msg::Need {
            hashes: i.hashes()?,
        },
        12 => Msg::Blob {
            hash: i.hash()?,
            bytes: i.bytes()?,
        },
        13 => Msg::Apply {
            batch: i.batch(epoch)?,
        },
        14 => {
            let n = i.count(9)?;
            let outcomes = (0..n)
                .map(|_| Ok((MailboxId(i.u64()?), i.outcome()?)))
                .collect::<R<_>>()?;
            Msg::Applied { outcomes }
        }
        15 => Msg::GetBlobs {
            hashes: i.hashes()?,
        },
        16 => Msg::BlobsEnd {
            missing: i.hashes()?,
            corrupt: i.hashes()?,
        },
        17 => Msg::Ping,
        18 => Msg::Pong,
        19 => Msg::Error { reason: i.str()? },
        k => return Err(WireError::Kind(k)),
    };
    if !i.b.is_empty() {
        return Err(WireError::Payload("bytes left over after the payload"));
    }
    Ok(Frame { epoch, msg })
}

/// Decodes one whole frame held in `buf` (header and body), for tests and tools.
pub fn decode(buf: &[u8]) -> Result<Frame, WireError> {
    let header: [u8; FRAME_HEADER_BYTES] = buf
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Length(buf.len()))?;
    let n = body_len(&header)?;
    if buf.len() != FRAME_HEADER_BYTES + n {
        return Err(WireError::Length(buf.len()));
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    decode_body(crc, &buf[FRAME_HEADER_BYTES..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(n: u8) -> BlobHash {
        BlobHash([n; 32])
    }

    fn samples() -> Vec<Msg> {
        let batch = ReplicaBatch {
            epoch: Epoch(7),
            counters: Counters {
                next_mailbox_id: 9,
                next_uidvalidity: 1234,
            },
            delete_mailboxes: vec![MailboxId(3)],
            mailboxes: vec![MailboxUpdate {
                id: MailboxId(4),
                header: vec![1, 2, 3],
                upto: ModSeq(12),
                partial: true,
                upserts: vec![(Uid(5), vec![9; 40])],
                expunges: vec![
                    Expunge {
                        uid: Uid(2),
                        modseq: ModSeq(11),
                        blob: Some(hash(1)),
                    },
                    Expunge {
                        uid: Uid(3),
                        modseq: ModSeq(12),
                        blob: None,
                    },
                ],
            }],
            users: vec![UserUpdate {
                user: "a@x.org".into(),
                rows: Some(vec![UserRow {
                    keyspace: UserKeyspace::Subscriptions,
                    key: b"a@x.org\0INBOX".to_vec(),
                    value: vec![1, 0, 0, 0, 0],
                }]),
                mailboxes: vec![MailboxId(4)],
            }],
        };
        vec![
            Msg::Hello {
                version: PROTOCOL_VERSION,
                slot: "s1".into(),
                from_host: "a".into(),
                purpose: Purpose::Sync,
            },
            Msg::HelloOk {
                copy_id: "b".into(),
                counters: Counters::default(),
            },
            Msg::Refused {
                reason: "epoch".into(),
            },
            Msg::ListUsers {
                after: Some("a".into()),
                limit: 100,
            },
            Msg::Users {
                names: vec!["a".into(), "b".into()],
            },
            Msg::GetState {
                users: vec!["a".into()],
            },
            Msg::State {
                users: vec![WireUserState {
                    user: "a".into(),
                    rows: vec![],
                    mailboxes: vec![RawHeader {
                        id: MailboxId(1),
                        value: vec![4; 20],
                    }],
                    complete: true,
                }],
            },
            Msg::ListRecords {
                mailbox: MailboxId(1),
                from: Uid(1),
                limit: 10,
            },
            Msg::Records {
                mailbox: MailboxId(1),
                entries: vec![
                    WireRecord::Good {
                        uid: Uid(1),
                        value: vec![1, 2],
                    },
                    WireRecord::Corrupt { uid: Uid(2) },
                ],
                next: Some(Uid(3)),
            },
            Msg::Offer {
                hashes: vec![hash(1), hash(2)],
            },
            Msg::Need { hashes: vec![] },
            Msg::Blob {
                hash: hash(3),
                bytes: b"Subject: x\r\n\r\n".to_vec(),
            },
            Msg::Apply { batch },
            Msg::Applied {
                outcomes: vec![
                    (
                        MailboxId(1),
                        MailboxOutcome::Applied {
                            digest: 5,
                            complete: true,
                        },
                    ),
                    (
                        MailboxId(2),
                        MailboxOutcome::Mismatch {
                            digest: 6,
                            detail: "d".into(),
                        },
                    ),
                    (
                        MailboxId(3),
                        MailboxOutcome::Ahead {
                            uidnext: Uid(4),
                            highestmodseq: ModSeq(5),
                        },
                    ),
                    (MailboxId(4), MailboxOutcome::Divergent { uid: Uid(4) }),
                    (MailboxId(5), MailboxOutcome::MissingBlob(hash(5))),
                    (MailboxId(6), MailboxOutcome::Invalid("x".into())),
                ],
            },
            Msg::GetBlobs {
                hashes: vec![hash(9)],
            },
            Msg::BlobsEnd {
                missing: vec![hash(1)],
                corrupt: vec![hash(2)],
            },
            Msg::Ping,
            Msg::Pong,
            Msg::Error {
                reason: "bye".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in samples() {
            let f = Frame {
                epoch: Epoch(7),
                msg,
            };
            let b = encode(&f);
            assert_eq!(decode(&b).unwrap(), f, "{}", f.msg.name());
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_frame_is_refused() {
        for msg in samples() {
            let b = encode(&Frame {
                epoch: Epoch(2),
                msg,
            });
            for bit in 0..b.len() * 8 {
                let mut bad = b.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&bad).is_err(), "flip of bit {bit} accepted");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_rarely_decode(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let crc = crc32c::crc32c(&body);
            let _ = decode_body(crc, &body);
        }

        #[test]
        fn blobs_and_names_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..5000),
                                      names in proptest::collection::vec(".{0,40}", 0..20),
                                      epoch in any::<u64>()) {
            for msg in [Msg::Blob { hash: BlobHash::of(&bytes), bytes: bytes.clone() },
                        Msg::Users { names: names.clone() }] {
                let f = Frame { epoch: Epoch(epoch), msg };
                prop_assert_eq!(decode(&encode(&f)).unwrap(), f);
            }
        }
    }
}
