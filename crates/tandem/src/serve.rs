//! `tandem serve`: every role on one machine over the embedded store.

use crate::config::{Config, DEFAULT_TOML, LISTENERS};
use crate::deliver::LocalDelivery;
use crate::{admin, tls, user};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use store::directory::{AuthLimiter, Directory};
use store::{Event, EventLog, Slot, SystemClock};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub fn run(dir: &Path) -> Result<()> {
    let first_start = !dir.join("tandem.toml").exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if first_start {
        std::fs::write(dir.join("tandem.toml"), DEFAULT_TOML)
            .with_context(|| format!("cannot write {}", dir.join("tandem.toml").display()))?;
    }
    let cfg = Config::load(dir)?;
    let (cert, key) = tls::paths(dir, &cfg);
    if tls::ensure_self_signed(&cert, &key, &cfg.hostname())? {
        println!(
            "made a self-signed certificate for {}: {}",
            cfg.hostname(),
            cert.display()
        );
    }
    let acceptor = tls::acceptor(&cert, &key)?;

    let clock: Arc<dyn store::Clock> = Arc::new(SystemClock);
    let events = Arc::new(EventLog::new(&dir.join("events.jsonl"), clock.clone()));
    let slots = open_slots(dir, &events, &clock)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(dir, cfg, acceptor, events, slots))
}

/// Opens every slot under `DIR/slots` (creating `s1` on first start). A slot that fails
/// its start-up check is not served and raises an alert; the others serve (invariant 8).
fn open_slots(
    dir: &Path,
    events: &Arc<EventLog>,
    clock: &Arc<dyn store::Clock>,
) -> Result<HashMap<String, Slot>> {
    let root = dir.join("slots");
    let mut names = user::slot_names(dir)?;
    if names.is_empty() {
        let host = hostname();
        Slot::create(&root.join("s1"), "s1", &host, events.clone(), clock.clone())
            .context("cannot create the first slot")?;
        names.push("s1".into());
    }
    let mut slots = HashMap::new();
    for name in names {
        match Slot::open(&root.join(&name), events.clone(), clock.clone()) {
            Ok(s) => {
                slots.insert(name, s);
            }
            Err(e) => {
                let mut ev = Event::alert(
                    "slot_refused",
                    format!("start-up check failed, not serving: {e}"),
                );
                ev.slot = Some(name.clone());
                events.raise(ev);
                eprintln!("slot {name} is NOT served: {e}");
            }
        }
    }
    Ok(slots)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn bind(cfg: &Config, key: &str) -> Result<(SocketAddr, TcpListener)> {
    let addr = cfg.listen_addr(key)?;
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for [listen] {key} in tandem.toml"))?;
    Ok((addr, l))
}

async fn serve(
    dir: &Path,
    cfg: Config,
    acceptor: tokio_rustls::TlsAcceptor,
    events: Arc<EventLog>,
    slots: HashMap<String, Slot>,
) -> Result<()> {
    let directory = Arc::new(Directory::new(dir));
    directory
        .load()
        .context("cannot read the account directory")?;
    let limiter = Arc::new(AuthLimiter::default());
    let hostname = cfg.hostname();

    // Bind everything first so a bad address fails start-up before anything serves.
    let imap_l = bind(&cfg, "imap").await?;
    let imaps_l = bind(&cfg, "imaps").await?;
    let lmtp_l = bind(&cfg, "lmtp").await?;
    let admin_path = dir.join("admin.sock");
    if tokio::net::UnixStream::connect(&admin_path).await.is_ok() {
        bail!(
            "another tandem server is already running on {}",
            dir.display()
        );
    }
    let _ = std::fs::remove_file(&admin_path);
    let admin_l = tokio::net::UnixListener::bind(&admin_path)
        .with_context(|| format!("cannot create {}", admin_path.display()))?;

    let imap_cfg = imap::ImapConfig {
        hostname: hostname.clone(),
        allow_plaintext_auth: cfg.allow_plaintext_auth,
        append_bytes_max: cfg.limits.message_bytes_max,
        ..imap::ImapConfig::default()
    };
    let imap = imap::ImapServer::new(
        imap_cfg,
        directory.clone(),
        limiter.clone(),
        slots.clone(),
        Some(acceptor.clone()),
    );
    let lmtp_cfg = Arc::new(smtp::LmtpConfig {
        hostname: hostname.clone(),
        message_bytes_max: cfg.limits.message_bytes_max as usize,
        ..smtp::LmtpConfig::default()
    });
    let delivery = Arc::new(LocalDelivery {
        directory: directory.clone(),
        slots: slots.clone(),
    });
    let conns = Arc::new(Semaphore::new(cfg.limits.connections_max));

    {
        let imap = imap.clone();
        let conns = conns.clone();
        let (_, l) = imap_l;
        tokio::spawn(accept_loop(l, conns, "imap", move |s, peer| {
            let imap = imap.clone();
            async move { imap.serve(s, peer, false).await }
        }));
    }
    {
        let imap = imap.clone();
        let conns = conns.clone();
        let (_, l) = imaps_l;
        tokio::spawn(accept_loop(l, conns, "imaps", move |s, peer| {
            let imap = imap.clone();
            async move { imap.serve(s, peer, true).await }
        }));
    }
    {
        let conns = conns.clone();
        let (_, l) = lmtp_l;
        tokio::spawn(accept_loop(l, conns, "lmtp", move |s, peer| {
            let d = delivery.clone();
            let c = lmtp_cfg.clone();
            async move {
                let _ = s.set_nodelay(true);
                let _ = smtp::serve_lmtp(s, peer, &*d, &c).await;
            }
        }));
    }
    {
        let directory = directory.clone();
        let slots: Vec<Slot> = slots.values().cloned().collect();
        tokio::spawn(admin_loop(admin_l, directory, slots));
    }

    println!("tandem serving {} from {}", hostname, dir.display());
    for (key, _, served) in LISTENERS {
        let addr = cfg.listen_addr(key)?;
        if served {
            println!("  {key:<12} {addr}");
        }
    }
    println!("  slots        {}", {
        let mut v: Vec<_> = slots.keys().cloned().collect();
        v.sort();
        v.join(", ")
    });
    if directory.load()?.accounts.is_empty() {
        let exe = std::env::args().next().unwrap_or_else(|| "tandem".into());
        println!(
            "no accounts yet; add one with:\n  echo 'a-password' | {exe} --data {} user add you@localhost --password-stdin",
            dir.display()
        );
    }
    println!(
        "then point a mail client at IMAPS {} (self-signed certificate) and deliver with LMTP {}",
        cfg.listen_addr("imaps")?,
        cfg.listen_addr("lmtp")?
    );
    events.raise(Event::info(
        "server_started",
        format!("serving {} slots", slots.len()),
    ));

    wait_for_stop().await;
    println!("stopping: flushing slots");
    for (name, s) in &slots {
        let s = s.clone();
        let r = tokio::task::spawn_blocking(move || s.flush()).await;
        if !matches!(r, Ok(Ok(()))) {
            eprintln!(
                "slot {name}: flush at shutdown did not complete; the journal will be replayed at start"
            );
        }
    }
    let _ = std::fs::remove_file(&admin_path);
    events.raise(Event::info("server_stopped", "clean shutdown"));
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn accept_loop<F, Fut>(l: TcpListener, conns: Arc<Semaphore>, key: &'static str, handler: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("{key}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            // At the connection limit: close at once rather than queue without bound.
            drop(s);
            continue;
        };
        let fut = handler(s, peer);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

async fn admin_loop(l: tokio::net::UnixListener, directory: Arc<Directory>, slots: Vec<Slot>) {
    let slots = Arc::new(slots);
    while let Ok((s, _)) = l.accept().await {
        let directory = directory.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r).take(64 * 1024);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<admin::Request>(&line) {
                Ok(admin::Request::UserDel { address, purge }) => {
                    tokio::task::spawn_blocking(move || {
                        user::user_del(&directory, &slots, &address, purge)
                    })
                    .await
                    .unwrap_or_else(|_| admin::Reply {
                        ok: false,
                        message: "internal error".into(),
                    })
                }
                Err(e) => admin::Reply {
                    ok: false,
                    message: format!("bad request: {e}"),
                },
            };
            if let Ok(mut out) = serde_json::to_vec(&reply) {
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;
