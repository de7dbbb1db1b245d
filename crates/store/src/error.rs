use std::path::PathBuf;

/// Everything the store can fail with. Callers map `Corrupt*` to `NO [SERVERBUG]` /
/// `451 4.3.0`; such errors have already raised an alert event.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database error: {0}")]
    Db(String),
    #[error("corrupt blob {hash}: {detail}")]
    CorruptBlob { hash: String, detail: String },
    #[error("corrupt metadata record (key {key}): {detail}")]
    CorruptRecord { key: String, detail: String },
    #[error("corrupt slot header {path}: {detail}")]
    CorruptHeader { path: PathBuf, detail: String },
    #[error("record format error: {0}")]
    Format(String),
    #[error("no such mailbox")]
    NoSuchMailbox,
    #[error("mailbox already exists")]
    MailboxExists,
    #[error("no such user")]
    NoSuchUser,
    #[error("user already exists")]
    UserExists,
    #[error("invalid mailbox name: {0}")]
    BadMailboxName(String),
    #[error("{0}")]
    Refused(String),
    #[error("message too large ({size} bytes, limit {limit})")]
    TooBig { size: u64, limit: u64 },
    /// The write would take the user past `UserRecord::quota_bytes`; nothing was written.
    #[error(
        "over quota: {usage_bytes} bytes used, {adding_bytes} more would pass the limit of {limit_bytes}"
    )]
    OverQuota {
        usage_bytes: u64,
        adding_bytes: u64,
        limit_bytes: u64,
    },
    #[error("slot {slot} is unavailable: {reason}")]
    Unavailable { slot: String, reason: String },
    #[error("slot writer has stopped")]
    WriterGone,
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn corrupt_record(key: &[u8], detail: &str) -> StoreError {
        StoreError::CorruptRecord {
            key: hex(key),
            detail: detail.to_string(),
        }
    }

    /// True for errors that mean stored data failed verification.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptBlob { .. }
                | StoreError::CorruptRecord { .. }
                | StoreError::CorruptHeader { .. }
                | StoreError::Format(_)
        )
    }
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> StoreError {
        StoreError::Db(e.to_string())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
