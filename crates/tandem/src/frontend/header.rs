//! The proxy header: the first line a frontend sends on a connection to a store host's
//! proxy listener (TLS, mutual authentication by the cluster CA), and the store host's
//! one-line answer.
//!
//! ```text
//! frontend → store:  TANDEM-PROXY 1 <imap|pop3|lmtp|submission-login> <user> <client-ip> <yes|no> <client-id> CRLF
//! store → frontend:  OK CRLF                      (then the protocol session starts)
//!                    MOVED <host> CRLF            (this host does not master the user's slot; closed)
//!                    ERR <reason> CRLF            (a malformed header; closed)
//! ```
//!
//! - `1` is the format version; any other is refused.
//! - `submission-login` is no session: the frontend tells the master that `user` logged in
//!   to submission without TLS (the TLS policy's record lives in the user's slot); the
//!   master records it and answers `OK`, and the connection ends.
//! - `user`: the account the frontend authenticated (`imap`, `pop3`), `-` for none (`lmtp`).
//! - `client-ip`: the client's address as the frontend saw it (IPv4 or IPv6, no port); the
//!   store host uses it in place of the frontend's address for logging, limits and the TLS
//!   policy's records.
//! - `yes|no`: whether the client's connection to the frontend was TLS.
//! - `client-id`: what the client said about itself (IMAP `ID`), `-` for nothing.
//! - `user` and `client-id` are percent-encoded: `%`, every byte outside `!`..`~` (space,
//!   controls, non-ASCII) becomes `%XX`, and a value that is exactly `-` is sent as `%2D`,
//!   so fields never contain spaces and `-` always means "none".
//! - `<host>` in `MOVED` is a host name, or `-` when the store host does not know.
//!
//! Limits: the header line is at most [`HEADER_BYTES_MAX`] bytes with its CRLF (longer is
//! refused before it is parsed); the answer at most [`ANSWER_BYTES_MAX`]. Both ends read
//! them under a timeout (`TIMEOUT`).

use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest header line, CRLF included.
pub const HEADER_BYTES_MAX: usize = 2048;
/// Longest answer line, CRLF included.
pub const ANSWER_BYTES_MAX: usize = 512;
/// Longest `client-id` kept (decoded); longer is cut, like the IMAP session's own limit.
pub const CLIENT_ID_BYTES_MAX: usize = 200;
/// How long either end waits for the other's line.
pub const TIMEOUT: Duration = Duration::from_secs(10);
const MAGIC: &str = "TANDEM-PROXY";
const VERSION: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Pop3,
    Lmtp,
    /// Record a submission login without TLS (no session follows).
    SubmissionLogin,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Lmtp => "lmtp",
            Protocol::SubmissionLogin => "submission-login",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub protocol: Protocol,
    /// `None` on the wire is `-`.
    pub user: Option<String>,
    pub client_ip: IpAddr,
    pub client_tls: bool,
    /// Empty on the wire is `-`.
    pub client_id: String,
}

/// The store host's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// Not the master of the user's slot; the current master if known.
    Moved(Option<String>),
    Err(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the line is longer than {HEADER_BYTES_MAX} bytes")]
    TooLong,
    #[error("the line does not end with CRLF")]
    NoCrlf,
    #[error("not a TANDEM-PROXY header")]
    NotAHeader,
    #[error("unsupported proxy header version {0:?} (this host speaks {VERSION})")]
    Version(String),
    #[error("expected 7 fields, got {0}")]
    Fields(usize),
    #[error("unknown protocol {0:?}")]
    Protocol(String),
    #[error("bad client address {0:?}")]
    Ip(String),
    #[error("client TLS must be yes or no, not {0:?}")]
    Tls(String),
    #[error("bad percent-encoding in {0:?}")]
    Encoding(String),
    #[error("{0} needs a user")]
    NoUser(&'static str),
}

/// `%` and every byte outside `!`..`~` as `%XX`; `-` alone as `%2D`; empty as `-`.
fn encode_field(v: &str) -> String {
    if v.is_empty() {
        return "-".into();
    }
    if v == "-" {
        return "%2D".into();
    }
    let mut out = String::with_capacity(v.len());
    for &b in v.as_bytes() {
        if b == b'%' || !(0x21..=0x7e).contains(&b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn decode_field(v: &str) -> Result<String, HeaderError> {
    if v == "-" {
        return Ok(String::new());
    }
    let bad = || HeaderError::Encoding(v.chars().take(40).collect());
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

impl Header {
    /// The header line, CRLF included. A client id is cut to [`CLIENT_ID_BYTES_MAX`]
    /// (at a character boundary) so the line always fits [`HEADER_BYTES_MAX`] for any
    /// account address (at most 254 bytes, each encoded to at most 3).
    pub fn encode(&self) -> String {
        let mut id = self.client_id.clone();
        if id.len() > CLIENT_ID_BYTES_MAX {
            let mut cut = CLIENT_ID_BYTES_MAX;
            while !id.is_char_boundary(cut) {
                cut -= 1;
            }
            id.truncate(cut);
        }
        format!(
            "{MAGIC} {VERSION} {} {} {} {} {}\r\n",
            self.protocol.as_str(),
            encode_field(self.user.as_deref().unwrap_or("")),
            self.client_ip,
            if self.client_tls { "yes" } else { "no" },
            encode_field(&id),
        )
    }

    /// Parses one line as read (CRLF included).
    pub fn parse(line: &[u8]) -> Result<Header, HeaderError> {
        if line.len() > HEADER_BYTES_MAX {
            return Err(HeaderError::TooLong);
        }
        let line = line.strip_suffix(b"\r\n").ok_or(HeaderError::NoCrlf)?;
        let line = std::str::from_utf8(line).map_err(|_| HeaderError::NotAHeader)?;
        let f: Vec<&str> = line.split(' ').collect();
        if f.first() != Some(&MAGIC) {
            return Err(HeaderError::NotAHeader);
        }
        if f.get(1) != Some(&VERSION) {
            return Err(HeaderError::Version(
                f.get(1).unwrap_or(&"").chars().take(10).collect(),
            ));
        }
        if f.len() != 7 {
            return Err(HeaderError::Fields(f.len()));
        }
        let protocol = match f[2] {
            "imap" => Protocol::Imap,
            "pop3" => Protocol::Pop3,
            "lmtp" => Protocol::Lmtp,
            "submission-login" => Protocol::SubmissionLogin,
            p => return Err(HeaderError::Protocol(p.chars().take(10).collect())),
        };
        let user = decode_field(f[3])?;
        let client_ip = f[4]
            .parse()
            .map_err(|_| HeaderError::Ip(f[4].chars().take(46).collect()))?;
        let client_tls = match f[5] {
            "yes" => true,
            "no" => false,
            t => return Err(HeaderError::Tls(t.chars().take(10).collect())),
        };
        let client_id = decode_field(f[6])?;
        let user = (!user.is_empty()).then_some(user);
        if user.is_none() && protocol != Protocol::Lmtp {
            return Err(HeaderError::NoUser(protocol.as_str()));
        }
        Ok(Header {
            protocol,
            user,
            client_ip,
            client_tls,
            client_id,
        })
    }
}

impl Answer {
    pub fn encode(&self) -> String {
        match self {
            Answer::Ok => "OK\r\n".into(),
            Answer::Moved(h) => format!("MOVED {}\r\n", encode_field(h.as_deref().unwrap_or(""))),
            Answer::Err(why) => {
                let mut w: String = why.chars().filter(|c| !c.is_control()).collect();
                w.truncate(ANSWER_BYTES_MAX - 8);
                while !w.is_empty() && w.len() + 6 > ANSWER_BYTES_MAX {
                    w.pop();
                }
                format!("ERR {w}\r\n")
            }
        }
    }

    pub fn parse(line: &[u8]) -> Option<Answer> {
        let line = std::str::from_utf8(line.strip_suffix(b"\r\n")?).ok()?;
        if line == "OK" {
            return Some(Answer::Ok);
        }
        if let Some(h) = line.strip_prefix("MOVED ") {
            let h = decode_field(h).ok()?;
            return Some(Answer::Moved((!h.is_empty()).then_some(h)));
        }
        line.strip_prefix("ERR ")
            .map(|w| Answer::Err(w.to_string()))
    }
}

/// Reads one line (through its LF) of at most `max` bytes under [`TIMEOUT`], a byte at a
/// time so nothing after it is consumed (the protocol session owns the rest of the
/// stream). `None`: EOF, timeout, error, or a line over `max`.
pub async fn read_line<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> Option<Vec<u8>> {
    let read = async {
        let mut line = Vec::with_capacity(64);
        loop {
            let b = s.read_u8().await.ok()?;
            line.push(b);
            if b == b'\n' {
                return Some(line);
            }
            if line.len() >= max {
                return None;
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(user: Option<&str>, id: &str) -> Header {
        Header {
            protocol: Protocol::Imap,
            user: user.map(str::to_string),
            client_ip: "192.0.2.7".parse().unwrap(),
            client_tls: true,
            client_id: id.to_string(),
        }
    }

    #[test]
    fn header_round_trips_and_reads_as_documented() {
        let x = h(Some("alice@example.com"), "name=Thunderbird version=115.0");
        let line = x.encode();
        assert_eq!(
            line,
            "TANDEM-PROXY 1 imap alice@example.com 192.0.2.7 yes name=Thunderbird%20version=115.0\r\n"
        );
        assert_eq!(Header::parse(line.as_bytes()), Ok(x));
        let lmtp = Header {
            protocol: Protocol::Lmtp,
            user: None,
            client_ip: "2001:db8::1".parse().unwrap(),
            client_tls: false,
            client_id: String::new(),
        };
        assert_eq!(lmtp.encode(), "TANDEM-PROXY 1 lmtp - 2001:db8::1 no -\r\n");
        assert_eq!(Header::parse(lmtp.encode().as_bytes()), Ok(lmtp));
    }

    #[test]
    fn odd_characters_are_percent_encoded_and_come_back() {
        for (user, id) in [
            ("a b@x.org", "-"),
            ("100%@x.org", "%%%"),
            ("ünïcödé@x.org", "name=\"Mail\" \r\n os=\u{7f}"),
            ("-", "x - y"),
        ] {
            let x = h(Some(user), id);
            let line = x.encode();
            assert_eq!(line.matches(' ').count(), 6, "{line:?}");
            assert!(line.is_ascii(), "{line:?}");
            assert_eq!(line.find('\r'), Some(line.len() - 2));
            assert_eq!(Header::parse(line.as_bytes()), Ok(x), "{line:?}");
        }
    }

    #[test]
    fn long_client_ids_are_cut_so_the_line_fits() {
        let user = format!("{}@{}.org", "u".repeat(64), "ü".repeat(90));
        let x = h(Some(&user), &"é".repeat(5000));
        let line = x.encode();
        assert!(line.len() <= HEADER_BYTES_MAX, "{}", line.len());
        let back = Header::parse(line.as_bytes()).unwrap();
        assert_eq!(back.user.as_deref(), Some(user.as_str()));
        assert_eq!(back.client_id, "é".repeat(CLIENT_ID_BYTES_MAX / 2));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let ok = h(Some("a@x.org"), "").encode();
        let cases: Vec<(String, HeaderError)> = vec![
            (ok.trim_end().to_string(), HeaderError::NoCrlf),
            (
                format!("{}\r\n", "x".repeat(HEADER_BYTES_MAX)),
                HeaderError::TooLong,
            ),
            ("HELLO\r\n".into(), HeaderError::NotAHeader),
            (ok.replace(" 1 ", " 2 "), HeaderError::Version("2".into())),
            (ok.replace(" -\r\n", "\r\n"), HeaderError::Fields(6)),
            (
                ok.replace("imap", "smtp"),
                HeaderError::Protocol("smtp".into()),
            ),
            (
                ok.replace("192.0.2.7", "192.0.2.7:25"),
                HeaderError::Ip("192.0.2.7:25".into()),
            ),
            (
                ok.replace(" yes ", " maybe "),
                HeaderError::Tls("maybe".into()),
            ),
            (
                ok.replace("a@x.org", "a%4@x.org"),
                HeaderError::Encoding("a%4@x.org".into()),
            ),
            (
                ok.replace("a@x.org", "%FF"),
                HeaderError::Encoding("%FF".into()),
            ),
            (ok.replace("a@x.org", "-"), HeaderError::NoUser("imap")),
            (ok.replace(" yes ", "  yes "), HeaderError::Fields(8)),
        ];
        for (line, want) in cases {
            assert_eq!(Header::parse(line.as_bytes()), Err(want), "{line:?}");
        }
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Ok,
            Answer::Moved(Some("b".into())),
            Answer::Moved(None),
            Answer::Err("bad header: not a TANDEM-PROXY header".into()),
        ] {
            let line = a.encode();
            assert!(line.len() <= ANSWER_BYTES_MAX);
            assert_eq!(Answer::parse(line.as_bytes()), Some(a));
        }
        assert_eq!(Answer::parse(b"MAYBE\r\n"), None);
        let long = Answer::Err("x\r\n".repeat(1000)).encode();
        assert!(long.len() <= ANSWER_BYTES_MAX && long.ends_with("x\r\n"));
    }

    #[tokio::test]
    async fn read_line_stops_at_the_line_end_and_at_the_limit() {
        let mut s: &[u8] = b"OK\r\n* PREAUTH rest";
        assert_eq!(read_line(&mut s, 16).await, Some(b"OK\r\n".to_vec()));
        assert_eq!(s, b"* PREAUTH rest");
        let mut s: &[u8] = b"0123456789abcdef0123\r\n";
        assert_eq!(read_line(&mut s, 16).await, None);
        let mut s: &[u8] = b"no end";
        assert_eq!(read_line(&mut s, 16).await, None);
    }
}
