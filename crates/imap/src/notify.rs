//! NOTIFY (RFC 5465): unsolicited responses while the client is not running a command.
//!
//! What is supported: the SELECTED and SELECTED-DELAYED filters (MessageNew with FETCH
//! attributes, MessageExpunge, FlagChange: EXISTS/EXPUNGE/FETCH as IDLE sends them),
//! and for other mailboxes the INBOXES, PERSONAL, SUBSCRIBED, SUBTREE and MAILBOXES
//! filters with MessageNew/MessageExpunge/FlagChange (as `* STATUS` responses) and
//! MailboxName / SubscriptionChange (as `* LIST` responses, RENAME with OLDNAME).
//! AnnotationChange and the METADATA events are refused with `NO [BADEVENT ...]`.
//!
//! Wake-ups come from the slot's durable-change broadcast (`Slot::subscribe`), so an
//! event reaches the client one group commit after it happened. A notice carries only
//! the mailbox id; the response is always computed from a fresh snapshot, so a lagging
//! receiver just means "look at everything watched again". Unchanged mailboxes send
//! nothing: the last STATUS sent per mailbox is remembered (bounded by
//! [`STATUS_MEMORY_MAX`]). Limits and deviations: FlagChange cannot be turned off for
//! the selected mailbox (its view reports flag changes like IDLE does), and changes
//! made by this same session may be reported too (RFC 5465 5: SHOULD omit).

use std::collections::HashMap;
use std::time::Duration;

use imap_proto::{FetchArgs, FetchAttr, NotifyEvent, NotifyFilter, NotifySet, SeqOrSaved};
use store::{ChangeNotice, MailboxHeader, MailboxId, SUBSCRIPTIONS_CHANGED};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;

use crate::resp::Reply;
use crate::session::{ReadOutcome, Session, SessionError};

/// Mailboxes whose last-sent STATUS is remembered; past it the memory is cleared (the
/// worst case is one repeated STATUS per mailbox).
const STATUS_MEMORY_MAX: usize = 10_000;
/// The events this server can report, for `NO [BADEVENT (...)]`.
const SUPPORTED: &str = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange";

/// Message events for the selected mailbox.
#[derive(Debug, Clone, Default)]
pub(crate) struct SelectedEvents {
    /// SELECTED-DELAYED: EXPUNGE only where RFC 3501 allows it.
    delayed: bool,
    /// MessageNew and MessageExpunge (always together).
    messages: bool,
    /// FETCH attributes sent for each new message.
    fetch: Vec<FetchAttr>,
}

/// Events for a group of non-selected mailboxes.
#[derive(Debug, Clone)]
struct OtherEvents {
    filter: NotifyFilter,
    messages: bool,
    flags: bool,
    names: bool,
    subscriptions: bool,
}

/// The client's NOTIFY SET, validated, plus what was last reported.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    selected: Option<SelectedEvents>,
    others: Vec<OtherEvents>,
    /// Last STATUS sent per mailbox: (messages, uidnext, unseen, highestmodseq).
    sent: HashMap<MailboxId, (u32, u32, u32, u64)>,
    /// Mailbox names as last known (MailboxName), and subscriptions (SubscriptionChange).
    names: HashMap<MailboxId, String>,
    subscribed: Vec<String>,
}

/// Why a NOTIFY SET is refused.
fn validate(set: &NotifySet) -> Result<Watch, Reply> {
    let mut w = Watch::default();
    let mut saw_selected = false;
    for g in &set.groups {
        let mut new = None;
        let (mut expunge, mut flags, mut names, mut subs) = (false, false, false, false);
        for e in &g.events {
            match e {
                NotifyEvent::MessageNew(attrs) => new = Some(attrs.clone()),
                NotifyEvent::MessageExpunge => expunge = true,
                NotifyEvent::FlagChange => flags = true,
                NotifyEvent::MailboxName => names = true,
                NotifyEvent::SubscriptionChange => subs = true,
                NotifyEvent::AnnotationChange
                | NotifyEvent::MailboxMetadataChange
                | NotifyEvent::ServerMetadataChange
                | NotifyEvent::Other(_) => {
                    return Err(Reply::no(format!(
                        "[BADEVENT ({SUPPORTED})] Only these events are supported"
                    )));
                }
            }
        }
        if new.is_some() != expunge {
            return Err(Reply::bad(
                "MessageNew and MessageExpunge must be given together (RFC 5465 5)",
            ));
        }
        if flags && !expunge {
            return Err(Reply::bad(
                "FlagChange needs MessageNew and MessageExpunge (RFC 5465 5)",
            ));
        }
        match &g.filter {
            NotifyFilter::Selected | NotifyFilter::SelectedDelayed => {
                if saw_selected {
                    return Err(Reply::bad(
                        "Only one SELECTED or SELECTED-DELAYED group is allowed",
                    ));
                }
                saw_selected = true;
                if names || subs {
                    return Err(Reply::bad(
                        "Only message events are allowed for the selected mailbox",
                    ));
                }
                w.selected = Some(SelectedEvents {
                    delayed: matches!(g.filter, NotifyFilter::SelectedDelayed),
                    messages: expunge,
                    fetch: new.unwrap_or_default(),
                });
            }
            other => {
                if new.as_ref().is_some_and(|a| !a.is_empty()) {
                    return Err(Reply::bad(
                        "FETCH attributes are only allowed for the selected mailbox",
                    ));
                }
                w.others.push(OtherEvents {
                    filter: other.clone(),
                    messages: expunge,
                    flags,
                    names,
                    subscriptions: subs,
                });
            }
        }
    }
    Ok(w)
}

fn in_subtree(name: &str, root: &str) -> bool {
    name == root
        || name
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with(store::SEPARATOR))
}

impl OtherEvents {
    fn covers(&self, name: &str, subscribed: &[String]) -> bool {
        match &self.filter {
            NotifyFilter::Personal | NotifyFilter::Inboxes => true,
            NotifyFilter::Subscribed => subscribed.iter().any(|s| s == name),
            NotifyFilter::Subtree(roots) => roots.iter().any(|r| in_subtree(name, r)),
            NotifyFilter::Mailboxes(list) => list.iter().any(|m| m == name),
            NotifyFilter::Selected | NotifyFilter::SelectedDelayed => false,
        }
    }
}

/// What woke a session that waits for its client (between commands under NOTIFY, and
/// in IDLE). `Read(Ok(n))` with `n > 0`: the bytes are already in the framer.
pub(crate) enum Wake {
    Read(std::io::Result<usize>),
    Notice(Result<ChangeNotice, RecvError>),
    Timeout,
}

impl Session {
    /// Waits for client bytes (pushed into the framer), a change notice of the user's
    /// slot, or `deadline`. `None` when no user is logged in (no notices to wait for).
    pub(crate) async fn wait_wake(&mut self, deadline: tokio::time::Instant) -> Option<Wake> {
        let user = self.user.as_mut()?;
        let mut buf = [0u8; 4096];
        let notices = &mut user.notices;
        let stream = &mut self.stream;
        let wake = tokio::select! {
            r = stream.read(&mut buf) => Wake::Read(r),
            n = notices.recv() => Wake::Notice(n),
            _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
        };
        if let Wake::Read(Ok(n)) = &wake {
            self.framer.push(&buf[..*n]);
        }
        Some(wake)
    }

    pub(crate) fn cmd_notify(&mut self, set: Option<NotifySet>) -> Reply {
        let Some(set) = set else {
            self.ext.notify = None;
            return Reply::ok("NOTIFY NONE completed");
        };
        let mut watch = match validate(&set) {
            Ok(w) => w,
            Err(r) => return r,
        };
        let (user, slot) = match self.ctx() {
            Ok(c) => c,
            Err(r) => return r,
        };
        let view = slot.view();
        let boxes = view.mailboxes(&user).unwrap_or_default();
        watch.subscribed = view.subscriptions(&user).unwrap_or_default();
        watch.names = boxes.iter().map(|h| (h.id, h.name.clone())).collect();
        let selected = self.selected.as_ref().map(|s| s.id);
        for h in &boxes {
            if Some(h.id) == selected {
                continue;
            }
            let covered = watch
                .others
                .iter()
                .any(|o| (o.messages || o.flags) && o.covers(&h.name, &watch.subscribed));
            if !covered {
                continue;
            }
            watch.sent.insert(h.id, status_tuple(h));
            if set.status {
                self.write_notify_status(h);
            }
        }
        self.ext.notify = Some(watch);
        Reply::ok("NOTIFY completed")
    }

    /// `* STATUS name (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)`: a superset
    /// of what RFC 5465 asks for each event kind, so one format serves all.
    fn write_notify_status(&mut self, h: &MailboxHeader) {
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&self.mailbox_name_out(&h.name));
        line.extend_from_slice(
            format!(
                " (MESSAGES {} UIDNEXT {} UIDVALIDITY {} UNSEEN {} HIGHESTMODSEQ {})\r\n",
                h.exists, h.uidnext.0, h.uidvalidity.0, h.unseen, h.highestmodseq.0
            )
            .as_bytes(),
        );
        self.out.extend_from_slice(&line);
    }

    /// Waits for client input like `read_more`, and meanwhile sends what NOTIFY asked
    /// for. Without an active NOTIFY it is exactly `read_more`.
    pub(crate) async fn read_or_notify(
        &mut self,
        limit: Duration,
    ) -> Result<ReadOutcome, SessionError> {
        if self.ext.notify.is_none() || self.user.is_none() {
            return self.read_more(limit).await;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Some(wake) = self.wait_wake(deadline).await else {
                return self.read_more(limit).await;
            };
            match wake {
                Wake::Read(Ok(0)) => return Ok(ReadOutcome::Eof),
                Wake::Read(Ok(_)) => return Ok(ReadOutcome::Data),
                Wake::Read(Err(e)) => return Err(e.into()),
                Wake::Timeout => return Ok(ReadOutcome::TimedOut),
                Wake::Notice(Err(RecvError::Closed)) => {
                    self.untagged("BYE Server shutting down; please reconnect");
                    self.flush().await?;
                    return Ok(ReadOutcome::Eof);
                }
                Wake::Notice(n) => {
                    if !self.on_notice(n.ok()).await {
                        self.untagged("BYE The selected mailbox was deleted; please reconnect");
                        self.flush().await?;
                        return Ok(ReadOutcome::Eof);
                    }
                    self.flush().await?;
                }
            }
        }
    }

    /// Handles one change notice (`None`: notices were lost, recheck everything).
    /// Returns false when the selected mailbox was deleted.
    pub(crate) async fn on_notice(&mut self, notice: Option<ChangeNotice>) -> bool {
        let Some((user, slot)) = self.user.as_ref().map(|u| (u.name.clone(), u.slot.clone()))
        else {
            return true;
        };
        if notice.as_ref().is_some_and(|n| n.user != user) {
            return true;
        }
        let target = notice.as_ref().map(|n| n.mailbox);
        let selected = self.selected.as_ref().map(|s| s.id);
        // The selected mailbox.
        if selected.is_some() && (target.is_none() || target == selected) {
            if let Some(ev) = self.ext.notify.as_ref().and_then(|w| w.selected.clone())
                && ev.messages
            {
                let before = self.selected.as_ref().map_or(0, |s| s.last_uid());
                if !self.sync_selected(!ev.delayed) {
                    return false;
                }
                let after = self.selected.as_ref().map_or(0, |s| s.last_uid());
                if !ev.fetch.is_empty() && after > before {
                    let args = FetchArgs {
                        set: SeqOrSaved::Set(imap_proto::SequenceSet {
                            ranges: vec![imap_proto::SeqRange {
                                start: before + 1,
                                end: after,
                            }],
                        }),
                        attrs: ev.fetch.clone(),
                        changed_since: None,
                        vanished: false,
                    };
                    // Unsolicited: the tagged result has nowhere to go, and a damaged
                    // message is reported when the client fetches it itself.
                    let _ = self.cmd_fetch(true, &args).await;
                }
            }
            if target.is_some() {
                return true;
            }
        }
        let Some(watch) = self.ext.notify.as_mut() else {
            return true;
        };
        let view = slot.view();
        let wants_lists = watch.others.iter().any(|o| o.names || o.subscriptions);
        let subs_changed = target.is_none_or(|t| t == SUBSCRIPTIONS_CHANGED);
        if subs_changed {
            let now = view.subscriptions(&user).unwrap_or_default();
            if now != watch.subscribed {
                let old = std::mem::replace(&mut watch.subscribed, now);
                if wants_lists {
                    let mut changed: Vec<String> = old
                        .iter()
                        .filter(|s| !watch.subscribed.contains(s))
                        .chain(watch.subscribed.iter().filter(|s| !old.contains(s)))
                        .cloned()
                        .collect();
                    changed.retain(|name| {
                        watch
                            .others
                            .iter()
                            .any(|o| o.subscriptions && o.covers(name, &watch.subscribed))
                            || watch
                                .others
                                .iter()
                                .any(|o| o.subscriptions && o.covers(name, &old))
                    });
                    for name in changed {
                        self.write_notify_list(&name, None);
                    }
                }
            }
            if target.is_some() {
                return true;
            }
        }
        let boxes: Vec<MailboxHeader> = match target {
            Some(id) => view.mailbox(id).ok().flatten().into_iter().collect(),
            None => view.mailboxes(&user).unwrap_or_default(),
        };
        // Mailbox name events: created, renamed, deleted.
        if let Some(id) = target
            && boxes.is_empty()
        {
            self.mailbox_gone(id);
            return true;
        }
        if target.is_none() {
            let live: Vec<MailboxId> = boxes.iter().map(|h| h.id).collect();
            let gone: Vec<MailboxId> = self
                .ext
                .notify
                .as_ref()
                .map(|w| {
                    w.names
                        .keys()
                        .filter(|id| !live.contains(id))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for id in gone {
                self.mailbox_gone(id);
            }
        }
        for h in boxes {
            if h.user != user {
                continue;
            }
            let created = self.mailbox_seen(&h);
            if Some(h.id) == selected {
                continue;
            }
            let Some(watch) = self.ext.notify.as_mut() else {
                return true;
            };
            let (mut messages, mut flags) = (false, false);
            for o in &watch.others {
                if o.covers(&h.name, &watch.subscribed) {
                    messages |= o.messages;
                    flags |= o.flags;
                }
            }
            if !messages && !flags {
                continue;
            }
            let now = status_tuple(&h);
            let before = watch.sent.get(&h.id).copied();
            let changed = match before {
                // A mailbox that just appeared: its LIST said so; this is the baseline.
                None => !created,
                Some(b) => {
                    (messages && (b.0, b.1) != (now.0, now.1))
                        || (flags && (b.2, b.3) != (now.2, now.3))
                }
            };
            if changed || before.is_none() {
                if watch.sent.len() >= STATUS_MEMORY_MAX {
                    watch.sent.clear();
                }
                watch.sent.insert(h.id, now);
            }
            if changed {
                self.write_notify_status(&h);
            }
        }
        true
    }

    /// MailboxName for a mailbox that exists now: new or renamed. Returns true when
    /// the mailbox was not known before.
    fn mailbox_seen(&mut self, h: &MailboxHeader) -> bool {
        let Some(watch) = self.ext.notify.as_mut() else {
            return false;
        };
        let old = watch.names.insert(h.id, h.name.clone());
        if old.as_deref() == Some(h.name.as_str()) {
            return false;
        }
        let created = old.is_none();
        let wanted = watch.others.iter().any(|o| {
            o.names
                && (o.covers(&h.name, &watch.subscribed)
                    || old.as_ref().is_some_and(|n| o.covers(n, &watch.subscribed)))
        });
        if wanted {
            self.write_notify_list(&h.name.clone(), old.as_deref());
        }
        created
    }

    /// MailboxName for a mailbox that no longer exists.
    fn mailbox_gone(&mut self, id: MailboxId) {
        let Some(watch) = self.ext.notify.as_mut() else {
            return;
        };
        watch.sent.remove(&id);
        let Some(name) = watch.names.remove(&id) else {
            return;
        };
        if watch
            .others
            .iter()
            .any(|o| o.names && o.covers(&name, &watch.subscribed))
        {
            let mut line = b"* LIST (\\NonExistent) \"/\" ".to_vec();
            line.extend_from_slice(&self.mailbox_name_out(&name));
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
        }
    }

    /// An unsolicited LIST for `name` with its current attributes (RFC 5465 5.4/5.5),
    /// with OLDNAME when it was renamed.
    fn write_notify_list(&mut self, name: &str, old: Option<&str>) {
        let attrs = self.list_attributes(name);
        let mut line = format!("* LIST ({attrs}) \"/\" ").into_bytes();
        line.extend_from_slice(&self.mailbox_name_out(name));
        if let Some(old) = old {
            line.extend_from_slice(b" (\"OLDNAME\" (");
            line.extend_from_slice(&self.mailbox_name_out(old));
            line.extend_from_slice(b"))");
        }
        line.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&line);
    }

    /// Remembers the current mailbox names and subscriptions, so this session's own
    /// CREATE/DELETE/RENAME/SUBSCRIBE are not reported back to it (RFC 5465 5).
    pub(crate) fn notify_own_change(&mut self) {
        let Some((user, slot)) = self.user.as_ref().map(|u| (u.name.clone(), u.slot.clone()))
        else {
            return;
        };
        let Some(watch) = self.ext.notify.as_mut() else {
            return;
        };
        let view = slot.view();
        if let Ok(boxes) = view.mailboxes(&user) {
            watch.names = boxes.iter().map(|h| (h.id, h.name.clone())).collect();
        }
        if let Ok(subs) = view.subscriptions(&user) {
            watch.subscribed = subs;
        }
    }
}

fn status_tuple(h: &MailboxHeader) -> (u32, u32, u32, u64) {
    (h.exists, h.uidnext.0, h.unseen, h.highestmodseq.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_proto::{CommandKind, NotifyGroup, ParseOptions, parse_command};

    fn set(text: &str) -> NotifySet {
        let cmd = parse_command(
            format!("a NOTIFY {text}\r\n").as_bytes(),
            &ParseOptions::default(),
        )
        .unwrap();
        match cmd.kind {
            CommandKind::Notify(Some(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_follows_rfc_5465() {
        assert!(validate(&set("SET (selected (MessageNew (uid) MessageExpunge)) (inboxes (MessageNew MessageExpunge FlagChange))")).is_ok());
        let bad = |t: &str| validate(&set(t)).err().map(|r| r.text);
        assert!(
            bad("SET (selected (MessageNew))")
                .unwrap()
                .contains("together")
        );
        assert!(
            bad("SET (personal (FlagChange))")
                .unwrap()
                .contains("FlagChange")
        );
        assert!(
            bad("SET (personal (AnnotationChange))")
                .unwrap()
                .starts_with("[BADEVENT (")
        );
        assert!(bad("SET (selected (MailboxName))").is_some());
        assert!(bad("SET (personal (MessageNew (uid) MessageExpunge))").is_some());
        let _ = NotifyGroup {
            filter: NotifyFilter::Personal,
            events: vec![],
        };
    }

    #[test]
    fn subtree_matches_the_root_and_below_only() {
        assert!(in_subtree("Lists", "Lists"));
        assert!(in_subtree("Lists/a/b", "Lists"));
        assert!(!in_subtree("Listsx", "Lists"));
    }
}
