//! [`Rocks`]: the RocksDB [`Engine`]. One database per node holds every
//! group's Raft log and state; keys are kept apart by the key encoding of
//! the layers above. Ranges of keys named in
//! [`RocksOptions::own_column_families`] (Arbor: the Raft log) live in a
//! column family of their own, which the engine's readers and writers never
//! see: every key is routed to its family, and a scan across families reads
//! them one after the other, in key order.

use std::ops::Bound;
use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBIterator, DBRawIterator, IteratorMode, Options,
    ReadOptions, DB,
};

use crate::engine::{BatchOp, Cursor, Direction, Durability, Engine, Error, ReadView, Result, ScanIter, WriteBatch};

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
    /// Key ranges kept each in a column family of its own: uncompressed,
    /// with memtables of their own, flushed and compacted apart from the
    /// other keys. For data written in key order and deleted from the
    /// front, such as a log whose writer compresses what is worth it: its
    /// files then never overlap the other keys' files, so compactions move
    /// them down instead of rewriting them, and its bytes stop riding along
    /// in every compaction of the rest. The ranges must be disjoint. A
    /// database records its families in their names, so it opens with the
    /// families it has (a range left out of the options stays where it is)
    /// and gains the ones asked for: the keys of a new range are moved into
    /// its family when the database is opened.
    ///
    /// Each family is flushed on its own. Writes made without the WAL
    /// ([`Durability::Unlogged`]) are therefore atomic across families only
    /// until a crash: after one, a family may hold the writes of a batch
    /// whose other families lost them. Keep in an own family only keys whose
    /// writes can be made again over themselves with the same result (an
    /// Arbor replica re-applies the log after a crash; its history is such
    /// data, the current versions are not: docs/BENCHMARKS.md, item 47).
    pub own_column_families: Vec<KeyRange>,
}

/// The keys `start..end` (end excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }

    fn overlaps(&self, other: &KeyRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The name of the column family holding this range.
    fn family_name(&self) -> String {
        format!("{FAMILY_PREFIX}{}-{}", hex(&self.start), hex(&self.end))
    }

    /// The range a column family named by [`KeyRange::family_name`] holds.
    fn from_family_name(name: &str) -> Option<KeyRange> {
        let (start, end) = name.strip_prefix(FAMILY_PREFIX)?.split_once('-')?;
        let range = KeyRange { start: unhex(start)?, end: unhex(end)? };
        (range.start < range.end).then_some(range)
    }
}

const FAMILY_PREFIX: &str = "keys-";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            background_write_bytes_per_sec: 0,
            direct_background_writes: true,
            own_column_families: Vec::new(),
        }
    }
}

/// A RocksDB database.
pub struct Rocks {
    db: DB,
    layout: Layout,
    direct_background_writes: bool,
}

fn map_err(e: rocksdb::Error) -> Error {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => Error::Corruption(e.into_string()),
        _ => Error::Io(e.into_string()),
    }
}

/// How many bytes of keys and values one synced batch moves into a column
/// family a database gains (see [`Rocks::move_into_own_families`]).
const MOVE_CHUNK_BYTES: usize = 16 << 20;

impl Rocks {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::Io(format!("create {}: {e}", path.display())))?;
        let direct_background_writes = options.direct_background_writes && direct_writes_work(path);
        // One block cache for every family: the budget is the node's.
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let mut opts = family_options(options, &cache, true);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        if options.background_write_bytes_per_sec > 0 {
            let limit = i64::try_from(options.background_write_bytes_per_sec).unwrap_or(i64::MAX);
            // Refilled every 100 ms; fairness 10 (RocksDB's default).
            opts.set_ratelimiter(limit, 100_000, 10);
        }
        opts.set_max_background_jobs(2);
        opts.set_paranoid_checks(true);
        opts.set_use_direct_io_for_flush_and_compaction(direct_background_writes);
        // One thread inserts each write group into the memtable, reusing
        // its search path from key to key (see `write`); concurrent inserts
        // would start every key's search from the top of the skip list.
        opts.set_allow_concurrent_memtable_write(false);
        let layout = Layout::of(path, &opts, options)?;
        let own = layout
            .own
            .iter()
            .map(|(_, name)| ColumnFamilyDescriptor::new(name, family_options(options, &cache, false)));
        let families = std::iter::once(ColumnFamilyDescriptor::new(DEFAULT_FAMILY, opts.clone())).chain(own);
        let db = DB::open_cf_descriptors(&opts, path, families).map_err(map_err)?;
        let rocks = Self { db, layout, direct_background_writes };
        rocks.move_into_own_families()?;
        Ok(rocks)
    }

    /// Moves the keys of each own family's range still in the default
    /// family into it: those of a database that gained the family, written
    /// before. Each batch moves its keys atomically and is synced, and the
    /// default family is searched at every open, so an interrupted move
    /// resumes; once moved, nothing writes those keys to the default family.
    fn move_into_own_families(&self) -> Result<()> {
        let default = self.family(DEFAULT_FAMILY);
        for (range, name) in &self.layout.own {
            let family = self.family(name);
            loop {
                let ro = bounded_reads(range.start.clone(), Some(range.end.clone()));
                let mut batch = rocksdb::WriteBatch::default();
                let (mut bytes, mut last) = (0, None);
                for item in self.db.iterator_cf_opt(default, ro, IteratorMode::Start) {
                    let (k, v) = item.map_err(map_err)?;
                    batch.put_cf(family, &k, &v);
                    bytes += k.len() + v.len();
                    last = Some(k);
                    if bytes >= MOVE_CHUNK_BYTES {
                        break;
                    }
                }
                let Some(last) = last else { break };
                batch.delete_range_cf(default, range.start.as_slice(), &successor(&last));
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                self.db.write_opt(batch, &wo).map_err(map_err)?;
            }
        }
        Ok(())
    }

    fn family(&self, name: &str) -> &ColumnFamily {
        // Layout names only the families the database was opened with.
        self.db.cf_handle(name).expect("an opened column family")
    }

    /// The families holding the keys `start..end`, with their part of it,
    /// in `direction` order.
    fn pieces(&self, start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>, direction: Direction) -> Vec<Piece<'_>> {
        if empty_range(start, end) {
            return Vec::new();
        }
        let lo = match start {
            Bound::Included(s) => s.clone(),
            Bound::Excluded(s) => successor(s),
            Bound::Unbounded => Vec::new(),
        };
        let hi = match end {
            Bound::Included(e) => Some(successor(e)),
            Bound::Excluded(e) => Some(e.clone()),
            Bound::Unbounded => None,
        };
        let mut pieces = self.layout.pieces(lo, hi);
        if direction == Direction::Reverse {
            pieces.reverse();
        }
        pieces
    }

    /// The families holding the keys `start..end` (none if it is empty),
    /// with their part of it, in key order.
    fn bounded_pieces(&self, start: &[u8], end: &[u8]) -> Vec<Piece<'_>> {
        if start >= end {
            return Vec::new();
        }
        self.layout.pieces(start.to_vec(), Some(end.to_vec()))
    }

    /// Every key of `start..end` in `direction` order, reading each family
    /// with `open` (the database or a snapshot of it).
    fn scan_with<'a>(
        &'a self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        direction: Direction,
        open: impl Fn(&'a ColumnFamily, ReadOptions, IteratorMode<'static>) -> DBIterator<'a> + Send + 'a,
    ) -> ScanIter<'a> {
        let pieces = self.pieces(&start, &end, direction);
        to_iter(pieces.into_iter().flat_map(move |piece| {
            let family = self.family(piece.family);
            open(family, bounded_reads(piece.lo, piece.hi), mode(direction))
        }))
    }

    /// A cursor over `start..end`, reading each family with `open` (the
    /// database or a snapshot of it).
    fn cursor_with<'a>(
        &'a self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        open: impl Fn(&'a ColumnFamily, ReadOptions) -> DBRawIterator<'a> + Send + 'a,
    ) -> Box<dyn Cursor + 'a> {
        let pieces = match &end {
            Some(end) if *end <= start => Vec::new(),
            _ => self.layout.pieces(start, end),
        };
        Box::new(RocksCursor { rocks: self, pieces, at: 0, iter: None, open: Box::new(open) })
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

/// The options of one column family: the default one (`compressed`) or
/// one of [`RocksOptions::own_column_families`].
fn family_options(options: &RocksOptions, cache: &rocksdb::Cache, compressed: bool) -> Options {
    use DBCompressionType::{Lz4, None as Plain};
    let mut opts = Options::default();
    if compressed {
        // No compression for memtable flushes (L0) and the first level
        // below them, LZ4 on the others, the bottommost included: most of
        // the Raft log is flushed and then purged before a compaction reaches
        // it, and compressing every flush cost ~3% of the servers' CPU per
        // write (docs/BENCHMARKS.md, item 23). zstd at the bottommost level
        // cost 10-30% of a node's CPU in compactions under a write load, and
        // with dynamic level sizes a small database compacts straight into
        // its bottommost level.
        opts.set_compression_type(Lz4);
        opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
        opts.set_bottommost_compression_type(Lz4);
        // A bloom filter over whole keys in the memtable: point reads of
        // absent keys (every new request id is looked up for dedup) stop
        // searching the skip list.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
    } else {
        opts.set_compression_type(Plain);
        opts.set_bottommost_compression_type(Plain);
    }
    opts.set_write_buffer_size(options.write_buffer_bytes);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Which column family holds which keys: each of `own` its range, the
/// default family every other key.
struct Layout {
    /// Disjoint, sorted by start; each with its family's name.
    own: Vec<(KeyRange, String)>,
}

/// Part `lo..hi` (`hi` `None`: to the end) of a scan or a range delete,
/// held by one family.
struct Piece<'a> {
    family: &'a str,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
}

const DEFAULT_FAMILY: &str = rocksdb::DEFAULT_COLUMN_FAMILY_NAME;

impl Layout {
    /// The families of the database at `path` (none if it is new) and those
    /// `options` ask for. A family this version cannot read the range of, a
    /// range asked for that overlaps one the database keeps and an empty
    /// range are refused.
    fn of(path: &Path, opts: &Options, options: &RocksOptions) -> Result<Self> {
        let existing =
            if path.join("CURRENT").exists() { DB::list_cf(opts, path).map_err(map_err)? } else { Vec::new() };
        let mut own = Vec::new();
        for name in existing.into_iter().filter(|name| name != DEFAULT_FAMILY) {
            let Some(range) = KeyRange::from_family_name(&name) else {
                return Err(Error::Io(format!(
                    "the RocksDB at {} has a column family {name:?} this version does not know",
                    path.display()
                )));
            };
            own.push((range, name));
        }
        for range in &options.own_column_families {
            let name = range.family_name();
            if own.iter().any(|(_, held)| *held == name) {
                continue;
            }
            if range.start >= range.end {
                return Err(Error::Io(format!("an own column family for the empty key range {name:?}")));
            }
            if let Some((_, held)) = own.iter().find(|(r, _)| r.overlaps(range)) {
                return Err(Error::Io(format!(
                    "the keys of {name:?} overlap those of the column family {held:?} of the RocksDB at {}",
                    path.display()
                )));
            }
            own.push((range.clone(), name));
        }
        own.sort_by(|a, b| a.0.start.cmp(&b.0.start));
        Ok(Self { own })
    }

    /// Every family's name: the default one first (index 0), then `own`'s.
    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(DEFAULT_FAMILY).chain(self.own.iter().map(|(_, name)| name.as_str()))
    }

    /// The index in [`Layout::names`] of the family holding `key`.
    fn index_of(&self, key: &[u8]) -> usize {
        self.own.iter().position(|(range, _)| range.contains(key)).map_or(0, |i| i + 1)
    }

    fn family_of(&self, key: &[u8]) -> &str {
        self.names().nth(self.index_of(key)).expect("an index of names()")
    }

    /// `lo..hi` cut where the family changes, in key order; no piece is
    /// empty.
    fn pieces(&self, lo: Vec<u8>, hi: Option<Vec<u8>>) -> Vec<Piece<'_>> {
        let below_hi = |key: &[u8]| hi.as_deref().is_none_or(|hi| key < hi);
        let up_to = |end: &[u8]| match hi.as_deref() {
            Some(hi) if hi < end => hi.to_vec(),
            _ => end.to_vec(),
        };
        let mut pieces = Vec::new();
        let mut at = lo;
        for (range, name) in &self.own {
            if !below_hi(&at) {
                return pieces;
            }
            if range.end <= at {
                continue;
            }
            if at < range.start {
                let end = up_to(&range.start);
                let next = range.start.clone();
                pieces.push(Piece { family: DEFAULT_FAMILY, lo: std::mem::replace(&mut at, next), hi: Some(end) });
                if !below_hi(&at) {
                    return pieces;
                }
            }
            let end = up_to(&range.end);
            pieces.push(Piece { family: name, lo: std::mem::replace(&mut at, range.end.clone()), hi: Some(end) });
        }
        if below_hi(&at) {
            pieces.push(Piece { family: DEFAULT_FAMILY, lo: at, hi });
        }
        pieces
    }
}

fn op_key(op: &BatchOp) -> &[u8] {
    match op {
        BatchOp::Put(k, _) | BatchOp::Delete(k) | BatchOp::DeleteRange(k, _) => k,
    }
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

/// Reads of the keys `lo..hi` (`hi` `None`: to the end).
fn bounded_reads(lo: Vec<u8>, hi: Option<Vec<u8>>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(lo);
    if let Some(hi) = hi {
        ro.set_iterate_upper_bound(hi);
    }
    ro
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
        self.db.get_cf(self.family(self.layout.family_of(key)), key).map_err(map_err)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        self.scan_with(start, end, direction, |family, ro, mode| self.db.iterator_cf_opt(family, ro, mode))
    }

    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
        self.cursor_with(start, end, |family, ro| self.db.raw_iterator_cf_opt(family, ro))
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
        // Each family's handle looked up once per batch, not once per key.
        let families: Vec<&ColumnFamily> = self.layout.names().map(|name| self.family(name)).collect();
        for op in ops {
            match op {
                BatchOp::Put(k, v) => wb.put_cf(families[self.layout.index_of(k)], k, v),
                BatchOp::Delete(k) => wb.delete_cf(families[self.layout.index_of(k)], k),
                BatchOp::DeleteRange(s, e) => {
                    for piece in self.bounded_pieces(s, e) {
                        let hi = piece.hi.expect("a bounded range");
                        wb.delete_range_cf(self.family(piece.family), piece.lo, hi);
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
        for name in self.layout.names() {
            self.db.flush_cf(self.family(name)).map_err(map_err)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        Box::new(RocksSnapshot { rocks: self, snap: self.db.snapshot() })
    }

    fn locate(&self, key: &[u8]) -> String {
        let dir = self.db.path();
        let mut files = match self.db.live_files() {
            Ok(files) => files,
            Err(e) => return format!("the RocksDB at {} (its files could not be listed: {e})", dir.display()),
        };
        // Lowest level first: where the key's current value most likely is.
        files.sort_by_key(|f| f.level);
        let family = self.layout.family_of(key);
        let holding: Vec<String> = files
            .iter()
            .filter(|f| {
                f.column_family_name == family
                    && f.start_key.as_deref().is_some_and(|s| s <= key)
                    && f.end_key.as_deref().is_some_and(|e| key <= e)
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
        // Flushed files only: the C API behind this counts no memtable data.
        let sizes = self.bounded_pieces(start, end).into_iter().map(|piece| {
            let hi = piece.hi.expect("a bounded range");
            let range = rocksdb::Range::new(&piece.lo, &hi);
            self.db.get_approximate_sizes_cf(self.family(piece.family), &[range]).first().copied().unwrap_or(0)
        });
        Ok(sizes.sum())
    }
}

/// A [`Cursor`] reading one family's piece of its range at a time.
struct RocksCursor<'a> {
    rocks: &'a Rocks,
    /// `start..end` cut where the family changes, in key order.
    pieces: Vec<Piece<'a>>,
    /// The piece `iter` reads.
    at: usize,
    iter: Option<DBRawIterator<'a>>,
    open: Box<dyn Fn(&'a ColumnFamily, ReadOptions) -> DBRawIterator<'a> + Send + 'a>,
}

impl<'a> RocksCursor<'a> {
    /// An iterator bounded to piece `i`.
    fn open_piece(&self, i: usize) -> DBRawIterator<'a> {
        let piece = &self.pieces[i];
        let ro = bounded_reads(piece.lo.clone(), piece.hi.clone());
        (self.open)(self.rocks.family(piece.family), ro)
    }

    /// From an iterator past its piece's end, on to the first key of the
    /// next non-empty piece (or past the last one).
    fn settle(&mut self) -> Result<()> {
        loop {
            let Some(iter) = &self.iter else { return Ok(()) };
            if iter.valid() {
                return Ok(());
            }
            iter.status().map_err(map_err)?;
            self.at += 1;
            if self.at == self.pieces.len() {
                self.iter = None;
                return Ok(());
            }
            let mut next = self.open_piece(self.at);
            next.seek_to_first();
            self.iter = Some(next);
        }
    }
}

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let Some(i) = self.pieces.iter().position(|p| p.hi.as_deref().is_none_or(|hi| target < hi)) else {
            self.at = self.pieces.len();
            self.iter = None;
            return Ok(());
        };
        if self.iter.is_none() || self.at != i {
            self.iter = Some(self.open_piece(i));
            self.at = i;
        }
        let lo = self.pieces[i].lo.as_slice();
        let iter = self.iter.as_mut().expect("opened above");
        iter.seek(if target < lo { lo } else { target });
        self.settle()
    }

    fn next(&mut self) -> Result<()> {
        if let Some(iter) = self.iter.as_mut().filter(|iter| iter.valid()) {
            iter.next();
        }
        self.settle()
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        let iter = self.iter.as_ref().filter(|iter| iter.valid())?;
        Some((iter.key()?, iter.value()?))
    }
}

struct RocksSnapshot<'a> {
    rocks: &'a Rocks,
    snap: rocksdb::Snapshot<'a>,
}

impl ReadView for RocksSnapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get_cf(self.rocks.family(self.rocks.layout.family_of(key)), key).map_err(map_err)
    }

    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        self.rocks.scan_with(start, end, direction, |family, ro, mode| self.snap.iterator_cf_opt(family, ro, mode))
    }

    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
        self.rocks.cursor_with(start, end, |family, ro| self.snap.raw_iterator_cf_opt(family, ro))
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

    /// The options RocksDB runs with, from the OPTIONS-<n> files it writes.
    fn options_files(dir: &Path) -> String {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[test]
    fn flushes_are_written_plain_and_lower_levels_in_lz4() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
        let options = options_files(dir.path());
        let per_level = "compression_per_level=kNoCompression:kNoCompression:kLZ4Compression:kLZ4Compression";
        assert!(options.contains(per_level), "{per_level} not in\n{options}");
        assert!(options.contains("bottommost_compression=kLZ4Compression"), "{options}");
    }

    /// The conformance suite on databases opened with `options`.
    fn conformance_with(options: RocksOptions) {
        let dirs = std::sync::Mutex::new(Vec::new());
        crate::conformance::run(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = Rocks::open(dir.path(), &options).expect("open");
            dirs.lock().unwrap().push(dir);
            engine
        });
    }

    #[test]
    fn conformance() {
        conformance_with(RocksOptions::default());
    }

    fn range(start: &[u8], end: &[u8]) -> KeyRange {
        KeyRange { start: start.to_vec(), end: end.to_vec() }
    }

    /// Own families that cut through the keys the conformance suite uses:
    /// scans, range deletes, snapshots and sizes must not see the seams.
    fn split_options() -> RocksOptions {
        let own_column_families = vec![
            range(b"\x00\x00", b"\x01"),
            range(b"/u/a", b"/v"),
            range(b"b", b"c"),
            range(b"s/05", b"s/15"),
            range(b"\xff", b"\xff\xff\x00"),
        ];
        RocksOptions { own_column_families, ..RocksOptions::default() }
    }

    #[test]
    fn conformance_with_own_column_families() {
        conformance_with(split_options());
    }

    #[test]
    fn a_scan_is_cut_where_the_family_changes() {
        let layout = Layout { own: vec![(range(b"b", b"d"), "bd".into()), (range(b"f", b"g"), "fg".into())] };
        let cut = |lo: &[u8], hi: Option<&[u8]>| -> Vec<(String, Vec<u8>, Option<Vec<u8>>)> {
            let pieces = layout.pieces(lo.to_vec(), hi.map(<[u8]>::to_vec));
            pieces.into_iter().map(|p| (p.family.to_string(), p.lo, p.hi)).collect()
        };
        let piece =
            |family: &str, lo: &[u8], hi: Option<&[u8]>| (family.to_string(), lo.to_vec(), hi.map(<[u8]>::to_vec));
        assert_eq!(
            cut(b"", None),
            [
                piece("default", b"", Some(b"b")),
                piece("bd", b"b", Some(b"d")),
                piece("default", b"d", Some(b"f")),
                piece("fg", b"f", Some(b"g")),
                piece("default", b"g", None),
            ]
        );
        assert_eq!(cut(b"c", Some(b"e")), [piece("bd", b"c", Some(b"d")), piece("default", b"d", Some(b"e"))]);
        assert_eq!(cut(b"bb", Some(b"c")), [piece("bd", b"bb", Some(b"c"))], "inside one family");
        assert_eq!(cut(b"a", Some(b"b")), [piece("default", b"a", Some(b"b"))], "ends where a family starts");
        assert_eq!(cut(b"d", Some(b"f")), [piece("default", b"d", Some(b"f"))], "between two families");
        assert_eq!(cut(b"fa", None), [piece("fg", b"fa", Some(b"g")), piece("default", b"g", None)]);
        assert_eq!(layout.family_of(b"b"), "bd");
        assert_eq!(layout.family_of(b"d"), "default", "a range's end is not in it");
        assert_eq!(layout.family_of(b"f\xff"), "fg");
    }

    #[test]
    fn family_names_carry_their_range() {
        let r = range(b"\x05", b"\x06\xff");
        assert_eq!(r.family_name(), "keys-05-06ff");
        assert_eq!(KeyRange::from_family_name(&r.family_name()), Some(r));
        for bad in ["default", "keys-05", "keys-0-06", "keys-zz-06", "keys-06-05", "keys-05-05"] {
            assert_eq!(KeyRange::from_family_name(bad), None, "{bad}");
        }
    }

    /// Keys in and out of `b`..`d`, some flushed to files and some only in
    /// the write-ahead log; the value of each is its key twice.
    fn write_mixed(db: &Rocks) {
        let mut b = WriteBatch::new();
        for key in ["a", "b", "bb", "c"] {
            b.put(key.as_bytes().to_vec(), key.repeat(2).into_bytes());
        }
        db.write(b, Durability::Sync).unwrap();
        db.flush().unwrap();
        let mut b = WriteBatch::new();
        for key in ["ca", "cb", "d", "e"] {
            b.put(key.as_bytes().to_vec(), key.repeat(2).into_bytes());
        }
        db.write(b, Durability::Sync).unwrap();
    }

    fn all_keys(view: &dyn ReadView, direction: Direction) -> Vec<String> {
        let pairs = view.scan(Bound::Unbounded, Bound::Unbounded, direction);
        pairs
            .map(|p| p.unwrap())
            .map(|(k, v)| format!("{}={}", String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_database_that_gains_a_family_moves_its_keys_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let db = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
            write_mixed(&db);
            all_keys(&db, Direction::Forward)
        };
        assert_eq!(before, ["a=aa", "b=bb", "bb=bbbb", "c=cc", "ca=caca", "cb=cbcb", "d=dd", "e=ee"]);
        let split = RocksOptions { own_column_families: vec![range(b"b", b"d")], ..RocksOptions::default() };
        {
            let db = Rocks::open(dir.path(), &split).unwrap();
            assert_eq!(all_keys(&db, Direction::Forward), before);
            let default = db.family(DEFAULT_FAMILY);
            let left: Vec<_> = db.db.iterator_cf(default, IteratorMode::Start).map(|p| p.unwrap().0).collect();
            assert_eq!(
                left,
                [&b"a"[..], b"d", b"e"].map(|k| k.to_vec().into_boxed_slice()),
                "moved out of the default family"
            );
            let moved = db.db.iterator_cf(db.family("keys-62-64"), IteratorMode::Start).count();
            assert_eq!(moved, 5);
            let mut b = WriteBatch::new();
            b.put(b"bc".to_vec(), b"new".to_vec());
            b.delete_range(b"a".to_vec(), b"bb".to_vec());
            db.write(b, Durability::Sync).unwrap();
        }
        // Opened without asking for it, the database keeps its family.
        let db = Rocks::open(dir.path(), &RocksOptions::default()).unwrap();
        let after = ["bb=bbbb", "bc=new", "c=cc", "ca=caca", "cb=cbcb", "d=dd", "e=ee"];
        assert_eq!(all_keys(&db, Direction::Forward), after);
        let mut reversed = all_keys(db.snapshot().as_ref(), Direction::Reverse);
        reversed.reverse();
        assert_eq!(reversed, after);
        assert_eq!(db.get(b"bc").unwrap(), Some(b"new".to_vec()));
        db.flush().unwrap();
        assert!(db.locate(b"bc").ends_with(".sst"), "{}", db.locate(b"bc"));
        assert_ne!(db.locate(b"bc"), db.locate(b"e"), "a family's keys are in files of their own");
    }

    #[test]
    fn a_family_overlapping_one_the_database_keeps_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |ranges: Vec<KeyRange>| RocksOptions { own_column_families: ranges, ..RocksOptions::default() };
        drop(Rocks::open(dir.path(), &with(vec![range(b"b", b"d")])).unwrap());
        let err = Rocks::open(dir.path(), &with(vec![range(b"c", b"e")])).err().expect("refused").to_string();
        assert!(err.contains("keys-63-65") && err.contains("keys-62-64"), "{err}");
        let err = Rocks::open(dir.path(), &with(vec![range(b"e", b"e")])).err().expect("refused").to_string();
        assert!(err.contains("empty key range"), "{err}");
        drop(Rocks::open(dir.path(), &with(vec![range(b"b", b"d"), range(b"d", b"e")])).unwrap());
    }

    #[test]
    fn a_family_of_unknown_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            let mut db = DB::open(&opts, dir.path()).unwrap();
            db.create_cf("tenants", &Options::default()).unwrap();
        }
        let err = Rocks::open(dir.path(), &RocksOptions::default()).err().expect("refused").to_string();
        assert!(err.contains("\"tenants\"") && err.contains("does not know"), "{err}");
    }

    #[test]
    fn every_family_reads_through_one_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions { own_column_families: vec![range(b"b", b"c")], ..RocksOptions::default() };
        let db = Rocks::open(dir.path(), &options).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..2000u32 {
            b.put(format!("b{i:05}").into_bytes(), vec![7; 100]);
        }
        db.write(b, Durability::Sync).unwrap();
        db.flush().unwrap();
        let usage = |family: &str| {
            db.db.property_int_value_cf(db.family(family), "rocksdb.block-cache-usage").unwrap().expect("a property")
        };
        let before = usage(DEFAULT_FAMILY);
        for i in (0..2000u32).step_by(50) {
            assert!(db.get(format!("b{i:05}").as_bytes()).unwrap().is_some());
        }
        assert!(usage("keys-62-63") > before, "reads of the family fill its cache");
        assert_eq!(usage(DEFAULT_FAMILY), usage("keys-62-63"), "one cache, seen from both families");
    }

    #[test]
    fn own_families_are_not_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions { own_column_families: vec![range(b"\x05", b"\x06")], ..RocksOptions::default() };
        drop(Rocks::open(dir.path(), &options).unwrap());
        let text = options_files(dir.path());
        let family = text.split("[CFOptions \"keys-05-06\"]").nth(1).expect("the family's options");
        let family = family.split("[TableOptions").next().unwrap();
        assert!(family.contains("\n  compression=kNoCompression"), "{family}");
        assert!(family.contains("bottommost_compression=kNoCompression"), "{family}");
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
