//! The `SLOT` header file: identifies a slot copy and carries its fencing epoch.
//!
//! Format (all integers little-endian):
//! ```text
//! offset size field
//! 0      8    magic "TNDMSLOT"
//! 8      4    format version (1)
//! 12     8    epoch
//! 20     4    length of slot name (n)
//! 24     n    slot name, UTF-8
//! 24+n   4    length of copy id (m)
//! 28+n   m    copy id, UTF-8 (the host that holds this copy)
//! 28+n+m 4    CRC32C of every preceding byte
//! ```
//! Written to `SLOT.tmp`, fsynced, renamed over `SLOT`, directory fsynced: a crash leaves
//! either the old or the new header, never a torn one. Any mismatch at open refuses to
//! serve the copy (DESIGN invariant 8).

use crate::error::StoreError;
use crate::types::Epoch;
use std::fs;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"TNDMSLOT";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHeader {
    pub slot: String,
    pub copy_id: String,
    pub epoch: Epoch,
}

impl SlotHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.epoch.0.to_le_bytes());
        b.extend_from_slice(&(self.slot.len() as u32).to_le_bytes());
        b.extend_from_slice(self.slot.as_bytes());
        b.extend_from_slice(&(self.copy_id.len() as u32).to_le_bytes());
        b.extend_from_slice(self.copy_id.as_bytes());
        let c = crc32c::crc32c(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    pub fn decode(path: &Path, b: &[u8]) -> Result<SlotHeader, StoreError> {
        let bad = |detail: &str| StoreError::CorruptHeader {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        };
        if b.len() < 32 || b.len() > 4096 {
            return Err(bad("header has an impossible length"));
        }
        let (body, tail) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32c::crc32c(body) != stored {
            return Err(bad("CRC32C mismatch"));
        }
        if &body[..8] != MAGIC {
            return Err(bad("not a Tandem slot header (bad magic)"));
        }
        let u32_at = |o: usize| -> Result<u32, StoreError> {
            body.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or_else(|| bad("truncated"))
        };
        let version = u32_at(8)?;
        if version != VERSION {
            return Err(bad(&format!("unsupported format version {version}")));
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&body[12..20]);
        let n = u32_at(20)? as usize;
        let slot = body.get(24..24 + n).ok_or_else(|| bad("truncated"))?;
        let m = u32_at(24 + n)? as usize;
        let copy = body
            .get(28 + n..28 + n + m)
            .ok_or_else(|| bad("truncated"))?;
        if 28 + n + m != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(SlotHeader {
            slot: String::from_utf8(slot.to_vec()).map_err(|_| bad("slot name not UTF-8"))?,
            copy_id: String::from_utf8(copy.to_vec()).map_err(|_| bad("copy id not UTF-8"))?,
            epoch: Epoch(u64::from_le_bytes(e)),
        })
    }

    pub fn read(dir: &Path) -> Result<SlotHeader, StoreError> {
        let path = dir.join("SLOT");
        let b = fs::read(&path).map_err(|e| StoreError::CorruptHeader {
            path: path.clone(),
            detail: format!("cannot read: {e}"),
        })?;
        SlotHeader::decode(&path, &b)
    }

    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let tmp = dir.join("SLOT.tmp");
        let path = dir.join("SLOT");
        let mut f = fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(&self.encode())
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        crate::blob::fsync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_any_flip() {
        let h = SlotHeader {
            slot: "s1".into(),
            copy_id: "host-a".into(),
            epoch: Epoch(3),
        };
        let b = h.encode();
        let p = Path::new("SLOT");
        assert_eq!(SlotHeader::decode(p, &b).unwrap(), h);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            assert!(SlotHeader::decode(p, &bad).is_err(), "flip at {i}");
        }
    }
}
