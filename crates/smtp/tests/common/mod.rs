//! The test client shared by the LMTP and SMTP session tests: line-level, one reply at a
//! time, every wait bounded.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};

const WAIT: Duration = Duration::from_secs(20);

pub struct Client<S> {
    pub r: BufReader<ReadHalf<S>>,
    pub w: WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Client<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// One (possibly multi-line) reply, lines joined with '\n', CRLF removed.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line))
                .await
                .expect("server did not reply in time")
                .unwrap();
            assert!(
                n > 0,
                "EOF while waiting for a reply; got so far: {lines:?}"
            );
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Send a command, return its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn expect_eof(&mut self) {
        let mut rest = String::new();
        let n = tokio::time::timeout(WAIT, self.r.read_line(&mut rest))
            .await
            .expect("server did not close")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected EOF, got {rest:?}");
    }

    /// LMTP greeting + LHLO.
    pub async fn hello(&mut self) {
        assert_eq!(self.reply().await, "220 lmtp.test LMTP Tandem ready");
        let lhlo = self.cmd("LHLO client.test").await;
        assert!(lhlo.starts_with("250-lmtp.test"), "{lhlo}");
    }

    /// The stream back, for a TLS upgrade (nothing may be buffered).
    pub fn into_inner(self) -> S
    where
        S: Unpin,
    {
        assert!(self.r.buffer().is_empty());
        self.r.into_inner().unsplit(self.w)
    }
}
