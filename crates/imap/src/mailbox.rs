//! Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE,
//! LIST (wildcards, implied `\Noselect` parents, CHILDREN, SPECIAL-USE, the RFC 5258
//! selection/return options the parser accepts), LSUB, STATUS.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imap_proto::write::encode_mailbox;
use imap_proto::{ListArgs, StatusItem};
use store::{MailboxHeader, Op, SEPARATOR, SlotView, SpecialUse, SystemFlags};

use crate::resp::{Reply, store_error};
use crate::selected::{Lines, Selected};
use crate::session::Session;

/// Longest LIST pattern accepted: matching costs pattern x name per mailbox.
const PATTERN_CHARS_MAX: usize = 1024;

fn to_store_special(u: &imap_proto::SpecialUse) -> SpecialUse {
    match u {
        imap_proto::SpecialUse::All => SpecialUse::All,
        imap_proto::SpecialUse::Archive => SpecialUse::Archive,
        imap_proto::SpecialUse::Drafts => SpecialUse::Drafts,
        imap_proto::SpecialUse::Flagged => SpecialUse::Flagged,
        imap_proto::SpecialUse::Junk => SpecialUse::Junk,
        imap_proto::SpecialUse::Sent => SpecialUse::Sent,
        imap_proto::SpecialUse::Trash => SpecialUse::Trash,
    }
}

/// LIST wildcard match: `*` matches anything, `%` anything but the separator.
/// Dynamic programming, O(pattern x name), no backtracking blow-up.
pub(crate) fn list_match(pattern: &[char], name: &[char]) -> bool {
    let mut dp = vec![false; name.len() + 1];
    dp[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            '*' | '%' => {
                let mut reach = false;
                for j in 0..=name.len() {
                    // `reach`: some dp[k], k <= j, true with name[k..j] free of '/' for '%'.
                    if dp[j] {
                        reach = true;
                    }
                    next[j] = reach;
                    if p == '%' && j < name.len() && name[j] == SEPARATOR {
                        reach = false;
                    }
                }
            }
            c => {
                for j in 0..name.len() {
                    if dp[j] && name[j] == c {
                        next[j + 1] = true;
                    }
                }
            }
        }
        dp = next;
    }
    dp[name.len()]
}

#[derive(Default)]
struct Node {
    exists: bool,
    special: u8,
    has_children: bool,
}

/// Every mailbox plus the implied parents of nested names (`a/b/c` implies `a`, `a/b`).
fn tree(boxes: &[MailboxHeader]) -> BTreeMap<String, Node> {
    let mut t: BTreeMap<String, Node> = BTreeMap::new();
    for b in boxes {
        let n = t.entry(b.name.clone()).or_default();
        n.exists = true;
        n.special = b.special_use;
        let mut cut = b.name.len();
        while let Some(i) = b.name[..cut].rfind(SEPARATOR) {
            t.entry(b.name[..i].to_string()).or_default().has_children = true;
            cut = i;
        }
    }
    t
}

/// INBOX first, then by name (what clients display).
fn ordered(t: &BTreeMap<String, Node>) -> Vec<(&String, &Node)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(name, _)| (name.as_str() != "INBOX", name.as_str()));
    v
}

impl Session {
    pub(crate) async fn cmd_select(&mut self, name: &str, read_only: bool) -> Reply {
        // RFC 3501 6.3.1: SELECT first deselects, even when it then fails.
        self.selected = None;
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let header = match view.mailbox_by_name(&user, name) {
            Ok(Some(h)) => h,
            Ok(None) => return Reply::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return store_error(&e),
        };
        let entries = match view.messages(&header) {
            Ok(e) => e,
            Err(e) => return store_error(&e),
        };
        let last = header.uidnext.0.saturating_sub(1);
        // EXAMINE changes no state, \Recent included (RFC 3501 6.3.2).
        let prev = if read_only {
            self.server.recent.peek(slot.name(), header.id)
        } else {
            self.server.recent.claim(slot.name(), header.id, last)
        };
        let sel = Selected::open(&header, entries, prev.unwrap_or(0), read_only);
        sel.write_select_responses(&mut self.out);
        self.selected = Some(sel);
        if read_only {
            Reply::ok("[READ-ONLY] EXAMINE completed")
        } else {
            Reply::ok("[READ-WRITE] SELECT completed")
        }
    }

    pub(crate) async fn cmd_create(
        &mut self,
        name: &str,
        special: &[imap_proto::SpecialUse],
    ) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        // RFC 3501 6.3.3: a trailing separator only says the client plans children.
        let name = name.strip_suffix(SEPARATOR).unwrap_or(name);
        let op = Op::CreateMailbox {
            user,
            name: name.to_string(),
            special_use: special.iter().map(to_store_special).collect(),
        };
        match slot.execute_async(op).await {
            Ok(_) => Reply::ok("CREATE completed"),
            Err(e) => store_error(&e),
        }
    }

    pub(crate) async fn cmd_delete(&mut self, name: &str) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let target = store::normalize_mailbox_name(name);
        let id = slot.view().mailbox_id(&user, &target).ok().flatten();
        match slot
            .execute_async(Op::DeleteMailbox { user, name: target })
            .await
        {
            Ok(_) => {
                if id.is_some() && self.selected.as_ref().map(|s| Some(s.id)) == Some(id) {
                    self.selected = None;
                }
                Reply::ok("DELETE completed")
            }
            Err(e) => store_error(&e),
        }
    }

    pub(crate) async fn cmd_rename(&mut self, from: &str, to: &str) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let to = to.strip_suffix(SEPARATOR).unwrap_or(to);
        let op = Op::RenameMailbox {
            user,
            from: from.to_string(),
            to: to.to_string(),
        };
        match slot.execute_async(op).await {
            Ok(_) => Reply::ok("RENAME completed"),
            Err(e) => store_error(&e),
        }
    }

    pub(crate) async fn cmd_subscribe(&mut self, name: &str, subscribe: bool) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let op = Op::Subscribe {
            user,
            name: name.to_string(),
            subscribe,
        };
        match slot.execute_async(op).await {
            Ok(_) if subscribe => Reply::ok("SUBSCRIBE completed"),
            Ok(_) => Reply::ok("UNSUBSCRIBE completed"),
            Err(e) => store_error(&e),
        }
    }

    pub(crate) fn cmd_list(&mut self, args: &ListArgs) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let boxes = match view.mailboxes(&user) {
            Ok(b) => b,
            Err(e) => return store_error(&e),
        };
        let want_subs = args.select_subscribed || args.return_subscribed;
        let subs = if want_subs {
            match view.subscriptions(&user) {
                Ok(s) => s,
                Err(e) => return store_error(&e),
            }
        } else {
            Vec::new()
        };
        let extended = args.select_subscribed || args.select_special_use;
        let mut patterns = Vec::new();
        for p in &args.patterns {
            if p.is_empty() && !extended {
                // RFC 3501 6.3.8: an empty pattern asks for the separator and root.
                self.untagged("LIST (\\Noselect) \"/\" \"\"");
                continue;
            }
            let full = store::normalize_mailbox_name(&format!("{}{}", args.reference, p));
            if full.chars().count() > PATTERN_CHARS_MAX {
                return Reply::bad(format!(
                    "LIST pattern longer than {PATTERN_CHARS_MAX} characters"
                ));
            }
            patterns.push(full.chars().collect::<Vec<char>>());
        }
        if patterns.is_empty() {
            return Reply::ok("LIST completed");
        }
        let mut t = tree(&boxes);
        if args.select_subscribed {
            // Subscribed names that no longer exist are listed too (\NonExistent).
            for s in &subs {
                t.entry(s.clone()).or_default();
            }
        }
        let mut lines = Vec::new();
        for (name, node) in ordered(&t) {
            let chars: Vec<char> = name.chars().collect();
            if !patterns.iter().any(|p| list_match(p, &chars)) {
                continue;
            }
            let subscribed = subs.iter().any(|s| s == name);
            if args.select_subscribed && !subscribed {
                continue;
            }
            if args.select_special_use && node.special == 0 {
                continue;
            }
            let mut attrs: Vec<&str> = Vec::new();
            if !node.exists {
                attrs.push(if args.select_subscribed {
                    "\\NonExistent"
                } else {
                    "\\Noselect"
                });
            }
            attrs.push(if node.has_children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
            if subscribed && want_subs {
                attrs.push("\\Subscribed");
            }
            for u in SpecialUse::from_bits(node.special) {
                attrs.push(u.attribute());
            }
            let mut line = format!("LIST ({}) \"/\" ", attrs.join(" ")).into_bytes();
            line.extend_from_slice(&encode_mailbox(name, false));
            lines.push((line, node.exists.then(|| name.clone())));
        }
        for (line, status_of) in lines {
            self.out.extend_from_slice(b"* ");
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(b"\r\n");
            if let (Some(items), Some(name)) = (&args.return_status, status_of)
                && let Ok(Some(h)) = view.mailbox_by_name(&user, &name)
            {
                self.write_status(&view, &h, items);
            }
        }
        Reply::ok("LIST completed")
    }

    pub(crate) fn cmd_lsub(&mut self, reference: &str, pattern: &str) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let subs = match view.subscriptions(&user) {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        let full = store::normalize_mailbox_name(&format!("{reference}{pattern}"));
        if full.chars().count() > PATTERN_CHARS_MAX {
            return Reply::bad(format!(
                "LSUB pattern longer than {PATTERN_CHARS_MAX} characters"
            ));
        }
        let pat: Vec<char> = full.chars().collect();
        let mut subs = subs;
        subs.sort_by(|a, b| (a != "INBOX", a).cmp(&(b != "INBOX", b)));
        for name in subs {
            let chars: Vec<char> = name.chars().collect();
            if list_match(&pat, &chars) {
                let mut line = b"* LSUB () \"/\" ".to_vec();
                line.extend_from_slice(&encode_mailbox(&name, false));
                line.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&line);
            }
        }
        Reply::ok("LSUB completed")
    }

    pub(crate) fn cmd_status(&mut self, name: &str, items: &[StatusItem]) -> Reply {
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let header = match view.mailbox_by_name(&user, name) {
            Ok(Some(h)) => h,
            Ok(None) => return Reply::no("[NONEXISTENT] No such mailbox"),
            Err(e) => return store_error(&e),
        };
        self.write_status(&view, &header, items);
        Reply::ok("STATUS completed")
    }

    fn write_status(&mut self, view: &SlotView, h: &MailboxHeader, items: &[StatusItem]) {
        let needs_scan = items
            .iter()
            .any(|i| matches!(i, StatusItem::Recent | StatusItem::Deleted));
        let entries = if needs_scan {
            view.messages(h).unwrap_or_default()
        } else {
            Vec::new()
        };
        let slot_name = self
            .user
            .as_ref()
            .map(|u| u.slot.name().to_string())
            .unwrap_or_default();
        let mut parts = Vec::new();
        for item in items {
            let s = match item {
                StatusItem::Messages => format!("MESSAGES {}", h.exists),
                StatusItem::Recent => {
                    let claimed = self.server.recent.peek(&slot_name, h.id).unwrap_or(0);
                    let n = entries
                        .iter()
                        .filter(|e| e.as_ref().is_ok_and(|r| r.uid.0 > claimed))
                        .count();
                    format!("RECENT {n}")
                }
                StatusItem::UidNext => format!("UIDNEXT {}", h.uidnext.0),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", h.uidvalidity.0),
                StatusItem::Unseen => format!("UNSEEN {}", h.unseen),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", h.highestmodseq.0),
                StatusItem::Size => format!("SIZE {}", h.size_bytes),
                StatusItem::Deleted => {
                    let n = entries
                        .iter()
                        .filter(|e| {
                            e.as_ref()
                                .is_ok_and(|r| r.flags.system.has(SystemFlags::DELETED))
                        })
                        .count();
                    format!("DELETED {n}")
                }
            };
            parts.push(s);
        }
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&encode_mailbox(&h.name, false));
        let _ = write!(Lines(&mut line), " ({})\r\n", parts.join(" "));
        self.out.extend_from_slice(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        list_match(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn list_wildcards() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "INBOX"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a/*", "a/b/c"));
        assert!(m("*c", "a/b/c"));
        assert!(m("%/%", "a/b"));
        assert!(!m("a", "ab"));
        assert!(m("", ""));
    }
}
