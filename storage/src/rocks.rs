//! [`Rocks`]: the RocksDB [`Engine`]. One database per node holds every
//! group's Raft log and state; keys are kept apart by the key encoding of
//! the layers above, not by column families.

use std::ops::Bound;
use std::path::Path;

use rocksdb::{DBCompressionType, IteratorMode, Options, ReadOptions, DB};

use crate::engine::{BatchOp, Direction, Durability, Engine, Error, ReadView, Result, ScanIter, WriteBatch};

/// Tunables of the RocksDB engine. Defaults suit a small node.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Block cache size in bytes.
    pub block_cache_bytes: usize,
    /// Size of one memtable in bytes.
    pub write_buffer_bytes: usize,
    /// Limit of the flushes' and compactions' writes, in bytes per second
    /// (0, the default: unlimited). Not auto-tuned: RocksDB's auto-tuned
    /// limiter starts at a twentieth of its ceiling and rises slowly, and a
    /// write burst after a quiet spell then filled both memtables and
    /// stopped every write, the Raft log's included, for seconds
    /// (docs/BENCHMARKS.md). A limit must cover the memtable fill rate.
    pub background_write_bytes_per_sec: u64,
    /// Flushes and compactions write their files with `O_DIRECT`, past the
    /// page cache, when the data directory's file system allows it (it is
    /// probed at open; see [`Rocks::direct_background_writes`]). Copying
    /// every flushed and compacted byte into the page cache took two thirds
    /// of the background threads' CPU (docs/BENCHMARKS.md), and the block
    /// cache already holds what reads need.
    pub direct_background_writes: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            background_write_bytes_per_sec: 0,
            direct_background_writes: true,
        }
    }
}

/// A RocksDB database.
pub struct Rocks {
    db: DB,
    direct_background_writes: bool,
}

fn map_err(e: rocksdb::Error) -> Error {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => Error::Corruption(e.into_string()),
        _ => Error::Io(e.into_string()),
    }
}

impl Rocks {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // No compression for memtable flushes (L0) and the first level below
        // them, LZ4 on the others, the bottommost included: most of the Raft
        // log is flushed and then purged before a compaction reaches it, and
        // compressing every flush cost ~3% of the servers' CPU per write
        // (docs/BENCHMARKS.md, item 23). zstd at the bottommost level cost
        // 10-30% of a node's CPU in compactions under a write load, and with
        // dynamic level sizes a small database compacts straight into its
        // bottommost level.
        {
            use DBCompressionType::{Lz4, None as Plain};
            opts.set_compression_type(Lz4);
            opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            opts.set_bottommost_compression_type(Lz4);
        }
        opts.set_write_buffer_size(options.write_buffer_bytes);
        opts.set_max_background_jobs(2);
        if options.background_write_bytes_per_sec > 0 {
            let limit = i64::try_from(options.background_write_bytes_per_sec).unwrap_or(i64::MAX);
            // Refilled every 100 ms; fairness 10 (RocksDB's default).
            opts.set_ratelimiter(limit, 100_000, 10);
        }
        opts.set_paranoid_checks(true);
        std::fs::create_dir_all(path).map_err(|e| Error::Io(format!("create {}: {e}", path.display())))?;
        let direct_background_writes = options.direct_background_writes && direct_writes_work(path);
        opts.set_use_direct_io_for_flush_and_compaction(direct_background_writes);
        // One thread inserts each write group into the memtable, reusing
        // its search path from key to key (see `write`); concurrent inserts
        // would start every key's search from the top of the skip list.
        opts.set_allow_concurrent_memtable_write(false);
        // A bloom filter over whole keys in the memtable: point reads of
        // absent keys (every new request id is looked up for dedup) stop
        // searching the skip list.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(options.block_cache_bytes));
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(map_err)?;
        Ok(Self { db, direct_background_writes })
    }

    /// Whether flushes and compactions write with `O_DIRECT`: asked for in
    /// [`RocksOptions::direct_background_writes`] and allowed by the file
    /// system.
    pub fn direct_background_writes(&self) -> bool {
        self.direct_background_writes
    }
}

/// Whether a file in `dir` can be opened with `O_DIRECT` and written one
/// aligned block (some file systems, tmpfs on older kernels among them,
/// refuse it; RocksDB would then fail every flush). The probe file is
/// removed.
#[cfg(target_os = "linux")]
fn direct_writes_work(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let probe = dir.join("direct-io-probe.tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut file| {
            let buf = vec![0u8; 2 * BLOCK];
            let start = buf.as_ptr().align_offset(BLOCK);
            file.write_all(&buf[start..start + BLOCK])
        });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

#[cfg(not(target_os = "linux"))]
fn direct_writes_work(_dir: &Path) -> bool {
    false
}

fn op_key(op: &BatchOp) -> &[u8] {
    match op {
        BatchOp::Put(k, _) | BatchOp::Delete(k) | BatchOp::DeleteRange(k, _) => k,
    }
}

/// Read options bounding an iterator to `start..end`.
fn bounded(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    match start {
        Bound::Included(s) => ro.set_iterate_lower_bound(s.clone()),
        Bound::Excluded(s) => ro.set_iterate_lower_bound(successor(s)),
        Bound::Unbounded => {}
    }
    match end {
        Bound::Included(e) => ro.set_iterate_upper_bound(successor(e)),
        Bound::Excluded(e) => ro.set_iterate_upper_bound(e.clone()),
        Bound::Unbounded => {}
    }
    ro
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

fn empty_range(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

fn to_iter<'a>(
    it: impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + Send + 'a,
) -> ScanIter<'a> {
    Box::new(it.map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(map_err)))
}

fn mode(direction: Direction) -> IteratorMode<'static> {
    match direction {
        Direction::Forward => IteratorMode::Start,
        Direction::Reverse => IteratorMode::End,
    }
}

impl ReadView for Rocks {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(map_err)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        if empty_range(&start, &end) {
            return Box::new(std::iter::empty());
        }
        to_iter(self.db.iterator_opt(mode(direction), bounded(&start, &end)))
    }
}

impl Engine for Rocks {
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        let mut ops: Vec<&BatchOp> = batch.ops().iter().collect();
        // RocksDB inserts a batch into its memtable (a skip list) in batch
        // order, reusing the search path of the previous key: keys in order
        // cost a fraction of keys at random (the apply batch of an epoch
        // spent a quarter of its time there). Sorting is stable, so ops on
        // one key keep their order; batches with range deletes keep theirs.
        if !ops.iter().any(|op| matches!(op, BatchOp::DeleteRange(..))) {
            ops.sort_by(|a, b| op_key(a).cmp(op_key(b)));
        }
        for op in ops {
            match op {
                BatchOp::Put(k, v) => wb.put(k, v),
                BatchOp::Delete(k) => wb.delete(k),
                BatchOp::DeleteRange(s, e) => {
                    if s < e {
                        wb.delete_range(s, e)
                    }
                }
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        wo.disable_wal(durability == Durability::Unlogged);
        self.db.write_opt(wb, &wo).map_err(map_err)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(map_err)?;
        self.db.flush().map_err(map_err)
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        Box::new(RocksSnapshot { snap: self.db.snapshot() })
    }

    fn locate(&self, key: &[u8]) -> String {
        let dir = self.db.path();
        let mut files = match self.db.live_files() {
            Ok(files) => files,
            Err(e) => return format!("the RocksDB at {} (its files could not be listed: {e})", dir.display()),
        };
        // Lowest level first: where the key's current value most likely is.
        files.sort_by_key(|f| f.level);
        let holding: Vec<String> = files
            .iter()
            .filter(|f| {
                f.start_key.as_deref().is_some_and(|s| s <= key) && f.end_key.as_deref().is_some_and(|e| key <= e)
            })
            .map(|f| dir.join(f.name.trim_start_matches('/')).display().to_string())
            .collect();
        if holding.is_empty() {
            format!("the memtable of the RocksDB at {} (recovered from its write-ahead log, *.log)", dir.display())
        } else {
            holding.join(" or ")
        }
    }

    fn approximate_size(&self, start: &[u8], end: &[u8]) -> Result<u64> {
        if start >= end {
            return Ok(0);
        }
        // Flushed files only: the C API behind this counts no memtable data.
        let sizes = self.db.get_approximate_sizes(&[rocksdb::Range::new(start, end)]);
        Ok(sizes.first().copied().unwrap_or(0))
    }
}

struct RocksSnapshot<'a> {
    snap: rocksdb::Snapshot<'a>,
}

impl ReadView for RocksSnapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get(key).map_err(map_err)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        if empty_range(&start, &end) {
            return Box::new(std::iter::empty());
        }
        to_iter(self.snap.iterator_opt(mode(direction), bounded(&start, &end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_names_the_file_holding_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
        let mut b = WriteBatch::new();
        b.put(b"k".to_vec(), b"v".to_vec());
        engine.write(b, Durability::Sync).unwrap();
        assert!(engine.locate(b"k").contains("write-ahead log"), "{}", engine.locate(b"k"));
        engine.flush().unwrap();
        let at = engine.locate(b"k");
        assert!(at.starts_with(&dir.path().display().to_string()) && at.ends_with(".sst"), "{at}");
        assert!(engine.locate(b"z").contains("memtable"), "a key outside every file");
    }

    #[test]
    fn flushes_are_written_plain_and_lower_levels_in_lz4() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
        // RocksDB writes the options it runs with into OPTIONS-<n> files.
        let options: String = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let per_level = "compression_per_level=kNoCompression:kNoCompression:kLZ4Compression:kLZ4Compression";
        assert!(options.contains(per_level), "{per_level} not in\n{options}");
        assert!(options.contains("bottommost_compression=kLZ4Compression"), "{options}");
    }

    #[test]
    fn conformance() {
        let dirs = std::sync::Mutex::new(Vec::new());
        crate::conformance::run(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = Rocks::open(dir.path(), &RocksOptions::default()).expect("open");
            dirs.lock().unwrap().push(dir);
            engine
        });
    }

    #[test]
    fn synced_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
            let mut b = WriteBatch::new();
            b.put(b"k".to_vec(), b"v".to_vec());
            db.write(b, Durability::Sync).unwrap();
        }
        let db = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
        assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn flushed_and_compacted_files_are_readable_with_direct_background_writes() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions { write_buffer_bytes: 1 << 20, ..RocksOptions::default() };
        let value = |i: u32| vec![(i % 251) as u8; 1000];
        {
            let db = Rocks::open(dir.path(), &options).unwrap();
            assert_eq!(db.direct_background_writes(), direct_writes_work(dir.path()));
            // Several memtables' worth: flushes, and compactions of them.
            for chunk in 0..40u32 {
                let mut b = WriteBatch::new();
                for i in chunk * 200..(chunk + 1) * 200 {
                    b.put(format!("k{i:06}").into_bytes(), value(i));
                }
                db.write(b, Durability::Buffered).unwrap();
            }
            db.flush().unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().any(|n| n.to_string_lossy().ends_with(".sst")), "{names:?}");
        assert!(!names.iter().any(|n| n.to_string_lossy().contains("probe")), "the probe file is removed: {names:?}");
        let db = Rocks::open(dir.path(), &options).unwrap();
        for i in (0..8000).step_by(97) {
            assert_eq!(db.get(format!("k{i:06}").as_bytes()).unwrap(), Some(value(i)), "key {i}");
        }
    }

    #[test]
    fn direct_background_writes_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions { direct_background_writes: false, ..RocksOptions::default() };
        assert!(!Rocks::open(dir.path(), &options).unwrap().direct_background_writes());
    }
}
