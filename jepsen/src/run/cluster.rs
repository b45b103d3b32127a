//! The cluster under test: `arbor server` processes, each started inside its node's network
//! namespace (`ip netns exec arbj-nI arbor server ...`, which execs, so the child's pid is
//! the server's), listening on the namespace's address with its own data dir and log.
//!
//! Faults on processes: [`Cluster::kill`] (SIGKILL), [`Cluster::restart`] (same data dir,
//! same flags), [`Cluster::pause`] / [`Cluster::resume`] (SIGSTOP / SIGCONT). Only processes
//! this struct spawned are ever signalled, by pid. Dropping the cluster kills every server.
//! A server that exits on its own (a crash) is noticed by [`Cluster::reap_crashes`].

use super::net::Layout;
use anyhow::{Context, Result};
use arbor::client::{Client, ClientOptions};
use futures::future::join_all;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port every server listens on (inside its own namespace).
pub const PORT: u16 = 7001;

/// One server.
struct Node {
    id: u64,
    netns: String,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// Servers of one run.
pub struct Cluster {
    nodes: Vec<Node>,
    arbor: PathBuf,
    peers: String,
    extra: Vec<String>,
    start: Instant,
    /// Exits nobody asked for: (node name, exit status).
    pub crashes: Vec<(String, String)>,
}

impl Cluster {
    /// Starts one server per node of `layout`, data and logs under `dir/nI/`.
    pub fn start(layout: &Layout, arbor: &Path, dir: &Path, extra: &[String]) -> Result<Cluster> {
        let nodes: Vec<Node> = (0..layout.nodes)
            .map(|i| Node {
                id: i as u64 + 1,
                netns: layout.netns(i),
                addr: format!("{}:{PORT}", layout.node_ip(i)),
                dir: dir.join(format!("n{}", i + 1)),
                child: None,
                paused: false,
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        let mut c = Cluster {
            nodes,
            arbor: arbor.to_path_buf(),
            peers,
            extra: extra.to_vec(),
            start: Instant::now(),
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
        self.nodes.iter().map(|n| n.addr.clone()).collect()
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
        writeln!(log, "=== arbor-jepsen: starting {} at +{t:.3}s ===", self.name(i))?;
        let node = &self.nodes[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(&self.arbor)
            .args(["server", "--node-id", &node.id.to_string(), "--listen", &node.addr, "--peers", &self.peers])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(&self.extra)
            .env("ARBOR_LOG", std::env::var("ARBOR_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} in {}", self.arbor.display(), node.netns))?;
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
        Ok(())
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
        }
        self.nodes[i].paused = false;
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
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
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
