//! SELECT through the server's scan cache (`scan_cache.rs`): what it reports about the
//! whole mailbox (EXISTS, UNSEEN, the keywords in FLAGS) must be what a full scan would
//! say, after any mix of changes between two SELECTs.

mod common;

use common::*;

fn code(lines: &[String], name: &str) -> Option<u32> {
    lines.iter().find_map(|l| {
        let start = l.find(&format!("[{name} "))? + name.len() + 2;
        l[start..].split(']').next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_catches_up_the_cached_scan() {
    let env = start_with(|c| c.select_cache_min_messages = 0).await;
    let mut a = Client::login(env.addr).await;
    let mut b = Client::login(env.addr).await;
    for _ in 0..5 {
        a.append("INBOX", "", SIMPLE).await;
    }
    b.cmd("SELECT INBOX").await;
    let (u, _) = a.cmd("EXAMINE INBOX").await;
    assert!(u.contains(&"* 5 EXISTS".to_string()), "{u:?}");
    assert_eq!(code(&u, "UNSEEN"), Some(1));
    // The first unseen message is read: the next one is the first unseen.
    b.cmd("STORE 1 +FLAGS (\\Seen)").await;
    let (u, _) = a.cmd("EXAMINE INBOX").await;
    assert_eq!(code(&u, "UNSEEN"), Some(2), "{u:?}");
    // It is expunged (and the one after it read): the first unseen moves on.
    b.cmd("STORE 2 +FLAGS (\\Deleted)").await;
    b.cmd("STORE 3 +FLAGS (\\Seen $Later)").await;
    b.cmd("EXPUNGE").await;
    a.append("INBOX", "\\Seen $New", SIMPLE).await;
    let (u, _) = a.cmd("EXAMINE INBOX").await;
    assert!(u.contains(&"* 5 EXISTS".to_string()), "{u:?}");
    assert_eq!(
        code(&u, "UNSEEN"),
        Some(3),
        "UIDs 1 3 4 5 6: 4 is the first unseen"
    );
    let flags = u.iter().find(|l| l.starts_with("* FLAGS")).unwrap();
    assert!(
        flags.contains("$Later") && flags.contains("$New"),
        "{flags}"
    );
    // A message below the first unseen becomes unseen again.
    b.cmd("STORE 1 -FLAGS (\\Seen)").await;
    let (u, _) = a.cmd("EXAMINE INBOX").await;
    assert_eq!(code(&u, "UNSEEN"), Some(1), "{u:?}");
    // Everything read: no UNSEEN at all.
    b.cmd("STORE 1:* +FLAGS (\\Seen)").await;
    let (u, _) = a.cmd("EXAMINE INBOX").await;
    assert_eq!(code(&u, "UNSEEN"), None, "{u:?}");
    let (u, _) = a.cmd("UID SEARCH ALL").await;
    assert_eq!(u, vec!["* SEARCH 1 3 4 5 6"]);
}
