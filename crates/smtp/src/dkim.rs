//! DKIM signing for submitted mail (RFC 6376, rsa-sha256, relaxed/relaxed) and key
//! generation for `tandem dkim init`.
//!
//! Keys are RSA 2048 (the size every verifier accepts; Ed25519 is not yet verified by the
//! large mailbox providers). Signing uses ring (constant-time); the `rsa` crate is used only
//! to *generate* keys, which ring cannot do. The private key travels as PKCS#1 PEM; the DNS
//! record carries the public key as SubjectPublicKeyInfo, the form OpenSSL-based verifiers
//! (OpenDKIM, most providers) parse.
//!
//! This module never reads files: the wiring loads the PEM and hands it over.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, generate::DkimKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use thiserror::Error;

/// Header fields signed when present. From is required by RFC 6376; the rest are the ones
/// whose change would change what the reader sees or how replies thread.
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// RSA modulus size of generated keys.
pub const RSA_BITS: usize = 2048;

#[derive(Debug, Error)]
pub enum DkimError {
    #[error("the DKIM key for {domain} is not a usable RSA private key: {why}")]
    BadKey { domain: String, why: String },
    #[error("cannot generate a DKIM key: {0}")]
    Generate(String),
    #[error("cannot sign for {domain}: {why}")]
    Sign { domain: String, why: String },
    #[error("{0:?} is not a valid DKIM selector (letters, digits, '-', '.', 1 to 63 characters)")]
    BadSelector(String),
}

/// One domain's signer.
pub struct DkimKey {
    domain: String,
    selector: String,
    signer: DkimSigner<RsaKey<Sha256>, Done>,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

pub fn validate_selector(s: &str) -> Result<(), DkimError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(DkimError::BadSelector(s.to_string()))
    }
}

impl DkimKey {
    /// From a PEM private key (PKCS#1 or PKCS#8).
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, DkimError> {
        validate_selector(selector)?;
        let bad = |why: String| DkimError::BadKey {
            domain: domain.to_string(),
            why,
        };
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(e.to_string()))?;
        let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(e.to_string()))?;
        let signer = DkimSigner::from_key(key)
            .domain(domain.to_ascii_lowercase())
            .selector(selector)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Self {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            signer,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The `DKIM-Signature:` header (CRLF-terminated) for `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        self.signer
            .sign(message)
            .map(|sig| sig.to_header())
            .map_err(|e| DkimError::Sign {
                domain: self.domain.clone(),
                why: e.to_string(),
            })
    }
}

/// The signers of every domain that has a key.
#[derive(Debug, Default)]
pub struct DkimKeys {
    by_domain: HashMap<String, DkimKey>,
}

impl DkimKeys {
    pub fn insert(&mut self, key: DkimKey) {
        self.by_domain.insert(key.domain.clone(), key);
    }

    pub fn get(&self, domain: &str) -> Option<&DkimKey> {
        self.by_domain.get(&domain.to_ascii_lowercase())
    }

    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// A freshly generated key and the DNS record that publishes it.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// PKCS#1 PEM; keep it private (mode 0600).
    pub private_pem: String,
    /// `selector._domainkey.domain`
    pub dns_name: String,
    /// The TXT value: `v=DKIM1; k=rsa; p=...`
    pub dns_txt: String,
}

/// Generates an RSA-2048 key for `domain`/`selector`. Takes about a second of CPU.
pub fn generate(domain: &str, selector: &str) -> Result<GeneratedKey, DkimError> {
    validate_selector(selector)?;
    let pair =
        DkimKeyPair::generate_rsa(RSA_BITS).map_err(|e| DkimError::Generate(e.to_string()))?;
    let (private, public) = pair.into_inner();
    Ok(GeneratedKey {
        private_pem: pem("RSA PRIVATE KEY", &private),
        dns_name: format!("{selector}._domainkey.{}", domain.to_ascii_lowercase()),
        dns_txt: dns_txt_for_pkcs1(&public),
    })
}

/// `v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>` for a PKCS#1 RSAPublicKey.
pub fn dns_txt_for_pkcs1(pkcs1_public: &[u8]) -> String {
    format!(
        "v=DKIM1; k=rsa; p={}",
        STANDARD.encode(spki_from_pkcs1(pkcs1_public))
    )
}

/// The DNS record of an existing private key (for `tandem dkim show`).
pub fn dns_txt_for_private_pem(domain: &str, pem_bytes: &[u8]) -> Result<String, DkimError> {
    use rustls::pki_types::PrivatePkcs1KeyDer;
    let bad = |why: String| DkimError::BadKey {
        domain: domain.to_string(),
        why,
    };
    let der = PrivatePkcs1KeyDer::from_pem_slice(pem_bytes).map_err(|e| bad(e.to_string()))?;
    let pair = ring_rsa_public(der.secret_pkcs1_der()).map_err(bad)?;
    Ok(dns_txt_for_pkcs1(&pair))
}

/// The PKCS#1 RSAPublicKey inside a PKCS#1 RSAPrivateKey: `SEQUENCE { version, n, e, ... }`
/// → `SEQUENCE { n, e }`. A minimal DER walk (the key was written by us or by OpenSSL).
fn ring_rsa_public(private: &[u8]) -> Result<Vec<u8>, String> {
    let (seq, _) = der_tlv(private, 0x30).ok_or("not a DER SEQUENCE")?;
    let (_, rest) = der_tlv(seq, 0x02).ok_or("missing version")?;
    let (n, rest) = der_tlv(rest, 0x02).ok_or("missing modulus")?;
    let (e, _) = der_tlv(rest, 0x02).ok_or("missing exponent")?;
    let mut body = der_header(0x02, n.len());
    body.extend_from_slice(n);
    body.extend(der_header(0x02, e.len()));
    body.extend_from_slice(e);
    let mut out = der_header(0x30, body.len());
    out.extend(body);
    Ok(out)
}

/// Reads one TLV of the expected tag; returns (value, rest).
fn der_tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((b.get(hdr..end)?, b.get(end..)?))
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out
}

/// SubjectPublicKeyInfo { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING { key } }.
fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = der_header(0x03, pkcs1.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(pkcs1);
    let mut body = RSA_ALG.to_vec();
    body.extend(bits);
    let mut out = der_header(0x30, body.len());
    out.extend(body);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_validated() {
        assert!(validate_selector("tandem").is_ok());
        assert!(validate_selector("s2026-01").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(validate_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_header(0x30, 5), vec![0x30, 5]);
        assert_eq!(der_header(0x30, 0x80), vec![0x30, 0x81, 0x80]);
        assert_eq!(der_header(0x30, 0x1234), vec![0x30, 0x82, 0x12, 0x34]);
        let enc = {
            let mut v = der_header(0x04, 300);
            v.extend(vec![7u8; 300]);
            v.push(9);
            v
        };
        let (val, rest) = der_tlv(&enc, 0x04).unwrap();
        assert_eq!(val.len(), 300);
        assert_eq!(rest, &[9]);
        assert!(der_tlv(&enc, 0x30).is_none());
        assert!(der_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1], 0x04).is_none());
    }
}
