//! The sequencer state machine: what every replica of a group does with each
//! committed log entry, in log order.
//!
//! For an epoch entry:
//! 1. **Redelivery guard**: an index at or below the applied index is
//!    skipped; an index that is not applied + 1 is fatal.
//! 2. **Epoch check**: an epoch at or below the last applied one is fatal
//!    (the replica stops: it would otherwise diverge); a jump over missing
//!    epochs (an old leader's unfinished proposals) is logged and counted.
//! 3. **Dedup**: a transaction whose request id already has a result gets
//!    that first result and is not executed again.
//! 4. **Fan-out and execution** on the vshard executors ([`Scheduler`]).
//! 5. **One WriteBatch** with the epoch's data (each written key's new
//!    `Current` version, and each version a write superseded in the group's
//!    `History`), the dedup entries, the version GC and the applied state,
//!    written before the entry counts as applied (and before any client
//!    hears of it). See "Durability" below for why this write skips
//!    RocksDB's WAL.
//! 6. **Publication** of the new applied stamp (the closed timestamp, see
//!    below) and of the epoch's changes to this replica's watchers.
//! 7. **Answers**: on the leader that proposed the epoch, its clients get
//!    their outcomes from here, on the applying thread, rather than through
//!    openraft's reply to the proposal (two task hand-offs later).
//!
//! ## Stamps, the closed timestamp and version GC
//!
//! Every epoch carries its leader's HLC stamp; the state machine applies it
//! as `max(batch stamp, previous stamp + 1)`, so applied stamps strictly
//! increase along the log *whatever any leader's clock says* — this rule is
//! deterministic, so it holds on every replica and across leader changes (a
//! leader also mints above the applied stamp, so the
//! rule rarely has to lift a stamp). Hence the stamp of the last applied
//! epoch is a **closed timestamp**: no epoch applied later can carry a lower
//! or equal stamp, and the state at any `t` up to it is final on this
//! replica. A snapshot read at `t` waits until the closed timestamp reaches
//! `t`, then reads the newest version at or below `t` of each key: its
//! current one, or the first old enough along the chain of versions each
//! one superseded (`tree::VersionedTree`).
//!
//! ## Version GC
//!
//! Versions no read can see are collected below the **GC horizon**: the
//! leader puts `stamp - retention` in each batch and the horizon only moves
//! forward. A version superseded at stamp `s` is stored under
//! `History(group, s, ..)`, and reads at or above the horizon never see one
//! superseded at or below it; the group's history is written in stamp
//! order, so everything up to the horizon is one range at its front, deleted
//! with one range deletion every [`HISTORY_GC_INTERVAL`] log entries (one
//! per epoch would pile up hundreds of range deletions a second). It deletes
//! a period at a time, up to the horizon rounded down to about a quarter of
//! the retention, and starts at the group's first version still stored:
//! RocksDB compacts by the span of a file's keys, and a deletion reaching
//! the front of the history in every flush made each compaction rewrite all
//! of it (see `collect_history`). A key's
//! current version is only collected if it is a tombstone: an epoch at
//! stamp `s` that left keys deleted stores one index entry
//! `VersionGc(group, s)` listing them, and once the horizon reaches `s` each
//! one still deleted since `s` loses its tombstone. The index is processed
//! in stamp order, a bounded number of keys per epoch, by every replica
//! alike. Request ids for dedup expire the same way, through one
//! `DedupExpiry(group, s)` list per epoch.
//!
//! So collecting the history costs a seek and a range deletion now and
//! then. Earlier versions of Arbor kept every version of a key beside its
//! current one, and collecting meant seeking each written key's versions:
//! at tens of thousands of writes a second that took more than the writes
//! themselves once the horizon caught up with the first of them
//! (docs/BENCHMARKS.md, item 43).
//!
//! ## Durability
//!
//! An epoch is durable before it is applied: it is committed, so a majority
//! of the group has appended it with a synced write. The apply batch (data
//! and applied state together, atomically) is therefore written without
//! RocksDB's WAL ([`Durability::Unlogged`]): the Raft log already is the
//! write-ahead log of the state machine, as etcd's WAL is for its backend.
//! The batch becomes durable when the memtable holding it is flushed, and a
//! flush persists every write before it, so after a crash (of the process
//! or the machine) the recovered state is exactly the state after some
//! earlier epoch, applied index included. The replica then applies the
//! entries after it again, deterministically, reaching the same state and
//! answering the same outcomes (the dedup records go with it).
//!
//! That needs those entries to still be in the log. The log is purged only
//! up to a snapshot (openraft never purges past its snapshot), and:
//! - a snapshot this replica takes is recorded only after a flush
//!   ([`SnapshotStore::record`](super::snapshot::SnapshotStore::record)),
//!   so the durable state is at or past it before anything it covers is
//!   purged;
//! - an installed snapshot is written with a synced, logged batch.
//!
//! So each write costs one fsync per replica (the log append) and goes
//! through the WAL once, in the log entry; the data, its history and the
//! dedup records reach the disk in flushes. A restart re-applies at most
//! what the memtables held.
//!
//! Any storage error or broken invariant is returned as an error, which
//! stops the group's Raft instance: the replica stops rather than diverge.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arbor_storage::{Direction, Durability, Engine, ReadView, WriteBatch};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hlc::{self, Hlc};
use crate::keys::{self, Key};
use crate::raft::{Entry, LogId, Membership, SnapshotMeta};
use crate::routing::RangeDesc;
use crate::scheduler::Scheduler;
use crate::sequencer::driver::{epoch_term, Waiting};
use crate::sequencer::snapshot::{self, SnapshotContent, SnapshotFiles, SnapshotStore};
use crate::sequencer::EpochBatch;
use crate::tree::{self, Footprint, Record, Txn, TxnOutcome};

/// How long (in HLC physical time) a request id's first result is kept for
/// retries. A constant, not a setting: every replica must expire the same
/// entries at the same epoch.
pub const DEDUP_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Expired request ids are removed an epoch's list at a time, until at
/// least this many were removed in one epoch.
const DEDUP_GC_PER_EPOCH: usize = 1024;
/// Every this many log entries, an epoch deletes the group's history up
/// to the GC horizon.
pub const HISTORY_GC_INTERVAL: u64 = 64;
/// Tombstones are collected an epoch's key list at a time, until the keys
/// of at least this many were looked at in one epoch.
const VERSION_GC_PER_EPOCH: usize = 4096;
/// Epochs a watcher may fall behind before it is cancelled.
pub const WATCH_FEED_CAPACITY: usize = 1024;

/// What the state machine has applied, persisted as `Key::Applied(group)` in
/// the same WriteBatch as the data it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub epoch: u64,
    pub stamp: u64,
    pub epoch_gaps: u64,
    /// Versions below this stamp may have been collected.
    #[serde(default)]
    pub gc_horizon: u64,
}

/// The result of applying one log entry, returned to the proposing leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochResponse {
    pub index: u64,
    pub epoch: u64,
    pub stamp: u64,
    /// One outcome per transaction of the epoch, in order.
    pub outcomes: Vec<TxnOutcome>,
}

enum EpochCheck {
    /// Execute the epoch with this (monotonic) stamp; `next` has the new
    /// stamp and GC horizon.
    Apply { stamp: u64 },
    /// Reject every transaction of the epoch, retryably.
    Stale(String),
}

/// A request id's first result.
#[derive(Serialize, Deserialize)]
struct DedupRecord {
    stamp: u64,
    outcome: TxnOutcome,
}

/// What a replica's watchers receive, in apply order.
#[derive(Clone, Debug)]
pub enum Feed {
    /// An applied epoch: its stamp and every change, in commit order.
    Epoch(Arc<EpochChanges>),
    /// A snapshot replaced the group's state up to `stamp`: watchers must
    /// resume from their last stamp (the versions came with the snapshot).
    Reset { stamp: u64 },
}

/// A key and its new record, or `None` for a deletion.
pub type KeyChange = (Vec<u8>, Option<Record>);

#[derive(Debug)]
pub struct EpochChanges {
    pub stamp: u64,
    /// Every change, in commit order.
    pub changes: Vec<KeyChange>,
}

/// What [`GroupStateMachine::execute`] produced besides the batch.
struct EpochWrites {
    outcomes: Vec<TxnOutcome>,
    /// Every change, in commit order (for watchers).
    changes: Vec<KeyChange>,
    /// Each written key's new current version (for the record cache).
    records: Vec<(Vec<u8>, tree::StoredVersion)>,
}

/// Progress of a group's state machine, readable without locks by the
/// sequencer driver, the read path and the status API.
#[derive(Debug)]
pub struct GroupShared {
    pub applied_index: AtomicU64,
    pub epoch: AtomicU64,
    pub stamp: AtomicU64,
    pub epoch_gaps: AtomicU64,
    pub gc_horizon: AtomicU64,
    /// The applied stamp (closed timestamp), for readers waiting on it.
    pub closed: tokio::sync::watch::Sender<u64>,
    /// Applied changes, for watchers.
    pub feed: tokio::sync::broadcast::Sender<Feed>,
    /// The clients waiting for each epoch this node proposed, by epoch
    /// number: the apply answers them (see [`Waiting`]).
    pub waiting: std::sync::Mutex<HashMap<u64, Waiting>>,
}

impl GroupShared {
    /// Answers the clients of the epoch `response` is for, if this node
    /// proposed it and they are still waiting.
    fn answer(&self, response: &EpochResponse) {
        if let Some(w) = self.take_waiting(response.epoch) {
            w.answer(response);
        }
    }

    /// Registers the clients of an epoch this node is about to propose.
    pub fn wait_for(&self, epoch: u64, waiting: Waiting) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(epoch, waiting);
    }

    /// The clients of `epoch`, if nobody answered them yet.
    pub fn take_waiting(&self, epoch: u64) -> Option<Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&epoch)
    }
}

impl Default for GroupShared {
    fn default() -> Self {
        Self {
            applied_index: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
            epoch_gaps: AtomicU64::new(0),
            gc_horizon: AtomicU64::new(0),
            closed: tokio::sync::watch::channel(0).0,
            feed: tokio::sync::broadcast::channel(WATCH_FEED_CAPACITY).0,
            waiting: Default::default(),
        }
    }
}

pub struct GroupStateMachine {
    group: u64,
    range: RangeDesc,
    engine: Arc<dyn Engine>,
    scheduler: Scheduler,
    shared: Arc<GroupShared>,
    hlc: Arc<Hlc>,
    state: AppliedState,
    /// When a stamp too far ahead was last logged.
    skew_warned: std::sync::Mutex<Option<std::time::Instant>>,
    /// Builds, stores and reads this group's snapshots.
    snapshots: SnapshotStore,
    /// Where the GC scans of the next epoch start (see [`GcCursor`]).
    gc_cursor: GcCursor,
}

/// Deletes `group`'s history up to the boundary of [`history_gc_boundary`]
/// below `horizon`: one range deletion from its first version stored, if
/// that one was superseded before the boundary; nothing otherwise.
///
/// Both ends are chosen for RocksDB's compactions, which pick files by the
/// span of their keys, range deletions included. A range deletion that
/// reached down to the front of the group's history would make each flushed
/// file of it overlap every older one, so that each compaction of new
/// history read and rewrote all of it. Starting at the first version stored
/// and deleting only once a period keeps that to one such compaction per
/// period (docs/BENCHMARKS.md, item 46). Which versions are deleted is the
/// same on every replica, whatever its files hold: the versions stored, the
/// stamp and the horizon are state they share.
fn collect_history(view: &dyn ReadView, group: u64, stamp: u64, horizon: u64, wb: &mut WriteBatch) -> Result<()> {
    let boundary = history_gc_boundary(stamp, horizon);
    let Some(last) = boundary.checked_sub(1) else { return Ok(()) };
    let end = keys::history_after(group, last);
    let first = view
        .scan(Bound::Included(keys::history_prefix(group)), Bound::Excluded(end.clone()), Direction::Forward)
        .next();
    if let Some(item) = first {
        let (start, _) = item?;
        wb.delete_range(start, end);
    }
    Ok(())
}

/// The stamp below which an epoch at `stamp` collects the history, given
/// the GC `horizon`: the horizon rounded down to a multiple of the largest
/// power of two (in stamp units) up to a quarter of the retention (`stamp -
/// horizon`). So the history is deleted once a period of about a quarter of
/// the retention, and keeps at most that much more than the retention asks
/// for; groups with the same retention share the boundaries, so they delete
/// at about the same time, into the same few flushes.
pub fn history_gc_boundary(stamp: u64, horizon: u64) -> u64 {
    let quarter = (stamp.saturating_sub(horizon) / 4).max(1);
    let period = 1u64 << quarter.ilog2();
    horizon / period * period
}

/// Deletes `key`'s current version if it is a tombstone from stamp `s` or
/// earlier: once the horizon passed `s`, no read can see a version before
/// it, and no version is left after it.
fn collect_tombstone(view: &dyn ReadView, key: &[u8], s: u64, wb: &mut WriteBatch) -> Result<()> {
    let current = Key::Current(key).encode();
    if let Some(stored) = view.get(&current)? {
        let version = tree::StoredVersion::decode(&stored)?;
        if version.stamp <= s && version.record.is_none() {
            wb.delete(current);
        }
    }
    Ok(())
}

/// Where the version-GC and dedup-expiry scans resume: just after the last
/// index entry they deleted. Entries are processed (and deleted) in key
/// order and new ones are written at higher stamps, so nothing is left
/// below the cursor, and starting there finds the same entries as starting
/// at the prefix — without walking over the tombstones of every entry
/// deleted since the last compaction, which made each epoch's scans slower
/// the longer a node ran. Memory only: after a restart or a snapshot
/// install the scans start at the prefix again.
#[derive(Clone, Debug, Default)]
struct GcCursor {
    versions: IndexCursor,
    dedup: IndexCursor,
}

/// One GC index's cursor, and the lowest stamp of the entries after it
/// when known: a scan that reached the end of its range learns the stamp of
/// the first entry beyond (or that there is none), and every entry written
/// since lowers it. A scan whose range ends at or below that stamp would
/// find nothing, so it is skipped: most epochs have nothing to collect, and
/// the two empty scans (a RocksDB iterator each) cost a put ~2% of every
/// replica's CPU (docs/BENCHMARKS.md). Skipping changes no write, so
/// replicas that know more or less agree.
#[derive(Clone, Debug, Default)]
struct IndexCursor {
    /// The last entry deleted.
    after: Option<Vec<u8>>,
    /// Every entry after `after` has a stamp at or above this (`u64::MAX`:
    /// there is none); `None` when unknown.
    lowest: Option<u64>,
}

/// Decodes a GC index key into its stamp and what it names.
type IndexKeyDecoder<T> = fn(&[u8]) -> std::result::Result<(u64, T), arbor_storage::keycode::DecodeError>;

/// Where an index scan stopped.
enum ScanEnd {
    /// At the per-epoch limit, possibly before its range's end.
    Limit,
    /// At the first entry past its range, of this stamp.
    Beyond(u64),
    /// At the end of the index.
    Exhausted,
}

impl IndexCursor {
    fn start(&self, prefix: Vec<u8>) -> Bound<Vec<u8>> {
        match &self.after {
            Some(last_deleted) => Bound::Excluded(last_deleted.clone()),
            None => Bound::Included(prefix),
        }
    }

    /// Whether entries of stamps below `bound` may remain.
    fn may_hold_below(&self, bound: u64) -> bool {
        self.lowest.is_none_or(|lowest| lowest < bound)
    }

    fn scanned(&mut self, end: ScanEnd) {
        self.lowest = match end {
            ScanEnd::Limit => None,
            ScanEnd::Beyond(stamp) => Some(stamp),
            ScanEnd::Exhausted => Some(u64::MAX),
        };
    }

    /// An entry of `stamp` was written.
    fn added(&mut self, stamp: u64) {
        self.lowest = self.lowest.map(|lowest| lowest.min(stamp));
    }
}

/// The applied state of `group` as `view` sees it.
pub fn read_applied(view: &dyn ReadView, group: u64) -> Result<AppliedState> {
    match view.get(&Key::Applied(group).encode())? {
        Some(bytes) => decode(&bytes, "applied state"),
        None => Ok(AppliedState::default()),
    }
}

/// The end of the keys under `prefix` (exclusive).
fn prefix_end_bound(prefix: &[u8]) -> Bound<Vec<u8>> {
    match arbor_storage::prefix_end(prefix) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    }
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Corruption(format!("{what}: {e}")))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("in-memory values always encode")
}

impl GroupStateMachine {
    /// Opens the state machine of `group`, resuming from its persisted
    /// applied state.
    pub fn open(
        range: RangeDesc,
        engine: Arc<dyn Engine>,
        vshards: u32,
        shared: Arc<GroupShared>,
        hlc: Arc<Hlc>,
        durability: Durability,
    ) -> Result<Self> {
        let group = range.group;
        let state = match engine.get(&Key::Applied(group).encode())? {
            Some(bytes) => decode(&bytes, "applied state")?,
            None => AppliedState::default(),
        };
        let scheduler = Scheduler::start(group, vshards);
        let skew_warned = std::sync::Mutex::new(None);
        let snapshots = SnapshotStore {
            group,
            range: range.clone(),
            engine: engine.clone(),
            // `Sync` except under the test-only `volatile_writes` switch.
            durability,
            lock: Arc::new(std::sync::Mutex::new(())),
            files: SnapshotFiles::default(),
            images: Default::default(),
        };
        let sm = Self {
            group,
            range,
            engine,
            scheduler,
            shared,
            hlc,
            state,
            skew_warned,
            snapshots,
            gc_cursor: GcCursor::default(),
        };
        sm.publish();
        Ok(sm)
    }

    pub fn applied(&self) -> &AppliedState {
        &self.state
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    fn publish(&self) {
        let s = &self.shared;
        s.applied_index.store(self.state.last_applied.map_or(0, |l| l.index), Ordering::Release);
        s.epoch.store(self.state.epoch, Ordering::Release);
        s.stamp.store(self.state.stamp, Ordering::Release);
        s.epoch_gaps.store(self.state.epoch_gaps, Ordering::Release);
        s.gc_horizon.store(self.state.gc_horizon, Ordering::Release);
        self.adopt_stamp();
        s.closed.send_replace(self.state.stamp);
    }

    /// Moves this node's HLC past the applied stamp, unless that stamp is
    /// further ahead of the local clock than the maximum offset: then it is
    /// not adopted (a leader with a runaway clock must not drag every
    /// node's clock along), and the skew is logged, at most every 10 s.
    fn adopt_stamp(&self) {
        if let Err(e) = self.hlc.update(self.state.stamp) {
            let now = std::time::Instant::now();
            let mut last = self.skew_warned.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10)) {
                *last = Some(now);
                tracing::warn!(group = self.group, stamp = self.state.stamp, "applied epoch stamp not adopted: {e}");
            }
        }
    }

    /// Applies one committed entry.
    pub fn apply(&mut self, entry: Entry) -> Result<EpochResponse> {
        let index = entry.log_id.index;
        let applied = self.state.last_applied.map(|l| l.index);
        if applied.is_some_and(|a| index <= a) {
            tracing::warn!(group = self.group, index, "entry delivered again; skipped");
            return Ok(EpochResponse { index, ..Default::default() });
        }
        let expected = applied.map_or(index, |a| a + 1);
        if index != expected {
            // openraft applies contiguously; its storage suite also applies
            // blank and membership entries with holes, which carry no
            // transactions. An epoch after a hole could mean skipped epochs.
            if matches!(entry.payload, EntryPayload::Normal(_)) {
                return Err(Error::Fatal(format!(
                    "group {}: applied index jumped from {} to {index}",
                    self.group,
                    expected - 1
                )));
            }
            tracing::warn!(group = self.group, index, expected, "non-epoch entry applied out of sequence");
        }
        let mut next = self.state.clone();
        let mut gc_cursor = self.gc_cursor.clone();
        next.last_applied = Some(entry.log_id);
        let mut wb = WriteBatch::new();
        let mut changes = None;
        let mut records = Vec::new();
        let response = match entry.payload {
            EntryPayload::Blank => EpochResponse { index, ..Default::default() },
            EntryPayload::Membership(m) => {
                next.membership = Membership::new(Some(entry.log_id), m);
                EpochResponse { index, ..Default::default() }
            }
            EntryPayload::Normal(payload) => {
                let batch = EpochBatch::decode(&payload)
                    .map_err(|e| Error::Corruption(format!("group {} log index {index}: {e}", self.group)))?;
                match self.check_epoch(&batch, entry.log_id.leader_id.term, index, &mut next)? {
                    EpochCheck::Stale(reason) => EpochResponse {
                        index,
                        epoch: batch.epoch,
                        stamp: next.stamp,
                        outcomes: batch.txns.iter().map(|_| TxnOutcome::Retry { reason: reason.clone() }).collect(),
                    },
                    EpochCheck::Apply { stamp } => {
                        let epoch = batch.epoch;
                        let written = self.execute(index, batch, stamp, next.gc_horizon, &mut wb, &mut gc_cursor)?;
                        changes = Some(EpochChanges { stamp, changes: written.changes });
                        records = written.records;
                        EpochResponse { index, epoch, stamp, outcomes: written.outcomes }
                    }
                }
            }
        };
        wb.put(Key::Applied(self.group).encode(), encode(&next));
        // Unlogged: see "Durability" in the module docs.
        self.engine.write(wb, Durability::Unlogged)?;
        // Only now: the cache must never hold what the engine does not.
        self.scheduler.record_cache().absorb(records);
        self.state = next;
        self.gc_cursor = gc_cursor;
        self.publish();
        if let Some(c) = changes {
            if self.shared.feed.receiver_count() > 0 {
                // Err = no receiver left: nobody to tell.
                let _ = self.shared.feed.send(Feed::Epoch(Arc::new(c)));
            }
        }
        if response.epoch != 0 {
            self.shared.answer(&response);
        }
        Ok(response)
    }

    /// Checks an epoch against the applied state and advances `next`.
    fn check_epoch(
        &self,
        batch: &EpochBatch,
        entry_term: u64,
        index: u64,
        next: &mut AppliedState,
    ) -> Result<EpochCheck> {
        let proposed_in = epoch_term(batch.epoch);
        if proposed_in != entry_term {
            // Numbered by a leader of another term (leadership changed between
            // numbering and appending): executing it could reorder epochs.
            let reason = format!(
                "epoch {} was numbered in term {proposed_in} but committed in term {entry_term}; the leader changed, retry",
                batch.epoch
            );
            tracing::warn!(group = self.group, index, "{reason}");
            return Ok(EpochCheck::Stale(reason));
        }
        let last = self.state.epoch;
        if batch.epoch <= last {
            return Err(Error::Fatal(format!(
                "group {} log index {index}: epoch {} is not after the applied epoch {last}; stopping the replica",
                self.group, batch.epoch
            )));
        }
        if epoch_term(last) == proposed_in && batch.epoch != last + 1 {
            next.epoch_gaps += 1;
            tracing::warn!(group = self.group, index, from = last, to = batch.epoch, "epoch gap within a term");
        }
        // Stamps never go backwards along the log, whatever the leader's clock.
        let stamp = batch.stamp.max(self.state.stamp + 1);
        next.epoch = batch.epoch;
        next.stamp = stamp;
        next.gc_horizon = self.state.gc_horizon.max(batch.gc_before.min(stamp));
        Ok(EpochCheck::Apply { stamp })
    }

    /// Dedup, execution and the epoch's writes into `wb`; returns the
    /// outcomes and every change in commit order.
    fn execute(
        &self,
        index: u64,
        batch: EpochBatch,
        stamp: u64,
        gc_horizon: u64,
        wb: &mut WriteBatch,
        gc_cursor: &mut GcCursor,
    ) -> Result<EpochWrites> {
        enum Plan {
            Run(usize),
            Known(TxnOutcome),
            SameAs(usize),
        }
        // Moved, not copied, to the executors.
        let txns: Vec<Arc<Txn>> = batch.txns.into_iter().map(Arc::new).collect();
        let mut plans = Vec::with_capacity(txns.len());
        let mut to_run = Vec::new();
        let mut first_pos: HashMap<&str, usize> = HashMap::new();
        // Positions whose request id has no result yet: recorded below.
        let mut new_ids = Vec::new();
        for (pos, txn) in txns.iter().enumerate() {
            let id = txn.request_id.as_str();
            if !id.is_empty() {
                if let Some(&earlier) = first_pos.get(id) {
                    plans.push(Plan::SameAs(earlier));
                    continue;
                }
                first_pos.insert(id, pos);
                if let Some(bytes) = self.engine.get(&Key::Dedup(self.group, id).encode())? {
                    let record: DedupRecord = decode(&bytes, "dedup record")?;
                    plans.push(Plan::Known(record.outcome));
                    continue;
                }
                new_ids.push(pos);
            }
            if let Some(reason) = self.outside_range(txn) {
                plans.push(Plan::Known(TxnOutcome::Aborted { reason }));
                continue;
            }
            plans.push(Plan::Run(to_run.len()));
            to_run.push(txn.clone());
        }
        let output = self.scheduler.run_epoch(self.engine.clone(), index, stamp, to_run)?;
        // Each write makes its key's current version and moves the one it
        // superseded into the group's history; that one comes from the
        // record cache, where the transactions' reads left it.
        let before = |key: &[u8]| self.scheduler.current_version(self.engine.as_ref(), key);
        let changes = output.changes.iter().map(|(pos, key, record)| (*pos as u64, key.as_slice(), record.as_ref()));
        let versions = tree::put_versions(self.group, stamp, changes, before, wb)?;
        // One GC index entry per epoch, listing the keys it left deleted
        // (sorted, as a set would be encoded): their tombstones go once no
        // read can see what they hid.
        let deleted: Vec<_> =
            versions.iter().filter(|(_, v)| v.record.is_none()).map(|(k, _)| serde_bytes::Bytes::new(k)).collect();
        let indexed = !deleted.is_empty();
        if indexed {
            wb.put(Key::VersionGc(self.group, stamp, b"").encode(), encode(&deleted));
        }
        let records = versions.into_iter().map(|(k, v)| (k.to_vec(), v)).collect();
        let mut outcomes: Vec<TxnOutcome> = Vec::with_capacity(plans.len());
        for plan in plans {
            let outcome = match plan {
                Plan::Run(i) => output.outcomes[i].clone(),
                Plan::Known(o) => o,
                Plan::SameAs(p) => outcomes[p].clone(),
            };
            outcomes.push(outcome);
        }
        let mut recorded = Vec::with_capacity(new_ids.len());
        for pos in new_ids {
            let id = txns[pos].request_id.as_str();
            let record = DedupRecord { stamp, outcome: outcomes[pos].clone() };
            wb.put(Key::Dedup(self.group, id).encode(), encode(&record));
            recorded.push(id);
        }
        // Likewise one expiry entry per epoch, listing its request ids.
        if !recorded.is_empty() {
            wb.put(Key::DedupExpiry(self.group, stamp, "").encode(), encode(&recorded));
        }
        self.expire_dedup(stamp, wb, &mut gc_cursor.dedup)?;
        self.collect_versions(index, stamp, gc_horizon, wb, &mut gc_cursor.versions)?;
        // After the scans, which read the engine without this batch.
        if indexed {
            gc_cursor.versions.added(stamp);
        }
        if !recorded.is_empty() {
            gc_cursor.dedup.added(stamp);
        }
        let changes = output.changes.into_iter().map(|(_, key, record)| (key, record)).collect();
        Ok(EpochWrites { outcomes, changes, records })
    }

    /// Deletes what no read at or above `horizon` can see (see "Version GC"
    /// in the module docs): the group's history up to a period boundary
    /// below it if the epoch's log `index` is a multiple of
    /// [`HISTORY_GC_INTERVAL`] (`stamp` is the epoch's), and the tombstones
    /// of the index entries up to the one in which [`VERSION_GC_PER_EPOCH`]
    /// keys have been looked at.
    fn collect_versions(
        &self,
        index: u64,
        stamp: u64,
        horizon: u64,
        wb: &mut WriteBatch,
        cursor: &mut IndexCursor,
    ) -> Result<()> {
        if horizon == 0 {
            return Ok(());
        }
        let view: &dyn ReadView = self.engine.as_ref();
        if index % HISTORY_GC_INTERVAL == 0 {
            collect_history(view, self.group, stamp, horizon, wb)?;
        }
        let prefix = keys::version_gc_prefix(self.group);
        let bound = horizon.saturating_add(1);
        self.walk_index(
            prefix,
            bound,
            VERSION_GC_PER_EPOCH,
            cursor,
            wb,
            keys::decode_version_gc,
            |s, key, value, wb| {
                // An empty value is the older format: one entry per key.
                let keys: Vec<serde_bytes::ByteBuf> =
                    if value.is_empty() { vec![serde_bytes::ByteBuf::from(key)] } else { decode(&value, "GC index")? };
                for key in &keys {
                    collect_tombstone(view, key, s, wb)?;
                }
                Ok(keys.len())
            },
        )
    }

    /// Hands the entries of a GC index (`prefix`) with stamps below `bound`
    /// to `collect`, from `cursor` on, until `limit` of what `collect`
    /// counts; deletes each entry handed over and moves the cursor past it.
    #[allow(clippy::too_many_arguments)]
    fn walk_index<T>(
        &self,
        prefix: Vec<u8>,
        bound: u64,
        limit: usize,
        cursor: &mut IndexCursor,
        wb: &mut WriteBatch,
        decode_key: IndexKeyDecoder<T>,
        mut collect: impl FnMut(u64, T, Vec<u8>, &mut WriteBatch) -> Result<usize>,
    ) -> Result<()> {
        if !cursor.may_hold_below(bound) {
            return Ok(());
        }
        let view: &dyn ReadView = self.engine.as_ref();
        let (start, index_end) = (cursor.start(prefix.clone()), prefix_end_bound(&prefix));
        let mut done = 0;
        let mut end = ScanEnd::Exhausted;
        for item in view.scan(start, index_end, Direction::Forward) {
            let (index_key, value) = item?;
            let (s, what) = decode_key(&index_key)?;
            if s >= bound {
                end = ScanEnd::Beyond(s);
                break;
            }
            if done >= limit {
                end = ScanEnd::Limit;
                break;
            }
            done += collect(s, what, value, wb)?.max(1);
            wb.delete(index_key.clone());
            cursor.after = Some(index_key);
        }
        cursor.scanned(end);
        Ok(())
    }

    /// A deterministic refusal for a transaction that touches keys outside
    /// this group's range (the API routes correctly; this guards the log).
    fn outside_range(&self, txn: &Txn) -> Option<String> {
        txn.footprint().find_map(|f| {
            let inside = match f {
                Footprint::Key(k) => self.range.contains(k),
                Footprint::Range(r) => {
                    r.start.as_slice() >= self.range.start.as_slice()
                        && (self.range.end.is_empty() || (!r.end.is_empty() && r.end <= self.range.end))
                }
            };
            (!inside).then(|| format!("the transaction touches keys outside {}", self.range.display()))
        })
    }

    /// Forgets the request ids recorded more than [`DEDUP_RETENTION_MS`]
    /// before `stamp`, for the expiry entries up to the one in which
    /// [`DEDUP_GC_PER_EPOCH`] ids have been removed.
    fn expire_dedup(&self, stamp: u64, wb: &mut WriteBatch, cursor: &mut IndexCursor) -> Result<()> {
        let cutoff = stamp.saturating_sub(hlc::pack(DEDUP_RETENTION_MS, 0));
        let prefix = keys::dedup_expiry_prefix(self.group);
        self.walk_index(
            prefix,
            cutoff,
            DEDUP_GC_PER_EPOCH,
            cursor,
            wb,
            keys::decode_dedup_expiry,
            |_, id, value, wb| {
                // An empty value is the older format: one entry per id.
                let ids: Vec<String> = if value.is_empty() { vec![id] } else { decode(&value, "dedup expiry")? };
                for id in &ids {
                    wb.delete(Key::Dedup(self.group, id).encode());
                }
                Ok(ids.len())
            },
        )
    }

    /// Records the applied position as the group's snapshot, after a
    /// flush (see [`SnapshotStore::record`]).
    pub fn record_snapshot(&mut self) -> Result<SnapshotMeta> {
        self.snapshots.record()
    }

    /// Starts writing an image of the group's current state (see
    /// [`SnapshotStore::image`]).
    pub fn snapshot_image(&self) -> Result<(SnapshotMeta, SnapshotContent)> {
        self.snapshots.image()
    }

    /// What builds and reads snapshots without holding the state machine.
    pub fn snapshot_store(&self) -> SnapshotStore {
        self.snapshots.clone()
    }

    /// Bounds the executors' cache of current records to `bytes` (0
    /// disables it; see [`crate::scheduler::RecordCache`]).
    pub fn with_record_cache(mut self, bytes: usize) -> Self {
        self.scheduler.set_record_cache_bytes(bytes);
        self
    }

    /// Epochs of at most `txns` transactions execute on the applying
    /// thread (see `epoch.inline_max_txns`).
    pub fn with_inline_max_txns(mut self, txns: usize) -> Self {
        self.scheduler.set_inline_max_txns(txns);
        self
    }

    /// Keeps snapshot data in files in `dir` (created if missing) rather
    /// than inside RocksDB (see [`snapshot`](super::snapshot)).
    pub fn with_snapshot_dir(mut self, dir: std::path::PathBuf) -> Result<Self> {
        self.snapshots.files = SnapshotFiles::open(dir, self.group)?;
        Ok(self)
    }

    /// Free bytes a snapshot image leaves on the snapshot directory's file
    /// system: one that would leave less fails instead (0: no check). Set
    /// after [`GroupStateMachine::with_snapshot_dir`].
    pub fn with_snapshot_reserve(mut self, bytes: u64) -> Self {
        self.snapshots.files.reserve = bytes;
        self
    }

    /// Where to receive a snapshot from the leader: a new temporary file
    /// (an unfinished earlier transfer's is removed), or memory.
    pub fn receive_snapshot(&mut self) -> Result<SnapshotContent> {
        self.snapshots.files.remove_receives(self.group);
        self.snapshots.files.create(self.group, "recv")
    }

    /// Replaces the group's range and state with a snapshot, atomically.
    /// The data's checksum is verified first: a corrupted snapshot is an
    /// [`Error::Corruption`] naming the group and snapshot, and nothing is
    /// installed. Received data becomes this node's stored snapshot as is.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta, mut content: SnapshotContent) -> Result<()> {
        let (wb, state, crc) = snapshot::install_batch(self.group, &self.range, meta, &mut content)?;
        // Emptied first: should the store fail after writing, no cached
        // record of the replaced state survives.
        self.scheduler.record_cache().clear();
        self.snapshots.store_with(meta, &mut content, crc, wb)?;
        self.state = state;
        self.gc_cursor = GcCursor::default();
        self.publish();
        let _ = self.shared.feed.send(Feed::Reset { stamp: self.state.stamp });
        Ok(())
    }

    /// The snapshot to send to a follower (see [`SnapshotStore::current`]).
    pub fn current_snapshot(&mut self) -> Result<Option<(SnapshotMeta, SnapshotContent)>> {
        self.snapshots.current()
    }

    /// The stored snapshot's data, if it has any (see
    /// [`SnapshotStore::stored_data`]).
    pub fn stored_snapshot(&mut self) -> Result<Option<(SnapshotMeta, SnapshotContent)>> {
        self.snapshots.stored_data()
    }
}
