//! The state tree: user keys (`/`-separated paths) mapped to [`Record`]s,
//! stored as versions ([`Key::Version`]: the newest one is the current
//! record), and the deterministic execution of a [`Txn`] against a
//! [`TreeRead`] view.
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
pub mod legacy;
mod merge;
pub mod model;
mod record;

pub use exec::{execute, WriteSet};
pub use merge::Merged;
pub use model::*;
pub use record::{
    decode_record, decode_version, encode_record, encode_stored, encode_version, stored_from_version, stored_position,
    stored_record, StoredVersion,
};

use std::collections::BTreeMap;
use std::ops::Bound;

use arbor_storage::{Direction, ReadView, WriteBatch};

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

/// The tree as it was at HLC stamp `at` (or as it is: [`VersionedTree::latest`]):
/// for every key, its newest version at or below `at` (a tombstone hides the
/// key). That is the key's `Current` version if it is old enough, else the
/// first one old enough along its chain of superseded versions in the
/// group's history. A current version is never collected, so the latest
/// tree is always whole; for older stamps it is only correct at or above
/// the group's GC horizon, which the caller checks.
pub struct VersionedTree<'a> {
    view: &'a dyn ReadView,
    group: u64,
    at: u64,
}

impl<'a> VersionedTree<'a> {
    /// `group`'s tree at stamp `at`.
    pub fn new(view: &'a dyn ReadView, group: u64, at: u64) -> Self {
        Self { view, group, at }
    }

    /// The tree as the view holds it now: every key's current version (of
    /// whichever group).
    pub fn latest(view: &'a dyn ReadView) -> Self {
        Self::new(view, 0, u64::MAX)
    }

    /// The current version of `key` (`None`: the key was never written, or
    /// its tombstone was collected).
    pub fn current(&self, key: &[u8]) -> Result<Option<StoredVersion>> {
        self.view.get(&Key::Current(key).encode())?.map(|stored| StoredVersion::decode(&stored)).transpose()
    }

    /// The record of `key` at `self.at`, starting from its stored version
    /// `stored` and going back through the versions each one superseded.
    fn record_at(&self, key: &[u8], mut stored: Vec<u8>) -> Result<Option<Record>> {
        loop {
            let (stamp, pos) = stored_position(&stored)?;
            if stamp <= self.at {
                return stored_record(&stored);
            }
            match self.view.get(&Key::History(self.group, stamp, pos, key).encode())? {
                Some(older) => stored = older,
                // Created after `at`.
                None => return Ok(None),
            }
        }
    }
}

impl TreeRead for VersionedTree<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        match self.view.get(&Key::Current(key).encode())? {
            Some(stored) => self.record_at(key, stored),
            None => Ok(None),
        }
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        if !range.end.is_empty() && range.end <= range.start {
            return Box::new(std::iter::empty());
        }
        let (lo, hi) = keys::current_bounds(&range.start, &range.end);
        let mut items = self.view.scan(Bound::Included(lo), Bound::Excluded(hi), Direction::Forward);
        let mut failed = false;
        Box::new(std::iter::from_fn(move || {
            while !failed {
                let step = items.next()?.map_err(Into::into).and_then(|(k, stored)| {
                    let user = keys::decode_current(&k)?.to_vec();
                    Ok(self.record_at(&user, stored)?.map(|record| (user, record)))
                });
                failed = step.is_err();
                if let Some(found) = step.transpose() {
                    return Some(found);
                }
            }
            None
        }))
    }
}

/// Puts into `wb` the versions an epoch stamped `stamp` makes with
/// `changes` (position in the epoch, key, record or `None` for a deletion;
/// in commit order): each key's newest one under its `Current` key, and each
/// version a write superseded under the `History` key of that write, in
/// `group`'s history. `before` gives a key's current version before the
/// epoch. Returns the epoch's last version of each key, in key order.
pub fn put_versions<'k>(
    group: u64,
    stamp: u64,
    changes: impl IntoIterator<Item = (u64, &'k [u8], Option<&'k Record>)>,
    mut before: impl FnMut(&[u8]) -> Result<Option<StoredVersion>>,
    wb: &mut WriteBatch,
) -> Result<Vec<(&'k [u8], StoredVersion)>> {
    // By key, each key's writes in commit order (the sort is stable).
    let mut changes: Vec<_> = changes.into_iter().collect();
    changes.sort_by_key(|&(_, key, _)| key);
    let mut newest = Vec::new();
    for writes in changes.chunk_by(|a, b| a.1 == b.1) {
        let key = writes[0].1;
        let mut previous = before(key)?.map(|v| v.encode());
        for &(pos, _, record) in writes {
            if let Some(previous) = previous {
                wb.put(Key::History(group, stamp, pos, key).encode(), previous);
            }
            previous = Some(encode_stored(stamp, pos, record));
        }
        let (pos, _, record) = writes[writes.len() - 1];
        wb.put(Key::Current(key).encode(), previous.expect("a key has a write"));
        newest.push((key, StoredVersion { stamp, pos, record: record.cloned() }));
    }
    Ok(newest)
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
    use arbor_storage::{Durability, Engine, Memory};
    use bytes::Bytes;

    fn rec(value: &str, stamp: u64) -> Record {
        Record { value: Bytes::copy_from_slice(value.as_bytes()), version: 1, create_stamp: stamp, mod_stamp: stamp }
    }

    /// Writes one epoch of group 1 into `engine` as the state machine does;
    /// returns the keys it left deleted.
    fn epoch(engine: &Memory, stamp: u64, changes: &[(&[u8], Option<Record>)]) -> Vec<Vec<u8>> {
        let mut wb = WriteBatch::new();
        let changes = changes.iter().enumerate().map(|(pos, (k, r))| (pos as u64, *k, r.as_ref()));
        let versions = put_versions(1, stamp, changes, |k| VersionedTree::latest(engine).current(k), &mut wb).unwrap();
        let deleted = versions.into_iter().filter(|(_, v)| v.record.is_none()).map(|(k, _)| k.to_vec()).collect();
        engine.write(wb, Durability::Sync).unwrap();
        deleted
    }

    /// `/a` written at stamps 1..=50, `/b` at 10 and deleted at 20, `/c`
    /// written at 30, `/d` deleted at 5 (never written before).
    fn versioned() -> Memory {
        let engine = Memory::new();
        for stamp in 1..=50 {
            let mut changes: Vec<(&[u8], Option<Record>)> = vec![(b"/a", Some(rec(&format!("a{stamp}"), stamp)))];
            match stamp {
                5 => changes.push((b"/d", None)),
                10 => changes.push((b"/b", Some(rec("b", 10)))),
                20 => changes.push((b"/b", None)),
                30 => changes.push((b"/c", Some(rec("c", 30)))),
                _ => {}
            }
            epoch(&engine, stamp, &changes);
        }
        engine
    }

    fn scan_values(tree: &VersionedTree, start: &str, end: &str) -> Vec<String> {
        let range = KeyRange { start: start.into(), end: end.into() };
        let items = tree.scan(&range).collect::<Result<Vec<_>>>().unwrap();
        items
            .into_iter()
            .map(|(k, r)| format!("{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&r.value)))
            .collect()
    }

    #[test]
    fn the_newest_version_at_or_below_a_stamp_is_the_record() {
        let view = versioned();
        let latest = VersionedTree::latest(&view);
        assert_eq!(scan_values(&latest, "", ""), ["/a=a50", "/c=c"]);
        assert_eq!(latest.get(b"/a").unwrap().unwrap().value, &b"a50"[..]);
        assert_eq!(latest.get(b"/b").unwrap(), None, "deleted");
        assert_eq!(latest.get(b"/d").unwrap(), None);
        assert_eq!(latest.get(b"/e").unwrap(), None, "never written");
        assert_eq!(latest.get(b"/").unwrap(), None, "a prefix of a written key");
        let at = |t| VersionedTree::new(&view, 1, t);
        assert_eq!(scan_values(&at(15), "", ""), ["/a=a15", "/b=b"]);
        assert_eq!(scan_values(&at(25), "", ""), ["/a=a25"]);
        assert_eq!(scan_values(&at(0), "", ""), Vec::<String>::new());
        assert_eq!(scan_values(&at(30), "/b", ""), ["/c=c"]);
        assert_eq!(scan_values(&at(30), "/a", "/c"), ["/a=a30"], "the end is excluded");
        assert_eq!(scan_values(&at(30), "/c", "/a"), Vec::<String>::new(), "an empty range");
        assert_eq!(at(15).get(b"/b").unwrap().unwrap().value, &b"b"[..]);
        assert_eq!(at(9).get(b"/b").unwrap(), None);
        assert_eq!(VersionedTree::new(&view, 2, 15).get(b"/a").unwrap(), None, "another group's history");
    }

    #[test]
    fn the_latest_tree_reads_current_versions_only() {
        let view = versioned();
        view.write(
            {
                let mut wb = WriteBatch::new();
                wb.delete_range(keys::history_prefix(1), keys::history_prefix(2));
                wb
            },
            Durability::Sync,
        )
        .unwrap();
        assert_eq!(scan_values(&VersionedTree::latest(&view), "", ""), ["/a=a50", "/c=c"]);
        assert_eq!(VersionedTree::new(&view, 1, 40).get(b"/c").unwrap().unwrap().value, &b"c"[..], "current since 30");
        assert_eq!(VersionedTree::new(&view, 1, 40).get(b"/a").unwrap(), None, "its history is gone");
    }

    #[test]
    fn writes_of_one_key_in_one_epoch_chain_through_their_positions() {
        let view = versioned();
        let changes: [(&[u8], Option<Record>); 4] = [
            (b"/a", Some(rec("first", 60))),
            (b"/c", None),
            (b"/a", Some(rec("second", 60))),
            (b"/c", Some(rec("back", 60))),
        ];
        assert_eq!(epoch(&view, 60, &changes), Vec::<Vec<u8>>::new(), "/c was written again");
        let history = |pos| view.get(&Key::History(1, 60, pos, b"/a").encode()).unwrap().unwrap();
        assert_eq!(stored_position(&history(0)).unwrap(), (50, 0));
        assert_eq!(stored_position(&history(2)).unwrap(), (60, 0));
        assert_eq!(stored_record(&history(2)).unwrap().unwrap().value, &b"first"[..]);
        assert_eq!(VersionedTree::latest(&view).get(b"/a").unwrap().unwrap().value, &b"second"[..]);
        assert_eq!(VersionedTree::new(&view, 1, 59).get(b"/a").unwrap().unwrap().value, &b"a50"[..]);
        let changes: [(&[u8], Option<Record>); 2] = [(b"/c", Some(rec("again", 61))), (b"/c", None)];
        assert_eq!(epoch(&view, 61, &changes), [b"/c".to_vec()], "left deleted");
        assert_eq!(VersionedTree::new(&view, 1, 60).get(b"/c").unwrap().unwrap().value, &b"back"[..]);
    }

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
