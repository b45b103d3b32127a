//! The executors' cache of current versions.
//!
//! A transaction reads the current record of every key it compares or
//! writes (a put needs the previous version number and create stamp). From
//! RocksDB that is a memtable or block-cache lookup, and at 64 clients those
//! point reads were half of the executors' time (docs/BENCHMARKS.md). This
//! cache answers them from memory for recently used keys.
//!
//! It must never answer differently from the engine, or replicas would
//! diverge. It holds, per key, the current version the applied state holds
//! (`None`: none), with the position of the write that made it, which the
//! apply needs to move it into the history when the key is written again;
//! and it stays equal to the applied state because of who writes:
//!
//! - the executors read a key's current record only through the epoch's
//!   overlay, then this cache, then the engine, and a miss is filled from
//!   the engine, which holds every earlier epoch (epochs apply one after the
//!   other, each written before the next runs);
//! - an epoch's new current versions enter the cache only after its batch
//!   is written ([`RecordCache::absorb`]); until then its writes live in the
//!   epoch's overlays, which are read first;
//! - nothing else writes a group's versions except a snapshot install,
//!   which empties the cache ([`RecordCache::clear`]).
//!
//! Each vshard has its own shard: only transactions holding a vshard touch
//! its keys, so the locks are uncontended. A shard is bounded in bytes by
//! two generations: entries go to the young one; when it is full it becomes
//! the old one (the previous old one is dropped), and a hit in the old one
//! moves the entry back to the young one. Recently used keys stay, the
//! memory stays below the budget, and there is no per-entry bookkeeping.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::tree::{vshard_of, StoredVersion};

/// Bytes counted for an entry besides its key and value (hash map slot,
/// record header, allocations).
const ENTRY_OVERHEAD: usize = 64;

/// One vshard's entries.
struct Shard {
    young: HashMap<Vec<u8>, Option<StoredVersion>>,
    old: HashMap<Vec<u8>, Option<StoredVersion>>,
    young_bytes: usize,
    /// The young generation turns old beyond this many bytes.
    generation_bytes: usize,
}

fn entry_bytes(key: &[u8], version: &Option<StoredVersion>) -> usize {
    key.len() + version.as_ref().map_or(0, StoredVersion::value_len) + ENTRY_OVERHEAD
}

impl Shard {
    fn new(generation_bytes: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), young_bytes: 0, generation_bytes }
    }

    fn get(&mut self, key: &[u8]) -> Option<Option<StoredVersion>> {
        if let Some(found) = self.young.get(key) {
            return Some(found.clone());
        }
        let (key, found) = self.old.remove_entry(key)?;
        let copy = found.clone();
        self.insert(key, found);
        Some(copy)
    }

    /// Inserts, turning the young generation old when it is full.
    /// A copy in the old generation is dropped: the young one shadows it.
    fn insert(&mut self, key: Vec<u8>, version: Option<StoredVersion>) {
        self.old.remove(&key);
        let added = entry_bytes(&key, &version);
        let replaced = self.young.get(&key).map_or(0, |r| entry_bytes(&key, r));
        self.young.insert(key, version);
        self.young_bytes = self.young_bytes + added - replaced;
        if self.young_bytes > self.generation_bytes {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }
}

/// Per-vshard caches of current versions, bounded in bytes (see the module
/// docs). A budget of 0 disables it.
pub struct RecordCache {
    vshards: u32,
    /// Empty when disabled.
    shards: Vec<Mutex<Shard>>,
}

impl RecordCache {
    /// A cache of at most about `budget_bytes` over `vshards` shards.
    pub fn new(vshards: u32, budget_bytes: usize) -> Self {
        let generation_bytes = budget_bytes / (2 * vshards.max(1) as usize);
        let shards = if generation_bytes == 0 {
            Vec::new()
        } else {
            (0..vshards).map(|_| Mutex::new(Shard::new(generation_bytes))).collect()
        };
        Self { vshards, shards }
    }

    fn shard(&self, vshard: u32) -> Option<std::sync::MutexGuard<'_, Shard>> {
        self.shards.get(vshard as usize).map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current version of `key` (of `vshard`) if cached: `Some(None)`
    /// means cached as having none.
    pub fn get(&self, vshard: u32, key: &[u8]) -> Option<Option<StoredVersion>> {
        self.shard(vshard)?.get(key)
    }

    /// Records what the applied state holds for `key` (read from the
    /// engine after a miss).
    pub fn fill(&self, vshard: u32, key: &[u8], version: &Option<StoredVersion>) {
        if let Some(mut shard) = self.shard(vshard) {
            shard.insert(key.to_vec(), version.clone());
        }
    }

    /// Takes in an epoch's new current versions once its batch is written.
    pub fn absorb(&self, versions: Vec<(Vec<u8>, StoredVersion)>) {
        if self.shards.is_empty() {
            return;
        }
        for (key, version) in versions {
            if let Some(mut shard) = self.shard(vshard_of(&key, self.vshards)) {
                shard.insert(key, Some(version));
            }
        }
    }

    /// Forgets everything (the state was replaced).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            *shard = Shard::new(shard.generation_bytes);
        }
    }

    /// Bytes held now (an estimate, as counted against the budget).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.young_bytes + s.old.iter().map(|(k, r)| entry_bytes(k, r)).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tree::Record;

    fn record(value: &[u8], version: u64) -> Option<StoredVersion> {
        let record = Record { value: value.to_vec().into(), version, create_stamp: 1, mod_stamp: version };
        Some(StoredVersion { stamp: version, pos: 0, record: Some(record) })
    }

    /// The vshard of `key` among 2.
    fn of(key: &[u8]) -> u32 {
        vshard_of(key, 2)
    }

    #[test]
    fn answers_what_was_filled_or_absorbed_and_nothing_else() {
        let cache = RecordCache::new(2, 1 << 20);
        let (a, gone) = (&b"/a"[..], &b"/gone"[..]);
        assert_eq!(cache.get(of(a), a), None, "a miss");
        cache.fill(of(a), a, &record(b"1", 1));
        cache.fill(of(gone), gone, &None);
        assert_eq!(cache.get(of(a), a), Some(record(b"1", 1)));
        assert_eq!(cache.get(of(gone), gone), Some(None), "cached as absent");
        assert_eq!(cache.get(1 - of(a), a), None, "shards are apart");
        let tombstone = StoredVersion { stamp: 2, pos: 0, record: None };
        cache.absorb(vec![(a.to_vec(), tombstone.clone()), (gone.to_vec(), record(b"back", 2).unwrap())]);
        assert_eq!(cache.get(of(a), a), Some(Some(tombstone)), "deleted");
        assert_eq!(cache.get(of(gone), gone), Some(record(b"back", 2)));
        cache.clear();
        assert_eq!((cache.get(of(a), a), cache.get(of(gone), gone)), (None, None));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn stays_within_its_budget_and_keeps_what_is_used() {
        let budget = 64 << 10;
        let cache = RecordCache::new(1, budget);
        let value = vec![7u8; 200];
        for i in 0..5_000u32 {
            cache.fill(0, format!("/k/{i}").as_bytes(), &record(&value, 1));
            // A hot key, read all along, is never dropped.
            assert_eq!(cache.get(0, b"/k/0"), Some(record(&value, 1)), "after {i} fills");
            assert!(cache.bytes() <= budget + 300, "{} bytes after {i} fills", cache.bytes());
        }
        assert_eq!(cache.get(0, b"/k/1"), None, "a cold key was dropped");
    }

    #[test]
    fn a_newer_record_shadows_an_older_one_across_generations() {
        // One shard whose young generation holds about two entries.
        let cache = RecordCache::new(1, 2 * 2 * (ENTRY_OVERHEAD + 10));
        cache.fill(0, b"/a", &record(b"old", 1));
        cache.fill(0, b"/b", &record(b"b", 1));
        cache.fill(0, b"/c", &record(b"c", 1)); // the young generation turns old
        cache.absorb(vec![(b"/a".to_vec(), record(b"new", 2).unwrap())]);
        for i in 0..10u8 {
            assert_eq!(cache.get(0, b"/a"), Some(record(b"new", 2)));
            cache.fill(0, &[b'/', b'x', i], &None);
        }
    }

    #[test]
    fn a_zero_budget_disables_it() {
        let cache = RecordCache::new(4, 0);
        cache.fill(0, b"/a", &record(b"1", 1));
        assert_eq!(cache.get(0, b"/a"), None);
    }
}
