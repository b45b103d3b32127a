//! The stored encoding of a [`Record`]: a format byte, then version,
//! create stamp and modify stamp as big-endian `u64`s, then the value.
//!
//! A version (a record or a tombstone) is stored with the position of the
//! write that made it, the epoch's stamp and the transaction's position in
//! the epoch, both big-endian `u64`s, then `0` for a tombstone or `1` and
//! the record. A key's current version leads to the one before it: the
//! `History` key of the same position holds it.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::tree::Record;

const FORMAT_V1: u8 = 1;
const HEADER: usize = 1 + 8 * 3;

pub fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + r.value.len());
    write_record(r, &mut out);
    out
}

fn write_record(r: &Record, out: &mut Vec<u8>) {
    out.push(FORMAT_V1);
    out.extend_from_slice(&r.version.to_be_bytes());
    out.extend_from_slice(&r.create_stamp.to_be_bytes());
    out.extend_from_slice(&r.mod_stamp.to_be_bytes());
    out.extend_from_slice(&r.value);
}

pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    if bytes.len() < HEADER || bytes[0] != FORMAT_V1 {
        return Err(Error::Corruption(format!("bad record encoding ({} bytes)", bytes.len())));
    }
    let u = |i: usize| u64::from_be_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
    Ok(Record { version: u(0), create_stamp: u(1), mod_stamp: u(2), value: Bytes::copy_from_slice(&bytes[HEADER..]) })
}

/// A stored version: `0` for a deletion (tombstone), else `1` and the
/// record's encoding.
pub fn encode_version(r: Option<&Record>) -> Vec<u8> {
    match r {
        None => vec![0],
        Some(r) => {
            // One allocation: every write of every epoch comes through here.
            let mut out = Vec::with_capacity(1 + HEADER + r.value.len());
            out.push(1);
            write_record(r, &mut out);
            out
        }
    }
}

pub fn decode_version(bytes: &[u8]) -> Result<Option<Record>> {
    match bytes.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, record)) => decode_record(record).map(Some),
        _ => Err(Error::Corruption(format!("bad version encoding ({} bytes)", bytes.len()))),
    }
}

/// Bytes of a stored version before its record.
const POSITION: usize = 16;

/// A version as stored: the write that made it, transaction `pos` of the
/// epoch stamped `stamp`, and its record (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    pub stamp: u64,
    pub pos: u64,
    pub record: Option<Record>,
}

impl StoredVersion {
    pub fn encode(&self) -> Vec<u8> {
        encode_stored(self.stamp, self.pos, self.record.as_ref())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (stamp, pos) = stored_position(bytes)?;
        Ok(Self { stamp, pos, record: stored_record(bytes)? })
    }

    /// Bytes of its value, if a record.
    pub fn value_len(&self) -> usize {
        self.record.as_ref().map_or(0, |r| r.value.len())
    }
}

/// A stored version: the record `r` (`None`: a tombstone) written by
/// transaction `pos` of the epoch stamped `stamp`.
pub fn encode_stored(stamp: u64, pos: u64, r: Option<&Record>) -> Vec<u8> {
    let len = r.map_or(1, |r| 2 + HEADER + r.value.len());
    // One allocation: every write of every epoch comes through here.
    let mut out = Vec::with_capacity(POSITION + len);
    out.extend_from_slice(&stamp.to_be_bytes());
    out.extend_from_slice(&pos.to_be_bytes());
    match r {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            write_record(r, &mut out);
        }
    }
    out
}

/// The stored version of a version encoded without its position (as older
/// data dirs stored them, under keys that carried the position).
pub fn stored_from_version(stamp: u64, pos: u64, version: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(POSITION + version.len());
    out.extend_from_slice(&stamp.to_be_bytes());
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(version);
    out
}

/// `(stamp, pos)` of a stored version.
pub fn stored_position(bytes: &[u8]) -> Result<(u64, u64)> {
    if bytes.len() <= POSITION {
        return Err(Error::Corruption(format!("bad stored version ({} bytes)", bytes.len())));
    }
    let u = |i: usize| u64::from_be_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    Ok((u(0), u(1)))
}

/// The record of a stored version (`None`: a tombstone).
pub fn stored_record(bytes: &[u8]) -> Result<Option<Record>> {
    stored_position(bytes)?;
    decode_version(&bytes[POSITION..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip() {
        let r = Record { value: b"v".to_vec().into(), version: 3, create_stamp: 10, mod_stamp: 20 };
        assert_eq!(decode_version(&encode_version(Some(&r))).unwrap(), Some(r));
        assert_eq!(decode_version(&encode_version(None)).unwrap(), None);
        assert!(decode_version(&[0, 1]).is_err());
        assert!(decode_version(&[]).is_err());
    }

    #[test]
    fn stored_versions_round_trip_with_their_position() {
        let r = Record { value: b"v".to_vec().into(), version: 3, create_stamp: 10, mod_stamp: 20 };
        let stored = encode_stored(20, 7, Some(&r));
        assert_eq!(stored_position(&stored).unwrap(), (20, 7));
        assert_eq!(stored_record(&stored).unwrap(), Some(r.clone()));
        assert_eq!(stored, stored_from_version(20, 7, &encode_version(Some(&r))));
        let version = StoredVersion { stamp: 20, pos: 7, record: Some(r) };
        assert_eq!(StoredVersion::decode(&stored).unwrap(), version);
        assert_eq!(version.encode(), stored);
        let tombstone = encode_stored(u64::MAX, 0, None);
        assert_eq!(stored_position(&tombstone).unwrap(), (u64::MAX, 0));
        assert_eq!(stored_record(&tombstone).unwrap(), None);
        assert!(stored_position(&tombstone[..16]).is_err(), "no version after the position");
        assert!(stored_record(&[0; 3]).is_err());
    }

    #[test]
    fn round_trip_and_reject_garbage() {
        let r = Record { value: b"v".to_vec().into(), version: 3, create_stamp: 10, mod_stamp: 20 };
        assert_eq!(decode_record(&encode_record(&r)).unwrap(), r);
        assert!(decode_record(b"\x01short").is_err());
        let mut bad = encode_record(&r);
        bad[0] = 9;
        assert!(decode_record(&bad).is_err());
    }
}
