//! The `EpochBatch`: one epoch of transactions, one Raft log entry.
//!
//! Wire format (version 1), the bytes of [`EpochPayload`]:
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      flags: bit 0 = payload is zstd-compressed
//! bytes 2..   MessagePack (rmp-serde, positional) of EpochBatch
//!             { epoch: u64, stamp: u64, txns: [Txn], gc_before: u64 }
//! ```
//!
//! The payload is compressed when its uncompressed size reaches the
//! configured threshold. Decoding checks the version and flags and fails on
//! anything it does not know (a replica never guesses).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tree::Txn;

pub const FORMAT_V1: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;

/// One epoch: transactions in their execution order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBatch {
    /// Strictly increasing within a group's log (gaps are allowed after a
    /// leader change).
    pub epoch: u64,
    /// The proposing leader's HLC stamp.
    pub stamp: u64,
    pub txns: Vec<Txn>,
    /// Versions older than this stamp may be collected (the leader's stamp
    /// minus the version retention; the applied horizon never moves back).
    #[serde(default)]
    pub gc_before: u64,
}

/// The encoded batch, as stored in the log and sent to followers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochPayload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Display for EpochPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochPayload({} bytes)", self.0.len())
    }
}

impl EpochBatch {
    pub fn encode(&self, compress_threshold: usize) -> Result<EpochPayload> {
        let body = rmp_serde::to_vec(self).map_err(|e| Error::Fatal(format!("encode epoch batch: {e}")))?;
        let (flags, body) = if body.len() >= compress_threshold {
            let packed = zstd::bulk::compress(&body, ZSTD_LEVEL).map_err(|e| Error::Fatal(format!("zstd: {e}")))?;
            (FLAG_ZSTD, packed)
        } else {
            (0, body)
        };
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&[FORMAT_V1, flags]);
        out.extend_from_slice(&body);
        Ok(EpochPayload(out))
    }

    pub fn decode(payload: &EpochPayload) -> Result<Self> {
        let bytes = &payload.0;
        let corrupt = |what: String| Error::Corruption(format!("epoch batch: {what}"));
        match bytes.as_slice() {
            [FORMAT_V1, flags, body @ ..] => {
                let body = match *flags {
                    0 => std::borrow::Cow::Borrowed(body),
                    FLAG_ZSTD => std::borrow::Cow::Owned(
                        zstd::stream::decode_all(body).map_err(|e| corrupt(format!("zstd: {e}")))?,
                    ),
                    other => return Err(corrupt(format!("unknown flags {other:#x}"))),
                };
                rmp_serde::from_slice(&body).map_err(|e| corrupt(e.to_string()))
            }
            [version, ..] => Err(corrupt(format!("unknown format version {version}"))),
            [] => Err(corrupt("empty payload".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Op;

    fn batch(n: usize) -> EpochBatch {
        let txns = (0..n)
            .map(|i| Txn {
                request_id: format!("r{i}"),
                compares: vec![],
                success: vec![Op::Put { key: format!("/k/{i}").into_bytes(), value: vec![b'v'; 100] }],
                failure: vec![],
            })
            .collect();
        EpochBatch { epoch: 9, stamp: 1234, txns, gc_before: 1000 }
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let small = batch(1);
        let enc = small.encode(4096).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, 0]);
        assert_eq!(EpochBatch::decode(&enc).unwrap(), small);
        let big = batch(100);
        let enc = big.encode(4096).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, FLAG_ZSTD]);
        assert!(enc.0.len() < 4096, "repetitive batches compress");
        assert_eq!(EpochBatch::decode(&enc).unwrap(), big);
    }

    #[test]
    fn rejects_unknown_versions_flags_and_garbage() {
        assert!(EpochBatch::decode(&EpochPayload(vec![])).is_err());
        assert!(EpochBatch::decode(&EpochPayload(vec![2, 0])).is_err());
        assert!(EpochBatch::decode(&EpochPayload(vec![1, 4, 0])).is_err());
        let mut enc = batch(3).encode(1 << 20).unwrap();
        enc.0.truncate(enc.0.len() - 5);
        assert!(matches!(EpochBatch::decode(&enc), Err(Error::Corruption(_))));
    }
}
