//! The TLS login policy hook that authenticating front ends (IMAP, POP3) call. The policy
//! itself (configuration, cut-off dates, notices) lives in the wiring; the trait sits here
//! only because `store` is the crate every such front end already depends on.

use std::net::IpAddr;

pub trait LoginGate: Send + Sync + 'static {
    /// May a password be sent over a connection without TLS, for `protocol` (`imap`,
    /// `pop3`, `submission`), right now? `None`: yes. `Some(hint)`: no; `hint` tells the
    /// user how to fix their setup (a help page address) and goes into the refusal.
    fn plaintext_refusal(&self, protocol: &str) -> Option<String>;

    /// A login succeeded on a connection without TLS. `client` is what the client said
    /// about itself (IMAP `ID`), empty if nothing. Must not block: implementations record
    /// it and send any notice in the background.
    fn insecure_login(&self, protocol: &str, user: &str, ip: IpAddr, client: &str);
}

/// [`LoginGate::plaintext_refusal`] of `gate`; with none installed, the old switch
/// `allow_plaintext_auth` decides (refusal without a hint).
pub fn plaintext_refusal(
    gate: Option<&dyn LoginGate>,
    protocol: &str,
    allow_plaintext_auth: bool,
) -> Option<String> {
    match gate {
        Some(g) => g.plaintext_refusal(protocol),
        None if allow_plaintext_auth => None,
        None => Some(String::new()),
    }
}

/// `; HINT` to append to a refusal, or nothing for an empty hint.
pub fn hint_suffix(hint: Option<String>) -> String {
    match hint {
        Some(h) if !h.is_empty() => format!("; {h}"),
        _ => String::new(),
    }
}
