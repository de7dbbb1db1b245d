//! The cluster CA and host certificates: every replication connection is TLS with both
//! ends proving they hold a certificate signed by the cluster CA and naming the host they
//! claim to be (`tandem cluster ca init`, `tandem cluster cert issue HOST`).
//!
//! Files (PEM), by default under `DIR/cluster/`:
//! ```text
//! ca.pem            the CA certificate: copy to every host
//! ca-key.pem        the CA private key (0600): keep on the host that issues certificates
//! HOST.pem          HOST's certificate (DNS name HOST; server and client auth)
//! HOST-key.pem      HOST's private key (0600): copy to HOST only
//! ```
//! The CA certificate is rebuilt from its key to sign (same subject, same key, so the same
//! issuer as far as any verifier is concerned): no certificate parser is needed.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

const CA_COMMON_NAME: &str = "Tandem cluster CA";
const CA_YEARS: i32 = 30;
const HOST_YEARS: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; remove it first if you really mean to replace the cluster CA")]
    Exists(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
}

/// Where the CA lives in a directory.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

/// Where a host's certificate and key live in a directory.
pub fn host_paths(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}-key.pem")),
    )
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let y = this_year();
    // A day's slack each way for clocks that disagree; validity is not ordering.
    p.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(y + CA_YEARS, 1, 1);
    Ok(p)
}

/// Creates the cluster CA in `dir`. Refuses to overwrite an existing one.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    let (cert, key) = ca_paths(dir);
    for p in [&cert, &key] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let kp = KeyPair::generate()?;
    let ca = ca_params()?.self_signed(&kp)?;
    create_dir(dir)?;
    write_file(&key, kp.serialize_pem().as_bytes(), true)?;
    write_file(&cert, ca.pem().as_bytes(), false)?;
    Ok((cert, key))
}

/// Issues a certificate for `host` signed by the CA in `ca_dir`, written to `out_dir`.
/// Re-issuing replaces the host's previous certificate and key.
pub fn issue(ca_dir: &Path, host: &str, out_dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
    let (_, ca_key_path) = ca_paths(ca_dir);
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|source| PkiError::Read {
        path: ca_key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca = ca_params()?.self_signed(&ca_key)?;
    let mut p = CertificateParams::new(vec![host.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let y = this_year();
    p.not_before = rcgen::date_time_ymd(y - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(y + HOST_YEARS, 1, 1);
    let kp = KeyPair::generate()?;
    let cert = p.signed_by(&kp, &ca, &ca_key)?;
    create_dir(out_dir)?;
    let (cert_path, key_path) = host_paths(out_dir, host);
    write_file(&key_path, kp.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((cert_path, key_path))
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes via a temp file and rename, so a crash never leaves half a key; private keys
/// are created 0600.
fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
