//! THREAD and UID THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES.
//!
//! Both run over the messages the search program matched (see `sort.rs` for how their
//! headers are loaded). REFERENCES follows RFC 5256 2.2 step by step (the JWZ
//! algorithm): link by Message-ID/References/In-Reply-To, prune empty containers, group
//! the roots by base subject, sort siblings by sent date (ties: sequence number).
//! Memory: one container per message plus one per referenced id not in the result,
//! bounded by `SortFields`' cap on references per message.

use std::collections::HashMap;
use std::fmt::Write as _;

use imap_proto::{SearchKey, ThreadAlgorithm};

use crate::resp::Reply;
use crate::selected::Lines;
use crate::session::Session;
use crate::sort::{Item, check_charset};

/// A node of the thread forest: a message (`msg` = index into the items) or a dummy.
#[derive(Debug, Default, Clone)]
struct Node {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest<'a> {
    items: &'a [Item],
    nodes: Vec<Node>,
}

impl Forest<'_> {
    fn new_node(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Node {
            msg,
            ..Node::default()
        });
        self.nodes.len() - 1
    }

    /// True when `a` is `b` or one of `b`'s ancestors.
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        let mut cur = Some(b);
        let mut steps = 0;
        while let Some(c) = cur {
            if c == a {
                return true;
            }
            cur = self.nodes[c].parent;
            steps += 1;
            if steps > self.nodes.len() {
                return true; // a cycle: treat as related so no link is added
            }
        }
        false
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    /// Sort key of a node: its message's sent date and sequence number, or for a
    /// dummy those of its first child (children are sorted first).
    fn key(&self, n: usize) -> (i64, u32) {
        let mut cur = n;
        loop {
            if let Some(m) = self.nodes[cur].msg {
                let it = &self.items[m];
                return (it.sent_unix_secs(), it.seq);
            }
            match self.nodes[cur].children.first() {
                Some(&c) => cur = c,
                None => return (i64::MAX, u32::MAX),
            }
        }
    }

    /// Sorts every sibling list below `list` (children before parents), then `list`.
    fn sort_siblings(&mut self, list: &mut [usize]) {
        for &n in list.iter() {
            let mut children = std::mem::take(&mut self.nodes[n].children);
            self.sort_siblings(&mut children);
            self.nodes[n].children = children;
        }
        list.sort_by_key(|&n| self.key(n));
    }

    /// The message that stands for a node in subject grouping: itself or, for a dummy,
    /// its first child.
    fn representative(&self, n: usize) -> Option<&Item> {
        let mut cur = n;
        loop {
            if let Some(m) = self.nodes[cur].msg {
                return Some(&self.items[m]);
            }
            cur = *self.nodes[cur].children.first()?;
        }
    }

    /// Writes one thread without its outer parentheses.
    fn write(&self, n: usize, uid: bool, out: &mut Vec<u8>) {
        let node = &self.nodes[n];
        let mut need_space = false;
        if let Some(m) = node.msg {
            let it = &self.items[m];
            let _ = write!(Lines(out), "{}", if uid { it.uid } else { it.seq });
            need_space = true;
        }
        match node.children.as_slice() {
            [] => {}
            [only] if node.msg.is_some() => {
                out.push(b' ');
                self.write(*only, uid, out);
            }
            many => {
                if need_space {
                    out.push(b' ');
                }
                for &c in many {
                    out.push(b'(');
                    self.write(c, uid, out);
                    out.push(b')');
                }
            }
        }
    }
}

/// RFC 5256 2.2 REFERENCES. Returns the forest and its (sorted) root list.
fn references(items: &[Item]) -> (Forest<'_>, Vec<usize>) {
    let mut f = Forest {
        items,
        nodes: Vec::with_capacity(items.len()),
    };
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    // Step 1: link messages by their references.
    for (i, it) in items.iter().enumerate() {
        // 1A: a message without a Message-ID, or repeating one already used by a
        // message, gets a container of its own.
        let me = match it.fields.message_id.as_deref() {
            Some(id) => match by_id.get(id) {
                Some(&n) if f.nodes[n].msg.is_none() => {
                    f.nodes[n].msg = Some(i);
                    n
                }
                Some(_) => f.new_node(Some(i)),
                None => {
                    let n = f.new_node(Some(i));
                    by_id.insert(id, n);
                    n
                }
            },
            None => f.new_node(Some(i)),
        };
        // 1B: chain the references, keeping existing links and never making a loop.
        let mut prev: Option<usize> = None;
        for r in &it.fields.references {
            let n = match by_id.get(r.as_str()) {
                Some(&n) => n,
                None => {
                    let n = f.new_node(None);
                    by_id.insert(r.as_str(), n);
                    n
                }
            };
            if let Some(p) = prev
                && f.nodes[n].parent.is_none()
                && !f.is_ancestor(n, p)
            {
                f.link(p, n);
            }
            prev = Some(n);
        }
        // 1C: the message is a child of its last reference (breaking any older link).
        match prev {
            Some(p) if !f.is_ancestor(me, p) => f.link(p, me),
            Some(_) => {}
            None => f.unlink(me),
        }
    }
    // Step 2: the root set.
    let roots: Vec<usize> = (0..f.nodes.len())
        .filter(|&n| f.nodes[n].parent.is_none())
        .collect();
    // Step 3: prune empty dummies and promote the children of dummies.
    let mut roots = prune(&mut f, roots, true);
    // Step 4: sort the root set by sent date.
    f.sort_siblings(&mut roots);
    // Step 5: gather roots that share a base subject.
    let roots = group_by_subject(&mut f, roots);
    // Step 6: sort all siblings by sent date.
    let mut roots = roots;
    f.sort_siblings(&mut roots);
    (f, roots)
}

fn prune(f: &mut Forest<'_>, list: Vec<usize>, at_root: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(list.len());
    for n in list {
        let children = std::mem::take(&mut f.nodes[n].children);
        let children = prune(f, children, false);
        if f.nodes[n].msg.is_some() {
            for &c in &children {
                f.nodes[c].parent = Some(n);
            }
            f.nodes[n].children = children;
            out.push(n);
        } else if children.is_empty() {
            // 3A: a dummy without children goes.
        } else if !at_root || children.len() == 1 {
            // 3B: promote the children (at the root only a single child).
            for &c in &children {
                f.nodes[c].parent = f.nodes[n].parent;
            }
            out.extend(children);
        } else {
            for &c in &children {
                f.nodes[c].parent = Some(n);
            }
            f.nodes[n].children = children;
            out.push(n);
        }
    }
    out
}

fn group_by_subject(f: &mut Forest<'_>, roots: Vec<usize>) -> Vec<usize> {
    let subject_of = |f: &Forest<'_>, n: usize| {
        f.representative(n)
            .map(|it| it.fields.base_subject.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let is_reply =
        |f: &Forest<'_>, n: usize| f.representative(n).is_some_and(|it| it.fields.is_reply);
    let is_dummy = |f: &Forest<'_>, n: usize| f.nodes[n].msg.is_none();
    // 5A/5B: the table of subjects, preferring dummies, then non-replies.
    let mut table: HashMap<String, usize> = HashMap::new();
    for &n in &roots {
        let s = subject_of(f, n);
        if s.is_empty() {
            continue;
        }
        match table.get(&s) {
            None => {
                table.insert(s, n);
            }
            Some(&old) => {
                if (is_dummy(f, n) && !is_dummy(f, old))
                    || (!is_dummy(f, old) && is_reply(f, old) && !is_reply(f, n))
                {
                    table.insert(s, n);
                }
            }
        }
    }
    // 5C: merge each root into the table entry for its subject.
    let mut slots: Vec<Option<usize>> = roots.iter().copied().map(Some).collect();
    let mut pos: HashMap<usize, usize> = roots.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    for i in 0..slots.len() {
        let Some(n) = slots[i] else { continue };
        let s = subject_of(f, n);
        if s.is_empty() {
            continue;
        }
        let Some(&t) = table.get(&s) else { continue };
        if t == n {
            continue;
        }
        match (is_dummy(f, t), is_dummy(f, n)) {
            (true, true) => {
                let kids = std::mem::take(&mut f.nodes[n].children);
                for c in kids {
                    f.nodes[c].parent = Some(t);
                    f.nodes[t].children.push(c);
                }
                slots[i] = None;
            }
            (true, false) => {
                f.link(t, n);
                slots[i] = None;
            }
            (false, true) => {
                // The table prefers dummies, so this only happens for a dummy merged
                // away earlier; treat it like the dummy-in-table case.
                if let Some(&tp) = pos.get(&t) {
                    slots[tp] = None;
                }
                f.link(n, t);
                table.insert(s, n);
            }
            (false, false) => {
                if !is_reply(f, t) && is_reply(f, n) {
                    f.link(t, n);
                    slots[i] = None;
                } else if is_reply(f, t) && !is_reply(f, n) {
                    if let Some(&tp) = pos.get(&t) {
                        slots[tp] = None;
                    }
                    f.link(n, t);
                    table.insert(s, n);
                } else {
                    let d = f.new_node(None);
                    let tp = pos.get(&t).copied();
                    f.link(d, t);
                    f.link(d, n);
                    slots[i] = None;
                    if let Some(tp) = tp {
                        slots[tp] = Some(d);
                    }
                    pos.insert(d, tp.unwrap_or(i));
                    table.insert(s, d);
                }
            }
        }
    }
    slots.into_iter().flatten().collect()
}

/// RFC 5256 ORDEREDSUBJECT: group by base subject; the earliest message of each group
/// is the parent of the others; groups in order of their first message.
fn ordered_subject(items: &[Item]) -> (Forest<'_>, Vec<usize>) {
    let mut f = Forest {
        items,
        nodes: Vec::with_capacity(items.len()),
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&items[a], &items[b]);
        x.fields
            .base_subject
            .to_ascii_uppercase()
            .cmp(&y.fields.base_subject.to_ascii_uppercase())
            .then((x.sent_unix_secs(), x.seq).cmp(&(y.sent_unix_secs(), y.seq)))
    });
    let mut roots = Vec::new();
    let mut current: Option<(String, usize)> = None;
    for m in order {
        let subject = items[m].fields.base_subject.to_ascii_uppercase();
        let n = f.new_node(Some(m));
        match &current {
            Some((s, root)) if *s == subject => {
                let root = *root;
                f.link(root, n);
            }
            _ => {
                roots.push(n);
                current = Some((subject, n));
            }
        }
    }
    roots.sort_by_key(|&n| f.key(n));
    (f, roots)
}

/// The `* THREAD ...` line for `items`.
fn thread_line(items: &[Item], algorithm: ThreadAlgorithm, uid: bool) -> Vec<u8> {
    let (f, roots) = match algorithm {
        ThreadAlgorithm::References => references(items),
        ThreadAlgorithm::OrderedSubject => ordered_subject(items),
    };
    let mut line = b"* THREAD".to_vec();
    if !roots.is_empty() {
        line.push(b' ');
    }
    for n in roots {
        line.push(b'(');
        f.write(n, uid, &mut line);
        line.push(b')');
    }
    line.extend_from_slice(b"\r\n");
    line
}

impl Session {
    pub(crate) async fn cmd_thread(
        &mut self,
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: &str,
        keys: &[SearchKey],
    ) -> Reply {
        if let Err(r) = check_charset(charset) {
            return r;
        }
        let (items, damaged) = match self.sort_items(keys, true).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let line = thread_line(&items, algorithm, uid);
        self.out.extend_from_slice(&line);
        if !damaged.is_empty() {
            return crate::resp::damaged(&damaged);
        }
        Reply::ok("THREAD completed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::SortFields;

    fn msg(seq: u32, date: i64, subject: &str, id: &str, refs: &[&str]) -> Item {
        let (base, is_reply) = crate::mime::base_subject(subject);
        Item {
            seq,
            uid: seq,
            size: 0,
            arrival_unix_secs: date,
            fields: SortFields {
                base_subject: base,
                is_reply,
                sent_unix_secs: Some(date),
                message_id: (!id.is_empty()).then(|| id.to_string()),
                references: refs.iter().map(|s| s.to_string()).collect(),
                ..SortFields::default()
            },
        }
    }

    fn line(items: &[Item], alg: ThreadAlgorithm) -> String {
        String::from_utf8(thread_line(items, alg, false)).unwrap()
    }

    #[test]
    fn references_builds_nested_threads() {
        let items = vec![
            msg(1, 10, "Lunch", "a", &[]),
            msg(2, 20, "Re: Lunch", "b", &["a"]),
            msg(3, 30, "Re: Lunch", "c", &["a", "b"]),
            msg(4, 40, "Re: Lunch", "d", &["a"]),
            msg(5, 15, "Other", "e", &[]),
        ];
        assert_eq!(
            line(&items, ThreadAlgorithm::References),
            "* THREAD (1 (2 3)(4))(5)\r\n"
        );
    }

    #[test]
    fn references_joins_a_lost_parent_by_subject_and_handles_missing_ids() {
        // 2 answers a message we do not have: a dummy parent, pruned at the root,
        // then joined with 1 by subject (1 is not a reply, 2 is).
        let items = vec![
            msg(1, 10, "Plans", "a", &[]),
            msg(2, 20, "Re: Plans", "b", &["zz"]),
            msg(3, 30, "Solo", "", &[]),
            msg(4, 40, "Solo", "", &[]),
        ];
        assert_eq!(
            line(&items, ThreadAlgorithm::References),
            "* THREAD (1 2)((3)(4))\r\n"
        );
    }

    #[test]
    fn ordered_subject_groups_flat_under_the_first() {
        let items = vec![
            msg(1, 10, "Lunch", "a", &[]),
            msg(2, 5, "Other", "b", &[]),
            msg(3, 30, "Re: lunch", "c", &[]),
            msg(4, 20, "Fwd: Lunch", "d", &[]),
            msg(5, 50, "Other", "e", &[]),
        ];
        assert_eq!(
            line(&items, ThreadAlgorithm::OrderedSubject),
            "* THREAD (2 5)(1 (4)(3))\r\n"
        );
        assert_eq!(line(&[], ThreadAlgorithm::OrderedSubject), "* THREAD\r\n");
    }

    #[test]
    fn reference_loops_do_not_hang() {
        let items = vec![msg(1, 10, "x", "a", &["b"]), msg(2, 20, "x", "b", &["a"])];
        let l = line(&items, ThreadAlgorithm::References);
        assert!(l.starts_with("* THREAD ("), "{l}");
    }
}
