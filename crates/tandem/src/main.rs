//! `tandem`: the one binary. CLI parsing and wiring only; the work lives in the crates.

mod admin;
mod audit;
mod cluster;
mod config;
mod deliver;
mod dkim;
mod events;
mod fo;
mod follow;
mod frontend;
mod help;
mod mail;
mod mailserve;
mod outbound;
mod queue;
mod queuecmd;
mod quota;
mod serve;
mod srv;
mod status;
mod tls;
mod tlspolicy;
mod user;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem mail server",
    propagate_version = true
)]
struct Cli {
    /// Data directory (slots, accounts, certificates, events).
    #[arg(
        long,
        global = true,
        default_value = "./tandem-data",
        value_name = "DIR"
    )]
    data: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every role on this machine (IMAP, IMAPS, LMTP) on the embedded store.
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(user::UserCmd),
    /// The outbound mail queue: list, show, retry, drop.
    #[command(subcommand, alias = "q")]
    Queue(queuecmd::QueueCmd),
    /// DKIM signing keys for outbound mail.
    #[command(subcommand)]
    Dkim(dkim::DkimCmd),
    /// Print the event log (alerts and notices), newest last, one line each (UTC).
    Events {
        /// Keep printing new events as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// Do not cut lines to 80 columns.
        #[arg(long, short)]
        wide: bool,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Verify every stored byte of a slot; --repair fixes what can be derived.
    /// Exit 0 clean, 1 problems found and all repaired, 2 problems left.
    Audit(audit::AuditArgs),
    /// Run the start-up check of each slot by hand. Exit 0 all pass, 2 otherwise.
    Check(audit::CheckArgs),
    /// Quota limits and usage.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// Several hosts: cluster CA, host certificates, verify and sync replicas.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Per slot: role, epoch, durability, master; per replica: lag, last sync.
    /// Exit 0 all well, 1 something needs attention.
    Status {
        /// Print JSON instead of the 80-column summary.
        #[arg(long)]
        json: bool,
    },
    /// Reports for support staff (`report insecure-clients [--since DAYS]`).
    #[command(subcommand)]
    Report(tlspolicy::ReportCmd),
    /// Fail over: `fo SLOT [--to HOST]`, `fo -K HOST` (dead), `fo -a [HOST]` (all off),
    /// `fo -m [HOST]` (move home). Exit 0 done or nothing to do, 1 something left undone.
    Fo(fo::FoArgs),
    /// The service on this host: `srv all start|stop|status` (stop drains; start runs
    /// `serve` in the background, log in DIR/serve.log). Idempotent.
    Srv(srv::SrvArgs),
    /// Test hook: creates an empty slot under DIR/slots (served from the next start).
    #[command(hide = true, name = "debug-create-slot")]
    DebugCreateSlot { name: String },
}

/// Exits with a command's own code; a command that could not run exits `on_error`.
fn finish(res: Result<i32>, on_error: i32) -> ! {
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tandem: {e:#}");
            std::process::exit(on_error);
        }
    }
}

/// Allocations of 1 MiB or more (argon2's 19 MiB work area at every login) are served by
/// mmap and returned to the system when freed. With glibc's default dynamic threshold they
/// stay cached in per-thread arenas: ~1 MiB of resident memory per login that never goes
/// back, which dwarfs what an idle session really needs (~15-40 KiB).
fn tune_allocator() {
    // SAFETY: mallopt only adjusts glibc's allocator parameters; called once at start-up
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let res: Result<()> = match cli.cmd {
        Cmd::Serve => serve::run(&cli.data),
        Cmd::User(c) => user::run(&cli.data, c),
        Cmd::Queue(c) => queuecmd::run(&cli.data, c),
        Cmd::Dkim(c) => dkim::run(&cli.data, c),
        Cmd::Events { follow, wide, json } => events::print_events(&cli.data, follow, wide, json),
        // Audit and check exit 2 when they could not run: something was left unchecked.
        Cmd::Audit(a) => finish(audit::run_audit(&cli.data, a), 2),
        Cmd::Check(a) => finish(audit::run_check(&cli.data, a), 2),
        Cmd::Quota(c) => finish(quota::run(&cli.data, c), 1),
        Cmd::Cluster(c) => finish(cluster::run(&cli.data, c), 2),
        Cmd::Status { json } => finish(status::run(&cli.data, json), 2),
        Cmd::Report(c) => tlspolicy::run_report(&cli.data, c),
        Cmd::Fo(a) => finish(fo::run(&cli.data, a), 2),
        Cmd::Srv(a) => finish(srv::run(&cli.data, a), 2),
        Cmd::DebugCreateSlot { name } => audit::create_slot(&cli.data, &name),
    };
    if let Err(e) = res {
        eprintln!("tandem: {e:#}");
        std::process::exit(1);
    }
}
