//! The frontend role (DESIGN "Roles and data flow"): client-facing IMAP, POP3 and LMTP
//! listeners that authenticate (or, for LMTP, identify) the user, find the master of the
//! user's slot in the cluster state, and proxy the connection to it; and, on every store
//! host, the proxy listener those connections arrive on.
//!
//! ```text
//! client ──IMAP/POP3/LMTP──► frontend (login, route.rs) ══TLS, cluster CA══► master's proxy
//!                                                        listener (backend.rs) ─► session
//! ```
//!
//! - `header.rs`: the one-line proxy header and its answer (the wire format).
//! - `route.rs`: user → slot → master → `proxy` address; the watch thread; connecting.
//! - `backend.rs`: the store host's proxy listener.
//! - `imap.rs`, `pop3.rs`: the pre-login states, then a byte splice.
//! - `lmtp.rs`: `RemoteDelivery` (an `smtp::Deliver`) and its LMTP client.
//!
//! Configuration: `proxy = "IP:PORT"` per store host in cluster.toml (required once any
//! host has the frontend role); `[frontend]` in tandem.toml on hosts whose roles include
//! `frontend`, keys `imap`, `imaps`, `pop3`, `pop3s`, `lmtp`, `submission`, `submissions`
//! (each `IP:PORT`; an unset key is not served; there are no defaults, so a host with both
//! roles never clashes with its own `[listen]` by accident).
//!
//! Submission on a frontend is the ordinary submission server (`mail.rs`): its local
//! recipients are delivered through `LocalDelivery`, which on a frontend sends mail for
//! accounts mastered elsewhere to their master by LMTP (`lmtp.rs`); remote recipients and
//! temporary failures go to this host's outbound queue, as on any host.
//!
//! Following: new connections go to the master the state names now (the watch thread);
//! established ones end when the old master re-executes after its demotion (its sockets
//! close, the splice ends, the frontend closes the client's connection), and the client
//! reconnects to the new master.

pub mod backend;
pub mod header;
pub mod imap;
pub mod lmtp;
pub mod pop3;
pub mod route;

use crate::config::Config;
use crate::deliver::LocalDelivery;
use anyhow::{Context, Result, bail};
use cluster::{ClusterConfig, HostRole};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use store::LoginGate;
use store::directory::{AuthLimiter, Directory};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A client or store host that does not take our bytes for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// After the client closes its side of a spliced connection, how long the store host's
/// last words (the end of a LOGOUT) may take to drain to it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a client gets for its TLS handshake (implicit TLS or STARTTLS/STLS).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server side of a client's TLS handshake, bounded by [`TLS_HANDSHAKE_TIMEOUT`];
/// `None` when it failed or took too long (the connection is then dropped).
async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

/// `[frontend]` in tandem.toml.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FrontendListen {
    pub imap: Option<String>,
    pub imaps: Option<String>,
    pub pop3: Option<String>,
    pub pop3s: Option<String>,
    pub lmtp: Option<String>,
    pub submission: Option<String>,
    pub submissions: Option<String>,
}

impl FrontendListen {
    /// The keys set, in a fixed order, with their addresses.
    pub fn set(&self) -> Vec<(&'static str, &str)> {
        [
            ("imap", &self.imap),
            ("imaps", &self.imaps),
            ("pop3", &self.pop3),
            ("pop3s", &self.pop3s),
            ("lmtp", &self.lmtp),
            ("submission", &self.submission),
            ("submissions", &self.submissions),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    fn addr(&self, key: &str, v: &str) -> Result<SocketAddr> {
        v.parse().with_context(|| {
            format!("[frontend] {key} = {v:?} is not an address like \"0.0.0.0:143\"")
        })
    }
}

/// What `serve` hands the frontend role and the proxy listener.
pub struct Wiring<'a> {
    pub dir: &'a Path,
    pub cfg: &'a Config,
    pub acceptor: &'a tokio_rustls::TlsAcceptor,
    pub directory: &'a Arc<Directory>,
    pub limiter: &'a Arc<AuthLimiter>,
    pub gate: Arc<dyn LoginGate>,
    pub imap: &'a Arc<::imap::ImapServer>,
    pub pop3: &'a Arc<::pop3::Pop3Server>,
    pub delivery: &'a Arc<LocalDelivery>,
    pub lmtp: &'a Arc<smtp::LmtpConfig>,
    /// The SMTP servers (`[frontend] submission` and `submissions` serve these).
    pub mail: &'a crate::mailserve::Mail,
    /// Slots mastered and served by this process.
    pub served: HashSet<String>,
    pub conns: &'a Arc<Semaphore>,
}

/// For `tandem status`: this host's frontend listeners (from tandem.toml) and its proxy
/// listener (from cluster.toml); nothing for a host outside a cluster.
pub fn status_lines(dir: &Path) -> Result<Vec<String>> {
    let cfg = Config::load(dir)?;
    let Some(host) = cfg.host.clone() else {
        return Ok(Vec::new());
    };
    let (path, _) = crate::cluster::files(dir, &cfg, &host);
    let Ok(cluster) = ClusterConfig::load(&path) else {
        return Ok(Vec::new());
    };
    let Some(me) = cluster.host(&host) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if me.has_role(HostRole::Frontend) {
        let l: Vec<String> = cfg
            .frontend
            .set()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push(format!(
            "frontend: {}",
            if l.is_empty() {
                "no listeners ([frontend] in tandem.toml)".into()
            } else {
                l.join("  ")
            }
        ));
    }
    if me.has_role(HostRole::Store)
        && let Some(p) = me.proxy
    {
        out.push(format!("proxy (from frontends): {p}"));
    }
    Ok(out)
}

/// Starts the proxy listener (store hosts with a `proxy` address) and the frontend
/// listeners (hosts with the frontend role). Returns lines for the start-up summary.
pub async fn start(w: Wiring<'_>) -> Result<Vec<String>> {
    let cfg = w.cfg;
    let Some(host) = cfg.host.clone() else {
        if !cfg.frontend.set().is_empty() {
            bail!(
                "tandem.toml has [frontend] listeners but no host = \"NAME\": the frontend role \
                 needs a cluster (see docs/cluster.md), or remove [frontend]"
            );
        }
        return Ok(Vec::new());
    };
    let (path, files) = crate::cluster::files(w.dir, cfg, &host);
    let cluster = ClusterConfig::load(&path)?;
    let me = cluster
        .host(&host)
        .with_context(|| format!("{} has no [hosts.{host}]", path.display()))?
        .clone();
    let is_frontend = me.has_role(HostRole::Frontend);
    if !is_frontend && !cfg.frontend.set().is_empty() {
        bail!(
            "tandem.toml has [frontend] listeners but {} gives host {host} no \"frontend\" role: \
             add it to roles = [...] or remove [frontend]",
            path.display()
        );
    }
    let proxy_addr = me.proxy.filter(|_| me.has_role(HostRole::Store));
    if !is_frontend && proxy_addr.is_none() {
        return Ok(Vec::new());
    }
    let tls = replication::Tls::load(&files)
        .context("the frontend role and proxy listener need the cluster certificates")?;
    let mut lines = Vec::new();

    if let Some(addr) = proxy_addr {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for proxy = \"{addr}\" of [hosts.{host}] in cluster.toml"
            )
        })?;
        let proxy = Arc::new(backend::ProxyServer {
            acceptor: tokio_rustls::TlsAcceptor::from(tls.server_config()),
            frontends: cluster.frontends().iter().map(|h| h.name.clone()).collect(),
            directory: w.directory.clone(),
            served: w.served.clone(),
            imap: w.imap.clone(),
            pop3: w.pop3.clone(),
            delivery: w.delivery.clone(),
            lmtp: w.lmtp.clone(),
            gate: w.gate.clone(),
        });
        tokio::spawn(crate::serve::accept_loop(
            l,
            w.conns.clone(),
            "proxy",
            move |s, peer| proxy.clone().serve(s, peer),
        ));
        lines.push(format!("  {:<12} {addr} (from frontends)", "proxy"));
    }
    if !is_frontend {
        return Ok(lines);
    }

    let state = crate::follow::open_state(w.dir, cfg)?;
    let router = route::Router::new(cluster.clone(), state, tls.client_config())
        .context("cannot start following the cluster state for the frontend")?;
    let mut bound = Vec::new();
    for (key, v) in cfg.frontend.set() {
        let addr = cfg.frontend.addr(key, v)?;
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for [frontend] {key} in tandem.toml")
        })?;
        bound.push((key, addr, l));
    }
    let pop3s_port = bound
        .iter()
        .find(|(k, _, _)| *k == "pop3s")
        .map(|(_, a, _)| a.port())
        .unwrap_or(995);
    let imap = Arc::new(imap::FrontImap {
        router: router.clone(),
        directory: w.directory.clone(),
        limiter: w.limiter.clone(),
        tls: Some(w.acceptor.clone()),
        gate: w.gate.clone(),
        unauth_timeout: Duration::from_secs(cfg.limits.imap_unauth_timeout_secs.max(1)),
        per_ip: Arc::new(PerIp::default()),
        per_ip_max: cfg.limits.imap_connections_per_ip_max,
    });
    let pop3 = Arc::new(pop3::FrontPop3 {
        router: router.clone(),
        directory: w.directory.clone(),
        limiter: w.limiter.clone(),
        tls: Some(w.acceptor.clone()),
        gate: w.gate.clone(),
        hostname: cfg.hostname(),
        idle_timeout: ::pop3::Pop3Config::default().idle_timeout,
        implicit_tls_port: pop3s_port,
    });
    let remote = Arc::new(lmtp::RemoteDelivery {
        local: w.delivery.clone(),
        router: router.clone(),
        hostname: cfg.hostname(),
    });
    // Submitted (and queued) mail for accounts mastered elsewhere goes to their masters.
    let _ = w.delivery.remote.set(remote.clone());
    for (key, addr, l) in bound {
        let conns = w.conns.clone();
        match key {
            "imap" | "imaps" => {
                let imap = imap.clone();
                let tls = key == "imaps";
                tokio::spawn(crate::serve::accept_loop(l, conns, key, move |s, peer| {
                    imap.clone().serve(s, peer, tls)
                }));
            }
            "pop3" | "pop3s" => {
                let pop3 = pop3.clone();
                let tls = key == "pop3s";
                tokio::spawn(crate::serve::accept_loop(l, conns, key, move |s, peer| {
                    pop3.clone().serve(s, peer, tls)
                }));
            }
            "submission" | "submissions" => {
                let srv = w.mail.server(key);
                tokio::spawn(crate::serve::accept_loop(l, conns, key, move |s, peer| {
                    let srv = srv.clone();
                    async move {
                        let _ = s.set_nodelay(true);
                        let _ = srv.serve(s, peer).await;
                    }
                }));
            }
            _ => {
                let (remote, lmtp_cfg) = (remote.clone(), w.lmtp.clone());
                tokio::spawn(crate::serve::accept_loop(l, conns, key, move |s, peer| {
                    let (remote, lmtp_cfg) = (remote.clone(), lmtp_cfg.clone());
                    async move {
                        let _ = s.set_nodelay(true);
                        let _ = smtp::serve_lmtp(s, peer, &*remote, &lmtp_cfg).await;
                    }
                }));
            }
        }
        lines.push(format!("  frontend {key:<8} {addr}"));
    }
    Ok(lines)
}

/// Open connections per client address on one frontend listener kind: the store's IMAP
/// limit (`imap_connections_per_ip_max`) applied before login, where the store never sees
/// the connection. Entries go when their count drops to zero.
#[derive(Default)]
pub(crate) struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>);

/// One counted connection; the count drops with it.
pub(crate) struct Counted(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    /// Counts a connection from `ip`; `None` at `max` (0 = no limit).
    pub(crate) fn admit(self: &Arc<Self>, ip: std::net::IpAddr, max: u32) -> Option<Counted> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if max != 0 && *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(Counted(self.clone(), ip))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Writes all of `data` under [`WRITE_TIMEOUT`].
pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
) -> std::io::Result<()> {
    let w = async {
        s.write_all(data).await?;
        s.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, w)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer not reading"))?
}

/// Copies bytes both ways between a logged-in client and its store host, `pending` (what
/// the client pipelined after its login) first. When the store host ends the session (a
/// LOGOUT, its idle timeout, or its process re-executing after a demotion) the client's
/// connection is closed at once; when the client closes its side, the store host's last
/// words drain for at most [`DRAIN_TIMEOUT`].
pub(crate) async fn splice<C, B>(client: C, backend: B, pending: Vec<u8>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    if !pending.is_empty() && write_all(&mut bw, &pending).await.is_err() {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, cw.shutdown()).await;
        return;
    }
    let client_closed = {
        let up = tokio::io::copy(&mut cr, &mut bw);
        let down = tokio::io::copy(&mut br, &mut cw);
        tokio::pin!(up, down);
        tokio::select! {
            _ = &mut up => true,
            _ = &mut down => false,
        }
    };
    if client_closed {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let _ = bw.shutdown().await;
            let _ = tokio::io::copy(&mut br, &mut cw).await;
        })
        .await;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, cw.shutdown()).await;
}
