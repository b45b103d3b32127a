//! An append-only log of numbered records in segment files, for a Raft
//! log kept outside RocksDB (docs/BENCHMARKS.md, item 41: the synced
//! RocksDB write of each log entry costs ~12% of the write path, half of
//! it RocksDB's own work, half fsyncs into a file that grows).
//!
//! The server keeps a group's entries here when `raft.log_files` is on
//! (`crate::raft::log_store::FileLog` in the server crate).
//!
//! A directory holds segments named by their first index
//! (`00000000000000000042.seg`): a header (magic, format) and records
//! `len u32 | crc32 u32 | index u64 | payload`, little-endian, the
//! checksum over the index and the payload, a `len` of 0 ending the
//! segment. One [`SegmentLog::append`] writes its records with one
//! `pwrite` and one `fdatasync`. A segment is either zero-filled ahead of
//! use ([`fill_spare`], so that appends land in blocks already written
//! and the sync has no file size to journal) or grows with its appends.
//!
//! Recovery reads the segments in order and keeps every record up to the
//! first that is not there: an all-zero header, a seal, or the end of the
//! file. A damaged record (short, failing its checksum, or a zero length
//! without the seal) ends the log there only if it is torn — cut short by
//! a crash during its write, which leaves a whole sector of it zero or
//! runs past the end of the file (see `torn`). Any other damage,
//! a valid record out of sequence, a bad record in any segment but the
//! last, or a gap between segments, is corruption: an error naming the
//! file, never a silent cut, since the records after it were acknowledged.
//!
//! Records after a torn one can still be valid (a write of several records
//! may reach the disk out of order), and a truncation leaves the records
//! behind its cut. None of them may come back, so a recovered log never
//! appends to the segment it recovered last, and a cut (a truncation, a
//! torn record) is sealed — a zero `len` and the mark `SEAL` written at the
//! cut and synced before the call returns.
//!
//! A flipped bit in a record's `len` that makes it reach past the records
//! written (into the zeros ahead of them, or past the end of the file)
//! reads as a torn tail: the damage this cannot tell apart.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ARBORSEG";
/// Format 2 seals a cut with [`SEAL`]. Format 1 (`raft.log_files` before
/// it was the default) left a bare zero length, which ends a format-1
/// segment's records; such segments are still read, and appends go to
/// new segments of format 2.
const FORMAT: u32 = 2;
/// The checksum field of a record header whose length is 0: the records
/// end here for good (a truncation, or a torn tail cut off at recovery).
const SEAL: u32 = u32::from_le_bytes(*b"SEAL");
/// The unit a disk writes whole.
const SECTOR: u64 = 512;
/// Magic, format, 4 bytes reserved.
const HEADER: u64 = 16;
/// `len`, `crc32`, `index`.
const RECORD_HEADER: u64 = 16;
const SUFFIX: &str = ".seg";
const SPARE: &str = "spare";
const SPARE_TMP: &str = "spare.tmp";

/// One segment file and where its records are.
struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    /// Offset of each record's header, in index order from `first`.
    offsets: Vec<u64>,
    /// Payload length of each record.
    lens: Vec<u32>,
    /// Where the next record would go.
    end: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    fn bytes(&self) -> u64 {
        self.end
    }
}

/// A log of records numbered by consecutive indexes, kept in segment
/// files in one directory (see the module documentation).
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// In index order; appends go to the last one unless `sealed`.
    segments: Vec<Segment>,
    /// Records below this index were purged (they may still be in the
    /// first segment's file).
    live_first: u64,
    /// The next append starts a new segment: the last one was recovered
    /// or cut.
    sealed: bool,
}

fn corrupt(path: &Path, what: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("corrupt log segment {}: {what}", path.display()))
}

/// Makes the creations, renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, and syncs the directory that
/// holds each one created: a log whose directory a crash could forget
/// would lose the records synced into it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// Why a segment's scan stopped where it did.
enum Stop {
    /// An all-zero record header, a seal, or the end of the file.
    Clean,
    /// A record torn by a crash during its write: cut the log there.
    Torn(String),
}

/// Whether the damaged record at `at`, ending at `end` by its `len`, was
/// torn: cut short by a crash during its write.
///
/// How a torn write is told from corruption (much as etcd's WAL does):
/// every byte an append writes had been zero before (segments are
/// zero-filled ahead of use, or grow), and a disk writes a sector whole or
/// not at all. A sector the append did not get onto the disk therefore
/// reads all zeros if it starts within the record, or, for the sector the
/// record starts in, from the record's start on. So the record is torn if
/// it runs past the end of the file, or its header straddles a sector
/// boundary with its part before it all zeros, or a sector starting within
/// it is all zeros. A flipped bit leaves none of these.
fn torn(file: &File, size: u64, at: u64, end: u64) -> io::Result<bool> {
    if end > size {
        return Ok(true);
    }
    let zeros = |from: u64, to: u64| -> io::Result<bool> {
        let mut buf = vec![0u8; (to - from) as usize];
        file.read_exact_at(&mut buf, from)?;
        Ok(buf.iter().all(|&b| b == 0))
    };
    let boundary = (at / SECTOR + 1) * SECTOR;
    if boundary < at + RECORD_HEADER && zeros(at, boundary)? {
        return Ok(true);
    }
    let mut sector = boundary;
    while sector < end {
        if zeros(sector, (sector + SECTOR).min(size))? {
            return Ok(true);
        }
        sector += SECTOR;
    }
    Ok(false)
}

/// Reads a segment's records from its header on; `first` is its name's
/// index. A damaged record is an error unless it is [`torn`].
fn scan(path: &Path, first: u64) -> io::Result<(Segment, Stop)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut segment =
        Segment { first, path: path.to_path_buf(), file, offsets: Vec::new(), lens: Vec::new(), end: HEADER };
    let mut header = [0u8; HEADER as usize];
    if size < HEADER {
        return Ok((segment, Stop::Torn(format!("{size} bytes, shorter than its header"))));
    }
    segment.file.read_exact_at(&mut header, 0)?;
    if header == [0u8; HEADER as usize] {
        // Created (from a zero-filled spare) but its header never written.
        return Ok((segment, Stop::Clean));
    }
    if &header[..8] != MAGIC {
        return Err(corrupt(path, "no segment header".to_string()));
    }
    let format = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if format != FORMAT && format != 1 {
        return Err(corrupt(path, format!("segment format {format}; this build reads formats 1 and {FORMAT}")));
    }
    let mut at = HEADER;
    loop {
        if at + RECORD_HEADER > size {
            return Ok((segment, Stop::Clean));
        }
        let mut head = [0u8; RECORD_HEADER as usize];
        segment.file.read_exact_at(&mut head, at)?;
        if head == [0u8; RECORD_HEADER as usize] {
            return Ok((segment, Stop::Clean));
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let end = at + RECORD_HEADER + u64::from(len);
        let why = if len == 0 {
            if crc == SEAL || format == 1 {
                return Ok((segment, Stop::Clean));
            }
            format!("record at offset {at} has a zero length but is not a seal")
        } else if end > size {
            format!("record at offset {at} runs past the end of the file")
        } else {
            let mut payload = vec![0u8; len as usize];
            segment.file.read_exact_at(&mut payload, at + RECORD_HEADER)?;
            if checksum(index, &payload) == crc {
                let expected = first + segment.offsets.len() as u64;
                if index != expected {
                    return Err(corrupt(path, format!("record at offset {at} has index {index}, expected {expected}")));
                }
                segment.offsets.push(at);
                segment.lens.push(len);
                at = end;
                segment.end = at;
                continue;
            }
            format!("record at offset {at} fails its checksum")
        };
        if torn(&segment.file, size, at, end)? {
            return Ok((segment, Stop::Torn(why)));
        }
        return Err(corrupt(path, why));
    }
}

impl SegmentLog {
    /// Opens (creating if missing) the log in `dir`, recovering what its
    /// segments hold. New segments are `segment_bytes` long (a segment
    /// holds at least one append, whatever its size).
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        create_dir_durably(dir)?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(SPARE_TMP) {
                // A spare whose filling a crash cut short.
                match std::fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => continue,
                }
            }
            if let Some(first) = name.strip_suffix(SUFFIX) {
                let first = first
                    .parse::<u64>()
                    .map_err(|_| corrupt(&dir.join(name), "a segment name that is not an index".to_string()))?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments: Vec<Segment> = Vec::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            if let Some(prev) = segments.last() {
                let next = prev.last().map_or(prev.first, |l| l + 1);
                if first != next {
                    return Err(corrupt(
                        &path,
                        format!("starts at index {first}, but the segment before ends before {next}"),
                    ));
                }
            }
            let (segment, stop) = scan(&path, first)?;
            let is_last = i + 1 == firsts.len();
            if let Stop::Torn(why) = stop {
                if !is_last {
                    return Err(corrupt(&path, why));
                }
                // A torn tail: cut it off for good before anything else.
                seal(&segment.file, segment.end)?;
            }
            segments.push(segment);
        }
        let live_first = segments.first().map_or(0, |s| s.first);
        Ok(Self { dir: dir.to_path_buf(), segment_bytes, segments, live_first, sealed: true })
    }

    /// The first index held, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.last_index().map(|_| self.live_first)
    }

    /// The last index held, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last).filter(|&last| last >= self.live_first)
    }

    /// Bytes of the segment files in use (headers and purged records
    /// included, spares not).
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(Segment::bytes).sum()
    }

    /// Appends `payloads` as records `first`, `first + 1`, ... and syncs
    /// them. `first` must follow the last index held (any index if none
    /// is); empty payloads are refused (a `len` of 0 ends a segment).
    pub fn append(&mut self, first: u64, payloads: &[&[u8]]) -> io::Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        if let Some(last) = self.last_index() {
            if first != last + 1 {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("append at index {first}, but the log ends at {last}"),
                ));
            }
        }
        let mut buf = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let len = u32::try_from(payload.len()).ok().filter(|&l| l > 0).ok_or_else(|| {
                io::Error::new(ErrorKind::InvalidInput, format!("a record of {} bytes", payload.len()))
            })?;
            let index = first + i as u64;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let full = self
            .segments
            .last()
            .is_none_or(|s| self.sealed || (s.last().is_some() && s.end + buf.len() as u64 > self.segment_bytes));
        let mut new_file = false;
        if full || self.last_index().is_none() {
            self.start_segment(first)?;
            new_file = true;
        }
        let segment = self.segments.last_mut().expect("a segment to append to");
        let mut at = segment.end;
        segment.file.write_all_at(&buf, at)?;
        segment.file.sync_data()?;
        if new_file {
            sync_dir(&self.dir)?;
        }
        for payload in payloads {
            segment.offsets.push(at);
            segment.lens.push(payload.len() as u32);
            at += RECORD_HEADER + payload.len() as u64;
        }
        segment.end = at;
        Ok(())
    }

    /// A new segment for records from `first`: the zero-filled spare if
    /// there is one, else a new file. Empty segments before it are
    /// dropped (one left by a purge or a truncation of everything).
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        while self.segments.last().is_some_and(|s| s.offsets.is_empty() || s.last() < Some(self.live_first)) {
            let s = self.segments.pop().expect("checked");
            std::fs::remove_file(&s.path)?;
        }
        let path = self.dir.join(segment_name(first));
        let spare = self.dir.join(SPARE);
        if spare.exists() {
            std::fs::rename(&spare, &path)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        file.write_all_at(&header, 0)?;
        // Whatever a spare of another size holds past its zeros is never
        // reached: the first record is written right after the header.
        self.segments.push(Segment { first, path, file, offsets: Vec::new(), lens: Vec::new(), end: HEADER });
        if self.segments.len() == 1 || self.last_index().is_none() {
            self.live_first = first;
        }
        self.sealed = false;
        Ok(())
    }

    /// The payload of record `index`, if held.
    pub fn read(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        if index < self.live_first {
            return Ok(None);
        }
        let i = self.segments.partition_point(|s| s.first <= index);
        let Some(segment) = i.checked_sub(1).map(|i| &self.segments[i]) else { return Ok(None) };
        let Some(&offset) = segment.offsets.get((index - segment.first) as usize) else { return Ok(None) };
        let len = segment.lens[(index - segment.first) as usize];
        let mut payload = vec![0u8; len as usize];
        segment.file.read_exact_at(&mut payload, offset + RECORD_HEADER)?;
        Ok(Some(payload))
    }

    /// Drops every record from `from` on, durably: the segments after
    /// the cut are deleted and the cut is sealed before this returns.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        if self.last_index().is_none_or(|last| from > last) {
            return Ok(());
        }
        // Later segments first: if this is interrupted, the log is as it
        // was up to the segment with the cut, which is a log that simply
        // was not truncated yet.
        let mut deleted = false;
        while self.segments.last().is_some_and(|s| s.first >= from) {
            let s = self.segments.pop().expect("checked");
            std::fs::remove_file(&s.path)?;
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        if let Some(segment) = self.segments.last_mut() {
            if let Some(last) = segment.last() {
                if from <= last {
                    let keep = (from - segment.first) as usize;
                    let cut = segment.offsets[keep];
                    seal(&segment.file, cut)?;
                    segment.offsets.truncate(keep);
                    segment.lens.truncate(keep);
                    segment.end = cut;
                }
            }
        }
        self.sealed = true;
        Ok(())
    }

    /// Forgets every record up to and including `upto`, deleting the
    /// segments that hold nothing else.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.live_first = self.live_first.max(upto.saturating_add(1));
        let mut deleted = false;
        while self.segments.first().is_some_and(|s| s.last().is_none_or(|last| last <= upto)) {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
            if self.segments.is_empty() {
                self.sealed = true;
            }
        }
        Ok(())
    }
}

/// Ends a segment's records at `at` for good: a zero `len` and [`SEAL`]
/// there, synced. (A file too short for a record header there ends
/// there anyway.)
fn seal(file: &File, at: u64) -> io::Result<()> {
    if file.metadata()?.len() >= at + RECORD_HEADER {
        let mut mark = [0u8; 8];
        mark[4..].copy_from_slice(&SEAL.to_le_bytes());
        file.write_all_at(&mark, at)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Whether a zero-filled segment is ready in `dir` for the next one.
pub fn spare_ready(dir: &Path) -> bool {
    dir.join(SPARE).exists()
}

/// Zero-fills the next segment of the log in `dir` ahead of use, unless
/// one is ready: `segment_bytes` of zeros, synced, then renamed into
/// place, so that the appends that fill it write into blocks the file
/// already has. Returns whether it made one. Run it off the append path
/// (it writes a whole segment); one at a time per directory.
pub fn fill_spare(dir: &Path, segment_bytes: u64) -> io::Result<bool> {
    let spare = dir.join(SPARE);
    if spare.exists() {
        return Ok(false);
    }
    // A name of its own: a filler still running for a log closed in this
    // process (tests do that) must not write into this one's file.
    static FILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{SPARE_TMP}.{}.{n}", std::process::id()));
    let fill = || {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < segment_bytes {
            let n = zeros.len().min((segment_bytes - at) as usize);
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &spare)?;
        sync_dir(dir)
    };
    fill().inspect_err(|_| {
        // Not to hold the space a full disk is short of.
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64, tag: &str) -> Vec<u8> {
        format!("{tag}-{index}-{}", "x".repeat((index % 7) as usize * 10)).into_bytes()
    }

    /// Closes `log` and opens its directory again, as a restart does.
    fn reopen(log: SegmentLog) -> SegmentLog {
        let (dir, size) = (log.dir.clone(), log.segment_bytes);
        drop(log);
        SegmentLog::open(&dir, size).unwrap()
    }

    fn append(log: &mut SegmentLog, range: std::ops::RangeInclusive<u64>, tag: &str) {
        let first = *range.start();
        let payloads: Vec<Vec<u8>> = range.map(|i| payload(i, tag)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        log.append(first, &refs).unwrap();
    }

    /// A log in `dir` of `segment_bytes` segments holding records
    /// 1..=`last` tagged `tag`, each written by an append of its own.
    fn single_appends(dir: &Path, segment_bytes: u64, last: u64, tag: &str) -> SegmentLog {
        let mut log = SegmentLog::open(dir, segment_bytes).unwrap();
        for i in 1..=last {
            append(&mut log, i..=i, tag);
        }
        log
    }

    fn all(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
        match (log.first_index(), log.last_index()) {
            (Some(first), Some(last)) => (first..=last).map(|i| (i, log.read(i).unwrap().unwrap())).collect(),
            _ => Vec::new(),
        }
    }

    fn expected(range: std::ops::RangeInclusive<u64>, tag: &str) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, payload(i, tag))).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(SUFFIX))
            .collect();
        names.sort();
        names
    }

    /// Byte offset of record `index` in the segment file that holds it.
    fn locate(log: &SegmentLog, index: u64) -> (PathBuf, u64) {
        let s = log.segments.iter().rfind(|s| s.first <= index).unwrap();
        (s.path.clone(), s.offsets[(index - s.first) as usize])
    }

    fn write_at(path: &Path, at: u64, bytes: &[u8]) {
        OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn records_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 256).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        for i in 1..=30 {
            append(&mut log, i..=i, "a");
        }
        append(&mut log, 31..=35, "a");
        assert!(segment_files(dir.path()).len() > 3, "small segments roll over");
        assert_eq!(all(&log), expected(1..=35, "a"));
        let mut log = reopen(log);
        assert_eq!(all(&log), expected(1..=35, "a"));
        let files = segment_files(dir.path()).len();
        append(&mut log, 36..=36, "a");
        assert_eq!(segment_files(dir.path()).len(), files + 1, "a reopened log appends to a new segment");
        assert!(log.append(38, &[b"gap"]).is_err(), "indexes must follow");
        assert!(log.append(37, &[b""]).is_err(), "empty records are refused");
        assert_eq!(all(&reopen(log)), expected(1..=36, "a"));
    }

    /// Records 1..=6 of 700 bytes each (every one spans two sectors), the
    /// last three written at once; returns the log closed, and where record
    /// 5 is.
    fn six_long_records(dir: &Path) -> (PathBuf, u64) {
        let mut log = SegmentLog::open(dir, 1 << 20).unwrap();
        let long = |i: u64| payload(i, &"L".repeat(700))[..700].to_vec();
        let records: Vec<Vec<u8>> = (1..=6).map(long).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        log.append(1, &refs[..3]).unwrap();
        log.append(4, &refs[3..]).unwrap();
        locate(&log, 5)
    }

    #[test]
    fn a_torn_record_ends_the_log_and_nothing_after_it_returns() {
        for damage in ["its second sector", "its first sector"] {
            let dir = tempfile::tempdir().unwrap();
            let (path, at) = six_long_records(dir.path());
            // One write of three records, of which a sector of the middle
            // one did not reach the disk but the last one did.
            let boundary = (at / SECTOR + 1) * SECTOR;
            match damage {
                "its second sector" => write_at(&path, boundary, &[0; SECTOR as usize]),
                _ => write_at(&path, at, &vec![0; (boundary - at) as usize]),
            }
            let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(log.last_index(), Some(4), "{damage}");
            // A new record 5 as long as the old one ends where the old
            // record 6 begins.
            log.append(5, &[&payload(5, "b")]).unwrap();
            let log = reopen(log);
            assert_eq!(log.last_index(), Some(5), "{damage}: the unacknowledged record 6 stays gone");
            assert_eq!(log.read(5).unwrap().unwrap(), payload(5, "b"));
        }
    }

    #[test]
    fn a_damaged_record_in_the_last_segment_is_an_error_not_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, at) = six_long_records(dir.path());
        let mut original = vec![0u8; RECORD_HEADER as usize + 700];
        File::open(&path).unwrap().read_exact_at(&mut original, at).unwrap();
        let mut wrong_index = original.clone();
        let payload = &original[RECORD_HEADER as usize..];
        wrong_index[4..8].copy_from_slice(&checksum(9, payload).to_le_bytes());
        wrong_index[8..16].copy_from_slice(&9u64.to_le_bytes());
        let flipped_byte = [original[100] ^ 0x08];
        for (what, off, bytes, why) in [
            ("a flipped bit", at + 100, &flipped_byte[..], "fails its checksum"),
            ("a zeroed length", at, &[0u8; 4][..], "zero length"),
            ("a valid record out of sequence", at, &wrong_index[..], "has index 9, expected 5"),
        ] {
            write_at(&path, off, bytes);
            let err = SegmentLog::open(dir.path(), 1 << 20).err().unwrap_or_else(|| panic!("{what} was cut off"));
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{what}");
            assert!(err.to_string().contains(&segment_name(1)) && err.to_string().contains(why), "{what}: {err}");
            write_at(&path, at, &original);
        }
        let log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(6), "repaired, nothing was cut");
    }

    #[test]
    fn a_truncation_is_durable_and_does_not_resurrect_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = single_appends(dir.path(), 300, 20, "old");
        log.truncate(9).unwrap();
        assert_eq!(log.last_index(), Some(8));
        log.truncate(50).unwrap();
        assert_eq!(log.last_index(), Some(8), "nothing to cut past the end");
        append(&mut log, 9..=10, "new");
        let mut log = reopen(log);
        let mut want = expected(1..=8, "old");
        want.extend(expected(9..=10, "new"));
        assert_eq!(all(&log), want);
        // Cut inside the segment just appended to, then everything.
        log.truncate(10).unwrap();
        let mut log = reopen(log);
        assert_eq!(log.last_index(), Some(9));
        log.truncate(1).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        append(&mut log, 1..=2, "again");
        assert_eq!(all(&reopen(log)), expected(1..=2, "again"));
    }

    #[test]
    fn purged_segments_are_deleted_and_a_purged_log_restarts_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = single_appends(dir.path(), 200, 40, "a");
        let files = segment_files(dir.path()).len();
        log.purge(25).unwrap();
        assert_eq!(log.first_index(), Some(26));
        assert_eq!(log.read(25).unwrap(), None);
        assert!(segment_files(dir.path()).len() < files, "whole purged segments are deleted");
        let mut log = reopen(log);
        assert!(log.first_index().unwrap() <= 26, "the first segment may still hold purged records");
        log.purge(25).unwrap();
        assert_eq!(all(&log), expected(26..=40, "a"));
        // A snapshot past the log's end purges all of it.
        log.purge(1000).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        assert!(segment_files(dir.path()).is_empty());
        append(&mut log, 1001..=1003, "b");
        assert_eq!(all(&reopen(log)), expected(1001..=1003, "b"));
    }

    #[test]
    fn segments_of_format_1_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        append(&mut log, 1..=5, "a");
        let (path, cut) = locate(&log, 4);
        log.truncate(4).unwrap();
        drop(log);
        // As format 1 left a truncation: a bare zero length before the
        // stale records 4 and 5.
        write_at(&path, 8, &1u32.to_le_bytes());
        write_at(&path, cut + 4, b"old!");
        let mut log = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(all(&log), expected(1..=3, "a"));
        append(&mut log, 4..=4, "b");
        let (new_path, _) = locate(&log, 4);
        assert_ne!(new_path, path, "appends go to a new segment, of format 2");
        let mut want = expected(1..=3, "a");
        want.extend(expected(4..=4, "b"));
        assert_eq!(all(&reopen(log)), want);
        write_at(&path, 8, &3u32.to_le_bytes());
        let err = SegmentLog::open(dir.path(), 1 << 20).err().expect("an unknown format is refused");
        assert!(err.to_string().contains("segment format 3"), "{err}");
    }

    #[test]
    fn a_spare_becomes_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 << 10;
        let mut log = SegmentLog::open(dir.path(), size).unwrap();
        assert!(fill_spare(dir.path(), size).unwrap());
        assert!(!fill_spare(dir.path(), size).unwrap(), "one spare at a time");
        append(&mut log, 1..=3, "a");
        assert!(!dir.path().join(SPARE).exists(), "taken by the first segment");
        let first = dir.path().join(segment_name(1));
        assert_eq!(std::fs::metadata(&first).unwrap().len(), size, "appends write into the zeros");
        assert_eq!(all(&reopen(log)), expected(1..=3, "a"));
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = single_appends(dir.path(), 200, 20, "a");
        let (path, at) = locate(&log, 2);
        drop(log);
        write_at(&path, at + RECORD_HEADER, b"?");
        let err = SegmentLog::open(dir.path(), 200).err().expect("corruption is refused");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains(&segment_name(1)), "{err}");
        write_at(&path, at + RECORD_HEADER, &payload(2, "a")[..1]);
        let log = SegmentLog::open(dir.path(), 200).unwrap();
        // A missing segment in the middle is a gap.
        let (middle, _) = locate(&log, 10);
        drop(log);
        std::fs::remove_file(&middle).unwrap();
        let err = SegmentLog::open(dir.path(), 200).err().expect("a gap is refused");
        assert!(err.to_string().contains("ends before"), "{err}");
    }
}
