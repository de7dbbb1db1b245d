//! A throwaway IMAP server for poking at with real clients (imaplib, mbsync):
//! `cargo run -p imap --example dev_server -- DIR PORT` creates (or reopens) a slot in
//! DIR with the account `alice@example.com` / `secret`, plaintext login allowed.

use std::collections::HashMap;
use std::sync::Arc;

use imap::{ImapConfig, ImapServer};
use store::directory::{Account, AuthLimiter, Directory, hash_password};
use store::{EventLog, Slot, SystemClock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/tandem-dev".into()));
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(1143);
    std::fs::create_dir_all(&dir)?;
    let clock = Arc::new(SystemClock);
    let events = Arc::new(EventLog::new(&dir.join("events.log"), clock.clone()));
    let slot_dir = dir.join("s1");
    let slot = tokio::task::block_in_place(|| {
        if slot_dir.join("SLOT").exists() {
            Slot::open(&slot_dir, events, clock)
        } else {
            Slot::create(&slot_dir, "s1", "dev", events, clock)
        }
    })?;
    let directory = Arc::new(Directory::new(&dir));
    if directory.load()?.get("alice@example.com").is_none() {
        let hash = hash_password(b"secret")?;
        directory.update(|a| {
            a.accounts.push(Account {
                address: "alice@example.com".into(),
                password: hash,
                slot: "s1".into(),
            });
            Ok(())
        })?;
    }
    let config = ImapConfig {
        allow_plaintext_auth: true,
        ..ImapConfig::default()
    };
    let server = ImapServer::new(
        config,
        directory,
        Arc::new(AuthLimiter::default()),
        HashMap::from([("s1".to_string(), slot)]),
        None,
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("listening on 127.0.0.1:{port}");
    loop {
        let (s, peer) = listener.accept().await?;
        tokio::spawn(server.clone().serve(s, peer, false));
    }
}
