//! `arbor`: the server and the command-line client.
//!
//! ```text
//! arbor server --node-id 1 --listen 127.0.0.1:7001 --data-dir data/n1 \
//!     --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! arbor put /users/alice '{"age":30}'
//! arbor get /users/alice
//! arbor txn --if '/users/alice version = 1' --then 'put /users/bob {}' --else 'get /users/alice'
//! arbor cluster status
//! arbor cluster transfer-leader 1 2
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arbor::client::{op, pb, read, Client, ClientOptions, Txn, WatchTarget};
use arbor::config::Config;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "arbor", version, about = "Arbor: a replicated, deterministically sequenced state tree")]
struct Cli {
    /// Nodes to talk to (any node works; the client follows the leader).
    #[arg(
        long,
        global = true,
        env = "ARBOR_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    /// Expected cluster id (a node of another cluster refuses requests).
    #[arg(long, global = true, env = "ARBOR_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Print responses as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Per-command timeout in seconds, retries included.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Server(ServerArgs),
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Also print the value the put replaced.
        #[arg(long)]
        prev: bool,
    },
    /// Read a key.
    Get {
        key: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List every key under a prefix.
    Scan {
        prefix: String,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long)]
        keys_only: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List the immediate children of a path, like `ls`.
    Ls {
        path: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Print changes to a key or under a prefix as they commit (one line per
    /// change: stamp, PUT/DELETE, key, version, value), until interrupted.
    Watch {
        /// A key, or a prefix with --prefix.
        target: String,
        #[arg(long)]
        prefix: bool,
        /// Start after this HLC stamp (replaying retained history) instead
        /// of now, e.g. the last stamp a previous watch printed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Also print progress notifications (`# progress STAMP`).
        #[arg(long)]
        progress: bool,
    },
    /// Delete a key.
    Delete { key: String },
    /// Delete every key under a prefix.
    DeletePrefix { prefix: String },
    /// Add to a signed 64-bit counter.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        delta: i64,
    },
    /// Append bytes to a value.
    Append { key: String, value: String },
    /// A transaction: compares, then ops if they all hold, else other ops.
    ///
    /// Compares: 'KEY value OP VALUE', 'KEY version OP N' (OP is = != < >),
    /// 'KEY exists', 'KEY missing'. Ops: 'get KEY', 'put KEY VALUE',
    /// 'delete KEY', 'scan PREFIX', 'incr KEY N', 'append KEY VALUE'.
    /// Or --file with JSON: {"if": [...], "then": [...], "else": [...]}
    /// holding the same strings.
    Txn {
        #[arg(long = "if")]
        compares: Vec<String>,
        #[arg(long = "then")]
        success: Vec<String>,
        #[arg(long = "else")]
        failure: Vec<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run the demo workload (puts, gets, a scan, a transaction).
    Demo,
}

#[derive(Args, Clone)]
struct ReadArgs {
    /// `linearizable` (default: the latest state, via the leader),
    /// `snapshot:STAMP` (the state at an HLC stamp, from any node) or
    /// `stale:MS` (this node's state, at most MS milliseconds old).
    #[arg(long, default_value = "linearizable")]
    consistency: String,
}

impl ReadArgs {
    fn options(&self) -> Result<Option<pb::ReadOptions>> {
        let c = self.consistency.trim();
        if c == "linearizable" {
            return Ok(None);
        }
        let parse = |v: &str| v.trim().parse::<u64>().with_context(|| format!("bad number in --consistency {c:?}"));
        if let Some(stamp) = c.strip_prefix("snapshot:") {
            return Ok(Some(read::snapshot_at(parse(stamp)?)));
        }
        if let Some(ms) = c.strip_prefix("stale:") {
            return Ok(Some(read::bounded_staleness(parse(ms)?)));
        }
        bail!("--consistency must be linearizable, snapshot:STAMP or stale:MS, not {c:?}")
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes, groups, leaders, applied index and epoch, from every endpoint.
    Status,
    /// The cluster's members.
    Members,
    /// Add a node (started with `arbor server --join`) to every group.
    AddNode { id: u64, addr: String },
    /// Remove a node from every group (refused if a group would lose its
    /// quorum, unless --force).
    RemoveNode {
        id: u64,
        #[arg(long)]
        force: bool,
    },
    /// Move a group's leadership to one of its voters (the group's leader
    /// waits until the node has its whole log, then lets it take over).
    TransferLeader { group: u64, node: u64 },
}

#[derive(Args)]
struct ServerArgs {
    /// TOML config file (see docs/arbor.example.toml); flags override it.
    #[arg(long, env = "ARBOR_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "ARBOR_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "ARBOR_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "ARBOR_ADVERTISE")]
    advertise: Option<String>,
    #[arg(long, env = "ARBOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Initial members, `id=host:port,...` (this node included).
    #[arg(long, env = "ARBOR_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Split points of the initial ranges, e.g. `/m,/t` for 3 groups.
    #[arg(long, env = "ARBOR_INITIAL_RANGES", value_delimiter = ',')]
    initial_ranges: Option<Vec<String>>,
    /// Executor threads per group (default: the number of cores, at most 8).
    #[arg(long, env = "ARBOR_VSHARDS")]
    vshards: Option<u32>,
    /// Join an existing cluster (groups wait for `arbor cluster add-node`)
    /// instead of bootstrapping a new one.
    #[arg(long, env = "ARBOR_JOIN")]
    join: bool,
    /// TEST ONLY: serve reads without read-index (breaks linearizability).
    #[arg(long, hide = true)]
    unsafe_stale_reads: bool,
    /// TEST ONLY: write without the WAL (acknowledged writes lost on kill).
    #[arg(long, hide = true)]
    unsafe_volatile_writes: bool,
    /// TEST ONLY: accept SetClockOffset (skews Arbor's clock, not the machine's).
    #[arg(long, hide = true)]
    unsafe_clock_admin: bool,
}

impl ServerArgs {
    fn into_config(self, cluster_id: Option<String>) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.peers {
            c.peers = v;
        }
        if let Some(v) = self.initial_ranges {
            c.initial_ranges = v;
        }
        if let Some(v) = self.vshards {
            c.vshards = v;
        }
        if let Some(v) = cluster_id {
            c.cluster_id = v;
        }
        c.join |= self.join;
        c.unsafe_test_only.stale_reads |= self.unsafe_stale_reads;
        c.unsafe_test_only.volatile_writes |= self.unsafe_volatile_writes;
        c.unsafe_test_only.clock_admin |= self.unsafe_clock_admin;
        c.validate()?;
        Ok(c)
    }
}

async fn run_server(config: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(node = config.node_id, listen = %config.listen, data_dir = %config.data_dir.display(), "starting arbor");
    let node = arbor::server::Node::start(config, Arc::new(arbor::hlc::SystemClock)).await?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
    };
    arbor::server::serve(node, listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_json(kv: &pb::KeyValue) -> serde_json::Value {
    serde_json::json!({
        "key": text(&kv.key), "value": text(&kv.value), "version": kv.version,
        "create_stamp": kv.create_stamp, "mod_stamp": kv.mod_stamp,
    })
}

fn print_get(key: &str, kv: Option<pb::KeyValue>, read_stamp: Option<u64>, json: bool) {
    match kv {
        Some(kv) if json => {
            let mut v = kv_json(&kv);
            if let Some(stamp) = read_stamp {
                v["read_stamp"] = serde_json::json!(stamp);
            }
            println!("{v}")
        }
        Some(kv) => println!("{}", text(&kv.value)),
        None => {
            eprintln!("{key}: not found");
            std::process::exit(1);
        }
    }
}

fn print_range(r: &pb::RangeResponse, json: bool) {
    if json {
        let v = serde_json::json!({
            "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            "common_prefixes": r.common_prefixes.iter().map(|p| text(p)).collect::<Vec<_>>(),
            "more": r.more,
        });
        println!("{v}");
        return;
    }
    for p in &r.common_prefixes {
        println!("{}", text(p));
    }
    for kv in &r.kvs {
        if kv.value.is_empty() {
            println!("{}", text(&kv.key));
        } else {
            println!("{} = {}", text(&kv.key), text(&kv.value));
        }
    }
    if r.more {
        println!("... (more; raise --limit)");
    }
}

/// Parses `KEY value OP VALUE`, `KEY version OP N`, `KEY exists`, `KEY missing`.
fn parse_compare(txn: Txn, s: &str) -> Result<Txn> {
    let parts: Vec<&str> = s.splitn(4, ' ').collect();
    Ok(match parts.as_slice() {
        [key, "exists"] => txn.if_exists(key, true),
        [key, "missing"] => txn.if_exists(key, false),
        [key, "value", op, value] => txn.if_value(key, op, value)?,
        [key, "version", op, n] => {
            txn.if_version(key, op, n.parse().with_context(|| format!("bad version in {s:?}"))?)?
        }
        _ => bail!(
            "cannot parse compare {s:?}: use 'KEY value OP VALUE', 'KEY version OP N', 'KEY exists' or 'KEY missing'"
        ),
    })
}

/// Parses `get KEY`, `put KEY VALUE`, `delete KEY`, `scan PREFIX`, `incr KEY N`, `append KEY VALUE`.
fn parse_op(s: &str) -> Result<pb::Op> {
    let parts: Vec<&str> = s.splitn(3, ' ').collect();
    Ok(match parts.as_slice() {
        ["get", key] => op::get(key),
        ["put", key, value] => op::put(key, value),
        ["delete", key] => op::delete(key),
        ["scan", prefix] => op::scan(prefix, 0),
        ["incr", key] => op::increment(key, 1),
        ["incr", key, n] => op::increment(key, n.parse().with_context(|| format!("bad delta in {s:?}"))?),
        ["append", key, value] => op::append(key, value),
        _ => bail!("cannot parse op {s:?}: use 'get KEY', 'put KEY VALUE', 'delete KEY', 'scan PREFIX', 'incr KEY N' or 'append KEY VALUE'"),
    })
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TxnFile {
    #[serde(default, rename = "if")]
    compares: Vec<String>,
    #[serde(default, rename = "then")]
    success: Vec<String>,
    #[serde(default, rename = "else")]
    failure: Vec<String>,
}

fn build_txn(compares: &[String], success: &[String], failure: &[String]) -> Result<Txn> {
    let mut txn = Txn::new();
    for c in compares {
        txn = parse_compare(txn, c)?;
    }
    for o in success {
        txn = txn.then(parse_op(o)?);
    }
    for o in failure {
        txn = txn.otherwise(parse_op(o)?);
    }
    Ok(txn)
}

fn describe_result(r: &pb::OpResult) -> String {
    use pb::op_result::Result as R;
    match &r.result {
        Some(R::Get(g)) => match &g.kv {
            Some(kv) => format!("get {} = {} (version {})", text(&kv.key), text(&kv.value), kv.version),
            None => "get: not found".to_string(),
        },
        Some(R::Range(rr)) => format!("scan: {} keys", rr.kvs.len()),
        Some(R::Put(p)) => format!("put: version {}", p.version),
        Some(R::Delete(d)) | Some(R::DeleteRange(d)) => format!("delete: {} deleted", d.deleted),
        Some(R::Increment(i)) => format!("incr: {} (version {})", i.value, i.version),
        Some(R::Append(p)) => format!("append: version {}", p.version),
        Some(R::Error(e)) => format!("error: {e}"),
        None => "(empty)".to_string(),
    }
}

async fn cluster_status(client: &Client, endpoints: &[String], json: bool) -> Result<()> {
    let mut all = Vec::new();
    for ep in endpoints {
        match client.status_of(ep).await {
            Ok(s) => all.push((ep.clone(), Some(s))),
            Err(e) => {
                eprintln!("{ep}: unreachable ({e})");
                all.push((ep.clone(), None));
            }
        }
    }
    if json {
        let v: Vec<_> = all
            .iter()
            .filter_map(|(ep, s)| s.as_ref().map(|s| (ep, s)))
            .map(|(ep, s)| {
                serde_json::json!({
                    "endpoint": ep, "node_id": s.node_id, "cluster_id": s.cluster_id,
                    "groups": s.groups.iter().map(|g| serde_json::json!({
                        "group": g.group_id, "start": text(&g.start), "end": text(&g.end), "leader": g.leader,
                        "term": g.term, "role": g.role, "last_log_index": g.last_log_index,
                        "applied_index": g.applied_index, "epoch": g.epoch, "voters": g.voters,
                        "vshards": g.vshards, "epoch_gaps": g.epoch_gaps,
                        "snapshot_index": g.snapshot_index, "purged_index": g.purged_index,
                        "learners": g.learners, "log_entries": g.log_entries, "log_bytes": g.log_bytes,
                        "vshard_lag": g.vshard_lag, "snapshots_installed": g.snapshots_installed,
                        "eager_appends": g.eager_appends, "eager_answers": g.eager_answers,
                        "commit_notices_answered": g.commit_notices_answered,
                        "closed_stamp": g.closed_stamp, "gc_horizon": g.gc_horizon, "fault": g.fault,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if all.iter().all(|(_, s)| s.is_none()) {
        bail!("no node answered");
    }
    // members: voters, then learners after a "+"; log: entries/bytes on disk;
    // lag: per-vshard executor lag in entries ("0" when all are idle);
    // snaps: snapshots installed from a leader since the node started.
    let header = [
        "node", "endpoint", "group", "range", "role", "term", "leader", "members", "last_log", "applied", "epoch",
        "snapshot", "log", "lag", "snaps",
    ];
    let widths = [5, 21, 5, 14, 9, 5, 6, 10, 8, 8, 10, 8, 14, 8, 5];
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join(" ").trim_end());
    };
    line(&header.map(String::from));
    for (ep, s) in &all {
        let Some(s) = s else { continue };
        for g in &s.groups {
            let end = if g.end.is_empty() { "∞".to_string() } else { text(&g.end) };
            let join = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let members = match g.learners.as_slice() {
                [] => join(&g.voters),
                learners => format!("{}+{}", join(&g.voters), join(learners)),
            };
            let lag = if g.vshard_lag.iter().all(|&l| l == 0) { "0".to_string() } else { join(&g.vshard_lag) };
            line(&[
                s.node_id.to_string(),
                ep.clone(),
                g.group_id.to_string(),
                format!("[{},{})", text(&g.start), end),
                g.role.clone(),
                g.term.to_string(),
                g.leader.to_string(),
                members,
                g.last_log_index.to_string(),
                g.applied_index.to_string(),
                format!("{}.{}", g.epoch >> 32, g.epoch & 0xffff_ffff),
                g.snapshot_index.to_string(),
                format!("{}/{}", g.log_entries, human_bytes(g.log_bytes)),
                lag,
                g.snapshots_installed.to_string(),
            ]);
            if !g.fault.is_empty() {
                println!("  ^ node {} group {} STOPPED: {}", s.node_id, g.group_id, g.fault);
            }
        }
    }
    Ok(())
}

/// `1536` -> `1.5KiB`.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

async fn demo(client: &Client) -> Result<()> {
    println!("== Arbor demo workload");
    for (name, age) in [("alice", 30), ("bob", 25), ("carol", 41)] {
        let key = format!("/demo/users/{name}");
        let value = format!(r#"{{"age":{age}}}"#);
        let r = client.put(&key, &value).await?;
        let h = r.header.unwrap_or_default();
        println!(
            "put  {key} = {value}   (version {}, group {}, log index {}, epoch {}.{})",
            r.version,
            h.group_id,
            h.log_index,
            h.epoch >> 32,
            h.epoch & 0xffff_ffff
        );
    }
    let alice = client.get("/demo/users/alice").await?.context("alice should exist")?;
    println!("get  /demo/users/alice = {} (version {})", text(&alice.value), alice.version);
    let scan = client.scan("/demo/users/", 0).await?;
    println!(
        "scan /demo/users/ -> {} keys: {}",
        scan.kvs.len(),
        scan.kvs.iter().map(|kv| text(&kv.key)).collect::<Vec<_>>().join(", ")
    );
    client.put("/demo/accounts/a", "100").await?;
    client.put("/demo/accounts/b", "50").await?;
    let transfer = |from_balance: &str| {
        Txn::new().if_value("/demo/accounts/a", "=", from_balance).map(|t| {
            t.then(op::increment("/demo/accounts/a", -30))
                .then(op::increment("/demo/accounts/b", 30))
                .otherwise(op::get("/demo/accounts/a"))
        })
    };
    let ok = client.txn(transfer("100")?).await?;
    println!(
        "txn  if /demo/accounts/a = 100 then move 30 to b -> succeeded={} [{}]",
        ok.succeeded,
        ok.results.iter().map(describe_result).collect::<Vec<_>>().join("; ")
    );
    let again = client.txn(transfer("100")?).await?;
    println!(
        "txn  same transfer again (a is now 70)  -> succeeded={} [{}]",
        again.succeeded,
        again.results.iter().map(describe_result).collect::<Vec<_>>().join("; ")
    );
    let a = client.get("/demo/accounts/a").await?.context("a")?;
    let b = client.get("/demo/accounts/b").await?.context("b")?;
    println!(
        "get  a = {}, b = {} (total {})",
        text(&a.value),
        text(&b.value),
        text(&a.value).parse::<i64>()? + text(&b.value).parse::<i64>()?
    );
    let ls = client.list("/demo").await?;
    println!("ls   /demo/ -> {}", ls.common_prefixes.iter().map(|p| text(p)).collect::<Vec<_>>().join(" "));
    println!("== demo done");
    Ok(())
}

/// mimalloc instead of glibc's malloc for the server's (Rust) allocations:
/// glibc's `malloc`, `free` and their consolidation took 15–20% of a node's
/// CPU at 64 clients. Measured in alternated pairs (docs/BENCHMARKS.md,
/// item 18): 4–6% less server CPU per put and per transaction, 5–8% more
/// linearizable gets per second, for 25–55 MiB more resident memory per node.
/// RocksDB's own C++ allocations still use glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARBOR_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file stays
        // plain text that grep and the tests can read.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Command::Server(args) = cli.command {
        return run_server(args.into_config(cli.cluster_id)?).await;
    }
    let options = ClientOptions {
        timeout: Duration::from_secs(cli.timeout),
        cluster_id: cli.cluster_id.clone(),
        ..Default::default()
    };
    let client = Client::with_options(&cli.endpoints, options)?;
    let json = cli.json;
    match cli.command {
        Command::Server(_) => unreachable!("handled above"),
        Command::Put { key, value, prev } => {
            let r = if prev { client.put_prev(&key, &value).await? } else { client.put(&key, &value).await? };
            let replaced = r.prev.as_ref().map(|kv| (String::from_utf8_lossy(&kv.value), kv.version));
            match (json, replaced) {
                (true, None) => println!("{}", serde_json::json!({"key": key, "version": r.version})),
                (true, Some((old, old_version))) => println!(
                    "{}",
                    serde_json::json!({"key": key, "version": r.version, "prev": {"value": old, "version": old_version}})
                ),
                (false, None) if prev => println!("OK (version {}; the key did not exist)", r.version),
                (false, None) => println!("OK (version {})", r.version),
                (false, Some((old, old_version))) => {
                    println!("OK (version {}; replaced {old:?} at version {old_version})", r.version)
                }
            }
        }
        Command::Get { key, read } => match read.options()? {
            None => print_get(&key, client.get(&key).await?, None, json),
            Some(opts) => {
                let r = client.get_with(&key, opts).await?;
                print_get(&key, r.kv, r.header.map(|h| h.read_stamp), json)
            }
        },
        Command::Scan { prefix, limit, keys_only, read } => {
            let req = pb::RangeRequest {
                prefix: prefix.into_bytes(),
                limit,
                keys_only,
                read: read.options()?,
                ..Default::default()
            };
            print_range(&client.range(req).await?, json);
        }
        Command::Ls { path, read } => {
            let mut prefix = path.into_bytes();
            if !prefix.ends_with(b"/") {
                prefix.push(b'/');
            }
            let req = pb::RangeRequest {
                prefix,
                delimiter: "/".into(),
                keys_only: true,
                read: read.options()?,
                ..Default::default()
            };
            print_range(&client.range(req).await?, json);
        }
        Command::Watch { target, prefix, from, progress } => {
            let target =
                if prefix { WatchTarget::Prefix(target.into_bytes()) } else { WatchTarget::Key(target.into_bytes()) };
            let mut watcher = client.watch(target, from);
            loop {
                let batch = watcher.next().await?;
                for e in &batch.events {
                    let kv = e.kv.clone().unwrap_or_default();
                    let deleted = e.r#type == pb::watch_event::Type::Delete as i32;
                    if json {
                        let mut v = kv_json(&kv);
                        v["type"] = serde_json::json!(if deleted { "DELETE" } else { "PUT" });
                        v["stamp"] = serde_json::json!(e.stamp);
                        println!("{v}");
                    } else if deleted {
                        println!("{} DELETE {}", e.stamp, text(&kv.key));
                    } else {
                        println!("{} PUT {} v{} {}", e.stamp, text(&kv.key), kv.version, text(&kv.value));
                    }
                }
                if progress && batch.events.is_empty() {
                    println!("# progress {}", batch.progress_stamp);
                }
            }
        }
        Command::Delete { key } => println!("deleted {}", client.delete(&key).await?.deleted),
        Command::DeletePrefix { prefix } => println!("deleted {}", client.delete_prefix(&prefix).await?.deleted),
        Command::Incr { key, delta } => println!("{}", client.increment(&key, delta).await?),
        Command::Append { key, value } => {
            let r = client.txn(Txn::new().then(op::append(&key, &value))).await?;
            println!("{}", r.results.first().map(describe_result).unwrap_or_default());
        }
        Command::Txn { compares, success, failure, file } => {
            let spec = match file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str(&text).with_context(|| {
                        format!("{}: expected {{\"if\": [..], \"then\": [..], \"else\": [..]}}", path.display())
                    })?
                }
                None => TxnFile { compares, success, failure },
            };
            let r = client.txn(build_txn(&spec.compares, &spec.success, &spec.failure)?).await?;
            if json {
                let results: Vec<_> = r.results.iter().map(describe_result).collect();
                println!("{}", serde_json::json!({"succeeded": r.succeeded, "results": results}));
            } else {
                println!("succeeded: {}", r.succeeded);
                for res in &r.results {
                    println!("  {}", describe_result(res));
                }
            }
        }
        Command::Cluster { command: ClusterCommand::Status } => cluster_status(&client, &cli.endpoints, json).await?,
        Command::Cluster { command: ClusterCommand::Members } => {
            let s = client.status().await?;
            for m in s.members {
                println!("{} {}", m.id, m.addr);
            }
        }
        Command::Cluster { command: ClusterCommand::AddNode { id, addr } } => {
            for group in client.status().await?.groups.iter().map(|g| g.group_id) {
                let r = client.add_node(group, id, &addr).await?;
                println!("group {group}: voters {:?}, learners {:?}", r.voters, r.learners);
            }
        }
        Command::Cluster { command: ClusterCommand::TransferLeader { group, node } } => {
            let r = client.transfer_leader(group, node).await?;
            if json {
                println!("{}", serde_json::json!({"group": group, "leader": r.leader, "term": r.term}));
            } else {
                println!("group {group}: node {} leads (term {})", r.leader, r.term);
            }
        }
        Command::Cluster { command: ClusterCommand::RemoveNode { id, force } } => {
            for group in client.status().await?.groups.iter().map(|g| g.group_id) {
                let r = client.remove_node(group, id, force).await?;
                println!("group {group}: voters {:?}, learners {:?}", r.voters, r.learners);
            }
        }
        Command::Demo => demo(&client).await?,
    }
    Ok(())
}
