//! SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) decoding: pure functions from
//! the client's base64 responses to credentials. No I/O; the session drives the exchange.
//!
//! Limits: a response decodes to at most the command line limit (the session reads it as
//! a line); a password longer than `store::directory::PASSWORD_BYTES_MAX` simply fails to
//! verify. Proxy authorisation (an authzid different from the authcid) is refused: nobody
//! may act as someone else here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Credentials from a completed exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: Vec<u8>,
}

/// Why a response is unusable; answered `501 5.5.2` by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaslError {
    Base64,
    Malformed(&'static str),
}

impl SaslError {
    pub(crate) fn text(self) -> &'static str {
        match self {
            SaslError::Base64 => "cannot decode the response: not base64",
            SaslError::Malformed(m) => m,
        }
    }
}

/// Decode one client response; `=` is the empty response (RFC 4954 §4).
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    let text = trim_line(text);
    if text == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(text).map_err(|_| SaslError::Base64)
}

/// `authzid NUL authcid NUL passwd`.
pub(crate) fn plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN response must be authzid NUL authcid NUL password",
        ));
    };
    let username = utf8_name(authc)?;
    if !authz.is_empty() && authz != authc {
        return Err(SaslError::Malformed(
            "authorization identity must be empty or equal the user name",
        ));
    }
    Ok(Credentials {
        username,
        password: pass.to_vec(),
    })
}

/// The LOGIN user name response.
pub(crate) fn login_user(response: &[u8]) -> Result<String, SaslError> {
    utf8_name(response)
}

fn utf8_name(b: &[u8]) -> Result<String, SaslError> {
    if b.is_empty() {
        return Err(SaslError::Malformed("empty user name"));
    }
    let s = std::str::from_utf8(b).map_err(|_| SaslError::Malformed("user name is not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(SaslError::Malformed("control character in user name"));
    }
    Ok(s.to_string())
}

/// Base64 of a server challenge (`334 <b64>`).
pub(crate) fn encode(challenge: &[u8]) -> String {
    STANDARD.encode(challenge)
}

fn trim_line(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n' | b' ' | b'\t'] = s {
        s = rest;
    }
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_forms() {
        let c = plain(b"\0alice@example.com\0s3cret").unwrap();
        assert_eq!(c.username, "alice@example.com");
        assert_eq!(c.password, b"s3cret");
        assert!(plain(b"alice@example.com\0alice@example.com\0pw").is_ok());
        assert!(plain(b"bob@example.com\0alice@example.com\0pw").is_err());
        assert!(plain(b"\0alice\0pw\0extra").is_err());
        assert!(plain(b"alice\0pw").is_err());
        assert!(plain(b"\0\0pw").is_err());
    }

    #[test]
    fn decode_handles_empty_and_garbage() {
        assert_eq!(decode(b"=\r\n").unwrap(), b"");
        assert_eq!(decode(b"AGFAYgBj\r\n").unwrap(), b"\0a@b\0c");
        assert_eq!(decode(b"@@@"), Err(SaslError::Base64));
        assert_eq!(encode(b"Username:"), "VXNlcm5hbWU6");
    }

    proptest! {
        #[test]
        fn plain_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = plain(&b);
            let _ = decode(&b);
        }
    }
}
