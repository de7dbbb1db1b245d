//! `tandem user ...`: accounts in the embedded directory.

use crate::admin;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use store::directory::{self, Account, Directory};
use store::{EventLog, Op, Slot, StoreError, SystemClock};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create an account.
    Add {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Change an account's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account (refused while it holds mail, unless --purge).
    Del {
        address: String,
        /// Also delete every mailbox and message of the account.
        #[arg(long)]
        purge: bool,
    },
}

fn read_password(flag: bool) -> Result<Vec<u8>> {
    if !flag {
        bail!("give the password on standard input with --password-stdin");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']);
    if pw.is_empty() {
        bail!("the password on standard input is empty");
    }
    Ok(pw.as_bytes().to_vec())
}

/// Slot names present under `DIR/slots`, sorted.
pub fn slot_names(dir: &Path) -> Result<Vec<String>> {
    let slots = dir.join("slots");
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&slots) {
        for e in rd.flatten() {
            if e.path().join("SLOT").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn run(dir: &Path, cmd: UserCmd) -> Result<()> {
    if dir.join("tandem.toml").exists() {
        let cfg = crate::config::Config::load(dir)?;
        if let Some(state) = crate::follow::open_state(dir, &cfg)? {
            return run_clustered(dir, &cfg, state.as_ref(), cmd);
        }
    }
    let d = Directory::new(dir);
    match cmd {
        UserCmd::Add {
            address,
            password_stdin,
        } => {
            let address = directory::normalize_address(&address);
            directory::validate_address(&address)?;
            let pw = read_password(password_stdin)?;
            if !dir.exists() {
                bail!(
                    "{} does not exist: start the server once (tandem --data {} serve) to create it",
                    dir.display(),
                    dir.display()
                );
            }
            let slots = slot_names(dir)?;
            let hash = directory::hash_password(&pw)?;
            d.update(|a| {
                if a.get(&address).is_some() {
                    return Err(StoreError::UserExists);
                }
                // New accounts go to the slot holding the fewest.
                let slot = slots
                    .iter()
                    .min_by_key(|s| a.accounts.iter().filter(|x| &x.slot == *s).count())
                    .cloned()
                    .unwrap_or_else(|| "s1".to_string());
                a.accounts.push(Account {
                    address: address.clone(),
                    password: hash,
                    slot,
                });
                Ok(())
            })
            .with_context(|| format!("cannot add {address}"))?;
            println!("added {address}");
        }
        UserCmd::List => {
            let a = d.load()?;
            if a.accounts.is_empty() {
                println!("no accounts");
            }
            for acct in &a.accounts {
                println!("{}  (slot {})", acct.address, acct.slot);
            }
        }
        UserCmd::Passwd {
            address,
            password_stdin,
        } => {
            let address = directory::normalize_address(&address);
            let pw = read_password(password_stdin)?;
            let hash = directory::hash_password(&pw)?;
            d.update(|a| {
                let acct = a
                    .accounts
                    .iter_mut()
                    .find(|x| x.address == address)
                    .ok_or(StoreError::NoSuchUser)?;
                acct.password = hash;
                Ok(())
            })
            .with_context(|| format!("cannot change the password of {address}"))?;
            println!("password changed for {address}");
        }
        UserCmd::Del { address, purge } => {
            let address = directory::normalize_address(&address);
            let req = admin::Request::UserDel {
                address: address.clone(),
                purge,
            };
            let reply = match admin::call(dir, &req)? {
                Some(r) => r,
                None => {
                    // No server running: do it here.
                    let slots = open_slots_offline(dir)?;
                    user_del(&d, &slots, &address, purge)
                }
            };
            if !reply.ok {
                bail!("{}", reply.message);
            }
            println!("{}", reply.message);
        }
    }
    Ok(())
}

/// `tandem user ...` with a cluster state: the account directory lives there (every host
/// mirrors it into its `directory` file within a moment; see `follow::mirror_accounts`).
fn run_clustered(
    dir: &Path,
    cfg: &crate::config::Config,
    state: &dyn cluster::state::ClusterState,
    cmd: UserCmd,
) -> Result<()> {
    use cluster::state::AccountEntry;
    match cmd {
        UserCmd::Add {
            address,
            password_stdin,
        } => {
            let address = directory::normalize_address(&address);
            directory::validate_address(&address)?;
            let pw = read_password(password_stdin)?;
            let cluster = crate::cluster::load_config(dir, cfg)?;
            let (_, all) = state.accounts()?;
            if all.contains_key(&address) {
                bail!("cannot add {address}: it already exists");
            }
            // New accounts go to the slot holding the fewest.
            let slot = cluster
                .slots
                .keys()
                .min_by_key(|s| all.values().filter(|e| &e.slot == *s).count())
                .cloned()
                .context("cluster.toml has no slot to put the account in")?;
            let password = directory::hash_password(&pw)?;
            state.put_account(
                &address,
                &AccountEntry {
                    password,
                    slot: slot.clone(),
                },
            )?;
            // This host's copy now, the others within a moment.
            crate::follow::mirror_accounts(state, dir)?;
            println!("added {address} (slot {slot})");
        }
        UserCmd::List => {
            let (_, all) = state.accounts()?;
            if all.is_empty() {
                println!("no accounts");
            }
            for (address, e) in &all {
                println!("{address}  (slot {})", e.slot);
            }
        }
        UserCmd::Passwd {
            address,
            password_stdin,
        } => {
            let address = directory::normalize_address(&address);
            let pw = read_password(password_stdin)?;
            let Some(mut e) = state.account(&address)? else {
                bail!("cannot change the password of {address}: no such account");
            };
            e.password = directory::hash_password(&pw)?;
            state.put_account(&address, &e)?;
            crate::follow::mirror_accounts(state, dir)?;
            println!("password changed for {address}");
        }
        UserCmd::Del { address, purge } => {
            let address = directory::normalize_address(&address);
            let Some(e) = state.account(&address)? else {
                bail!("{address} does not exist");
            };
            // The data goes where the slot's master is: only that host may write it.
            let master = state
                .snapshot()?
                .slots
                .get(&e.slot)
                .map(|s| s.master.clone())
                .unwrap_or_default();
            if cfg.host.as_deref() != Some(master.as_str()) {
                bail!(
                    "{address} lives in slot {}, mastered by {}: run this on {} \
                     (tandem user del {address})",
                    e.slot,
                    if master.is_empty() {
                        "nobody yet"
                    } else {
                        &master
                    },
                    if master.is_empty() {
                        "its home host"
                    } else {
                        &master
                    }
                );
            }
            let req = admin::Request::UserDel {
                address: address.clone(),
                purge,
            };
            let reply = match admin::call(dir, &req)? {
                Some(r) => r,
                None => {
                    let slots = open_slots_offline(dir)?;
                    user_del(&Directory::new(dir), &slots, &address, purge)
                }
            };
            if !reply.ok {
                bail!("{}", reply.message);
            }
            state.del_account(&address)?;
            println!("{}", reply.message);
        }
    }
    Ok(())
}

pub(crate) fn open_slots_offline(dir: &Path) -> Result<Vec<Slot>> {
    let events = Arc::new(EventLog::new(
        &dir.join("events.jsonl"),
        Arc::new(SystemClock),
    ));
    let mut out = Vec::new();
    for name in slot_names(dir)? {
        let p = dir.join("slots").join(&name);
        out.push(
            Slot::open(&p, events.clone(), Arc::new(SystemClock))
                .with_context(|| format!("cannot open slot {name}"))?,
        );
    }
    Ok(out)
}

/// Deletes an account; shared by the CLI (server stopped) and the admin socket.
pub fn user_del(d: &Directory, slots: &[Slot], address: &str, purge: bool) -> admin::Reply {
    let fail = |m: String| admin::Reply {
        ok: false,
        message: m,
    };
    let accounts = match d.load() {
        Ok(a) => a,
        Err(e) => return fail(e.to_string()),
    };
    let Some(acct) = accounts.get(address).cloned() else {
        return fail(format!("{address} does not exist"));
    };
    if let Some(slot) = slots.iter().find(|s| s.name() == acct.slot) {
        let boxes = match slot.view().mailboxes(&acct.address) {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot read {address}'s mailboxes: {e}")),
        };
        let messages: u64 = boxes.iter().map(|m| u64::from(m.exists)).sum();
        if messages > 0 && !purge {
            return fail(format!(
                "{address} still has {messages} messages in {} mailboxes; add --purge to delete them too",
                boxes.len()
            ));
        }
        if let Err(e) = slot.execute(Op::PurgeUser {
            user: acct.address.clone(),
        }) {
            return fail(format!("cannot delete {address}'s data: {e}"));
        }
    }
    if let Err(e) = d.update(|a| {
        a.accounts.retain(|x| x.address != acct.address);
        Ok(())
    }) {
        return fail(format!("cannot update the directory: {e}"));
    }
    admin::Reply {
        ok: true,
        message: format!("deleted {address}"),
    }
}
