//! Per-connection and per-server limits that protect the server from one client:
//! commands per second per connection, connections per IP address and per user.
//!
//! What happens at each limit (each is a clear error the client can act on):
//! - commands per second: a token bucket per connection refilled at
//!   `ImapConfig::commands_per_second` and holding [`BURST_SECONDS`] worth, so a client
//!   that pipelines a burst (a sync run) is not hurt; a command arriving with the bucket
//!   empty is answered `NO [LIMIT] ...` without being run. `0` disables the limit.
//! - connections per IP: counted from accept to close; over the limit the connection
//!   gets `* BYE [UNAVAILABLE] ...` instead of a greeting (imaps: closed after the
//!   handshake would be needed, so it is closed at once).
//! - connections per user: counted while logged in; the login over the limit is
//!   refused with `NO [LIMIT] ...` and the connection stays usable.
//!
//! Memory: one small map entry per address and per logged-in user with open
//! connections; entries are removed when their count drops to zero.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The bucket holds this many seconds' worth of commands.
pub(crate) const BURST_SECONDS: u32 = 5;

/// Token bucket for one connection's commands.
#[derive(Debug, Default)]
pub(crate) struct CommandRate {
    tokens: f64,
    last: Option<Instant>,
}

impl CommandRate {
    /// Takes one token; false when the client is over `per_second` (0 = no limit).
    pub fn allow(&mut self, per_second: u32, now: Instant) -> bool {
        if per_second == 0 {
            return true;
        }
        let cap = f64::from(per_second) * f64::from(BURST_SECONDS);
        let tokens = match self.last {
            None => cap,
            Some(t) => {
                (self.tokens + now.duration_since(t).as_secs_f64() * f64::from(per_second)).min(cap)
            }
        };
        self.last = Some(now);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

/// Open-connection counts by key.
#[derive(Debug)]
struct Counts<K: Hash + Eq> {
    map: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Self {
        Counts {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Adds one for `key` unless that would exceed `max` (0 = no limit).
    fn try_add(&self, key: &K, max: u32) -> bool {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if max != 0 && *n >= max {
            if *n == 0 {
                m.remove(key);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn remove_one(&self, key: &K) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(key);
            }
        }
    }
}

/// Connection counts of one IMAP service.
#[derive(Debug)]
pub(crate) struct ConnTable {
    by_ip: Counts<IpAddr>,
    by_user: Counts<String>,
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable {
            by_ip: Counts::new(),
            by_user: Counts::new(),
        }
    }
}

enum GuardKey {
    Ip(IpAddr),
    User(String),
}

/// One counted connection; the count drops when the guard does.
pub(crate) struct ConnGuard {
    table: Arc<ConnTable>,
    key: GuardKey,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        match &self.key {
            GuardKey::Ip(ip) => self.table.by_ip.remove_one(ip),
            GuardKey::User(u) => self.table.by_user.remove_one(u),
        }
    }
}

impl ConnTable {
    /// Counts a connection from `ip`; `None` when `max` (0 = no limit) is reached.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ConnGuard> {
        self.by_ip.try_add(&ip, max).then(|| ConnGuard {
            table: self.clone(),
            key: GuardKey::Ip(ip),
        })
    }

    /// Counts a logged-in session of `user`; `None` when `max` (0 = no limit) is reached.
    pub fn admit_user(self: &Arc<Self>, user: &str, max: u32) -> Option<ConnGuard> {
        let key = user.to_ascii_lowercase();
        self.by_user.try_add(&key, max).then(|| ConnGuard {
            table: self.clone(),
            key: GuardKey::User(key),
        })
    }
}

/// Sends the over-the-limit BYE on a fresh connection (plain IMAP only: on imaps the
/// client expects a TLS handshake first, so the connection is just closed) and closes.
pub(crate) async fn refuse_connection(mut stream: tokio::net::TcpStream, max: u32, tls: bool) {
    use tokio::io::AsyncWriteExt;
    if !tls {
        let bye = format!(
            "* BYE [UNAVAILABLE] Too many connections from your address (limit {max}); close some and retry\r\n"
        );
        let write = stream.write_all(bye.as_bytes());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut r = CommandRate::default();
        let t0 = Instant::now();
        let burst = 2 * BURST_SECONDS;
        for _ in 0..burst {
            assert!(r.allow(2, t0));
        }
        assert!(!r.allow(2, t0));
        assert!(r.allow(2, t0 + Duration::from_millis(600)));
        assert!(!r.allow(2, t0 + Duration::from_millis(600)));
        assert!(r.allow(0, t0), "0 disables the limit");
    }

    #[test]
    fn connection_counts_drop_with_their_guards() {
        let t = Arc::new(ConnTable::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = t.admit_ip(ip, 2).unwrap();
        let _b = t.admit_ip(ip, 2).unwrap();
        assert!(t.admit_ip(ip, 2).is_none());
        drop(a);
        assert!(t.admit_ip(ip, 2).is_some());
        let u = t.admit_user("Alice@x", 1).unwrap();
        assert!(t.admit_user("alice@x", 1).is_none());
        drop(u);
        assert!(t.admit_user("alice@x", 1).is_some());
        assert!(t.by_user.map.lock().unwrap().is_empty());
    }
}
