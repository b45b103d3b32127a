//! `arbor-jepsen`: command-line front end of the history checkers.
//!
//! `arbor-jepsen check --model MODEL [options] FILE` prints a JSON verdict on stdout and
//! exits 0 (valid), 1 (invalid), 2 (unknown) or 3 (usage or input error).
//!
//! `arbor-jepsen run --workload W --nemesis N [options]` runs a real cluster under faults
//! (see `arbor_jepsen::run`), writes a run folder and exits the same way (3 = the run could
//! not be carried out: no `arbor` binary, `--net netns` without root, the cluster never
//! became ready...).

use anyhow::{anyhow, bail, Context, Result};
use arbor_jepsen::history::{self, Format};
use arbor_jepsen::{check, elle::ElleOptions, run, CheckOptions, Workload};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "arbor-jepsen", version, about = "Jepsen-style history checkers for Arbor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a history file and print a JSON verdict.
    Check(CheckArgs),
    /// Run a workload against a real cluster under faults, check it, write a report.
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// register, list-append, set, bank or watch.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults, comma separated: partition, kill, pause, clock, member, leader, amnesia, all,
    /// none. `all` = partition,kill,pause,clock,member,leader; member needs --nodes 4 or more
    /// (it never leaves fewer than 3 voters) and is left out of `all` below that. amnesia
    /// (not in `all`) isolates a minority, kills -9 the rest together, restarts, heals: with
    /// --server-flag=--unsafe-volatile-writes it loses acknowledged writes.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Number of arbor servers.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Length of the main phase (workload + faults), in seconds.
    #[arg(long, default_value_t = 60.0)]
    time: f64,
    /// Seconds between nemesis decisions (start or stop a fault).
    #[arg(long = "nemesis-interval", default_value_t = 5.0)]
    nemesis_interval: f64,
    /// Seconds to wait after healing, before the final reads.
    #[arg(long, default_value_t = 10.0)]
    recovery: f64,
    /// Concurrent client workers (default: 2 per node).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Target total operations per second (0 = as fast as possible).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Client timeout per operation, in seconds.
    #[arg(long = "op-timeout", default_value_t = 1.5)]
    op_timeout: f64,
    /// RNG seed (default: random; recorded in results.json).
    #[arg(long)]
    seed: Option<u64>,
    /// The arbor binary (default: `arbor` next to this binary).
    #[arg(long = "arbor-bin")]
    arbor_bin: Option<PathBuf>,
    /// Where run folders are written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/store"))]
    store: PathBuf,
    /// An extra `arbor server` flag, e.g. --server-flag=--unsafe-stale-reads (repeatable).
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,
    /// Network: netns (a namespace per node; root), proxy (loopback, a TCP proxy per node
    /// faulting each directed link; no root needed), auto (netns if possible, else proxy).
    #[arg(long, default_value = "auto")]
    net: String,
    /// The private /24 the test namespaces use (nothing else may use it).
    #[arg(long, default_value = "10.250.77.0/24")]
    subnet: String,
    /// How partitions are made: netns: auto (iptables if installed, else blackhole routes),
    /// iptables or route; proxy: auto (= proxy-stall: traffic held), proxy-stall or
    /// proxy-reset (connections reset).
    #[arg(long = "partition-backend", default_value = "auto")]
    partition_backend: String,
    /// register: workers per key.
    #[arg(long = "threads-per-key", default_value_t = 3)]
    threads_per_key: usize,
    /// register: operations per key.
    #[arg(long = "ops-per-key", default_value_t = 200)]
    ops_per_key: u64,
    /// list-append: active keys; watch: keys written (under /jepsen/watch/).
    #[arg(long = "key-count", default_value_t = 8)]
    key_count: usize,
    /// list-append: appends per key before it is retired.
    #[arg(long = "max-writes-per-key", default_value_t = 32)]
    max_writes_per_key: u64,
    /// bank: accounts.
    #[arg(long, default_value_t = 5)]
    accounts: u32,
    /// bank: total of all balances.
    #[arg(long, default_value_t = 100)]
    total: i64,
    /// Keep the servers' data dirs even when the run is valid.
    #[arg(long = "keep-data")]
    keep_data: bool,
    /// Checker time budget in seconds (then: unknown).
    #[arg(long = "check-time-limit", default_value_t = 300.0)]
    check_time_limit: f64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ModelArg {
    Register,
    CasRegister,
    Kv,
    ListAppend,
    Set,
    Bank,
    Watch,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    Auto,
    Jsonl,
    Edn,
    JepsenLog,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Which checker / model to use.
    #[arg(long, value_enum)]
    model: ModelArg,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// list-append: consistency model(s) to check (comma separated or repeated), e.g.
    /// strict-serializable, serializable, snapshot-isolation, repeatable-read,
    /// read-committed, strong-session-snapshot-isolation. Default: strict-serializable,
    /// unless --anomalies is given alone.
    #[arg(long = "consistency-model", value_delimiter = ',')]
    consistency_models: Vec<String>,
    /// list-append: specific anomalies to search for (e.g. G0,G1,G-single,G2,internal).
    #[arg(long, value_delimiter = ',')]
    anomalies: Vec<String>,
    /// Give up after this many seconds and answer unknown (linearizability, cycle search).
    #[arg(long = "time-limit")]
    time_limit: Option<f64>,
    /// Linearizability: memory budget for the search memo, in MiB.
    #[arg(long = "memory-limit-mb", default_value_t = 2048)]
    memory_limit_mb: usize,
    /// Linearizability: worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// bank: the expected total of all balances (default: the first read's sum).
    #[arg(long)]
    total: Option<i64>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
    /// The history file (`-` for stdin).
    file: PathBuf,
}

fn workload(m: ModelArg) -> Workload {
    match m {
        ModelArg::Register => Workload::Register,
        ModelArg::CasRegister => Workload::CasRegister,
        ModelArg::Kv => Workload::Kv,
        ModelArg::ListAppend => Workload::ListAppend,
        ModelArg::Set => Workload::Set,
        ModelArg::Bank => Workload::Bank,
        ModelArg::Watch => Workload::Watch,
    }
}

fn run(args: CheckArgs) -> Result<i32> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let format = match args.format {
        FormatArg::Auto => history::detect_format(&text),
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Edn => Format::Edn,
        FormatArg::JepsenLog => Format::JepsenLog,
    };
    let history = history::parse(&text, format)
        .with_context(|| format!("parsing {} as {}", args.file.display(), format.name()))?;
    drop(text);
    let time_limit = match args.time_limit {
        Some(s) if !(s.is_finite() && s >= 0.0) => bail!("--time-limit must be a non-negative number of seconds"),
        s => s.map(Duration::from_secs_f64),
    };
    let mut opts = CheckOptions {
        elle: ElleOptions::new(args.consistency_models, args.anomalies),
        bank_total: args.total,
        time_limit,
        ..CheckOptions::default()
    };
    opts.linear.memory_limit = args.memory_limit_mb.saturating_mul(1 << 20);
    opts.linear.threads = args.threads;
    let verdict = check(workload(args.model), &history, &opts).map_err(|e| anyhow!(e))?;
    let mut json = verdict.to_json();
    json["format"] = serde_json::json!(format.name());
    json["file"] = serde_json::json!(args.file.display().to_string());
    let out = if args.pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) }?;
    // A closed pipe (e.g. `| head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(verdict.validity.exit_code())
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("--{name} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn run_options(a: RunArgs) -> Result<run::RunOptions> {
    let workload = run::workload::WorkloadKind::parse(&a.workload)
        .ok_or_else(|| anyhow!("unknown --workload {:?} (register, list-append, set, bank, watch)", a.workload))?;
    let nemeses = run::nemesis::parse_spec(&a.nemesis).map_err(|e| anyhow!(e))?;
    let arbor_bin = match a.arbor_bin {
        Some(p) => p,
        None => std::env::current_exe().ok().and_then(|exe| run::sibling_arbor(&exe)).ok_or_else(|| {
            anyhow!("no `arbor` binary next to arbor-jepsen: build it (cargo build --bin arbor) or pass --arbor-bin")
        })?,
    };
    Ok(run::RunOptions {
        workload,
        nemeses,
        nodes: a.nodes,
        time: seconds("time", a.time)?,
        nemesis_interval: seconds("nemesis-interval", a.nemesis_interval)?.max(Duration::from_millis(100)),
        recovery: seconds("recovery", a.recovery)?,
        concurrency: a.concurrency.unwrap_or(2 * a.nodes),
        rate: a.rate.max(0.0),
        op_timeout: seconds("op-timeout", a.op_timeout)?.max(Duration::from_millis(50)),
        seed: a.seed.unwrap_or_else(rand::random),
        arbor_bin,
        store: a.store,
        server_flags: a.server_flags,
        net: run::net::NetMode::parse(&a.net)?,
        subnet: a.subnet,
        partition_backend: a.partition_backend,
        params: run::workload::WorkloadParams {
            threads_per_key: a.threads_per_key,
            ops_per_key: a.ops_per_key,
            key_count: a.key_count,
            max_writes_per_key: a.max_writes_per_key,
            accounts: a.accounts,
            total: a.total,
            ..Default::default()
        },
        keep_data: a.keep_data,
        check_time_limit: seconds("check-time-limit", a.check_time_limit)?,
        progress: !a.quiet,
    })
}

fn run_cluster(args: RunArgs) -> Result<i32> {
    let opts = run_options(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(async {
        tokio::select! {
            r = run::run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; servers stopped and test network removed")),
        }
    });
    // Dropping the runtime drops every task, and with them the testbed (servers, network).
    drop(runtime);
    let summary = summary?;
    let c = summary.counts;
    println!(
        "{}: {} ({} ops: {} ok, {} fail, {} info); report: {}",
        match summary.validity {
            arbor_jepsen::verdict::Validity::Valid => "VALID",
            arbor_jepsen::verdict::Validity::Invalid => "INVALID",
            arbor_jepsen::verdict::Validity::Unknown => "UNKNOWN",
        },
        summary.dir.display(),
        c.invoked,
        c.ok,
        c.fail,
        c.info,
        summary.dir.join("report.html").display()
    );
    Ok(summary.validity.exit_code())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Check(args) => run(args),
        Command::Run(args) => run_cluster(*args),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("arbor-jepsen: error: {e:#}");
            ExitCode::from(3)
        }
    }
}
