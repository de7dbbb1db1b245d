//! A real server on a loopback socket over a temporary slot, and a tiny raw IMAP client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use imap::{ImapConfig, ImapServer};
use store::directory::{Account, AuthLimiter, Directory, hash_password};
use store::{EventLog, Slot, SystemClock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub const USER: &str = "alice@example.com";
pub const PASS: &str = "secret";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub slot: Slot,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub async fn start() -> Env {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut ImapConfig)) -> Env {
    let dir = std::env::temp_dir().join(format!(
        "tandem-imap-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let clock = Arc::new(SystemClock);
    let events = Arc::new(EventLog::new(&dir.join("events.log"), clock.clone()));
    let slot =
        tokio::task::block_in_place(|| Slot::create(&dir.join("s1"), "s1", "test", events, clock))
            .unwrap();
    let directory = Arc::new(Directory::new(&dir));
    let hash = hash_password(PASS.as_bytes()).unwrap();
    directory
        .update(|a| {
            a.accounts.push(Account {
                address: USER.into(),
                password: hash,
                slot: "s1".into(),
            });
            Ok(())
        })
        .unwrap();
    let mut config = ImapConfig {
        hostname: "test".into(),
        allow_plaintext_auth: true,
        ..ImapConfig::default()
    };
    tweak(&mut config);
    let mut slots = HashMap::new();
    slots.insert("s1".to_string(), slot.clone());
    let server = ImapServer::new(
        config,
        directory,
        Arc::new(AuthLimiter::default()),
        slots,
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, peer)) = listener.accept().await {
            tokio::spawn(server.clone().serve(s, peer, false));
        }
    });
    Env { dir, addr, slot }
}

pub struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    n: u32,
    pub greeting: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Client {
            r: BufReader::new(r),
            w,
            n: 0,
            greeting: String::new(),
        };
        c.greeting = c.read_response().await.expect("greeting");
        c
    }

    pub async fn login(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        let (_, done) = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
        assert!(done.contains(" OK "), "{done}");
        c
    }

    /// One response line with any literals inlined (`{n}\r\n` + bytes kept as text).
    /// `None` at EOF.
    pub async fn read_response(&mut self) -> Option<String> {
        let mut text = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(READ_TIMEOUT, self.r.read_until(b'\n', &mut line))
                .await
                .expect("server answered in time")
                .unwrap();
            if n == 0 {
                return if text.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(&text).into_owned())
                };
            }
            text.extend_from_slice(&line);
            let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if let Some(open) = trimmed.iter().rposition(|&b| b == b'{')
                && trimmed.ends_with(b"}")
                && let Ok(len) = std::str::from_utf8(&trimmed[open + 1..trimmed.len() - 1])
                    .unwrap_or("x")
                    .parse::<usize>()
            {
                let mut lit = vec![0; len];
                tokio::time::timeout(READ_TIMEOUT, self.r.read_exact(&mut lit))
                    .await
                    .expect("literal in time")
                    .unwrap();
                text.extend_from_slice(&lit);
                continue;
            }
            let s = String::from_utf8_lossy(&text).into_owned();
            return Some(s.trim_end_matches("\r\n").to_string());
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    pub fn next_tag(&mut self) -> String {
        self.n += 1;
        format!("t{}", self.n)
    }

    /// Sends `tag text` and collects responses up to the tagged one.
    pub async fn cmd(&mut self, text: &str) -> (Vec<String>, String) {
        let tag = self.next_tag();
        self.send(format!("{tag} {text}\r\n").as_bytes()).await;
        self.until_tagged(&tag).await
    }

    pub async fn until_tagged(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        loop {
            let line = self.read_response().await.expect("connection open");
            if line.starts_with(&format!("{tag} ")) {
                return (untagged, line);
            }
            untagged.push(line);
        }
    }

    /// APPEND with a synchronizing literal (waits for the continuation).
    pub async fn append(
        &mut self,
        mailbox: &str,
        flags: &str,
        msg: &[u8],
    ) -> (Vec<String>, String) {
        let tag = self.next_tag();
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!("({flags}) ")
        };
        self.send(format!("{tag} APPEND {mailbox} {flags}{{{}}}\r\n", msg.len()).as_bytes())
            .await;
        let cont = self.read_response().await.unwrap();
        assert!(cont.starts_with('+'), "expected continuation, got {cont}");
        self.send(msg).await;
        self.send(b"\r\n").await;
        self.until_tagged(&tag).await
    }
}

pub const SIMPLE: &[u8] = b"From: Bob <bob@example.org>\r\nTo: Alice <alice@example.com>\r\nSubject: Lunch plans\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <lunch@example.org>\r\n\r\nShall we meet at noon?\r\n";

pub const MULTIPART: &[u8] = b"From: Carol <carol@example.net>\r\nTo: alice@example.com\r\nSubject: Report\r\nDate: Tue, 8 Feb 1994 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe quarterly numbers are attached.\r\n--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--XYZ--\r\n";
