//! `arbor-jepsen run`: drives a real Arbor cluster under faults, records a history, checks
//! it and writes a report.
//!
//! A run, in phases:
//! 1. **Setup**: choose the network mode (`--net`: network namespaces when root, else — or
//!    with `--net proxy` — loopback with a TCP proxy per node that faults each directed link,
//!    [`proxy`]); clean leftovers of a crashed run; build the test network ([`net`]); start N
//!    `arbor server`s in it ([`cluster`]; with `--unsafe-clock-admin` when the clock nemesis
//!    is on); wait until every node answers and group 1 has a leader; initialise the
//!    workload's data (bank accounts).
//! 2. **Main phase** (`--time`): `concurrency` workers run the workload's ops
//!    ([`workload`], executed by [`client`]) and record them ([`recorder`]); a worker whose
//!    op ended `info` retires its process and continues as process `p + lanes` (`lanes` =
//!    `concurrency`, plus the watchers for the watch workload), with a fresh client.
//!    Meanwhile the nemesis starts and stops faults every `--nemesis-interval`
//!    ([`nemesis`] decides, [`faults`] applies, [`admin`] makes the cluster calls), recording
//!    each as a nemesis `info` event. The watch workload also runs its watchers
//!    ([`watchers`]) from the start, through the heal and recovery.
//! 3. **Heal** every fault (a removed node back in every group), wait `--recovery`, wait for
//!    the cluster, run the workload's final reads (watch: then let every watcher reach the
//!    final read's stamp).
//! 4. **Check and report**: stop the servers, tear the network down, write `history.jsonl`,
//!    check it (`cas-register` per key, `list-append` strict-serializable, `set`, `bank`,
//!    `watch`), write `results.json` and `report.html` ([`report`]). The exit code is the
//!    verdict's.
//!
//! Every loop is bounded in time. Servers and network are owned by one [`Testbed`] whose
//! drop kills the servers first, then removes the namespaces and the bridge, so a failed or
//! interrupted run cleans up too (and the next run cleans whatever a killed one left).

pub mod admin;
pub mod client;
pub mod cluster;
pub mod faults;
pub mod nemesis;
pub mod net;
pub mod proxy;
pub mod recorder;
pub mod report;
pub mod watchers;
pub mod workload;

use crate::history::{self, OpType};
use crate::verdict::Validity;
use anyhow::{bail, Context, Result};
use arbor::client::{Client, ClientOptions};
use cluster::Cluster;
use nemesis::FaultKind;
use net::{NetMode, Network};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recorder::{Counts, Recorder};
use serde_json::{json, Value as Json};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use workload::{Generator, Op, WorkloadKind, WorkloadParams};

/// Everything a run needs (the CLI fills it; see `arbor-jepsen run --help`).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What the clients do.
    pub workload: WorkloadKind,
    /// Enabled faults.
    pub nemeses: Vec<FaultKind>,
    /// Servers.
    pub nodes: usize,
    /// Length of the main phase.
    pub time: Duration,
    /// Time between nemesis decisions.
    pub nemesis_interval: Duration,
    /// Wait after healing, before the final reads.
    pub recovery: Duration,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Target total ops/s (0 = as fast as possible).
    pub rate: f64,
    /// Per-operation client timeout.
    pub op_timeout: Duration,
    /// RNG seed (generators and faults).
    pub seed: u64,
    /// The `arbor` binary.
    pub arbor_bin: PathBuf,
    /// Where run folders go.
    pub store: PathBuf,
    /// Extra `arbor server` flags.
    pub server_flags: Vec<String>,
    /// Namespaces, proxies, or whichever works.
    pub net: NetMode,
    /// The test /24 (namespaces).
    pub subnet: String,
    /// `auto`, `iptables` or `route` (namespaces); `auto`, `proxy-stall` or `proxy-reset`
    /// (proxies).
    pub partition_backend: String,
    /// Workload knobs.
    pub params: WorkloadParams,
    /// Keep the servers' data dirs even when the run is valid.
    pub keep_data: bool,
    /// Checker time budget.
    pub check_time_limit: Duration,
    /// Print a progress line.
    pub progress: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub dir: PathBuf,
    /// The checker's decision.
    pub validity: Validity,
    /// Client op counts.
    pub counts: Counts,
}

/// The servers and their network. Field order is drop order: servers die before their
/// namespaces (or proxies) go.
pub struct Testbed {
    /// Server processes.
    pub cluster: Mutex<Cluster>,
    /// Namespaces and bridge, or proxies; partitions.
    pub network: Network,
    /// Client addresses of the nodes.
    pub endpoints: Vec<String>,
}

impl Testbed {
    /// The cluster, locked (never held across an await).
    pub fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared by the workers.
struct Ctx {
    gen: Mutex<Box<dyn Generator>>,
    rec: Arc<Recorder>,
    endpoints: Vec<String>,
    concurrency: usize,
    /// Timeline lanes: the workers, then the watchers. A retired process `p` goes on as
    /// `p + lanes`, so it keeps its lane.
    lanes: usize,
    op_timeout: Duration,
    rate: f64,
}

impl Ctx {
    /// A fresh client for `process`, preferring node `process mod n` (its home node).
    fn client(&self, process: u64) -> Result<Client> {
        let n = self.endpoints.len();
        let first = process as usize % n;
        let rotated: Vec<&String> = self.endpoints[first..].iter().chain(&self.endpoints[..first]).collect();
        let options = ClientOptions {
            timeout: self.op_timeout,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            cluster_id: None,
        };
        Ok(Client::with_options(rotated, options)?)
    }

    /// Runs `op` for `process`. Writes use the process's client, which follows the leader
    /// and stays with it. Read-only ops use a client made for this op, so they go to the
    /// process's home node first, as Jepsen's node-bound clients do: a node that serves reads
    /// it should not (stale reads) is then hit by reads, not only the current leader.
    async fn execute(&self, process: u64, client: &Client, op: &Op) -> Result<recorder::Outcome> {
        if op.is_read_only() {
            let home = self.client(process)?;
            return Ok(client::execute(&home, op, self.op_timeout).await);
        }
        Ok(client::execute(client, op, self.op_timeout).await)
    }

    fn next_op(&self, worker: usize) -> Op {
        self.gen.lock().unwrap_or_else(|e| e.into_inner()).next(worker)
    }
}

/// `YYYYMMDDTHHMMSS` (UTC) of a Unix time.
pub fn timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// How long a run waits for another one to finish before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(900);

/// One run at a time on a machine: the namespaces' names are fixed, and two runs would
/// skew each other's timings.
struct RunLock(#[allow(dead_code)] std::fs::File);

impl RunLock {
    /// Takes the machine-wide lock, waiting (at most [`LOCK_WAIT`]) for a running run.
    async fn acquire() -> Result<RunLock> {
        let path = std::env::temp_dir().join("arbor-jepsen.lock");
        // flock works on a read-only descriptor too (the file may be another user's).
        let f = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::fs::File::open(&path)?,
            r => r.with_context(|| format!("opening {}", path.display()))?,
        };
        let started = Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own; the lock is released with the file.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(RunLock(f));
            }
            if started.elapsed() >= LOCK_WAIT {
                bail!("another arbor-jepsen run held {} for {LOCK_WAIT:?} (one run at a time)", path.display());
            }
            if started.elapsed() < Duration::from_secs(1) {
                eprintln!("arbor-jepsen: waiting for another run to finish (lock {})", path.display());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Timeline lanes of a run: one per worker, plus one per watcher (watch workload).
pub fn lanes(opts: &RunOptions) -> usize {
    opts.concurrency + if opts.workload == WorkloadKind::Watch { watchers::count(opts.nodes) } else { 0 }
}

/// The server flags of a run: the user's, plus `--unsafe-clock-admin` for the clock nemesis.
pub fn server_flags(opts: &RunOptions) -> Vec<String> {
    let mut flags = opts.server_flags.clone();
    let admin = "--unsafe-clock-admin";
    if opts.nemeses.contains(&FaultKind::Clock) && !flags.iter().any(|f| f == admin) {
        flags.push(admin.into());
    }
    flags
}

/// Runs a whole test; see the module docs.
pub async fn run(mut opts: RunOptions) -> Result<RunSummary> {
    if !opts.arbor_bin.is_file() {
        bail!("the arbor server binary {} does not exist (cargo build --bin arbor)", opts.arbor_bin.display());
    }
    if opts.concurrency == 0 || opts.nodes == 0 {
        bail!("--nodes and --concurrency must be positive");
    }
    let requested = opts.nemeses.clone();
    let (kinds, notes) = nemesis::feasible(&requested, opts.nodes);
    for note in &notes {
        eprintln!("arbor-jepsen: {note}");
    }
    if kinds.is_empty() && !requested.is_empty() {
        bail!("no requested fault can run on {} nodes", opts.nodes);
    }
    opts.nemeses = kinds;
    opts.server_flags = server_flags(&opts);
    let namespaces = opts.net.use_namespaces()?;
    let _lock = RunLock::acquire().await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let dir = opts.store.join(format!("{}-{}", opts.workload.name(), timestamp(now.as_secs())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    let started = Instant::now();
    let network = Network::setup(namespaces, &opts.subnet, opts.nodes, &opts.partition_backend)?;
    eprintln!(
        "arbor-jepsen: {} with nemesis [{}] on {} nodes, net {} ({} partitions), {} s; run folder {}",
        opts.workload.name(),
        opts.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        opts.nodes,
        network.mode(),
        network.backend(),
        opts.time.as_secs_f64(),
        dir.display()
    );
    let cluster = Cluster::start(network.node_nets(), &opts.arbor_bin, &dir, &opts.server_flags, network.pids())?;
    let endpoints = cluster.endpoints();
    let tb = Arc::new(Testbed { cluster: Mutex::new(cluster), network, endpoints: endpoints.clone() });
    if let Err(e) = cluster::wait_ready(&endpoints, Duration::from_secs(30)).await {
        let crashed = tb.cluster().reap_crashes();
        bail!("{e:#}; exited servers: {crashed:?}; see the logs in {}", dir.display());
    }
    let setup_secs = started.elapsed().as_secs_f64();
    if opts.workload == WorkloadKind::Bank {
        init_bank(&endpoints, &opts.params).await?;
    }

    let rec = Arc::new(Recorder::new());
    let outcome = drive(&opts, &tb, &rec).await;
    let crashes: Vec<String> = {
        let mut c = tb.cluster();
        c.reap_crashes();
        c.crashes.iter().map(|(n, s)| format!("{n} exited on its own: {s}")).collect()
    };
    tb.cluster().stop_all(Duration::from_secs(5));
    let net = tb.network.describe();
    drop(tb);
    // The history is worth keeping even when the run broke off.
    let log = rec.snapshot();
    let text = log.to_jsonl();
    std::fs::write(dir.join("history.jsonl"), &text)?;
    let (drive_secs, finals, heal_problems) =
        outcome.with_context(|| format!("the run broke off; history and logs in {}", dir.display()))?;
    let recorded =
        Recorded { log, text, counts: rec.counts(), crashes, heal_problems, finals, setup_secs, drive_secs, net };
    conclude(&opts, &dir, recorded)
}

/// What a finished run hands to the check.
struct Recorded {
    log: recorder::HistoryLog,
    /// The history as written to `history.jsonl`.
    text: String,
    counts: Counts,
    crashes: Vec<String>,
    /// What the final heal could not restore.
    heal_problems: Vec<String>,
    finals: FinalReads,
    setup_secs: f64,
    drive_secs: f64,
    /// [`Network::describe`].
    net: Json,
}

/// Checks the recorded history and writes `results.json` and `report.html`.
fn conclude(opts: &RunOptions, dir: &Path, recorded: Recorded) -> Result<RunSummary> {
    let Recorded { log, text, counts, crashes, heal_problems, finals, setup_secs, drive_secs, net } = recorded;
    let mode = net["mode"].as_str().unwrap_or("?").to_string();
    let backend = net["partition-backend"].as_str().unwrap_or("?").to_string();
    let check_started = Instant::now();
    let parsed = history::parse(&text, history::Format::Jsonl).context("re-reading the history")?;
    let mut check_opts = crate::CheckOptions { time_limit: Some(opts.check_time_limit), ..Default::default() };
    if opts.workload == WorkloadKind::Bank {
        check_opts.bank_total = Some(opts.params.total);
    }
    let verdict = crate::check(opts.workload.checker(), &parsed, &check_opts).map_err(|e| anyhow::anyhow!(e))?;
    let check_secs = check_started.elapsed().as_secs_f64();
    let nemesis_events = log.events.iter().filter(|e| e.process().is_none()).count();
    let facts: Vec<(String, String)> = vec![
        ("workload".into(), opts.workload.name().into()),
        ("checker".into(), format!("{:?}", opts.workload.checker())),
        ("nemesis".into(), opts.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")),
        ("nodes".into(), opts.nodes.to_string()),
        ("network".into(), mode.clone()),
        ("partition backend".into(), backend.clone()),
        ("server flags".into(), opts.server_flags.join(" ")),
        ("concurrency".into(), opts.concurrency.to_string()),
        ("seed".into(), opts.seed.to_string()),
        ("main phase (s)".into(), format!("{:.1}", opts.time.as_secs_f64())),
        ("setup / drive / check (s)".into(), format!("{setup_secs:.1} / {drive_secs:.1} / {check_secs:.1}")),
        (
            "ops invoked / ok / fail / info".into(),
            format!("{} / {} / {} / {}", counts.invoked, counts.ok, counts.fail, counts.info),
        ),
        ("nemesis events".into(), nemesis_events.to_string()),
    ];
    let harness = harness_verdict(&crashes, &heal_problems, finals);
    let validity = verdict.validity.and(harness.validity);
    let mut verdict_json = verdict.to_json();
    let results = json!({
        "valid?": validity.to_json(),
        "workload": opts.workload.name(),
        "nemesis": opts.nemeses.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "nodes": opts.nodes,
        "net": net,
        "partition-backend": backend,
        "server-flags": opts.server_flags,
        "seed": opts.seed,
        "time-s": opts.time.as_secs_f64(),
        "setup-s": setup_secs,
        "drive-s": drive_secs,
        "check-s": check_secs,
        "ops": {"invoked": counts.invoked, "ok": counts.ok, "fail": counts.fail, "info": counts.info},
        "nemesis-events": nemesis_events,
        "crashes": crashes,
        "harness": harness.to_json(),
        "checker": verdict_json,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)? + "\n")?;
    let meta = report::ReportMeta {
        title: format!(
            "arbor-jepsen {} — {}",
            opts.workload.name(),
            dir.file_name().unwrap_or_default().to_string_lossy()
        ),
        facts,
        concurrency: lanes(opts),
        notes: harness
            .details
            .get("problems")
            .and_then(|p| p.as_array())
            .map_or(Vec::new(), |p| p.iter().filter_map(|x| x.as_str().map(String::from)).collect()),
    };
    // The report's badge is the run's verdict: the checker's and the harness's together.
    verdict_json["valid?"] = validity.to_json();
    std::fs::write(dir.join("report.html"), report::render(&meta, &log.events, &verdict_json))?;
    if validity == Validity::Valid && !opts.keep_data {
        for i in 0..opts.nodes {
            let _ = std::fs::remove_dir_all(dir.join(format!("n{}", i + 1)).join("data"));
        }
    }
    Ok(RunSummary { dir: dir.to_path_buf(), validity, counts })
}

/// Final reads: (completed ok, attempted ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalReads {
    /// Final ops that completed ok.
    pub ok: usize,
    /// Final ops of the workload.
    pub total: usize,
}

/// What the harness itself saw, besides the history: a server that exited on its own is a
/// bug (invalid); a heal that could not restore the cluster (a removed node not a voter
/// again) or a cluster that did not answer every final read after healing did not recover
/// (unknown: the history cannot show what was lost).
pub fn harness_verdict(crashes: &[String], heal_problems: &[String], finals: FinalReads) -> crate::verdict::Verdict {
    let mut problems = Vec::new();
    let mut validity = Validity::Valid;
    if !crashes.is_empty() {
        validity = Validity::Invalid;
        problems.extend(crashes.iter().map(|c| format!("server crash: {c}")));
    }
    if !heal_problems.is_empty() {
        validity = validity.and(Validity::Unknown);
        problems.extend(heal_problems.iter().map(|p| format!("heal: {p}")));
    }
    if finals.ok < finals.total {
        validity = validity.and(Validity::Unknown);
        problems.push(format!(
            "the cluster did not recover after healing: {} of {} final reads succeeded",
            finals.ok, finals.total
        ));
    }
    crate::verdict::Verdict::new(
        "harness",
        validity,
        json!({"problems": problems, "final-reads": {"ok": finals.ok, "total": finals.total}}),
    )
}

/// Puts every account at `total / accounts` (the remainder on account 0), once.
async fn init_bank(endpoints: &[String], p: &WorkloadParams) -> Result<()> {
    let client =
        Client::with_options(endpoints, ClientOptions { timeout: Duration::from_secs(20), ..Default::default() })?;
    let n = p.accounts.max(2);
    let each = p.total / n as i64;
    let mut txn = arbor::client::Txn::new().if_exists(client::account_key(0), false);
    for a in 0..n {
        let balance = if a == 0 { p.total - each * (n as i64 - 1) } else { each };
        txn = txn.then(arbor::client::op::put(client::account_key(a), balance.to_string()));
    }
    client.txn(txn).await.context("initialising the bank accounts")?;
    Ok(())
}

/// Main phase, heal, recovery and final reads; returns the seconds it took, the final
/// reads, and what the heal could not restore.
async fn drive(opts: &RunOptions, tb: &Arc<Testbed>, rec: &Arc<Recorder>) -> Result<(f64, FinalReads, Vec<String>)> {
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        gen: Mutex::new(workload::generator(opts.workload, &opts.params, opts.seed)),
        rec: rec.clone(),
        endpoints: tb.endpoints.clone(),
        concurrency: opts.concurrency,
        lanes: lanes(opts),
        op_timeout: opts.op_timeout,
        rate: opts.rate,
    });
    let deadline = tokio::time::Instant::now() + opts.time;
    let faults_now = Arc::new(Mutex::new(String::new()));
    let phase = Arc::new(Mutex::new("main"));

    let progress = opts.progress.then(|| {
        let (rec, faults_now, phase) = (rec.clone(), faults_now.clone(), phase.clone());
        let total = opts.time.as_secs_f64();
        let net = tb.network.mode();
        AbortOnDrop(tokio::spawn(progress_loop(rec, faults_now, phase, total, net)))
    });

    let watchers = if opts.workload == WorkloadKind::Watch {
        let setup = watchers::Setup {
            endpoints: tb.endpoints.clone(),
            rec: rec.clone(),
            start_after: watchers::start_stamp(&tb.endpoints).await?,
            op_timeout: opts.op_timeout,
            seed: opts.seed,
            late_start: opts.time / 2,
        };
        Some(watchers::Watchers::start(watchers::specs(opts.nodes, opts.concurrency as u64), setup))
    } else {
        None
    };
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        workers.spawn(worker(w, ctx.clone(), deadline, opts.seed));
    }
    // Aborted if this function returns early, so no fault outlives the run.
    let mut nemesis = AbortOnDrop(tokio::spawn(faults::nemesis_loop(
        tb.clone(),
        rec.clone(),
        nemesis::Planner::new(opts.nodes, opts.nemeses.clone(), opts.seed.wrapping_add(1)),
        opts.nemesis_interval,
        deadline,
        faults_now.clone(),
    )));
    let mut last_process = 0u64;
    while let Some(r) = workers.join_next().await {
        let (w, p) = r.context("worker task")??;
        if w == 0 {
            last_process = p;
        }
    }
    let heal = (&mut nemesis.0).await.context("nemesis task");
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "recovery";
    let heal_problems = heal??;
    for p in &heal_problems {
        eprintln!("\narbor-jepsen: warning: {p}");
    }

    tokio::time::sleep(opts.recovery).await;
    let ready = cluster::wait_ready(&tb.endpoints, Duration::from_secs(30)).await;
    if let Err(e) = &ready {
        eprintln!("\narbor-jepsen: warning: after healing, {e:#}; running the final reads anyway");
    }
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "final reads";
    let (finals, final_values) = final_reads(&ctx, last_process).await?;
    if let Some(watchers) = watchers {
        *phase.lock().unwrap_or_else(|e| e.into_inner()) = "watchers catching up";
        let barrier = final_values.last().and_then(|v| v["stamp"].as_u64());
        watchers.finish(barrier).await?;
    }
    if progress.is_some() {
        eprintln!();
    }
    Ok((started.elapsed().as_secs_f64(), finals, heal_problems))
}

/// Aborts a background task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One worker: ops until the deadline; returns (worker, its last process).
async fn worker(w: usize, ctx: Arc<Ctx>, deadline: tokio::time::Instant, seed: u64) -> Result<(usize, u64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut process = w as u64;
    let mut client = ctx.client(process)?;
    // Jepsen's stagger: a random pause of 0..2x the mean gap, so the total rate is `rate`.
    let mean_gap = if ctx.rate > 0.0 { ctx.concurrency as f64 / ctx.rate } else { 0.0 };
    loop {
        if mean_gap > 0.0 {
            let pause = Duration::from_secs_f64(rng.gen_range(0.0..2.0 * mean_gap));
            tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((w, process));
        }
        let op = ctx.next_op(w);
        ctx.rec.invoke(process, &op);
        let outcome = ctx.execute(process, &client, &op).await?;
        ctx.rec.complete(process, &op, &outcome);
        if outcome.kind == OpType::Info {
            process += ctx.lanes as u64;
            client = ctx.client(process)?;
        }
    }
}

/// Final-phase budget: the final reads give up after this long.
const FINAL_PHASE_LIMIT: Duration = Duration::from_secs(60);
/// Attempts per final op.
const FINAL_ATTEMPTS: usize = 5;

/// Runs the generator's final ops (each retried until ok, a few times) as worker 0;
/// returns the counts and the values of the ok ones.
async fn final_reads(ctx: &Ctx, mut process: u64) -> Result<(FinalReads, Vec<Json>)> {
    let ops = ctx.gen.lock().unwrap_or_else(|e| e.into_inner()).final_ops();
    let deadline = Instant::now() + FINAL_PHASE_LIMIT;
    let mut client = ctx.client(process)?;
    let mut finals = FinalReads { ok: 0, total: ops.len() };
    let mut values = Vec::new();
    for op in ops {
        for _ in 0..FINAL_ATTEMPTS {
            if Instant::now() >= deadline {
                eprintln!("\narbor-jepsen: warning: final reads stopped after {FINAL_PHASE_LIMIT:?}");
                return Ok((finals, values));
            }
            ctx.rec.invoke(process, &op);
            let outcome = ctx.execute(process, &client, &op).await?;
            ctx.rec.complete(process, &op, &outcome);
            match outcome.kind {
                OpType::Ok => {
                    finals.ok += 1;
                    values.push(outcome.value);
                    break;
                }
                OpType::Info => {
                    process += ctx.lanes as u64;
                    client = ctx.client(process)?;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok((finals, values))
}

/// Prints `[ 12s/60s] main | net proxy | ops 1234: ok 1200 fail 20 info 14 | faults: ...`
/// once a second (in place on a terminal, every 5 s otherwise).
async fn progress_loop(
    rec: Arc<Recorder>,
    faults_now: Arc<Mutex<String>>,
    phase: Arc<Mutex<&'static str>>,
    total: f64,
    net: &'static str,
) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let c = rec.counts();
        let faults = faults_now.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let phase = *phase.lock().unwrap_or_else(|e| e.into_inner());
        let line = format!(
            "[{:>5.0}s/{total:.0}s] {phase} | net {net} | ops {}: ok {} fail {} info {} | faults: {}",
            started.elapsed().as_secs_f64(),
            c.invoked,
            c.ok,
            c.fail,
            c.info,
            if faults.is_empty() { "none" } else { &faults }
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if tick % 5 == 0 {
            eprintln!("{line}");
        }
    }
}

/// The `arbor` binary next to `exe` (the same target dir), if it exists.
pub fn sibling_arbor(exe: &Path) -> Option<PathBuf> {
    let p = exe.parent()?.join("arbor");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_are_invalid_and_no_recovery_is_unknown() {
        let all = FinalReads { ok: 3, total: 3 };
        assert_eq!(harness_verdict(&[], &[], all).validity, Validity::Valid);
        let crashed = harness_verdict(&["n2 exited on its own: exit status: 1".into()], &[], all);
        assert_eq!(crashed.validity, Validity::Invalid);
        assert!(crashed.to_json()["problems"][0].as_str().unwrap().contains("n2"));
        let stuck = harness_verdict(&[], &[], FinalReads { ok: 1, total: 3 });
        assert_eq!(stuck.validity, Validity::Unknown);
        assert!(stuck.to_json()["problems"][0].as_str().unwrap().contains("1 of 3 final reads"));
        let out = harness_verdict(&[], &["not a voter: n4 in group 1".into()], all);
        assert_eq!(out.validity, Validity::Unknown);
        assert!(out.to_json()["problems"][0].as_str().unwrap().starts_with("heal: not a voter"));
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "19700101T000000");
        assert_eq!(timestamp(951_782_400), "20000229T000000");
        assert_eq!(timestamp(1_700_000_000), "20231114T221320");
    }
}
