//! POP3 server sessions over the slot store: RFC 1939 (USER/PASS, STAT, LIST, RETR, DELE,
//! NOOP, RSET, QUIT, TOP, UIDL), RFC 2449 (CAPA, response codes), RFC 2595 (STLS),
//! RFC 3206 (`[AUTH]`, `[SYS/TEMP]`, `[SYS/PERM]`) and RFC 5034 (AUTH PLAIN).
//!
//! Code map: `command.rs` is the grammar and the line framer (pure, proptested);
//! `dot.rs` byte-stuffs multi-line bodies and cuts TOP (pure, proptested); `maildrop.rs`
//! is the session's numbered snapshot of the INBOX; `session.rs` owns the connection, the
//! state machine and STLS; `auth.rs` the AUTHORIZATION state; `transaction.rs` the
//! TRANSACTION and UPDATE states.
//!
//! Semantics an operator or a client may rely on:
//! - POP3 serves the account's INBOX. The message list is a snapshot taken at login:
//!   numbers, sizes and UIDLs never shift during a session, whatever IMAP clients do
//!   meanwhile. A message expunged by another session since login answers `-ERR` to RETR
//!   and TOP; no lock is taken, so POP3 and IMAP (and two POP3 sessions) work side by side.
//! - UIDL is `%08X` of the UID followed by `%08X` of the UIDVALIDITY (Dovecot's default
//!   format, so mail moved from Dovecot with its UIDs is not downloaded twice). A message
//!   keeps its UIDL for ever (DESIGN invariant 5: UIDs are never reused).
//! - DELE only marks. QUIT enters the UPDATE state and expunges exactly the marked
//!   messages (`Op::Store +\Deleted`, then `Op::Expunge` of those UIDs only). A connection
//!   that ends without QUIT deletes nothing.
//! - RETR marks the message `\Seen`, like Dovecot: the flags are written once at QUIT, or
//!   when the connection ends without QUIT.
//! - A message whose bytes fail their BLAKE3 check answers `-ERR [SYS/PERM] message N is
//!   damaged ...`, an alert is raised by the store, and the session carries on.
//! - Sizes in STAT and LIST are the stored sizes, which are exact for every message with
//!   CRLF line ends that ends in CRLF (all mail delivered by LMTP). RETR sends bare LFs as
//!   CRLF, so a message APPENDed over IMAP with bare LFs is sent a little larger.
//!
//! Architecture invariant: a session writes to the store only through
//! `Slot::execute_async`, and answers QUIT's `+OK` only after the expunge is durable.

pub mod command;
pub mod dot;

mod auth;
pub use auth::{Refusal, check_password, plain_error_text};
mod maildrop;
mod session;
mod transaction;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use store::Slot;
use store::directory::{AuthLimiter, Directory};

/// Server settings. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    /// Used in the greeting.
    pub hostname: String,
    /// Allow USER/PASS and AUTH PLAIN without TLS (tests, or behind a TLS proxy). Same
    /// setting as IMAP's.
    pub allow_plaintext_auth: bool,
    /// Longest command line accepted, without CRLF. RFC 2449 allows clients 255; we take
    /// up to 1024 and answer `-ERR` beyond (the rest of the line is skipped).
    pub line_bytes_max: usize,
    /// Autologout after this long without a command (RFC 1939 3: at least 10 minutes).
    /// Applies in every state; an autologout never enters the UPDATE state.
    pub idle_timeout: Duration,
    /// Invalid commands (unknown, malformed, wrong state, over-long) before the server
    /// closes the connection: a client sending that many is broken or hostile.
    pub bad_commands_max: u32,
    /// The implicit-TLS (pop3s) port, named in the answer to a login attempted without
    /// TLS.
    pub implicit_tls_port: u16,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            hostname: "localhost".into(),
            allow_plaintext_auth: false,
            line_bytes_max: 1024,
            idle_timeout: Duration::from_secs(10 * 60),
            bad_commands_max: 20,
            implicit_tls_port: 995,
        }
    }
}

/// Shared state of the POP3 service: configuration, accounts, the slots served here.
pub struct Pop3Server {
    pub(crate) config: Pop3Config,
    pub(crate) directory: Arc<Directory>,
    pub(crate) limiter: Arc<AuthLimiter>,
    pub(crate) slots: HashMap<String, Slot>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS login policy (see `store::LoginGate`); unset: `allow_plaintext_auth` decides.
    pub(crate) gate: std::sync::OnceLock<Arc<dyn store::LoginGate>>,
}

impl Pop3Server {
    pub fn new(
        config: Pop3Config,
        directory: Arc<Directory>,
        limiter: Arc<AuthLimiter>,
        slots: HashMap<String, Slot>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Arc<Self> {
        Arc::new(Pop3Server {
            config,
            directory,
            limiter,
            slots,
            tls,
            gate: std::sync::OnceLock::new(),
        })
    }

    /// Installs the TLS login policy; only the first call counts (set it at start-up).
    pub fn set_login_gate(&self, gate: Arc<dyn store::LoginGate>) {
        let _ = self.gate.set(gate);
    }

    /// Serves one client until it quits, times out or disconnects. `implicit_tls`: true
    /// on the pop3s listener (the TLS handshake happens before the greeting). Errors end
    /// only this connection.
    pub async fn serve(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
    ) {
        let _ = stream.set_nodelay(true);
        session::run(self, stream, peer, implicit_tls).await;
    }

    /// Serves a connection a frontend proxied here over the cluster's mutual-TLS proxy
    /// listener, for a user the frontend authenticated: the maildrop is opened as at a
    /// successful PASS and the first line sent is that `+OK` (the frontend relays it to
    /// its client). If the user cannot be served here the first line is `-ERR <reason>`
    /// and the connection ends. A login without TLS (as the frontend saw it) is reported
    /// to the TLS policy with the client's address.
    pub async fn serve_preauth(
        self: Arc<Self>,
        stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        client: ProxiedClient,
    ) {
        let _ = stream.get_ref().0.set_nodelay(true);
        session::run_preauth(self, stream, client).await;
    }
}

/// A client a frontend authenticated and proxied to this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedClient {
    /// The account address whose password the frontend verified.
    pub user: String,
    /// The client's address as the frontend saw it (limits, records, logging).
    pub peer: SocketAddr,
    /// The client's connection to the frontend was TLS.
    pub tls: bool,
}
