//! Snapshots of a group: what is recorded when the log is compacted, the
//! images sent to followers behind the log, and installing one.
//!
//! ## Recorded positions and images
//!
//! The group's state is already durable in RocksDB once its memtables are
//! flushed, so compacting the log needs no copy of it: a snapshot this
//! replica takes ([`SnapshotStore::record`]) is a flush followed by a record
//! of the applied position (its meta, without data), after which openraft
//! may purge the log up to that position. This is how TiKV and CockroachDB
//! truncate their logs; a copy of the whole state on every purge cost
//! seconds of CPU and disk on every replica, more as the data grew.
//!
//! A copy is made only when a follower is behind the purged log: openraft
//! then asks for the current snapshot ([`SnapshotStore::current`]), and gets
//! an **image** of the state as it is at that moment, on one engine
//! snapshot (whole epochs only, with the applied state that describes
//! them). Its meta is that applied position, which may be past the recorded
//! one: any committed position is a valid snapshot to send. The image is
//! written by a thread of its own, so the call returns at once; reads of
//! the data wait for it. The latest image is shared by the transfers that
//! ask while the log still covers its position, retries included (see
//! [`super::image`]). A snapshot installed from a leader is stored with its
//! data (a file), so it can be passed on as is until this replica records
//! a newer position.
//!
//! ## Data
//!
//! Snapshot data (what openraft streams), format 1:
//!
//! ```text
//! byte 0      format (1)
//! bytes 1..5  CRC-32 (IEEE, little-endian) of bytes 5..
//! bytes 5..   the zstd-compressed image
//! ```
//!
//! The image is a MessagePack stream of every key of the group's range and
//! state (its current versions and its history). Image format 5, written
//! in one pass over the state:
//!
//! ```text
//! 5                               the format, then chunks of entries:
//! [[key, value], ...]             at most IMAGE_CHUNK_ENTRIES each
//! ...
//! nil                             the end (a stream cut short has none)
//! ```
//!
//! Keys and values are `bin`. Formats 3 and 4 were the same stream, from
//! nodes that stored every version of a key under `Version` keys (format 3
//! also each key's current record under a `Data` key); format 5 has
//! neither, so that nodes of those versions refuse it rather than install
//! a state they cannot read. Formats 1 and 2 were one value, `[format,
//! [[key, value], ...]]` (format 1 with arrays of integers instead of
//! `bin`). All of them still install, their `Data` and `Version` keys
//! converted ([`crate::tree::legacy`]).
//!
//! On a server node the data is a file in `<data_dir>/snapshots`, and it is
//! never whole in memory: an image is streamed through zstd into a file
//! (removed once superseded), a follower
//! writes the leader's chunks into a file, and installing decodes that file
//! as a stream straight into the one WriteBatch that replaces the group's
//! state atomically (so that batch, not the image, is the install's
//! memory). Engines without a directory (tests) keep the data in memory and
//! an installed snapshot's inside the `Key::Snapshot` record.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbor_storage::{Direction, Durability, Engine, ReadView, WriteBatch};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{self, Key};
use crate::raft::SnapshotMeta;
use crate::routing::RangeDesc;
use crate::sequencer::apply::{decode, encode, AppliedState};
use crate::sequencer::image::{Building, Images, Started, Written};
use crate::tree::legacy::ImageRecords;

/// The current data format (see the module docs).
pub(super) const SNAPSHOT_DATA_V1: u8 = 1;
/// The first bytes of a zstd frame: data of a snapshot built before the
/// checksum header existed.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The image format builds write (see the module docs).
const IMAGE_FORMAT: u8 = 5;
/// Entries per chunk of a format 3, 4 or 5 image...
const IMAGE_CHUNK_ENTRIES: u32 = 1024;
/// ...or fewer, once a chunk holds this many bytes.
const IMAGE_CHUNK_BYTES: usize = 1 << 20;
/// zstd level of snapshot images. Compression was 70% of a build's CPU at
/// level 3; on an image of 256-byte random values with their keys and
/// versions, level 1 compresses 2.8× faster (758 against 274 MB/s here)
/// to within 0.2% of the size. Images are transient (they go to a
/// follower), so speed wins.
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;
/// Read buffer for snapshot files.
const READ_BUFFER: usize = 1 << 20;

/// A snapshot's data on this node.
#[derive(Debug)]
pub enum SnapshotContent {
    /// In memory, on engines without a snapshot directory.
    Bytes(Vec<u8>),
    /// An open file in the snapshot directory. It stays readable through
    /// `file` even after a newer snapshot removed `path`.
    File { file: File, path: PathBuf },
    /// An image still being written (see [`SnapshotStore::image`]): it
    /// becomes one of the others when done.
    Building(Building),
}

impl From<Vec<u8>> for SnapshotContent {
    fn from(bytes: Vec<u8>) -> Self {
        SnapshotContent::Bytes(bytes)
    }
}

/// Snapshot data whose checksum matched.
struct Verified {
    /// Where the compressed image starts.
    body_at: u64,
    /// The checksum, which also names the file.
    crc: u32,
}

impl SnapshotContent {
    /// Waits for an image being built to be done (blocking: not on a tokio
    /// worker). Other content is left as it is.
    fn finish(&mut self) -> io::Result<()> {
        if let SnapshotContent::Building(_) = self {
            let SnapshotContent::Building(building) = std::mem::replace(self, SnapshotContent::Bytes(Vec::new()))
            else {
                unreachable!("matched above")
            };
            *self = building.wait()?;
        }
        Ok(())
    }

    /// The data's size in bytes.
    pub fn size(&mut self) -> io::Result<u64> {
        self.finish()?;
        match self {
            SnapshotContent::Bytes(b) => Ok(b.len() as u64),
            SnapshotContent::File { file, .. } => Ok(file.metadata()?.len()),
            SnapshotContent::Building(_) => unreachable!("finished above"),
        }
    }

    /// The whole data, read into memory.
    pub fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        self.finish()?;
        match self {
            SnapshotContent::Bytes(bytes) => Ok(bytes),
            SnapshotContent::File { mut file, .. } => {
                let mut bytes = Vec::new();
                file.seek(SeekFrom::Start(0))?;
                file.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            SnapshotContent::Building(_) => unreachable!("finished above"),
        }
    }

    fn reader_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + '_>> {
        self.finish()?;
        match self {
            SnapshotContent::Bytes(bytes) => Ok(Box::new(bytes.get(offset as usize..).unwrap_or_default())),
            SnapshotContent::File { file, .. } => {
                file.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(BufReader::with_capacity(READ_BUFFER, file)))
            }
            SnapshotContent::Building(_) => unreachable!("finished above"),
        }
    }

    /// Checks the data's header and checksum, reading it as a stream.
    fn verify(&mut self) -> std::result::Result<Verified, String> {
        let read = |e: io::Error| format!("reading: {e}");
        let mut reader = self.reader_at(0).map_err(read)?;
        let mut head = Vec::with_capacity(5);
        (&mut reader).take(5).read_to_end(&mut head).map_err(read)?;
        match head.as_slice() {
            [SNAPSHOT_DATA_V1, c0, c1, c2, c3] => {
                let stored = u32::from_le_bytes([*c0, *c1, *c2, *c3]);
                let mut sum = Checksummed { inner: io::sink(), hasher: crc32fast::Hasher::new() };
                let len = io::copy(&mut reader, &mut sum).map_err(read)?;
                let actual = sum.hasher.finalize();
                if stored != actual {
                    return Err(format!(
                        "checksum mismatch over {len} bytes (stored {stored:#010x}, computed {actual:#010x})"
                    ));
                }
                Ok(Verified { body_at: 5, crc: stored })
            }
            h if h.starts_with(&ZSTD_MAGIC) => {
                tracing::warn!("installing a snapshot from before snapshot checksums: it is not verified");
                Ok(Verified { body_at: 0, crc: 0 })
            }
            [SNAPSHOT_DATA_V1, ..] => Err(format!("snapshot data cut short: {} bytes", head.len())),
            [format, ..] => Err(format!("unknown snapshot data format {format}")),
            [] => Err("empty snapshot data".to_string()),
        }
    }

    /// Writes the data of an image of the entries read from `view` in
    /// `ranges`, unless `cancel` is set first. A file stops short of
    /// leaving less than `reserve` bytes free on its file system.
    fn write_image(
        &mut self,
        view: &dyn ReadView,
        ranges: &[(Vec<u8>, Vec<u8>)],
        cancel: &AtomicBool,
        reserve: u64,
    ) -> Result<()> {
        match self {
            SnapshotContent::Bytes(bytes) => {
                let mut out = Cursor::new(std::mem::take(bytes));
                let written = write_data(&mut out, view, ranges, cancel);
                *bytes = out.into_inner();
                written
            }
            SnapshotContent::File { file, .. } => {
                write_data(&mut WritebackEvery { file, unsynced: 0, reserve }, view, ranges, cancel)
            }
            SnapshotContent::Building(_) => unreachable!("images are written into new content"),
        }
    }
}

/// Bytes of snapshot data a build writes between two `fdatasync`s.
const SYNC_EVERY: u64 = 16 << 20;

/// A snapshot image file being written, synced every [`SYNC_EVERY`] bytes:
/// an image of hundreds of MB left dirty until one final fsync kept the
/// disk busy long enough to delay every log append behind it. Before each
/// [`SYNC_EVERY`] bytes it checks that they leave `reserve` bytes free on
/// the file system ([`keep_reserve`]), else stops with `StorageFull`: an
/// image is as big as the group's state, and a disk it filled would fail
/// the Raft log's appends and the memtable flushes of the leader writing
/// it. The transfer that wanted it fails and is retried later (see
/// `raft::network`).
struct WritebackEvery<'a> {
    file: &'a mut File,
    unsynced: u64,
    reserve: u64,
}

impl Write for WritebackEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.unsynced == 0 {
            keep_reserve(self.file, self.reserve, SYNC_EVERY, "a snapshot image")?;
        }
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for WritebackEvery<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Fails with `StorageFull` if writing `bytes` more on the file system of
/// `at` (a file, or a directory opened read-only) would leave less than
/// `reserve` bytes free (`storage.snapshot_reserve_bytes`; 0: no check).
/// `what` names the writer in the message.
pub(crate) fn keep_reserve(at: &File, reserve: u64, bytes: u64, what: &str) -> io::Result<()> {
    if reserve == 0 {
        return Ok(());
    }
    let free = free_bytes(at)?;
    if free < reserve.saturating_add(bytes) {
        let why = format!(
            "{} MiB free on the data directory's file system; {what} leaves at least {} MiB \
             (storage.snapshot_reserve_bytes)",
            free >> 20,
            reserve >> 20
        );
        return Err(io::Error::new(io::ErrorKind::StorageFull, why));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on `file`'s file system.
fn free_bytes(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero statvfs is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call's duration (`file` is
    // borrowed), and `st` is a valid statvfs to write into.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// A writer that checksums what passes through it.
struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes snapshot data (header, then the image streamed through zstd) and
/// fills in its checksum. Stops with [`Error::Unavailable`] once `cancel`
/// is set.
fn write_data<W: Write + Seek>(
    out: &mut W,
    view: &dyn ReadView,
    ranges: &[(Vec<u8>, Vec<u8>)],
    cancel: &AtomicBool,
) -> Result<()> {
    let io = |e: io::Error| Error::Fatal(format!("snapshot image: {e}"));
    let marker = |e: rmp::encode::ValueWriteError| Error::Fatal(format!("snapshot image: {e}"));
    out.write_all(&[SNAPSHOT_DATA_V1, 0, 0, 0, 0]).map_err(io)?;
    let sink = Checksummed { inner: &mut *out, hasher: crc32fast::Hasher::new() };
    let mut z = zstd::stream::Encoder::new(sink, SNAPSHOT_ZSTD_LEVEL).map_err(io)?;
    rmp::encode::write_uint(&mut z, IMAGE_FORMAT.into()).map_err(marker)?;
    // A chunk is encoded here first: its length goes before it.
    let mut chunk = Vec::new();
    let mut in_chunk: u32 = 0;
    let emit = |z: &mut zstd::stream::Encoder<_>, chunk: &mut Vec<u8>, n: &mut u32| -> Result<()> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Unavailable("snapshot image no longer wanted".to_string()));
        }
        rmp::encode::write_array_len(z, *n).map_err(marker)?;
        z.write_all(chunk).map_err(io)?;
        chunk.clear();
        *n = 0;
        Ok(())
    };
    for (start, end) in ranges {
        for item in scan(view, start, end) {
            let (k, v) = item?;
            rmp::encode::write_array_len(&mut chunk, 2).map_err(marker)?;
            rmp::encode::write_bin(&mut chunk, &k).map_err(marker)?;
            rmp::encode::write_bin(&mut chunk, &v).map_err(marker)?;
            in_chunk += 1;
            if in_chunk == IMAGE_CHUNK_ENTRIES || chunk.len() >= IMAGE_CHUNK_BYTES {
                emit(&mut z, &mut chunk, &mut in_chunk)?;
            }
        }
    }
    if in_chunk > 0 {
        emit(&mut z, &mut chunk, &mut in_chunk)?;
    }
    rmp::encode::write_nil(&mut z).map_err(io)?;
    let crc = z.finish().map_err(io)?.hasher.finalize();
    out.seek(SeekFrom::Start(1)).map_err(io)?;
    out.write_all(&crc.to_le_bytes()).map_err(io)?;
    out.seek(SeekFrom::End(0)).map_err(io)?;
    Ok(())
}

fn scan<'a>(
    view: &'a dyn ReadView,
    start: &[u8],
    end: &[u8],
) -> impl Iterator<Item = arbor_storage::Result<(Vec<u8>, Vec<u8>)>> + 'a {
    view.scan(std::ops::Bound::Included(start.to_vec()), std::ops::Bound::Excluded(end.to_vec()), Direction::Forward)
}

/// Decodes verified data into `wb`: a put per key, except the applied
/// state's, which is returned.
fn read_image(
    content: &mut SnapshotContent,
    verified: &Verified,
    applied_key: &[u8],
    wb: &mut WriteBatch,
    records: &mut ImageRecords,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let reader = content.reader_at(verified.body_at).map_err(|e| format!("reading: {e}"))?;
    let z = zstd::stream::read::Decoder::new(reader).map_err(|e| format!("zstd: {e}"))?;
    let mut z = BufReader::new(z);
    let first = z.fill_buf().map_err(|e| format!("zstd: {e}"))?.first().copied();
    let mut de = rmp_serde::Deserializer::new(z);
    let undecodable = |e: rmp_serde::decode::Error| format!("undecodable image: {e}");
    // Formats 1 and 2: one array `[format, entries]` (0x92).
    if first == Some(0x92) {
        return ImageSink(EntrySink { applied_key, wb, records }).deserialize(&mut de).map_err(undecodable);
    }
    let format = u8::deserialize(&mut de).map_err(undecodable)?;
    if !(3..=IMAGE_FORMAT).contains(&format) {
        return Err(format!("unknown image format {format}"));
    }
    let mut sink = EntrySink { applied_key, wb, records };
    let mut applied = None;
    while let Some(chunk) = Option::<Vec<ImageEntry>>::deserialize(&mut de).map_err(undecodable)? {
        for entry in chunk {
            applied = sink.take(entry).or(applied);
        }
    }
    Ok(applied)
}

/// Deserializes a format 1 or 2 image, `[format, entries]`, sending the
/// entries to its [`EntrySink`].
struct ImageSink<'a>(EntrySink<'a>);

impl<'de> DeserializeSeed<'de> for ImageSink<'_> {
    type Value = Option<Vec<u8>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for ImageSink<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a snapshot image [format, entries]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let format: u8 = seq.next_element()?.ok_or_else(|| A::Error::custom("no image format"))?;
        if !(1..=2).contains(&format) {
            return Err(A::Error::custom(format!("unknown image format {format}")));
        }
        seq.next_element_seed(self.0)?.ok_or_else(|| A::Error::custom("no entries"))
    }
}

/// One `[key, value]` of an image.
type ImageEntry = (serde_bytes::ByteBuf, serde_bytes::ByteBuf);

/// Turns image entries into puts.
struct EntrySink<'a> {
    applied_key: &'a [u8],
    wb: &'a mut WriteBatch,
    /// Versions of images from before format 5, stored as this version no
    /// longer stores them.
    records: &'a mut ImageRecords,
}

impl EntrySink<'_> {
    /// Puts `entry` into the batch, except the applied state's, whose
    /// value it returns, and the records `records` converts.
    fn take(&mut self, (k, v): ImageEntry) -> Option<Vec<u8>> {
        if *k == *self.applied_key {
            return Some(v.into_vec());
        }
        if !self.records.take(&k, &v, self.wb) {
            self.wb.put(k.into_vec(), v.into_vec());
        }
        None
    }
}

impl<'de> DeserializeSeed<'de> for EntrySink<'_> {
    type Value = Option<Vec<u8>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntrySink<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("snapshot entries [[key, value], ...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut sink = self;
        let mut applied = None;
        while let Some(entry) = seq.next_element::<ImageEntry>()? {
            applied = sink.take(entry).or(applied);
        }
        Ok(applied)
    }
}

/// Decodes `content` into a batch that replaces `group`'s range and state
/// (deletes first, then every key of the image), with the applied state
/// the snapshot's meta describes. Corruption is an [`Error::Corruption`]
/// naming the snapshot, before anything is written.
pub(super) fn install_batch(
    group: u64,
    range: &RangeDesc,
    meta: &SnapshotMeta,
    content: &mut SnapshotContent,
) -> Result<(WriteBatch, AppliedState, u32)> {
    let corrupt = |what: String| {
        let msg = format!("snapshot {} of group {group}: {what}; nothing installed", meta.snapshot_id);
        tracing::error!(group, snapshot = %meta.snapshot_id, "{msg}");
        Error::Corruption(msg)
    };
    let verified = content.verify().map_err(corrupt)?;
    let applied_key = Key::Applied(group).encode();
    let mut wb = WriteBatch::new();
    for (start, end) in group_ranges(group, range) {
        wb.delete_range(start, end);
    }
    let mut records = ImageRecords::new(group);
    let applied = read_image(content, &verified, &applied_key, &mut wb, &mut records).map_err(corrupt)?;
    records.finish(&mut wb).map_err(|e| corrupt(e.to_string()))?;
    let mut state: AppliedState = match applied {
        Some(bytes) => decode(&bytes, "applied state")?,
        None => AppliedState::default(),
    };
    // The snapshot's meta is authoritative for what it covers.
    state.last_applied = meta.last_log_id;
    state.membership = meta.last_membership.clone();
    wb.put(applied_key, encode(&state));
    Ok((wb, state, verified.crc))
}

/// A snapshot as stored under `Key::Snapshot(group)`. The data is a
/// MessagePack `bin`; snapshots stored as an array of integers (before
/// that) still decode. With a snapshot directory, the data is in the file
/// `file` there and `data` is empty. A recorded position has neither.
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(default)]
    file: Option<String>,
}

impl StoredSnapshot {
    /// A recorded position, without data (data always has a header).
    fn is_position(&self) -> bool {
        self.data.is_empty() && self.file.is_none()
    }
}

/// [`StoredSnapshot`] for encoding, without copying the data.
#[derive(Serialize)]
struct StoredSnapshotRef<'a> {
    meta: &'a SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
    /// Left out when `None`: the value is then exactly the older
    /// two-field encoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
}

/// Where a group's snapshot data is kept. Without a directory (an engine
/// with no disk, as in tests) an installed snapshot's is inside the
/// `Key::Snapshot` value. With one, it is a file there, fsync'd and renamed
/// into place before the key that names it is written: a snapshot holds the
/// group's whole state, and writing it into RocksDB put hundreds of MB in
/// the WAL that every log append then waited behind (long enough for a
/// follower to call an election).
///
/// Files of `group`: `g{group}-i{index}-{crc}.snap` (an installed snapshot;
/// others with that prefix are older ones, removed when a newer one is
/// stored or a newer position recorded), `g{group}-recv-*.tmp` (a snapshot
/// being received) and `g{group}-image-*.tmp` (the latest image written for
/// followers, removed once superseded). `g{group}-build-*.tmp`
/// were snapshots being built before positions were recorded instead.
#[derive(Clone, Default)]
pub(super) struct SnapshotFiles {
    dir: Option<PathBuf>,
    /// Free bytes an image leaves on the directory's file system (0: no
    /// check; see [`WritebackEvery`]).
    pub(super) reserve: u64,
}

/// Makes temporary file names unique within the process.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

impl SnapshotFiles {
    /// Files in `dir` (created if missing). Temporary files `group` left
    /// behind (a crash during a build or a transfer) are removed.
    pub(super) fn open(dir: PathBuf, group: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "create", e))?;
        let files = SnapshotFiles { dir: Some(dir), reserve: 0 };
        files.remove_matching(|name| {
            name.ends_with(".tmp")
                && ["build", "recv", "image"].iter().any(|purpose| name.starts_with(&format!("g{group}-{purpose}-")))
        });
        Ok(files)
    }

    /// Somewhere new to write snapshot data: a temporary file named for
    /// `purpose` ("image" or "recv"), or memory without a directory.
    pub(super) fn create(&self, group: u64, purpose: &str) -> Result<SnapshotContent> {
        let Some(dir) = &self.dir else { return Ok(SnapshotContent::Bytes(Vec::new())) };
        let n = TEMP_FILES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("g{group}-{purpose}-{}-{n}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(&path, "create", e))?;
        Ok(SnapshotContent::File { file, path })
    }

    /// Removes `group`'s unfinished transfers: openraft receives one
    /// snapshot at a time per group, so a new transfer supersedes them.
    pub(super) fn remove_receives(&self, group: u64) {
        let prefix = format!("g{group}-recv-");
        self.remove_matching(|name| name.starts_with(&prefix) && name.ends_with(".tmp"));
    }

    /// Makes `content` the stored data of `meta` (durably, in its final
    /// place) and returns the `Key::Snapshot` value naming it, with the
    /// file name.
    fn store(
        &self,
        group: u64,
        meta: &SnapshotMeta,
        content: &mut SnapshotContent,
        crc: u32,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let Some(dir) = &self.dir else {
            let bytes = std::mem::replace(content, SnapshotContent::Bytes(Vec::new()))
                .into_bytes()
                .map_err(|e| Error::Storage(arbor_storage::Error::Io(format!("reading snapshot data: {e}"))))?;
            let value = encode(&StoredSnapshotRef { meta, data: &bytes, file: None });
            *content = SnapshotContent::Bytes(bytes);
            return Ok((value, None));
        };
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let name = format!("g{group}-i{index}-{crc:08x}.snap");
        let target = dir.join(&name);
        match content {
            SnapshotContent::File { file, path } => {
                file.sync_all().map_err(|e| io_error(path, "fsync", e))?;
                std::fs::rename(&*path, &target).map_err(|e| io_error(path, "rename", e))?;
                *path = target;
            }
            SnapshotContent::Bytes(bytes) => {
                let tmp = dir.join(format!("{name}.tmp"));
                let mut f = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
                f.write_all(bytes).map_err(|e| io_error(&tmp, "write", e))?;
                f.sync_all().map_err(|e| io_error(&tmp, "fsync", e))?;
                std::fs::rename(&tmp, &target).map_err(|e| io_error(&tmp, "rename", e))?;
            }
            SnapshotContent::Building(_) => unreachable!("installed data is verified first, which finishes it"),
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, "fsync directory", e))?;
        Ok((encode(&StoredSnapshotRef { meta, data: &[], file: Some(&name) }), Some(name)))
    }

    /// The data of a stored snapshot, opened, or why it cannot be.
    fn load(&self, stored: StoredSnapshot) -> std::result::Result<SnapshotContent, String> {
        match (&stored.file, &self.dir) {
            (None, _) => Ok(SnapshotContent::Bytes(stored.data)),
            (Some(name), Some(dir)) => {
                let path = dir.join(name);
                match File::open(&path) {
                    Ok(file) => Ok(SnapshotContent::File { file, path }),
                    Err(e) => Err(format!("{}: {e}", path.display())),
                }
            }
            (Some(name), None) => Err(format!("{name} is in a snapshot directory this node was not given")),
        }
    }

    /// Removes `group`'s snapshot files other than `keep` (older snapshots,
    /// and temporary files of interrupted stores): `g{group}-i{index}-…`,
    /// not the images (`g{group}-image-…`), which [`Images`] removes.
    fn remove_others(&self, group: u64, keep: Option<&str>) {
        let prefix = format!("g{group}-i");
        self.remove_matching(|name| {
            let stored = name.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            stored && Some(name) != keep
        });
    }

    fn remove_matching(&self, remove: impl Fn(&str) -> bool) {
        let Some(dir) = &self.dir else { return };
        let Ok(listing) = std::fs::read_dir(dir) else { return };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if remove(&name) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!("could not remove the snapshot file {name}: {e}");
                }
            }
        }
    }
}

fn io_error(path: &Path, what: &str, e: io::Error) -> Error {
    Error::Storage(arbor_storage::Error::Io(format!("snapshot file {}: {what}: {e}", path.display())))
}

/// Records, stores and reads back a group's snapshots, and writes images
/// of its state, without holding the state machine: epochs keep being
/// applied meanwhile.
#[derive(Clone)]
pub struct SnapshotStore {
    pub(super) group: u64,
    pub(super) range: RangeDesc,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) durability: Durability,
    /// Held while `Key::Snapshot` is replaced, by records and installs
    /// alike, so a record that read an older position never overwrites a
    /// newer snapshot installed meanwhile (and while a stored snapshot is
    /// opened).
    pub(super) lock: Arc<Mutex<()>>,
    pub(super) files: SnapshotFiles,
    /// The latest image written for a follower.
    pub(super) images: Images,
}

/// What `Key::Snapshot` holds.
enum Stored {
    /// No snapshot yet.
    Nothing,
    /// A recorded position, or data that can no longer be sent (damaged
    /// or gone), with its meta: an image at least as new replaces it.
    Position(SnapshotMeta),
    /// An installed snapshot's data, verified.
    Data(SnapshotMeta, SnapshotContent),
}

impl SnapshotStore {
    /// Records the group's applied position as its snapshot, once a flush
    /// made the state up to it durable, and returns its meta. openraft may
    /// then purge the log up to it. A snapshot stored at that position or
    /// a newer one (installed meanwhile) is kept, and its meta returned.
    pub fn record(&self) -> Result<SnapshotMeta> {
        let meta = self.meta_of(&read_applied(self.engine.as_ref(), self.group)?);
        // Apply batches are unlogged (see "Durability" in `apply`): only a
        // flush makes the state up to `meta` durable. It must come before
        // the record, because once recorded, openraft may purge the log
        // entries a restarted replica would re-apply.
        self.engine.flush()?;
        let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = self.read_stored()? {
            if stored.meta.last_log_id >= meta.last_log_id {
                return Ok(stored.meta);
            }
        }
        let mut wb = WriteBatch::new();
        wb.put(Key::Snapshot(self.group).encode(), encode(&StoredSnapshotRef { meta: &meta, data: &[], file: None }));
        self.engine.write(wb, self.durability)?;
        self.files.remove_others(self.group, None);
        self.images.supersede_below(&meta);
        Ok(meta)
    }

    fn meta_of(&self, applied: &AppliedState) -> SnapshotMeta {
        let index = applied.last_applied.map_or(0, |l| l.index);
        SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("g{}-i{}-s{}", self.group, index, applied.stamp),
        }
    }

    /// An image of the group's state for a follower behind the log, at the
    /// recorded position or past it, with its meta (the position it is
    /// at). The latest image is shared (see [`super::image`]); a new one
    /// is written by a thread of its own, and this returns at once with
    /// content whose reads wait for it.
    pub fn image(&self) -> Result<(SnapshotMeta, SnapshotContent)> {
        let recorded = self.read_stored()?.map(|stored| stored.meta);
        self.image_at_least(recorded.as_ref())
    }

    /// [`SnapshotStore::image`], the stored snapshot's meta already read.
    fn image_at_least(&self, stored: Option<&SnapshotMeta>) -> Result<(SnapshotMeta, SnapshotContent)> {
        self.images.get(stored, |started| self.start_image(started))
    }

    /// Starts the thread writing a new image, and returns its meta once the
    /// thread has taken the engine snapshot it writes from.
    fn start_image(&self, started: &Started) -> Result<SnapshotMeta> {
        let store = self.clone();
        let (id, progress, stop) = (started.id, started.progress.clone(), started.stop.clone());
        let (meta_tx, meta_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("snapshot-g{}", self.group))
            .spawn(move || {
                let (started, cpu) = (std::time::Instant::now(), thread_cpu_time());
                let view = store.engine.snapshot();
                let meta = match read_applied(&*view, store.group) {
                    Ok(applied) => store.meta_of(&applied),
                    Err(e) => {
                        let _ = meta_tx.send(Err(e));
                        return;
                    }
                };
                let _ = meta_tx.send(Ok(meta.clone()));
                let written = store.write_image(&*view, &stop);
                drop(view);
                match &written {
                    Ok((_, bytes)) => tracing::info!(
                        snapshot = %meta.snapshot_id,
                        bytes,
                        ms = started.elapsed().as_millis() as u64,
                        cpu_ms = thread_cpu_time().saturating_sub(cpu).as_millis() as u64,
                        "wrote a snapshot image for a follower"
                    ),
                    Err(Error::Unavailable(_)) => {
                        tracing::info!(snapshot = %meta.snapshot_id, "snapshot image no longer wanted")
                    }
                    Err(e) => {
                        tracing::error!(snapshot = %meta.snapshot_id, error = %e, "writing a snapshot image failed")
                    }
                }
                store.images.finish(id, &progress, written.map(|(image, _)| image).map_err(|e| e.to_string()));
            })
            .map_err(|e| Error::Fatal(format!("starting a snapshot image thread: {e}")))?;
        meta_rx.recv().map_err(|_| Error::Fatal("the snapshot image thread stopped".to_string()))?
    }

    /// Writes the image of `view` into a new file (or memory), unless
    /// `stop` is set first, and returns it with its size.
    fn write_image(&self, view: &dyn ReadView, stop: &AtomicBool) -> Result<(Written, u64)> {
        let mut content = self.files.create(self.group, "image")?;
        let ranges = group_ranges(self.group, &self.range);
        if let Err(e) = content.write_image(view, &ranges, stop, self.files.reserve) {
            discard(&content);
            return Err(e);
        }
        let bytes = content.size().unwrap_or(0);
        match content {
            SnapshotContent::File { path, .. } => Ok((Written::File(path), bytes)),
            SnapshotContent::Bytes(data) => Ok((Written::Bytes(Arc::new(data)), bytes)),
            SnapshotContent::Building(_) => unreachable!("images are written into new content"),
        }
    }

    /// Stores `content` as the current snapshot, with `extra` (if any) in
    /// the same batch as the record naming it.
    pub(super) fn store_with(
        &self,
        meta: &SnapshotMeta,
        content: &mut SnapshotContent,
        crc: u32,
        mut wb: WriteBatch,
    ) -> Result<()> {
        let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (value, file) = self.files.store(self.group, meta, content, crc)?;
        wb.put(Key::Snapshot(self.group).encode(), value);
        self.engine.write(wb, self.durability)?;
        self.files.remove_others(self.group, file.as_deref());
        self.images.clear();
        Ok(())
    }

    fn read_stored(&self) -> Result<Option<StoredSnapshot>> {
        match self.engine.get(&Key::Snapshot(self.group).encode())? {
            Some(bytes) => Ok(Some(decode(&bytes, "stored snapshot")?)),
            None => Ok(None),
        }
    }

    /// The snapshot to send to a follower behind the log: the stored data
    /// of an installed snapshot, verified, or else an image of the current
    /// state (see [`SnapshotStore::image`]). `None` before the first
    /// snapshot.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotContent)>> {
        match self.stored()? {
            Stored::Nothing => Ok(None),
            Stored::Position(meta) => self.image_at_least(Some(&meta)).map(Some),
            Stored::Data(meta, content) => Ok(Some((meta, content))),
        }
    }

    /// The stored snapshot if it has data that can be sent; `None` for a
    /// recorded position.
    pub fn stored_data(&self) -> Result<Option<(SnapshotMeta, SnapshotContent)>> {
        match self.stored()? {
            Stored::Data(meta, content) => Ok(Some((meta, content))),
            Stored::Nothing | Stored::Position(_) => Ok(None),
        }
    }

    /// What `Key::Snapshot` holds. Data whose checksum no longer matches
    /// (damaged on this node's disk) or whose file is gone is never sent,
    /// since every receiver would refuse it: it counts as a position.
    fn stored(&self) -> Result<Stored> {
        let key = Key::Snapshot(self.group).encode();
        let found = {
            let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            match self.read_stored()? {
                None => return Ok(Stored::Nothing),
                Some(stored) if stored.is_position() => return Ok(Stored::Position(stored.meta)),
                Some(stored) => {
                    let at = match &stored.file {
                        Some(name) => name.clone(),
                        None => self.engine.locate(&key),
                    };
                    (stored.meta.clone(), at, self.files.load(stored))
                }
            }
        };
        let (meta, at, opened) = found;
        match opened.and_then(|mut content| content.verify().map(|_| content)) {
            Ok(content) => Ok(Stored::Data(meta, content)),
            Err(why) => {
                tracing::error!(
                    group = self.group,
                    snapshot = %meta.snapshot_id,
                    "the stored snapshot in {at} is damaged ({why}); sending an image of the current state instead"
                );
                Ok(Stored::Position(meta))
            }
        }
    }
}

/// The applied state `view` holds for `group`.
fn read_applied(view: &dyn ReadView, group: u64) -> Result<AppliedState> {
    match view.get(&Key::Applied(group).encode())? {
        Some(b) => decode(&b, "applied state"),
        None => Ok(AppliedState::default()),
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> std::time::Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write into; the clock id is a
    // constant every Linux kernel supports.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    } else {
        std::time::Duration::ZERO
    }
}

/// Removes the file of data that will not be stored (an open `file`
/// stays readable).
fn discard(content: &SnapshotContent) {
    if let SnapshotContent::File { path, .. } = content {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }
}

/// Every key range holding `group`'s state and its range's data.
pub(super) fn group_ranges(group: u64, range: &RangeDesc) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut ranges = keys::group_state_ranges(group);
    ranges.push(keys::current_bounds(&range.start, &range.end));
    ranges
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::hlc::{Hlc, ManualClock};
    use crate::sequencer::GroupStateMachine;

    fn open_memory() -> (Arc<arbor_storage::Memory>, GroupStateMachine) {
        let engine = Arc::new(arbor_storage::Memory::new());
        let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 500));
        let range = RangeDesc { group: 1, start: Vec::new(), end: Vec::new() };
        let sm = GroupStateMachine::open(range, engine.clone(), 1, Default::default(), hlc, Durability::Sync).unwrap();
        (engine, sm)
    }

    fn record(value: Vec<u8>) -> crate::tree::Record {
        crate::tree::Record { value: value.into(), version: 1, create_stamp: 1, mod_stamp: 1 }
    }

    fn put(engine: &arbor_storage::Memory, key: &[u8], value: Vec<u8>) {
        let mut wb = WriteBatch::new();
        wb.put(Key::Current(key).encode(), crate::tree::encode_stored(1, 0, Some(&record(value))));
        engine.write(wb, Durability::Sync).unwrap();
    }

    /// The current value of `key` in `engine`.
    fn value_of(engine: &arbor_storage::Memory, key: &[u8]) -> Option<Vec<u8>> {
        use crate::tree::TreeRead;
        crate::tree::VersionedTree::latest(engine).get(key).unwrap().map(|r| r.value.to_vec())
    }

    /// How many keys `engine` has current records of.
    fn count_records(engine: &arbor_storage::Memory) -> usize {
        use crate::tree::TreeRead;
        let all = crate::tree::KeyRange { start: Vec::new(), end: Vec::new() };
        crate::tree::VersionedTree::latest(engine).scan(&all).count()
    }

    /// Snapshot data as built before images were streamed with `bin` keys
    /// and values: format 1, arrays of integers.
    fn format_1_data(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        #[derive(Serialize)]
        struct OldImage {
            format: u8,
            entries: Vec<(Vec<u8>, Vec<u8>)>,
        }
        data_of_image(&rmp_serde::to_vec(&OldImage { format: 1, entries }).unwrap())
    }

    /// `[[key, value], ...]`, keys and values `bin`.
    fn write_entries(image: &mut Vec<u8>, entries: Vec<(Vec<u8>, Vec<u8>)>) {
        rmp::encode::write_array_len(image, entries.len() as u32).unwrap();
        for (k, v) in entries {
            rmp::encode::write_array_len(image, 2).unwrap();
            rmp::encode::write_bin(image, &k).unwrap();
            rmp::encode::write_bin(image, &v).unwrap();
        }
    }

    /// Format 2: one array `[2, [[key, value], ...]]`, keys and values `bin`.
    fn format_2_data(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        let mut image = Vec::new();
        rmp::encode::write_array_len(&mut image, 2).unwrap();
        rmp::encode::write_uint(&mut image, 2).unwrap();
        write_entries(&mut image, entries);
        data_of_image(&image)
    }

    /// Snapshot data (header, checksum, zstd) around an image.
    fn data_of_image(image: &[u8]) -> Vec<u8> {
        let compressed = zstd::bulk::compress(image, 3).unwrap();
        let mut data = vec![SNAPSHOT_DATA_V1];
        data.extend_from_slice(&crc32fast::hash(&compressed).to_le_bytes());
        data.extend_from_slice(&compressed);
        data
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    fn bytes(content: SnapshotContent) -> Vec<u8> {
        content.into_bytes().unwrap()
    }

    fn current_bytes(sm: &mut GroupStateMachine) -> Option<(SnapshotMeta, Vec<u8>)> {
        sm.current_snapshot().unwrap().map(|(meta, content)| (meta, bytes(content)))
    }

    /// Moves the applied position of group 1 on `engine` to `index`, as
    /// an epoch would.
    fn advance(engine: &arbor_storage::Memory, sm: &GroupStateMachine, index: u64) {
        let last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), index));
        let state = AppliedState { last_applied, stamp: index, ..sm.applied().clone() };
        let mut wb = WriteBatch::new();
        wb.put(Key::Applied(1).encode(), encode(&state));
        engine.write(wb, Durability::Sync).unwrap();
    }

    #[test]
    fn a_snapshot_is_a_recorded_position_and_a_follower_gets_an_image_of_the_state_as_it_is_now() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        let (source, sm) = open_memory();
        let mut sm = sm.with_snapshot_dir(dir.clone()).unwrap();
        put(&source, b"/a", vec![7; 1000]);
        advance(&source, &sm, 3);
        let meta = sm.record_snapshot().unwrap();
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(3));
        let stored = source.get(&Key::Snapshot(1).encode()).unwrap().unwrap();
        assert!(stored.len() < 200, "only the meta in RocksDB: {} bytes", stored.len());
        assert!(files_in(&dir).is_empty(), "no copy of the state: {:?}", files_in(&dir));
        assert!(sm.stored_snapshot().unwrap().is_none(), "a position has no data to send");
        assert_eq!(sm.record_snapshot().unwrap(), meta, "recording the same position again changes nothing");

        // The state moves on; a follower behind the log gets an image of
        // it as it is now, past the recorded position.
        put(&source, b"/b", vec![8; 10]);
        advance(&source, &sm, 5);
        let (image_meta, image) = sm.current_snapshot().unwrap().unwrap();
        assert_eq!(image_meta.last_log_id.map(|l| l.index), Some(5));
        assert!(matches!(image, SnapshotContent::Building(_)), "{image:?}");
        let data = bytes(image);
        let (target, mut other) = open_memory();
        other.install_snapshot(&image_meta, data.clone().into()).unwrap();
        assert_eq!(value_of(&target, b"/a"), Some(vec![7; 1000]));
        assert_eq!(value_of(&target, b"/b"), Some(vec![8; 10]));
        assert_eq!(other.applied().last_applied, image_meta.last_log_id);
        assert_eq!(other.applied().stamp, 5, "the applied state travels in the image");

        // Another transfer (or a retry) while the log still covers the
        // image's position gets the same image, already written.
        let image_files = files_in(&dir);
        assert!(image_files.len() == 1 && image_files[0].starts_with("g1-image-"), "{image_files:?}");
        assert_eq!(sm.record_snapshot().unwrap().last_log_id.map(|l| l.index), Some(5));
        assert_eq!(files_in(&dir), image_files, "a record at the image's position leaves it");
        advance(&source, &sm, 7);
        let (again_meta, again) = sm.current_snapshot().unwrap().unwrap();
        assert_eq!(again_meta, image_meta);
        assert!(matches!(again, SnapshotContent::File { .. }), "{again:?}");
        assert_eq!(bytes(again), data);
        assert_eq!(files_in(&dir), image_files);

        // A newer recorded position supersedes it: its file goes, and the
        // next transfer gets a new image.
        assert_eq!(sm.record_snapshot().unwrap().last_log_id.map(|l| l.index), Some(7));
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        let (newer, image) = sm.current_snapshot().unwrap().unwrap();
        assert_eq!(newer.last_log_id.map(|l| l.index), Some(7));
        drop(image);
    }

    /// A replica with a snapshot directory `dir`, `keys` keys of
    /// `value_len` bytes and the applied position 2.
    fn filled(dir: &Path, keys: usize, value_len: usize) -> GroupStateMachine {
        let (source, sm) = open_memory();
        let sm = sm.with_snapshot_dir(dir.to_path_buf()).unwrap();
        for i in 0..keys {
            put(&source, format!("/k{i:05}").as_bytes(), vec![i as u8; value_len]);
        }
        advance(&source, &sm, 2);
        sm
    }

    #[test]
    fn transfers_asking_while_an_image_is_written_share_it() {
        let tmp = tempfile::tempdir().unwrap();
        let sm = filled(tmp.path(), 20_000, 200);
        let (meta, first) = sm.snapshot_image().unwrap();
        let (same, second) = sm.snapshot_image().unwrap();
        assert_eq!(same, meta);
        match (&first, &second) {
            (SnapshotContent::Building(_), SnapshotContent::Building(_) | SnapshotContent::File { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(bytes(first), bytes(second), "one image, read twice");
        assert_eq!(files_in(tmp.path()).len(), 1);
    }

    #[test]
    fn the_reserve_is_kept_on_the_file_system_of_a_file_or_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let file = File::create(tmp.path().join("f")).unwrap();
        for at in [&dir, &file] {
            keep_reserve(at, 0, u64::MAX, "anything").unwrap();
            keep_reserve(at, 1, 1, "a small write").unwrap();
            let err = keep_reserve(at, u64::MAX, 1, "a snapshot being received").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::StorageFull);
            let err = err.to_string();
            assert!(err.contains("MiB free on the data directory's file system"), "{err}");
            assert!(err.contains("a snapshot being received leaves at least"), "{err}");
        }
    }

    #[test]
    fn an_image_that_would_eat_into_the_disk_reserve_fails_and_the_next_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let sm = filled(tmp.path(), 100, 200).with_snapshot_reserve(u64::MAX);
        let (_, image) = sm.snapshot_image().unwrap();
        let err = image.into_bytes().unwrap_err().to_string();
        assert!(err.contains("MiB free") && err.contains("storage.snapshot_reserve_bytes"), "{err}");
        assert_eq!(files_in(tmp.path()), Vec::<String>::new(), "the failed image's file is removed");

        let sm = sm.with_snapshot_reserve(1);
        let (meta, image) = sm.snapshot_image().unwrap();
        let (other, mut other_sm) = open_memory();
        other_sm.install_snapshot(&meta, bytes(image).into()).unwrap();
        assert_eq!(count_records(&other), 100);
    }

    #[test]
    fn an_installed_snapshot_is_sent_as_is_until_damaged_or_a_newer_position_is_recorded() {
        let (source, sm) = open_memory();
        put(&source, b"/a", b"record-a".to_vec());
        advance(&source, &sm, 4);
        let (meta, image) = sm.snapshot_image().unwrap();
        let data = bytes(image);

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("b");
        let (target, other) = open_memory();
        let mut other = other.with_snapshot_dir(dir.clone()).unwrap();
        other.install_snapshot(&meta, data.clone().into()).unwrap();
        assert_eq!(current_bytes(&mut other), Some((meta.clone(), data.clone())), "sent as is");
        assert!(other.stored_snapshot().unwrap().is_some());
        let files = files_in(&dir);
        assert!(files.len() == 1 && files[0].starts_with("g1-i4-") && files[0].ends_with(".snap"), "{files:?}");
        assert_eq!(other.record_snapshot().unwrap(), meta, "no newer position: the installed snapshot stays");
        assert_eq!(files_in(&dir), files);

        // Damage the file: an image of the current state is sent instead.
        let path = dir.join(&files[0]);
        let mut damaged = std::fs::read(&path).unwrap();
        *damaged.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, damaged).unwrap();
        assert!(other.stored_snapshot().unwrap().is_none(), "damaged data is not offered at start-up");
        let (_, mut image) = other.current_snapshot().unwrap().unwrap();
        assert!(matches!(image, SnapshotContent::Building(_)), "{image:?}");
        assert!(image.verify().is_ok());
        // Or delete it: the same.
        std::fs::remove_file(&path).unwrap();
        let (_, mut image) = other.current_snapshot().unwrap().unwrap();
        assert!(image.verify().is_ok());

        // A newer position replaces the installed snapshot, and its file goes.
        other.install_snapshot(&meta, data.into()).unwrap();
        assert_eq!(files_in(&dir).len(), 1);
        advance(&target, &other, 9);
        let newer = other.record_snapshot().unwrap();
        assert_eq!(newer.last_log_id.map(|l| l.index), Some(9));
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        assert!(other.stored_snapshot().unwrap().is_none());
    }

    #[test]
    fn an_image_stops_once_nobody_wants_it() {
        let (source, sm) = open_memory();
        for i in 0..2 * IMAGE_CHUNK_ENTRIES {
            put(&source, format!("/k{i:05}").as_bytes(), b"v".to_vec());
        }
        drop(sm);
        let ranges = group_ranges(1, &RangeDesc { group: 1, start: Vec::new(), end: Vec::new() });
        let view = source.snapshot();
        let mut out = Cursor::new(Vec::new());
        let err = write_data(&mut out, &*view, &ranges, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(write_data(&mut out, &*view, &ranges, &AtomicBool::new(false)).is_ok());
    }

    /// openraft's chunked sender seeks to the end, then reads from offsets:
    /// on an image still being written both wait for it.
    #[tokio::test]
    async fn snapshot_data_of_an_image_waits_for_it_then_seeks_and_reads() {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let tmp = tempfile::tempdir().unwrap();
        let sm = filled(tmp.path(), 3000, 100);
        let (meta, image) = sm.snapshot_image().unwrap();
        let mut data = crate::raft::snapshot_data::SnapshotData::from(image);
        let end = data.seek(SeekFrom::End(0)).await.unwrap();
        // From an offset, as the sender reads chunks; byte 0 is the format.
        data.seek(SeekFrom::Start(1)).await.unwrap();
        let mut read = vec![SNAPSHOT_DATA_V1];
        data.read_to_end(&mut read).await.unwrap();
        assert_eq!(read.len() as u64, end);
        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, read.into()).unwrap();
        let keys = count_records;
        assert_eq!(keys(&target), 3000);
    }

    #[test]
    fn a_received_file_becomes_the_stored_snapshot_and_unfinished_transfers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (source, sm) = open_memory();
        put(&source, b"/a", b"record-a".to_vec());
        let (meta, built) = sm.snapshot_image().unwrap();
        let data = bytes(built);

        let dir = tmp.path().join("recv");
        let (target, other) = open_memory();
        let mut other = other.with_snapshot_dir(dir.clone()).unwrap();
        let abandoned = other.receive_snapshot().unwrap();
        assert_eq!(files_in(&dir).len(), 1, "a temporary file for the transfer");
        let mut received = other.receive_snapshot().unwrap();
        let SnapshotContent::File { file, path } = &mut received else { panic!("{received:?}") };
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("g1-recv-"));
        assert_eq!(files_in(&dir).len(), 1, "the abandoned transfer's file is gone: {:?}", files_in(&dir));
        drop(abandoned);
        file.write_all(&data).unwrap();
        other.install_snapshot(&meta, received).unwrap();
        assert_eq!(value_of(&target, b"/a"), Some(b"record-a".to_vec()));
        let files = files_in(&dir);
        assert!(files.len() == 1 && files[0].ends_with(".snap"), "renamed into place: {files:?}");
        assert_eq!(current_bytes(&mut other), Some((meta, data)));
    }

    #[test]
    fn leftover_temporary_files_of_the_group_are_removed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for name in
            ["g1-build-7-0.tmp", "g1-recv-7-1.tmp", "g12-recv-7-2.tmp", "g2-build-7-3.tmp", "g1-i5-00000000.snap"]
        {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let (_, sm) = open_memory();
        let _sm = sm.with_snapshot_dir(dir.clone()).unwrap();
        assert_eq!(files_in(&dir), ["g1-i5-00000000.snap", "g12-recv-7-2.tmp", "g2-build-7-3.tmp"]);
    }

    #[test]
    fn streamed_snapshots_install_and_format_1_and_2_images_still_do() {
        let (source, sm) = open_memory();
        put(&source, b"/a", b"record-a".to_vec());
        put(&source, b"/b", vec![0xff; 300]);
        let (meta, built) = sm.snapshot_image().unwrap();
        let data = bytes(built);
        assert_eq!(data[0], SNAPSHOT_DATA_V1);

        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, data.into()).unwrap();
        assert_eq!(value_of(&target, b"/b"), Some(vec![0xff; 300]));
        assert_eq!(value_of(&target, b"/a"), Some(b"record-a".to_vec()));

        let (old_target, mut third) = open_memory();
        let old_record = |v: &[u8]| crate::tree::encode_record(&record(v.to_vec()));
        let old = format_1_data(vec![(Key::Data(b"/c").encode(), old_record(b"record-c"))]);
        third.install_snapshot(&meta, old.into()).unwrap();
        assert_eq!(value_of(&old_target, b"/c"), Some(b"record-c".to_vec()));
        assert_eq!(current_bytes(&mut third).map(|(m, _)| m), Some(meta.clone()));

        let (old_target, mut fourth) = open_memory();
        let old = format_2_data(vec![(Key::Data(b"/d").encode(), old_record(b"record-d"))]);
        fourth.install_snapshot(&meta, old.into()).unwrap();
        assert_eq!(value_of(&old_target, b"/d"), Some(b"record-d".to_vec()));
    }

    /// Format 3, as nodes that also stored `Data` keys wrote it.
    fn format_3_data(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        let mut image = Vec::new();
        rmp::encode::write_uint(&mut image, 3).unwrap();
        write_entries(&mut image, entries);
        rmp::encode::write_nil(&mut image).unwrap();
        data_of_image(&image)
    }

    #[test]
    fn the_data_and_version_keys_of_older_images_install_as_current_versions_and_history() {
        use crate::tree::{encode_record, encode_version, TreeRead, VersionedTree};
        let (source, sm) = open_memory();
        let (meta, _) = sm.snapshot_image().unwrap();
        let at = |v: &str, stamp: u64| crate::tree::Record {
            value: bytes::Bytes::copy_from_slice(v.as_bytes()),
            version: 1,
            create_stamp: stamp,
            mod_stamp: stamp,
        };
        // In key order, as images are written: `Data` keys before versions.
        // `/x` has versions (its `Data` key is its newest one), `/y` none
        // (written before versions existed).
        let entries = vec![
            (Key::Data(b"/x").encode(), encode_record(&at("x-now", 5))),
            (Key::Data(b"/y").encode(), encode_record(&at("y", 0))),
            (Key::Version(b"/x", 5, 0).encode(), encode_version(Some(&at("x-now", 5)))),
            (Key::Version(b"/x", 3, 0).encode(), encode_version(Some(&at("x-old", 3)))),
        ];
        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, format_3_data(entries).into()).unwrap();
        assert_eq!(value_of(&target, b"/x"), Some(b"x-now".to_vec()));
        assert_eq!(VersionedTree::new(target.as_ref(), 1, 4).get(b"/x").unwrap().unwrap().value, &b"x-old"[..]);
        assert_eq!(VersionedTree::new(target.as_ref(), 1, 2).get(b"/x").unwrap(), None);
        assert_eq!(value_of(&target, b"/y"), Some(b"y".to_vec()));
        assert_eq!(
            VersionedTree::new(target.as_ref(), 1, 1).get(b"/y").unwrap().unwrap().value,
            &b"y"[..],
            "at stamp 0"
        );
        assert_eq!(target.scan_prefix(&keys::data_prefix()).count(), 0, "no `Data` key is stored");
        let (start, end) = keys::version_bounds(b"", b"");
        let versions =
            target.scan(std::ops::Bound::Included(start), std::ops::Bound::Excluded(end), Direction::Forward);
        assert_eq!(versions.count(), 0, "no `Version` key is stored");
        drop(source);

        let broken = vec![(Key::Data(b"/z").encode(), b"not a record".to_vec())];
        let err = open_memory().1.install_snapshot(&meta, format_3_data(broken).into()).unwrap_err().to_string();
        assert!(err.contains("bad record encoding") && err.contains("nothing installed"), "{err}");
    }

    #[test]
    fn an_image_of_many_chunks_installs_whole_and_one_cut_short_is_refused() {
        let (source, sm) = open_memory();
        let n = 3 * IMAGE_CHUNK_ENTRIES as usize + 7;
        for i in 0..n {
            put(&source, format!("/k{i:05}").as_bytes(), format!("v{i}").into_bytes());
        }
        // Chunks are also cut by size: a few large values.
        for i in 0..3 {
            put(&source, format!("/big{i}").as_bytes(), vec![i as u8; IMAGE_CHUNK_BYTES / 2 + 1]);
        }
        let (meta, built) = sm.snapshot_image().unwrap();
        let data = bytes(built);

        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, data.clone().into()).unwrap();
        for i in [0, IMAGE_CHUNK_ENTRIES as usize - 1, IMAGE_CHUNK_ENTRIES as usize, n - 1] {
            let got = value_of(&target, format!("/k{i:05}").as_bytes());
            assert_eq!(got, Some(format!("v{i}").into_bytes()), "key {i}");
        }
        let big = value_of(&target, b"/big2").unwrap();
        assert_eq!(big.len(), IMAGE_CHUNK_BYTES / 2 + 1);
        let keys = count_records;
        assert_eq!(keys(&target), keys(&source), "every key of the source");
        assert_eq!(other.applied(), sm.applied(), "the applied state travels in the image");

        // The same image without its end marker, checksummed as if whole.
        let image = zstd::stream::decode_all(&data[5..]).unwrap();
        assert_eq!(image.last(), Some(&0xc0), "the image ends with nil");
        let cut = data_of_image(&image[..image.len() - 1]);
        let (_, mut fifth) = open_memory();
        let err = fifth.install_snapshot(&meta, cut.into()).unwrap_err().to_string();
        assert!(err.contains("undecodable image"), "{err}");
    }

    #[test]
    fn cut_short_or_unknown_data_is_refused_by_name() {
        for (data, expect) in [
            (vec![SNAPSHOT_DATA_V1, 1, 2], "cut short"),
            (vec![9, 0, 0, 0, 0, 1], "unknown snapshot data format 9"),
            (Vec::new(), "empty"),
        ] {
            let err = SnapshotContent::Bytes(data).verify().err().unwrap();
            assert!(err.contains(expect), "{err}");
        }
    }
}
