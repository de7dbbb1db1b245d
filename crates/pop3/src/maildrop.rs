//! The maildrop as one POP3 session sees it: the INBOX at login, numbered 1..=n in UID
//! order, with this session's deletion marks and the messages it retrieved.

use store::{BlobHash, MailboxHeader, SlotView, StoreError, Uid};

use crate::command::MsgNum;

#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub uid: Uid,
    pub size: u64,
    /// `None`: the message's metadata record failed its checksum at login; the message
    /// keeps its number (so the others keep theirs) but cannot be read or deleted.
    pub blob: Option<BlobHash>,
    /// Marked by DELE; undone by RSET; expunged at QUIT.
    pub deleted: bool,
    /// Sent by RETR: gets `\Seen` when the session ends.
    pub retrieved: bool,
}

pub(crate) struct Maildrop {
    /// The INBOX header at login: its id finds current records, its UIDVALIDITY makes
    /// the UIDLs.
    pub mailbox: MailboxHeader,
    pub msgs: Vec<Msg>,
}

/// Why a message number cannot be used; the text is the `-ERR` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    NoSuch { n: u32, count: usize },
    Deleted(u32),
}

impl Lookup {
    pub fn text(&self) -> String {
        match self {
            Lookup::NoSuch { n, count } => {
                format!("No such message {n}; there are {count} messages in the maildrop")
            }
            Lookup::Deleted(n) => format!("Message {n} is deleted"),
        }
    }
}

impl Maildrop {
    /// Snapshot of the user's INBOX (empty if it does not exist).
    pub fn load(view: &SlotView, user: &str) -> Result<Option<Maildrop>, StoreError> {
        let Some(mailbox) = view.mailbox_by_name(user, "INBOX")? else {
            return Ok(None);
        };
        let msgs = view
            .messages(&mailbox)?
            .into_iter()
            .map(|e| match e {
                Ok(r) => Msg {
                    uid: r.uid,
                    size: u64::from(r.size),
                    blob: Some(r.blob),
                    deleted: false,
                    retrieved: false,
                },
                Err(c) => Msg {
                    uid: c.uid,
                    size: 0,
                    blob: None,
                    deleted: false,
                    retrieved: false,
                },
            })
            .collect();
        Ok(Some(Maildrop { mailbox, msgs }))
    }

    /// The message numbered `n`, unless it does not exist or is marked deleted.
    pub fn get(&self, n: MsgNum) -> Result<&Msg, Lookup> {
        let m = self.any(n)?;
        if m.deleted {
            return Err(Lookup::Deleted(n.0));
        }
        Ok(m)
    }

    pub fn get_mut(&mut self, n: MsgNum) -> Result<&mut Msg, Lookup> {
        self.get(n)?;
        let i = n.0 as usize - 1;
        self.msgs
            .get_mut(i)
            .ok_or(Lookup::NoSuch { n: n.0, count: 0 })
    }

    fn any(&self, n: MsgNum) -> Result<&Msg, Lookup> {
        let count = self.msgs.len();
        (n.0 as usize)
            .checked_sub(1)
            .and_then(|i| self.msgs.get(i))
            .ok_or(Lookup::NoSuch { n: n.0, count })
    }

    /// (messages, octets) not marked deleted.
    pub fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(c, o), (_, m)| (c + 1, o + m.size))
    }

    /// Numbered messages not marked deleted.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Msg)> {
        self.msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.deleted)
            .map(|(i, m)| (i as u32 + 1, m))
    }

    /// RFC 1939 7: 1 to 70 characters in 0x21..=0x7E, unique and stable per message.
    pub fn uidl(&self, m: &Msg) -> String {
        format!("{:08X}{:08X}", m.uid.0, self.mailbox.uidvalidity.0)
    }

    pub fn undelete_all(&mut self) {
        for m in &mut self.msgs {
            m.deleted = false;
        }
    }

    pub fn deleted_uids(&self) -> Vec<Uid> {
        self.msgs
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid)
            .collect()
    }

    /// Retrieved: these get `\Seen`. Deletion marks do not matter: without QUIT they
    /// are dropped and the message stays, read.
    pub fn seen_uids(&self) -> Vec<Uid> {
        self.msgs
            .iter()
            .filter(|m| m.retrieved)
            .map(|m| m.uid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{MailboxId, ModSeq, UidValidity};

    fn drop_of(n: u32) -> Maildrop {
        Maildrop {
            mailbox: MailboxHeader {
                id: MailboxId(1),
                user: "u".into(),
                name: "INBOX".into(),
                uidvalidity: UidValidity(0x6543_21ab),
                uidnext: Uid(n + 1),
                highestmodseq: ModSeq(1),
                exists: n,
                unseen: n,
                size_bytes: 0,
                digest: 0,
                special_use: 0,
            },
            msgs: (1..=n)
                .map(|u| Msg {
                    uid: Uid(u * 10),
                    size: u64::from(u) * 100,
                    blob: None,
                    deleted: false,
                    retrieved: false,
                })
                .collect(),
        }
    }

    #[test]
    fn numbering_deletion_and_uidl() {
        let mut d = drop_of(3);
        assert_eq!(d.stat(), (3, 600));
        assert_eq!(d.uidl(&d.msgs[0]), "0000000A654321AB");
        assert!(d.get(MsgNum(3)).is_ok());
        assert_eq!(
            d.get(MsgNum(4)).unwrap_err(),
            Lookup::NoSuch { n: 4, count: 3 }
        );
        d.get_mut(MsgNum(2)).unwrap().deleted = true;
        assert_eq!(d.get(MsgNum(2)).unwrap_err(), Lookup::Deleted(2));
        assert!(d.get_mut(MsgNum(2)).is_err());
        assert_eq!(d.stat(), (2, 400));
        assert_eq!(d.live().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(d.deleted_uids(), vec![Uid(20)]);
        d.get_mut(MsgNum(1)).unwrap().retrieved = true;
        d.msgs[1].retrieved = true;
        assert_eq!(d.seen_uids(), vec![Uid(10), Uid(20)]);
        d.undelete_all();
        assert_eq!(d.stat(), (3, 600));
    }
}
