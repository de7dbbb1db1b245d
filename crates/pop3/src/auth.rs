//! The AUTHORIZATION state: USER/PASS (RFC 1939 7) and AUTH PLAIN (RFC 5034, RFC 4616),
//! with RFC 3206 response codes.
//!
//! Passwords are checked by `AuthLimiter` (argon2 + failure throttling) on a blocking
//! thread. Without TLS no password is accepted and USER is refused too (`-ERR [AUTH]`), so
//! a client never sends the password in the clear, unless the TLS login policy
//! (`store::LoginGate`, or `allow_plaintext_auth` without one) allows it; a plaintext
//! login that succeeds is reported to the policy.

use std::net::IpAddr;
use std::sync::Arc;
use store::Op;
use store::directory::{Account, AuthLimiter, AuthOutcome, Directory};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::Line;
use crate::maildrop::Maildrop;
use crate::session::{
    AUTH_FAILURES_MAX, Conn, Flow, SASL_LINE_BYTES_MAX, Session, SessionError, State, Transaction,
};

impl Session {
    fn tls_required(&self) -> String {
        let hint = store::gate::hint_suffix(self.plaintext_refusal());
        format!(
            "[AUTH] Authentication requires TLS; use STLS or port {}{hint}",
            self.server.config.implicit_tls_port
        )
    }

    pub(crate) fn cmd_user<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        name: String,
    ) -> Flow {
        if !self.login_allowed() {
            conn.err(&self.tls_required());
            return Flow::Continue;
        }
        // Says nothing about whether the account exists.
        self.state = State::Authorization { user: Some(name) };
        conn.ok("Send your password");
        Flow::Continue
    }

    pub(crate) async fn cmd_pass<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        pass: Vec<u8>,
    ) -> Flow {
        if !self.login_allowed() {
            conn.err(&self.tls_required());
            return Flow::Continue;
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            _ => None,
        };
        let Some(user) = user else {
            return self.bad(conn, "Send USER first");
        };
        self.login(conn, &user, &pass).await
    }

    pub(crate) async fn cmd_auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: Option<String>,
        initial: Option<Vec<u8>>,
    ) -> Result<Flow, SessionError> {
        let Some(mechanism) = mechanism else {
            // The mechanism list some older clients ask for with a bare AUTH.
            conn.ok("Mechanisms follow");
            if self.login_allowed() {
                conn.out.extend_from_slice(b"PLAIN\r\n");
            }
            conn.out.extend_from_slice(b".\r\n");
            return Ok(Flow::Continue);
        };
        if mechanism != "PLAIN" {
            conn.err(&format!("Unsupported mechanism {mechanism}; use PLAIN"));
            return Ok(Flow::Continue);
        }
        if !self.login_allowed() {
            conn.err(&self.tls_required());
            return Ok(Flow::Continue);
        }
        self.state = State::Authorization { user: None };
        let response = match initial {
            Some(r) => r,
            None => {
                // RFC 5034 4: an empty challenge is "+ " CRLF.
                conn.out.extend_from_slice(b"+ \r\n");
                match conn
                    .read_line(SASL_LINE_BYTES_MAX, self.server.config.idle_timeout)
                    .await?
                {
                    Line::Complete(l) => l,
                    Line::TooLong => {
                        conn.err("Authentication response too long");
                        return Ok(Flow::Continue);
                    }
                }
            }
        };
        let (authc, pass) = match decode_plain(&response) {
            Ok(v) => v,
            Err(text) => {
                conn.err(text);
                return Ok(Flow::Continue);
            }
        };
        Ok(self.login(conn, &authc, &pass).await)
    }

    /// Checks the password, then opens the maildrop: the TRANSACTION state.
    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        user: &str,
        pass: &[u8],
    ) -> Flow {
        let checked = check_password(
            self.server.directory.clone(),
            self.server.limiter.clone(),
            user,
            pass,
            self.peer.ip(),
        )
        .await;
        let account = match checked {
            Ok(a) => a,
            Err(Refusal::Unavailable(text)) => {
                conn.err(text);
                return Flow::Continue;
            }
            Err(Refusal::Failed(text)) => {
                self.auth_failures += 1;
                if self.auth_failures >= AUTH_FAILURES_MAX {
                    conn.err(&format!(
                        "{text}; too many failed logins on this connection, closing it"
                    ));
                    return Flow::Close;
                }
                conn.err(&text);
                return Flow::Continue;
            }
        };
        self.open_maildrop(conn, account).await
    }

    /// A session a frontend proxied here for `user`, whose password it checked: opens
    /// the maildrop as [`Session::login`] does after a good password.
    pub(crate) async fn begin_preauth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        user: &str,
    ) -> Flow {
        let dir = self.server.directory.clone();
        let account = match tokio::task::spawn_blocking(move || dir.load()).await {
            Ok(Ok(accounts)) => accounts.get(user).cloned(),
            Ok(Err(_)) | Err(_) => {
                conn.err("[SYS/TEMP] The account directory cannot be read; try again later");
                return Flow::Close;
            }
        };
        let Some(account) = account else {
            conn.err("[AUTH] No such account here");
            return Flow::Close;
        };
        self.open_maildrop(conn, account).await
    }

    /// The TRANSACTION state for `account` (its password already checked).
    async fn open_maildrop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        account: store::directory::Account,
    ) -> Flow {
        let Some(slot) = self.server.slots.get(&account.slot).cloned() else {
            conn.err(
                "[SYS/TEMP] Your mailbox is not served by this host right now; try again later",
            );
            return Flow::Continue;
        };
        let name = account.address.clone();
        if let Err(e) = slot
            .execute_async(Op::EnsureUser { user: name.clone() })
            .await
        {
            conn.err(&crate::transaction::store_error_text(&e));
            return Flow::Continue;
        }
        let drop = match Maildrop::load(&slot.view(), &name) {
            Ok(Some(d)) => d,
            Ok(None) => {
                conn.err("[SYS/TEMP] Your INBOX cannot be found; try again later");
                return Flow::Continue;
            }
            Err(e) => {
                conn.err(&crate::transaction::store_error_text(&e));
                return Flow::Continue;
            }
        };
        if !self.tls
            && let Some(g) = self.server.gate.get()
        {
            g.insecure_login("pop3", &name, self.peer.ip(), "");
        }
        let (count, octets) = drop.stat();
        self.state = State::Transaction(Box::new(Transaction { name, slot, drop }));
        conn.ok(&format!("Logged in; {count} messages ({octets} octets)"));
        Flow::Continue
    }
}

/// Why a POP3 login was refused, with its `-ERR` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password, unknown account or throttled: counts as a failed attempt.
    Failed(String),
    /// The account directory cannot be read: not the client's fault.
    Unavailable(&'static str),
}

/// Checks `user`'s password against the directory (with the failed-login throttling),
/// off the async threads: the account, or why not. The one check of the store's POP3
/// sessions and the POP3 frontend.
pub async fn check_password(
    directory: Arc<Directory>,
    limiter: Arc<AuthLimiter>,
    user: &str,
    pass: &[u8],
    ip: IpAddr,
) -> Result<Account, Refusal> {
    let (user, pass) = (user.to_string(), pass.to_vec());
    let outcome =
        tokio::task::spawn_blocking(move || limiter.authenticate(&directory, &user, &pass, ip))
            .await;
    match outcome {
        Ok(Ok(AuthOutcome::Ok(a))) => Ok(a),
        Ok(Ok(AuthOutcome::Failed)) => Err(Refusal::Failed("[AUTH] Invalid credentials".into())),
        Ok(Ok(AuthOutcome::Throttled(d))) => Err(Refusal::Failed(format!(
            "[SYS/TEMP] Too many failed logins; try again in {} s",
            d.as_secs().max(1)
        ))),
        Ok(Err(_)) | Err(_) => Err(Refusal::Unavailable(
            "[SYS/TEMP] The account directory cannot be read; try again later",
        )),
    }
}

/// A PLAIN response decoded, or the `-ERR` text.
fn decode_plain(response: &[u8]) -> Result<(String, Vec<u8>), &'static str> {
    store::directory::sasl_plain(response).map_err(plain_error_text)
}

/// The `-ERR` text for an unusable PLAIN response (also the POP3 frontend's).
pub fn plain_error_text(e: store::directory::PlainError) -> &'static str {
    use store::directory::PlainError as E;
    match e {
        E::Cancelled => "Authentication cancelled",
        E::NotBase64 => "Authentication response is not valid base64",
        E::Malformed => "Malformed PLAIN response",
        E::BadName => "[AUTH] Invalid credentials",
        E::OtherIdentity => "[AUTH] Acting as another user is not allowed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn plain_responses() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_plain(b64(b"\0bob@x.org\0pw d").as_bytes()),
            Ok(("bob@x.org".into(), b"pw d".to_vec()))
        );
        assert_eq!(
            decode_plain(b64(b"BOB@x.org\0bob@x.org\0pw").as_bytes()),
            Ok(("bob@x.org".into(), b"pw".to_vec()))
        );
        assert!(decode_plain(b64(b"eve@x.org\0bob@x.org\0pw").as_bytes()).is_err());
        assert!(decode_plain(b"*").is_err());
        assert!(decode_plain(b"=").is_err());
        assert!(decode_plain(b"!!!").is_err());
        assert!(decode_plain(b64(b"\0a\0b\0c").as_bytes()).is_err());
    }
}
