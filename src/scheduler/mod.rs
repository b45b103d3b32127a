//! Per-vshard deterministic execution of one epoch.
//!
//! A group's key space is hashed into a fixed number of *vshards*
//! ([`crate::tree::vshard_of`]). Each vshard has an executor thread fed by a
//! bounded queue ([`sync::BoundedQueue`]). For an epoch, the apply thread
//! fans every transaction out, in log order, to the queues of the vshards it
//! touches (a range touches them all). Each executor takes its transactions
//! in order; a transaction touching several vshards runs exactly once, on the
//! last of them to reach it, while the others wait ([`sync::Rendezvous`]).
//! This is deterministic locking: conflicting transactions run in log order,
//! non-conflicting ones in parallel, and there is no deadlock because every
//! vshard waits only on transactions earlier in the same total order.
//!
//! Writes go to per-vshard in-memory overlays; when the epoch's latch
//! reaches zero the caller turns all overlays and the group's applied state
//! into ONE WriteBatch. The overlays are therefore committed atomically per
//! epoch, so after a crash every vshard resumes from the same log index (the
//! applied one): nothing applied twice, nothing skipped. Each vshard's
//! [`Watermark`] is kept in memory only, for progress.
//!
//! Full queues: `push` blocks the apply thread (never drops a transaction).
//! That cannot deadlock — every queued transaction has been sent to all its
//! vshards except possibly the one being pushed, and those drain in order —
//! and it cannot block Raft: openraft replicates and commits on its own
//! tasks while the state machine applies.

mod cache;
pub mod sync;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arbor_storage::{Engine, ReadView};

use crate::error::{Error, Result};
use crate::tree::{
    self, Footprint, KeyRange, Overlay, Record, RecordIter, StoredVersion, TreeRead, Txn, TxnOutcome, VersionedTree,
};
pub use cache::RecordCache;
use sync::{Arrival, BoundedQueue, Latch, Rendezvous, Watermark};

/// The default budget of a group's [`RecordCache`], in bytes. A miss
/// reads the key's newest version with an iterator seek, which costs more
/// for a key with many large versions (a growing value appended to), so
/// the cache is sized to hold a working set of tens of thousands of
/// records of a few kB (docs/BENCHMARKS.md, item 32).
pub const DEFAULT_RECORD_CACHE_BYTES: usize = 128 << 20;
/// Capacity of each vshard's queue, in transactions.
pub const VSHARD_QUEUE_CAPACITY: usize = 256;
/// The default of `epoch.inline_max_txns`: an epoch of at most this many
/// transactions runs on the applying thread when the executors are idle.
/// Handing an epoch to the executors costs several thread hand-offs; with
/// epochs of up to ~90 transactions (put and 4-key txn at 64 and 256
/// clients, 3 nodes on 2 cores) running them inline was 4–9% faster, with
/// 8–11% less CPU per operation (docs/BENCHMARKS.md).
pub const DEFAULT_INLINE_MAX_TXNS: usize = 256;

/// The vshards a transaction touches, sorted.
pub fn vshards_of(txn: &Txn, vshards: u32) -> Vec<u32> {
    let mut set = BTreeSet::new();
    for f in txn.footprint() {
        match f {
            Footprint::Key(k) => {
                set.insert(tree::vshard_of(k, vshards));
            }
            Footprint::Range(_) => return (0..vshards).collect(),
        }
    }
    set.into_iter().collect()
}

/// One write of one transaction: (its position in the epoch, key, new
/// record or `None` for a deletion).
pub type Change = (usize, Vec<u8>, Option<Record>);

/// One epoch being executed.
struct Epoch {
    engine: Arc<dyn Engine>,
    cache: Arc<RecordCache>,
    stamp: u64,
    index: u64,
    vshards: u32,
    overlays: Vec<Mutex<Overlay>>,
    /// Per vshard, every write in execution order: (txn position, key, record).
    changes: Vec<Mutex<Vec<Change>>>,
    outcomes: Vec<Mutex<Option<Result<TxnOutcome>>>>,
    latch: Latch,
}

struct Task {
    epoch: Arc<Epoch>,
    pos: usize,
    txn: Arc<Txn>,
    gate: Arc<Rendezvous>,
}

/// The view of a transaction: the stored tree under the epoch's overlays.
struct EpochView<'a> {
    epoch: &'a Epoch,
    stored: VersionedTree<'a>,
}

impl TreeRead for EpochView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Record>> {
        let v = tree::vshard_of(key, self.epoch.vshards);
        let pending = self.epoch.overlays[v as usize].lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        if let Some(p) = pending {
            return Ok(p);
        }
        if let Some(cached) = self.epoch.cache.get(v, key) {
            return Ok(cached.and_then(|c| c.record));
        }
        let stored = self.stored.current(key)?;
        self.epoch.cache.fill(v, key, &stored);
        Ok(stored.and_then(|c| c.record))
    }

    fn scan(&self, range: &KeyRange) -> RecordIter<'_> {
        // A range transaction holds every vshard: merge all overlays.
        let mut merged = Overlay::new();
        for o in &self.epoch.overlays {
            let o = o.lock().unwrap_or_else(|e| e.into_inner());
            merged.extend(tree::overlay_range(&o, range));
        }
        let items: Vec<_> = tree::overlay_range(&merged, range).collect();
        Box::new(tree::Merged::new(self.stored.scan(range), items.into_iter()))
    }
}

impl Epoch {
    fn execute(&self, pos: usize, txn: &Txn) {
        let run = || {
            let stored = VersionedTree::latest(self.engine.as_ref());
            let view = EpochView { epoch: self, stored };
            tree::execute(txn, &view, self.stamp).map(|(outcome, writes)| {
                for (key, record) in writes {
                    let v = tree::vshard_of(&key, self.vshards) as usize;
                    self.changes[v].lock().unwrap_or_else(|e| e.into_inner()).push((pos, key.clone(), record.clone()));
                    self.overlays[v].lock().unwrap_or_else(|e| e.into_inner()).insert(key, record);
                }
                outcome
            })
        };
        // A panic is a bug; it must stop the replica, not hang the epoch.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
            let what =
                panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            Err(Error::Fatal(format!(
                "transaction {pos} of log index {} panicked: {}",
                self.index,
                what.unwrap_or_default()
            )))
        });
        *self.outcomes[pos].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// The executors of one group.
pub struct Scheduler {
    vshards: u32,
    queues: Vec<Arc<BoundedQueue<Task>>>,
    marks: Arc<Vec<Watermark>>,
    /// Per vshard, the position of the last transaction handed to it.
    given: Arc<Vec<AtomicU64>>,
    threads: Vec<JoinHandle<()>>,
    /// Current records read by the executors (see [`RecordCache`]).
    cache: Arc<RecordCache>,
    /// Epochs of at most this many transactions run inline.
    inline_max: usize,
}

/// A read-only view of every vshard's progress, for the status API; clones
/// share the executors' counters.
#[derive(Clone)]
pub struct VshardProgress {
    done: Arc<Vec<Watermark>>,
    given: Arc<Vec<AtomicU64>>,
}

impl VshardProgress {
    /// Per vshard, how many log entries its executor is behind the last
    /// transaction handed to it, counting the entry it is working on: 0 once
    /// it passed everything it was given (idle), at least 1 while it has work
    /// queued.
    pub fn lags(&self) -> Vec<u64> {
        self.done
            .iter()
            .zip(self.given.iter())
            .map(|(done, given)| {
                let (done, given) = (done.get(), given.load(Ordering::Acquire));
                if done >= given {
                    0
                } else {
                    ((given >> 20) - (done >> 20)).max(1)
                }
            })
            .collect()
    }
}

/// The result of executing an epoch: an outcome per transaction (in order)
/// and every write of every transaction in transaction order (for versions
/// and watchers).
pub struct EpochOutput {
    pub outcomes: Vec<TxnOutcome>,
    pub changes: Vec<Change>,
}

impl Scheduler {
    /// Starts one executor thread per vshard.
    pub fn start(group: u64, vshards: u32) -> Self {
        assert!(vshards > 0);
        let marks: Arc<Vec<Watermark>> = Arc::new((0..vshards).map(|_| Watermark::default()).collect());
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for v in 0..vshards as usize {
            let queue = Arc::new(BoundedQueue::<Task>::new(VSHARD_QUEUE_CAPACITY));
            let (q, marks) = (queue.clone(), marks.clone());
            let handle = std::thread::Builder::new()
                .name(format!("g{group}-vshard{v}"))
                .spawn(move || executor_loop(&q, &marks[v]))
                .expect("spawn vshard executor");
            queues.push(queue);
            threads.push(handle);
        }
        let given = Arc::new((0..vshards).map(|_| AtomicU64::new(0)).collect());
        let cache = Arc::new(RecordCache::new(vshards, DEFAULT_RECORD_CACHE_BYTES));
        Self { vshards, queues, marks, given, threads, cache, inline_max: DEFAULT_INLINE_MAX_TXNS }
    }

    /// Replaces the record cache by an empty one of `bytes` (0 disables
    /// it). Only between epochs.
    pub fn set_record_cache_bytes(&mut self, bytes: usize) {
        self.cache = Arc::new(RecordCache::new(self.vshards, bytes));
    }

    /// Epochs of at most `txns` transactions run on the calling thread
    /// (when the executors are idle); 0 sends every epoch to them.
    pub fn set_inline_max_txns(&mut self, txns: usize) {
        self.inline_max = txns;
    }

    /// The executors' cache of current versions: an epoch's new ones go in
    /// once its batch is written ([`RecordCache::absorb`]); a replaced state
    /// empties it ([`RecordCache::clear`]).
    pub fn record_cache(&self) -> &RecordCache {
        &self.cache
    }

    /// The current version of `key` in `engine`, from the record cache if
    /// it holds it. Between an epoch's execution and the cache taking in its
    /// writes, that is the version before the epoch of every key its
    /// transactions read (which every write does first), without a read of
    /// the engine.
    pub fn current_version(&self, engine: &dyn ReadView, key: &[u8]) -> Result<Option<StoredVersion>> {
        match self.cache.get(tree::vshard_of(key, self.vshards), key) {
            Some(cached) => Ok(cached),
            None => VersionedTree::latest(engine).current(key),
        }
    }

    /// A handle on every vshard's progress (see [`VshardProgress::lags`]).
    pub fn progress(&self) -> VshardProgress {
        VshardProgress { done: self.marks.clone(), given: self.given.clone() }
    }

    pub fn vshards(&self) -> u32 {
        self.vshards
    }

    /// Each vshard's in-memory watermark (see [`Watermark::position`]).
    pub fn watermarks(&self) -> Vec<u64> {
        self.marks.iter().map(Watermark::get).collect()
    }

    /// Executes `txns` (in order) as the epoch at log `index` stamped
    /// `stamp`. Blocking: call from a blocking thread. The caller writes
    /// the versions of the output's `changes`, then hands the new current
    /// ones to the record cache ([`RecordCache::absorb`]) before the next
    /// epoch runs.
    pub fn run_epoch(
        &self,
        engine: Arc<dyn Engine>,
        index: u64,
        stamp: u64,
        txns: Vec<Arc<Txn>>,
    ) -> Result<EpochOutput> {
        let epoch = Arc::new(Epoch {
            engine,
            cache: self.cache.clone(),
            stamp,
            index,
            vshards: self.vshards,
            overlays: (0..self.vshards).map(|_| Mutex::new(Overlay::new())).collect(),
            changes: (0..self.vshards).map(|_| Mutex::new(Vec::new())).collect(),
            outcomes: txns.iter().map(|_| Mutex::new(None)).collect(),
            latch: Latch::new(txns.len()),
        });
        if txns.len() <= self.inline_max && self.idle() {
            self.run_inline(&epoch, index, &txns);
        } else {
            self.fan_out(&epoch, index, txns);
        }
        epoch.latch.wait();
        // Every transaction has run and written its overlays; waiting
        // vshards may still hold the epoch, so take the results out.
        let take = |m: &Mutex<Option<Result<TxnOutcome>>>| m.lock().unwrap_or_else(|e| e.into_inner()).take();
        let outcomes = epoch
            .outcomes
            .iter()
            .map(|o| take(o).unwrap_or_else(|| Err(Error::Fatal("transaction never executed".into()))))
            .collect::<Result<Vec<_>>>()?;
        let mut changes: Vec<Change> = epoch
            .changes
            .iter()
            .flat_map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        // Within a vshard, changes are in execution order; across vshards
        // only the transaction order matters (a key lives in one vshard).
        changes.sort_by_key(|c| c.0);
        Ok(EpochOutput { outcomes, changes })
    }
}

impl Scheduler {
    /// True when every executor has passed everything it was given (so no
    /// executor will touch its watermark until given more).
    fn idle(&self) -> bool {
        self.marks.iter().zip(self.given.iter()).all(|(done, given)| done.get() >= given.load(Ordering::Acquire))
    }

    /// Runs a small epoch on the calling thread, in log order: the same
    /// outcomes and writes as the executors produce (they too run every
    /// transaction after the earlier ones it conflicts with), without
    /// waking them. The watermarks advance as if they had.
    fn run_inline(&self, epoch: &Epoch, index: u64, txns: &[Arc<Txn>]) {
        for (pos, txn) in txns.iter().enumerate() {
            let at = Watermark::position(index, pos);
            let involved = vshards_of(txn, self.vshards);
            for &v in &involved {
                self.given[v as usize].fetch_max(at, Ordering::AcqRel);
            }
            epoch.execute(pos, txn);
            epoch.latch.count_down();
            for &v in &involved {
                self.marks[v as usize].advance(at);
            }
        }
    }

    /// Hands each transaction, in order, to the queues of its vshards.
    fn fan_out(&self, epoch: &Arc<Epoch>, index: u64, txns: Vec<Arc<Txn>>) {
        for (pos, txn) in txns.into_iter().enumerate() {
            let involved = vshards_of(&txn, self.vshards);
            let gate = Arc::new(Rendezvous::new(involved.len()));
            for v in involved {
                self.given[v as usize].fetch_max(Watermark::position(index, pos), Ordering::AcqRel);
                self.queues[v as usize].push(Task { epoch: epoch.clone(), pos, txn: txn.clone(), gate: gate.clone() });
            }
        }
    }
}

fn executor_loop(queue: &BoundedQueue<Task>, mark: &Watermark) {
    while let Some(task) = queue.pop() {
        match task.gate.arrive() {
            Arrival::Execute => {
                task.epoch.execute(task.pos, &task.txn);
                task.gate.release();
                task.epoch.latch.count_down();
            }
            Arrival::Wait => task.gate.wait(),
        }
        mark.advance(Watermark::position(task.epoch.index, task.pos));
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for q in &self.queues {
            q.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::tree::{Op, OpResult};
    use arbor_storage::Memory;

    fn incr(keys: &[&str]) -> Arc<Txn> {
        Arc::new(Txn {
            request_id: String::new(),
            compares: vec![],
            success: keys.iter().map(|k| Op::Increment { key: k.as_bytes().to_vec(), delta: 1 }).collect(),
            failure: vec![],
        })
    }

    #[test]
    fn multi_vshard_transactions_see_earlier_writes_in_log_order() {
        let mut s = Scheduler::start(1, 4);
        s.set_inline_max_txns(0);
        let engine: Arc<dyn Engine> = Arc::new(Memory::new());
        let keys = ["/a", "/b", "/c", "/d", "/e"];
        let txns: Vec<_> = (0..200).map(|i| incr(&[keys[i % 5], keys[(i * 3 + 1) % 5]])).collect();
        let out = s.run_epoch(engine, 7, 100, txns.clone()).unwrap();
        // Replay serially: the parallel result must equal the serial one.
        let mut serial = Overlay::new();
        for (txn, got) in txns.iter().zip(&out.outcomes) {
            let mem = Memory::new();
            let stored = VersionedTree::latest(&mem);
            let (want, writes) = tree::execute(txn, &tree::Layered { base: &stored, overlay: &serial }, 100).unwrap();
            assert_eq!(got, &want);
            serial.extend(writes);
        }
        let merged: Overlay = out.changes.into_iter().map(|(_, key, record)| (key, record)).collect();
        assert_eq!(merged, serial, "each key's last write");
        let TxnOutcome::Done { results, .. } = &out.outcomes[199] else { panic!() };
        assert!(matches!(results[0], OpResult::Increment { .. }));
        assert!(s.watermarks().iter().all(|&w| w >> 20 == 7), "every vshard passed the epoch");
    }

    #[test]
    fn small_epochs_run_inline_with_the_same_results_and_watermarks() {
        let mut s = Scheduler::start(1, 4);
        s.set_inline_max_txns(2);
        let engine: Arc<dyn Engine> = Arc::new(Memory::new());
        let keys = ["/a", "/b", "/c", "/d", "/e"];
        let mut serial = Overlay::new();
        let mut i = 0;
        // Small epochs (inline) right after big ones (fanned out, with
        // multi-vshard transactions whose waiting vshards may still be
        // finishing): results equal a serial replay, watermarks only grow.
        for (index, size) in [50usize, 1, 2, 40, 1, 1, 3, 2].into_iter().enumerate() {
            let txns: Vec<_> = (0..size)
                .map(|_| {
                    i += 1;
                    incr(&[keys[i % 5], keys[(i * 3 + 1) % 5]])
                })
                .collect();
            let index = index as u64 + 1;
            let out = s.run_epoch(engine.clone(), index, 100, txns.clone()).unwrap();
            for (txn, got) in txns.iter().zip(&out.outcomes) {
                let stored = VersionedTree::latest(engine.as_ref());
                let layered = tree::Layered { base: &stored, overlay: &serial };
                let (want, writes) = tree::execute(txn, &layered, 100).unwrap();
                assert_eq!(got, &want, "epoch {index} of {size}");
                serial.extend(writes);
            }
            // Until it takes in the epoch, the cache answers as the engine.
            let stored = VersionedTree::latest(engine.as_ref());
            for key in keys {
                let cached = s.current_version(engine.as_ref(), key.as_bytes()).unwrap();
                assert_eq!(cached, stored.current(key.as_bytes()).unwrap(), "epoch {index}");
            }
            // The next epoch reads the engine and the record cache, as
            // after the apply's batch.
            let mut wb = arbor_storage::WriteBatch::new();
            let changes = out.changes.iter().map(|(pos, key, record)| (*pos as u64, key.as_slice(), record.as_ref()));
            let before = |k: &[u8]| s.current_version(engine.as_ref(), k);
            let versions = tree::put_versions(1, index, changes, before, &mut wb).unwrap();
            let versions = versions.into_iter().map(|(k, v)| (k.to_vec(), v)).collect();
            engine.write(wb, arbor_storage::Durability::Sync).unwrap();
            s.record_cache().absorb(versions);
            serial.clear();
        }
        // Waiting vshards of the last fanned-out epoch finish on their own.
        for _ in 0..200 {
            if s.progress().lags().iter().all(|&l| l == 0) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(s.progress().lags(), vec![0; 4], "every vshard passed what it was given");
        assert!(s.watermarks().iter().any(|&w| w >> 20 == 8), "the last (inline) epoch moved watermarks");
    }

    #[test]
    fn ranges_lock_every_vshard() {
        let txn = Txn {
            request_id: String::new(),
            compares: vec![],
            success: vec![Op::DeleteRange(KeyRange::prefix(b"/x"))],
            failure: vec![],
        };
        assert_eq!(vshards_of(&txn, 4), vec![0, 1, 2, 3]);
        assert_eq!(vshards_of(&incr(&["/a"]), 4).len(), 1);
    }

    #[test]
    fn vshard_lag_counts_entries_between_what_it_passed_and_what_it_was_given() {
        let p = VshardProgress {
            done: Arc::new((0..4).map(|_| Watermark::default()).collect()),
            given: Arc::new((0..4).map(|_| AtomicU64::new(0)).collect()),
        };
        assert_eq!(p.lags(), vec![0; 4], "nothing given: idle");
        let at = Watermark::position;
        let cases = [(at(5, 3), at(5, 3)), (at(2, 0), at(5, 1)), (0, at(7, 0)), (at(9, 1), at(9, 4))];
        for (v, (done, given)) in cases.into_iter().enumerate() {
            p.done[v].advance(done);
            p.given[v].store(given, Ordering::Release);
        }
        assert_eq!(p.lags(), vec![0, 3, 7, 1], "idle, 3 entries behind, 7 behind, inside its current entry");
        let s = Scheduler::start(1, 2);
        assert_eq!(s.progress().lags(), vec![0, 0]);
    }
}
