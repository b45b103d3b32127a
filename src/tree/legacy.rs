//! Records stored as earlier versions of Arbor stored them: each key's
//! current record under a [`Key::Data`] key beside its versions. Now a
//! key's newest version is its current record, and a data directory or a
//! snapshot image with `Data` keys is converted as it is opened or
//! installed:
//!
//! - a `Data` key whose user key has versions is dropped: its record is the
//!   newest of them (both were written in the same batch, and the GC never
//!   collects a live key's newest version);
//! - one whose user key has none (written before versions existed) becomes
//!   its version at stamp 0: the current record, as it was, and now also
//!   what snapshot reads at any stamp see (before, they did not see the
//!   key at all).

use std::collections::BTreeMap;

use arbor_storage::{Durability, Engine, WriteBatch};

use crate::error::Result;
use crate::keys::{self, Key};
use crate::tree::{decode_record, encode_version};

/// How many bytes of records one synced batch of [`move_records_into_versions`]
/// converts.
const CHUNK_BYTES: usize = 16 << 20;

/// The version, at stamp 0, of the record `value` of `user`'s `Data` key.
fn version_at_zero(user: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let record = decode_record(value)?;
    Ok((Key::Version(user, 0, 0).encode(), encode_version(Some(&record))))
}

/// Whether `view` holds a version of `user`.
fn has_versions(view: &dyn arbor_storage::ReadView, user: &[u8]) -> Result<bool> {
    let prefix = keys::version_prefix(user);
    let mut cursor = view.cursor(prefix.clone(), arbor_storage::prefix_end(&prefix));
    cursor.seek(&prefix)?;
    Ok(cursor.current().is_some())
}

/// Converts every `Data` key of `engine` (see the module docs), in synced
/// batches of at most [`CHUNK_BYTES`], each atomic: a conversion cut short
/// resumes at the next open. Returns how many records were converted.
pub fn move_records_into_versions(engine: &dyn Engine) -> Result<u64> {
    move_in_chunks(engine, CHUNK_BYTES)
}

fn move_in_chunks(engine: &dyn Engine, chunk_bytes: usize) -> Result<u64> {
    let mut moved = 0;
    loop {
        let mut wb = WriteBatch::new();
        let (mut bytes, mut last) = (0, None);
        for item in engine.scan_prefix(&keys::data_prefix()) {
            let (k, v) = item?;
            let user = keys::decode_data(&k)?;
            if !has_versions(engine, user)? {
                let (key, version) = version_at_zero(user, &v)?;
                wb.put(key, version);
            }
            bytes += k.len() + v.len();
            moved += 1;
            last = Some(k);
            if bytes >= chunk_bytes {
                break;
            }
        }
        let Some(last) = last else { return Ok(moved) };
        let mut end = last;
        end.push(0);
        wb.delete_range(keys::data_prefix(), end);
        engine.write(wb, Durability::Sync)?;
    }
}

/// Converts the `Data` entries of a snapshot image as it is installed: they
/// are held back until the image's versions have been seen, then turned
/// into versions at stamp 0 if their key had none.
#[derive(Default)]
pub struct ImageRecords {
    /// User key → record, of the `Data` entries not yet matched by a
    /// version.
    pending: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl ImageRecords {
    /// Takes the image entry `key` if it is one this version no longer
    /// stores (a `Data` key), and notes the versions of the others.
    /// Returns whether it was taken.
    pub fn take(&mut self, key: &[u8], value: &[u8]) -> bool {
        if let Ok(user) = keys::decode_data(key) {
            self.pending.insert(user.to_vec(), value.to_vec());
            return true;
        }
        if !self.pending.is_empty() {
            if let Ok((user, _, _)) = keys::decode_version(key) {
                self.pending.remove(&user);
            }
        }
        false
    }

    /// Puts the version of every record whose key had none into `wb`.
    pub fn finish(self, wb: &mut WriteBatch) -> Result<()> {
        for (user, value) in self.pending {
            let (key, version) = version_at_zero(&user, &value)?;
            wb.put(key, version);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{encode_record, encode_version, KeyRange, Record, TreeRead, VersionedTree};
    use arbor_storage::{Memory, ReadView};

    fn rec(value: &str, stamp: u64) -> Record {
        Record { value: value.into(), version: 2, create_stamp: 1, mod_stamp: stamp }
    }

    fn latest(engine: &Memory) -> Vec<(Vec<u8>, Record)> {
        let all = KeyRange { start: Vec::new(), end: Vec::new() };
        VersionedTree::latest(engine).scan(&all).collect::<Result<_>>().unwrap()
    }

    #[test]
    fn data_keys_become_versions_in_atomic_chunks_and_a_second_pass_finds_none() {
        let engine = Memory::new();
        let mut b = WriteBatch::new();
        // `/x` has versions, its `Data` key is the newest one.
        b.put(Key::Version(b"/x", 3, 0).encode(), encode_version(Some(&rec("x-old", 3))));
        b.put(Key::Version(b"/x", 5, 0).encode(), encode_version(Some(&rec("x-now", 5))));
        b.put(Key::Data(b"/x").encode(), encode_record(&rec("x-now", 5)));
        // 30 keys from before versions existed.
        for i in 0..30 {
            b.put(Key::Data(format!("/y/{i:02}").as_bytes()).encode(), encode_record(&rec(&format!("y{i}"), 0)));
        }
        engine.write(b, Durability::Sync).unwrap();

        // Chunks of ~5 records.
        assert_eq!(move_in_chunks(&engine, 200).unwrap(), 31);
        assert_eq!(engine.scan_prefix(&keys::data_prefix()).count(), 0, "no `Data` key is left");
        assert_eq!(engine.get(&Key::Version(b"/x", 0, 0).encode()).unwrap(), None, "/x kept its versions only");
        assert_eq!(VersionedTree::new(&engine, 4).get(b"/x").unwrap().unwrap().value, b"x-old");
        let records = latest(&engine);
        assert_eq!(records.len(), 31);
        assert_eq!(records[0], (b"/x".to_vec(), rec("x-now", 5)));
        for (i, (key, record)) in records[1..].iter().enumerate() {
            assert_eq!(key, format!("/y/{i:02}").as_bytes());
            assert_eq!(record, &rec(&format!("y{i}"), 0));
            assert!(engine.get(&Key::Version(key, 0, 0).encode()).unwrap().is_some(), "at stamp 0");
        }
        assert_eq!(move_records_into_versions(&engine).unwrap(), 0, "a second open finds nothing to convert");
    }

    #[test]
    fn a_record_that_does_not_decode_stops_the_conversion_of_its_chunk() {
        let engine = Memory::new();
        let mut b = WriteBatch::new();
        b.put(Key::Data(b"/a").encode(), encode_record(&rec("a", 0)));
        b.put(Key::Data(b"/b").encode(), b"not a record".to_vec());
        engine.write(b, Durability::Sync).unwrap();
        let err = move_records_into_versions(&engine).unwrap_err().to_string();
        assert!(err.contains("bad record encoding"), "{err}");
        assert_eq!(engine.scan_prefix(&keys::data_prefix()).count(), 2, "nothing of the chunk was written");
        assert!(latest(&engine).is_empty());
    }
}
