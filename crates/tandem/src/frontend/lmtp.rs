//! The frontend's LMTP: the smtp crate's LMTP server over [`RemoteDelivery`], which
//! checks recipients against the account directory (through `LocalDelivery::account_of`,
//! the one place that decides what is local) and delivers by LMTP to the master of each
//! recipient's slot, one proxied connection per master (proxy header user `-`).
//!
//! Never a silent loss: a recipient is reported delivered only when its master answered
//! `250` to the final dot for it; anything else that is not a definite refusal (a
//! connection that fails, a timeout, a reply that does not parse) is a temporary failure
//! (`451`), so the sender retries and the retry is routed anew.
//!
//! The client side ([`lmtp_transaction`]): greeting `220`, `LHLO`, `MAIL FROM`, one
//! `RCPT TO` per recipient, `DATA`, the dot-stuffed message, one reply per accepted
//! recipient, `QUIT`. Every reply is read under `REPLY_TIMEOUT` (`DATA_TIMEOUT` after the
//! dot), lines of at most `REPLY_LINE_BYTES_MAX`, at most `REPLY_LINES_MAX` per reply.

use super::header::{Header, Protocol};
use super::route::Router;
use crate::deliver::LocalDelivery;
use smtp::{DeliveryOutcome, Envelope, RcptVerdict};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const DATA_TIMEOUT: Duration = Duration::from_secs(300);
const REPLY_LINE_BYTES_MAX: usize = 4096;
const REPLY_LINES_MAX: usize = 100;

pub struct RemoteDelivery {
    pub local: Arc<LocalDelivery>,
    pub router: Arc<Router>,
    /// Our name in LHLO.
    pub hostname: String,
}

impl smtp::Deliver for RemoteDelivery {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        match self.local.account_of(address) {
            Ok(Some(_)) => RcptVerdict::Accept,
            Ok(None) => RcptVerdict::UnknownUser,
            Err(e) => RcptVerdict::TempFail(format!("directory unavailable: {e}")),
        }
    }

    async fn deliver(&self, envelope: &Envelope, message: Arc<[u8]>) -> Vec<DeliveryOutcome> {
        self.deliver_to(envelope, message).await
    }
}

impl RemoteDelivery {
    /// Tells the master of `user`'s slot that `user` logged in to submission here without
    /// TLS, so the TLS policy's record (and any notice) happens in the user's slot as for
    /// a direct login.
    pub async fn note_insecure_submission_login(
        &self,
        user: &str,
        ip: std::net::IpAddr,
        client: &str,
    ) -> Result<(), String> {
        let acct = self
            .local
            .account_of(user)
            .map_err(|e| format!("directory unavailable: {e}"))?
            .ok_or_else(|| format!("no account {user}"))?;
        let header = Header {
            protocol: Protocol::SubmissionLogin,
            user: Some(acct.address.clone()),
            client_ip: ip,
            client_tls: false,
            client_id: client.to_string(),
        };
        self.router
            .open(&acct.slot, &header)
            .await
            .map(drop)
            .map_err(|e| e.0)
    }

    /// One recipient, from the null sender (local delivery of submitted or queued mail on
    /// a frontend; see `deliver.rs`).
    pub async fn deliver_one(&self, rcpt: &str, message: &Arc<[u8]>) -> DeliveryOutcome {
        let env = Envelope {
            mail_from: String::new(),
            rcpt_to: vec![rcpt.to_string()],
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            size_declared: None,
            body_8bit: false,
            smtputf8: false,
            helo: self.hostname.clone(),
            tls: true,
            auth_user: None,
        };
        self.deliver_to(&env, message.clone())
            .await
            .pop()
            .unwrap_or_else(|| DeliveryOutcome::TempFail("not delivered".into()))
    }

    async fn deliver_to(&self, envelope: &Envelope, message: Arc<[u8]>) -> Vec<DeliveryOutcome> {
        let n = envelope.rcpt_to.len();
        let mut out: Vec<Option<DeliveryOutcome>> = vec![None; n];
        // master → (a slot of it, for routing retries; the recipients' indexes)
        let mut groups: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
        for (i, rcpt) in envelope.rcpt_to.iter().enumerate() {
            match self.local.account_of(rcpt) {
                Ok(Some(acct)) => match self.router.master_of(&acct.slot) {
                    Some(m) => groups
                        .entry(m)
                        .or_insert_with(|| (acct.slot.clone(), Vec::new()))
                        .1
                        .push(i),
                    None => {
                        out[i] = Some(DeliveryOutcome::TempFail(format!(
                            "slot {} has no master in the cluster configuration",
                            acct.slot
                        )))
                    }
                },
                Ok(None) => out[i] = Some(DeliveryOutcome::PermFail("no such user".into())),
                Err(e) => {
                    out[i] = Some(DeliveryOutcome::TempFail(format!(
                        "directory unavailable: {e}"
                    )))
                }
            }
        }
        let header = Header {
            protocol: Protocol::Lmtp,
            user: None,
            client_ip: envelope.peer.ip(),
            client_tls: envelope.tls,
            client_id: String::new(),
        };
        let futs = groups.into_values().map(|(slot, idx)| {
            let (header, message) = (header.clone(), message.clone());
            let rcpts: Vec<String> = idx.iter().map(|&i| envelope.rcpt_to[i].clone()).collect();
            async move {
                let res = match self.router.open(&slot, &header).await {
                    Ok((stream, master)) => lmtp_transaction(
                        stream,
                        &self.hostname,
                        &envelope.mail_from,
                        &rcpts,
                        &message,
                    )
                    .await
                    .map_err(|e| format!("delivery to {master} failed: {e}")),
                    Err(e) => Err(e.0),
                };
                (idx, res)
            }
        });
        for (idx, res) in crate::deliver::join_all(futs).await {
            match res {
                Ok(outcomes) => {
                    for (i, o) in idx.into_iter().zip(outcomes) {
                        out[i] = Some(o);
                    }
                }
                Err(e) => {
                    eprintln!("frontend lmtp: {e}");
                    for i in idx {
                        out[i] = Some(DeliveryOutcome::TempFail(
                            "mailbox store unreachable (it may be moving); try again later".into(),
                        ));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| DeliveryOutcome::TempFail("not delivered".into())))
            .collect()
    }
}

/// A reply: code and the text of its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    text: String,
    lines: Vec<String>,
}

async fn read_reply<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
    wait: Duration,
) -> Result<Reply, String> {
    let read = async {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut *r)
                .take(REPLY_LINE_BYTES_MAX as u64)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".to_string());
            }
            if !line.ends_with(b"\n") {
                return Err("reply line too long".to_string());
            }
            let l = String::from_utf8_lossy(&line).trim_end().to_string();
            let code: u16 = l
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad reply line {l:?}"))?;
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l.clone());
            if !more {
                return Ok(Reply {
                    code,
                    text: l,
                    lines,
                });
            }
            if lines.len() >= REPLY_LINES_MAX {
                return Err("reply has too many lines".to_string());
            }
        }
    };
    tokio::time::timeout(wait, read)
        .await
        .map_err(|_| format!("no reply within {} s", wait.as_secs()))?
}

async fn send<S: AsyncWrite + Unpin>(w: &mut S, data: &[u8]) -> Result<(), String> {
    let write = async {
        w.write_all(data).await?;
        w.flush().await
    };
    tokio::time::timeout(REPLY_TIMEOUT, write)
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| format!("write: {e}"))
}

fn outcome(r: &Reply) -> DeliveryOutcome {
    match r.code {
        200..=299 => DeliveryOutcome::Delivered,
        552 if r.text.contains("5.2.2") => DeliveryOutcome::OverQuota,
        500..=599 => DeliveryOutcome::PermFail(r.text.clone()),
        _ => DeliveryOutcome::TempFail(r.text.clone()),
    }
}

/// One LMTP transaction on `stream`: one outcome per recipient, in order. `Err` when the
/// transaction could not run to the point where each recipient has an answer (the caller
/// makes those temporary failures).
pub async fn lmtp_transaction<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    helo: &str,
    mail_from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Vec<DeliveryOutcome>, String> {
    let mut s = BufReader::new(stream);
    let g = read_reply(&mut s, REPLY_TIMEOUT).await?;
    if g.code != 220 {
        return Err(format!("greeting {}", g.text));
    }
    send(s.get_mut(), format!("LHLO {helo}\r\n").as_bytes()).await?;
    let lhlo = read_reply(&mut s, REPLY_TIMEOUT).await?;
    if lhlo.code != 250 {
        return Err(format!("LHLO answered {}", lhlo.text));
    }
    let has = |ext: &str| {
        lhlo.lines.iter().skip(1).any(|l| {
            l.get(4..)
                .and_then(|t| t.split_whitespace().next())
                .is_some_and(|w| w.eq_ignore_ascii_case(ext))
        })
    };
    let mut params = String::new();
    if has("8BITMIME") && message.iter().any(|&b| b >= 0x80) {
        params.push_str(" BODY=8BITMIME");
    }
    if has("SMTPUTF8") && (!mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii())) {
        params.push_str(" SMTPUTF8");
    }
    send(
        s.get_mut(),
        format!("MAIL FROM:<{mail_from}>{params}\r\n").as_bytes(),
    )
    .await?;
    let m = read_reply(&mut s, REPLY_TIMEOUT).await?;
    if m.code != 250 {
        let o = outcome(&m);
        let o = if o == DeliveryOutcome::Delivered {
            DeliveryOutcome::TempFail(m.text)
        } else {
            o
        };
        return Ok(vec![o; rcpts.len()]);
    }
    let mut out: Vec<Option<DeliveryOutcome>> = vec![None; rcpts.len()];
    let mut accepted = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        send(s.get_mut(), format!("RCPT TO:<{r}>\r\n").as_bytes()).await?;
        let rr = read_reply(&mut s, REPLY_TIMEOUT).await?;
        if rr.code == 250 || rr.code == 251 {
            accepted.push(i);
        } else {
            let o = outcome(&rr);
            out[i] = Some(if o == DeliveryOutcome::Delivered {
                DeliveryOutcome::TempFail(rr.text)
            } else {
                o
            });
        }
    }
    if !accepted.is_empty() {
        send(s.get_mut(), b"DATA\r\n").await?;
        let d = read_reply(&mut s, REPLY_TIMEOUT).await?;
        if d.code != 354 {
            let o = match outcome(&d) {
                DeliveryOutcome::Delivered => DeliveryOutcome::TempFail(d.text),
                o => o,
            };
            for &i in &accepted {
                out[i] = Some(o.clone());
            }
        } else {
            send(s.get_mut(), &smtp::data::dot_stuff(message)).await?;
            // RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
            for &i in &accepted {
                let r = read_reply(&mut s, DATA_TIMEOUT).await?;
                out[i] = Some(outcome(&r));
            }
        }
    }
    let _ = send(s.get_mut(), b"QUIT\r\n").await;
    let _ = read_reply(&mut s, Duration::from_secs(5)).await;
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| DeliveryOutcome::TempFail("no answer".into())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp::Deliver;
    use std::sync::Mutex;

    /// Records what arrives; refuses `nobody@`, defers `later@`, fills `full@`.
    struct Sink(Mutex<Vec<(Vec<String>, Vec<u8>)>>);

    impl Deliver for Sink {
        async fn check_recipient(&self, address: &str) -> RcptVerdict {
            if address.starts_with("nobody@") {
                RcptVerdict::UnknownUser
            } else if address.starts_with("busy@") {
                RcptVerdict::TempFail("busy".into())
            } else {
                RcptVerdict::Accept
            }
        }
        async fn deliver(&self, env: &Envelope, message: Arc<[u8]>) -> Vec<DeliveryOutcome> {
            self.0
                .lock()
                .unwrap()
                .push((env.rcpt_to.clone(), message.to_vec()));
            env.rcpt_to
                .iter()
                .map(|r| {
                    if r.starts_with("later@") {
                        DeliveryOutcome::TempFail("try later".into())
                    } else if r.starts_with("full@") {
                        DeliveryOutcome::OverQuota
                    } else {
                        DeliveryOutcome::Delivered
                    }
                })
                .collect()
        }
    }

    /// The client against the real LMTP server over a loopback socket: dot-stuffing
    /// survives, and each recipient gets exactly the outcome the server gave it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lmtp_client_against_the_real_lmtp_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        let server = {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (s, peer) = l.accept().await.unwrap();
                let cfg = smtp::LmtpConfig::default();
                smtp::serve_lmtp(s, peer, &*sink, &cfg).await.unwrap();
            })
        };
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let msg = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nend\r\n.\r\nafter\r\n";
        let rcpts: Vec<String> = [
            "a@x.org",
            "nobody@x.org",
            "later@x.org",
            "busy@x.org",
            "full@x.org",
            "b@x.org",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = lmtp_transaction(s, "fe", "s@y.org", &rcpts, msg)
            .await
            .unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], DeliveryOutcome::Delivered);
        assert!(
            matches!(&got[1], DeliveryOutcome::PermFail(t) if t.starts_with("550")),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], DeliveryOutcome::TempFail(t) if t.starts_with("451")),
            "{got:?}"
        );
        assert!(
            matches!(&got[3], DeliveryOutcome::TempFail(t) if t.starts_with("451")),
            "{got:?}"
        );
        assert_eq!(got[4], DeliveryOutcome::OverQuota);
        assert_eq!(got[5], DeliveryOutcome::Delivered);
        server.await.unwrap();
        let seen = sink.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].0,
            vec!["a@x.org", "later@x.org", "full@x.org", "b@x.org"]
        );
        assert_eq!(seen[0].1, msg.to_vec());
    }

    /// A server that goes away mid-transaction is an error (the caller defers every
    /// recipient), never a delivery.
    #[tokio::test]
    async fn a_vanishing_server_is_an_error_not_a_delivery() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 hi\r\n").await.unwrap();
            let mut r = BufReader::new(&mut s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            drop(r);
            s.write_all(b"250-hi\r\n250 8BITMIME\r\n").await.unwrap();
            // then silence and close
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = lmtp_transaction(s, "fe", "", &["a@x.org".to_string()], b"x\r\n").await;
        assert!(r.is_err(), "{r:?}");
        server.await.unwrap();
    }
}
