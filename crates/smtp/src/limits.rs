//! Per-client-address limits for the SMTP listeners: concurrent connections and messages per
//! minute. IPv6 clients are counted per /64, because one host commonly owns a whole /64 and
//! per-address counting would be no limit at all.
//!
//! Memory is bounded: the connection table holds one entry per address with a live
//! connection (so at most the listener's connection limit); the rate table holds at most
//! [`RATE_TRACKED_MAX`] addresses. When the rate table is full, expired windows are dropped
//! first; if it is still full it is cleared, which lets a burst through rather than refusing
//! mail from everyone (fail open on memory pressure, never fail closed on innocent senders).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most client addresses whose message rate is tracked at once.
pub const RATE_TRACKED_MAX: usize = 100_000;

/// The rate window.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct IpLimiter {
    connections_per_ip_max: usize,
    messages_per_ip_per_minute: u32,
    conns: Mutex<HashMap<IpAddr, usize>>,
    rates: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Holds one connection slot of an address; the slot is released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<IpLimiter>,
    key: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut conns = self.limiter.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = conns.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&self.key);
            }
        }
    }
}

/// The address a limit is keyed on: IPv4 as is, IPv6 by its /64 prefix.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].iter_mut().for_each(|s| *s = 0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl IpLimiter {
    /// `0` for either limit means unlimited.
    pub fn new(connections_per_ip_max: usize, messages_per_ip_per_minute: u32) -> Arc<Self> {
        Arc::new(Self {
            connections_per_ip_max,
            messages_per_ip_per_minute,
            conns: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
        })
    }

    /// A connection slot for `ip`, or `None` when the address is at its limit.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let key = limit_key(ip);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = conns.entry(key).or_insert(0);
        if self.connections_per_ip_max > 0 && *n >= self.connections_per_ip_max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            limiter: self.clone(),
            key,
        })
    }

    /// Counts one message from `ip`; false when the address is over its rate.
    pub fn allow_message(&self, ip: IpAddr) -> bool {
        if self.messages_per_ip_per_minute == 0 {
            return true;
        }
        let key = limit_key(ip);
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if rates.len() >= RATE_TRACKED_MAX && !rates.contains_key(&key) {
            rates.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if rates.len() >= RATE_TRACKED_MAX {
                rates.clear();
            }
        }
        let entry = rates.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.messages_per_ip_per_minute {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_counted_and_released() {
        let l = IpLimiter::new(2, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.connect(ip).unwrap();
        let _b = l.connect(ip).unwrap();
        assert!(l.connect(ip).is_none());
        assert!(l.connect("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(l.connect(ip).is_some());
    }

    #[test]
    fn ipv6_is_limited_per_slash_64() {
        let l = IpLimiter::new(1, 0);
        let _a = l.connect("2001:db8::1".parse().unwrap()).unwrap();
        assert!(l.connect("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(l.connect("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn message_rate_is_limited() {
        let l = IpLimiter::new(0, 3);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!((0..3).all(|_| l.allow_message(ip)));
        assert!(!l.allow_message(ip));
        assert!(l.allow_message("192.0.2.10".parse().unwrap()));
    }
}
