//! The embedded account directory: which accounts exist, their argon2id password hashes,
//! and the slot that holds each one's data. (With several hosts this moves to the cluster
//! state; the interface stays.)
//!
//! File `DIR/directory`, replaced atomically (write `directory.tmp`, fsync, rename, fsync
//! the directory) under an exclusive lock on `directory.lock`, so `tandem user add` run
//! while the server is up is safe. Format:
//! ```text
//! TANDEM-DIRECTORY 1 crc32c=<8 hex digits of the CRC32C of the JSON body>\n
//! {"accounts":[{"address":"alice@example.com","password":"$argon2id$...","slot":"s1"}]}
//! ```
//! Readers re-read the file when its modification time or length changes.

use crate::error::StoreError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const MAGIC: &str = "TANDEM-DIRECTORY 1 crc32c=";
/// Bound on the directory file we will read into memory.
const DIRECTORY_BYTES_MAX: u64 = 1 << 30;
pub const PASSWORD_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    pub address: String,
    pub password: String,
    pub slot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Accounts {
    pub accounts: Vec<Account>,
}

impl Accounts {
    pub fn get(&self, address: &str) -> Option<&Account> {
        let a = normalize_address(address);
        self.accounts.iter().find(|x| x.address == a)
    }
}

/// Addresses compare case-insensitively everywhere in Tandem.
pub fn normalize_address(a: &str) -> String {
    a.trim().to_lowercase()
}

pub fn validate_address(a: &str) -> Result<(), StoreError> {
    let ok = a.len() <= 254
        && a.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && !d.is_empty()
                && !d.starts_with('.')
                && !d.ends_with('.')
                && d.contains('.') | (d == "localhost")
        })
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Refused(format!(
            "{a:?} is not a valid address (expected local@domain.tld)"
        )))
    }
}

/// Why a SASL PLAIN response is unusable (each protocol words its own answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainError {
    /// The client sent `*`.
    Cancelled,
    NotBase64,
    /// Not `authzid NUL authcid NUL password`.
    Malformed,
    /// The user name is not UTF-8.
    BadName,
    /// An authorisation identity other than the user: nobody may act as someone else.
    OtherIdentity,
}

/// A SASL PLAIN (RFC 4616) client response as it comes off the wire — base64 of
/// `[authzid] NUL authcid NUL password`, `=` for empty, `*` to cancel — decoded into the
/// user name and password. The one decoder of IMAP, POP3 and the frontends.
pub fn sasl_plain(response: &[u8]) -> Result<(String, Vec<u8>), PlainError> {
    use base64::Engine as _;
    if response == b"*" {
        return Err(PlainError::Cancelled);
    }
    let decoded = if response == b"=" {
        Vec::new()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(response)
            .map_err(|_| PlainError::NotBase64)?
    };
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    let authc = std::str::from_utf8(authc).map_err(|_| PlainError::BadName)?;
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc.as_bytes()) {
        return Err(PlainError::OtherIdentity);
    }
    Ok((authc.to_string(), pass.to_vec()))
}

pub fn hash_password(password: &[u8]) -> Result<String, StoreError> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(StoreError::Refused(format!(
            "password must be 1 to {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    let salt = SaltString::generate(&mut rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Refused(format!("cannot hash password: {e}")))
}

/// Constant-time verification of `password` against a stored argon2id hash.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password, &h)
            .is_ok(),
        Err(_) => false,
    }
}

type Cached = Option<((SystemTime, u64), Arc<Accounts>)>;

pub struct Directory {
    path: PathBuf,
    cache: Mutex<Cached>,
}

impl Directory {
    pub fn new(data_dir: &Path) -> Directory {
        Directory {
            path: data_dir.join("directory"),
            cache: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current accounts (re-read when the file changed).
    pub fn load(&self) -> Result<Arc<Accounts>, StoreError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(m) => (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Arc::new(Accounts::default()));
            }
            Err(e) => return Err(StoreError::io(&self.path, e)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, a)) = cache.as_ref()
            && *s == stamp
        {
            return Ok(a.clone());
        }
        let a = Arc::new(read_file(&self.path)?);
        *cache = Some((stamp, a.clone()));
        Ok(a)
    }

    /// Read-modify-write under the directory lock.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Accounts) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let lock_path = dir.join("directory.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        lock.lock().map_err(|e| StoreError::io(&lock_path, e))?;
        let mut accounts = match fs::metadata(&self.path) {
            Ok(_) => read_file(&self.path)?,
            Err(_) => Accounts::default(),
        };
        let out = f(&mut accounts)?;
        let body = serde_json::to_vec(&accounts).map_err(|e| StoreError::Format(e.to_string()))?;
        let mut data = format!("{MAGIC}{:08x}\n", crc32c::crc32c(&body)).into_bytes();
        data.extend_from_slice(&body);
        data.push(b'\n');
        let tmp = dir.join("directory.tmp");
        let mut file = fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        file.write_all(&data)
            .and_then(|_| file.sync_all())
            .map_err(|e| StoreError::io(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| StoreError::io(&self.path, e))?;
        crate::blob::fsync_dir(dir)?;
        drop(lock);
        Ok(out)
    }
}

/// Failed-login throttling per account and per client IP. After `FAILURES_FREE` failures
/// within `WINDOW`, each further attempt must wait a delay that doubles per failure (capped
/// at `DELAY_MAX`); a success clears the account's count. Memory is bounded: at most
/// `TRACKED_MAX` keys are kept, oldest evicted first.
pub struct AuthLimiter {
    state: Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

const FAILURES_FREE: u32 = 3;
const WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(300);
const TRACKED_MAX: usize = 100_000;

/// The outcome of checking credentials.
#[derive(Debug)]
pub enum AuthOutcome {
    Ok(Account),
    /// Wrong user or password (never says which).
    Failed,
    /// Too many recent failures for this account or address; try again after the delay.
    Throttled(std::time::Duration),
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter {
            state: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl AuthLimiter {
    fn delay_for(&self, key: &str) -> Option<std::time::Duration> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (n, last) = st.get(key)?;
        if *n < FAILURES_FREE || last.elapsed() > WINDOW {
            return None;
        }
        let exp = (*n - FAILURES_FREE).min(16);
        let delay = std::time::Duration::from_secs(1u64 << exp).min(DELAY_MAX);
        let since = last.elapsed();
        (since < delay).then(|| delay - since)
    }

    fn fail(&self, key: String) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.len() >= TRACKED_MAX {
            st.retain(|_, (_, t)| t.elapsed() < WINDOW);
            if st.len() >= TRACKED_MAX {
                st.clear();
            }
        }
        let e = st.entry(key).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() > WINDOW {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = std::time::Instant::now();
    }

    fn clear(&self, key: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Checks `address`/`password` from `ip` against the directory. CPU-heavy (argon2):
    /// call it from a blocking thread.
    pub fn authenticate(
        &self,
        dir: &Directory,
        address: &str,
        password: &[u8],
        ip: std::net::IpAddr,
    ) -> Result<AuthOutcome, StoreError> {
        let user_key = format!("u:{}", normalize_address(address));
        let ip_key = format!("i:{ip}");
        if let Some(d) = self
            .delay_for(&user_key)
            .or_else(|| self.delay_for(&ip_key))
        {
            return Ok(AuthOutcome::Throttled(d));
        }
        let accounts = dir.load()?;
        let ok = match accounts.get(address) {
            Some(acct) if verify_password(&acct.password, password) => Some(acct.clone()),
            Some(_) => None,
            None => {
                // Spend the same time as a real check so timing does not reveal which
                // accounts exist.
                let _ = verify_password(DUMMY_HASH, password);
                None
            }
        };
        match ok {
            Some(acct) => {
                self.clear(&user_key);
                Ok(AuthOutcome::Ok(acct))
            }
            None => {
                self.fail(user_key);
                self.fail(ip_key);
                Ok(AuthOutcome::Failed)
            }
        }
    }
}

const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0r1oIhN4gpTKlNnKzIUd3XuUXGmTqpWHU2w9z6mkCPs";

fn read_file(path: &Path) -> Result<Accounts, StoreError> {
    let bad = |d: &str| StoreError::CorruptHeader {
        path: path.to_path_buf(),
        detail: d.to_string(),
    };
    let meta = fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
    if meta.len() > DIRECTORY_BYTES_MAX {
        return Err(bad("directory file is larger than 1 GiB"));
    }
    let data = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("missing header line"))?;
    let head = std::str::from_utf8(&data[..nl]).map_err(|_| bad("header is not UTF-8"))?;
    let crc_hex = head.strip_prefix(MAGIC).ok_or_else(|| bad("bad magic"))?;
    let stored = u32::from_str_radix(crc_hex, 16).map_err(|_| bad("bad CRC field"))?;
    let body = data[nl + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&data[nl + 1..]);
    if crc32c::crc32c(body) != stored {
        return Err(bad("CRC32C mismatch: the directory file is damaged"));
    }
    serde_json::from_slice(body).map_err(|e| bad(&format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_round_trips_and_detects_damage() {
        let d = crate::blob::tests::tempdir();
        let dir = Directory::new(&d);
        let h = hash_password(b"secret").unwrap();
        assert!(verify_password(&h, b"secret"));
        assert!(!verify_password(&h, b"Secret"));
        dir.update(|a| {
            a.accounts.push(Account {
                address: "alice@example.com".into(),
                password: h.clone(),
                slot: "s1".into(),
            });
            Ok(())
        })
        .unwrap();
        assert!(dir.load().unwrap().get("Alice@Example.com").is_some());
        let mut bytes = fs::read(dir.path()).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        fs::write(dir.path(), bytes).unwrap();
        assert!(Directory::new(&d).load().is_err());
    }
}
