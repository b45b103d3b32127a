//! The sequencer state machine driven directly with log entries: the same
//! log gives the same state and results on independent replicas; epochs
//! from the past stop the replica; redelivered entries are skipped; a
//! restarted replica resumes where it stopped.

use std::sync::Arc;

use arbor::hlc::{Hlc, ManualClock};
use arbor::raft::Entry;
use arbor::routing::RangeDesc;
use arbor::sequencer::driver::epoch_number;
use arbor::sequencer::{EpochBatch, EpochResponse, GroupShared, GroupStateMachine};
use arbor::tree::{CmpOp, CmpTarget, Compare, KeyRange, Op, RangeSpec, Txn};
use arbor_storage::{Durability, Engine, Memory, ReadView};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn range() -> RangeDesc {
    RangeDesc { group: 1, start: Vec::new(), end: Vec::new() }
}

fn open(engine: Arc<dyn Engine>, vshards: u32) -> GroupStateMachine {
    let hlc = Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 500));
    GroupStateMachine::open(range(), engine, vshards, Arc::new(GroupShared::default()), hlc, Durability::Sync).unwrap()
}

fn entry(term: u64, index: u64, batch: &EpochBatch) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(batch.encode(512).unwrap()),
    }
}

fn random_txn(rng: &mut StdRng, id: usize) -> Txn {
    let key = |rng: &mut StdRng| format!("/k/{}", rng.gen_range(0..12)).into_bytes();
    let op = |rng: &mut StdRng| match rng.gen_range(0..8) {
        0 => Op::Get { key: key(rng) },
        1 => Op::Put { key: key(rng), value: vec![b'a' + rng.gen_range(0..26u8); rng.gen_range(0..20)] },
        2 => Op::Delete { key: key(rng) },
        3 => Op::Increment { key: key(rng), delta: rng.gen_range(-5..5) },
        4 => Op::Append { key: key(rng), value: b"x".to_vec() },
        5 => Op::Range(RangeSpec { range: KeyRange::prefix(b"/k/"), limit: 5, delimiter: None, keys_only: false }),
        6 => Op::DeleteRange(KeyRange { start: key(rng), end: b"/k/5".to_vec() }),
        _ => Op::Put { key: key(rng), value: rng.gen_range(0..100).to_string().into_bytes() },
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
        })
        .collect()
}

fn dump(engine: &dyn ReadView) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .scan(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, arbor_storage::Direction::Forward)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn random_logs_replay_identically_on_independent_replicas() {
    for seed in 0..5 {
        let log = random_log(seed, 30);
        let (a, b): (Arc<Memory>, Arc<Memory>) = (Arc::new(Memory::new()), Arc::new(Memory::new()));
        // Different vshard counts: parallelism must not change results.
        let mut sm_a = open(a.clone(), 8);
        let mut sm_b = open(b.clone(), 3);
        for (i, batch) in log.iter().enumerate() {
            let ra: EpochResponse = sm_a.apply(entry(1, i as u64 + 1, batch)).unwrap();
            let rb: EpochResponse = sm_b.apply(entry(1, i as u64 + 1, batch)).unwrap();
            assert_eq!(ra, rb, "seed {seed} epoch {i}: results differ");
        }
        let strip_watermarks = |d: Vec<(Vec<u8>, Vec<u8>)>| {
            d.into_iter().filter(|(k, _)| k[0] != 0x11).collect::<Vec<_>>() // vshard watermarks depend on the count
        };
        assert_eq!(
            strip_watermarks(dump(a.as_ref())),
            strip_watermarks(dump(b.as_ref())),
            "seed {seed}: state differs"
        );
    }
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
