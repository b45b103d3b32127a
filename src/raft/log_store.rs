//! A group's Raft log: the vote, the committed log id and the purge point
//! under their own keys in the node's RocksDB (see [`crate::keys`]), the
//! entries either there too, under `Key::RaftLog(group, index)`, or in
//! segment files of the group's own ([`FileLog`], `raft.log_files`).
//!
//! Appends and votes are synced (RocksDB's WAL, or the segment file)
//! before openraft is told they are persistent. Writes run on tokio's
//! blocking pool.
//!
//! The most recently appended entries are also kept in memory
//! ([`EntryCache`]): openraft reads every entry back right after appending
//! it — to replicate it to each follower and to apply it — and serving those
//! reads from memory spares a RocksDB read, a checksum and a decode each.
//! The cache holds only entries whose write succeeded, is cut by truncate
//! and purge exactly like the stored log, and starts empty after a restart
//! (so entries written by an earlier process are always read from disk and
//! verified).
//!
//! Stored entry format (version 1), so corruption is detected on read and
//! never applied:
//!
//! ```text
//! byte 0      format version (1)
//! bytes 1..5  CRC-32 (IEEE, little-endian) of bytes 5..
//! bytes 5..   MessagePack of the openraft entry
//! ```

// openraft's StorageError (large) is the error type its storage traits
// require; the helpers here return it so `?` works at the trait boundary.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbor_storage::segments::{self, SegmentLog};
use arbor_storage::{Direction, Durability, Engine, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};

use crate::keys::{self, Key};
use crate::raft::eager::{eager_request, EagerSink};
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The log of one group. Cheap to clone (readers share the engine).
#[derive(Clone)]
pub struct LogStore {
    group: u64,
    engine: Arc<dyn Engine>,
    /// `Sync` except under the test-only `volatile_writes` switch.
    durability: Durability,
    /// Bytes of entries appended since the counter was last taken (the
    /// byte-based snapshot policy reads and resets it).
    appended: Arc<AtomicU64>,
    cache: Arc<Mutex<EntryCache>>,
    /// Sends an idle leader's new entries to its followers during its own
    /// fsync (see [`crate::raft::eager`]); `None` turns that off.
    eager: Option<Arc<dyn EagerSink>>,
    /// The vote and committed log id last saved or read, which decide
    /// whether an append is an idle leader's.
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
    /// The entries' segment files; `None`: the entries are RocksDB keys.
    files: Option<Arc<FileLog>>,
}

/// A group's log entries in segment files of its own
/// ([`arbor_storage::segments`]): an append is one `pwrite` and one
/// `fdatasync` of a file, usually into a segment zero-filled ahead of use,
/// instead of a synced RocksDB write (docs/BENCHMARKS.md, item 41).
pub struct FileLog {
    dir: PathBuf,
    segment_bytes: u64,
    log: Mutex<SegmentLog>,
    /// A thread is zero-filling the next segment.
    filling: Arc<AtomicBool>,
    /// When zero-filling last failed (a full disk, say): not retried for
    /// [`SPARE_RETRY`], rather than after every append.
    failed_at: Arc<Mutex<Option<std::time::Instant>>>,
}

const SPARE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Entries are moved between the engine and segment files in writes of
/// about this many bytes.
const MOVE_CHUNK_BYTES: usize = 4 << 20;

fn remove_dir_if_present(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

impl FileLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of segment files in use (the status API's log size).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes()
    }

    /// Starts zero-filling the next segment on a thread of its own if none
    /// is ready or being made, so that no append waits for it.
    fn prepare_spare(&self) {
        let failed_at = *self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        if failed_at.is_some_and(|t| t.elapsed() < SPARE_RETRY)
            || segments::spare_ready(&self.dir)
            || self.filling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (dir, bytes, filling, failed) =
            (self.dir.clone(), self.segment_bytes, self.filling.clone(), self.failed_at.clone());
        let spawned = std::thread::Builder::new().name("arbor-log-spare".into()).spawn(move || {
            if let Err(e) = segments::fill_spare(&dir, bytes) {
                // Appends then grow a new file instead: slower, as safe.
                tracing::warn!(dir = %dir.display(), "could not zero-fill the next log segment: {e}");
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            }
            filling.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.filling.store(false, Ordering::Release);
        }
    }
}

/// At most this many recent entries are cached...
const CACHE_MAX_ENTRIES: usize = 1024;
/// ...and at most this many bytes of them (encoded size).
const CACHE_MAX_BYTES: usize = 16 << 20;

/// The last appended entries of a group, consecutive by index.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds entries just written (with their encoded sizes). Entries that do
    /// not continue the cached ones replace them.
    fn append(&mut self, new: Vec<(Entry, usize)>) {
        let Some((first, _)) = new.first() else { return };
        let next = self.entries.back().map(|(e, _)| e.log_id.index + 1);
        if next != Some(first.log_id.index) {
            self.clear();
        }
        for (entry, size) in new {
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.entries.len() > CACHE_MAX_ENTRIES || (self.bytes > CACHE_MAX_BYTES && self.entries.len() > 1) {
            let (_, size) = self.entries.pop_front().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// Drops entries at and after `index`.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            let (_, size) = self.entries.pop_back().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            let (_, size) = self.entries.pop_front().expect("non-empty");
            self.bytes -= size;
        }
    }

    /// Entries `start..end` if all of them are cached.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        if start < first || end > last + 1 || start > end {
            return None;
        }
        let range = (start - first) as usize..(end - first) as usize;
        Some(self.entries.range(range).map(|(e, _)| e.clone()).collect())
    }
}

fn read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

const ENTRY_FORMAT_V1: u8 = 1;

/// Encodes a log entry with its checksum (see the module docs).
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let body = rmp_serde::to_vec(entry).expect("log entries always encode");
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(ENTRY_FORMAT_V1);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a stored log entry, verifying its format and checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    match bytes {
        [ENTRY_FORMAT_V1, c0, c1, c2, c3, body @ ..] => {
            let stored = u32::from_le_bytes([*c0, *c1, *c2, *c3]);
            let actual = crc32fast::hash(body);
            if stored != actual {
                return Err(format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"));
            }
            rmp_serde::from_slice(body).map_err(|e| format!("undecodable entry: {e}"))
        }
        [version, ..] => Err(format!("unknown entry format {version}")),
        [] => Err("empty entry".to_string()),
    }
}

impl LogStore {
    pub fn new(group: u64, engine: Arc<dyn Engine>, durability: Durability) -> Self {
        Self {
            group,
            engine,
            durability,
            appended: Arc::new(AtomicU64::new(0)),
            cache: Default::default(),
            eager: None,
            vote: None,
            committed: None,
            files: None,
        }
    }

    /// Keeps the entries in segment files in `dir` instead of RocksDB,
    /// opening (and recovering) what `dir` holds. A group whose entries are
    /// in RocksDB (a data directory used with `raft.log_files = false`)
    /// has them moved into `dir` first ([`Self::move_log_to_files`]).
    /// Blocking: run it off the async runtime.
    pub fn with_segment_log(mut self, dir: &Path, segment_bytes: u64) -> Result<Self, String> {
        let group = self.group;
        self.move_log_to_files(dir, segment_bytes).map_err(|e| format!("group {group}: {e}"))?;
        let mut log = SegmentLog::open(dir, segment_bytes).map_err(|e| format!("group {group}: {e}"))?;
        // From here on the directory holds the log: any entries still in the
        // engine are a copy, and a missing directory will be an error.
        if !self.in_files()? || self.entries_in_engine() {
            let mut b = self.delete_engine_entries();
            b.put(Key::RaftLogFiles(group).encode(), Vec::new());
            self.engine.write(b, Durability::Sync).map_err(|e| format!("group {group}: {e}"))?;
        }
        let purged: Option<LogId> = self.get_meta(Key::RaftPurged(group)).map_err(|e| e.to_string())?;
        if let Some(purged) = purged {
            log.purge(purged.index).map_err(|e| format!("group {group}: {e}"))?;
        }
        let files = FileLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            log: Mutex::new(log),
            filling: Arc::new(AtomicBool::new(false)),
            failed_at: Arc::new(Mutex::new(None)),
        };
        // The first segment too should be zero-filled: its appends would
        // otherwise grow a file (~half the gain, item 41).
        segments::fill_spare(dir, segment_bytes).map_err(|e| format!("group {group}: {e}"))?;
        self.files = Some(Arc::new(files));
        Ok(self)
    }

    /// This group's entries in the engine (`Key::RaftLog`), in `direction`.
    fn engine_entries(&self, direction: Direction) -> arbor_storage::ScanIter<'_> {
        let prefix = keys::raft_log_prefix(self.group);
        let end = arbor_storage::prefix_end(&prefix).expect("group prefix is not all 0xff");
        self.engine.scan(Bound::Included(prefix), Bound::Excluded(end), direction)
    }

    /// Whether the engine holds entries of this group.
    fn entries_in_engine(&self) -> bool {
        self.engine_entries(Direction::Forward).next().is_some()
    }

    /// A batch deleting every entry of this group from the engine.
    fn delete_engine_entries(&self) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.delete_range(Key::RaftLog(self.group, 0).encode(), Key::RaftLog(self.group, u64::MAX).encode());
        b.delete(Key::RaftLog(self.group, u64::MAX).encode());
        b
    }

    /// Whether the engine records that the group's entries are in segment
    /// files (`Key::RaftLogFiles`).
    fn in_files(&self) -> Result<bool, String> {
        Ok(self.engine.get(&Key::RaftLogFiles(self.group).encode()).map_err(|e| e.to_string())?.is_some())
    }

    /// The error for a group whose segment files are gone: its log is.
    fn files_missing(&self, dir: &Path) -> String {
        format!(
            "the segment files that hold its Raft log are missing ({}); restore that directory, or wipe this \
             node's data directory and add the node to the cluster again",
            dir.display()
        )
    }

    /// Moves the group's entries from the engine into segment files in
    /// `dir`, if they are in the engine. Safe to interrupt anywhere: the
    /// copy is made and synced in `<dir>.moving` and renamed to `dir`, and
    /// only then does [`Self::with_segment_log`] delete the engine's entries
    /// and record `Key::RaftLogFiles`, in one synced write. Whenever `dir`
    /// exists it holds the whole log, and entries still in the engine are a
    /// leftover copy; once recorded, a missing `dir` is an error.
    fn move_log_to_files(&self, dir: &Path, segment_bytes: u64) -> Result<(), String> {
        let (staging, old) = (dir.with_extension("moving"), dir.with_extension("old"));
        remove_dir_if_present(&staging)?;
        remove_dir_if_present(&old)?;
        if dir.exists() {
            return Ok(());
        }
        if self.in_files()? {
            return Err(self.files_missing(dir));
        }
        if !self.entries_in_engine() {
            return Ok(());
        }
        let mut log = SegmentLog::open(&staging, segment_bytes).map_err(|e| e.to_string())?;
        let (mut chunk, mut first, mut bytes, mut moved) = (Vec::<Vec<u8>>::new(), 0, 0, 0u64);
        let mut entries = self.engine_entries(Direction::Forward).peekable();
        while let Some(item) = entries.next() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let index = keys::decode_raft_log_index(&k).map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                first = index;
            } else if index != first + chunk.len() as u64 {
                let before = first + chunk.len() as u64 - 1;
                return Err(format!("the log in RocksDB has entry {index} after {before}: a gap"));
            }
            // Copied as stored: each entry keeps its own checksum, checked
            // when it is read.
            bytes += v.len();
            chunk.push(v);
            if bytes >= MOVE_CHUNK_BYTES || entries.peek().is_none() {
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                log.append(first, &refs).map_err(|e| e.to_string())?;
                moved += chunk.len() as u64;
                (chunk, bytes) = (Vec::new(), 0);
            }
        }
        drop(log);
        std::fs::rename(&staging, dir).map_err(|e| e.to_string())?;
        segments::sync_dir(dir.parent().expect("a group's log directory has a parent")).map_err(|e| e.to_string())?;
        tracing::info!(group = self.group, entries = moved, dir = %dir.display(), "moved the Raft log from RocksDB into segment files (raft.log_files = true)");
        Ok(())
    }

    /// The reverse of [`Self::move_log_to_files`], for a node started with
    /// `raft.log_files = false` on a data directory whose group `dir`
    /// holds the entries: they are copied into the engine (synced), the
    /// record `Key::RaftLogFiles` deleted, then `dir` is renamed to
    /// `<dir>.old` and deleted. While `dir` exists it holds the whole log,
    /// so an interrupted move starts over.
    /// Blocking: run it off the async runtime.
    pub fn move_log_to_engine(&self, dir: &Path, segment_bytes: u64) -> Result<(), String> {
        let group = self.group;
        let failed = |e: String| format!("group {group}: moving the Raft log out of {}: {e}", dir.display());
        let old = dir.with_extension("old");
        remove_dir_if_present(&dir.with_extension("moving")).map_err(failed)?;
        remove_dir_if_present(&old).map_err(failed)?;
        if !dir.exists() {
            return if self.in_files()? { Err(format!("group {group}: {}", self.files_missing(dir))) } else { Ok(()) };
        }
        self.engine.write(self.delete_engine_entries(), Durability::Sync).map_err(|e| failed(e.to_string()))?;
        let log = SegmentLog::open(dir, segment_bytes).map_err(|e| failed(e.to_string()))?;
        let purged: Option<LogId> = self.get_meta(Key::RaftPurged(group)).map_err(|e| failed(e.to_string()))?;
        let live = log.first_index().zip(log.last_index());
        let first = live.map_or(1, |(first, _)| first).max(purged.map_or(0, |p| p.index + 1));
        let last = live.map_or(0, |(_, last)| last);
        let (mut b, mut bytes, mut moved) = (WriteBatch::new(), 0, 0u64);
        for index in first..=last {
            moved += 1;
            let entry = log.read(index).map_err(|e| failed(e.to_string()))?;
            let entry = entry.ok_or_else(|| failed(format!("entry {index} is missing")))?;
            bytes += entry.len();
            b.put(Key::RaftLog(group, index).encode(), entry);
            if bytes >= MOVE_CHUNK_BYTES || index == last {
                self.engine.write(std::mem::take(&mut b), Durability::Sync).map_err(|e| failed(e.to_string()))?;
                bytes = 0;
            }
        }
        drop(log);
        // Before the rename: once `dir` is gone, nothing may say it holds
        // the log.
        let mut b = WriteBatch::new();
        b.delete(Key::RaftLogFiles(group).encode());
        self.engine.write(b, Durability::Sync).map_err(|e| failed(e.to_string()))?;
        std::fs::rename(dir, &old).map_err(|e| failed(e.to_string()))?;
        segments::sync_dir(dir.parent().expect("a group's log directory has a parent"))
            .map_err(|e| failed(e.to_string()))?;
        remove_dir_if_present(&old).map_err(failed)?;
        tracing::info!(
            group,
            entries = moved,
            "moved the Raft log from segment files into RocksDB (raft.log_files = false)"
        );
        Ok(())
    }

    /// The segment files, when the entries are kept in them.
    pub fn file_log(&self) -> Option<Arc<FileLog>> {
        self.files.clone()
    }

    /// Sends an idle leader's entries eagerly through `eager`.
    pub fn with_eager_replication(mut self, eager: Arc<dyn EagerSink>) -> Self {
        self.eager = Some(eager);
        self
    }

    /// The counter of bytes appended (see [`crate::server`]'s snapshot policy).
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: Key<'_>) -> Result<Option<T>, StorageError> {
        match self.engine.get(&key.encode()).map_err(read_err)? {
            Some(b) => Ok(Some(rmp_serde::from_slice(&b).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let (engine, durability) = (self.engine.clone(), self.durability);
        tokio::task::spawn_blocking(move || engine.write(batch, durability))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        if let Some(files) = &self.files {
            let log = files.lock();
            let Some(last) = log.last_index() else { return Ok(None) };
            let bytes = log.read(last).map_err(read_err)?.ok_or_else(|| read_err("the last entry vanished"))?;
            return Ok(Some(self.decode_at(last, &bytes)?));
        }
        match self.engine_entries(Direction::Reverse).next() {
            Some(item) => {
                let (k, v) = item.map_err(read_err)?;
                let index = keys::decode_raft_log_index(&k).map_err(read_err)?;
                Ok(Some(self.decode_at(index, &v)?))
            }
            None => Ok(None),
        }
    }

    /// Decodes the entry stored at `index`; corruption is a storage error
    /// naming the group and index (openraft then stops the group).
    fn decode_at(&self, index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
        decode_entry(bytes).map_err(|e| {
            let file = match &self.files {
                Some(files) => format!("the segment files in {}", files.dir.display()),
                None => self.engine.locate(&Key::RaftLog(self.group, index).encode()),
            };
            let msg = format!("corrupt Raft log entry: group {} index {index} in {file}: {e}", self.group);
            tracing::error!(group = self.group, index, "{msg}; stopping the group rather than applying it");
            StorageIOError::read_log_at_index(index, openraft::AnyError::error(msg)).into()
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EntryCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries with indexes in `range`, in order.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cached_end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(hit) = cached_end.and_then(|end| self.cache().get(start, end)) {
            return Ok(hit);
        }
        if let Some(files) = &self.files {
            let log = files.lock();
            let Some(last) = log.last_index() else { return Ok(Vec::new()) };
            let end = cached_end.map_or(last, |end| end.saturating_sub(1).min(last));
            let mut out = Vec::new();
            for index in start.max(log.first_index().unwrap_or(start))..=end {
                let Some(bytes) = log.read(index).map_err(read_err)? else { break };
                out.push(self.decode_at(index, &bytes)?);
            }
            return Ok(out);
        }
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(Key::RaftLog(self.group, i).encode()),
            Bound::Excluded(&i) => Bound::Excluded(Key::RaftLog(self.group, i).encode()),
            Bound::Unbounded => Bound::Excluded(Key::RaftLog(self.group, u64::MAX).encode()),
        };
        let start = Bound::Included(Key::RaftLog(self.group, start).encode());
        let mut out = Vec::new();
        for item in self.engine.scan(start, end, Direction::Forward) {
            let (k, v) = item.map_err(read_err)?;
            let index = keys::decode_raft_log_index(&k).map_err(read_err)?;
            let entry = self.decode_at(index, &v)?;
            if entry.log_id.index != index {
                return Err(read_err(format!(
                    "group {} log key {index} holds entry {}",
                    self.group, entry.log_id.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(Key::RaftPurged(self.group))?;
        let last_log_id = self.last_entry()?.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(Key::RaftVote(self.group).encode(), rmp_serde::to_vec(vote).map_err(write_err)?);
        self.write(b).await?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.vote = self.get_meta(Key::RaftVote(self.group))?;
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(Key::RaftCommitted(self.group).encode(), rmp_serde::to_vec(&committed).map_err(write_err)?);
        // Not synced: losing it only makes a restarted node re-learn the
        // commit index from the leader. Under the test-only volatile switch
        // it is lost with the log, so a killed node comes back consistent.
        // Without a sync the write is a memtable insert and a write(2) to
        // the WAL: done here rather than paying two thread hand-offs of the
        // blocking pool on every commit.
        let durability = match self.durability {
            Durability::Unlogged => Durability::Unlogged,
            _ => Durability::Buffered,
        };
        self.engine.write(b, durability).map_err(write_err)?;
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.committed = self.get_meta::<Option<LogId>>(Key::RaftCommitted(self.group))?.flatten();
        Ok(self.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(eager) = &self.eager {
            if let Some(req) = eager_request(eager.me(), self.vote.as_ref(), self.committed, &entries) {
                eager.send(req);
            }
        }
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut encoded = Vec::with_capacity(entries.len());
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = encode_entry(&entry);
            written.push((entry, bytes.len()));
            encoded.push(bytes);
        }
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        self.appended.fetch_add(bytes as u64, Ordering::Relaxed);
        let result = match &self.files {
            Some(files) => {
                let files = files.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                    let result = files.lock().append(first, &refs);
                    files.prepare_spare();
                    result
                })
                .await;
                result.map_err(write_err).and_then(|r| r.map_err(write_err))
            }
            None => {
                let mut b = WriteBatch::new();
                for (bytes, (entry, _)) in encoded.into_iter().zip(&written) {
                    b.put(Key::RaftLog(self.group, entry.log_id.index).encode(), bytes);
                }
                self.write(b).await
            }
        };
        if result.is_ok() {
            self.cache().append(written);
        } else {
            self.cache().clear();
        }
        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cache().truncate(log_id.index);
        if let Some(files) = self.files.clone() {
            let index = log_id.index;
            return tokio::task::spawn_blocking(move || files.lock().truncate(index))
                .await
                .map_err(write_err)?
                .map_err(write_err);
        }
        let mut b = WriteBatch::new();
        b.delete_range(Key::RaftLog(self.group, log_id.index).encode(), Key::RaftLog(self.group, u64::MAX).encode());
        b.delete(Key::RaftLog(self.group, u64::MAX).encode());
        self.write(b).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(Key::RaftPurged(self.group).encode(), rmp_serde::to_vec(&log_id).map_err(write_err)?);
        self.cache().purge(log_id.index);
        let Some(files) = self.files.clone() else {
            b.delete_range(Key::RaftLog(self.group, 0).encode(), Key::RaftLog(self.group, log_id.index + 1).encode());
            return self.write(b).await;
        };
        // The purge point first: if the segments' purge is cut short, the
        // next open purges them up to it again.
        self.write(b).await?;
        let index = log_id.index;
        tokio::task::spawn_blocking(move || files.lock().purge(index)).await.map_err(write_err)?.map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_storage::{Memory, ReadView};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        entry_of(1, 1, index)
    }

    /// Group 3's entries 1..=`last`, written straight to the engine.
    fn stored_log(engine: &Memory, last: u64) {
        let mut b = WriteBatch::new();
        for i in 1..=last {
            b.put(Key::RaftLog(3, i).encode(), encode_entry(&entry(i)));
        }
        engine.write(b, Durability::Sync).unwrap();
    }

    /// Flips a bit in the last byte of group 3's stored entry `index`.
    fn damage(engine: &Memory, index: u64) {
        let key = Key::RaftLog(3, index).encode();
        let mut bytes = engine.get(&key).unwrap().unwrap();
        *bytes.last_mut().unwrap() ^= 0x40;
        let mut b = WriteBatch::new();
        b.put(key, bytes);
        engine.write(b, Durability::Sync).unwrap();
    }

    /// Records what a log store hands to eager replication.
    struct Recorder(NodeId, Mutex<Vec<openraft::raft::AppendEntriesRequest<TypeConfig>>>);

    impl EagerSink for Recorder {
        fn me(&self) -> NodeId {
            self.0
        }
        fn send(&self, req: openraft::raft::AppendEntriesRequest<TypeConfig>) {
            self.1.lock().unwrap().push(req);
        }
    }

    fn entry_of(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload: EntryPayload::Blank }
    }

    #[tokio::test]
    async fn an_idle_leaders_append_is_handed_to_eager_replication() {
        use openraft::storage::RaftLogStorageExt;
        let recorder = Arc::new(Recorder(1, Mutex::new(Vec::new())));
        let mut store =
            LogStore::new(3, Arc::new(Memory::new()), Durability::Sync).with_eager_replication(recorder.clone());
        let sent = || recorder.1.lock().unwrap().iter().map(|r| r.entries[0].log_id.index).collect::<Vec<_>>();

        // As a follower of node 2: its entries are never sent on.
        store.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        store.blocking_append([entry_of(1, 2, 1), entry_of(1, 2, 2)]).await.unwrap();
        store.save_committed(Some(entry_of(1, 2, 2).log_id)).await.unwrap();
        store.blocking_append([entry_of(1, 2, 3)]).await.unwrap();
        assert_eq!(sent(), Vec::<u64>::new());

        // Elected: its vote is saved committed before its first entry.
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(entry_of(1, 2, 3).log_id)).await.unwrap();
        store.blocking_append([entry_of(2, 1, 4)]).await.unwrap();
        assert_eq!(sent(), vec![4], "the entry after the committed one");
        let req = recorder.1.lock().unwrap()[0].clone();
        assert_eq!((req.vote, req.prev_log_id), (Vote::new_committed(2, 1), Some(entry_of(1, 2, 3).log_id)));

        // Entry 5 while 4 is not committed yet: the stream has it.
        store.blocking_append([entry_of(2, 1, 5)]).await.unwrap();
        store.save_committed(Some(entry_of(2, 1, 5).log_id)).await.unwrap();
        store.blocking_append([entry_of(2, 1, 6)]).await.unwrap();
        assert_eq!(sent(), vec![4, 6]);

        // A restarted store reads its vote and commit index back.
        let mut again =
            LogStore::new(3, store.engine.clone(), Durability::Sync).with_eager_replication(recorder.clone());
        again.read_vote().await.unwrap();
        assert_eq!(again.read_committed().await.unwrap(), Some(entry_of(2, 1, 5).log_id));
        again.blocking_append([entry_of(2, 1, 6)]).await.unwrap();
        assert_eq!(sent(), vec![4, 6, 6], "entry 6 again, as after a restart that lost it");
    }

    #[test]
    fn a_flipped_byte_is_detected_and_named() {
        let engine = Arc::new(Memory::new());
        let store = LogStore::new(3, engine.clone(), Durability::Sync);
        stored_log(&engine, 3);
        assert_eq!(store.entries(1..=3).unwrap().len(), 3);
        damage(&engine, 2);

        let err = store.entries(1..=3).unwrap_err().to_string();
        assert!(err.contains("group 3 index 2") && err.contains("checksum mismatch"), "{err}");
        assert_eq!(store.entries(1..2).unwrap().len(), 1, "entries before the corruption still read");
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_entry_cache_follows_appends_truncates_and_purges() {
        let mut c = EntryCache::default();
        assert_eq!(indexes(c.get(1, 2)), None, "empty");
        c.append((5..=9).map(|i| (entry(i), 10)).collect());
        assert_eq!(indexes(c.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(c.get(7, 8)), Some(vec![7]));
        assert_eq!(indexes(c.get(7, 7)), Some(vec![]));
        assert_eq!(indexes(c.get(4, 6)), None, "starts before the cache");
        assert_eq!(indexes(c.get(9, 11)), None, "ends after it");
        c.truncate(8);
        assert_eq!(indexes(c.get(5, 9)), None, "8 is gone");
        c.append(vec![(entry(8), 10)]);
        assert_eq!(indexes(c.get(5, 9)), Some(vec![5, 6, 7, 8]));
        c.purge(6);
        assert_eq!(c.first_index(), Some(7));
        assert_eq!(c.bytes, 20);
        c.append(vec![(entry(20), 10)]);
        assert_eq!(indexes(c.get(20, 21)), Some(vec![20]), "a gap replaces the cache");
        assert_eq!(indexes(c.get(7, 8)), None);
        c.append((21..21 + CACHE_MAX_ENTRIES as u64).map(|i| (entry(i), 1)).collect());
        assert_eq!(c.entries.len(), CACHE_MAX_ENTRIES, "bounded by count");
        c.append(vec![(entry(21 + CACHE_MAX_ENTRIES as u64), CACHE_MAX_BYTES)]);
        assert_eq!(c.entries.len(), 1, "bounded by bytes, but the newest stays");
    }

    #[test]
    fn cached_entries_are_served_from_memory_and_a_restart_reads_the_disk() {
        let engine = Arc::new(Memory::new());
        let store = LogStore::new(3, engine.clone(), Durability::Sync);
        stored_log(&engine, 4);
        // What `append` does once its write succeeded.
        store.cache().append(vec![(entry(4), 10)]);
        // Damage entry 4 on "disk": the running store still serves it from
        // memory; a store opened afterwards (a restart) reads and refuses it.
        damage(&engine, 4);
        assert_eq!(store.entries(4..5).unwrap().len(), 1);
        assert!(store.entries(3..5).is_err(), "3 is not cached: read from disk together with 4");
        let restarted = LogStore::new(3, engine, Durability::Sync);
        assert!(restarted.entries(4..5).is_err());
    }

    #[test]
    fn unknown_formats_are_refused() {
        assert!(decode_entry(&[]).is_err());
        assert!(decode_entry(&[9, 0, 0, 0, 0]).unwrap_err().contains("format 9"));
        let good = encode_entry(&entry(1));
        assert_eq!(decode_entry(&good).unwrap().log_id.index, 1);
    }

    fn ids(entries: &[Entry]) -> Vec<LogId> {
        entries.iter().map(|e| e.log_id).collect()
    }

    #[tokio::test]
    async fn entries_in_segment_files_survive_restarts_truncations_and_purges() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Memory::new());
        let open = || LogStore::new(3, engine.clone(), Durability::Sync).with_segment_log(dir.path(), 1 << 20).unwrap();
        let mut store = open();
        store.blocking_append((1..=10).map(entry)).await.unwrap();
        drop(store);

        // A new store has an empty cache: these come from the files.
        let mut store = open();
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(entry(10).log_id));
        assert_eq!(
            ids(&store.try_get_log_entries(1..=10).await.unwrap()),
            ids(&(1..=10).map(entry).collect::<Vec<_>>())
        );
        // A new leader's entry 7 replaces 7..=10.
        store.truncate(entry(7).log_id).await.unwrap();
        store.blocking_append([entry_of(2, 2, 7)]).await.unwrap();
        store.purge(entry(3).log_id).await.unwrap();
        drop(store);

        let mut store = open();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(3).log_id));
        assert_eq!(state.last_log_id, Some(entry_of(2, 2, 7).log_id));
        let want = vec![entry(4).log_id, entry(5).log_id, entry(6).log_id, entry_of(2, 2, 7).log_id];
        assert_eq!(ids(&store.try_get_log_entries(4..).await.unwrap()), want);
        assert_eq!(ids(&store.try_get_log_entries(1..4).await.unwrap()), Vec::<LogId>::new(), "purged");
        let prefix = keys::raft_log_prefix(3);
        let end = arbor_storage::prefix_end(&prefix).unwrap();
        let in_rocks = engine.scan(Bound::Included(prefix), Bound::Excluded(end), Direction::Forward).count();
        assert_eq!(in_rocks, 0, "no entry went to the engine");
        assert!(store.file_log().unwrap().bytes() > 0);
    }

    #[tokio::test]
    async fn a_log_moves_between_the_engine_and_segment_files_with_the_setting() {
        use openraft::storage::RaftLogStorageExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raft-log").join("3");
        let engine = Arc::new(Memory::new());
        let in_engine = || {
            let prefix = keys::raft_log_prefix(3);
            let end = arbor_storage::prefix_end(&prefix).unwrap();
            engine.scan(Bound::Included(prefix), Bound::Excluded(end), Direction::Forward).count()
        };
        let to_files = || LogStore::new(3, engine.clone(), Durability::Sync).with_segment_log(&dir, 64 << 10).unwrap();
        let to_engine = || {
            let store = LogStore::new(3, engine.clone(), Durability::Sync);
            store.move_log_to_engine(&dir, 64 << 10).unwrap();
            store
        };
        let all = |store: &LogStore| ids(&store.entries(..).unwrap());
        let want = |range: std::ops::RangeInclusive<u64>| range.map(|i| entry(i).log_id).collect::<Vec<_>>();

        // Entries 1..=300 in the engine, 1..=100 purged.
        stored_log(&engine, 300);
        let mut store = LogStore::new(3, engine.clone(), Durability::Sync);
        store.purge(entry(100).log_id).await.unwrap();
        drop(store);

        let mut store = to_files();
        assert_eq!(in_engine(), 0, "moved out of the engine");
        assert_eq!(all(&store), want(101..=300));
        store.blocking_append((301..=310).map(entry)).await.unwrap();
        drop(store);

        let store = to_engine();
        assert!(!dir.exists(), "the files are gone once copied");
        assert_eq!(in_engine(), 210, "only the entries after the purge point");
        assert_eq!(all(&store), want(101..=310));

        // Interrupted moves: a copy left in `<dir>.moving` or `<dir>.old`,
        // or entries left in the engine beside a whole `dir`.
        drop(to_files());
        std::fs::create_dir_all(dir.with_extension("old")).unwrap();
        std::fs::create_dir_all(dir.with_extension("moving")).unwrap();
        stored_log(&engine, 5);
        let store = to_files();
        assert_eq!(in_engine(), 0, "the leftover copy in the engine is deleted");
        assert!(!dir.with_extension("old").exists() && !dir.with_extension("moving").exists());
        assert_eq!(all(&store), want(101..=310));
        drop(store);
        stored_log(&engine, 5);
        assert_eq!(all(&to_engine()), want(101..=310), "the files win over a partial copy");

        // Once the engine records that the files hold the log, losing them
        // is an error in either setting, never an empty log.
        drop(to_files());
        std::fs::remove_dir_all(&dir).unwrap();
        let err = LogStore::new(3, engine.clone(), Durability::Sync).with_segment_log(&dir, 64 << 10).err().unwrap();
        assert!(err.contains("group 3") && err.contains("are missing"), "{err}");
        let err = LogStore::new(3, engine.clone(), Durability::Sync).move_log_to_engine(&dir, 64 << 10).unwrap_err();
        assert!(err.contains("group 3") && err.contains("are missing"), "{err}");

        // A gap in the engine's log is refused, not renumbered.
        let gapped = Arc::new(Memory::new());
        stored_log(&gapped, 3);
        let mut b = WriteBatch::new();
        b.put(Key::RaftLog(3, 5).encode(), encode_entry(&entry(5)));
        gapped.write(b, Durability::Sync).unwrap();
        let gap_dir = tmp.path().join("gapped").join("3");
        let err = LogStore::new(3, gapped, Durability::Sync).with_segment_log(&gap_dir, 64 << 10).err().unwrap();
        assert!(err.contains("entry 5 after 3"), "{err}");
        assert!(!gap_dir.exists(), "nothing moved");

        // A group never written to has nothing to move either way.
        let fresh = tmp.path().join("raft-log").join("4");
        LogStore::new(4, engine.clone(), Durability::Sync).move_log_to_engine(&fresh, 64 << 10).unwrap();
        assert!(!fresh.exists());
    }
}
