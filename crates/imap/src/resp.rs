//! Completion results and small response-rendering helpers shared by the commands.

use imap_proto::Flag;
use store::{Flags, StoreError, SystemFlags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    No,
    Bad,
}

/// The tagged completion of a command: status plus text (which may start with a
/// `[CODE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: Status,
    pub text: String,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply {
            status: Status::Ok,
            text: text.into(),
        }
    }

    pub fn no(text: impl Into<String>) -> Reply {
        Reply {
            status: Status::No,
            text: text.into(),
        }
    }

    pub fn bad(text: impl Into<String>) -> Reply {
        Reply {
            status: Status::Bad,
            text: text.into(),
        }
    }

    pub fn status_word(&self) -> &'static str {
        match self.status {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
        }
    }
}

/// The text every damaged-message failure carries (DESIGN invariant 3).
pub(crate) fn damaged(uids: &[u32]) -> Reply {
    match uids {
        [one] => Reply::no(format!(
            "[SERVERBUG] message {one} is damaged and cannot be read; the operators have been alerted"
        )),
        many => Reply::no(format!(
            "[SERVERBUG] messages {} are damaged and cannot be read; the operators have been alerted",
            uid_set(many)
        )),
    }
}

/// Maps a store failure to the response a client should see, with a next step.
pub(crate) fn store_error(e: &StoreError) -> Reply {
    match e {
        StoreError::NoSuchMailbox => Reply::no("[NONEXISTENT] No such mailbox"),
        StoreError::MailboxExists => Reply::no("[ALREADYEXISTS] Mailbox already exists"),
        StoreError::BadMailboxName(why) => {
            Reply::no(format!("[CANNOT] Invalid mailbox name: {why}"))
        }
        StoreError::TooBig { size, limit } => Reply::no(format!(
            "[TOOBIG] Message of {size} bytes is over the limit of {limit} bytes"
        )),
        StoreError::Refused(why) => Reply::no(format!("[CANNOT] {why}")),
        StoreError::OverQuota {
            usage_bytes,
            limit_bytes,
            ..
        } => Reply::no(format!(
            "[OVERQUOTA] Your mailbox is full ({usage_bytes} of {limit_bytes} bytes used); delete some messages and expunge"
        )),
        StoreError::Unavailable { .. } | StoreError::WriterGone | StoreError::NoSuchUser => {
            Reply::no("[UNAVAILABLE] Your mailbox store is unavailable; try again in a few minutes")
        }
        e if e.is_corruption() => Reply::no(
            "[SERVERBUG] Stored data is damaged and cannot be read; the operators have been alerted",
        ),
        StoreError::Io { .. } | StoreError::Db(_) => {
            Reply::no("[UNAVAILABLE] Temporary storage failure; try again in a few minutes")
        }
        _ => Reply::no("[SERVERBUG] Internal error"),
    }
}

/// Flags as the store keeps them, from a client's flag list. `\Recent` is ignored
/// (clients cannot set it, RFC 3501 2.3.2); unknown `\System` flags are refused.
pub(crate) fn to_store_flags(list: &[Flag]) -> Result<Flags, String> {
    let mut f = Flags::default();
    for flag in list {
        match flag {
            Flag::Seen => f.system.0 |= SystemFlags::SEEN,
            Flag::Answered => f.system.0 |= SystemFlags::ANSWERED,
            Flag::Flagged => f.system.0 |= SystemFlags::FLAGGED,
            Flag::Deleted => f.system.0 |= SystemFlags::DELETED,
            Flag::Draft => f.system.0 |= SystemFlags::DRAFT,
            Flag::Recent => {}
            Flag::Keyword(k) => f.add_keyword(k),
            Flag::Extension(e) => return Err(format!("unknown system flag \\{e}")),
        }
    }
    Ok(f)
}

/// `(\Seen \Flagged $Label1)` plus `\Recent` when the message is recent to this session.
pub(crate) fn write_flags(out: &mut Vec<u8>, flags: &Flags, recent: bool) {
    out.push(b'(');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, s: &str| {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(s.as_bytes());
    };
    let sys = flags.system;
    for (bit, name) in [
        (SystemFlags::SEEN, "\\Seen"),
        (SystemFlags::ANSWERED, "\\Answered"),
        (SystemFlags::FLAGGED, "\\Flagged"),
        (SystemFlags::DELETED, "\\Deleted"),
        (SystemFlags::DRAFT, "\\Draft"),
    ] {
        if sys.has(bit) {
            put(out, name);
        }
    }
    if recent {
        put(out, "\\Recent");
    }
    for k in &flags.keywords {
        put(out, k);
    }
    out.push(b')');
}

/// A compact set of numbers: `1:3,7,9:10`. Input order is kept (runs are merged only
/// when ascending by one), so COPYUID source and destination sets stay aligned.
pub(crate) fn uid_set(nums: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) && end != u32::MAX {
            end = nums[i + 1];
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn flags_render_in_a_stable_order() {
        let f = Flags::new(
            SystemFlags::SEEN | SystemFlags::DELETED,
            ["$Junk".to_string()],
        );
        let mut out = Vec::new();
        write_flags(&mut out, &f, true);
        assert_eq!(out, b"(\\Seen \\Deleted \\Recent $Junk)");
    }
}
