//! DNS for mail: one [`Resolver`] answers the SPF/DKIM/DMARC questions of inbound checks and
//! the MX/A/AAAA questions of outbound delivery.
//!
//! Two modes:
//! - **live**: mail-auth's hickory resolver configured from `/etc/resolv.conf`, with a
//!   bounded answer cache in front (each record type at most [`CACHE_ENTRIES_MAX`] names;
//!   when full, expired entries go first, then everything — a cache miss costs a query, never
//!   correctness);
//! - **static**: every question is answered from a table given by the operator (tests, labs,
//!   air-gapped hosts). A name not in the table is NXDOMAIN; the network is never touched.
//!
//! Static table syntax, one string per record: `"TXT v=spf1 ip4:192.0.2.1 -all"`,
//! `"MX 10 mx.example.org"`, `"A 192.0.2.1"`, `"AAAA 2001:db8::1"`. A TXT record is parsed by
//! what its name says it is: `_dmarc.*` as DMARC, `*._domainkey.*` as a DKIM key, anything
//! else as SPF (TXT records that are none of these are irrelevant to mail and ignored).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{
    DnsError, DnssecStatus, Error as AuthError, IpLookupStrategy, MX, MessageAuthenticator,
    Parameters, RecordSet, ResolverCache, Txt,
};
use thiserror::Error;

/// Names cached per record type in live mode.
pub const CACHE_ENTRIES_MAX: usize = 10_000;

/// Longest static table we accept (names), so a typo'd generator cannot eat the host.
pub const STATIC_NAMES_MAX: usize = 100_000;

/// Per-query timeout and attempts in live mode: a dead resolver must not hold an SMTP
/// session for minutes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_ATTEMPTS: usize = 2;

#[derive(Debug, Error)]
pub enum ResolverError {
    #[error("cannot read the system DNS configuration (/etc/resolv.conf): {0}")]
    System(String),
    #[error("static DNS record {record:?} for {name}: {why}")]
    BadRecord {
        name: String,
        record: String,
        why: String,
    },
    #[error("static DNS table has more than {STATIC_NAMES_MAX} names")]
    TooBig,
}

/// Why a lookup for outbound delivery found no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN) or publishes a null MX (RFC 7505): permanent.
    #[error("{0}")]
    Permanent(String),
    /// Resolver failure or timeout: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// One record type's answers, keyed by FQDN (lower case, trailing dot).
pub(crate) struct Table<K, V> {
    entries: Mutex<HashMap<K, (V, Option<Instant>)>>,
    /// Static mode: a miss is answered with this (NXDOMAIN / empty), never by the network.
    miss: Option<V>,
}

impl<K: Hash + Eq, V: Clone> Table<K, V> {
    fn new(miss: Option<V>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            miss,
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Table<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(name) {
            Some((v, None)) => Some(v.clone()),
            Some((v, Some(until))) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.remove(name);
                self.miss.clone()
            }
            None => self.miss.clone(),
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        if self.miss.is_some() {
            // Static mode never learns: the table is the whole truth.
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES_MAX {
            let now = Instant::now();
            entries.retain(|_, (_, until)| until.is_some_and(|u| u > now));
            if entries.len() >= CACHE_ENTRIES_MAX {
                entries.clear();
            }
        }
        entries.insert(key, (value, Some(valid_until)));
    }
}

pub(crate) type Params<'x, P> = Parameters<
    'x,
    P,
    Table<Box<str>, Txt>,
    Table<Box<str>, RecordSet<MX>>,
    Table<Box<str>, RecordSet<Ipv4Addr>>,
    Table<Box<str>, RecordSet<Ipv6Addr>>,
    Table<IpAddr, RecordSet<Box<str>>>,
>;

/// The mail DNS resolver. Cheap to share (`Arc`).
pub struct Resolver {
    pub(crate) auth: MessageAuthenticator,
    txt: Table<Box<str>, Txt>,
    mx: Table<Box<str>, RecordSet<MX>>,
    ipv4: Table<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: Table<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: Table<IpAddr, RecordSet<Box<str>>>,
    is_static: bool,
}

fn empty<T>() -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(Vec::new().into_boxed_slice()),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

fn nxdomain() -> AuthError {
    AuthError::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain))
}

/// `Example.ORG` → `example.org.`
pub fn fqdn(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl Resolver {
    /// Live DNS from the system configuration.
    pub fn system() -> Result<Self, ResolverError> {
        let (config, mut opts) = mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| ResolverError::System(e.to_string()))?;
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| ResolverError::System(e.to_string()))?;
        Ok(Self {
            auth,
            txt: Table::new(None),
            mx: Table::new(None),
            ipv4: Table::new(None),
            ipv6: Table::new(None),
            ptr: Table::new(None),
            is_static: false,
        })
    }

    /// Answers only from `records` (name → `"TYPE value"` strings); never touches the network.
    pub fn with_static(records: &[(String, Vec<String>)]) -> Result<Self, ResolverError> {
        if records.len() > STATIC_NAMES_MAX {
            return Err(ResolverError::TooBig);
        }
        // No name servers at all: even a lookup that slipped past the table could not leave
        // the host.
        let auth = MessageAuthenticator::new(
            ResolverConfig::from_parts(None, vec![], vec![]),
            ResolverOpts::default(),
        )
        .map_err(|e| ResolverError::System(e.to_string()))?;
        let r = Self {
            auth,
            txt: Table::new(Some(Txt::Error(nxdomain()))),
            mx: Table::new(Some(empty())),
            ipv4: Table::new(Some(empty())),
            ipv6: Table::new(Some(empty())),
            ptr: Table::new(Some(empty())),
            is_static: true,
        };
        let mut mx: HashMap<String, Vec<(u16, String)>> = HashMap::new();
        let mut v4: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        let mut v6: HashMap<String, Vec<Ipv6Addr>> = HashMap::new();
        for (name, recs) in records {
            let name = fqdn(name);
            for rec in recs {
                let bad = |why: &str| ResolverError::BadRecord {
                    name: name.clone(),
                    record: rec.clone(),
                    why: why.to_string(),
                };
                let (kind, value) = rec.trim().split_once(' ').ok_or_else(|| {
                    bad("expected \"TYPE value\", e.g. \"A 192.0.2.1\" or \"TXT v=spf1 -all\"")
                })?;
                let value = value.trim();
                match kind.to_ascii_uppercase().as_str() {
                    "TXT" => {
                        let txt = parse_txt(&name, value.as_bytes())
                            .map_err(|e| bad(&format!("not a valid record: {e}")))?;
                        if let Some(txt) = txt {
                            r.txt.entries_insert(name.clone().into_boxed_str(), txt);
                        }
                    }
                    "MX" => {
                        let (pref, host) = value
                            .split_once(' ')
                            .ok_or_else(|| bad("expected \"MX preference host\""))?;
                        let pref: u16 = pref
                            .parse()
                            .map_err(|_| bad("MX preference must be 0..65535"))?;
                        mx.entry(name.clone())
                            .or_default()
                            .push((pref, fqdn(host.trim())));
                    }
                    "A" => v4
                        .entry(name.clone())
                        .or_default()
                        .push(value.parse().map_err(|_| bad("not an IPv4 address"))?),
                    "AAAA" => v6
                        .entry(name.clone())
                        .or_default()
                        .push(value.parse().map_err(|_| bad("not an IPv6 address"))?),
                    _ => return Err(bad("type must be TXT, MX, A or AAAA")),
                }
            }
        }
        for (name, mut recs) in mx {
            recs.sort();
            let mut grouped: Vec<MX> = Vec::new();
            for (pref, host) in recs {
                match grouped.last_mut() {
                    Some(g) if g.preference == pref => {
                        let mut v = g.exchanges.to_vec();
                        v.push(host.into_boxed_str());
                        g.exchanges = v.into_boxed_slice();
                    }
                    _ => grouped.push(MX {
                        preference: pref,
                        exchanges: vec![host.into_boxed_str()].into_boxed_slice(),
                    }),
                }
            }
            r.mx.entries_insert(name.into_boxed_str(), record_set(grouped));
        }
        for (name, ips) in v4 {
            r.ipv4
                .entries_insert(name.into_boxed_str(), record_set(ips));
        }
        for (name, ips) in v6 {
            r.ipv6
                .entries_insert(name.into_boxed_str(), record_set(ips));
        }
        Ok(r)
    }

    pub fn is_static(&self) -> bool {
        self.is_static
    }

    /// mail-auth parameters with this resolver's tables as caches.
    pub(crate) fn params<P>(&self, p: P) -> Params<'_, P> {
        Parameters::new(p)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    /// The hosts to try for mail to `domain`, best preference first (RFC 5321 §5.1): the MX
    /// exchanges, or the domain itself when it has no MX records (implicit MX).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, LookupError> {
        let name = fqdn(domain);
        match self.auth.mx_lookup(name.as_str(), Some(&self.mx)).await {
            Ok(set) if set.rrset.is_empty() => Ok(vec![name]),
            Ok(set) => {
                let hosts: Vec<String> = set
                    .rrset
                    .iter()
                    .flat_map(|mx| mx.exchanges.iter().map(|h| h.to_string()))
                    .collect();
                // RFC 7505 null MX: "0 ." says the domain accepts no mail.
                if hosts.iter().all(|h| h == "." || h.is_empty()) {
                    return Err(LookupError::Permanent(format!(
                        "{domain} accepts no mail (null MX)"
                    )));
                }
                Ok(hosts.into_iter().filter(|h| h != ".").collect())
            }
            Err(AuthError::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain))) => Err(
                LookupError::Permanent(format!("domain {domain} does not exist")),
            ),
            Err(AuthError::Dns(DnsError::RecordNotFound(_))) => Ok(vec![name]),
            Err(e) => Err(LookupError::Temporary(format!(
                "MX lookup for {domain} failed: {e}"
            ))),
        }
    }

    /// The addresses of `host`, IPv4 first (most mail hosts still prefer it).
    pub async fn host_ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let host = host.trim_end_matches('.');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = fqdn(host);
        match self
            .auth
            .ip_lookup(
                &name,
                IpLookupStrategy::Ipv4thenIpv6,
                16,
                Some(&self.ipv4),
                Some(&self.ipv6),
            )
            .await
        {
            Ok(ips) if !ips.is_empty() => Ok(ips),
            Ok(_) if self.is_static => {
                // The table said "nothing here" for A; ip_lookup does not fall through to
                // AAAA on an empty answer, so ask explicitly.
                match self.auth.ipv6_lookup(name.as_str(), Some(&self.ipv6)).await {
                    Ok(set) if !set.rrset.is_empty() => {
                        Ok(set.rrset.iter().copied().map(IpAddr::V6).collect())
                    }
                    _ => Err(LookupError::Permanent(format!("{host} has no address"))),
                }
            }
            Ok(_) => Err(LookupError::Temporary(format!("{host} has no address"))),
            Err(AuthError::Dns(DnsError::RecordNotFound(_))) => {
                Err(LookupError::Permanent(format!("{host} has no address")))
            }
            Err(e) => Err(LookupError::Temporary(format!(
                "address lookup for {host} failed: {e}"
            ))),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Table<K, V> {
    fn entries_insert(&self, key: K, value: V) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (value, None));
    }
}

fn record_set<T>(v: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(v.into_boxed_slice()),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

/// A static TXT record, typed by its name. `Ok(None)`: a TXT record mail does not use.
fn parse_txt(name: &str, value: &[u8]) -> Result<Option<Txt>, AuthError> {
    if name.starts_with("_dmarc.") {
        Ok(Some(Dmarc::parse(value)?.into()))
    } else if name.contains("._domainkey.") {
        Ok(Some(DomainKey::parse(value)?.into()))
    } else if value.starts_with(b"v=spf1") {
        Ok(Some(Spf::parse(value)?.into()))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Resolver {
        Resolver::with_static(&[
            (
                "example.org".into(),
                vec![
                    "MX 20 b.example.org".into(),
                    "MX 10 a.example.org".into(),
                    "TXT v=spf1 ip4:192.0.2.1 -all".into(),
                ],
            ),
            ("a.example.org".into(), vec!["A 127.0.0.1".into()]),
            ("b.example.org".into(), vec!["AAAA ::1".into()]),
            ("nomx.example.org".into(), vec!["A 127.0.0.2".into()]),
            ("null.example.org".into(), vec!["MX 0 .".into()]),
        ])
        .unwrap()
    }

    #[tokio::test]
    async fn mx_hosts_in_preference_order_with_implicit_and_null_mx() {
        let r = table();
        assert_eq!(
            r.mx_hosts("Example.org").await.unwrap(),
            vec!["a.example.org.".to_string(), "b.example.org.".to_string()]
        );
        assert_eq!(
            r.mx_hosts("nomx.example.org").await.unwrap(),
            vec!["nomx.example.org.".to_string()]
        );
        assert!(matches!(
            r.mx_hosts("null.example.org").await,
            Err(LookupError::Permanent(_))
        ));
        assert_eq!(
            r.host_ips("a.example.org.").await.unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(
            r.host_ips("b.example.org.").await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            r.host_ips("missing.example.org").await,
            Err(LookupError::Permanent(_))
        ));
        assert_eq!(
            r.host_ips("192.0.2.7").await.unwrap(),
            vec![IpAddr::from([192, 0, 2, 7])]
        );
    }

    #[test]
    fn bad_static_records_are_refused_with_the_record_named() {
        for bad in ["A notanip", "MX x host", "CNAME x", "TXT", "_dmarc"] {
            let e = Resolver::with_static(&[("_dmarc.x.org".into(), vec![bad.into()])]);
            assert!(e.is_err(), "{bad}");
        }
    }
}
