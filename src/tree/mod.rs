//! The state tree: user keys (`/`-separated paths) mapped to [`Record`]s in
//! the storage engine under [`Key::Data`], and the deterministic execution of
//! a [`Txn`] against a [`TreeRead`] view.
//!
//! Execution is a pure function of (transaction, view contents, epoch
//! stamp): same inputs, same outcome and writes, on every replica. Storage
//! errors are returned as `Err` (non-deterministic: the caller stops the
//! replica); everything else is an outcome.
//!
//! What this module does not do: decide the order of transactions (the
//! sequencer), lock keys (the scheduler) or make writes durable (the state
//! machine writes the epoch's batch).

pub mod exec;
mod merge;
pub mod model;
mod record;

pub use exec::{execute, WriteSet};
pub use merge::Merged;
pub use model::*;
pub use record::{decode_record, decode_version, encode_record, encode_version};

use std::collections::BTreeMap;
use std::ops::Bound;

use arbor_storage::{Direction, ReadView};

use crate::error::Result;
use crate::keys::{self, Key};

/// A stream of `(user key, record)` in key order.
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Record)>> + Send + 'a>;

/// Read access to the tree as a transaction sees it.
pub trait TreeRead {
    fn get(&self, key: &[u8]) -> Result<Option<Record>>;
    /// Records with keys in `range`, in key order.
    fn scan(&self, range: &KeyRange) -> RecordIter<'_>;
}

/// The tree as stored in an engine (or an engine snapshot).
pub struct StoredTree<'a> {
    view: &'a dyn ReadView,
}

impl<'a> StoredTree<'a> {
    pub fn new(view: &'a dyn ReadView) -> Self {
        Self { view }
    }
}

fn data_bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(Key::Data(&range.start).encode());
    let end = if range.end.is_empty() {
        // Every data key: up to the end of the data tag.
        Bound::Excluded(arbor_storage::prefix_end(&keys::data_prefix()).expect("data tag < 0xff"))
    } else {
        Bound::Excluded(Key::Data(&range.end).encode())
    };
    (start, end)
}

impl TreeRead for StoredTree<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        match self.view.get(&Key::Data(key).encode())? {
            Some(bytes) => Ok(Some(decode_record(&bytes)?)),
            None => Ok(None),
        }
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        let (start, end) = data_bounds(range);
        Box::new(self.view.scan(start, end, Direction::Forward).map(|item| {
            let (k, v) = item?;
            let user = keys::decode_data(&k).map_err(|e| crate::Error::Corruption(e.to_string()))?;
            Ok((user.to_vec(), decode_record(&v)?))
        }))
    }
}

/// The tree as it was at HLC stamp `at`: for every key, its newest
/// [`Key::Version`] at or below `at` (a tombstone hides the key). Only
/// correct for stamps at or above the group's GC horizon, which the caller
/// checks.
pub struct VersionedTree<'a> {
    view: &'a dyn ReadView,
    at: u64,
}

impl<'a> VersionedTree<'a> {
    pub fn new(view: &'a dyn ReadView, at: u64) -> Self {
        Self { view, at }
    }
}

fn corrupt(e: arbor_storage::keycode::DecodeError) -> crate::Error {
    crate::Error::Corruption(e.to_string())
}

impl TreeRead for VersionedTree<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        let (lo, hi) = keys::versions_at_or_below(key, self.at);
        match self.view.scan(Bound::Included(lo), Bound::Excluded(hi), Direction::Forward).next() {
            Some(item) => decode_version(&item?.1),
            None => Ok(None),
        }
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        if !range.end.is_empty() && range.end <= range.start {
            return Box::new(std::iter::empty());
        }
        let (lo, hi) = keys::version_bounds(&range.start, &range.end);
        let at = self.at;
        // Versions come per key, newest first: keep the first one at or
        // below `at` of each key, skip the rest of that key.
        let mut done: Option<Vec<u8>> = None;
        Box::new(self.view.scan(Bound::Included(lo), Bound::Excluded(hi), Direction::Forward).filter_map(move |item| {
            let step = || -> Result<Option<(Vec<u8>, Record)>> {
                let (k, v) = item?;
                let (user, stamp, _) = keys::decode_version(&k).map_err(corrupt)?;
                if stamp > at || done.as_deref() == Some(user.as_slice()) {
                    return Ok(None);
                }
                let record = decode_version(&v)?;
                done = Some(user.clone());
                Ok(record.map(|r| (user, r)))
            };
            step().transpose()
        }))
    }
}

/// Pending writes over a base view: `None` marks a deletion.
pub type Overlay = BTreeMap<Vec<u8>, Option<Record>>;

/// A base view with an overlay of pending writes on top.
pub struct Layered<'a> {
    pub base: &'a dyn TreeRead,
    pub overlay: &'a Overlay,
}

impl TreeRead for Layered<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        match self.overlay.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        Box::new(Merged::new(self.base.scan(range), overlay_range(self.overlay, range)))
    }
}

/// The overlay entries within `range`.
pub fn overlay_range<'a>(
    overlay: &'a Overlay,
    range: &KeyRange,
) -> impl Iterator<Item = (Vec<u8>, Option<Record>)> + Send + 'a {
    let empty = !range.end.is_empty() && range.end <= range.start;
    let end = if range.end.is_empty() || empty { Bound::Unbounded } else { Bound::Excluded(range.end.clone()) };
    overlay
        .range((Bound::Included(range.start.clone()), end))
        .take_while(move |_| !empty)
        .map(|(k, v)| (k.clone(), v.clone()))
}

/// The vshard of a key: a stable FNV-1a hash, the same on every platform and
/// release (changing it would move keys between vshards on replay).
pub fn vshard_of(key: &[u8], vshards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % vshards as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vshard_hash_is_stable() {
        // Pinned values: a change here reshuffles stored data.
        assert_eq!(vshard_of(b"", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
        assert_eq!(vshard_of(b"/users/alice", 1), 0);
        let spread: std::collections::BTreeSet<u32> =
            (0..100).map(|i| vshard_of(format!("/k/{i}").as_bytes(), 8)).collect();
        assert_eq!(spread.len(), 8, "keys spread over every vshard");
    }
}
