//! The admin socket `DIR/admin.sock`: how CLI commands reach a running server, which
//! holds the slot databases open. One JSON request line, one JSON reply line.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserDel {
        address: String,
        purge: bool,
    },
    /// `tandem queue ...` (see `queuecmd.rs`).
    Queue(crate::queuecmd::QueueRequest),
    /// `tandem audit`, `check`, `quota` (see `audit.rs`): progress lines, then a data
    /// line, then the `Reply` line.
    Integrity(crate::audit::IntegrityRequest),
    /// `tandem status` and `tandem cluster verify|sync` (see `cluster.rs`).
    Cluster(crate::cluster::ClusterRequest),
    /// `tandem report insecure-clients` (see `tlspolicy.rs`); `now` is the CLI's clock.
    InsecureClients {
        since_days: u32,
        now: i64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// Sends `req` to the running server. `Ok(None)` when no server is running.
pub fn call(dir: &Path, req: &Request) -> Result<Option<Reply>> {
    let path = dir.join("admin.sock");
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).context("admin socket write")?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .context("the server did not answer on its admin socket")?;
    if reply.is_empty() {
        bail!("the server closed its admin socket without answering");
    }
    Ok(Some(
        serde_json::from_str(&reply).context("bad admin reply")?,
    ))
}

/// Like [`call`] for requests that stream: every line before the final `Reply` is
/// handed to `on_line` (progress, data). Waits as long as lines keep coming (an audit
/// of a large slot takes hours); gives up after `STREAM_SILENCE` without one.
pub fn call_stream(
    dir: &Path,
    req: &Request,
    mut on_line: impl FnMut(serde_json::Value),
) -> Result<Option<Reply>> {
    const STREAM_SILENCE: Duration = Duration::from_secs(600);
    let path = dir.join("admin.sock");
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    s.set_read_timeout(Some(STREAM_SILENCE))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).context("admin socket write")?;
    let mut r = BufReader::new(s);
    loop {
        let mut l = String::new();
        let n = r
            .read_line(&mut l)
            .context("the server stopped answering on its admin socket")?;
        if n == 0 {
            bail!("the server closed its admin socket before finishing");
        }
        let v: serde_json::Value = serde_json::from_str(&l).context("bad admin reply")?;
        if v.get("ok").is_some() && v.get("message").is_some() {
            return Ok(Some(serde_json::from_value(v).context("bad admin reply")?));
        }
        on_line(v);
    }
}
