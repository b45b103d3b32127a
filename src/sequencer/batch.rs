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
//! configured threshold and zstd saves at least an eighth of it (random
//! values do not compress: then the leader sends them as they are and no
//! replica pays for decompressing). A batch that did not compress makes the
//! leader skip the attempt for the next [`SKIP_AFTER_MISS`] batches
//! ([`Compression`]). Each thread keeps its zstd contexts.
//! Decoding checks the version and flags and fails on anything it does not
//! know (a replica never guesses).

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tree::Txn;

pub const FORMAT_V1: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;
/// A frame claiming more than this much content is refused rather than
/// allocated (an epoch is bounded by `epoch.max_bytes_per_epoch`, at most a
/// few MiB).
const MAX_DECOMPRESSED: u64 = 1 << 30;
/// Batches sent without trying zstd after one it could not shrink: trying
/// cost a put workload's leader ~2% of its CPU (docs/BENCHMARKS.md).
pub const SKIP_AFTER_MISS: u32 = 15;

/// The leader's choice of whether to try zstd on its next batch: batches of
/// at least `threshold` bytes, except for the [`SKIP_AFTER_MISS`] after one
/// that did not compress. Only the sender's cost depends on it: replicas
/// decode what the flags say.
#[derive(Clone, Debug)]
pub struct Compression {
    threshold: usize,
    skip: u32,
}

impl Compression {
    pub fn new(threshold: usize) -> Self {
        Self { threshold, skip: 0 }
    }

    /// Compresses `body` if worth trying and worth it.
    fn apply(&mut self, body: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        if body.len() < self.threshold {
            return Ok(None);
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(None);
        }
        let packed = compress(body)?;
        if packed.len() <= body.len() - body.len() / 8 {
            Ok(Some(packed))
        } else {
            self.skip = SKIP_AFTER_MISS;
            Ok(None)
        }
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `body` compressed with this thread's context (the frame records the
/// content size).
fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        c.as_mut().expect("just set").compress(body)
    })
}

fn decompress(frame: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= MAX_DECOMPRESSED => size as usize,
        Ok(Some(size)) => return Err(format!("frame claims {size} bytes")),
        // Frames without a content size are not written; decode them anyway.
        Ok(None) => return zstd::stream::decode_all(frame).map_err(|e| e.to_string()),
        Err(e) => return Err(format!("not a zstd frame: {e:?}")),
    };
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let out = d.as_mut().expect("just set").decompress(frame, size).map_err(|e| e.to_string())?;
        if out.len() != size {
            return Err(format!("frame claims {size} bytes but holds {}", out.len()));
        }
        Ok(out)
    })
}

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
    pub fn encode(&self, compression: &mut Compression) -> Result<EpochPayload> {
        let body = rmp_serde::to_vec(self).map_err(|e| Error::Fatal(format!("encode epoch batch: {e}")))?;
        let packed = compression.apply(&body).map_err(|e| Error::Fatal(format!("zstd: {e}")))?;
        let (flags, body) = match packed {
            Some(packed) => (FLAG_ZSTD, packed),
            None => (0, body),
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
                    FLAG_ZSTD => std::borrow::Cow::Owned(decompress(body).map_err(|e| corrupt(format!("zstd: {e}")))?),
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
                success: vec![Op::Put {
                    key: format!("/k/{i}").into_bytes(),
                    value: vec![b'v'; 100].into(),
                    prev_kv: false,
                }],
                failure: vec![],
            })
            .collect();
        EpochBatch { epoch: 9, stamp: 1234, txns, gc_before: 1000 }
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let small = batch(1);
        let enc = small.encode(&mut Compression::new(4096)).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, 0]);
        assert_eq!(EpochBatch::decode(&enc).unwrap(), small);
        let big = batch(100);
        let enc = big.encode(&mut Compression::new(4096)).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, FLAG_ZSTD]);
        assert!(enc.0.len() < 4096, "repetitive batches compress");
        assert_eq!(EpochBatch::decode(&enc).unwrap(), big);
    }

    #[test]
    fn incompressible_batches_go_plain() {
        // Pseudo-random values (xorshift), large enough next to each op's
        // framing that zstd cannot save an eighth.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut b = batch(40);
        for t in &mut b.txns {
            if let Op::Put { value, .. } = &mut t.success[0] {
                let random = (0..400).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                });
                *value = random.collect();
            }
        }
        let mut compression = Compression::new(4096);
        let enc = b.encode(&mut compression).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, 0], "sent uncompressed");
        assert_eq!(EpochBatch::decode(&enc).unwrap(), b);

        // After the miss, the next batches are not even tried...
        let big = batch(100);
        for _ in 0..SKIP_AFTER_MISS {
            let enc = big.encode(&mut compression).unwrap();
            assert_eq!(enc.0[..2], [FORMAT_V1, 0], "not tried");
            assert_eq!(EpochBatch::decode(&enc).unwrap(), big);
        }
        // ...and then one is, and compresses.
        let enc = big.encode(&mut compression).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, FLAG_ZSTD]);
        let enc = big.encode(&mut compression).unwrap();
        assert_eq!(enc.0[..2], [FORMAT_V1, FLAG_ZSTD], "a batch that compressed does not stop the next try");
    }

    #[test]
    fn a_frame_claiming_a_huge_size_is_refused_before_allocating() {
        let mut frame = zstd::bulk::compress(&[0u8; 64], 1).unwrap();
        // Rewrite the header: single segment, 8-byte content size of 2^40.
        frame.truncate(4);
        frame.extend_from_slice(&[0xe0]);
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut payload = vec![FORMAT_V1, FLAG_ZSTD];
        payload.extend_from_slice(&frame);
        let err = EpochBatch::decode(&EpochPayload(payload)).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
    }

    #[test]
    fn rejects_unknown_versions_flags_and_garbage() {
        assert!(EpochBatch::decode(&EpochPayload(vec![])).is_err());
        assert!(EpochBatch::decode(&EpochPayload(vec![2, 0])).is_err());
        assert!(EpochBatch::decode(&EpochPayload(vec![1, 4, 0])).is_err());
        let mut enc = batch(3).encode(&mut Compression::new(1 << 20)).unwrap();
        enc.0.truncate(enc.0.len() - 5);
        assert!(matches!(EpochBatch::decode(&enc), Err(Error::Corruption(_))));
    }
}
