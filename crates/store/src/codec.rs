//! Record framing: every metadata value is `version(1) | body | crc32c(4, LE)` where the
//! CRC covers the record's *key* followed by `version | body`. Covering the key means a
//! value that lands under the wrong key (a misdirected write, a bug in a compaction) is
//! detected too, not only flipped bits. The CRC is computed right before the value is
//! handed to the KV engine and checked right after it is read back (TigerBeetle's
//! "assert on both sides of the boundary").
//!
//! Integers are little-endian fixed width; strings and byte strings are `len(u32) | bytes`.

use crate::error::StoreError;

pub const RECORD_VERSION: u8 = 1;
/// Largest string a record may hold: mailbox names, keywords and user names are far
/// smaller; this bounds what a corrupt length field can make us allocate.
const FIELD_BYTES_MAX: usize = 1 << 20;

pub fn crc(key: &[u8], value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), value)
}

#[derive(Default)]
pub struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    pub fn new() -> Enc {
        let mut buf = Vec::with_capacity(96);
        buf.push(RECORD_VERSION);
        Enc { buf }
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i16(mut self, v: i16) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }
    /// Seals the record for `key`: appends the CRC32C of key + value.
    pub fn seal(mut self, key: &[u8]) -> Vec<u8> {
        let c = crc(key, &self.buf);
        self.buf.extend_from_slice(&c.to_le_bytes());
        self.buf
    }
}

/// Reader over a verified record body.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    /// Verifies the CRC and version of `value` stored under `key`.
    pub fn open(key: &[u8], value: &'a [u8]) -> Result<Dec<'a>, StoreError> {
        if value.len() < 5 {
            return Err(StoreError::corrupt_record(
                key,
                "record shorter than its header",
            ));
        }
        let (body, tail) = value.split_at(value.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let actual = crc(key, body);
        if stored != actual {
            return Err(StoreError::corrupt_record(
                key,
                &format!("CRC32C mismatch (stored {stored:08x}, computed {actual:08x})"),
            ));
        }
        if body[0] != RECORD_VERSION {
            return Err(StoreError::corrupt_record(
                key,
                &format!("unknown record version {}", body[0]),
            ));
        }
        Ok(Dec { buf: body, pos: 1 })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() - self.pos < n {
            return Err(StoreError::Format("record body truncated".into()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(self.u64()? as i64)
    }
    pub fn i16(&mut self) -> Result<i16, StoreError> {
        Ok(self.u16()? as i16)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        if n > FIELD_BYTES_MAX {
            return Err(StoreError::Format(format!("field length {n} over limit")));
        }
        self.take(n)
    }
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| StoreError::Format("field is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_record_round_trips_and_detects_every_single_bit_flip() {
        let key = b"k\x00\x01";
        let v = Enc::new().u32(7).str("INBOX").u64(99).seal(key);
        let mut d = Dec::open(key, &v).unwrap();
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.string().unwrap(), "INBOX");
        assert_eq!(d.u64().unwrap(), 99);
        for i in 0..v.len() * 8 {
            let mut bad = v.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                Dec::open(key, &bad).is_err(),
                "flip of bit {i} not detected"
            );
        }
        assert!(
            Dec::open(b"other", &v).is_err(),
            "record under wrong key accepted"
        );
    }
}
