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
pub use record::{decode_record, decode_version, encode_record, encode_version};

use std::collections::BTreeMap;
use std::ops::Bound;

use arbor_storage::{Cursor, ReadView};

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
/// for every key, its newest [`Key::Version`] at or below `at` (a tombstone
/// hides the key). The newest version of every live key is never
/// collected, so the latest tree is always whole; for older stamps it is
/// only correct at or above the group's GC horizon, which the caller checks.
pub struct VersionedTree<'a> {
    view: &'a dyn ReadView,
    at: u64,
}

/// Older versions a scan steps over with `next` before it seeks past the
/// rest of a key's versions: a seek costs a few steps, and most keys have
/// only a version or two.
const STEPS_BEFORE_SEEK: usize = 4;

impl<'a> VersionedTree<'a> {
    pub fn new(view: &'a dyn ReadView, at: u64) -> Self {
        Self { view, at }
    }

    /// The tree as the view holds it now: every key's newest version.
    pub fn latest(view: &'a dyn ReadView) -> Self {
        Self::new(view, u64::MAX)
    }
}

/// Moves `cursor` past the versions of the user key whose version prefix
/// is `prefix`.
fn skip_versions(cursor: &mut dyn Cursor, prefix: &[u8]) -> Result<()> {
    for _ in 0..STEPS_BEFORE_SEEK {
        match cursor.current() {
            Some((k, _)) if k.starts_with(prefix) => cursor.next()?,
            _ => return Ok(()),
        }
    }
    if cursor.current().is_some_and(|(k, _)| k.starts_with(prefix)) {
        cursor.seek(&arbor_storage::prefix_end(prefix).expect("a version prefix ends with its terminator"))?;
    }
    Ok(())
}

impl VersionedTree<'_> {
    /// The next key of the scan at or after the cursor, with its record at
    /// `self.at`; the cursor is left past that key's versions.
    fn next_record(&self, cursor: &mut dyn Cursor) -> Result<Option<(Vec<u8>, Record)>> {
        loop {
            let Some((k, v)) = cursor.current() else { return Ok(None) };
            let (user, stamp, _) = keys::decode_version(k)?;
            if stamp > self.at {
                // Newer than the read: on to the key's newest version at or
                // below it (or to the next key's, if it has none).
                cursor.seek(&Key::Version(&user, self.at, u64::MAX).encode())?;
                continue;
            }
            let record = decode_version(v)?;
            skip_versions(cursor, &keys::version_prefix(&user))?;
            if let Some(record) = record {
                return Ok(Some((user, record)));
            }
        }
    }
}

impl TreeRead for VersionedTree<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        let (lo, hi) = keys::versions_at_or_below(key, self.at);
        let mut cursor = self.view.cursor(lo.clone(), Some(hi));
        cursor.seek(&lo)?;
        match cursor.current() {
            Some((_, v)) => decode_version(v),
            None => Ok(None),
        }
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        if !range.end.is_empty() && range.end <= range.start {
            return Box::new(std::iter::empty());
        }
        let (lo, hi) = keys::version_bounds(&range.start, &range.end);
        let mut cursor = self.view.cursor(lo.clone(), Some(hi));
        let mut first = Some(lo);
        let mut failed = false;
        Box::new(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let step = (|| {
                if let Some(lo) = first.take() {
                    cursor.seek(&lo)?;
                }
                self.next_record(cursor.as_mut())
            })();
            failed = step.is_err();
            step.transpose()
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
    use arbor_storage::{Durability, Engine, Memory, WriteBatch};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A view whose cursors count their steps and seeks.
    struct Counting {
        inner: Memory,
        steps: AtomicUsize,
        seeks: AtomicUsize,
    }

    struct CountingCursor<'a> {
        inner: Box<dyn Cursor + 'a>,
        view: &'a Counting,
    }

    impl Cursor for CountingCursor<'_> {
        fn seek(&mut self, target: &[u8]) -> arbor_storage::Result<()> {
            self.view.seeks.fetch_add(1, Ordering::Relaxed);
            self.inner.seek(target)
        }
        fn next(&mut self) -> arbor_storage::Result<()> {
            self.view.steps.fetch_add(1, Ordering::Relaxed);
            self.inner.next()
        }
        fn current(&self) -> Option<(&[u8], &[u8])> {
            self.inner.current()
        }
    }

    impl ReadView for Counting {
        fn get(&self, key: &[u8]) -> arbor_storage::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            start: Bound<Vec<u8>>,
            end: Bound<Vec<u8>>,
            direction: arbor_storage::Direction,
        ) -> arbor_storage::ScanIter<'_> {
            self.inner.scan(start, end, direction)
        }
        fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
            Box::new(CountingCursor { inner: self.inner.cursor(start, end), view: self })
        }
    }

    fn rec(value: &str, stamp: u64) -> Record {
        Record { value: value.into(), version: 1, create_stamp: stamp, mod_stamp: stamp }
    }

    /// `/a` written at stamps 1..=50, `/b` at 10 and deleted at 20, `/c`
    /// written at 30, `/d` deleted at 5 (never written since the GC).
    fn versioned() -> Counting {
        let mut b = WriteBatch::new();
        let mut version = |key: &[u8], stamp: u64, record: Option<Record>| {
            b.put(Key::Version(key, stamp, 0).encode(), encode_version(record.as_ref()));
        };
        for stamp in 1..=50 {
            version(b"/a", stamp, Some(rec(&format!("a{stamp}"), stamp)));
        }
        version(b"/b", 10, Some(rec("b", 10)));
        version(b"/b", 20, None);
        version(b"/c", 30, Some(rec("c", 30)));
        version(b"/d", 5, None);
        let inner = Memory::new();
        inner.write(b, Durability::Sync).unwrap();
        Counting { inner, steps: AtomicUsize::new(0), seeks: AtomicUsize::new(0) }
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
        assert_eq!(latest.get(b"/a").unwrap().unwrap().value, b"a50");
        assert_eq!(latest.get(b"/b").unwrap(), None, "deleted");
        assert_eq!(latest.get(b"/d").unwrap(), None);
        assert_eq!(latest.get(b"/e").unwrap(), None, "never written");
        assert_eq!(latest.get(b"/").unwrap(), None, "a prefix of a written key");
        let at = |t| VersionedTree::new(&view, t);
        assert_eq!(scan_values(&at(15), "", ""), ["/a=a15", "/b=b"]);
        assert_eq!(scan_values(&at(25), "", ""), ["/a=a25"]);
        assert_eq!(scan_values(&at(0), "", ""), Vec::<String>::new());
        assert_eq!(scan_values(&at(30), "/b", ""), ["/c=c"]);
        assert_eq!(scan_values(&at(30), "/a", "/c"), ["/a=a30"], "the end is excluded");
        assert_eq!(scan_values(&at(30), "/c", "/a"), Vec::<String>::new(), "an empty range");
        assert_eq!(at(15).get(b"/b").unwrap().unwrap().value, b"b");
        assert_eq!(at(9).get(b"/b").unwrap(), None);
    }

    #[test]
    fn scans_seek_past_the_older_versions_of_a_key() {
        let view = versioned();
        assert_eq!(scan_values(&VersionedTree::latest(&view), "", ""), ["/a=a50", "/c=c"]);
        let (steps, seeks) = (view.steps.load(Ordering::Relaxed), view.seeks.load(Ordering::Relaxed));
        // 54 versions: stepping through them all would take 54 steps.
        assert!(steps <= 4 * STEPS_BEFORE_SEEK, "{steps} steps");
        assert_eq!(seeks, 2, "the first seek, then one past /a's older versions");
        view.steps.store(0, Ordering::Relaxed);
        view.seeks.store(0, Ordering::Relaxed);
        assert_eq!(scan_values(&VersionedTree::new(&view, 15), "", "/b"), ["/a=a15"]);
        let (steps, seeks) = (view.steps.load(Ordering::Relaxed), view.seeks.load(Ordering::Relaxed));
        assert!(steps <= STEPS_BEFORE_SEEK, "{steps} steps");
        assert_eq!(seeks, 3, "the first seek, one to /a's version at 15, one past the rest");
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
