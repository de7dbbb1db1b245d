//! LOGIN, AUTHENTICATE PLAIN (with SASL-IR and the continuation form), ENABLE.
//!
//! Passwords are checked by `AuthLimiter` (argon2 + failure throttling) on a blocking
//! thread. Without TLS, and unless `allow_plaintext_auth`, no password is accepted
//! (LOGINDISABLED, RFC 3501 6.2.3).

use base64::Engine as _;
use store::Op;
use store::directory::AuthOutcome;

use crate::resp::Reply;
use crate::session::Session;
use crate::session::{ReadOutcome, SessionError, UserCtx};

impl Session {
    pub(crate) async fn cmd_login(&mut self, user: &[u8], pass: &[u8]) -> Reply {
        if !self.login_allowed() {
            return Reply::no("[PRIVACYREQUIRED] Use STARTTLS (or port 993) before logging in");
        }
        let Ok(user) = std::str::from_utf8(user) else {
            return Reply::no("[AUTHENTICATIONFAILED] Invalid credentials");
        };
        self.check_password(user, pass).await
    }

    pub(crate) async fn cmd_authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> Result<Reply, SessionError> {
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return Ok(Reply::no(format!(
                "[CANNOT] Unsupported mechanism {mechanism}; use PLAIN"
            )));
        }
        if !self.login_allowed() {
            return Ok(Reply::no(
                "[PRIVACYREQUIRED] Use STARTTLS (or port 993) before logging in",
            ));
        }
        let response = match initial {
            Some(r) => r,
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                match self.read_sasl_line().await? {
                    Some(line) => line,
                    None => return Ok(Reply::bad("Authentication response line too long")),
                }
            }
        };
        let response = trim_crlf(&response);
        if response == b"*" {
            return Ok(Reply::bad("Authentication cancelled"));
        }
        let decoded = if response == b"=" {
            Vec::new()
        } else {
            match base64::engine::general_purpose::STANDARD.decode(response) {
                Ok(d) => d,
                Err(_) => return Ok(Reply::bad("Authentication response is not valid base64")),
            }
        };
        // RFC 4616: [authzid] NUL authcid NUL passwd.
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Reply::bad("Malformed PLAIN response"));
        };
        let Ok(authc) = std::str::from_utf8(authc) else {
            return Ok(Reply::no("[AUTHENTICATIONFAILED] Invalid credentials"));
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc.as_bytes()) {
            return Ok(Reply::no(
                "[AUTHORIZATIONFAILED] Acting as another user is not allowed",
            ));
        }
        let pass = pass.to_vec();
        Ok(self.check_password(authc, &pass).await)
    }

    /// One SASL response line; `None` if it was too long.
    async fn read_sasl_line(&mut self) -> Result<Option<Vec<u8>>, SessionError> {
        loop {
            match self.framer.take_line() {
                Some(Ok(line)) => return Ok(Some(line)),
                Some(Err(_)) => return Ok(None),
                None => {}
            }
            match self.read_more(self.inactivity_limit()).await? {
                ReadOutcome::Data => {}
                ReadOutcome::Eof | ReadOutcome::TimedOut => {
                    return Err(SessionError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "client went away during AUTHENTICATE",
                    )));
                }
            }
        }
    }

    async fn check_password(&mut self, user: &str, pass: &[u8]) -> Reply {
        let (dir, limiter, ip) = (
            self.server.directory.clone(),
            self.server.limiter.clone(),
            self.peer.ip(),
        );
        let (user_c, pass) = (user.to_string(), pass.to_vec());
        let outcome =
            tokio::task::spawn_blocking(move || limiter.authenticate(&dir, &user_c, &pass, ip))
                .await;
        let account = match outcome {
            Ok(Ok(AuthOutcome::Ok(a))) => a,
            Ok(Ok(AuthOutcome::Failed)) => {
                return Reply::no("[AUTHENTICATIONFAILED] Invalid credentials");
            }
            Ok(Ok(AuthOutcome::Throttled(d))) => {
                return Reply::no(format!(
                    "[UNAVAILABLE] Too many failed logins; try again in {} s",
                    d.as_secs().max(1)
                ));
            }
            Ok(Err(_)) | Err(_) => {
                return Reply::no(
                    "[UNAVAILABLE] The account directory cannot be read; try again later",
                );
            }
        };
        let Some(slot) = self.server.slots.get(&account.slot).cloned() else {
            return Reply::no(
                "[UNAVAILABLE] Your mailbox is not served by this host right now; try again later",
            );
        };
        let name = account.address.clone();
        if let Err(e) = slot
            .execute_async(Op::EnsureUser { user: name.clone() })
            .await
        {
            return crate::resp::store_error(&e);
        }
        let notices = slot.subscribe();
        self.user = Some(UserCtx {
            name,
            slot,
            notices,
        });
        Reply::ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
    }

    /// ENABLE (RFC 5161): nothing we advertise is enableable yet, so the answer is an
    /// empty ENABLED list (which RFC 5161 allows for unknown capabilities).
    pub(crate) fn cmd_enable(&mut self, _caps: &[String]) -> Reply {
        self.untagged("ENABLED");
        Reply::ok("ENABLE completed")
    }
}

fn trim_crlf(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}
