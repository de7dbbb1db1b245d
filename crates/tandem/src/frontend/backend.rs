//! The store side of the frontend: the proxy listener (`proxy = "IP:PORT"` of this host in
//! cluster.toml). TLS with mutual authentication by the cluster CA; the client certificate
//! must name a host with the frontend role. It reads the proxy header (`header.rs`),
//! answers `OK` when this host masters the user's slot now (`MOVED -` otherwise, and
//! closes), and runs the protocol session on the same stream:
//!
//! - `imap`: `ImapServer::serve_preauth` (greeting `* PREAUTH [CAPABILITY ...]`);
//! - `pop3`: `Pop3Server::serve_preauth` (first line: the `+OK` of a login);
//! - `lmtp`: the LMTP server over local delivery (a recipient whose slot is not mastered
//!   here gets `451`, so the sender retries and the frontend routes it anew).
//!
//! The client address in the header replaces the frontend's address for logging, limits
//! and the TLS policy. A host demoted by the cluster state re-executes itself
//! (`follow.rs`): every proxied session ends with it and the frontend closes the client's
//! connection, so clients reconnect and are routed to the new master.

use super::header::{self, Answer, Header, Protocol};
use crate::deliver::LocalDelivery;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::directory::Directory;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Time allowed for a frontend's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProxyServer {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Hosts with the frontend role: the only certificates accepted.
    pub frontends: Vec<String>,
    pub directory: Arc<Directory>,
    /// Slots this host masters (and serves) in this run of the process.
    pub served: HashSet<String>,
    pub imap: Arc<imap::ImapServer>,
    pub pop3: Arc<pop3::Pop3Server>,
    pub delivery: Arc<LocalDelivery>,
    pub lmtp: Arc<smtp::LmtpConfig>,
    /// The TLS policy: records the insecure submission logins frontends report.
    pub gate: Arc<dyn store::LoginGate>,
}

impl ProxyServer {
    /// One connection from a frontend, to its end. Errors end only this connection.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                eprintln!("proxy: TLS handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => return,
        };
        let named = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| {
                self.frontends
                    .iter()
                    .find(|h| replication::transport::cert_names_host(c, h))
            })
            .cloned();
        let Some(frontend) = named else {
            eprintln!("proxy: {peer} presented no certificate of a frontend host; closed");
            return;
        };
        let Some(line) = header::read_line(&mut tls, header::HEADER_BYTES_MAX).await else {
            return;
        };
        let h = match Header::parse(&line) {
            Ok(h) => h,
            Err(e) => {
                let _ = answer(&mut tls, &Answer::Err(format!("bad proxy header: {e}"))).await;
                eprintln!("proxy: bad header from {frontend}: {e}");
                return;
            }
        };
        // The client, as the frontend saw it; its port is not carried.
        let client_peer = SocketAddr::new(h.client_ip, 0);
        match h.protocol {
            Protocol::Lmtp => {
                if answer(&mut tls, &Answer::Ok).await.is_err() {
                    return;
                }
                let _ = smtp::serve_lmtp(tls, client_peer, &*self.delivery, &self.lmtp).await;
            }
            Protocol::SubmissionLogin => {
                let user = h.user.clone().unwrap_or_default();
                if !self.masters_slot_of(&user).await {
                    let _ = answer(&mut tls, &Answer::Moved(None)).await;
                    return;
                }
                self.gate
                    .insecure_login("submission", &user, h.client_ip, &h.client_id);
                let _ = answer(&mut tls, &Answer::Ok).await;
            }
            Protocol::Imap | Protocol::Pop3 => {
                let user = h.user.clone().unwrap_or_default();
                if !self.masters_slot_of(&user).await {
                    let _ = answer(&mut tls, &Answer::Moved(None)).await;
                    return;
                }
                if answer(&mut tls, &Answer::Ok).await.is_err() {
                    return;
                }
                self.session(tls, h, client_peer).await;
            }
        }
    }

    async fn session(
        &self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        h: Header,
        client_peer: SocketAddr,
    ) {
        let user = h.user.unwrap_or_default();
        match h.protocol {
            Protocol::Imap => {
                let client = imap::ProxiedClient {
                    user,
                    peer: client_peer,
                    tls: h.client_tls,
                    id: h.client_id,
                };
                self.imap.clone().serve_preauth(tls, client).await;
            }
            Protocol::Pop3 => {
                let client = pop3::ProxiedClient {
                    user,
                    peer: client_peer,
                    tls: h.client_tls,
                };
                self.pop3.clone().serve_preauth(tls, client).await;
            }
            Protocol::Lmtp | Protocol::SubmissionLogin => {}
        }
    }

    /// Does this host master the slot of `user`'s account now? An unknown user is
    /// answered here too (the session then says so): it has no slot to be elsewhere.
    async fn masters_slot_of(&self, user: &str) -> bool {
        let dir = self.directory.clone();
        let user = user.to_string();
        let slot = tokio::task::spawn_blocking(move || {
            dir.load()
                .ok()
                .map(|a| a.get(&user).map(|acct| acct.slot.clone()))
        })
        .await
        .ok()
        .flatten();
        match slot {
            Some(Some(s)) => self.served.contains(&s),
            // Unknown account, or an unreadable directory: let the session explain.
            Some(None) | None => true,
        }
    }
}

async fn answer<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, a: &Answer) -> std::io::Result<()> {
    let w = async {
        s.write_all(a.encode().as_bytes()).await?;
        s.flush().await
    };
    tokio::time::timeout(header::TIMEOUT, w)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "frontend not reading"))?
}
