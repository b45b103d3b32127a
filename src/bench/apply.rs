//! The apply reference (`arbor-bench apply`): what one replica's state
//! machine costs per transaction, without the network, the Raft log or the
//! other replicas.
//!
//! It encodes `epochs` epochs of `per_epoch` transactions of the `put` or
//! `txn` workload (the same shapes the cluster workloads send: a put is a
//! one-op transaction with a request id; a txn compares the versions of 4
//! keys in distinct vshards, then puts each) as log entries, the way the
//! leader does, and applies them one by one to a [`GroupStateMachine`] over
//! a fresh RocksDB with the server's default options, in a temporary
//! directory. Only the applies are timed: decode, dedup lookups, execution
//! and the epoch's write batch, as on every replica of a cluster.
//!
//! On a cluster every replica does this work for every transaction, so it
//! is the part of a write's CPU that three replicas pay three times
//! (docs/BENCHMARKS.md, "Where the time goes"). A single process with no
//! hand-offs between threads gives steadier figures than a cluster on a
//! shared 2-core VM, and a profile of it shows the apply alone. The figures
//! are the applying thread's CPU time (RocksDB's flushes and compactions
//! run on its own threads and are not in them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_storage::{Durability, Engine, Rocks};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::bench::cpu::thread_cpu;
use crate::bench::{BenchError, KeyGen, Workload, KEY_PREFIX, TXN_KEYS, VERSION_BOUND};
use crate::hlc::{self, Clock, Hlc, SystemClock};
use crate::raft::Entry;
use crate::routing::RangeDesc;
use crate::scheduler::DEFAULT_INLINE_MAX_TXNS;
use crate::sequencer::driver::epoch_number;
use crate::sequencer::{Compression, EpochBatch, GroupShared, GroupStateMachine};
use crate::tree::{CmpOp, CmpTarget, Compare, Op, Txn, TxnOutcome};

/// Settings of the apply reference.
#[derive(Clone, Debug)]
pub struct ApplyConfig {
    /// `put` or `txn`.
    pub workload: Workload,
    /// Transactions per epoch (a put epoch holds 25–35 at 64 clients).
    pub per_epoch: usize,
    /// Epochs applied per round.
    pub epochs: usize,
    /// Rounds, each on the state the previous ones left (their figures
    /// show how steady the machine is).
    pub rounds: usize,
    pub key_space: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Vshards of the state machine (the server's default: one per core).
    pub vshards: u32,
    /// The storage settings (the server's defaults).
    pub storage: crate::config::StorageConfig,
    pub seed: u64,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            workload: Workload::Put,
            per_epoch: 25,
            epochs: 4000,
            rounds: 3,
            key_space: 10_000,
            key_size: 16,
            value_size: 256,
            vshards: crate::config::default_vshards(),
            storage: crate::config::StorageConfig::default(),
            seed: 1,
        }
    }
}

/// One round's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyRound {
    pub txns: usize,
    /// Wall-clock seconds of the round's applies.
    pub seconds: f64,
    /// CPU seconds of the applying thread; the µs figures divide these.
    pub cpu_seconds: f64,
    pub us_per_txn: f64,
    pub us_per_epoch: f64,
}

/// What `arbor-bench apply` prints and writes as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyRecord {
    pub workload: String,
    pub per_epoch: usize,
    pub epochs: usize,
    pub value_size: usize,
    pub vshards: u32,
    pub rounds: Vec<ApplyRound>,
    /// The fastest round's µs per transaction (the least disturbed by the
    /// rest of the machine).
    pub best_us_per_txn: f64,
}

/// Builds the epochs of one round, numbered from `first` on.
fn epochs(cfg: &ApplyConfig, keys: &KeyGen, rng: &mut StdRng, first: u64, ids: &mut u64) -> Vec<EpochBatch> {
    let mut value = vec![0u8; cfg.value_size];
    let mut txn = |rng: &mut StdRng| {
        *ids += 1;
        let request_id = format!("{:016x}-{ids}", cfg.seed);
        let written = match cfg.workload {
            Workload::Txn => keys.distinct(rng, TXN_KEYS, cfg.vshards),
            _ => vec![keys.random(rng)],
        };
        let compares = match cfg.workload {
            Workload::Txn => written
                .iter()
                .map(|k| Compare { key: k.clone(), op: CmpOp::Less, target: CmpTarget::Version(VERSION_BOUND) })
                .collect(),
            _ => Vec::new(),
        };
        let success = written
            .into_iter()
            .map(|key| {
                rng.fill_bytes(&mut value);
                Op::Put { key, value: value.clone().into(), prev_kv: false }
            })
            .collect();
        Txn { request_id, compares, success, failure: Vec::new() }
    };
    let start = hlc::pack(SystemClock.now_ms(), 0);
    (0..cfg.epochs as u64)
        .map(|e| EpochBatch {
            epoch: epoch_number(1, first + e),
            stamp: start + e,
            txns: (0..cfg.per_epoch).map(|_| txn(rng)).collect(),
            gc_before: 0,
        })
        .collect()
}

/// Runs the apply reference.
pub fn run_apply(cfg: &ApplyConfig, dir: Option<&std::path::Path>) -> Result<ApplyRecord, BenchError> {
    if !matches!(cfg.workload, Workload::Put | Workload::Txn) {
        return Err(BenchError::Config(format!("the apply reference runs put or txn, not {}", cfg.workload.name())));
    }
    if cfg.per_epoch == 0 || cfg.epochs == 0 || cfg.rounds == 0 || cfg.vshards == 0 {
        return Err(BenchError::Config("per-epoch, epochs, rounds and vshards must be positive".into()));
    }
    if cfg.per_epoch > DEFAULT_INLINE_MAX_TXNS {
        // Larger epochs go to the vshard executors' threads, whose CPU the
        // applying thread's clock does not count.
        return Err(BenchError::Config(format!(
            "per-epoch {} is above {DEFAULT_INLINE_MAX_TXNS}: such epochs run on the vshard executors, \
             which this reference does not time",
            cfg.per_epoch
        )));
    }
    let keys = KeyGen::new(KEY_PREFIX, cfg.key_size, cfg.key_space)?;
    let parent = dir.map(std::path::Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new().prefix("arbor-bench-apply.").tempdir_in(&parent)?;
    // One replica, so nothing to stagger: the memtable as configured.
    let storage = crate::config::StorageConfig { stagger_percent: 0, ..cfg.storage.clone() };
    let engine: Arc<dyn Engine> = Arc::new(Rocks::open(&tmp.path().join("db"), &storage.rocks_options(0))?);
    let hlc = Arc::new(Hlc::new(Arc::new(SystemClock), 500));
    let range = RangeDesc { group: 1, start: Vec::new(), end: Vec::new() };
    let fail = |e: crate::error::Error| BenchError::Apply(e.to_string());
    let mut sm =
        GroupStateMachine::open(range, engine, cfg.vshards, Arc::new(GroupShared::default()), hlc, Durability::Sync)
            .map_err(fail)?
            .with_record_cache(storage.record_cache_bytes as usize);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut compression = Compression::new(crate::config::EpochConfig::default().compress_threshold);
    let (mut index, mut ids) = (0u64, 0u64);
    let mut rounds = Vec::with_capacity(cfg.rounds);
    for _ in 0..cfg.rounds {
        let batches = epochs(cfg, &keys, &mut rng, index + 1, &mut ids);
        let entries = batches
            .iter()
            .map(|b| {
                index += 1;
                let payload = b.encode(&mut compression).map_err(fail)?;
                Ok(Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(payload),
                })
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let (started, cpu_before) = (Instant::now(), thread_cpu());
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            responses.push(sm.apply(entry).map_err(fail)?);
        }
        let (took, cpu) = (started.elapsed(), thread_cpu().saturating_sub(cpu_before));
        // Every compare holds, so every transaction must have written.
        let outcomes = responses.iter().flat_map(|r| &r.outcomes);
        if let Some(o) = outcomes.clone().find(|o| !matches!(o, TxnOutcome::Done { succeeded: true, .. })) {
            return Err(BenchError::Apply(format!("a transaction did not succeed: {o:?}")));
        }
        rounds.push(round(cfg.epochs, outcomes.count(), took, cpu));
    }
    let best_us_per_txn = rounds.iter().map(|r| r.us_per_txn).fold(f64::INFINITY, f64::min);
    Ok(ApplyRecord {
        workload: cfg.workload.name().into(),
        per_epoch: cfg.per_epoch,
        epochs: cfg.epochs,
        value_size: cfg.value_size,
        vshards: cfg.vshards,
        rounds,
        best_us_per_txn,
    })
}

fn round(epochs: usize, txns: usize, took: Duration, cpu: Duration) -> ApplyRound {
    let us = cpu.as_secs_f64() * 1e6;
    ApplyRound {
        txns,
        seconds: took.as_secs_f64(),
        cpu_seconds: cpu.as_secs_f64(),
        us_per_txn: us / txns as f64,
        us_per_epoch: us / epochs as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transaction_of_every_round_is_applied() {
        let cfg = ApplyConfig { workload: Workload::Txn, per_epoch: 3, epochs: 5, rounds: 2, ..Default::default() };
        let record = run_apply(&cfg, None).unwrap();
        assert_eq!(record.rounds.len(), 2);
        for r in &record.rounds {
            assert_eq!(r.txns, 15);
            // The applying thread's CPU: some, and no more than the time
            // the round took (one thread), give or take the clocks' ticks.
            assert!(r.cpu_seconds > 0.0 && r.cpu_seconds <= r.seconds + 1e-3, "{r:?}");
        }
        assert!(run_apply(&ApplyConfig { workload: Workload::Get, ..cfg.clone() }, None).is_err());
        let too_big = ApplyConfig { per_epoch: DEFAULT_INLINE_MAX_TXNS + 1, ..cfg };
        assert!(run_apply(&too_big, None).unwrap_err().to_string().contains("vshard executors"));
    }

    #[test]
    fn the_epochs_are_the_workloads_shapes() {
        let keys = KeyGen::new(KEY_PREFIX, 16, 100).unwrap();
        let cfg = ApplyConfig { workload: Workload::Txn, per_epoch: 2, epochs: 3, value_size: 7, ..Default::default() };
        let mut ids = 0;
        let batches = epochs(&cfg, &keys, &mut StdRng::seed_from_u64(3), 1, &mut ids);
        assert_eq!(batches.len(), 3);
        assert_eq!(ids, 6, "one request id per transaction");
        for b in &batches {
            for t in &b.txns {
                assert_eq!((t.compares.len(), t.success.len()), (TXN_KEYS, TXN_KEYS));
                assert!(matches!(&t.success[0], Op::Put { value, .. } if value.len() == 7));
            }
        }
    }
}
