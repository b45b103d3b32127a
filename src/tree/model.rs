//! The transaction model: what a client can ask for, as it travels in the
//! Raft log (serde, MessagePack) and as the executor returns it.
//!
//! Keys and values are encoded as MessagePack `bin` (`serde_bytes`), not as
//! arrays of integers: one copy instead of a marker per byte. Entries written
//! before that (arrays) still decode: `serde_bytes` accepts both, and so
//! does `Bytes` (values, which records and puts share instead of copying).
//!
//! Transactions are one-shot (Calvin style): every key they may touch is
//! known from the request, so the sequencer can route and lock them before
//! execution.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A key's stored state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Shared, not copied, when a record is cloned: the executors' cache,
    /// the epoch's overlays and the answers all hold the same bytes.
    pub value: Bytes,
    /// 1 on creation, +1 on every modification; a delete removes the record.
    pub version: u64,
    /// HLC stamp of the epoch that created the key.
    pub create_stamp: u64,
    /// HLC stamp of the epoch that last modified the key.
    pub mod_stamp: u64,
}

/// A key with its record, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub record: Record,
}

/// `[start, end)` over user keys; an empty `end` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self { start: prefix.to_vec(), end: arbor_storage::prefix_end(prefix).unwrap_or_default() }
    }
}

/// A range read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub range: KeyRange,
    /// Maximum number of results (keys plus folded prefixes); never 0 here:
    /// the API fills in the server's maximum.
    pub limit: u32,
    /// When set, keys with this byte after `range.start` are folded into one
    /// common prefix (a directory listing). Only valid with a prefix range.
    pub delimiter: Option<u8>,
    pub keys_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpTarget {
    /// The value, compared bytewise. A missing key fails every value compare.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The version; a missing key has version 0.
    Version(u64),
    /// Existence; only `Equal` / `NotEqual`.
    Exists(bool),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CmpOp,
    pub target: CmpTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Range(RangeSpec),
    /// `prev_kv`: the result carries the replaced record (an entry logged
    /// before the flag existed reads as `true`).
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Becomes the record's value without a copy.
        value: Bytes,
        #[serde(default = "returned_prev_before_the_flag")]
        prev_kv: bool,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    DeleteRange(KeyRange),
    /// Adds `delta` to a signed 64-bit counter stored as decimal text.
    Increment {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    /// Concatenates bytes to the value (a missing key starts empty).
    Append {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        #[serde(default = "returned_prev_before_the_flag")]
        prev_kv: bool,
    },
}

/// Puts and appends logged before `prev_kv` existed always returned the
/// replaced record; replaying such an entry must give the same outcome
/// (it is stored in the dedup record), so a missing flag reads as `true`.
fn returned_prev_before_the_flag() -> bool {
    true
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
/// A plain Put is a transaction with one success op and no compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Idempotency key; empty = none.
    pub request_id: String,
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Get(Option<KeyValue>),
    Range { kvs: Vec<KeyValue>, common_prefixes: Vec<Vec<u8>>, more: bool },
    Put { prev: Option<KeyValue>, version: u64 },
    Delete { deleted: u64 },
    DeleteRange { deleted: u64 },
    Increment { value: i64, version: u64 },
    Append { prev: Option<KeyValue>, version: u64 },
}

/// The deterministic outcome of a transaction: the same on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// It ran; `succeeded` says which branch.
    Done { succeeded: bool, results: Vec<OpResult> },
    /// An op failed deterministically (e.g. increment of a non-integer);
    /// nothing of the transaction was applied.
    Aborted { reason: String },
    /// The epoch was refused as a whole before execution (e.g. the leader
    /// changed while proposing it); nothing was applied, retrying is safe.
    Retry { reason: String },
}

/// Where a transaction reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Footprint<'a> {
    Key(&'a [u8]),
    Range(&'a KeyRange),
}

impl Op {
    pub fn footprint(&self) -> Footprint<'_> {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Increment { key, .. }
            | Op::Append { key, .. } => Footprint::Key(key),
            Op::Range(spec) => Footprint::Range(&spec.range),
            Op::DeleteRange(range) => Footprint::Range(range),
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::Range(_))
    }
}

impl Txn {
    /// Every key and range the transaction may touch, in either branch.
    pub fn footprint(&self) -> impl Iterator<Item = Footprint<'_>> {
        self.compares
            .iter()
            .map(|c| Footprint::Key(&c.key))
            .chain(self.success.iter().chain(&self.failure).map(Op::footprint))
    }

    pub fn is_read_only(&self) -> bool {
        !self.success.iter().chain(&self.failure).any(Op::is_write)
    }

    /// An approximation of the encoded size, for epoch byte limits.
    pub fn approx_bytes(&self) -> usize {
        fn op_bytes(op: &Op) -> usize {
            match op {
                Op::Get { key } | Op::Delete { key } | Op::Increment { key, .. } => key.len() + 16,
                Op::Put { key, value, .. } => key.len() + value.len() + 16,
                Op::Append { key, value, .. } => key.len() + value.len() + 16,
                Op::Range(s) => s.range.start.len() + s.range.end.len() + 16,
                Op::DeleteRange(r) => r.start.len() + r.end.len() + 16,
            }
        }
        let cmp: usize = self
            .compares
            .iter()
            .map(|c| c.key.len() + if let CmpTarget::Value(v) = &c.target { v.len() } else { 8 } + 8)
            .sum();
        self.request_id.len() + cmp + self.success.iter().chain(&self.failure).map(op_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding before keys and values became `bin`: plain `Vec<u8>`.
    #[derive(Serialize)]
    enum OldOp {
        #[allow(dead_code)]
        Get {
            key: Vec<u8>,
        },
        #[allow(dead_code)]
        Range(()),
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
        },
    }

    #[test]
    fn keys_and_values_are_bin_and_old_arrays_still_decode() {
        let value: Vec<u8> = (0..=255).collect();
        // Entries older than `prev_kv` decode with it set, as they behaved.
        let put = Op::Put { key: b"/k".to_vec(), value: value.clone().into(), prev_kv: true };
        let new = rmp_serde::to_vec(&put).unwrap();
        assert!(new.len() < value.len() + 16, "bin encoding: {} bytes for a 256-byte value", new.len());
        let old = rmp_serde::to_vec(&OldOp::Put { key: b"/k".to_vec(), value: value.clone() }).unwrap();
        assert!(old.len() > value.len() + 100, "the old encoding spent a marker per byte");
        assert_eq!(rmp_serde::from_slice::<Op>(&old).unwrap(), put);
        assert_eq!(rmp_serde::from_slice::<Op>(&new).unwrap(), put);
        let record = Record { value: value.into(), version: 2, create_stamp: 3, mod_stamp: 4 };
        // A `Vec<u8>` serializes as an array of integers: the old encoding.
        let old = rmp_serde::to_vec(&(record.value.to_vec(), 2u64, 3u64, 4u64)).unwrap();
        assert_eq!(rmp_serde::from_slice::<Record>(&old).unwrap(), record);
    }

    /// The encoding before `prev_kv`: keys and values as `bin`, no flag.
    #[derive(Serialize)]
    enum BeforePrevKv {
        #[allow(dead_code)]
        Get(()),
        #[allow(dead_code)]
        Range(()),
        Put {
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
        },
        #[allow(dead_code)]
        Delete(()),
        #[allow(dead_code)]
        DeleteRange(()),
        #[allow(dead_code)]
        Increment(()),
        Append {
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
        },
    }

    #[test]
    fn puts_and_appends_logged_before_prev_kv_still_return_prev() {
        let (key, value) = (b"/k".to_vec(), b"v".to_vec());
        let old = rmp_serde::to_vec(&BeforePrevKv::Put { key: key.clone(), value: value.clone() }).unwrap();
        let put = Op::Put { key: key.clone(), value: value.clone().into(), prev_kv: true };
        assert_eq!(rmp_serde::from_slice::<Op>(&old).unwrap(), put);
        let old = rmp_serde::to_vec(&BeforePrevKv::Append { key: key.clone(), value: value.clone() }).unwrap();
        let append = Op::Append { key: key.clone(), value: value.clone(), prev_kv: true };
        assert_eq!(rmp_serde::from_slice::<Op>(&old).unwrap(), append);
        for prev_kv in [false, true] {
            let put = Op::Put { key: key.clone(), value: value.clone().into(), prev_kv };
            assert_eq!(rmp_serde::from_slice::<Op>(&rmp_serde::to_vec(&put).unwrap()).unwrap(), put);
        }
    }
}
