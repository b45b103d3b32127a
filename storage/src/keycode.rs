//! Order-preserving encoding of composite keys: encoding two tuples gives
//! byte strings that compare like the tuples do, so a range of tuples is a
//! range of the keyspace.
//!
//! - `u8` / `u64`: fixed-width big-endian.
//! - byte strings: every `0x00` is escaped as `0x00 0xff` and the string ends
//!   with `0x00 0x00`, so no string is a prefix of another's encoding and
//!   order is kept. A *trailing* byte string may be written raw with
//!   [`Encoder::raw`] when it is the last component (then a prefix of it is a
//!   prefix of the key, which is what range scans want).

/// Builds an encoded key.
#[derive(Default, Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder whose buffer holds `bytes` without growing: a key is
    /// then one allocation instead of one per doubling.
    pub fn with_capacity(bytes: usize) -> Self {
        Self { buf: Vec::with_capacity(bytes) }
    }

    /// The encoded size of `v` as [`Encoder::bytes`] writes it when it holds
    /// no `0x00` (each one adds a byte).
    pub const fn bytes_len(v: &[u8]) -> usize {
        v.len() + 2
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(mut self, v: &[u8]) -> Self {
        // Copied a run at a time: keys rarely hold a 0x00.
        let mut rest = v;
        while let Some(zero) = rest.iter().position(|&b| b == 0) {
            self.buf.extend_from_slice(&rest[..=zero]);
            self.buf.push(0xff);
            rest = &rest[zero + 1..];
        }
        self.buf.extend_from_slice(rest);
        self.buf.extend_from_slice(&[0, 0]);
        self
    }

    /// Appends `v` unescaped; only valid as the last component.
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads an encoded key back.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

/// The key did not decode as expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed encoded key: {0}")]
pub struct DecodeError(pub &'static str);

impl<'a> Decoder<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        Self { rest: key }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.rest.split_first().ok_or(DecodeError("truncated u8"))?;
        self.rest = rest;
        Ok(b)
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        if self.rest.len() < 8 {
            return Err(DecodeError("truncated u64"));
        }
        let (head, rest) = self.rest.split_at(8);
        self.rest = rest;
        Ok(u64::from_be_bytes(head.try_into().expect("8 bytes")))
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (self.rest.get(i), self.rest.get(i + 1)) {
                (Some(0), Some(0)) => {
                    self.rest = &self.rest[i + 2..];
                    return Ok(out);
                }
                (Some(0), Some(0xff)) => {
                    out.push(0);
                    i += 2;
                }
                (Some(0), _) => return Err(DecodeError("bad escape in byte string")),
                (Some(&b), _) => {
                    out.push(b);
                    i += 1;
                }
                (None, _) => return Err(DecodeError("unterminated byte string")),
            }
        }
    }

    /// The unconsumed rest (a trailing raw component).
    pub fn raw(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(tag: u8, s: &[u8], n: u64) -> Vec<u8> {
        Encoder::new().u8(tag).bytes(s).u64(n).finish()
    }

    #[test]
    fn round_trips() {
        for s in [&b""[..], b"a", b"\x00", b"\x00\xff", b"a\x00b\x00\x00", b"\xff\xff"] {
            let key = enc(7, s, 42);
            let mut d = Decoder::new(&key);
            assert_eq!(d.u8().unwrap(), 7);
            assert_eq!(d.bytes().unwrap(), s);
            assert_eq!(d.u64().unwrap(), 42);
            d.finish().unwrap();
        }
    }

    #[test]
    fn preserves_tuple_order() {
        let strings: [&[u8]; 7] = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x01", b"a", b"a\x00"];
        let mut tuples = Vec::new();
        for s in strings {
            for n in [0, 1, 255, 256, u64::MAX] {
                tuples.push((s.to_vec(), n));
            }
        }
        let mut sorted = tuples.clone();
        sorted.sort();
        let mut by_key = tuples;
        by_key.sort_by_key(|(s, n)| enc(1, s, *n));
        assert_eq!(by_key, sorted);
    }

    #[test]
    fn rejects_malformed() {
        assert!(Decoder::new(b"ab").bytes().is_err());
        assert!(Decoder::new(b"a\x00\x01").bytes().is_err());
        assert!(Decoder::new(b"\x00\x00\x01").u64().is_err());
        let mut d = Decoder::new(b"\x01\x02");
        d.u8().unwrap();
        assert!(d.finish().is_err());
    }
}
