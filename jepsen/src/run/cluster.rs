//! The cluster under test: `arbor server` processes, each started inside its node's network
//! namespace (`ip netns exec arbj-nI arbor server ...`, which execs, so the child's pid is
//! the server's) or, in proxy mode, directly on loopback behind its proxy
//! ([`super::proxy`]); each listens on its [`NodeNet`] address, advertises the address peers
//! and clients use, and has its own data dir and log.
//!
//! Faults on processes: [`Cluster::kill`] (SIGKILL), [`Cluster::restart`] (same data dir,
//! same flags), [`Cluster::pause`] / [`Cluster::resume`] (SIGSTOP / SIGCONT), and for the
//! `member` fault [`Cluster::stop`] then [`Cluster::rejoin`] (wipe the data dir, start with
//! `--join`: a node once removed is always started with `--join`, so an empty data dir is
//! never bootstrapped into a second cluster). Only processes this struct spawned are ever
//! signalled, by pid. Dropping the cluster kills every server. A server that exits on its own
//! (a crash) is noticed by [`Cluster::reap_crashes`]. The running servers' pids are kept in
//! [`PidTable`] (for the proxies) and in a file in `$TMPDIR`, so that the next run kills
//! servers a killed harness left behind.

use super::proxy::PidTable;
use anyhow::{Context, Result};
use arbor::client::{Client, ClientOptions};
use futures::future::join_all;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The port every server listens on (inside its own namespace).
pub const PORT: u16 = 7001;

/// Where a node runs and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Its network namespace (`None`: the harness's own, i.e. proxy mode).
    pub netns: Option<String>,
    /// `--listen`.
    pub listen: String,
    /// The address peers and clients use (`--advertise` when it differs from `listen`).
    pub advertise: String,
}

/// One server.
struct Node {
    id: u64,
    net: NodeNet,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Removed once: started with `--join` from now on.
    joiner: bool,
}

/// Servers of one run.
pub struct Cluster {
    nodes: Vec<Node>,
    arbor: PathBuf,
    peers: String,
    extra: Vec<String>,
    start: Instant,
    pids: Option<Arc<PidTable>>,
    /// Exits nobody asked for: (node name, exit status).
    pub crashes: Vec<(String, String)>,
}

impl Cluster {
    /// Starts one server per entry of `nets`, data and logs under `dir/nI/`; keeps `pids`
    /// (if any) current.
    pub fn start(
        nets: Vec<NodeNet>,
        arbor: &Path,
        dir: &Path,
        extra: &[String],
        pids: Option<Arc<PidTable>>,
    ) -> Result<Cluster> {
        kill_leftover_servers();
        let nodes: Vec<Node> = nets
            .into_iter()
            .enumerate()
            .map(|(i, net)| Node {
                id: i as u64 + 1,
                net,
                dir: dir.join(format!("n{}", i + 1)),
                child: None,
                paused: false,
                joiner: false,
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.net.advertise)).collect::<Vec<_>>().join(",");
        let mut c = Cluster {
            nodes,
            arbor: arbor.to_path_buf(),
            peers,
            extra: extra.to_vec(),
            start: Instant::now(),
            pids,
            crashes: Vec::new(),
        };
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s name (`n1`...).
    pub fn name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Every node's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.net.advertise.clone()).collect()
    }

    /// Node `i`'s Arbor node id.
    pub fn id(&self, i: usize) -> u64 {
        self.nodes[i].id
    }

    /// Node `i`'s address as peers and clients know it.
    pub fn advertise(&self, i: usize) -> &str {
        &self.nodes[i].net.advertise
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("arbor.log")
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("data")
    }

    fn log(&self, i: usize) -> Result<File> {
        std::fs::create_dir_all(&self.nodes[i].dir)?;
        Ok(OpenOptions::new().create(true).append(true).open(self.log_path(i))?)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let mut log = self.log(i)?;
        let t = self.start.elapsed().as_secs_f64();
        let node = &self.nodes[i];
        let how = if node.joiner { " with --join" } else { "" };
        writeln!(log, "=== arbor-jepsen: starting {}{how} at +{t:.3}s ===", self.name(i))?;
        let mut cmd = match &node.net.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.arbor);
                c
            }
            None => Command::new(&self.arbor),
        };
        // A joiner's data dir knows only itself; the cluster adds it to its groups.
        let peers = if node.joiner { format!("{}={}", node.id, node.net.advertise) } else { self.peers.clone() };
        cmd.args(["server", "--node-id", &node.id.to_string(), "--listen", &node.net.listen, "--peers", &peers]);
        if node.net.advertise != node.net.listen {
            cmd.args(["--advertise", &node.net.advertise]);
        }
        if node.joiner {
            cmd.arg("--join");
        }
        let child = cmd
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(&self.extra)
            .env("ARBOR_LOG", std::env::var("ARBOR_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} for {}", self.arbor.display(), self.name(i)))?;
        let pid = child.id();
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
        self.note_pid(i, Some(pid));
        Ok(())
    }

    /// Records node `i`'s pid (or its absence) for the proxies and the leftovers file.
    fn note_pid(&self, i: usize, pid: Option<u32>) {
        if let Some(table) = &self.pids {
            table.set(i, pid);
        }
        let live: Vec<u32> = self.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| c.id())).collect();
        write_leftovers_file(&live);
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        if let Some(child) = &self.nodes[i].child {
            // SAFETY: plain syscall on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
    }

    /// kill -9 node `i` (and reap it).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.note_pid(i, None);
        }
        self.nodes[i].paused = false;
    }

    /// kill -9 `nodes` together: every SIGKILL is sent before any is reaped.
    pub fn kill_together(&mut self, nodes: &[usize]) {
        for &i in nodes {
            self.signal(i, libc::SIGKILL);
        }
        for &i in nodes {
            self.kill(i);
        }
    }

    /// Stops node `i` gracefully: SIGCONT, SIGTERM, SIGKILL after `grace`.
    pub fn stop(&mut self, i: usize, grace: Duration) {
        self.resume(i);
        self.signal(i, libc::SIGTERM);
        if let Some(mut child) = self.nodes[i].child.take() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            self.note_pid(i, None);
        }
    }

    /// Wipes stopped node `i`'s data dir and starts it with `--join`, empty, waiting to be
    /// added (the `member` fault's way back).
    pub fn rejoin(&mut self, i: usize) -> Result<()> {
        anyhow::ensure!(self.nodes[i].child.is_none(), "{} must be stopped before it is wiped", self.name(i));
        let data = self.data_dir(i);
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("wiping {}", data.display()))?;
        }
        self.nodes[i].joiner = true;
        self.spawn(i)
    }

    /// Whether node `i` is paused.
    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Restarts node `i` on its data dir if it is not running.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Whether node `i` has a live process.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGSTOP node `i`.
    pub fn pause(&mut self, i: usize) {
        if self.nodes[i].child.is_some() {
            self.signal(i, libc::SIGSTOP);
            self.nodes[i].paused = true;
        }
    }

    /// SIGCONT node `i` if paused.
    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, libc::SIGCONT);
            self.nodes[i].paused = false;
        }
    }

    /// Notices servers that exited without being killed; records and forgets them.
    pub fn reap_crashes(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.nodes[i].child = None;
                self.note_pid(i, None);
                let name = self.name(i);
                found.push(format!("{name}: {status}"));
                self.crashes.push((name, status));
            }
        }
        found
    }

    /// Stops every server: SIGCONT, SIGTERM, then SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.signal(i, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for i in 0..self.nodes.len() {
            if let Some(mut child) = self.nodes[i].child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                self.note_pid(i, None);
            }
        }
    }
}

/// The file listing the running servers' pids (with their start times, against pid reuse).
fn leftovers_file() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("arbor-jepsen-servers-{uid}.pids"))
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), which tells a pid's reuse apart.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow its `)`.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn write_leftovers_file(pids: &[u32]) {
    let text: String =
        pids.iter().filter_map(|&p| start_time(p).map(|t| format!("{p} {t}\n"))).collect::<Vec<_>>().concat();
    let _ = std::fs::write(leftovers_file(), text);
}

/// Kills (SIGKILL) the servers an earlier run of this user left running (its harness was
/// killed before it could stop them): the pids of the leftovers file whose start time still
/// matches. Only processes this harness started are listed there.
fn kill_leftover_servers() {
    let Ok(text) = std::fs::read_to_string(leftovers_file()) else { return };
    let mut killed = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(t))) = (f.next(), f.next()) else { continue };
        if start_time(pid as u32) == Some(t) {
            // SAFETY: plain syscall on a pid this harness started (start time checked).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed.push(pid.to_string());
        }
    }
    if !killed.is_empty() {
        eprintln!("arbor-jepsen: killed servers an earlier run left running: pids {}", killed.join(" "));
    }
    let _ = std::fs::remove_file(leftovers_file());
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A client of node addresses with a short timeout, for status queries.
pub fn admin_client(endpoints: &[String], timeout: Duration) -> Result<Client> {
    Ok(Client::with_options(endpoints, ClientOptions { timeout, ..ClientOptions::default() })?)
}

/// The node index that leads group 1, as the reachable nodes report it (highest term wins).
pub async fn leader_of_group_1(endpoints: &[String]) -> Option<usize> {
    let client = admin_client(endpoints, Duration::from_millis(500)).ok()?;
    let mut best: Option<(u64, u64)> = None; // (term, leader id)
    let answers = join_all(endpoints.iter().map(|addr| client.status_of(addr))).await;
    for status in answers.into_iter().flatten() {
        if let Some(g) = status.groups.iter().find(|g| g.group_id == 1) {
            if g.leader != 0 && best.is_none_or(|(t, _)| g.term > t) {
                best = Some((g.term, g.leader));
            }
        }
    }
    best.map(|(_, id)| id as usize - 1).filter(|&i| i < endpoints.len())
}

/// Waits until every node answers and all agree group 1 has a leader.
pub async fn wait_ready(endpoints: &[String], timeout: Duration) -> Result<()> {
    let client = admin_client(endpoints, Duration::from_millis(500))?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let answers = join_all(endpoints.iter().map(|addr| client.status_of(addr))).await;
        let mut ok = true;
        for (addr, a) in endpoints.iter().zip(answers) {
            match a {
                Ok(s) if s.groups.iter().all(|g| g.leader != 0) && !s.groups.is_empty() => {}
                Ok(_) => {
                    ok = false;
                    last = format!("{addr}: no leader yet");
                }
                Err(e) => {
                    ok = false;
                    last = format!("{addr}: {e}");
                }
            }
        }
        if ok {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the cluster was not ready within {timeout:?}: {last}")
}
