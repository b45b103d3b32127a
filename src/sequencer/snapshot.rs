//! Snapshots of a group: their data format, where the data lives, building
//! one from an engine snapshot and decoding one into a WriteBatch.
//!
//! Snapshot data (what openraft stores and streams), format 1:
//!
//! ```text
//! byte 0      format (1)
//! bytes 1..5  CRC-32 (IEEE, little-endian) of bytes 5..
//! bytes 5..   the zstd-compressed image
//! ```
//!
//! The image is a MessagePack stream of every key of the group's range and
//! state. Image format 3, built since snapshots stopped counting their keys
//! in a first pass over the state (a third of a build's time):
//!
//! ```text
//! 3                               the format, then chunks of entries:
//! [[key, value], ...]             at most IMAGE_CHUNK_ENTRIES each
//! ...
//! nil                             the end (a stream cut short has none)
//! ```
//!
//! Keys and values are `bin`. Formats 1 and 2 were one value,
//! `[format, [[key, value], ...]]` (format 1 with arrays of integers
//! instead of `bin`); they still install.
//!
//! On a server node the data is a file in `<data_dir>/snapshots`, and it is
//! never whole in memory: a build streams the image through zstd into a
//! temporary file, a follower writes the leader's chunks into one, and the
//! leader sends chunks read from the file. Installing decodes the file as a
//! stream straight into the one WriteBatch that replaces the group's state
//! atomically (so that batch, not the image, is the install's memory).
//! Engines without a directory (tests) keep the data in memory and inside
//! the `Key::Snapshot` record.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbor_storage::{Direction, Durability, Engine, ReadView, WriteBatch};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{self, Key};
use crate::raft::SnapshotMeta;
use crate::routing::RangeDesc;
use crate::sequencer::apply::{decode, encode, AppliedState};

/// The current data format (see the module docs).
pub(super) const SNAPSHOT_DATA_V1: u8 = 1;
/// The first bytes of a zstd frame: data of a snapshot built before the
/// checksum header existed.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The image format builds write (see the module docs).
const IMAGE_FORMAT: u8 = 3;
/// Entries per chunk of a format 3 image...
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
    /// The whole data, read into memory.
    /// The data's size in bytes.
    pub fn size(&self) -> io::Result<u64> {
        match self {
            SnapshotContent::Bytes(b) => Ok(b.len() as u64),
            SnapshotContent::File { file, .. } => Ok(file.metadata()?.len()),
        }
    }

    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            SnapshotContent::Bytes(bytes) => Ok(bytes),
            SnapshotContent::File { mut file, .. } => {
                let mut bytes = Vec::new();
                file.seek(SeekFrom::Start(0))?;
                file.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
        }
    }

    fn reader_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + '_>> {
        match self {
            SnapshotContent::Bytes(bytes) => Ok(Box::new(bytes.get(offset as usize..).unwrap_or_default())),
            SnapshotContent::File { file, .. } => {
                file.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(BufReader::with_capacity(READ_BUFFER, file)))
            }
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
    /// `ranges`, and returns its checksum.
    fn write_image(&mut self, view: &dyn ReadView, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<u32> {
        match self {
            SnapshotContent::Bytes(bytes) => {
                let mut out = Cursor::new(std::mem::take(bytes));
                let crc = write_data(&mut out, view, ranges);
                *bytes = out.into_inner();
                crc
            }
            SnapshotContent::File { file, .. } => write_data(&mut WritebackEvery { file, unsynced: 0 }, view, ranges),
        }
    }
}

/// Bytes of snapshot data a build writes between two `fdatasync`s.
const SYNC_EVERY: u64 = 16 << 20;

/// A snapshot file being built, synced every [`SYNC_EVERY`] bytes: a
/// snapshot of hundreds of MB left dirty until one final fsync kept the
/// disk busy long enough to delay every log append behind it.
struct WritebackEvery<'a> {
    file: &'a mut File,
    unsynced: u64,
}

impl Write for WritebackEvery<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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
/// fills in its checksum, which it returns.
fn write_data<W: Write + Seek>(out: &mut W, view: &dyn ReadView, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<u32> {
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
    Ok(crc)
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
) -> std::result::Result<Option<Vec<u8>>, String> {
    let reader = content.reader_at(verified.body_at).map_err(|e| format!("reading: {e}"))?;
    let z = zstd::stream::read::Decoder::new(reader).map_err(|e| format!("zstd: {e}"))?;
    let mut z = BufReader::new(z);
    let first = z.fill_buf().map_err(|e| format!("zstd: {e}"))?.first().copied();
    let mut de = rmp_serde::Deserializer::new(z);
    let undecodable = |e: rmp_serde::decode::Error| format!("undecodable image: {e}");
    // Formats 1 and 2: one array `[format, entries]` (0x92).
    if first == Some(0x92) {
        return ImageSink(EntrySink { applied_key, wb }).deserialize(&mut de).map_err(undecodable);
    }
    let format = u8::deserialize(&mut de).map_err(undecodable)?;
    if format != IMAGE_FORMAT {
        return Err(format!("unknown image format {format}"));
    }
    let mut sink = EntrySink { applied_key, wb };
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
}

impl EntrySink<'_> {
    /// Puts `entry` into the batch, except the applied state's, whose
    /// value it returns.
    fn take(&mut self, (k, v): ImageEntry) -> Option<Vec<u8>> {
        if *k == *self.applied_key {
            return Some(v.into_vec());
        }
        self.wb.put(k.into_vec(), v.into_vec());
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
    let applied = read_image(content, &verified, &applied_key, &mut wb).map_err(corrupt)?;
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
/// `file` there and `data` is empty.
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(default)]
    file: Option<String>,
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
/// with no disk, as in tests) it is inside the `Key::Snapshot` value. With
/// one, it is a file there, fsync'd and renamed into place before the key
/// that names it is written: a snapshot holds the group's whole state, and
/// writing it into RocksDB put hundreds of MB in the WAL that every log
/// append then waited behind (long enough for a follower to call an
/// election).
///
/// Files of `group`: `g{group}-i{index}-{crc}.snap` (the current snapshot;
/// others with that prefix are older ones, removed when a newer one is
/// stored), `g{group}-build-*.tmp` (a build being written) and
/// `g{group}-recv-*.tmp` (a snapshot being received).
#[derive(Clone, Default)]
pub(super) struct SnapshotFiles {
    dir: Option<PathBuf>,
}

/// Makes temporary file names unique within the process.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

impl SnapshotFiles {
    /// Files in `dir` (created if missing). Temporary files `group` left
    /// behind (a crash during a build or a transfer) are removed.
    pub(super) fn open(dir: PathBuf, group: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "create", e))?;
        let files = SnapshotFiles { dir: Some(dir) };
        files.remove_matching(|name| {
            name.ends_with(".tmp")
                && (name.starts_with(&format!("g{group}-build-")) || name.starts_with(&format!("g{group}-recv-")))
        });
        Ok(files)
    }

    /// Somewhere new to write snapshot data: a temporary file named for
    /// `purpose` ("build" or "recv"), or memory without a directory.
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
    /// and temporary files of interrupted stores).
    fn remove_others(&self, group: u64, keep: Option<&str>) {
        let prefix = format!("g{group}-i");
        self.remove_matching(|name| name.starts_with(&prefix) && Some(name) != keep);
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

/// Builds, stores and reads back a group's snapshots. Building reads one
/// consistent engine snapshot (whole epochs only, with the applied state
/// that describes them), so it runs without holding the state machine, and
/// epochs keep being applied meanwhile.
#[derive(Clone)]
pub struct SnapshotStore {
    pub(super) group: u64,
    pub(super) range: RangeDesc,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) durability: Durability,
    /// Held while `Key::Snapshot` is replaced, by builds and installs alike,
    /// so a build that read older state never overwrites a newer snapshot
    /// installed meanwhile (and while a stored snapshot is opened).
    pub(super) lock: Arc<Mutex<()>>,
    pub(super) files: SnapshotFiles,
}

impl SnapshotStore {
    /// Builds a snapshot from one consistent engine snapshot and stores it
    /// as the group's current snapshot. The image is streamed into the
    /// compressor in one pass over the engine snapshot, and from there into
    /// a file.
    pub fn build(&self) -> Result<(SnapshotMeta, SnapshotContent)> {
        let view = self.engine.snapshot();
        let applied: AppliedState = match view.get(&Key::Applied(self.group).encode())? {
            Some(b) => decode(&b, "applied state")?,
            None => AppliedState::default(),
        };
        let ranges = group_ranges(self.group, &self.range);
        let mut content = self.files.create(self.group, "build")?;
        let written = content.write_image(&*view, &ranges);
        drop(view);
        let crc = match written {
            Ok(crc) => crc,
            Err(e) => {
                discard(&content);
                return Err(e);
            }
        };
        let index = applied.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("g{}-i{}-s{}", self.group, index, applied.stamp),
        };
        // Apply batches are unlogged (see "Durability" in `apply`): only a
        // flush makes the state this snapshot covers durable. It must come
        // before the snapshot is recorded, because once it is, openraft may
        // purge the log entries a restarted replica would re-apply.
        self.engine.flush()?;
        let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = self.engine.get(&Key::Snapshot(self.group).encode())? {
            let stored: StoredSnapshot = decode(&bytes, "stored snapshot")?;
            if stored.meta.last_log_id > meta.last_log_id {
                // A newer snapshot was installed while this one was built:
                // hand this one back (still readable) but do not keep it.
                discard(&content);
                return Ok((meta, content));
            }
        }
        self.store_locked(&meta, &mut content, crc, WriteBatch::new())?;
        Ok((meta, content))
    }

    /// Stores `content` as the current snapshot, with `extra` (if any) in
    /// the same batch as the record naming it.
    pub(super) fn store_with(
        &self,
        meta: &SnapshotMeta,
        content: &mut SnapshotContent,
        crc: u32,
        extra: WriteBatch,
    ) -> Result<()> {
        let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.store_locked(meta, content, crc, extra)
    }

    /// [`SnapshotStore::store_with`], the lock already held.
    fn store_locked(
        &self,
        meta: &SnapshotMeta,
        content: &mut SnapshotContent,
        crc: u32,
        mut wb: WriteBatch,
    ) -> Result<()> {
        let (value, file) = self.files.store(self.group, meta, content, crc)?;
        wb.put(Key::Snapshot(self.group).encode(), value);
        self.engine.write(wb, self.durability)?;
        self.files.remove_others(self.group, file.as_deref());
        Ok(())
    }

    /// The size of the current snapshot's data, or 0 if there is none (or
    /// it cannot be read: the next [`SnapshotStore::current`] says why).
    pub fn current_bytes(&self) -> u64 {
        let Ok(Some(bytes)) = self.engine.get(&Key::Snapshot(self.group).encode()) else { return 0 };
        let Ok(stored) = decode::<StoredSnapshot>(&bytes, "stored snapshot") else { return 0 };
        self.files.load(stored).ok().and_then(|content| content.size().ok()).unwrap_or(0)
    }

    /// The stored snapshot, verified: one whose checksum no longer matches
    /// (damaged on this node's disk) or whose file is gone is never sent —
    /// every receiver would refuse it — but replaced by a new one built
    /// from the current state.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotContent)>> {
        let key = Key::Snapshot(self.group).encode();
        let found = {
            let _store = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            match self.engine.get(&key)? {
                Some(bytes) => {
                    let stored: StoredSnapshot = decode(&bytes, "stored snapshot")?;
                    let at = match &stored.file {
                        Some(name) => name.clone(),
                        None => self.engine.locate(&key),
                    };
                    Some((stored.meta.clone(), at, self.files.load(stored)))
                }
                None => None,
            }
        };
        let Some((meta, at, opened)) = found else { return Ok(None) };
        match opened.and_then(|mut content| content.verify().map(|_| content)) {
            Ok(content) => Ok(Some((meta, content))),
            Err(why) => {
                tracing::error!(
                    group = self.group,
                    snapshot = %meta.snapshot_id,
                    "the stored snapshot in {at} is damaged ({why}); building a new one instead of sending it"
                );
                self.build().map(Some)
            }
        }
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
    let end = if range.end.is_empty() {
        arbor_storage::prefix_end(&keys::data_prefix()).expect("data tag < 0xff")
    } else {
        Key::Data(&range.end).encode()
    };
    ranges.push((Key::Data(&range.start).encode(), end));
    ranges.push(keys::version_bounds(&range.start, &range.end));
    ranges
}

#[cfg(test)]
mod tests {
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

    fn put(engine: &arbor_storage::Memory, key: &[u8], value: Vec<u8>) {
        let mut wb = WriteBatch::new();
        wb.put(Key::Data(key).encode(), value);
        engine.write(wb, Durability::Sync).unwrap();
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

    /// Format 2: one array `[2, [[key, value], ...]]`, keys and values `bin`.
    fn format_2_data(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        let mut image = Vec::new();
        rmp::encode::write_array_len(&mut image, 2).unwrap();
        rmp::encode::write_uint(&mut image, 2).unwrap();
        rmp::encode::write_array_len(&mut image, entries.len() as u32).unwrap();
        for (k, v) in entries {
            rmp::encode::write_array_len(&mut image, 2).unwrap();
            rmp::encode::write_bin(&mut image, &k).unwrap();
            rmp::encode::write_bin(&mut image, &v).unwrap();
        }
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

    #[test]
    fn with_a_snapshot_dir_the_data_lives_in_a_file_and_a_damaged_one_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        let (source, sm) = open_memory();
        let mut sm = sm.with_snapshot_dir(dir.clone()).unwrap();
        put(&source, b"/a", vec![7; 1000]);
        let (meta, built) = sm.build_snapshot().unwrap();
        assert!(matches!(built, SnapshotContent::File { .. }), "{built:?}");
        let data = bytes(built);
        let stored = source.get(&Key::Snapshot(1).encode()).unwrap().unwrap();
        assert!(stored.len() < 200, "only the meta and the file name in RocksDB: {} bytes", stored.len());
        let files = files_in(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].starts_with("g1-i") && files[0].ends_with(".snap"), "{files:?}");
        assert_eq!(std::fs::read(dir.join(&files[0])).unwrap(), data);
        assert_eq!(current_bytes(&mut sm), Some((meta.clone(), data.clone())));

        // A newer build replaces the file; the old one is removed.
        let mut wb = WriteBatch::new();
        wb.put(Key::Applied(1).encode(), encode(&AppliedState { stamp: 5, ..sm.applied().clone() }));
        source.write(wb, Durability::Sync).unwrap();
        put(&source, b"/b", vec![8; 10]);
        let (_, newer) = sm.build_snapshot().unwrap();
        let files = files_in(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::read(dir.join(&files[0])).unwrap(), bytes(newer));

        // Damage the file: the snapshot is rebuilt rather than sent.
        let path = dir.join(&files[0]);
        let mut damaged = std::fs::read(&path).unwrap();
        *damaged.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, damaged).unwrap();
        let (_, mut rebuilt) = sm.current_snapshot().unwrap().unwrap();
        assert!(rebuilt.verify().is_ok());
        // Or delete it: the same.
        for f in files_in(&dir) {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        let (_, mut rebuilt) = sm.current_snapshot().unwrap().unwrap();
        assert!(rebuilt.verify().is_ok());

        // Installing data held in memory writes the receiver's own file.
        let (target, other) = open_memory();
        let mut other = other.with_snapshot_dir(tmp.path().join("b")).unwrap();
        other.install_snapshot(&meta, data.clone().into()).unwrap();
        assert_eq!(target.get(&Key::Data(b"/a").encode()).unwrap(), Some(vec![7; 1000]));
        assert_eq!(current_bytes(&mut other), Some((meta, data)));
        assert_eq!(files_in(&tmp.path().join("b")).len(), 1);
    }

    #[test]
    fn a_received_file_becomes_the_stored_snapshot_and_unfinished_transfers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (source, mut sm) = open_memory();
        put(&source, b"/a", b"record-a".to_vec());
        let (meta, built) = sm.build_snapshot().unwrap();
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
        assert_eq!(target.get(&Key::Data(b"/a").encode()).unwrap(), Some(b"record-a".to_vec()));
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
        let (source, mut sm) = open_memory();
        put(&source, b"/a", b"record-a".to_vec());
        put(&source, b"/b", vec![0xff; 300]);
        let (meta, built) = sm.build_snapshot().unwrap();
        let data = bytes(built);
        assert_eq!(data[0], SNAPSHOT_DATA_V1);

        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, data.into()).unwrap();
        assert_eq!(target.get(&Key::Data(b"/b").encode()).unwrap(), Some(vec![0xff; 300]));
        assert_eq!(target.get(&Key::Data(b"/a").encode()).unwrap(), Some(b"record-a".to_vec()));

        let (old_target, mut third) = open_memory();
        let old = format_1_data(vec![(Key::Data(b"/c").encode(), b"record-c".to_vec())]);
        third.install_snapshot(&meta, old.into()).unwrap();
        assert_eq!(old_target.get(&Key::Data(b"/c").encode()).unwrap(), Some(b"record-c".to_vec()));
        assert_eq!(current_bytes(&mut third).map(|(m, _)| m), Some(meta.clone()));

        let (old_target, mut fourth) = open_memory();
        let old = format_2_data(vec![(Key::Data(b"/d").encode(), b"record-d".to_vec())]);
        fourth.install_snapshot(&meta, old.into()).unwrap();
        assert_eq!(old_target.get(&Key::Data(b"/d").encode()).unwrap(), Some(b"record-d".to_vec()));
    }

    #[test]
    fn an_image_of_many_chunks_installs_whole_and_one_cut_short_is_refused() {
        let (source, mut sm) = open_memory();
        let n = 3 * IMAGE_CHUNK_ENTRIES as usize + 7;
        for i in 0..n {
            put(&source, format!("/k{i:05}").as_bytes(), format!("v{i}").into_bytes());
        }
        // Chunks are also cut by size: a few large values.
        for i in 0..3 {
            put(&source, format!("/big{i}").as_bytes(), vec![i as u8; IMAGE_CHUNK_BYTES / 2 + 1]);
        }
        let (meta, built) = sm.build_snapshot().unwrap();
        let data = bytes(built);

        let (target, mut other) = open_memory();
        other.install_snapshot(&meta, data.clone().into()).unwrap();
        for i in [0, IMAGE_CHUNK_ENTRIES as usize - 1, IMAGE_CHUNK_ENTRIES as usize, n - 1] {
            let got = target.get(&Key::Data(format!("/k{i:05}").as_bytes()).encode()).unwrap();
            assert_eq!(got, Some(format!("v{i}").into_bytes()), "key {i}");
        }
        let big = target.get(&Key::Data(b"/big2").encode()).unwrap().unwrap();
        assert_eq!(big.len(), IMAGE_CHUNK_BYTES / 2 + 1);
        let keys = |e: &arbor_storage::Memory| e.scan_prefix(&keys::data_prefix()).count();
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
