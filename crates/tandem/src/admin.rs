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
    UserDel { address: String, purge: bool },
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

pub fn print_events(dir: &Path, follow: bool) -> Result<()> {
    let path = dir.join("events.jsonl");
    let mut pos = 0u64;
    loop {
        match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::{Seek, SeekFrom};
                let mut r = BufReader::new(f);
                r.seek(SeekFrom::Start(pos))?;
                let mut line = String::new();
                while r.read_line(&mut line)? > 0 {
                    if !line.ends_with('\n') {
                        break;
                    }
                    pos += line.len() as u64;
                    print_event(&line);
                    line.clear();
                }
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

fn print_event(line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        print!("{line}");
        return;
    };
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let mut where_ = Vec::new();
    for k in ["slot", "user", "mailbox"] {
        if !get(k).is_empty() {
            where_.push(format!("{k}={}", get(k)));
        }
    }
    if let Some(u) = v.get("uid").and_then(|x| x.as_u64()) {
        where_.push(format!("uid={u}"));
    }
    println!(
        "{} {:5} {} {} {}",
        v.get("ts").and_then(|x| x.as_i64()).unwrap_or(0),
        get("level").to_uppercase(),
        get("kind"),
        where_.join(" "),
        get("detail")
    );
}
