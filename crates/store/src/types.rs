//! Domain newtypes: numbers that must never be confused with one another.

use std::fmt;

/// A message UID within one mailbox and one UIDVALIDITY. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(pub u32);

/// RFC 7162 modification sequence. Per mailbox, strictly increasing, never goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ModSeq(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UidValidity(pub u32);

/// Slot-unique, never reused mailbox identity. Survives RENAME (it is the OBJECTID
/// MAILBOXID of RFC 8474).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxId(pub u64);

/// A slot's fencing generation (DESIGN invariant 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// BLAKE3 of a message's bytes; also the blob's file name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<BlobHash> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(BlobHash(out))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// System flags as a bit set. `\Recent` is session state and never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SystemFlags(pub u8);

impl SystemFlags {
    pub const SEEN: u8 = 1;
    pub const ANSWERED: u8 = 2;
    pub const FLAGGED: u8 = 4;
    pub const DELETED: u8 = 8;
    pub const DRAFT: u8 = 16;
    pub const ALL: u8 = 31;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A complete flag state of one message: system flags plus keyword names.
/// Keywords are kept sorted and de-duplicated case-insensitively (IMAP keywords are
/// case-insensitive) so equal states compare equal and digest identically.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Flags {
    pub system: SystemFlags,
    pub keywords: Vec<String>,
}

impl Flags {
    pub fn new(system: u8, keywords: impl IntoIterator<Item = String>) -> Flags {
        let mut f = Flags {
            system: SystemFlags(system & SystemFlags::ALL),
            keywords: Vec::new(),
        };
        for k in keywords {
            f.add_keyword(&k);
        }
        f
    }

    pub fn has_keyword(&self, k: &str) -> bool {
        self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k))
    }

    pub fn add_keyword(&mut self, k: &str) {
        if !self.has_keyword(k) {
            self.keywords.push(k.to_string());
            self.keywords.sort_by_key(|a| a.to_ascii_lowercase());
        }
    }

    pub fn remove_keyword(&mut self, k: &str) {
        self.keywords.retain(|x| !x.eq_ignore_ascii_case(k));
    }
}

/// How a STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    Replace,
    Add,
    Remove,
}

/// Internal date: seconds since the Unix epoch plus the zone offset the client gave
/// (kept so `INTERNALDATE` renders as the client wrote it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct InternalDate {
    pub unix_secs: i64,
    pub zone_minutes: i16,
}

/// RFC 6154 special-use of a mailbox, stored as a bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
}

impl SpecialUse {
    pub const LIST: [SpecialUse; 7] = [
        SpecialUse::All,
        SpecialUse::Archive,
        SpecialUse::Drafts,
        SpecialUse::Flagged,
        SpecialUse::Junk,
        SpecialUse::Sent,
        SpecialUse::Trash,
    ];

    pub fn bit(self) -> u8 {
        match self {
            SpecialUse::All => 1,
            SpecialUse::Archive => 2,
            SpecialUse::Drafts => 4,
            SpecialUse::Flagged => 8,
            SpecialUse::Junk => 16,
            SpecialUse::Sent => 32,
            SpecialUse::Trash => 64,
        }
    }

    pub fn from_bits(bits: u8) -> Vec<SpecialUse> {
        SpecialUse::LIST
            .into_iter()
            .filter(|s| bits & s.bit() != 0)
            .collect()
    }

    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }
}

/// The folders every new account gets (name, special-use).
pub const DEFAULT_FOLDERS: [(&str, Option<SpecialUse>); 6] = [
    ("INBOX", None),
    ("Drafts", Some(SpecialUse::Drafts)),
    ("Sent", Some(SpecialUse::Sent)),
    ("Junk", Some(SpecialUse::Junk)),
    ("Trash", Some(SpecialUse::Trash)),
    ("Archive", Some(SpecialUse::Archive)),
];

/// The hierarchy separator of every mailbox name.
pub const SEPARATOR: char = '/';
