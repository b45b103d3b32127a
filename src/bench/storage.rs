//! The physical-limit reference (`arbor-bench storage`): `writers` threads
//! each writing synced RocksDB write batches (`Durability::Sync`, the WAL
//! fsync'd before the write returns) of `batch` random keys and values of
//! the workloads' sizes, through [`arbor_storage::Rocks`] with Arbor's
//! default options, in a fresh temporary directory.
//!
//! Concurrent synced writers share fsyncs (RocksDB's group commit), so the
//! figure at N writers is what N clients could get from this disk if every
//! acknowledged write cost exactly one synced write and nothing else.
//! A replicated write costs more: Arbor syncs the log entry on a quorum and
//! then the applied epoch, each a synced write like these.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbor_storage::{Durability, Engine, Rocks, RocksOptions, WriteBatch};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::bench::{micros, new_histogram, unix_now, BenchError, KeyGen, Latency, RunRecord, KEY_PREFIX};

/// Settings of the storage reference.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Threads writing concurrently.
    pub writers: usize,
    /// Keys per synced write batch.
    pub batch: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub key_space: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Where the temporary database goes (default: the system temp dir).
    pub dir: Option<PathBuf>,
    pub progress: bool,
    pub seed: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            writers: 1,
            batch: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            key_space: 10_000,
            key_size: 16,
            value_size: 256,
            dir: None,
            progress: false,
            seed: 1,
        }
    }
}

/// Runs the storage reference; ops are synced batches.
pub fn run_storage(cfg: &StorageConfig) -> Result<RunRecord, BenchError> {
    if cfg.writers == 0 || cfg.batch == 0 || cfg.duration.is_zero() {
        return Err(BenchError::Config("writers, batch and duration must be positive".into()));
    }
    let keys = KeyGen::new(KEY_PREFIX, cfg.key_size, cfg.key_space)?;
    let parent = cfg.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new().prefix("arbor-bench-storage.").tempdir_in(&parent)?;
    let db = Rocks::open(&tmp.path().join("db"), &RocksOptions::default())?;
    let started_at = unix_now();
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let done = AtomicBool::new(false);
    let live = AtomicU64::new(0);

    let results = std::thread::scope(|s| {
        let writers: Vec<_> = (0..cfg.writers)
            .map(|w| {
                let (db, keys, live, done) = (&db, &keys, &live, &done);
                s.spawn(move || {
                    let result = write_loop(cfg, w, db, keys, live, measure_from, end);
                    // The first writer to stop (its window is over, or it
                    // failed) ends the progress line.
                    done.store(true, Ordering::Release);
                    result
                })
            })
            .collect();
        if cfg.progress {
            show_progress(cfg, &live, &done, start);
        }
        writers.into_iter().map(|w| w.join().expect("a storage writer panicked")).collect::<Vec<_>>()
    });

    let mut hist = new_histogram();
    let mut ops = 0;
    for r in results {
        let (h, n) = r?;
        hist.add(&h).expect("histograms share their bounds");
        ops += n;
    }
    let duration_s = cfg.duration.as_secs_f64();
    Ok(RunRecord {
        system: "rocksdb".into(),
        workload: "storage".into(),
        clients: cfg.writers,
        connections: 0,
        endpoints: vec![tmp.path().display().to_string()],
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        key_space: cfg.key_space,
        key_size: cfg.key_size,
        value_size: cfg.value_size,
        read_ratio: None,
        max_staleness_ms: None,
        batch: Some(cfg.batch),
        ops,
        errors: 0,
        misses: 0,
        retries: 0,
        ops_per_sec: ops as f64 / duration_s,
        latency: Latency::of(&hist),
        preload: None,
        rss: Vec::new(),
        cpu: Vec::new(),
        bench_cpu_s: None,
        error_samples: Vec::new(),
        started_at,
        timeline: None,
    })
}

/// One writer: synced batches until `end`; latencies from `measure_from`.
fn write_loop(
    cfg: &StorageConfig,
    writer: usize,
    db: &Rocks,
    keys: &KeyGen,
    live: &AtomicU64,
    measure_from: Instant,
    end: Instant,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(writer as u64));
    let mut hist = new_histogram();
    let mut ops = 0u64;
    let mut value = vec![0u8; cfg.value_size];
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            return Ok((hist, ops));
        }
        let mut batch = WriteBatch::new();
        for _ in 0..cfg.batch {
            rng.fill_bytes(&mut value);
            batch.put(keys.random(&mut rng), value.clone());
        }
        db.write(batch, Durability::Sync)?;
        live.fetch_add(1, Ordering::Relaxed);
        if t0 >= measure_from {
            hist.saturating_record(micros(t0.elapsed()));
            ops += 1;
        }
    }
}

/// The progress line, printed from the scope's own thread until the
/// writers are past their end.
fn show_progress(cfg: &StorageConfig, live: &AtomicU64, done: &AtomicBool, start: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let total = cfg.warmup + cfg.duration;
    let mut last = (Instant::now(), 0u64);
    while !done.load(Ordering::Acquire) && start.elapsed() < total {
        std::thread::sleep(every.min(total.saturating_sub(start.elapsed())));
        let now = Instant::now();
        let n = live.load(Ordering::Relaxed);
        let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, n);
        let line = format!(
            "rocksdb storage {} writers x {} keys: {:>5.1}/{:.0} s  {n} synced batches  {rate:.0}/s",
            cfg.writers,
            cfg.batch,
            start.elapsed().as_secs_f64(),
            total.as_secs_f64()
        );
        super::progress_line(tty, &line);
    }
    super::clear_progress(tty);
}
