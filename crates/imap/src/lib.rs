//! IMAP server sessions over the slot store (RFC 3501 plus the extensions listed in
//! [`CAPABILITIES_BASE`]).
//!
//! Code map (mini-redis style): `session.rs` owns the connection, the state machine and
//! response writing; `selected.rs` is the selected mailbox's view (the sequence
//! number → UID map, catching up with the store's change log, SELECT/EXAMINE with
//! CONDSTORE/QRESYNC, the rules for when EXISTS/EXPUNGE/VANISHED/FETCH may be sent;
//! flags and other message data are never cached, always read); one file per
//! command group (`auth`, `mailbox`, `append`, `fetch`, `store`, `search`, `copy`,
//! `expunge`, `idle`). The grammar lives in `imap-proto`; message rendering in `mime`.
//!
//! Architecture invariant: a session never writes to the store except through
//! `Slot::execute_async`, and acknowledges a write only after it returns (durable).
//!
//! Protocol levels: IMAP4rev1 by default; `ENABLE IMAP4rev2`, `ENABLE CONDSTORE`,
//! `ENABLE QRESYNC` switch a session's responses (`session::Enabled`); the details and
//! the limits are in `docs/imap.md`.
//!
//! `\Recent` is tracked in memory by the server (see [`RecentTracker`]): a message is
//! `\Recent` in the first session of this process that sees it in a selected mailbox.
//! After a restart the first session to select a mailbox sees all its messages as
//! `\Recent` again (the state is not persisted; RFC 3501 allows \Recent to be imprecise).

pub mod mime;

mod append;
mod auth;
mod compress;
mod copy;
mod esearch;
mod expunge;
mod ext;
mod fetch;
mod idle;
mod limits;
mod mailbox;
mod message;
mod notify;
mod objectid;
mod quota;
mod resp;
mod scan_cache;
mod search;
mod selected;
mod session;
mod sort;
#[path = "store.rs"]
mod store_cmd;
mod thread;
mod time;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::directory::{AuthLimiter, Directory};
use store::{MailboxId, Slot};

/// Extensions advertised in every state (the state-dependent ones are added by the session).
pub const CAPABILITIES_BASE: &str = "IMAP4rev1 IMAP4rev2 CONDSTORE QRESYNC LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN";

/// Server settings. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Used in greetings and logs.
    pub hostname: String,
    /// Allow LOGIN / AUTHENTICATE PLAIN without TLS (tests, or behind a TLS proxy).
    pub allow_plaintext_auth: bool,
    /// Framing limits (line, literal, command sizes). See `imap_proto::Limits`.
    pub limits: imap_proto::Limits,
    /// Autologout of an authenticated session with no client activity (RFC 3501: >= 30 min).
    pub idle_timeout: Duration,
    /// Autologout of a session that has not logged in.
    pub unauth_timeout: Duration,
    /// Largest message APPEND accepts; larger gets `NO [TOOBIG]`.
    pub append_bytes_max: u64,
    /// Commands per second per connection (bursts of 5 s worth allowed); over it a
    /// command gets `NO [LIMIT]`. 0 = no limit.
    pub commands_per_second: u32,
    /// Open connections per client IP address; over it `* BYE [UNAVAILABLE]`. 0 = no limit.
    pub connections_per_ip_max: u32,
    /// Logged-in sessions per user; over it LOGIN gets `NO [LIMIT]`. 0 = no limit.
    pub connections_per_user_max: u32,
    /// SELECT keeps what it learnt about mailboxes of at least this many messages, so
    /// the next SELECT catches up instead of reading every record (`scan_cache.rs`).
    pub select_cache_min_messages: u32,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            hostname: "localhost".into(),
            allow_plaintext_auth: false,
            limits: imap_proto::Limits::default(),
            idle_timeout: Duration::from_secs(30 * 60),
            unauth_timeout: Duration::from_secs(60),
            append_bytes_max: 64 * 1024 * 1024,
            commands_per_second: 200,
            connections_per_ip_max: 200,
            connections_per_user_max: 50,
            select_cache_min_messages: 2000,
        }
    }
}

/// Shared state of the IMAP service: configuration, accounts, the slots served here.
pub struct ImapServer {
    pub(crate) config: ImapConfig,
    pub(crate) directory: Arc<Directory>,
    pub(crate) limiter: Arc<AuthLimiter>,
    pub(crate) slots: HashMap<String, Slot>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) recent: RecentTracker,
    pub(crate) conns: Arc<limits::ConnTable>,
    pub(crate) scan_cache: scan_cache::ScanCache,
    /// TLS login policy (see `store::LoginGate`); unset: `allow_plaintext_auth` decides.
    pub(crate) gate: std::sync::OnceLock<Arc<dyn store::LoginGate>>,
}

impl ImapServer {
    /// Installs the TLS login policy; only the first call counts (set it at start-up).
    pub fn set_login_gate(&self, gate: Arc<dyn store::LoginGate>) {
        let _ = self.gate.set(gate);
    }

    pub fn new(
        config: ImapConfig,
        directory: Arc<Directory>,
        limiter: Arc<AuthLimiter>,
        slots: HashMap<String, Slot>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Arc<Self> {
        Arc::new(ImapServer {
            config,
            directory,
            limiter,
            slots,
            tls,
            recent: RecentTracker::default(),
            conns: Arc::new(limits::ConnTable::default()),
            scan_cache: scan_cache::ScanCache::default(),
            gate: std::sync::OnceLock::new(),
        })
    }

    /// Serves one client until it logs out, times out or disconnects. `implicit_tls`:
    /// true on the imaps listener (the TLS handshake happens before the greeting).
    /// Errors end only this connection; they are not reported further (the client saw
    /// a `BYE` where one could be sent).
    pub async fn serve(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
    ) {
        let _ = stream.set_nodelay(true);
        let max = self.config.connections_per_ip_max;
        let Some(_counted) = self.conns.admit_ip(peer.ip(), max) else {
            limits::refuse_connection(stream, max, implicit_tls).await;
            return;
        };
        session::run(self, stream, peer, implicit_tls).await;
    }
}

/// A client a frontend authenticated and proxied to this host (the proxy header, see the
/// wiring's `frontend` module): who it is and how it reached the frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedClient {
    /// The account address the frontend verified the password of.
    pub user: String,
    /// The client's address as the frontend saw it: used for logging, limits and the TLS
    /// policy's records in place of the frontend's own address.
    pub peer: SocketAddr,
    /// The client's connection to the frontend was TLS.
    pub tls: bool,
    /// What the client said about itself (IMAP `ID`, see [`describe_client`]); may be empty.
    pub id: String,
}

impl ImapServer {
    /// Serves a connection a frontend proxied here over the cluster's mutual-TLS proxy
    /// listener: the session starts already authenticated as `client.user` (greeting
    /// `* PREAUTH [CAPABILITY ...]`), with the per-address (the client's) and per-user
    /// connection limits applied and, when
    /// the client had no TLS, the login reported to the TLS policy. If the user cannot be
    /// served here (unknown, slot not mastered here, over the limit) the greeting is
    /// `* BYE <reason>` and the connection ends.
    pub async fn serve_preauth(
        self: Arc<Self>,
        stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        client: ProxiedClient,
    ) {
        let _ = stream.get_ref().0.set_nodelay(true);
        // The client's address from the header is the one that counts, as on a direct
        // connection.
        let max = self.config.connections_per_ip_max;
        let Some(_counted) = self.conns.admit_ip(client.peer.ip(), max) else {
            let mut stream = stream;
            let bye = format!(
                "* BYE [UNAVAILABLE] Too many connections from your address (limit {max}); close some and retry\r\n"
            );
            use tokio::io::AsyncWriteExt as _;
            let write = async {
                stream.write_all(bye.as_bytes()).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
            return;
        };
        session::run_preauth(self, session::Stream::Tls(Box::new(stream)), client).await;
    }
}

pub use auth::describe_client;

/// Which messages have already been `\Recent` in some session of this process: per
/// mailbox, the highest UID claimed. Bounded: past `RECENT_TRACKED_MAX` mailboxes the
/// table is cleared (worst case a message is `\Recent` twice, which clients tolerate).
#[derive(Default)]
pub(crate) struct RecentTracker {
    claimed: Mutex<HashMap<(String, MailboxId), u32>>,
}

const RECENT_TRACKED_MAX: usize = 100_000;

impl RecentTracker {
    /// Claims every UID up to `last_uid` for the caller and returns the previous claim
    /// (UIDs above it are `\Recent` for the caller). `None`: never claimed in this process.
    pub(crate) fn claim(&self, slot: &str, mailbox: MailboxId, last_uid: u32) -> Option<u32> {
        let mut map = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= RECENT_TRACKED_MAX && !map.contains_key(&(slot.to_string(), mailbox)) {
            map.clear();
        }
        let entry = map.entry((slot.to_string(), mailbox));
        match entry {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let prev = *o.get();
                if last_uid > prev {
                    o.insert(last_uid);
                }
                Some(prev)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(last_uid);
                None
            }
        }
    }

    /// The current claim, without changing it (for STATUS RECENT).
    pub(crate) fn peek(&self, slot: &str, mailbox: MailboxId) -> Option<u32> {
        let map = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(slot.to_string(), mailbox)).copied()
    }
}

/// The tagged answer (`BAD …` or `NO …`) to an unusable SASL PLAIN response; the IMAP
/// frontend words it the same.
pub fn plain_error_reply(e: store::directory::PlainError) -> &'static str {
    use store::directory::PlainError as E;
    match e {
        E::Cancelled => "BAD Authentication cancelled",
        E::NotBase64 => "BAD Authentication response is not valid base64",
        E::Malformed => "BAD Malformed PLAIN response",
        E::BadName => "NO [AUTHENTICATIONFAILED] Invalid credentials",
        E::OtherIdentity => "NO [AUTHORIZATIONFAILED] Acting as another user is not allowed",
    }
}

/// Checks `user`'s password against the directory (with the failed-login throttling), off
/// the async threads: the account, or the text of the tagged `NO` (after `NO `). The one
/// check of the store's IMAP sessions and the IMAP frontend.
pub async fn check_password(
    directory: Arc<Directory>,
    limiter: Arc<AuthLimiter>,
    user: &str,
    pass: &[u8],
    ip: std::net::IpAddr,
) -> Result<store::directory::Account, String> {
    use store::directory::AuthOutcome;
    let (user, pass) = (user.to_string(), pass.to_vec());
    let outcome =
        tokio::task::spawn_blocking(move || limiter.authenticate(&directory, &user, &pass, ip))
            .await;
    match outcome {
        Ok(Ok(AuthOutcome::Ok(a))) => Ok(a),
        Ok(Ok(AuthOutcome::Failed)) => Err("[AUTHENTICATIONFAILED] Invalid credentials".into()),
        Ok(Ok(AuthOutcome::Throttled(d))) => Err(format!(
            "[UNAVAILABLE] Too many failed logins; try again in {} s",
            d.as_secs().max(1)
        )),
        Ok(Err(_)) | Err(_) => {
            Err("[UNAVAILABLE] The account directory cannot be read; try again later".into())
        }
    }
}
