//! A minimal HTTP/1.1 server for Tandem's web front (help pages now; more later): GET and
//! HEAD only, no framework. Runs over any byte stream, so the wiring serves it on plain
//! TCP (`http`) and after a rustls handshake (`https`).
//!
//! Bounds, and what happens at each:
//! - request head (request line + headers) over [`WebConfig::head_bytes_max`]: `431`, close;
//! - a request head not complete within [`WebConfig::read_timeout`] (slow-loris): close;
//! - a request body (`Content-Length` > 0 or `Transfer-Encoding`): `413`, close (nothing
//!   here takes bodies, so none is read);
//! - writes not done within [`WebConfig::write_timeout`]: close;
//! - [`WebConfig::requests_per_connection_max`] keep-alive requests, then close.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Server settings. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub head_bytes_max: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub requests_per_connection_max: u32,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            head_bytes_max: 16 * 1024,
            read_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            requests_per_connection_max: 100,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-encoding left as sent.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn html(body: String) -> Response {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8".into(),
            body: body.into_bytes(),
        }
    }
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.as_bytes().to_vec(),
        }
    }
}

/// What answers requests. Called for GET and HEAD only (others get `405`).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Response;
}

/// Why a head could not be parsed: the status to answer before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400
    Malformed,
    /// 505
    Version,
}

/// Parses a request head (everything before the blank line, without it).
pub fn parse_head(head: &[u8]) -> Result<(Request, bool), HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::Malformed);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        // RFC 9112 5.1: no whitespace between the name and the colon; obs-fold refused.
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(HeadError::Malformed);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
    };
    let close = match req.header("connection") {
        Some(c) if c.eq_ignore_ascii_case("close") => true,
        Some(c) if c.eq_ignore_ascii_case("keep-alive") => false,
        _ => http10,
    };
    Ok((req, close))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

/// Serves one connection until the client closes it, a limit is hit, or an error.
/// `Ok(())` for every ending a client can cause.
pub async fn serve<S, H>(mut stream: S, handler: &H, cfg: &WebConfig) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler + ?Sized,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    for n in 0..cfg.requests_per_connection_max.max(1) {
        let head = match read_head(&mut stream, &mut buf, cfg).await? {
            ReadHead::Head(h) => h,
            ReadHead::Closed => return Ok(()),
            ReadHead::TooLarge => {
                let r = Response::text(431, "request head too large\n");
                return write(&mut stream, &r, false, true, cfg).await;
            }
        };
        let (req, mut close) = match parse_head(&head) {
            Ok(x) => x,
            Err(e) => {
                let status = if e == HeadError::Version { 505 } else { 400 };
                let r = Response::text(status, "bad request\n");
                return write(&mut stream, &r, false, true, cfg).await;
            }
        };
        let has_body = req.header("transfer-encoding").is_some()
            || req
                .header("content-length")
                .is_some_and(|v| v.trim() != "0");
        if has_body {
            let r = Response::text(413, "request bodies are not accepted here\n");
            return write(&mut stream, &r, false, true, cfg).await;
        }
        let head_only = req.method == "HEAD";
        let resp = if req.method == "GET" || head_only {
            handler.handle(&req)
        } else {
            // Unknown methods may carry bodies we do not read: do not trust what follows.
            close = true;
            Response::text(405, "only GET and HEAD\n")
        };
        close |= n + 1 >= cfg.requests_per_connection_max;
        write(&mut stream, &resp, head_only, close, cfg).await?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

enum ReadHead {
    Head(Vec<u8>),
    Closed,
    TooLarge,
}

/// Reads up to the blank line ending a head; bytes after it stay in `buf` (pipelining).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cfg: &WebConfig,
) -> std::io::Result<ReadHead> {
    let deadline = tokio::time::Instant::now() + cfg.read_timeout;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if end > cfg.head_bytes_max {
                return Ok(ReadHead::TooLarge);
            }
            let head = buf[..end].to_vec();
            buf.drain(..end + 4);
            return Ok(ReadHead::Head(head));
        }
        if buf.len() > cfg.head_bytes_max {
            return Ok(ReadHead::TooLarge);
        }
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            // Slow or idle client: close without a word (it may be mid-keep-alive).
            Err(_) => return Ok(ReadHead::Closed),
        };
        if n == 0 {
            return Ok(ReadHead::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    r: &Response,
    head_only: bool,
    close: bool,
    cfg: &WebConfig,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    let io = async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        if close {
            stream.shutdown().await?;
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(cfg.write_timeout, io).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// Serves one TCP connection of an `https` listener: TLS handshake (bounded by the read
/// timeout), then [`serve`].
pub async fn serve_tls<H: Handler + ?Sized>(
    tcp: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    handler: &H,
    cfg: &WebConfig,
) -> std::io::Result<()> {
    let tls = match tokio::time::timeout(cfg.read_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return Ok(()),
    };
    serve(tls, handler, cfg).await
}

/// `<`, `>`, `&`, `"`, `'` escaped for HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: &Request) -> Response {
            match req.path.as_str() {
                "/hi" => Response::html(format!("<p>{}</p>", escape_html("a<b"))),
                _ => Response::text(404, "no\n"),
            }
        }
    }

    async fn exchange(input: &[u8], cfg: &WebConfig) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let cfg2 = cfg.clone();
        let task = tokio::spawn(async move { serve(server, &Echo, &cfg2).await });
        client.write_all(input).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn keep_alive_pipelining_head_and_404() {
        let out = exchange(
            b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\nHEAD /hi HTTP/1.1\r\n\r\nGET /nope?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
            &WebConfig::default(),
        )
        .await;
        let parts: Vec<_> = out.match_indices("HTTP/1.1 ").collect();
        assert_eq!(parts.len(), 3, "{out}");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("<p>a&lt;b</p>"));
        assert_eq!(out.matches("<p>").count(), 1, "HEAD has no body");
        assert!(out.contains("HTTP/1.1 404 Not Found\r\n"));
        assert!(out.contains("Connection: close\r\n"));
    }

    #[tokio::test]
    async fn limits_and_bad_requests_close_with_the_right_status() {
        let cfg = WebConfig {
            head_bytes_max: 64,
            ..WebConfig::default()
        };
        let big = format!("GET /hi HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert!(
            exchange(big.as_bytes(), &cfg)
                .await
                .starts_with("HTTP/1.1 431")
        );
        let d = WebConfig::default();
        for (req, status) in [
            (
                &b"POST /hi HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
                "413",
            ),
            (b"DELETE /hi HTTP/1.1\r\n\r\n", "405"),
            (b"GET hi HTTP/1.1\r\n\r\n", "400"),
            (b"GET /hi HTTP/2.0\r\n\r\n", "505"),
            (b"GET /hi HTTP/1.1\r\nBad Header: x\r\n\r\n", "400"),
        ] {
            let out = exchange(req, &d).await;
            assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
        }
        // HTTP/1.0 closes after one answer.
        let out = exchange(b"GET /hi HTTP/1.0\r\n\r\nGET /hi HTTP/1.0\r\n\r\n", &d).await;
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1);
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_read_timeout() {
        let cfg = WebConfig {
            read_timeout: Duration::from_millis(50),
            ..WebConfig::default()
        };
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { serve(server, &Echo, &cfg).await });
        client.write_all(b"GET /hi HT").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        task.await.unwrap().unwrap();
    }
}
