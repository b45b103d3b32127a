//! Real multi-node clusters for integration tests: `arbor server`
//! processes on loopback ports, each with its own RocksDB in a temp dir.
//! Processes are killed and temp dirs removed when the [`Cluster`] drops.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arbor::client::pb::GroupStatus;
use arbor::client::{Client, ClientOptions};

/// One node: its id, address, data dir and (while running) its process.
pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Started with `--join` (added to a running cluster).
    pub joined: bool,
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub peers: String,
    pub extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

/// A port that is free now, below Linux's ephemeral range (32768 and up):
/// a port the kernel picked for us (`bind :0`) could be handed to some
/// outgoing connection before the node binds it ("Address already in use"
/// seen in CI-like runs). Never the same port twice in one test process.
fn free_port() -> u16 {
    use rand::Rng;
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
}

/// Prints a phase of a test, so a failure's output reads like a story.
pub fn phase(msg: &str) {
    eprintln!("--- {msg}");
}

/// The number in field `name=` of a server log line (a node logs plain
/// text when its stderr is a file).
pub fn log_field(line: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str()));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number {name} in {line:?}"))
}

impl Cluster {
    /// Starts `n` nodes with extra server flags.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        Self::start_in(tempfile::tempdir().unwrap(), n, extra)
    }

    /// Starts `n` nodes reading `toml` as their `--config` file (kept in the
    /// cluster's temp dir), plus extra server flags. Nodes started later
    /// (restarts, joins) read it too.
    pub fn start_with_config(n: u64, toml: &str, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("arbor.toml");
        std::fs::write(&path, toml).unwrap();
        let mut flags = vec!["--config", path.to_str().unwrap()];
        flags.extend_from_slice(extra);
        Self::start_in(tmp, n, &flags)
    }

    fn start_in(tmp: tempfile::TempDir, n: u64, extra: &[&str]) -> Cluster {
        let mut c = Self::prepare_in(tmp, n, extra);
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    /// Like [`Cluster::start`], but starts no node: prepare their data dirs,
    /// then start each with [`Cluster::restart`].
    pub fn prepare(n: u64, extra: &[&str]) -> Cluster {
        Self::prepare_in(tempfile::tempdir().unwrap(), n, extra)
    }

    fn prepare_in(tmp: tempfile::TempDir, n: u64, extra: &[&str]) -> Cluster {
        let nodes: Vec<NodeProc> = (1..=n)
            .map(|id| NodeProc {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                dir: tmp.path().join(format!("n{id}")),
                child: None,
                joined: false,
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        Cluster { nodes, peers, extra: extra.iter().map(|s| s.to_string()).collect(), _tmp: tmp }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("arbor.log")).unwrap();
        let peers = if node.joined { format!("{}={}", node.id, node.addr) } else { self.peers.clone() };
        let child = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["server", "--node-id", &node.id.to_string(), "--listen", &node.addr, "--peers", &peers])
            .args(node.joined.then_some("--join"))
            .arg("--data-dir")
            .arg(&node.dir)
            .args(&self.extra)
            .env("ARBOR_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn arbor server");
        self.nodes[i].child = Some(child);
    }

    /// Starts a new node with `--join` (not yet a member of any group);
    /// returns its index.
    pub fn start_joining_node(&mut self) -> usize {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let dir = self._tmp.path().join(format!("n{id}"));
        self.nodes.push(NodeProc { id, addr: format!("127.0.0.1:{}", free_port()), dir, child: None, joined: true });
        let i = self.nodes.len() - 1;
        self.spawn(i);
        i
    }

    /// Restarts a stopped node on its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {} is running", self.nodes[i].id);
        self.spawn(i);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `i` and asserts that its graceful shutdown did not wait
    /// out the grace for requests still open (`what` names them).
    pub fn stop_promptly(&mut self, i: usize, what: &str) {
        let stopping = Instant::now();
        self.stop(i);
        let log = self.log_of(i);
        assert!(!log.contains("requests still in flight"), "{what} held the shutdown:\n{log}");
        assert!(stopping.elapsed() < arbor::server::SHUTDOWN_GRACE, "stopped in {:?}", stopping.elapsed());
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("node {} ignored SIGTERM for 20 s", self.nodes[i].id);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn client(&self) -> Client {
        self.client_of(&self.endpoints())
    }

    pub fn client_of(&self, endpoints: &[String]) -> Client {
        Client::with_options(endpoints, ClientOptions { timeout: Duration::from_secs(30), ..Default::default() })
            .unwrap()
    }

    /// Waits until every running node sees a leader for every group, and
    /// returns the leader of group `group`.
    pub async fn wait_for_leader(&self, group: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client();
        loop {
            let mut leaders = Vec::new();
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(s) = client.status_of(&n.addr).await {
                    if s.groups.iter().all(|g| g.leader != 0) {
                        leaders.extend(s.groups.iter().filter(|g| g.group_id == group).map(|g| g.leader));
                    }
                }
            }
            let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
            if leaders.len() == running && leaders.iter().all(|&l| l == leaders[0]) && leaders[0] != 0 {
                let leader = leaders[0];
                if self.nodes.iter().any(|n| n.id == leader && n.child.is_some()) {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader for group {group} within 30 s:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node has applied at least `index` in `group`.
    pub async fn wait_applied(&self, group: u64, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let applied = client
                    .status_of(&n.addr)
                    .await
                    .ok()
                    .and_then(|s| s.groups.iter().find(|g| g.group_id == group).map(|g| g.applied_index))
                    .unwrap_or(0);
                if applied >= index {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} applied {applied} < {index} in group {group}", n.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The PIDs of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect()
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(n.dir.join("arbor.log")).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("== node {} ==\n{}", n.id, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Cluster {
    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
    }

    /// Addresses of the running nodes.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.running().into_iter().map(|i| self.nodes[i].addr.clone()).collect()
    }

    /// Node `i`'s whole log.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("arbor.log")).unwrap_or_default()
    }

    /// The status of `group` on node `i`, `None` while it does not answer.
    pub async fn group_status(&self, i: usize, group: u64) -> Option<GroupStatus> {
        let s = self.client().status_of(&self.nodes[i].addr).await.ok()?;
        s.groups.into_iter().find(|g| g.group_id == group)
    }

    /// Polls node `i`'s status of `group` until `pred` holds (30 s at most)
    /// and returns it; `what` names the awaited state in the failure.
    pub async fn wait_group(
        &self,
        i: usize,
        group: u64,
        what: &str,
        pred: impl Fn(&GroupStatus) -> bool,
    ) -> GroupStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.group_status(i, group).await;
            if let Some(g) = status.as_ref().filter(|g| pred(g)) {
                return g.clone();
            }
            assert!(
                Instant::now() < deadline,
                "node {} group {group}: not {what} within 30 s: {status:?}\n{}",
                self.nodes[i].id,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `timeout` for node `i` to exit on its own; returns its
    /// exit status, or `None` (and leaves it running) if it did not exit.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.nodes[i].child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.nodes[i].child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        // ARBOR_KEEP_TEST_DATA=1 keeps a failed test's data dirs and logs.
        if std::thread::panicking() && std::env::var("ARBOR_KEEP_TEST_DATA").is_ok_and(|v| v == "1") {
            let tmp = std::mem::replace(&mut self._tmp, tempfile::tempdir().unwrap());
            eprintln!("kept the cluster's data dirs and logs in {}", tmp.keep().display());
        }
    }
}

/// Every key's current record on a stopped node, read from its RocksDB.
pub fn data_of(dir: &Path) -> BTreeMap<Vec<u8>, arbor::tree::Record> {
    use arbor::tree::{KeyRange, TreeRead, VersionedTree};
    use arbor_storage::{Rocks, RocksOptions};
    let db = Rocks::open(&dir.join("db"), &RocksOptions::default()).unwrap();
    let all = KeyRange { start: Vec::new(), end: Vec::new() };
    VersionedTree::latest(&db).scan(&all).collect::<Result<_, _>>().unwrap()
}

/// The values of `records`.
pub fn values(records: &BTreeMap<Vec<u8>, arbor::tree::Record>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    records.iter().map(|(k, r)| (k.clone(), r.value.to_vec())).collect()
}

/// One group's replicated state on a stopped node, read from its RocksDB:
/// the current versions of the keys of its range `[start, end)` (empty
/// `end` = to the end of the key space) plus the state that moves with it
/// (its history, dedup table, GC indexes). The applied state is left
/// out: its last log id may differ by trailing blank or membership entries.
pub fn group_state(dir: &Path, group: u64, start: &[u8], end: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use arbor::keys::{self, Key};
    use arbor_storage::{Direction, ReadView, Rocks, RocksOptions};
    use std::ops::Bound;
    let db = Rocks::open(&dir.join("db"), &RocksOptions::default()).unwrap();
    let applied = Key::Applied(group).encode();
    let mut ranges = keys::group_state_ranges(group);
    ranges.push(keys::current_bounds(start, end));
    let mut out = BTreeMap::new();
    for (s, e) in ranges {
        for item in db.scan(Bound::Included(s), Bound::Excluded(e), Direction::Forward) {
            let (k, v) = item.unwrap();
            if k != applied {
                out.insert(k, v);
            }
        }
    }
    out
}

/// A 64-bit digest of a group state (same process, same hasher keys).
pub fn digest(state: &BTreeMap<Vec<u8>, Vec<u8>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// Reads every group's state (groups as reported by a status) on the
/// stopped nodes `nodes`, asserts that each group's digest is the same on
/// all of them, and returns the groups' states of the first node.
pub fn assert_identical_groups(
    c: &Cluster,
    nodes: &[usize],
    groups: &[GroupStatus],
) -> Vec<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut first = Vec::new();
    for g in groups {
        let states: Vec<_> =
            nodes.iter().map(|&i| group_state(&c.nodes[i].dir, g.group_id, &g.start, &g.end)).collect();
        for (state, &i) in states.iter().zip(nodes) {
            if digest(state) != digest(&states[0]) {
                let key = state
                    .keys()
                    .chain(states[0].keys())
                    .filter(|k| state.get(*k) != states[0].get(*k))
                    .min()
                    .cloned()
                    .unwrap_or_default();
                panic!(
                    "group {}: node {} ({} keys) differs from node {} ({} keys), first at key {:?}: {:?} vs {:?}",
                    g.group_id,
                    c.nodes[i].id,
                    state.len(),
                    c.nodes[nodes[0]].id,
                    states[0].len(),
                    String::from_utf8_lossy(&key),
                    state.get(&key),
                    states[0].get(&key)
                );
            }
        }
        eprintln!(
            "group {}: {} keys, digest {:016x}, identical on nodes {:?}",
            g.group_id,
            states[0].len(),
            digest(&states[0]),
            nodes.iter().map(|&i| c.nodes[i].id).collect::<Vec<_>>()
        );
        first.push(states.into_iter().next().unwrap());
    }
    first
}

/// Sends `body` as the raw protobuf payload of a unary call to `path`
/// (e.g. `/arbor.v1.Kv/Put`), to test how servers treat malformed requests.
pub async fn raw_unary(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(|r| r.into_inner())
}
