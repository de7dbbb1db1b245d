//! `tandem dkim ...`: DKIM keys per domain under `DIR/dkim/<domain>/<selector>.pem`
//! (PKCS#1 PEM, mode 0600, directory 0700), and loading them for the submission server.
//!
//! One key per domain: `init` on a domain that has a key prints that key's DNS record again
//! and changes nothing (safe to re-run half asleep); rotating keys is a later command.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use smtp::dkim::{DkimKey, DkimKeys};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Selector used when none is given.
pub const DEFAULT_SELECTOR: &str = "tandem";

#[derive(Subcommand)]
pub enum DkimCmd {
    /// Make a signing key for DOMAIN and print the DNS TXT record to publish.
    Init {
        domain: String,
        /// The DKIM selector (the record goes at SELECTOR._domainkey.DOMAIN).
        #[arg(long, default_value = DEFAULT_SELECTOR)]
        selector: String,
        /// Say what would be done without doing it.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Print the DNS record of every domain's key (or of DOMAIN's).
    Show { domain: Option<String> },
}

fn normalize_domain(d: &str) -> Result<String> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        bail!("{d:?} is not a domain name like example.com");
    }
    Ok(d)
}

fn root(dir: &Path) -> PathBuf {
    dir.join("dkim")
}

/// The key file of `domain`, if it has one: (selector, path).
fn existing(dir: &Path, domain: &str) -> Result<Option<(String, PathBuf)>> {
    let d = root(dir).join(domain);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
    };
    let mut keys: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".pem")
                .map(|sel| (sel.to_string(), e.path()))
        })
        .collect();
    keys.sort();
    Ok(keys.into_iter().next())
}

fn print_record(domain: &str, selector: &str, txt: &str) {
    println!("publish this TXT record for {domain}:");
    println!("  {selector}._domainkey.{domain}. IN TXT \"{txt}\"");
    println!("(long records: split the value into quoted strings of at most 255 characters)");
}

pub fn run(dir: &Path, cmd: DkimCmd) -> Result<()> {
    match cmd {
        DkimCmd::Init {
            domain,
            selector,
            dry_run,
        } => {
            let domain = normalize_domain(&domain)?;
            smtp::dkim::validate_selector(&selector)?;
            if let Some((sel, path)) = existing(dir, &domain)? {
                let pem =
                    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let txt = smtp::dkim::dns_txt_for_private_pem(&domain, &pem)?;
                println!("{domain} already has a key (selector {sel}); nothing changed");
                print_record(&domain, &sel, &txt);
                return Ok(());
            }
            let path = root(dir).join(&domain).join(format!("{selector}.pem"));
            if dry_run {
                println!(
                    "would make an RSA-{} key for {domain} in {} (dry run: nothing done)",
                    smtp::dkim::RSA_BITS,
                    path.display()
                );
                return Ok(());
            }
            let key = smtp::dkim::generate(&domain, &selector)?;
            write_key(&path, key.private_pem.as_bytes())?;
            println!(
                "made a key for {domain} (selector {selector}): {}",
                path.display()
            );
            print_record(&domain, &selector, &key.dns_txt);
            println!("the server signs mail from {domain} with it after a restart");
        }
        DkimCmd::Show { domain } => {
            let domains = match domain {
                Some(d) => vec![normalize_domain(&d)?],
                None => {
                    let mut v: Vec<String> = match fs::read_dir(root(dir)) {
                        Ok(rd) => rd
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    v.sort();
                    v
                }
            };
            if domains.is_empty() {
                println!("no DKIM keys; make one with: tandem dkim init example.com");
            }
            let mut missing = Vec::new();
            for d in domains {
                match existing(dir, &d)? {
                    Some((sel, path)) => {
                        let pem = fs::read(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        let txt = smtp::dkim::dns_txt_for_private_pem(&d, &pem)?;
                        print_record(&d, &sel, &txt);
                    }
                    None => missing.push(d),
                }
            }
            if !missing.is_empty() {
                bail!("no DKIM key for {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

fn write_key(path: &Path, pem: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("pem.tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(pem)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
    if let Some(parent) = path.parent() {
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Every domain's signer, for the submission server. A key that cannot be loaded stops
/// start-up with the file named: signing silently not happening would fail DMARC later.
pub fn load(dir: &Path) -> Result<DkimKeys> {
    let mut keys = DkimKeys::default();
    let rd = match fs::read_dir(root(dir)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root(dir).display())),
    };
    for e in rd.flatten() {
        let domain = e.file_name().to_string_lossy().into_owned();
        if let Some((sel, path)) = existing(dir, &domain)? {
            let pem = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let key = DkimKey::from_pem(&domain, &sel, &pem)
                .with_context(|| format!("DKIM key {}", path.display()))?;
            keys.insert(key);
        }
    }
    Ok(keys)
}
