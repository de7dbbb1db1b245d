//! `tandem`: the one binary. CLI parsing and wiring only; the work lives in the crates.

mod admin;
mod config;
mod deliver;
mod serve;
mod tls;
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
    /// Print the event log (alerts and notices), newest last.
    Events {
        /// Keep printing new events as they arrive.
        #[arg(long, short)]
        follow: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let res: Result<()> = match cli.cmd {
        Cmd::Serve => serve::run(&cli.data),
        Cmd::User(c) => user::run(&cli.data, c),
        Cmd::Events { follow } => admin::print_events(&cli.data, follow),
    };
    if let Err(e) = res {
        eprintln!("tandem: {e:#}");
        std::process::exit(1);
    }
}
