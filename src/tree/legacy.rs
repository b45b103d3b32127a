//! Versions as earlier versions of Arbor stored them, converted as a data
//! directory is opened or a snapshot image is installed:
//!
//! - **`Version` keys**: every version of a key under `Version(key, stamp,
//!   pos)`, newest first; the newest was the current record. The newest
//!   becomes the key's `Current` version, and each older one goes into its
//!   group's history under the position of the version after it (the write
//!   that superseded it), as the state machine now stores them.
//! - **`Data` keys** (older still): each key's current record beside its
//!   versions. One whose user key has versions is dropped (its record is the
//!   newest of them: both were written in the same batch, and the GC never
//!   collected a live key's newest version); one whose user key has none
//!   (written before versions existed) becomes its current version at
//!   stamp 0, which snapshot reads at any stamp see.

use std::collections::BTreeMap;

use arbor_storage::{Durability, Engine, WriteBatch};

use crate::error::Result;
use crate::keys::{self, Key};
use crate::tree::{decode_record, encode_stored, stored_from_version};

/// How many bytes of records one synced batch of [`convert_stored_versions`]
/// converts.
const CHUNK_BYTES: usize = 16 << 20;

/// The versions of one user key, newest first: `(stamp, pos, encoded
/// version)`.
type Versions = Vec<(u64, u64, Vec<u8>)>;

/// Puts `user`'s `versions` (newest first) into `wb` as the state machine
/// stores them, in `group`'s history.
fn put_converted(group: u64, user: &[u8], versions: &Versions, wb: &mut WriteBatch) {
    let Some((stamp, pos, newest)) = versions.first() else { return };
    wb.put(Key::Current(user).encode(), stored_from_version(*stamp, *pos, newest));
    for pair in versions.windows(2) {
        let ((stamp, pos, _), (older_stamp, older_pos, older)) = (&pair[0], &pair[1]);
        let key = Key::History(group, *stamp, *pos, user).encode();
        wb.put(key, stored_from_version(*older_stamp, *older_pos, older));
    }
}

/// Gathers `Version` entries (in key order) into each user key's versions.
#[derive(Default)]
struct Gathered {
    key: Option<(Vec<u8>, Versions)>,
}

impl Gathered {
    /// Adds a version of `user`; returns the previous key's versions, whole,
    /// if this one starts another key.
    fn add(&mut self, user: Vec<u8>, stamp: u64, pos: u64, value: Vec<u8>) -> Option<(Vec<u8>, Versions)> {
        if let Some((current, versions)) = &mut self.key {
            if *current == user {
                versions.push((stamp, pos, value));
                return None;
            }
        }
        self.key.replace((user, vec![(stamp, pos, value)]))
    }

    /// The last key's versions.
    fn take(&mut self) -> Option<(Vec<u8>, Versions)> {
        self.key.take()
    }
}

/// The current version, at stamp 0, of the record `value` of a `Data` key.
fn current_at_zero(value: &[u8]) -> Result<Vec<u8>> {
    Ok(encode_stored(0, 0, Some(&decode_record(value)?)))
}

/// Converts every `Data` and `Version` key of `engine` (see the module
/// docs), `group_of` naming the group that holds a user key, in synced
/// batches of at most [`CHUNK_BYTES`], each atomic: a conversion cut short
/// resumes at the next open. Returns how many keys were converted.
pub fn convert_stored_versions(engine: &dyn Engine, group_of: &dyn Fn(&[u8]) -> Result<u64>) -> Result<u64> {
    convert_in_chunks(engine, group_of, CHUNK_BYTES)
}

fn convert_in_chunks(engine: &dyn Engine, group_of: &dyn Fn(&[u8]) -> Result<u64>, chunk_bytes: usize) -> Result<u64> {
    let mut converted = 0;
    // `Data` keys first: a key with versions has its record among them.
    loop {
        let mut wb = WriteBatch::new();
        let (mut bytes, mut last) = (0, None);
        for item in engine.scan_prefix(&keys::data_prefix()) {
            let (k, v) = item?;
            let user = keys::decode_data(&k)?;
            if engine.scan_prefix(&keys::version_prefix(user)).next().is_none() {
                wb.put(Key::Current(user).encode(), current_at_zero(&v)?);
            }
            bytes += k.len() + v.len();
            converted += 1;
            last = Some(k);
            if bytes >= chunk_bytes {
                break;
            }
        }
        let Some(last) = last else { break };
        wb.delete_range(keys::data_prefix(), successor(last));
        engine.write(wb, Durability::Sync)?;
    }
    // Then the versions, a whole user key's at a time.
    let (versions_start, versions_end) = keys::version_bounds(b"", b"");
    loop {
        let mut wb = WriteBatch::new();
        let (mut bytes, mut last_key) = (0, None);
        let mut gathered = Gathered::default();
        for item in engine.scan(
            std::ops::Bound::Included(versions_start.clone()),
            std::ops::Bound::Excluded(versions_end.clone()),
            arbor_storage::Direction::Forward,
        ) {
            let (k, v) = item?;
            let (user, stamp, pos) = keys::decode_version(&k)?;
            let entry_bytes = k.len() + v.len();
            if let Some((done, versions)) = gathered.add(user, stamp, pos, v) {
                put_converted(group_of(&done)?, &done, &versions, &mut wb);
                converted += 1;
                if bytes >= chunk_bytes {
                    // The key this entry starts goes to the next chunk.
                    gathered.take();
                    break;
                }
            }
            bytes += entry_bytes;
            last_key = Some(k);
        }
        // Left pending only when the scan reached the end: whole.
        if let Some((done, versions)) = gathered.take() {
            put_converted(group_of(&done)?, &done, &versions, &mut wb);
            converted += 1;
        }
        let Some(last) = last_key else { return Ok(converted) };
        wb.delete_range(versions_start.clone(), successor(last));
        engine.write(wb, Durability::Sync)?;
    }
}

/// The smallest key after `key`.
fn successor(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}

/// Converts the `Data` and `Version` entries of a snapshot image of
/// `group` as it is installed. Images list keys in order: `Data` keys are
/// held back until the versions have been seen, and a key's versions
/// (newest first) are gathered until the next key's start.
pub struct ImageRecords {
    group: u64,
    /// User key → record, of the `Data` entries not yet matched by a
    /// version.
    pending: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The versions of the user keys seen so far.
    versions: Gathered,
}

impl ImageRecords {
    pub fn new(group: u64) -> Self {
        Self { group, pending: BTreeMap::new(), versions: Gathered::default() }
    }

    /// Takes the image entry `key` if it is one this version no longer
    /// stores (a `Data` or `Version` key), putting what it converts to into
    /// `wb`. Returns whether it was taken.
    pub fn take(&mut self, key: &[u8], value: &[u8], wb: &mut WriteBatch) -> bool {
        if let Ok(user) = keys::decode_data(key) {
            self.pending.insert(user.to_vec(), value.to_vec());
            return true;
        }
        let Ok((user, stamp, pos)) = keys::decode_version(key) else { return false };
        self.pending.remove(&user);
        if let Some((done, versions)) = self.versions.add(user, stamp, pos, value.to_vec()) {
            put_converted(self.group, &done, &versions, wb);
        }
        true
    }

    /// Puts the last key's versions, and the current version of every
    /// record whose key had none, into `wb`.
    pub fn finish(mut self, wb: &mut WriteBatch) -> Result<()> {
        if let Some((user, versions)) = self.versions.take() {
            put_converted(self.group, &user, &versions, wb);
        }
        for (user, value) in std::mem::take(&mut self.pending) {
            wb.put(Key::Current(&user).encode(), current_at_zero(&value)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{encode_record, encode_version, KeyRange, Record, TreeRead, VersionedTree};
    use arbor_storage::{Memory, ReadView};
    use bytes::Bytes;

    fn rec(value: &str, stamp: u64) -> Record {
        Record { value: Bytes::copy_from_slice(value.as_bytes()), version: 2, create_stamp: 1, mod_stamp: stamp }
    }

    fn latest(engine: &Memory) -> Vec<(Vec<u8>, Record)> {
        let all = KeyRange { start: Vec::new(), end: Vec::new() };
        VersionedTree::latest(engine).scan(&all).collect::<Result<_>>().unwrap()
    }

    /// Keys under `/m` belong to group 2, the others to group 1.
    fn group_of(key: &[u8]) -> Result<u64> {
        Ok(if key.starts_with(b"/m") { 2 } else { 1 })
    }

    #[test]
    fn stored_versions_convert_in_atomic_chunks_and_a_second_pass_finds_none() {
        let engine = Memory::new();
        let mut b = WriteBatch::new();
        // `/x` has versions, its `Data` key is the newest one.
        b.put(Key::Version(b"/x", 3, 0).encode(), encode_version(Some(&rec("x-old", 3))));
        b.put(Key::Version(b"/x", 4, 1).encode(), encode_version(None));
        b.put(Key::Version(b"/x", 5, 0).encode(), encode_version(Some(&rec("x-now", 5))));
        b.put(Key::Data(b"/x").encode(), encode_record(&rec("x-now", 5)));
        b.put(Key::Version(b"/m/a", 7, 2).encode(), encode_version(Some(&rec("m-now", 7))));
        b.put(Key::Version(b"/m/a", 6, 0).encode(), encode_version(Some(&rec("m-old", 6))));
        // 30 keys from before versions existed, 20 with versions only.
        for i in 0..30 {
            b.put(Key::Data(format!("/y/{i:02}").as_bytes()).encode(), encode_record(&rec(&format!("y{i}"), 0)));
        }
        for i in 0..20 {
            let key = format!("/z/{i:02}");
            b.put(Key::Version(key.as_bytes(), 9, 0).encode(), encode_version(Some(&rec(&key, 9))));
        }
        engine.write(b, Durability::Sync).unwrap();

        // Chunks of ~5 records.
        assert_eq!(convert_in_chunks(&engine, &group_of, 200).unwrap(), 31 + 22);
        assert_eq!(engine.scan_prefix(&keys::data_prefix()).count(), 0, "no `Data` key is left");
        let (start, end) = keys::version_bounds(b"", b"");
        let versions = engine.scan(
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(end),
            arbor_storage::Direction::Forward,
        );
        assert_eq!(versions.count(), 0, "no `Version` key is left");
        let at = |group, t| VersionedTree::new(&engine, group, t);
        assert_eq!(at(1, 4).get(b"/x").unwrap(), None, "the tombstone at 4");
        assert_eq!(at(1, 3).get(b"/x").unwrap().unwrap().value, &b"x-old"[..]);
        assert_eq!(at(1, 2).get(b"/x").unwrap(), None);
        assert_eq!(at(2, 6).get(b"/m/a").unwrap().unwrap().value, &b"m-old"[..], "in its group's history");
        assert!(engine.get(&Key::History(2, 7, 2, b"/m/a").encode()).unwrap().is_some());
        let records = latest(&engine);
        assert_eq!(records.len(), 1 + 1 + 30 + 20);
        assert_eq!(records[0], (b"/m/a".to_vec(), rec("m-now", 7)));
        assert_eq!(records[1], (b"/x".to_vec(), rec("x-now", 5)));
        for (i, (key, record)) in records[2..32].iter().enumerate() {
            assert_eq!(key, format!("/y/{i:02}").as_bytes());
            assert_eq!(record, &rec(&format!("y{i}"), 0));
            assert_eq!(at(1, 0).get(key).unwrap().as_ref(), Some(record), "at stamp 0");
        }
        assert_eq!(convert_stored_versions(&engine, &group_of).unwrap(), 0, "a second open finds nothing to convert");
    }

    #[test]
    fn a_record_that_does_not_decode_stops_the_conversion_of_its_chunk() {
        let engine = Memory::new();
        let mut b = WriteBatch::new();
        b.put(Key::Data(b"/a").encode(), encode_record(&rec("a", 0)));
        b.put(Key::Data(b"/b").encode(), b"not a record".to_vec());
        engine.write(b, Durability::Sync).unwrap();
        let err = convert_stored_versions(&engine, &group_of).unwrap_err().to_string();
        assert!(err.contains("bad record encoding"), "{err}");
        assert_eq!(engine.scan_prefix(&keys::data_prefix()).count(), 2, "nothing of the chunk was written");
        assert!(latest(&engine).is_empty());
    }
}
