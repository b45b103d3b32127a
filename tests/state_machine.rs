//! The sequencer state machine driven directly with log entries: the same
//! log gives the same state and results on independent replicas; epochs
//! from the past stop the replica; redelivered entries are skipped; a
//! restarted replica resumes where it stopped.

use std::ops::Bound;
use std::sync::Arc;

use arbor::hlc::{Hlc, ManualClock};
use arbor::keys::Key;
use arbor::raft::Entry;
use arbor::routing::RangeDesc;
use arbor::sequencer::apply::{history_gc_boundary, HISTORY_GC_INTERVAL};
use arbor::sequencer::driver::{epoch_number, Waiting};
use arbor::sequencer::{Compression, EpochBatch, EpochResponse, GroupShared, GroupStateMachine};
use arbor::tree::{CmpOp, CmpTarget, Compare, KeyRange, Op, RangeSpec, Record, TreeRead, Txn, VersionedTree};
use arbor_storage::{BatchOp, Cursor, Direction, Durability, Engine, Memory, ReadView, ScanIter, WriteBatch};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn range() -> RangeDesc {
    RangeDesc { group: 1, start: Vec::new(), end: Vec::new() }
}

fn open(engine: Arc<dyn Engine>, vshards: u32) -> GroupStateMachine {
    let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 500));
    GroupStateMachine::open(range(), engine, vshards, Arc::new(GroupShared::default()), hlc, Durability::Sync).unwrap()
}

/// A replica whose record cache holds at most `bytes`.
fn open_with_cache(engine: Arc<dyn Engine>, vshards: u32, bytes: usize) -> GroupStateMachine {
    open(engine, vshards).with_record_cache(bytes)
}

fn entry(term: u64, index: u64, batch: &EpochBatch) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(batch.encode(&mut Compression::new(512)).unwrap()),
    }
}

fn random_txn(rng: &mut StdRng, id: usize) -> Txn {
    let key = |rng: &mut StdRng| format!("/k/{}", rng.gen_range(0..12)).into_bytes();
    let op = |rng: &mut StdRng| match rng.gen_range(0..8) {
        0 => Op::Get { key: key(rng) },
        1 => Op::Put {
            key: key(rng),
            value: vec![b'a' + rng.gen_range(0..26u8); rng.gen_range(0..20)].into(),
            prev_kv: rng.gen_bool(0.5),
        },
        2 => Op::Delete { key: key(rng) },
        3 => Op::Increment { key: key(rng), delta: rng.gen_range(-5..5) },
        4 => Op::Append { key: key(rng), value: b"x".to_vec(), prev_kv: rng.gen_bool(0.5) },
        5 => Op::Range(RangeSpec { range: KeyRange::prefix(b"/k/"), limit: 5, delimiter: None, keys_only: false }),
        6 => Op::DeleteRange(KeyRange { start: key(rng), end: b"/k/5".to_vec() }),
        _ => Op::Put { key: key(rng), value: rng.gen_range(0..100).to_string().into_bytes().into(), prev_kv: false },
    };
    let compares = (0..rng.gen_range(0..3))
        .map(|_| Compare {
            key: key(rng),
            op: [CmpOp::Equal, CmpOp::NotEqual, CmpOp::Less, CmpOp::Greater][rng.gen_range(0..4)],
            target: if rng.gen_bool(0.5) {
                CmpTarget::Version(rng.gen_range(0..4))
            } else {
                CmpTarget::Value(b"5".to_vec())
            },
        })
        .collect();
    Txn {
        request_id: if rng.gen_bool(0.3) { format!("req-{}", id % 40) } else { String::new() },
        compares,
        success: (0..rng.gen_range(1..5)).map(|_| op(rng)).collect(),
        failure: (0..rng.gen_range(0..3)).map(|_| op(rng)).collect(),
    }
}

fn random_log(seed: u64, epochs: usize) -> Vec<EpochBatch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut id = 0;
    (0..epochs)
        .map(|e| EpochBatch {
            epoch: epoch_number(1, e as u64 + 1),
            stamp: 10_000 + e as u64,
            txns: (0..rng.gen_range(1..40))
                .map(|_| {
                    id += 1;
                    random_txn(&mut rng, id)
                })
                .collect(),
            // Versions older than 20 epochs are collected along the way.
            gc_before: 10_000 + e as u64 - 20,
        })
        .collect()
}

fn dump(engine: &dyn ReadView) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine.scan(Bound::Unbounded, Bound::Unbounded, Direction::Forward).collect::<Result<_, _>>().unwrap()
}

#[test]
fn random_logs_replay_identically_on_independent_replicas() {
    for seed in 0..5 {
        let log = random_log(seed, 30);
        // Different vshard counts (parallelism), record caches (the
        // default, none, and one so small that it drops entries all the
        // time) and execution on the executors or on the applying thread
        // (none, every epoch, those of up to 32 transactions) must not
        // change results.
        let modes = [(8, None, 0), (3, Some(0), usize::MAX), (2, Some(400), 0), (2, None, 32)];
        let replicas: Vec<(Arc<Memory>, GroupStateMachine)> = modes
            .into_iter()
            .map(|(vshards, cache, inline)| {
                let engine = Arc::new(Memory::new());
                let sm = match cache {
                    None => open(engine.clone(), vshards),
                    Some(bytes) => open_with_cache(engine.clone(), vshards, bytes),
                };
                (engine, sm.with_inline_max_txns(inline))
            })
            .collect();
        let (engines, mut machines): (Vec<_>, Vec<_>) = replicas.into_iter().unzip();
        for (i, batch) in log.iter().enumerate() {
            let results: Vec<EpochResponse> =
                machines.iter_mut().map(|sm| sm.apply(entry(1, i as u64 + 1, batch)).unwrap()).collect();
            assert!(results.windows(2).all(|w| w[0] == w[1]), "seed {seed} epoch {i}: results differ: {results:?}");
        }
        let strip_watermarks = |d: Vec<(Vec<u8>, Vec<u8>)>| {
            d.into_iter().filter(|(k, _)| k[0] != 0x11).collect::<Vec<_>>() // vshard watermarks depend on the count
        };
        let states: Vec<_> = engines.iter().map(|e| strip_watermarks(dump(e.as_ref()))).collect();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "seed {seed}: state differs");
    }
}

#[test]
fn a_snapshot_install_leaves_no_cached_record_of_the_replaced_state() {
    let log = random_log(7, 40);
    let (a_engine, b_engine): (Arc<Memory>, Arc<Memory>) = (Arc::new(Memory::new()), Arc::new(Memory::new()));
    let mut a = open(a_engine.clone(), 2);
    for (i, batch) in log[..20].iter().enumerate() {
        a.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    let (meta, data) = a.snapshot_image().unwrap();
    // B applies another log over the same keys: its cache holds their
    // records as that log left them.
    let mut b = open(b_engine.clone(), 2);
    for (i, batch) in random_log(8, 10).iter().enumerate() {
        b.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    b.install_snapshot(&meta, data).unwrap();
    for (i, batch) in log.iter().enumerate().skip(20) {
        let index = i as u64 + 1;
        assert_eq!(a.apply(entry(1, index, batch)).unwrap(), b.apply(entry(1, index, batch)).unwrap(), "epoch {i}");
    }
    assert_eq!(tree_of(&VersionedTree::latest(a_engine.as_ref())), tree_of(&VersionedTree::latest(b_engine.as_ref())));
    for engine in [&a_engine, &b_engine] {
        assert_eq!(engine.scan_prefix(&arbor::keys::data_prefix()).count(), 0, "records are stored as versions only");
    }
}

/// Every key and record of a tree view.
fn tree_of(tree: &dyn TreeRead) -> Vec<(Vec<u8>, Record)> {
    tree.scan(&KeyRange { start: Vec::new(), end: Vec::new() }).collect::<Result<_, _>>().unwrap()
}

#[test]
fn snapshot_reads_see_exactly_the_state_after_each_epoch_within_retention() {
    for seed in 0..5 {
        let log = random_log(seed, 80);
        let engine: Arc<Memory> = Arc::new(Memory::new());
        let mut sm = open(engine.clone(), 4);
        let mut states = Vec::new();
        for (i, batch) in log.iter().enumerate() {
            let r = sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
            states.push((r.stamp, tree_of(&VersionedTree::latest(engine.as_ref()))));
        }
        let horizon = sm.applied().gc_horizon;
        assert_eq!(horizon, states.last().unwrap().0 - 20, "the horizon follows the batches' gc_before");
        let mut checked = 0;
        for (stamp, state) in states.iter().filter(|(s, _)| *s >= horizon) {
            let at = VersionedTree::new(engine.as_ref(), 1, *stamp);
            assert_eq!(&tree_of(&at), state, "seed {seed}: scan at {stamp}");
            for key in (0..12).map(|k| format!("/k/{k}").into_bytes()) {
                let want = state.iter().find(|(k, _)| *k == key).map(|(_, r)| r.clone());
                assert_eq!(at.get(&key).unwrap(), want, "seed {seed}: get at {stamp}");
            }
            checked += 1;
        }
        assert_eq!(checked, 21);
    }
}

fn put_txn(key: String, value: u64) -> Txn {
    Txn {
        request_id: String::new(),
        compares: vec![],
        success: vec![Op::Put { key: key.into_bytes(), value: value.to_string().into_bytes().into(), prev_kv: false }],
        failure: vec![],
    }
}

fn delete_txn(key: String) -> Txn {
    Txn {
        request_id: String::new(),
        compares: vec![],
        success: vec![Op::Delete { key: key.into_bytes() }],
        failure: vec![],
    }
}

/// Epoch `e`'s transactions for the GC tests: puts of four hot keys (with
/// request ids), and a short-lived key created here and deleted by the next
/// epoch, so that every epoch leaves a GC index entry.
fn churn(e: u64) -> Vec<Txn> {
    let mut txns: Vec<Txn> =
        (0..4).map(|k| Txn { request_id: format!("req-{e}-{k}"), ..put_txn(format!("/hot/{k}"), e) }).collect();
    txns.push(put_txn(format!("/tmp/{e}"), e));
    txns.push(delete_txn(format!("/tmp/{}", e - 1)));
    txns
}

#[test]
fn version_gc_keeps_an_overwrite_heavy_load_bounded() {
    let engine: Arc<Memory> = Arc::new(Memory::new());
    let mut sm = open(engine.clone(), 4);
    let retention = 5;
    for e in 1..=2000u64 {
        let mut txns: Vec<Txn> = (0..10).map(|k| put_txn(format!("/hot/{k}"), e)).collect();
        // A short-lived key per epoch: created, then deleted by the next one.
        txns.push(put_txn(format!("/tmp/{e}"), e));
        txns.push(delete_txn(format!("/tmp/{}", e - 1)));
        let stamp = 1_000 + e;
        let batch = EpochBatch { epoch: epoch_number(1, e), stamp, txns, gc_before: stamp - retention };
        sm.apply(entry(1, e, &batch)).unwrap();
    }
    let count = |tag: u8| dump(engine.as_ref()).iter().filter(|(k, _)| k[0] == tag).count();
    // The history holds the versions superseded in the epochs since the last
    // collection that are still above its horizon: at most 11 per epoch.
    let epochs = (retention + HISTORY_GC_INTERVAL + 1) as usize;
    let (history, current, index) = (count(0x23), count(0x22), count(0x15));
    assert!(history <= 11 * epochs, "{history} superseded versions stored, bound {}", 11 * epochs);
    // The hot keys, the live short-lived one, and the tombstones of the
    // short-lived ones deleted since the horizon.
    let bound = 10 + 1 + (retention as usize + 2);
    assert!(current <= bound, "{current} current versions stored, bound {bound}");
    // One index entry per epoch still inside the retention.
    let index_bound = retention as usize + 2;
    assert!(index <= index_bound, "{index} GC index entries stored, bound {index_bound}");
    // What is still readable is right.
    let now = VersionedTree::new(engine.as_ref(), 1, 1_000 + 2000);
    assert_eq!(now.get(b"/hot/3").unwrap().unwrap().value, &b"2000"[..]);
    assert_eq!(now.get(b"/tmp/1999").unwrap(), None);
    assert_eq!(now.get(b"/tmp/2000").unwrap().unwrap().value, &b"2000"[..]);
    let horizon = VersionedTree::new(engine.as_ref(), 1, 1_000 + 2000 - retention);
    assert_eq!(horizon.get(b"/hot/3").unwrap().unwrap().value, &b"1995"[..]);
}

/// A Memory engine that records where each scan of the GC indexes starts,
/// and every range deletion written to it.
#[derive(Default)]
struct Observed {
    inner: Memory,
    gc_scan_starts: std::sync::Mutex<Vec<Bound<Vec<u8>>>>,
    range_deletions: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Observed {
    /// The range deletions written since the last call.
    fn take_range_deletions(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut *self.range_deletions.lock().unwrap())
    }
}

impl ReadView for Observed {
    fn get(&self, key: &[u8]) -> arbor_storage::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn scan(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, direction: Direction) -> ScanIter<'_> {
        let indexes = [arbor::keys::version_gc_prefix(1), arbor::keys::dedup_expiry_prefix(1)];
        if let Bound::Included(k) | Bound::Excluded(k) = &start {
            if indexes.iter().any(|p| k.starts_with(p)) {
                self.gc_scan_starts.lock().unwrap().push(start.clone());
            }
        }
        self.inner.scan(start, end, direction)
    }
    fn cursor(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Box<dyn Cursor + '_> {
        self.inner.cursor(start, end)
    }
}

impl Engine for Observed {
    fn write(&self, batch: WriteBatch, durability: Durability) -> arbor_storage::Result<()> {
        let ranges = batch.ops().iter().filter_map(|op| match op {
            BatchOp::DeleteRange(start, end) => Some((start.clone(), end.clone())),
            _ => None,
        });
        self.range_deletions.lock().unwrap().extend(ranges);
        self.inner.write(batch, durability)
    }
    fn flush(&self) -> arbor_storage::Result<()> {
        self.inner.flush()
    }
    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        self.inner.snapshot()
    }
    fn approximate_size(&self, start: &[u8], end: &[u8]) -> arbor_storage::Result<u64> {
        self.inner.approximate_size(start, end)
    }
    fn locate(&self, key: &[u8]) -> String {
        self.inner.locate(key)
    }
}

/// The history is deleted a period at a time, by range from its first
/// version stored, and not at all while no version is older than the
/// period's boundary: a range deletion reaching down to the front of the
/// history in every flush made RocksDB rewrite all of it at each compaction
/// (docs/BENCHMARKS.md, item 46).
#[test]
fn history_is_deleted_a_period_at_a_time_from_its_first_version_stored() {
    let engine = Arc::new(Observed::default());
    let mut sm = open(engine.clone(), 4);
    let in_history = |key: &[u8]| key.starts_with(&arbor::keys::history_prefix(1));
    let history = |engine: &Observed| dump(engine).into_iter().filter(|(k, _)| in_history(k)).count() as u64;
    // Entry `index` writes `/hot` at stamp 1_000 + index; from the second
    // on, each moves the version before it into the history.
    let mut apply = |entries: std::ops::RangeInclusive<u64>, gc_before: u64| {
        for index in entries {
            let stamp = 1_000 + index;
            let txns = vec![put_txn("/hot".into(), index)];
            let batch = EpochBatch { epoch: epoch_number(1, index), stamp, txns, gc_before };
            sm.apply(entry(1, index, &batch)).unwrap();
        }
    };
    let version = |stamp: u64| Key::History(1, stamp, 0, b"/hot").encode();
    let n = HISTORY_GC_INTERVAL;

    // A horizon below every version: no deletion.
    apply(1..=n, 900);
    assert_eq!(engine.take_range_deletions(), vec![], "nothing is old enough");

    // The horizon passes a boundary: the versions superseded before it go,
    // in one range deletion from the first one (superseded at 1_002).
    apply(n + 1..=2 * n, 1_000 + n);
    let boundary = history_gc_boundary(1_000 + 2 * n, 1_000 + n);
    assert!(1_002 < boundary && boundary <= 1_000 + n, "boundary {boundary}");
    assert_eq!(engine.take_range_deletions(), vec![(version(1_002), arbor::keys::history_after(1, boundary - 1))]);
    assert_eq!(history(&engine), 1_000 + 2 * n - boundary + 1, "the versions superseded from {boundary} on");

    // The horizon stays within the period: nothing more to delete.
    apply(2 * n + 1..=3 * n, 1_000 + n + 1);
    assert_eq!(history_gc_boundary(1_000 + 3 * n, 1_000 + n + 1), boundary);
    assert_eq!(engine.take_range_deletions(), vec![], "the period's versions were deleted already");

    // The next boundary: the deletion starts where the last one ended.
    let horizon = 1_000 + 3 * n / 2;
    apply(3 * n + 1..=4 * n, horizon);
    let next = history_gc_boundary(1_000 + 4 * n, horizon);
    assert!(next > boundary, "{next} > {boundary}");
    assert_eq!(engine.take_range_deletions(), vec![(version(boundary), arbor::keys::history_after(1, next - 1))]);
    let at_horizon = VersionedTree::new(engine.as_ref(), 1, horizon);
    assert_eq!(at_horizon.get(b"/hot").unwrap().unwrap().value, (3 * n / 2).to_string().as_bytes());
}

/// A period is about a quarter of the retention, and groups whose horizons
/// differ by less than a period mostly share its boundary.
#[test]
fn history_gc_periods_are_a_quarter_of_the_retention_at_most() {
    use arbor::hlc::pack;
    let retention = 600_000;
    for now in [1_795_000_000_000u64, 1_795_000_123_457, 1_795_000_299_999] {
        let (stamp, horizon) = (pack(now, 7), pack(now - retention, 7));
        let boundary = history_gc_boundary(stamp, horizon);
        assert!(boundary <= horizon);
        assert!(
            horizon - boundary < (stamp - horizon) / 4,
            "{now}: at most a quarter of the retention is kept beyond it"
        );
        // A group a second behind.
        let other = history_gc_boundary(pack(now - 1_000, 3), pack(now - 1_000 - retention, 3));
        assert!(other == boundary || horizon - boundary < pack(1_000, 0), "{now}: {other} against {boundary}");
    }
}

/// Data dirs written before the per-epoch index lists hold one `VersionGc`
/// entry per key and one `DedupExpiry` entry per request id, with empty
/// values: they are still collected. (Their versions were converted into
/// current versions and history as the node opened.)
#[test]
fn per_key_index_entries_of_older_data_dirs_are_still_collected() {
    use arbor::tree::encode_stored;
    let engine: Arc<Memory> = Arc::new(Memory::new());
    let record =
        |v: &str| Record { value: v.as_bytes().to_vec().into(), version: 1, create_stamp: 100, mod_stamp: 100 };
    let minute = arbor::hlc::pack(60_000, 0);
    let mut b = arbor_storage::WriteBatch::new();
    b.put(Key::Current(b"/old").encode(), encode_stored(200, 0, Some(&record("b"))));
    b.put(Key::History(1, 200, 0, b"/old").encode(), encode_stored(100, 0, Some(&record("a"))));
    b.put(Key::Current(b"/gone").encode(), encode_stored(200, 1, None));
    b.put(Key::History(1, 200, 1, b"/gone").encode(), encode_stored(100, 1, Some(&record("g"))));
    for key in [&b"/old"[..], b"/gone"] {
        b.put(Key::VersionGc(1, 100, key).encode(), Vec::new());
        b.put(Key::VersionGc(1, 200, key).encode(), Vec::new());
    }
    b.put(Key::Dedup(1, "req-old").encode(), b"(its first result; only deleted here)".to_vec());
    b.put(Key::DedupExpiry(1, 100, "req-old").encode(), Vec::new());
    engine.write(b, Durability::Sync).unwrap();

    let mut sm = open(engine.clone(), 2);
    // Eleven minutes later, with a GC horizon past both versions, up to the
    // first entry that collects the history.
    for index in 1..=HISTORY_GC_INTERVAL {
        let stamp = 11 * minute + index;
        let txns = vec![put_txn("/new".into(), index)];
        let batch = EpochBatch { epoch: epoch_number(1, index), stamp, txns, gc_before: stamp - minute };
        sm.apply(entry(1, index, &batch)).unwrap();
    }
    let keys: Vec<Vec<u8>> = dump(engine.as_ref()).into_iter().map(|(k, _)| k).collect();
    assert!(!keys.contains(&Key::History(1, 200, 0, b"/old").encode()), "the superseded version is collected");
    assert!(keys.contains(&Key::Current(b"/old").encode()), "the current version stays");
    assert!(!keys.contains(&Key::Current(b"/gone").encode()), "so does a tombstone, once past the horizon");
    assert!(!keys.iter().any(|k| k.starts_with(&arbor::keys::version_gc_prefix(1))), "the old entries are gone");
    assert!(!keys.contains(&Key::Dedup(1, "req-old").encode()), "the expired request id is forgotten");
    assert!(!keys.contains(&Key::DedupExpiry(1, 100, "req-old").encode()));
    assert_eq!(VersionedTree::new(engine.as_ref(), 1, 300).get(b"/old").unwrap().unwrap().value, &b"b"[..]);
}

#[test]
fn redelivered_entries_are_skipped_and_a_reopened_replica_resumes() {
    let log = random_log(42, 10);
    let engine: Arc<Memory> = Arc::new(Memory::new());
    let mut sm = open(engine.clone(), 4);
    for (i, batch) in log.iter().take(6).enumerate() {
        sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    let state = dump(engine.as_ref());
    let again = sm.apply(entry(1, 3, &log[2])).unwrap();
    assert!(again.outcomes.is_empty(), "a redelivered entry is not executed");
    assert_eq!(dump(engine.as_ref()), state, "and changes nothing");
    drop(sm);

    // "Crash" and reopen on the same engine: resume at entry 7.
    let mut sm = open(engine.clone(), 4);
    assert_eq!(sm.applied().last_applied.unwrap().index, 6);
    for (i, batch) in log.iter().enumerate().skip(6) {
        sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    let reference: Arc<Memory> = Arc::new(Memory::new());
    let mut straight = open(reference.clone(), 4);
    for (i, batch) in log.iter().enumerate() {
        straight.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    assert_eq!(dump(engine.as_ref()), dump(reference.as_ref()), "resumed replica equals one that never stopped");
}

#[test]
fn an_epoch_from_the_past_stops_the_replica() {
    let log = random_log(7, 3);
    let engine: Arc<Memory> = Arc::new(Memory::new());
    let mut sm = open(engine.clone(), 2);
    sm.apply(entry(1, 1, &log[1])).unwrap();
    let before = dump(engine.as_ref());
    let err = sm.apply(entry(1, 2, &log[0])).unwrap_err();
    assert!(err.to_string().contains("is not after the applied epoch"), "{err}");
    assert!(err.is_node_failure());
    assert_eq!(dump(engine.as_ref()), before, "nothing applied");
}

#[test]
fn an_index_gap_stops_the_replica() {
    let log = random_log(8, 3);
    let mut sm = open(Arc::new(Memory::new()), 2);
    sm.apply(entry(1, 1, &log[0])).unwrap();
    let err = sm.apply(entry(1, 3, &log[1])).unwrap_err();
    assert!(err.to_string().contains("jumped from 1 to 3"), "{err}");
}

#[test]
fn an_epoch_numbered_in_another_term_is_refused_as_a_whole() {
    let mut batch = random_log(9, 1).remove(0);
    let mut sm = open(Arc::new(Memory::new()), 2);
    batch.epoch = epoch_number(1, 1);
    let resp = sm.apply(entry(2, 1, &batch)).unwrap();
    assert!(resp.outcomes.iter().all(|o| matches!(o, arbor::tree::TxnOutcome::Retry { .. })));
    assert_eq!(sm.applied().epoch, 0, "the epoch did not advance");
    batch.epoch = epoch_number(2, 1);
    sm.apply(entry(2, 2, &batch)).unwrap();
    assert_eq!(sm.applied().epoch, epoch_number(2, 1));
}

/// The clients waiting for `batch` on its leader, as its driver registers
/// them: their answers and the driver's signal.
type Answers = Vec<tokio::sync::oneshot::Receiver<arbor::error::Result<arbor::sequencer::driver::Committed>>>;
fn wait_for(shared: &GroupShared, batch: &EpochBatch) -> (Answers, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (done, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let (replies, answers) = batch.txns.iter().map(|_| tokio::sync::oneshot::channel()).unzip();
    shared.wait_for(batch.epoch, Waiting::new(replies, done));
    (answers, done_rx)
}

#[test]
fn the_apply_answers_the_clients_waiting_for_its_epoch() {
    let shared = Arc::new(GroupShared::default());
    let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 500));
    let engine = Arc::new(Memory::new());
    let mut sm = GroupStateMachine::open(range(), engine, 2, shared.clone(), hlc, Durability::Sync).unwrap();
    let mut log = random_log(5, 2);

    let (answers, mut done) = wait_for(&shared, &log[0]);
    let resp = sm.apply(entry(1, 1, &log[0])).unwrap();
    assert_eq!(answers.len(), resp.outcomes.len());
    for (mut answer, outcome) in answers.into_iter().zip(&resp.outcomes) {
        let c = answer.try_recv().expect("answered by the apply").unwrap();
        assert_eq!((&c.outcome, c.index, c.epoch, c.stamp), (outcome, 1, log[0].epoch, resp.stamp));
    }
    assert!(done.try_recv().is_ok(), "the driver heard the epoch is done");
    assert!(shared.waiting.lock().unwrap().is_empty(), "nothing is answered twice");

    // An epoch numbered in another term: its clients are told to retry.
    log[1].epoch = epoch_number(7, 1);
    let (answers, mut done) = wait_for(&shared, &log[1]);
    sm.apply(entry(1, 2, &log[1])).unwrap();
    for mut answer in answers {
        let c = answer.try_recv().unwrap().unwrap();
        assert!(matches!(c.outcome, arbor::tree::TxnOutcome::Retry { .. }), "{:?}", c.outcome);
    }
    assert!(done.try_recv().is_ok());

    // A follower (nobody waiting here) applies the same way.
    sm.apply(entry(1, 3, &random_log(6, 3).remove(2))).unwrap();
}

#[test]
fn epoch_gaps_within_a_term_are_counted() {
    let log = random_log(10, 1);
    let mut sm = open(Arc::new(Memory::new()), 2);
    let mut b = log[0].clone();
    sm.apply(entry(1, 1, &b)).unwrap();
    b.epoch = epoch_number(1, 5);
    sm.apply(entry(1, 2, &b)).unwrap();
    assert_eq!(sm.applied().epoch_gaps, 1);
}

/// Version GC and dedup expiry resume their index scans after the last
/// entry they deleted (not at the index's start, where the tombstones of
/// everything collected before pile up in RocksDB), and a replica that
/// restarts midway (scanning from the start once) ends in the same state.
#[test]
fn gc_scans_resume_after_the_last_collected_entry_with_the_same_result() {
    let minute = arbor::hlc::pack(60_000, 0);
    // An epoch every 15 s of HLC time: versions are kept 30 s, request ids
    // 10 minutes, so both indexes are collected from some epoch on.
    let log: Vec<EpochBatch> = (1..=80u64)
        .map(|e| {
            let stamp = e * minute / 4;
            let txns = churn(e);
            EpochBatch { epoch: epoch_number(1, e), stamp, txns, gc_before: stamp.saturating_sub(minute / 2) }
        })
        .collect();
    let engine = Arc::new(Observed::default());
    let mut sm = open(engine.clone(), 2);
    for (i, batch) in log.iter().enumerate() {
        if i == 60 {
            drop(sm);
            sm = open(engine.clone(), 2);
        }
        sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    let starts = engine.gc_scan_starts.lock().unwrap().clone();
    let resumed = starts.iter().filter(|s| matches!(s, Bound::Excluded(_))).count();
    let from_the_start = starts.len() - resumed;
    // Each index is scanned from its start until its first collection, and
    // once more after the restart; every other scan resumes.
    assert!(resumed > 80, "{resumed} scans resumed, {from_the_start} from the start");
    assert!(from_the_start < 50, "{resumed} scans resumed, {from_the_start} from the start");

    let reference: Arc<Memory> = Arc::new(Memory::new());
    let mut straight = open(reference.clone(), 2);
    for (i, batch) in log.iter().enumerate() {
        straight.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    assert_eq!(dump(&engine.inner), dump(reference.as_ref()), "restarting (and rescanning) changes nothing");
    let keys: Vec<Vec<u8>> = dump(reference.as_ref()).into_iter().map(|(k, _)| k).collect();
    let dedup_ids = keys.iter().filter(|k| k.starts_with(&[0x12])).count();
    assert!(dedup_ids < 4 * 80, "expired request ids were forgotten: {dedup_ids} left");
    let gc_entries = keys.iter().filter(|k| k.starts_with(&arbor::keys::version_gc_prefix(1))).count();
    assert!(gc_entries <= 3, "collected GC index entries are gone: {gc_entries} left");
}

/// An index scan that would find nothing to collect is skipped: the
/// replica knows the stamp of the first entry past its last scan and of
/// every entry written since. Skipping must not lose anything: once the
/// horizons pass the entries, they are all collected.
#[test]
fn gc_scans_are_skipped_while_nothing_can_be_collected() {
    let (second, hour) = (arbor::hlc::pack(1_000, 0), arbor::hlc::pack(3_600_000, 0));
    // An epoch a second, from an hour on: versions are kept 60 s, request
    // ids 10 minutes (so none expires in these 200 s).
    let log: Vec<EpochBatch> = (1..=200u64)
        .map(|e| {
            let stamp = hour + e * second;
            let txns = churn(e);
            EpochBatch { epoch: epoch_number(1, e), stamp, txns, gc_before: stamp - 60 * second }
        })
        .collect();
    let engine = Arc::new(Observed::default());
    let mut sm = open(engine.clone(), 2);
    let scans = || engine.gc_scan_starts.lock().unwrap().len();
    for (i, batch) in log.iter().enumerate().take(60) {
        sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    // The first epoch scans both (empty) indexes; then nothing is old enough.
    assert_eq!(scans(), 2, "scans in the first 60 epochs");
    for (i, batch) in log.iter().enumerate().skip(60) {
        sm.apply(entry(1, i as u64 + 1, batch)).unwrap();
    }
    // From then on each epoch's horizon reaches one more index entry.
    let scanned = scans();
    assert!((140..=145).contains(&scanned), "{scanned} scans in all");

    let keys: Vec<Vec<u8>> = dump(&engine.inner).into_iter().map(|(k, _)| k).collect();
    let gc_entries = keys.iter().filter(|k| k.starts_with(&arbor::keys::version_gc_prefix(1))).count();
    assert!(gc_entries <= 62, "the GC index entries past the horizon are collected: {gc_entries} left");
    let history = keys.iter().filter(|k| k[0] == 0x23).count();
    let bound = 5 * (60 + HISTORY_GC_INTERVAL as usize);
    assert!(history <= bound, "superseded versions are collected: {history} left, bound {bound}");
    let dedup_ids = keys.iter().filter(|k| k.starts_with(&[0x12])).count();
    assert_eq!(dedup_ids, 4 * 200, "no request id is old enough to expire");
    let horizon = VersionedTree::new(&engine.inner, 1, hour + 140 * second);
    assert_eq!(horizon.get(b"/hot/2").unwrap().unwrap().value, &b"140"[..]);
}

/// Through openraft's state machine trait, an epoch small enough to apply
/// on the calling task and one large enough for the blocking pool leave
/// exactly the state a replica applying them directly has.
#[tokio::test]
async fn small_entries_on_the_task_and_large_ones_on_the_pool_apply_alike() {
    use arbor::raft::state_machine::{StateMachine, INLINE_APPLY_MAX_BYTES};
    use openraft::storage::RaftStateMachine;

    let mut rng = StdRng::seed_from_u64(11);
    // Random bytes do not compress: 40 values of 512 bytes stay far above
    // the inline limit once encoded.
    let big: Vec<Txn> = (0..40)
        .map(|i| Txn {
            request_id: format!("big-{i}"),
            compares: vec![],
            success: vec![Op::Put {
                key: format!("/big/{i}").into_bytes(),
                value: (0..512).map(|_| rng.gen()).collect(),
                prev_kv: false,
            }],
            failure: vec![],
        })
        .collect();
    let batches = [
        EpochBatch { epoch: epoch_number(1, 1), stamp: 10_000, txns: vec![put_txn("/small".into(), 1)], gc_before: 0 },
        EpochBatch { epoch: epoch_number(1, 2), stamp: 10_001, txns: big, gc_before: 0 },
        EpochBatch { epoch: epoch_number(1, 3), stamp: 10_002, txns: vec![put_txn("/small".into(), 2)], gc_before: 0 },
    ];
    let entries: Vec<Entry> = batches.iter().enumerate().map(|(i, b)| entry(1, i as u64 + 1, b)).collect();
    let size = |e: &Entry| match &e.payload {
        EntryPayload::Normal(p) => p.0.len(),
        _ => 0,
    };
    assert!(size(&entries[0]) <= INLINE_APPLY_MAX_BYTES && size(&entries[2]) <= INLINE_APPLY_MAX_BYTES);
    assert!(size(&entries[1]) > INLINE_APPLY_MAX_BYTES, "{} bytes", size(&entries[1]));

    let through_openraft: Arc<dyn Engine> = Arc::new(Memory::new());
    let mut sm = StateMachine::new(open(through_openraft.clone(), 2));
    let mut responses = Vec::new();
    for e in &entries {
        responses.extend(sm.apply([e.clone()]).await.unwrap());
    }
    let direct: Arc<dyn Engine> = Arc::new(Memory::new());
    let mut replica = open(direct.clone(), 2);
    for (e, through) in entries.iter().zip(&responses) {
        let answered = replica.apply(e.clone()).unwrap();
        assert_eq!(&answered, through);
        assert!(answered.outcomes.iter().all(|o| matches!(o, arbor::tree::TxnOutcome::Done { succeeded: true, .. })));
    }
    assert_eq!(responses.len(), 3);
    assert_eq!(dump(through_openraft.as_ref()), dump(direct.as_ref()));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(3));
}
