//! Message blobs: immutable files named by the BLAKE3 of their content.
//!
//! Layout: `<slot>/blobs/<first two hex digits>/<64 hex digits>`; temporary files in
//! `<slot>/blobs/tmp/`. Write protocol (DESIGN invariant 1):
//!   1. write the bytes to `tmp/<hash>.<unique>`, fsync the file;
//!   2. rename it to its final name (atomic on POSIX);
//!   3. fsync the final directory — done by the slot writer once per directory per group
//!      commit, *before* the metadata that references the blob is committed.
//!
//! Recovery: a crash leaves at most stray files in `tmp/` (removed at open) and blobs no
//! record references (orphans, collected by audit once older than its grace period; a
//! delivery that reuses an existing blob refreshes its mtime first, see `gc_lock`). A record never references a blob
//! whose directory entry was not fsynced first.
//!
//! Reads re-hash the whole content and compare with the name; a mismatch is
//! `StoreError::CorruptBlob` and the bytes are never returned.

use crate::error::StoreError;
use crate::types::BlobHash;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct BlobStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
    /// Orders orphan collection against deliveries that reuse an existing blob: `put`
    /// refreshes the file's mtime under the shared side, collection re-checks the mtime
    /// and unlinks under the exclusive side. So a blob a delivery is about to reference
    /// is always younger than the grace period when collection looks at it.
    gc_lock: RwLock<()>,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        // Leftovers of writes that never got renamed: nothing references them.
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            tmp_seq: AtomicU64::new(0),
            gc_lock: RwLock::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    pub fn exists(&self, hash: &BlobHash) -> bool {
        self.path(hash).exists()
    }

    /// Writes `bytes` durably except for the directory fsync. Returns the hash and the
    /// directory that must be fsynced before any record may reference the blob.
    pub fn put(&self, bytes: &[u8]) -> Result<(BlobHash, PathBuf), StoreError> {
        let hash = BlobHash::of(bytes);
        let path = self.path(&hash);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        {
            let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
            if let Ok(meta) = fs::metadata(&path)
                && meta.len() == bytes.len() as u64
                && touch(&path).is_ok()
            {
                // Content-addressed: the same bytes are already here (COPY, re-delivery).
                // Its directory may still be awaiting fsync from a concurrent writer, so
                // the caller syncs it again; that is cheap. The touch above makes it young
                // again, so orphan collection leaves it alone until the record commits.
                return Ok((hash, dir));
            }
        }
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp =
            self.root
                .join("tmp")
                .join(format!("{}.{}.{}", hash.to_hex(), std::process::id(), seq));
        let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        Ok((hash, dir))
    }

    /// Reads and verifies a blob. Corrupt or missing content is an error, never data.
    pub fn get(&self, hash: &BlobHash) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::CorruptBlob {
                    hash: hash.to_hex(),
                    detail: "blob file is missing".into(),
                });
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let actual = BlobHash::of(&bytes);
        if actual != *hash {
            return Err(StoreError::CorruptBlob {
                hash: hash.to_hex(),
                detail: format!("content hashes to {}", actual.to_hex()),
            });
        }
        Ok(bytes)
    }
}

impl BlobStore {
    /// Removes the blob `hash` if its file is still older than `older_than` (seconds since
    /// the Unix epoch, by mtime). Returns whether it was removed. The caller has checked
    /// that no record references it; the mtime re-check under the exclusive lock closes
    /// the race with a delivery reusing the file (see `gc_lock`).
    pub(crate) fn remove_orphan(
        &self,
        hash: &BlobHash,
        older_than: i64,
    ) -> Result<bool, StoreError> {
        let path = self.path(hash);
        let _excl = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if mtime_secs(&meta) >= older_than {
            return Ok(false);
        }
        fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(true)
    }

    /// Moves a blob file (corrupt, or not a blob at all) into `quarantine` under a name
    /// that never overwrites earlier evidence. Returns the new path.
    pub(crate) fn quarantine(&self, file: &Path, quarantine: &Path) -> Result<PathBuf, StoreError> {
        fs::create_dir_all(quarantine).map_err(|e| StoreError::io(quarantine, e))?;
        let base = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut target = quarantine.join(format!("{base}.{stamp}"));
        let mut n = 1;
        while target.exists() {
            target = quarantine.join(format!("{base}.{stamp}.{n}"));
            n += 1;
        }
        let _excl = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        fs::rename(file, &target).map_err(|e| StoreError::io(file, e))?;
        fsync_dir(quarantine)?;
        if let Some(parent) = file.parent() {
            fsync_dir(parent)?;
        }
        Ok(target)
    }
}

/// Modification time in seconds since the Unix epoch (0 if the platform cannot say).
pub(crate) fn mtime_secs(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn touch(path: &Path) -> std::io::Result<()> {
    File::options()
        .write(true)
        .open(path)?
        .set_modified(std::time::SystemTime::now())
}

pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn flipped_byte_in_blob_is_an_error_not_data() {
        let d = tempdir();
        let bs = BlobStore::open(&d).unwrap();
        let (h, dir) = bs.put(b"hello world").unwrap();
        fsync_dir(&dir).unwrap();
        assert_eq!(bs.get(&h).unwrap(), b"hello world");
        let p = bs.path(&h);
        let mut bytes = fs::read(&p).unwrap();
        bytes[3] ^= 0x20;
        fs::write(&p, bytes).unwrap();
        assert!(matches!(bs.get(&h), Err(StoreError::CorruptBlob { .. })));
        fs::remove_file(&p).unwrap();
        assert!(matches!(bs.get(&h), Err(StoreError::CorruptBlob { .. })));
    }

    pub(crate) fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tandem-blob-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&p).unwrap();
        p
    }
}
