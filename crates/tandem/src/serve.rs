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
    // With `host = "..."` the slots and their roles come from cluster.toml.
    let slots = match crate::cluster::start(dir, &cfg, &events, &clock)? {
        Some(mastered) => mastered,
        None => open_slots(dir, &events, &clock)?,
    };
    crate::cluster::note_served(&slots);

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
    let stop = stop_signals()?;
    let directory = Arc::new(Directory::new(dir));
    directory
        .load()
        .context("cannot read the account directory")?;
    let limiter = Arc::new(AuthLimiter::default());
    let hostname = cfg.hostname();

    // Bind everything first so a bad address fails start-up before anything serves.
    let imap_l = bind(&cfg, "imap").await?;
    let imaps_l = bind(&cfg, "imaps").await?;
    let pop3_l = bind(&cfg, "pop3").await?;
    let pop3s_l = bind(&cfg, "pop3s").await?;
    let lmtp_l = bind(&cfg, "lmtp").await?;
    let http_l = bind(&cfg, "http").await?;
    let https_l = bind(&cfg, "https").await?;
    let mut mail_l = Vec::new();
    for key in ["smtp", "submission", "submissions"] {
        mail_l.push((key, bind(&cfg, key).await?.1));
    }
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
    // Before the admin socket can answer, so `srv status` never sees a server that answers
    // without a pid (it says "starting" until it answers).
    crate::srv::wrote_pid(dir);

    let imap_cfg = imap::ImapConfig {
        hostname: hostname.clone(),
        allow_plaintext_auth: cfg.allow_plaintext_auth,
        append_bytes_max: cfg.limits.message_bytes_max,
        commands_per_second: cfg.limits.imap_commands_per_second,
        connections_per_ip_max: cfg.limits.imap_connections_per_ip_max,
        connections_per_user_max: cfg.limits.imap_connections_per_user_max,
        idle_timeout: std::time::Duration::from_secs(cfg.limits.imap_idle_timeout_secs.max(1)),
        unauth_timeout: std::time::Duration::from_secs(cfg.limits.imap_unauth_timeout_secs.max(1)),
        ..imap::ImapConfig::default()
    };
    let imap = imap::ImapServer::new(
        imap_cfg,
        directory.clone(),
        limiter.clone(),
        slots.clone(),
        Some(acceptor.clone()),
    );
    let pop3_cfg = pop3::Pop3Config {
        hostname: hostname.clone(),
        allow_plaintext_auth: cfg.allow_plaintext_auth,
        implicit_tls_port: pop3s_l.0.port(),
        ..pop3::Pop3Config::default()
    };
    let pop3 = pop3::Pop3Server::new(
        pop3_cfg,
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
        local_domains: cfg
            .domains
            .local
            .as_ref()
            .map(|v| v.iter().map(|d| d.trim().to_lowercase()).collect()),
        remote: Default::default(),
    });
    let mail = crate::mailserve::start(
        dir, &cfg, &acceptor, &events, &directory, &limiter, &delivery,
    )?;
    // TLS policy (issue 9): one gate for IMAP, POP3 and submission.
    let policy_clock: Arc<dyn store::Clock> =
        Arc::new(crate::tlspolicy::OffsetClock(cfg.testing.clock_offset_secs));
    let policy = Arc::new(crate::tlspolicy::TlsPolicy::new(
        dir,
        &cfg,
        policy_clock,
        delivery.clone(),
    )?);
    imap.set_login_gate(policy.clone());
    pop3.set_login_gate(policy.clone());
    let _ = mail.backend.gate.set(policy.clone());
    let conns = Arc::new(Semaphore::new(cfg.limits.connections_max));
    // The frontend role and the proxy listener frontends reach this store host on.
    let frontend_lines = crate::frontend::start(crate::frontend::Wiring {
        dir,
        cfg: &cfg,
        acceptor: &acceptor,
        directory: &directory,
        limiter: &limiter,
        gate: policy.clone(),
        imap: &imap,
        pop3: &pop3,
        delivery: &delivery,
        lmtp: &lmtp_cfg,
        mail: &mail,
        served: slots.keys().cloned().collect(),
        conns: &conns,
    })
    .await?;
    // The web front: help pages (issue 9), plain and TLS.
    let site = Arc::new(crate::help::HelpSite::new(&cfg)?);
    let web_cfg = Arc::new(web::WebConfig::default());
    for (l, key, tls) in [
        (http_l, "http", None),
        (https_l, "https", Some(acceptor.clone())),
    ] {
        let (site, web_cfg) = (site.clone(), web_cfg.clone());
        tokio::spawn(accept_loop(l.1, conns.clone(), key, move |s, _peer| {
            let (site, web_cfg, tls) = (site.clone(), web_cfg.clone(), tls.clone());
            async move {
                let _ = s.set_nodelay(true);
                let _ = match tls {
                    Some(a) => web::serve_tls(s, &a, &*site, &web_cfg).await,
                    None => web::serve(s, &*site, &web_cfg).await,
                };
            }
        }));
    }
    for (key, l) in mail_l {
        let srv = mail.server(key);
        tokio::spawn(accept_loop(l, conns.clone(), key, move |s, peer| {
            let srv = srv.clone();
            async move {
                let _ = s.set_nodelay(true);
                let _ = srv.serve(s, peer).await;
            }
        }));
    }

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
    for (l, key, implicit_tls) in [(pop3_l, "pop3", false), (pop3s_l, "pop3s", true)] {
        let pop3 = pop3.clone();
        tokio::spawn(accept_loop(l.1, conns.clone(), key, move |s, peer| {
            let pop3 = pop3.clone();
            async move { pop3.serve(s, peer, implicit_tls).await }
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
    // Audit/check/quota over the admin socket, the scrubber, the alert webhook.
    crate::audit::start(dir, &cfg, &events, &directory, &slots)?;
    {
        let directory = directory.clone();
        let slots: Vec<Slot> = slots.values().cloned().collect();
        let q = (mail.outbound.clone(), mail.queue.clone());
        tokio::spawn(admin_loop(admin_l, directory, slots, q));
    }

    println!("tandem serving {} from {}", hostname, dir.display());
    for (key, _, served) in LISTENERS {
        let addr = cfg.listen_addr(key)?;
        if served {
            println!("  {key:<12} {addr}");
        }
    }
    for l in &frontend_lines {
        println!("{l}");
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
    println!("  mail         {}", mail.summary);
    events.raise(Event::info(
        "server_started",
        format!("serving {} slots", slots.len()),
    ));

    stop.await;
    crate::cluster::stop();
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
    crate::srv::removed_pid(dir);
    events.raise(Event::info("server_stopped", "clean shutdown"));
    Ok(())
}

/// Registers for SIGTERM and SIGINT before anything listens, so a stop request that
/// arrives during start-up is honoured cleanly instead of killing us with the default action.
fn stop_signals() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

pub(crate) async fn accept_loop<F, Fut>(
    l: TcpListener,
    conns: Arc<Semaphore>,
    key: &'static str,
    handler: F,
) where
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

async fn admin_loop(
    l: tokio::net::UnixListener,
    directory: Arc<Directory>,
    slots: Vec<Slot>,
    queue: (Arc<crate::outbound::Outbound>, Arc<crate::queue::Queue>),
) {
    let slots = Arc::new(slots);
    while let Ok((s, _)) = l.accept().await {
        let directory = directory.clone();
        let slots = slots.clone();
        let queue = queue.clone();
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
                Ok(admin::Request::Integrity(req)) => crate::audit::serve_admin(req, &mut w).await,
                Ok(admin::Request::Cluster(req)) => crate::cluster::serve_admin(req).await,
                Ok(admin::Request::InsecureClients { since_days, now }) => {
                    crate::tlspolicy::insecure_report(&slots, now, since_days)
                }
                Ok(admin::Request::Queue(req)) => {
                    let clock: Arc<dyn store::Clock> = Arc::new(SystemClock);
                    crate::queuecmd::online(queue.0, queue.1, clock, req).await
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
