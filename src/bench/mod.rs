//! The load generator behind `arbor-bench` (issue #6): the same workloads,
//! driven by the same code, against an Arbor cluster or an etcd cluster, plus
//! a storage-level reference of what the disk allows.
//!
//! - [`Target`] is the small trait a system implements: put, linearizable
//!   get, a transaction of 4 compares + 4 puts, append.
//!   [`ArborTarget`] speaks Arbor's client; `EtcdTarget`
//!   (module `etcd`, built only with the `etcd-client` feature, since its
//!   build needs `protoc`) speaks etcd's KV/Txn API.
//! - [`run`] drives one [`Workload`] with `clients` concurrent logical
//!   clients spread over `connections` connections: an optional preload of
//!   the key space, a warm-up, then a measured window whose latencies go into
//!   an HDR histogram.
//! - [`rss`] samples the servers' resident memory from `/proc`, and [`cpu`]
//!   the CPU they and the load generator used in the measured window;
//!   [`storage`] measures synced RocksDB write batches, [`apply`] one
//!   replica's state machine applying epochs;
//!   [`report`] turns a directory of run records into JSON, a markdown
//!   table and an SVG plot.
//!
//! The clients are *closed-loop*: each waits for its operation before it
//! starts the next, so a latency is one operation's service time, not the
//! queueing a fixed arrival rate would see (no coordinated-omission
//! correction). Throughput counts the operations that started inside the
//! measured window, divided by its length.
//!
//! `get-follower` reads from every replica, not through the leader: each
//! connection is pinned to one node (connection `i` to endpoint `i mod n`)
//! and asks for Arbor's bounded-staleness read ([`LoadConfig::max_staleness`]),
//! which that node answers from its own applied state; etcd's equivalent is
//! a serializable read, answered by whichever member gets it, with no bound
//! on its staleness at all.

pub mod apply;
pub mod cpu;
#[cfg(feature = "etcd-client")]
pub mod etcd;
pub mod report;
pub mod rss;
pub mod storage;
pub mod target;
pub mod timeline;

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

pub use target::ArborTarget;

/// Keys of the put / get / mixed / txn workloads: `/k/000000042`.
pub const KEY_PREFIX: &str = "/k/";
/// Keys of the append workload, kept apart so that growing values do not
/// change what the get workload reads. Each run appends under a tag of its
/// own (`/a/3f9c/00000042`, see [`LoadConfig::new`]): its values start
/// empty whatever earlier runs on the same cluster appended, so every
/// round and client count of a comparison appends to values of the same
/// sizes on both systems.
pub const APPEND_PREFIX: &str = "/a/";
/// Keys per transaction of the `txn` workload (each compared, then put).
pub const TXN_KEYS: usize = 4;
/// The compare of the `txn` workload: `version < VERSION_BOUND`, true for
/// every key (a missing key has version 0) but evaluated by the server.
pub const VERSION_BOUND: u64 = 1 << 62;
/// The default staleness bound of the `get-follower` workload's reads. A
/// replica's state moves on with every epoch it applies, and an idle
/// leader closes an empty epoch every `reads.close_interval_ms` (200 ms by
/// default), so a bound well above that never makes a read wait.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(1);
/// How long a client pauses after a failed operation, so that a broken
/// cluster is not hammered by a tight error loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Error messages kept per run (the count is always exact).
const ERROR_SAMPLES: usize = 5;
/// The longest a preload may take.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Writes in flight during a preload, whatever the run's client count.
const PRELOAD_PARALLEL: usize = 16;
/// Largest latency the histograms hold (larger ones are clamped).
const HISTOGRAM_MAX_US: u64 = 120_000_000;

/// Errors that stop a benchmark (an operation's failure is only counted).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error("cannot connect to {system}: {message}")]
    Connect { system: &'static str, message: String },
    #[error("preload failed: {0}")]
    Preload(String),
    #[error("storage: {0}")]
    Storage(#[from] arbor_storage::Error),
    /// The state machine failed, or a transaction of the apply reference
    /// did not succeed.
    #[error("apply reference: {0}")]
    Apply(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// One failed operation, as the target reported it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

impl OpError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        OpError(message.to_string())
    }
}

/// A system under test. Every method is one logical operation of a
/// workload; `conn` picks one of the target's [`connections`](Target::connections).
pub trait Target: Send + Sync + 'static {
    /// `"arbor"` or `"etcd"`.
    fn system(&self) -> &'static str;
    fn endpoints(&self) -> Vec<String>;
    /// How many connections (HTTP/2 channels) the clients are spread over.
    fn connections(&self) -> usize;
    /// Writes `key` (durably, as the system acknowledges writes).
    fn put(&self, conn: usize, key: &[u8], value: &[u8]) -> impl Future<Output = Result<(), OpError>> + Send;
    /// A linearizable read; `Ok(true)` if the key exists.
    fn get(&self, conn: usize, key: &[u8]) -> impl Future<Output = Result<bool, OpError>> + Send;
    /// A read served by a replica without going through the leader, no
    /// staler than `max_staleness` where the system can bound it;
    /// `Ok(true)` if the key exists.
    fn get_follower(
        &self,
        conn: usize,
        key: &[u8],
        max_staleness: Duration,
    ) -> impl Future<Output = Result<bool, OpError>> + Send;
    /// One transaction: `version < VERSION_BOUND` on every key, then a put
    /// of `value` to every key. An unmet compare is an error.
    fn txn(&self, conn: usize, keys: &[Vec<u8>], value: &[u8]) -> impl Future<Output = Result<(), OpError>> + Send;
    /// Appends `value` to the value of `key`; returns how many times it had
    /// to try again (a compare-and-swap loop's conflicts; 0 for a native
    /// append).
    fn append(&self, conn: usize, key: &[u8], value: &[u8]) -> impl Future<Output = Result<u32, OpError>> + Send;
}

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One put of a random key.
    Put,
    /// One linearizable get of a random (preloaded) key.
    Get,
    /// One get of a random (preloaded) key from any replica, at most
    /// [`LoadConfig::max_staleness`] stale.
    GetFollower,
    /// 4 compares + 4 puts on distinct keys in distinct vshards.
    Txn,
    /// A get with probability `read_ratio`, else a put.
    Mixed,
    /// Append `value_size` bytes to a random key's value.
    Append,
}

impl Workload {
    pub const ALL: [Workload; 6] =
        [Workload::Put, Workload::Get, Workload::GetFollower, Workload::Txn, Workload::Mixed, Workload::Append];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::GetFollower => "get-follower",
            Workload::Txn => "txn",
            Workload::Mixed => "mixed",
            Workload::Append => "append",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Workloads that read keys want them written first.
    pub fn reads(self) -> bool {
        matches!(self, Workload::Get | Workload::GetFollower | Workload::Mixed)
    }

    /// The key prefix of a run of this workload.
    fn run_prefix(self) -> String {
        match self {
            Workload::Append => format!("{APPEND_PREFIX}{:04x}/", rand::random::<u16>()),
            _ => KEY_PREFIX.to_string(),
        }
    }
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub workload: Workload,
    /// Concurrent logical clients (closed loop, one operation at a time each).
    pub clients: usize,
    /// The measured window.
    pub duration: Duration,
    /// Load before the window, not measured.
    pub warmup: Duration,
    /// Keys are drawn uniformly from this many.
    pub key_space: u64,
    /// Bytes per key (prefix and zero-padded index).
    pub key_size: usize,
    /// What every key starts with ([`KEY_PREFIX`]; the append workload's
    /// carries a random tag of the run, see [`APPEND_PREFIX`]).
    pub key_prefix: String,
    /// Bytes per value (random, so that nothing compresses them).
    pub value_size: usize,
    /// `mixed`: the fraction of operations that are gets.
    pub read_ratio: f64,
    /// `get-follower`: how stale a replica's answer may be (Arbor's
    /// bounded-staleness read; etcd's serializable read has no bound).
    pub max_staleness: Duration,
    /// `txn`: pick keys in distinct vshards of this many (Arbor's
    /// `vshards`, 8 by default); 0 = just distinct keys.
    pub txn_vshards: u32,
    /// Write every key of the key space before a reading workload.
    pub preload: bool,
    /// An operation taking longer counts as an error.
    pub op_timeout: Duration,
    pub seed: u64,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// Server processes whose RSS is sampled during the run.
    pub pids: Vec<u32>,
    /// Record the measured window's operations by slices of this length
    /// ([`RunRecord::timeline`]); `None`: not recorded.
    pub timeline: Option<Duration>,
}

impl LoadConfig {
    pub fn new(workload: Workload) -> Self {
        LoadConfig {
            workload,
            clients: 16,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            key_space: 10_000,
            key_size: 16,
            key_prefix: workload.run_prefix(),
            value_size: 256,
            read_ratio: 0.8,
            max_staleness: DEFAULT_MAX_STALENESS,
            txn_vshards: 8,
            preload: workload.reads(),
            op_timeout: Duration::from_secs(10),
            seed: 1,
            progress: false,
            pids: Vec::new(),
            timeline: None,
        }
    }

    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if self.clients == 0 {
            return bad("clients must be at least 1".into());
        }
        if self.duration.is_zero() {
            return bad("duration must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return bad(format!("read ratio {} is not within 0..=1", self.read_ratio));
        }
        if self.workload == Workload::GetFollower && self.max_staleness < Duration::from_millis(1) {
            return bad("the get-follower workload needs a staleness bound of at least 1 ms".into());
        }
        if self.workload == Workload::Txn && self.key_space < TXN_KEYS as u64 {
            return bad(format!("the txn workload needs a key space of at least {TXN_KEYS} keys"));
        }
        KeyGen::new(&self.key_prefix, self.key_size, self.key_space).map(|_| ())
    }
}

/// Fixed-size keys: a prefix and a zero-padded index below `space`.
#[derive(Clone, Debug)]
pub struct KeyGen {
    prefix: String,
    width: usize,
    space: u64,
}

impl KeyGen {
    pub fn new(prefix: &str, key_size: usize, space: u64) -> Result<Self, BenchError> {
        if space == 0 {
            return Err(BenchError::Config("the key space must hold at least 1 key".into()));
        }
        let digits = (space - 1).to_string().len();
        if key_size < prefix.len() + digits {
            return Err(BenchError::Config(format!(
                "{key_size}-byte keys cannot hold {space} distinct keys: the prefix {prefix:?} and {digits} digits need {} bytes",
                prefix.len() + digits
            )));
        }
        Ok(KeyGen { prefix: prefix.to_string(), width: key_size - prefix.len(), space })
    }

    pub fn key(&self, i: u64) -> Vec<u8> {
        format!("{}{:0width$}", self.prefix, i, width = self.width).into_bytes()
    }

    pub fn random(&self, rng: &mut impl Rng) -> Vec<u8> {
        self.key(rng.gen_range(0..self.space))
    }

    /// `n` distinct random keys; with `vshards > 0`, also in distinct
    /// vshards (as Arbor hashes keys) when the key space allows it.
    pub fn distinct(&self, rng: &mut impl Rng, n: usize, vshards: u32) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut used = Vec::with_capacity(n);
        let spread = vshards as usize >= n;
        for _ in 0..64 * n {
            if keys.len() == n {
                break;
            }
            let key = self.random(rng);
            if keys.contains(&key) {
                continue;
            }
            if spread {
                let v = crate::tree::vshard_of(&key, vshards);
                if used.contains(&v) {
                    continue;
                }
                used.push(v);
            }
            keys.push(key);
        }
        // A tiny key space may not cover enough vshards: fall back to
        // distinct keys.
        let mut i = 0;
        while keys.len() < n {
            let key = self.key(i);
            if !keys.contains(&key) {
                keys.push(key);
            }
            i += 1;
        }
        keys
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max.
    pub fn is_ordered(&self) -> bool {
        self.p50_us <= self.p90_us
            && self.p90_us <= self.p99_us
            && self.p99_us <= self.p999_us
            && self.p999_us <= self.max_us
    }
}

/// A histogram of latencies in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// How long the preload took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preload {
    pub keys: u64,
    pub seconds: f64,
}

/// The result of one run: what `--json-out` writes and [`report`] reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// `arbor`, `etcd` or `rocksdb` (the storage reference).
    pub system: String,
    /// A [`Workload`] name, or `storage`.
    pub workload: String,
    pub clients: usize,
    pub connections: usize,
    pub endpoints: Vec<String>,
    /// Length of the measured window.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub key_space: u64,
    pub key_size: usize,
    pub value_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ratio: Option<f64>,
    /// `get-follower`: the staleness bound asked of Arbor's replicas, in
    /// milliseconds (etcd's serializable reads have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness_ms: Option<u64>,
    /// Storage reference: keys per synced write batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Operations that succeeded in the window.
    pub ops: u64,
    pub errors: u64,
    /// Gets that found no key.
    pub misses: u64,
    /// Compare-and-swap conflicts retried (etcd's append).
    pub retries: u64,
    pub ops_per_sec: f64,
    pub latency: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<Preload>,
    pub rss: Vec<rss::RssPeak>,
    /// CPU each server process used in the measured window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<cpu::CpuUse>,
    /// CPU the load generator itself used in the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench_cpu_s: Option<f64>,
    pub error_samples: Vec<String>,
    /// Seconds since the Unix epoch when the run started.
    pub started_at: u64,
    /// The measured window's operations by time slice, if asked for
    /// ([`LoadConfig::timeline`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<timeline::Timeline>,
}

impl RunRecord {
    /// CPU time of all the servers in the measured window per operation
    /// completed in it, in microseconds (`None` without CPU figures).
    pub fn server_cpu_us_per_op(&self) -> Option<f64> {
        if self.cpu.is_empty() || self.ops == 0 {
            return None;
        }
        Some(self.cpu.iter().map(|c| c.cpu_s).sum::<f64>() * 1e6 / self.ops as f64)
    }

    /// A human summary of several lines.
    pub fn summary(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &self.latency;
        let who = match self.batch {
            Some(batch) => format!("{} writers, {batch} keys per synced batch", self.clients),
            None => format!("{} clients, {} connections", self.clients, self.connections),
        };
        let mut s = format!(
            "{} {}: {who}, {:.1} s measured after {:.1} s warm-up\n",
            self.system, self.workload, self.duration_s, self.warmup_s
        );
        if let Some(ms) = self.max_staleness_ms {
            let bound = if self.system == "arbor" { format!("at most {ms} ms stale") } else { "serializable".into() };
            s += &format!("  reads     from every replica, {bound}\n");
        }
        s += &format!("  ops       {} ({:.1} ops/s), errors {}", self.ops, self.ops_per_sec, self.errors);
        if self.misses > 0 {
            s += &format!(", get misses {}", self.misses);
        }
        if self.retries > 0 {
            s += &format!(", CAS retries {}", self.retries);
        }
        s += &format!(
            "\n  latency   p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2})\n",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.mean_us / 1000.0
        );
        if let Some(p) = &self.preload {
            s += &format!("  preload   {} keys in {:.1} s\n", p.keys, p.seconds);
        }
        for r in &self.rss {
            s += &format!("  peak RSS  {r}\n");
        }
        if let Some(us) = self.server_cpu_us_per_op() {
            let each: Vec<String> = self.cpu.iter().map(|c| format!("pid {} {:.2}", c.pid, c.cpu_s)).collect();
            s += &format!("  CPU       servers {us:.0} µs per op ({} CPU-s)", each.join(", "));
            if let Some(b) = self.bench_cpu_s {
                s += &format!(", load generator {b:.2} CPU-s");
            }
            s += "\n";
        }
        for e in &self.error_samples {
            s += &format!("  error     {e}\n");
        }
        s
    }
}

pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1_000
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One operation of a workload, with its keys.
enum Op {
    Put(Vec<u8>),
    Get(Vec<u8>),
    GetFollower(Vec<u8>),
    Txn(Vec<Vec<u8>>),
    Append(Vec<u8>),
}

struct Plan {
    workload: Workload,
    keys: KeyGen,
    read_ratio: f64,
    max_staleness: Duration,
    txn_vshards: u32,
    value_size: usize,
    op_timeout: Duration,
    measure_from: Instant,
    end: Instant,
    /// Keep every measured operation's [`timeline::Sample`].
    samples: bool,
}

impl Plan {
    fn next_op(&self, rng: &mut StdRng) -> Op {
        match self.workload {
            Workload::Put => Op::Put(self.keys.random(rng)),
            Workload::Get => Op::Get(self.keys.random(rng)),
            Workload::GetFollower => Op::GetFollower(self.keys.random(rng)),
            Workload::Txn => Op::Txn(self.keys.distinct(rng, TXN_KEYS, self.txn_vshards)),
            Workload::Append => Op::Append(self.keys.random(rng)),
            Workload::Mixed => {
                if rng.gen_bool(self.read_ratio) {
                    Op::Get(self.keys.random(rng))
                } else {
                    Op::Put(self.keys.random(rng))
                }
            }
        }
    }
}

/// What one operation returned.
#[derive(Default)]
struct Done {
    missed: bool,
    retries: u32,
}

async fn execute<T: Target>(target: &T, conn: usize, plan: &Plan, op: &Op, value: &[u8]) -> Result<Done, OpError> {
    let read = |found: bool| Done { missed: !found, retries: 0 };
    match op {
        Op::Put(k) => target.put(conn, k, value).await.map(|()| Done::default()),
        Op::Get(k) => target.get(conn, k).await.map(read),
        Op::GetFollower(k) => target.get_follower(conn, k, plan.max_staleness).await.map(read),
        Op::Txn(keys) => target.txn(conn, keys, value).await.map(|()| Done::default()),
        Op::Append(k) => target.append(conn, k, value).await.map(|retries| Done { missed: false, retries }),
    }
}

/// Counters every client bumps, read by the progress line.
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// One client's share of the measured window.
struct ClientStats {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    misses: u64,
    retries: u64,
    error_samples: Vec<String>,
    samples: Vec<timeline::Sample>,
}

async fn client_loop<T: Target>(target: Arc<T>, id: usize, plan: Arc<Plan>, live: Arc<Live>, seed: u64) -> ClientStats {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(id as u64));
    let conn = id % target.connections().max(1);
    let mut value = vec![0u8; plan.value_size];
    let mut stats = ClientStats {
        hist: new_histogram(),
        ops: 0,
        errors: 0,
        misses: 0,
        retries: 0,
        error_samples: Vec::new(),
        samples: Vec::new(),
    };
    loop {
        let start = Instant::now();
        if start >= plan.end {
            break;
        }
        let op = plan.next_op(&mut rng);
        rng.fill_bytes(&mut value);
        let result = tokio::time::timeout(plan.op_timeout, execute(&*target, conn, &plan, &op, &value))
            .await
            .unwrap_or_else(|_| Err(OpError::new(format!("no answer within {:?}", plan.op_timeout))));
        let measured = start >= plan.measure_from;
        match result {
            Ok(done) => {
                live.ops.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let latency_us = micros(start.elapsed());
                    stats.hist.saturating_record(latency_us);
                    if plan.samples {
                        let completed_us = micros(plan.measure_from.elapsed());
                        stats.samples.push(timeline::Sample { completed_us, latency_us });
                    }
                    stats.ops += 1;
                    stats.misses += done.missed as u64;
                    stats.retries += done.retries as u64;
                }
            }
            Err(e) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    stats.errors += 1;
                    if stats.error_samples.len() < ERROR_SAMPLES {
                        stats.error_samples.push(e.0);
                    }
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    stats
}

/// Writes every key of the key space once, [`PRELOAD_PARALLEL`] at a time.
async fn preload<T: Target>(target: &Arc<T>, cfg: &LoadConfig, keys: &KeyGen) -> Result<Preload, BenchError> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut value = vec![0u8; cfg.value_size];
    rng.fill_bytes(&mut value);
    let value = Arc::new(value);
    let writes = futures::stream::iter(0..cfg.key_space)
        .map(|i| {
            let (target, value, key) = (target.clone(), value.clone(), keys.key(i));
            async move { target.put(i as usize, &key, &value).await }
        })
        .buffer_unordered(PRELOAD_PARALLEL);
    let all = async {
        futures::pin_mut!(writes);
        while let Some(r) = writes.next().await {
            r.map_err(|e| BenchError::Preload(e.0))?;
        }
        Ok::<_, BenchError>(())
    };
    tokio::time::timeout(PRELOAD_TIMEOUT, all)
        .await
        .map_err(|_| BenchError::Preload(format!("{} keys not written within {PRELOAD_TIMEOUT:?}", cfg.key_space)))??;
    Ok(Preload { keys: cfg.key_space, seconds: started.elapsed().as_secs_f64() })
}

/// Prints `label` and the live counters on stderr every second (on a
/// terminal, one line rewritten in place; otherwise a line every 5 s).
pub(crate) struct ProgressLine {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressLine {
    fn start(label: String, live: Arc<Live>, started: Instant, warmup: Duration, total: Duration) -> Self {
        let stop = Arc::new(tokio::sync::Notify::new());
        let tty = std::io::stderr().is_terminal();
        let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let notified = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::select! {
                    _ = notified.notified() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = Instant::now();
                let ops = live.ops.load(Ordering::Relaxed);
                let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, ops);
                let elapsed = started.elapsed();
                let phase = if elapsed < warmup { "warm-up" } else { "measuring" };
                let line = format!(
                    "{label}: {phase} {:>5.1}/{:.0} s  {ops} ops  {rate:.0} ops/s  {} errors",
                    elapsed.as_secs_f64(),
                    total.as_secs_f64(),
                    live.errors.load(Ordering::Relaxed)
                );
                progress_line(tty, &line);
            }
            clear_progress(tty);
        });
        ProgressLine { stop, task }
    }

    async fn finish(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

/// Marks the CPU of the servers and of this process when the measured
/// window opens and when it closes.
struct CpuWindow(tokio::task::JoinHandle<(Vec<cpu::CpuUse>, Option<f64>)>);

impl CpuWindow {
    fn start(servers: Vec<u32>, from: Instant, until: Instant) -> Self {
        CpuWindow(tokio::spawn(async move {
            let mut pids = servers;
            pids.push(std::process::id());
            tokio::time::sleep_until(from.into()).await;
            let opened = cpu::CpuMark::now(&pids);
            tokio::time::sleep_until(until.into()).await;
            let mut used = opened.used_until(&cpu::CpuMark::now(&pids));
            let me = used.iter().position(|c| c.pid == std::process::id()).map(|i| used.remove(i).cpu_s);
            (used, me)
        }))
    }

    async fn finish(self) -> (Vec<cpu::CpuUse>, Option<f64>) {
        self.0.await.unwrap_or_default()
    }
}

/// Runs `cfg.workload` against `target` and returns its record.
pub async fn run<T: Target>(target: Arc<T>, cfg: &LoadConfig) -> Result<RunRecord, BenchError> {
    cfg.validate()?;
    let keys = KeyGen::new(&cfg.key_prefix, cfg.key_size, cfg.key_space)?;
    let started_at = unix_now();
    let sampler = rss::RssSampler::start(cfg.pids.clone());
    let label = format!("{} {} {} clients", target.system(), cfg.workload.name(), cfg.clients);
    let preloaded = if cfg.preload {
        if cfg.progress {
            eprintln!("{label}: preloading {} keys", cfg.key_space);
        }
        Some(preload(&target, cfg, &keys).await?)
    } else {
        None
    };

    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let measure_from_unix_ms = unix_now_ms() + cfg.warmup.as_millis() as u64;
    let plan = Arc::new(Plan {
        workload: cfg.workload,
        keys,
        read_ratio: cfg.read_ratio,
        max_staleness: cfg.max_staleness,
        txn_vshards: cfg.txn_vshards,
        value_size: cfg.value_size,
        op_timeout: cfg.op_timeout,
        measure_from,
        end: measure_from + cfg.duration,
        samples: cfg.timeline.is_some(),
    });
    let live = Arc::new(Live::default());
    let cpu_window = CpuWindow::start(cfg.pids.clone(), measure_from, measure_from + cfg.duration);
    let progress =
        cfg.progress.then(|| ProgressLine::start(label, live.clone(), start, cfg.warmup, cfg.warmup + cfg.duration));
    let clients: Vec<_> = (0..cfg.clients)
        .map(|id| tokio::spawn(client_loop(target.clone(), id, plan.clone(), live.clone(), cfg.seed)))
        .collect();
    let mut hist = new_histogram();
    let (mut ops, mut errors, mut misses, mut retries) = (0, 0, 0, 0);
    let (mut error_samples, mut samples) = (Vec::new(), Vec::new());
    for c in clients {
        let mut s = c.await.map_err(|e| BenchError::Config(format!("a client task failed: {e}")))?;
        samples.append(&mut s.samples);
        hist.add(&s.hist).expect("histograms share their bounds");
        ops += s.ops;
        errors += s.errors;
        misses += s.misses;
        retries += s.retries;
        for e in s.error_samples {
            if error_samples.len() < ERROR_SAMPLES && !error_samples.contains(&e) {
                error_samples.push(e);
            }
        }
    }
    if let Some(p) = progress {
        p.finish().await;
    }
    let (cpu, bench_cpu_s) = cpu_window.finish().await;
    let duration_s = cfg.duration.as_secs_f64();
    Ok(RunRecord {
        system: target.system().to_string(),
        workload: cfg.workload.name().to_string(),
        clients: cfg.clients,
        connections: target.connections(),
        endpoints: target.endpoints(),
        duration_s,
        warmup_s: cfg.warmup.as_secs_f64(),
        key_space: cfg.key_space,
        key_size: cfg.key_size,
        value_size: cfg.value_size,
        read_ratio: (cfg.workload == Workload::Mixed).then_some(cfg.read_ratio),
        max_staleness_ms: (cfg.workload == Workload::GetFollower).then_some(cfg.max_staleness.as_millis() as u64),
        batch: None,
        ops,
        errors,
        misses,
        retries,
        ops_per_sec: ops as f64 / duration_s,
        latency: Latency::of(&hist),
        preload: preloaded,
        rss: sampler.finish(),
        cpu,
        bench_cpu_s,
        error_samples,
        started_at,
        timeline: cfg.timeline.map(|slice| timeline::Timeline::of(samples, slice, measure_from_unix_ms)),
    })
}

/// Prints a progress line: rewritten in place on a terminal, one line per
/// update otherwise.
pub(crate) fn progress_line(tty: bool, line: &str) {
    if tty {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Clears the in-place progress line on a terminal.
pub(crate) fn clear_progress(tty: bool) {
    if tty {
        eprint!("\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_configured_size() {
        let g = KeyGen::new(KEY_PREFIX, 16, 10_000).unwrap();
        assert_eq!(g.key(42), b"/k/0000000000042".to_vec());
        assert_eq!(g.key(42).len(), 16);
        assert!(KeyGen::new(KEY_PREFIX, 5, 10_000).is_err(), "3 + 4 digits do not fit in 5 bytes");
    }

    #[test]
    fn every_append_run_starts_on_keys_of_its_own() {
        let runs: Vec<LoadConfig> = (0..20).map(|_| LoadConfig::new(Workload::Append)).collect();
        for c in &runs {
            assert!(c.validate().is_ok());
            assert!(c.key_prefix.starts_with(APPEND_PREFIX) && c.key_prefix.ends_with('/'), "{}", c.key_prefix);
            let key = KeyGen::new(&c.key_prefix, c.key_size, c.key_space).unwrap().key(42);
            assert_eq!(key.len(), 16, "{}", String::from_utf8_lossy(&key));
        }
        let mut tags: Vec<&str> = runs.iter().map(|c| c.key_prefix.as_str()).collect();
        tags.sort();
        tags.dedup();
        assert!(tags.len() > 1, "20 runs drew one tag: {tags:?}");
        assert_eq!(LoadConfig::new(Workload::Put).key_prefix, KEY_PREFIX);
    }

    #[test]
    fn txn_keys_are_distinct_and_spread_over_vshards() {
        let g = KeyGen::new(KEY_PREFIX, 16, 10_000).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let keys = g.distinct(&mut rng, 4, 8);
            let mut vshards: Vec<u32> = keys.iter().map(|k| crate::tree::vshard_of(k, 8)).collect();
            vshards.sort();
            vshards.dedup();
            assert_eq!(vshards.len(), 4, "{keys:?}");
        }
        // A key space of 4 keys still gives 4 distinct keys.
        let tiny = KeyGen::new(KEY_PREFIX, 16, 4).unwrap();
        let mut keys = tiny.distinct(&mut rng, 4, 8);
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn latency_of_a_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert!(l.is_ordered(), "{l:?}");
        assert!((495..=505).contains(&l.p50_us), "{l:?}");
        assert_eq!(l.max_us, 1000);
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn settings_are_validated() {
        let mut c = LoadConfig::new(Workload::Mixed);
        assert!(c.validate().is_ok());
        c.read_ratio = 1.5;
        assert!(c.validate().is_err());
        let mut c = LoadConfig::new(Workload::Put);
        c.clients = 0;
        assert!(c.validate().is_err());
        assert_eq!(Workload::parse("txn"), Some(Workload::Txn));
        assert!(LoadConfig::new(Workload::Get).preload && !LoadConfig::new(Workload::Put).preload);
    }
}
