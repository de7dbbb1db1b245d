//! `tandem events`: the event stream for people (one line each, UTC, fits 80 columns),
//! and the optional webhook that POSTs every alert to a chat relay (`[events]
//! webhook_url` in tandem.toml).

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;
use store::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Width of one printed event unless `--wide`.
const LINE_COLUMNS: usize = 80;

pub fn print_events(dir: &Path, follow: bool, wide: bool, json: bool) -> Result<()> {
    let path = dir.join("events.jsonl");
    let mut pos = 0u64;
    let stdout = std::io::stdout();
    loop {
        match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::{Seek, SeekFrom};
                let mut r = BufReader::new(f);
                r.seek(SeekFrom::Start(pos))?;
                let mut line = String::new();
                let mut out = stdout.lock();
                while r.read_line(&mut line)? > 0 {
                    if !line.ends_with('\n') {
                        break; // being written: read it whole next time
                    }
                    pos += line.len() as u64;
                    let shown = if json {
                        line.trim_end().to_string()
                    } else {
                        format_event(&line, if wide { usize::MAX } else { LINE_COLUMNS })
                    };
                    if writeln!(out, "{shown}").is_err() {
                        return Ok(()); // reader went away (`| head`)
                    }
                    line.clear();
                }
                let _ = out.flush();
            }
            Err(_) if !follow => {
                println!("no events yet ({} does not exist)", path.display());
                return Ok(());
            }
            Err(_) => {}
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `2026-11-28 20:24:56Z ALERT corrupt_blob s1 alice@example.com INBOX uid 3: detail`,
/// cut to `columns` characters.
pub fn format_event(line: &str, columns: usize) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return cut(line.trim_end(), columns);
    };
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let mut s = format!(
        "{} {:5} {}",
        utc(v.get("ts").and_then(|x| x.as_i64()).unwrap_or(0)),
        get("level").to_uppercase(),
        get("kind")
    );
    for k in ["slot", "user", "mailbox"] {
        if !get(k).is_empty() {
            s.push(' ');
            s.push_str(get(k));
        }
    }
    if let Some(u) = v.get("uid").and_then(|x| x.as_u64()) {
        s.push_str(&format!(" uid {u}"));
    }
    s.push_str(": ");
    s.push_str(get("detail"));
    cut(&s, columns)
}

fn cut(s: &str, columns: usize) -> String {
    if s.chars().count() <= columns {
        return s.to_string();
    }
    let mut out: String = s.chars().take(columns.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Where alerts are POSTed: `http://host[:port][/path]`. Plain HTTP only (point it at a
/// local relay for a chat service that needs TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Per POST: connect, send and read the status line within this.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per alert; then it is dropped (it is still in events.jsonl).
const WEBHOOK_TRIES: u32 = 3;
/// Bound on the response bytes read (only the status line matters).
const WEBHOOK_RESPONSE_BYTES_MAX: usize = 4096;

impl Webhook {
    pub fn parse(url: &str) -> Result<Webhook> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "[events] webhook_url = {url:?}: only http:// URLs are supported \
                 (put a local relay in front of an https service)"
            );
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .with_context(|| format!("[events] webhook_url: bad port in {url:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("[events] webhook_url = {url:?} is not a valid http:// URL");
        }
        Ok(Webhook {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// One POST; returns the HTTP status code.
    pub async fn post(&self, body: &[u8]) -> Result<u16> {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: tandem\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                self.path,
                self.host,
                self.port,
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            s.flush().await?;
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 512];
            while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < WEBHOOK_RESPONSE_BYTES_MAX {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(WEBHOOK_TIMEOUT, fut)
            .await
            .context("webhook timed out")??;
        let line = String::from_utf8_lossy(&buf);
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .context("webhook answered without an HTTP status line")?;
        Ok(code)
    }
}

/// POSTs every alert (not notices) as its JSON object, in order, with a few retries.
pub async fn run_webhook(hook: Webhook, mut rx: tokio::sync::broadcast::Receiver<Event>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                eprintln!("webhook: {n} events were raised faster than they could be sent");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if ev.level != "alert" {
            continue;
        }
        let Ok(body) = serde_json::to_vec(&ev) else {
            continue;
        };
        for attempt in 1..=WEBHOOK_TRIES {
            match hook.post(&body).await {
                Ok(code) if (200..300).contains(&code) => break,
                Ok(code) if attempt == WEBHOOK_TRIES => {
                    eprintln!("webhook: gave up on alert {}: HTTP {code}", ev.kind)
                }
                Err(e) if attempt == WEBHOOK_TRIES => {
                    eprintln!("webhook: gave up on alert {}: {e:#}", ev.kind)
                }
                _ => tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_right() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_750_000_000), "2025-06-15 15:06:40Z");
        assert_eq!(utc(-1), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn event_lines_fit_80_columns() {
        let line = r#"{"ts":1750000000,"level":"alert","kind":"corrupt_blob","slot":"s1","user":"alice@example.com","mailbox":"INBOX","uid":3,"detail":"corrupt blob 0123456789abcdef0123456789abcdef: content hashes to something else entirely"}"#;
        let s = format_event(line, 80);
        assert_eq!(s.chars().count(), 80);
        assert!(s.starts_with(
            "2025-06-15 15:06:40Z ALERT corrupt_blob s1 alice@example.com INBOX uid 3: "
        ));
        assert!(format_event(line, usize::MAX).ends_with("entirely"));
    }

    #[test]
    fn webhook_urls_parse() {
        assert_eq!(
            Webhook::parse("http://127.0.0.1:8080/hooks/x").unwrap(),
            Webhook {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/hooks/x".into()
            }
        );
        assert_eq!(Webhook::parse("http://relay").unwrap().port, 80);
        assert!(Webhook::parse("https://chat.example/hook").is_err());
        assert!(Webhook::parse("http://:80/").is_err());
    }
}
