//! `arbor-bench`: the same workloads against Arbor or etcd, a storage-level
//! reference, and the report of a whole comparison (see docs/BENCHMARKS.md
//! and `scripts/bench-vs-etcd.sh`).
//!
//! ```text
//! arbor-bench put --arbor 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --clients 64 --duration 10
//! arbor-bench get --etcd 127.0.0.1:2379 --clients 16 --json-out get-etcd.json
//! arbor-bench storage --writers 16 --duration 10
//! arbor-bench apply --workload txn --per-epoch 25
//! arbor-bench report bench-results/20250101-120000
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arbor::bench::apply::{run_apply, ApplyConfig, ApplyRecord};
use arbor::bench::storage::{run_storage, StorageConfig};
use arbor::bench::{self, rss, ArborTarget, LoadConfig, RunRecord, Workload};
use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "arbor-bench", version, about = "Benchmarks Arbor side by side with etcd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Puts of random keys.
    Put(LoadArgs),
    /// Linearizable gets of random keys (the key space is preloaded first).
    Get(LoadArgs),
    /// Gets of random keys from every replica: connection i reads from
    /// endpoint i mod n, a bounded-staleness read (--max-staleness-ms);
    /// etcd: serializable gets, which have no bound. Preloads like get.
    GetFollower(LoadArgs),
    /// Transactions of 4 compares + 4 puts on keys in 4 distinct vshards.
    Txn(LoadArgs),
    /// Gets (--read-ratio of the operations) and puts.
    Mixed(LoadArgs),
    /// Appends to random keys' values (etcd: a get + compare-and-swap loop).
    Append(LoadArgs),
    /// The storage reference: synced RocksDB write batches in a temp dir.
    Storage(StorageArgs),
    /// The apply reference: one replica's state machine applying epochs of
    /// put or txn transactions to RocksDB in a temp dir, in one process.
    Apply(ApplyArgs),
    /// Collects DIR/runs/*.json into results.json, results.md and plot.svg.
    Report {
        /// A results directory of scripts/bench-vs-etcd.sh.
        dir: PathBuf,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["arbor", "etcd"])))]
struct LoadArgs {
    /// An Arbor cluster: its nodes' addresses.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    arbor: Option<Vec<String>>,
    /// An etcd cluster: its members' client addresses.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    etcd: Option<Vec<String>>,
    /// Concurrent logical clients (each one operation at a time).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections the clients share (default: min(clients, 8)).
    #[arg(long)]
    connections: Option<usize>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// mixed: the fraction of gets.
    #[arg(long, default_value_t = 0.8)]
    read_ratio: f64,
    /// get-follower: how stale (in ms) a replica's answer may be; a
    /// replica further behind waits to catch up.
    #[arg(long, default_value_t = bench::DEFAULT_MAX_STALENESS.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_staleness_ms: u64,
    /// txn: pick keys in distinct vshards of this many (the server's
    /// `vshards`); 0 = distinct keys only.
    #[arg(long, default_value_t = 8)]
    txn_vshards: u32,
    /// Skip writing the key space before get / get-follower / mixed.
    #[arg(long)]
    no_preload: bool,
    /// Seconds after which an operation counts as an error.
    #[arg(long, default_value_t = 10.0)]
    op_timeout: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Server PIDs whose RSS to sample.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Sample the PIDs in DIR/n*/arbor.pid (scripts/cluster.sh's files;
    /// with --arbor and no --pids, $ARBOR_DATA or ./data is tried).
    #[arg(long)]
    pid_dir: Option<PathBuf>,
    /// Write the run's JSON record here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Add to the JSON record the measured window's operations by slices of
    /// this many milliseconds (count, p50, p99, max of each; `timeline`),
    /// to line a latency tail up with the servers' logs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeline_ms: Option<u64>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct StorageArgs {
    /// Threads writing synced batches concurrently.
    #[arg(long, visible_alias = "clients", default_value_t = 1)]
    writers: usize,
    /// Keys per synced write batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Parent of the temporary database (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ApplyArgs {
    /// put or txn.
    #[arg(long, default_value = "put")]
    workload: String,
    /// Transactions per epoch.
    #[arg(long, default_value_t = 25)]
    per_epoch: usize,
    /// Epochs applied per round.
    #[arg(long, default_value_t = 4000)]
    epochs: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Vshards of the state machine (default: the server's, one per core).
    #[arg(long)]
    vshards: Option<u32>,
    /// Memtable size in MiB (default: the server's).
    #[arg(long)]
    write_buffer_mib: Option<u64>,
    /// Parent of the temporary database (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn apply(args: ApplyArgs) -> Result<ApplyRecord> {
    let workload = Workload::parse(&args.workload).with_context(|| format!("unknown workload {:?}", args.workload))?;
    let mut cfg = ApplyConfig {
        workload,
        per_epoch: args.per_epoch,
        epochs: args.epochs,
        rounds: args.rounds,
        key_space: args.key_space,
        value_size: args.value_size,
        ..Default::default()
    };
    if let Some(v) = args.vshards {
        cfg.vshards = v;
    }
    if let Some(mib) = args.write_buffer_mib {
        cfg.storage.write_buffer_bytes = mib << 20;
    }
    Ok(run_apply(&cfg, args.dir.as_deref())?)
}

fn seconds(v: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("--{what} {v} is not a number of seconds"))
}

impl LoadArgs {
    fn config(&self, workload: Workload) -> Result<LoadConfig> {
        let mut c = LoadConfig::new(workload);
        c.clients = self.clients;
        c.duration = seconds(self.duration, "duration")?;
        c.warmup = seconds(self.warmup, "warmup")?;
        c.key_space = self.key_space;
        c.key_size = self.key_size;
        c.value_size = self.value_size;
        c.read_ratio = self.read_ratio;
        c.max_staleness = Duration::from_millis(self.max_staleness_ms);
        c.txn_vshards = self.txn_vshards;
        c.preload = workload.reads() && !self.no_preload;
        c.op_timeout = seconds(self.op_timeout, "op-timeout")?;
        c.seed = self.seed;
        c.progress = !self.quiet;
        c.pids = self.pids()?;
        c.timeline = self.timeline_ms.map(Duration::from_millis);
        c.validate()?;
        Ok(c)
    }

    fn connections(&self) -> usize {
        self.connections.unwrap_or(self.clients.min(8)).max(1)
    }

    fn pids(&self) -> Result<Vec<u32>> {
        if !self.pids.is_empty() {
            return Ok(self.pids.clone());
        }
        if let Some(dir) = &self.pid_dir {
            let pids = rss::pids_in(dir);
            if pids.is_empty() {
                bail!("no running process in {}/n*/arbor.pid", dir.display());
            }
            return Ok(pids);
        }
        if self.arbor.is_some() {
            let dir = std::env::var_os("ARBOR_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"));
            return Ok(rss::pids_in(&dir));
        }
        Ok(Vec::new())
    }
}

async fn run_load(workload: Workload, args: LoadArgs) -> Result<RunRecord> {
    let cfg = args.config(workload)?;
    let record = match (&args.arbor, &args.etcd) {
        (Some(eps), None) => {
            let target = ArborTarget::connect(eps, args.connections(), cfg.op_timeout)?;
            bench::run(Arc::new(target), &cfg).await?
        }
        (None, Some(eps)) => run_etcd(eps, args.connections(), &cfg).await?,
        _ => bail!("give exactly one of --arbor and --etcd"),
    };
    if cfg.pids.is_empty() && !args.quiet {
        eprintln!("(no server PIDs: RSS not sampled; use --pids or --pid-dir)");
    }
    Ok(record)
}

#[cfg(feature = "etcd-client")]
async fn run_etcd(endpoints: &[String], connections: usize, cfg: &LoadConfig) -> Result<RunRecord> {
    let target = arbor::bench::etcd::EtcdTarget::connect(endpoints, connections, cfg.op_timeout).await?;
    Ok(bench::run(Arc::new(target), cfg).await?)
}

#[cfg(not(feature = "etcd-client"))]
async fn run_etcd(_: &[String], _: usize, _: &LoadConfig) -> Result<RunRecord> {
    bail!(
        "this arbor-bench was built without etcd support: build it with `--features etcd-client` \
         (needs protoc; scripts/bench-vs-etcd.sh does it)"
    )
}

fn storage(args: StorageArgs) -> Result<RunRecord> {
    let cfg = StorageConfig {
        writers: args.writers,
        batch: args.batch,
        duration: seconds(args.duration, "duration")?,
        warmup: seconds(args.warmup, "warmup")?,
        key_space: args.key_space,
        key_size: args.key_size,
        value_size: args.value_size,
        dir: args.dir,
        progress: !args.quiet,
        seed: 1,
    };
    Ok(run_storage(&cfg)?)
}

fn write_json(record: &impl serde::Serialize, path: &Option<PathBuf>) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(record)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let (workload, args) = match cli.command {
        Command::Put(a) => (Workload::Put, a),
        Command::Get(a) => (Workload::Get, a),
        Command::GetFollower(a) => (Workload::GetFollower, a),
        Command::Txn(a) => (Workload::Txn, a),
        Command::Mixed(a) => (Workload::Mixed, a),
        Command::Append(a) => (Workload::Append, a),
        Command::Storage(a) => {
            let out = a.json_out.clone();
            let record = tokio::task::spawn_blocking(move || storage(a)).await??;
            print!("{}", record.summary());
            return write_json(&record, &out);
        }
        Command::Apply(a) => {
            let out = a.json_out.clone();
            let record = tokio::task::spawn_blocking(move || apply(a)).await??;
            for (i, r) in record.rounds.iter().enumerate() {
                println!(
                    "apply {} round {}: {} transactions in {:.2} s ({:.2} s of CPU), {:.1} µs of CPU per transaction, {:.0} per epoch of {}",
                    record.workload,
                    i + 1,
                    r.txns,
                    r.seconds,
                    r.cpu_seconds,
                    r.us_per_txn,
                    r.us_per_epoch,
                    record.per_epoch
                );
            }
            println!("best: {:.1} µs per transaction", record.best_us_per_txn);
            return write_json(&record, &out);
        }
        Command::Report { dir } => {
            let md = bench::report::write_report(&dir).with_context(|| format!("report of {}", dir.display()))?;
            print!("{md}");
            eprintln!("wrote {}/results.json, results.md and plot.svg", dir.display());
            return Ok(());
        }
    };
    let out = args.json_out.clone();
    let record = run_load(workload, args).await?;
    print!("{}", record.summary());
    write_json(&record, &out)
}
