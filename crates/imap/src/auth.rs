//! LOGIN, AUTHENTICATE PLAIN (with SASL-IR and the continuation form), ENABLE,
//! UNAUTHENTICATE (RFC 8437), and the per-user connection limit.
//!
//! Passwords are checked by `AuthLimiter` (argon2 + failure throttling) on a blocking
//! thread. Without TLS no password is accepted (LOGINDISABLED, RFC 3501 6.2.3; the
//! attempt gets `NO [PRIVACYREQUIRED]`, RFC 5530) unless the TLS login policy
//! (`store::LoginGate`, or `allow_plaintext_auth` without one) allows it; a plaintext
//! login that succeeds is reported to the policy.

use store::Op;

use crate::resp::Reply;
use crate::session::Session;
use crate::session::{ReadOutcome, SessionError, UserCtx};

/// Longest `ID` description kept for the TLS policy's records; longer is cut.
pub(crate) const CLIENT_ID_BYTES_MAX: usize = 200;

/// `name=Thunderbird version=115.0`: the RFC 2971 fields that identify a client.
pub fn describe_client(fields: Option<&[(String, Option<String>)]>) -> String {
    let mut out = String::new();
    for (k, v) in fields.unwrap_or_default() {
        let Some(v) = v else { continue };
        if ["name", "version", "os", "vendor"].contains(&k.to_ascii_lowercase().as_str()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("{}={}", k.to_ascii_lowercase(), v));
        }
    }
    out.retain(|c| !c.is_control());
    if out.len() > CLIENT_ID_BYTES_MAX {
        let mut cut = CLIENT_ID_BYTES_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

impl Session {
    /// Why a password may not be sent without TLS now (`None`: it may). Without a
    /// policy installed, `allow_plaintext_auth` decides.
    pub(crate) fn plaintext_refusal(&self) -> Option<String> {
        let gate = self.server.gate.get().map(|g| &**g);
        store::gate::plaintext_refusal(gate, "imap", self.server.config.allow_plaintext_auth)
    }

    fn privacy_required(&self) -> Reply {
        let hint = store::gate::hint_suffix(self.plaintext_refusal());
        Reply::no(format!(
            "[PRIVACYREQUIRED] Use STARTTLS (or port 993) before logging in{hint}"
        ))
    }

    pub(crate) async fn cmd_login(&mut self, user: &[u8], pass: &[u8]) -> Reply {
        if !self.login_allowed() {
            return self.privacy_required();
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
            return Ok(self.privacy_required());
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
        let (authc, pass) = match store::directory::sasl_plain(response) {
            Ok(v) => v,
            Err(e) => {
                let text = crate::plain_error_reply(e);
                return Ok(match text.strip_prefix("BAD ") {
                    Some(t) => Reply::bad(t),
                    None => Reply::no(text.trim_start_matches("NO ")),
                });
            }
        };
        Ok(self.check_password(&authc, &pass).await)
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
        let checked = crate::check_password(
            self.server.directory.clone(),
            self.server.limiter.clone(),
            user,
            pass,
            self.peer.ip(),
        )
        .await;
        let account = match checked {
            Ok(a) => a,
            Err(text) => return Reply::no(text),
        };
        self.begin_user(account).await
    }

    /// A session a frontend proxied here, for `user` it already authenticated: the same
    /// start as after a password, with the client's address and TLS as the frontend saw
    /// them (limits and the TLS policy's records use those).
    pub(crate) async fn begin_preauth(&mut self, user: &str) -> Reply {
        let dir = self.server.directory.clone();
        let looked_up = tokio::task::spawn_blocking(move || dir.load()).await;
        let account = match looked_up {
            Ok(Ok(accounts)) => match accounts.get(user) {
                Some(a) => a.clone(),
                None => return Reply::no("[AUTHENTICATIONFAILED] No such account here"),
            },
            Ok(Err(_)) | Err(_) => {
                return Reply::no(
                    "[UNAVAILABLE] The account directory cannot be read; try again later",
                );
            }
        };
        self.begin_user(account).await
    }

    /// Enters the authenticated state as `account` (per-user limit, the user's slot).
    async fn begin_user(&mut self, account: store::directory::Account) -> Reply {
        let Some(slot) = self.server.slots.get(&account.slot).cloned() else {
            return Reply::no(
                "[UNAVAILABLE] Your mailbox is not served by this host right now; try again later",
            );
        };
        let name = account.address.clone();
        let max = self.server.config.connections_per_user_max;
        let Some(counted) = self.server.conns.admit_user(&name, max) else {
            return Reply::no(format!(
                "[LIMIT] Too many connections for this account (limit {max}); close another mail client and retry"
            ));
        };
        if let Err(e) = slot
            .execute_async(Op::EnsureUser { user: name.clone() })
            .await
        {
            return crate::resp::store_error(&e);
        }
        let notices = slot.subscribe();
        self.ext.user_conn = Some(counted);
        if !self.tls
            && let Some(g) = self.server.gate.get()
        {
            g.insecure_login("imap", &name, self.peer.ip(), &self.ext.client_id);
        }
        self.user = Some(UserCtx {
            name,
            slot,
            notices,
        });
        Reply::ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
    }

    /// ENABLE (RFC 5161): lists what was enabled by this command; unknown names are
    /// ignored, as RFC 5161 says. UTF8=ACCEPT (RFC 6855) switches mailbox names to
    /// UTF-8 both ways.
    pub(crate) fn cmd_enable(&mut self, caps: &[String]) -> Reply {
        let mut enabled = Vec::new();
        for cap in caps {
            match cap.as_str() {
                "UTF8=ACCEPT" if !self.parse_opts.utf8_mailboxes => {
                    self.parse_opts.utf8_mailboxes = true;
                    enabled.push("UTF8=ACCEPT");
                }
                other => enabled.extend(self.enable_engine(other)),
            }
        }
        let mut line = String::from("ENABLED");
        for e in enabled {
            line.push(' ');
            line.push_str(e);
        }
        self.untagged(&line);
        Reply::ok("ENABLE completed")
    }

    /// UNAUTHENTICATE (RFC 8437): back to the not-authenticated state with all the
    /// session's state dropped, as on a fresh connection; TLS and COMPRESS stay on.
    pub(crate) fn cmd_unauthenticate(&mut self) -> Reply {
        self.selected = None;
        self.user = None;
        self.parse_opts = imap_proto::ParseOptions::default();
        self.enabled = Default::default();
        let compressed = self.ext.compressed;
        self.ext = crate::ext::ExtState {
            compressed,
            rate: std::mem::take(&mut self.ext.rate),
            ..crate::ext::ExtState::default()
        };
        Reply::ok("UNAUTHENTICATE completed; you may log in again")
    }
}

fn trim_crlf(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}
