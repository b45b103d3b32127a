//! The [`Engine`] trait: the whole surface the rest of Arbor uses to store
//! bytes. Keys are ordered bytewise; a [`WriteBatch`] is applied atomically;
//! a [`ReadView`] from [`Engine::snapshot`] sees one point in time.

use std::ops::Bound;

/// Errors from a storage engine. Every one of them is non-deterministic
/// (IO, corruption): the layers above treat it as "this node is broken".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage IO error: {0}")]
    Io(String),
    #[error("storage corruption: {0}")]
    Corruption(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How durable a write must be before [`Engine::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd (RocksDB: the WAL is synced) before returning.
    Sync,
    /// In the engine's buffers (RocksDB: written to the WAL, not synced):
    /// survives a process crash, not a machine crash.
    Buffered,
    /// Not written ahead (RocksDB: WAL disabled): durable once a memtable
    /// flush ([`Engine::flush`] or RocksDB's own) persists it, lost if the
    /// process dies before. Batches stay atomic, and a flush persists every
    /// write before it, so what survives a crash is the unlogged writes up
    /// to the last flush. For writes that can be rebuilt from durable data
    /// (the state machine's apply batches, from the Raft log) and for the
    /// test-only switch that must show a durability bug.
    Unlogged,
}

/// Scan direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Operations applied atomically and in order: a later op on the same key
/// wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(key.into(), value.into()));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(key.into()));
    }

    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::DeleteRange(start.into(), end.into()));
    }

    /// Appends every op of `other`, after this batch's own.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// An iterator over `(key, value)` pairs in key order.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + 'a>;

/// Reads at one point in time.
pub trait ReadView: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Keys within the `start`..`end` bounds, in `direction` order.
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_>;

    /// Keys starting with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> ScanIter<'_> {
        let end = prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        self.scan(Bound::Included(prefix.to_vec()), end, Direction::Forward)
    }

    /// A [`Cursor`] over the keys of `start..end` (`end` `None`: to the
    /// last key), placed by its first [`Cursor::seek`].
    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_>;
}

/// A forward position among a view's keys, for reads that jump over runs
/// of keys they do not want (the older versions of a key) instead of
/// stepping through them as a scan does.
pub trait Cursor: Send {
    /// Moves to the first key at or after `target` (at or after the
    /// cursor's start, if `target` is below it).
    fn seek(&mut self, target: &[u8]) -> Result<()>;

    /// Moves to the next key. Past the end it stays there.
    fn next(&mut self) -> Result<()>;

    /// The key and value the cursor is at: `None` before the first seek
    /// and past the end.
    fn current(&self) -> Option<(&[u8], &[u8])>;
}

/// An ordered, durable key-value store.
pub trait Engine: ReadView {
    /// Applies `batch` atomically.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// Makes every earlier write durable.
    fn flush(&self) -> Result<()>;

    /// A consistent view of the engine as of now; later writes are not seen.
    fn snapshot(&self) -> Box<dyn ReadView + '_>;

    /// Approximately how many bytes the keys in `[start, end)` take in
    /// storage, for observability only (never for decisions that must agree
    /// between replicas). RocksDB estimates from its flushed files
    /// (compressed, and counting data deleted but not yet compacted away;
    /// writes still in the memtable are not counted); the in-memory engine
    /// counts key and value bytes exactly. An empty range is 0.
    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<u64>;

    /// Where `key` is stored, for error reports naming the damaged file:
    /// e.g. `/data/n1/db/000012.sst` or the write-ahead log.
    fn locate(&self, key: &[u8]) -> String;
}

/// The smallest key greater than every key with prefix `prefix`, or `None`
/// if there is none (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
