//! Mailbox commands: SELECT/EXAMINE, CREATE (with CREATE-SPECIAL-USE), DELETE,
//! RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST (wildcards, implied `\Noselect` parents,
//! CHILDREN, SPECIAL-USE, LIST-EXTENDED selection and return options with
//! RECURSIVEMATCH / CHILDINFO, LIST-STATUS), LSUB, STATUS (with STATUS=SIZE, DELETED
//! and OBJECTID's MAILBOXID).
//!
//! Mailbox names go out in UTF-8 once the client enabled UTF8=ACCEPT (or IMAP4rev2),
//! else in modified UTF-7 (`Session::mailbox_name_out`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imap_proto::{ListArgs, StatusItem};
use store::{MailboxHeader, Op, OpResult, SEPARATOR, SlotView, SpecialUse, SystemFlags};

use crate::resp::{Reply, store_error};
use crate::selected::Lines;
use crate::session::Session;

/// Longest LIST pattern accepted: matching costs pattern x name per mailbox.
const PATTERN_CHARS_MAX: usize = 1024;

fn to_store_special(u: &imap_proto::SpecialUse) -> Option<SpecialUse> {
    Some(match u {
        imap_proto::SpecialUse::All => SpecialUse::All,
        imap_proto::SpecialUse::Archive => SpecialUse::Archive,
        imap_proto::SpecialUse::Drafts => SpecialUse::Drafts,
        imap_proto::SpecialUse::Flagged => SpecialUse::Flagged,
        imap_proto::SpecialUse::Junk => SpecialUse::Junk,
        imap_proto::SpecialUse::Sent => SpecialUse::Sent,
        imap_proto::SpecialUse::Trash => SpecialUse::Trash,
        imap_proto::SpecialUse::Unsupported => return None,
    })
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
    /// Some existing mailbox is below this name.
    has_children: bool,
    subscribed: bool,
    /// Some subscribed name is below this name (RECURSIVEMATCH).
    child_subscribed: bool,
}

/// Every mailbox plus the implied parents of nested names (`a/b/c` implies `a`, `a/b`),
/// and every subscribed name (which may not exist) with its parents.
fn tree(boxes: &[MailboxHeader], subs: &[String]) -> BTreeMap<String, Node> {
    let mut t: BTreeMap<String, Node> = BTreeMap::new();
    for b in boxes {
        let n = t.entry(b.name.clone()).or_default();
        n.exists = true;
        n.special = b.special_use;
        for parent in parents(&b.name) {
            t.entry(parent.to_string()).or_default().has_children = true;
        }
    }
    for name in subs {
        t.entry(name.clone()).or_default().subscribed = true;
        for parent in parents(name) {
            t.entry(parent.to_string()).or_default().child_subscribed = true;
        }
    }
    t
}

/// `a/b/c` → `a/b`, `a`.
fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.char_indices()
        .filter(|&(_, c)| c == SEPARATOR)
        .map(|(i, _)| &name[..i])
}

/// The LIST attributes of a node. `selecting`: a selection option (SUBSCRIBED) is in
/// use, where names that do not exist are `\NonExistent` (RFC 5258).
fn attributes(node: &Node, selecting: bool, want_subs: bool) -> String {
    let mut attrs: Vec<&str> = Vec::new();
    if !node.exists {
        attrs.push(if selecting || !node.has_children {
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
    if node.subscribed && want_subs {
        attrs.push("\\Subscribed");
    }
    for u in SpecialUse::from_bits(node.special) {
        attrs.push(u.attribute());
    }
    attrs.join(" ")
}

/// INBOX first, then by name (what clients display).
fn ordered(t: &BTreeMap<String, Node>) -> Vec<(&String, &Node)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(name, _)| (name.as_str() != "INBOX", name.as_str()));
    v
}

impl Session {
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
            special_use: match special.iter().map(to_store_special).collect() {
                Some(uses) => uses,
                None => {
                    return Reply::no(
                        "[USEATTR] Supported special uses: \\All \\Archive \\Drafts \\Flagged \\Junk \\Sent \\Trash",
                    );
                }
            },
        };
        match slot.execute_async(op).await {
            Ok(OpResult::Mailbox(id)) => {
                self.notify_own_change();
                match slot.view().mailbox(id) {
                    Ok(Some(h)) => Reply::ok(format!(
                        "[MAILBOXID ({})] CREATE completed",
                        crate::objectid::mailbox_id(&h)
                    )),
                    _ => Reply::ok("CREATE completed"),
                }
            }
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
                self.notify_own_change();
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
            Ok(_) => {
                self.notify_own_change();
                Reply::ok("RENAME completed")
            }
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
        let r = slot.execute_async(op).await;
        if r.is_ok() {
            self.notify_own_change();
        }
        match r {
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
        let subs = match view.subscriptions(&user) {
            Ok(s) => s,
            Err(e) => return store_error(&e),
        };
        let want_subs = args.select_subscribed || args.return_subscribed;
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
        let matches = |name: &str| {
            let chars: Vec<char> = name.chars().collect();
            patterns.iter().any(|p| list_match(p, &chars))
        };
        let t = tree(&boxes, &subs);
        let mut lines = Vec::new();
        for (name, node) in ordered(&t) {
            if !matches(name) {
                continue;
            }
            // RFC 5258 3: with RECURSIVEMATCH, a name whose descendant meets the
            // selection but not the pattern is listed with CHILDINFO.
            let mut childinfo = None;
            if args.select_subscribed {
                if args.select_recursive_match
                    && node.child_subscribed
                    && subs.iter().any(|s| {
                        s.strip_prefix(name.as_str())
                            .is_some_and(|r| r.starts_with(SEPARATOR))
                            && !matches(s)
                    })
                {
                    childinfo = Some("SUBSCRIBED");
                }
                if !node.subscribed && childinfo.is_none() {
                    continue;
                }
            } else if !node.exists && !node.has_children {
                // Only subscribed, not a mailbox: not part of a plain LIST.
                continue;
            }
            if args.select_special_use && node.special == 0 {
                continue;
            }
            let attrs = attributes(node, args.select_subscribed, want_subs);
            let mut line = format!("LIST ({attrs}) \"/\" ").into_bytes();
            line.extend_from_slice(&self.mailbox_name_out(name));
            if let Some(info) = childinfo {
                line.extend_from_slice(format!(" (\"CHILDINFO\" (\"{info}\"))").as_bytes());
            }
            lines.push((line, node.exists.then(|| name.clone())));
        }
        for (line, status_of) in lines {
            self.out.extend_from_slice(b"* ");
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(b"\r\n");
            // RFC 5819: STATUS follows the LIST line of each selectable mailbox.
            if let (Some(items), Some(name)) = (&args.return_status, status_of)
                && let Ok(Some(h)) = view.mailbox_by_name(&user, &name)
            {
                self.write_status(&view, &h, items);
            }
        }
        Reply::ok("LIST completed")
    }

    /// The attributes LIST would give `name` now (for NOTIFY's unsolicited LIST).
    pub(crate) fn list_attributes(&self, name: &str) -> String {
        let Some(u) = self.user.as_ref() else {
            return String::new();
        };
        let view = u.slot.view();
        let boxes = view.mailboxes(&u.name).unwrap_or_default();
        let subs = view.subscriptions(&u.name).unwrap_or_default();
        let t = tree(&boxes, &subs);
        match t.get(name) {
            Some(node) => attributes(node, true, true),
            None => "\\NonExistent".into(),
        }
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
                line.extend_from_slice(&self.mailbox_name_out(&name));
                line.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&line);
            }
        }
        Reply::ok("LSUB completed")
    }

    /// A snapshot and the header of the user's mailbox `name`, or the reply saying why
    /// not (`NO [NONEXISTENT]`).
    pub(crate) fn mailbox_header(&self, name: &str) -> Result<(SlotView, MailboxHeader), Reply> {
        let (user, slot) = self.ctx()?;
        let view = slot.view();
        match view.mailbox_by_name(&user, name) {
            Ok(Some(h)) => Ok((view, h)),
            Ok(None) => Err(Reply::no("[NONEXISTENT] No such mailbox")),
            Err(e) => Err(store_error(&e)),
        }
    }

    pub(crate) fn cmd_status(&mut self, name: &str, items: &[StatusItem]) -> Reply {
        let (view, header) = match self.mailbox_header(name) {
            Ok(x) => x,
            Err(r) => return r,
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
                StatusItem::MailboxId => {
                    format!("MAILBOXID ({})", crate::objectid::mailbox_id(h))
                }
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
        line.extend_from_slice(&self.mailbox_name_out(&h.name));
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
