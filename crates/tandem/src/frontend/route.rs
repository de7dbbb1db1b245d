//! Routing: user → slot (the local account directory) → the slot's master (the cluster
//! state, kept current by a watch thread) → the master's `proxy` address (cluster.toml),
//! and the connection there: TCP (connect timeout [`CONNECT_TIMEOUT`]), TLS with this
//! host's certificate (the server must present one naming the master), the proxy header,
//! and its answer (see `header.rs`).
//!
//! Following: a thread waits on `ClusterState::watch` and swaps in each new snapshot, so a
//! new connection uses a master the state named within one watch round (the embedded
//! backend polls every 50 ms). A `MOVED` answer or a failed connection reads the state
//! afresh and tries once more before the client is told to come back in a moment.
//! Without a cluster state, masters are the `home`s of cluster.toml.

use super::header::{self, Answer, Header};
use cluster::ClusterConfig;
use cluster::state::{ClusterState, Snapshot};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long a connection to a store host (TCP and TLS handshake, each) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the watch thread waits per round before it reads the state anyway.
const WATCH_ROUND: Duration = Duration::from_secs(5);
/// Pause after a failed state read, so an unreachable state does not spin the thread.
const WATCH_RETRY: Duration = Duration::from_millis(200);

/// A connection to a slot's master that accepted the proxy header.
pub type Backend = TlsStream<TcpStream>;

pub struct Router {
    cluster: ClusterConfig,
    state: Option<Arc<dyn ClusterState>>,
    snap: RwLock<Arc<Snapshot>>,
    connector: tokio_rustls::TlsConnector,
}

/// Why no master could be reached; the text is for logs (clients get a fixed sentence).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl Router {
    pub fn new(
        cluster: ClusterConfig,
        state: Option<Arc<dyn ClusterState>>,
        client: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Arc<Router>> {
        let snap = match &state {
            Some(s) => s.snapshot()?,
            None => Snapshot::default(),
        };
        let r = Arc::new(Router {
            cluster,
            state,
            snap: RwLock::new(Arc::new(snap)),
            connector: tokio_rustls::TlsConnector::from(client),
        });
        if r.state.is_some() {
            let weak = Arc::downgrade(&r);
            std::thread::Builder::new()
                .name("frontend-follow".into())
                .spawn(move || watch(weak))?;
        }
        Ok(r)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, s: Snapshot) {
        let mut cur = self.snap.write().unwrap_or_else(|p| p.into_inner());
        if s.revision >= cur.revision {
            *cur = Arc::new(s);
        }
    }

    /// Reads the state now (after a `MOVED` or a failed connection).
    async fn refresh(self: &Arc<Self>) {
        let Some(state) = self.state.clone() else {
            return;
        };
        if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || state.snapshot()).await {
            self.store(s);
        }
    }

    /// The host mastering `slot` now, as far as this frontend knows.
    pub fn master_of(&self, slot: &str) -> Option<String> {
        if self.state.is_some()
            && let Some(s) = self.snapshot().slots.get(slot)
        {
            return Some(s.master.clone());
        }
        self.cluster.slots.get(slot).map(|s| s.master.clone())
    }

    /// Connects to the master of `slot` and sends `header`; one retry on the state read
    /// afresh when the master refuses (`MOVED`) or cannot be reached.
    pub async fn open(
        self: &Arc<Self>,
        slot: &str,
        header: &Header,
    ) -> Result<(Backend, String), Unreachable> {
        let mut why = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                self.refresh().await;
            }
            let Some(master) = self.master_of(slot) else {
                return Err(Unreachable(format!("slot {slot} is not in cluster.toml")));
            };
            match self.connect(&master, header).await {
                Ok(b) => return Ok((b, master)),
                Err(e) => why = e,
            }
        }
        Err(Unreachable(why))
    }

    async fn connect(&self, master: &str, header: &Header) -> Result<Backend, String> {
        let host = self
            .cluster
            .host(master)
            .ok_or_else(|| format!("master {master} is not in cluster.toml"))?;
        let addr: SocketAddr = host
            .proxy
            .ok_or_else(|| format!("[hosts.{master}] has no proxy address in cluster.toml"))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {master} at {addr} timed out"))?
            .map_err(|e| format!("connect to {master} at {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp);
        let name = ServerName::try_from(master.to_string())
            .map_err(|_| format!("{master:?} is not a valid TLS server name"))?;
        let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {master} timed out"))?
            .map_err(|e| format!("TLS handshake with {master} at {addr}: {e}"))?;
        let line = header.encode();
        tokio::time::timeout(header::TIMEOUT, async {
            tls.write_all(line.as_bytes()).await?;
            tls.flush().await
        })
        .await
        .map_err(|_| format!("sending the proxy header to {master} timed out"))?
        .map_err(|e| format!("sending the proxy header to {master}: {e}"))?;
        let answer = header::read_line(&mut tls, header::ANSWER_BYTES_MAX)
            .await
            .ok_or_else(|| format!("{master} did not answer the proxy header"))?;
        match Answer::parse(&answer) {
            Some(Answer::Ok) => Ok(tls),
            Some(Answer::Moved(to)) => Err(format!(
                "{master} no longer masters the slot (moved to {})",
                to.as_deref().unwrap_or("?")
            )),
            Some(Answer::Err(e)) => Err(format!("{master} refused the proxy header: {e}")),
            None => Err(format!(
                "{master} answered the proxy header with {:?}",
                String::from_utf8_lossy(&answer)
            )),
        }
    }
}

/// TCP keepalive on a connection to a store host: a host that vanishes without closing its
/// sockets (power loss, a cut cable) ends the splice, and so the client's connection, after
/// [`KEEPALIVE_IDLE`] + [`KEEPALIVE_RETRIES`] × [`KEEPALIVE_INTERVAL`] (90 s) instead of
/// TCP's two hours; the client then reconnects and is routed to the new master.
fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        eprintln!("frontend: cannot set TCP keepalive on a store connection: {e}");
    }
}

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// The watch thread: ends when the router is dropped.
fn watch(router: std::sync::Weak<Router>) {
    let mut seen = match router.upgrade() {
        Some(r) => r.snapshot().revision,
        None => return,
    };
    loop {
        let Some(r) = router.upgrade() else { return };
        let Some(state) = r.state.clone() else { return };
        drop(r);
        match state.watch(seen, WATCH_ROUND) {
            Ok(s) => {
                seen = s.revision;
                match router.upgrade() {
                    Some(r) => r.store(s),
                    None => return,
                }
            }
            Err(_) => std::thread::sleep(WATCH_RETRY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_connections_carry_tcp_keepalive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        keepalive(&tcp);
        let s = socket2::SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
