//! Short real runs of the faults added after the smoke (`tests/smoke.rs`): the clock, member
//! and leader nemeses, and the loopback-proxy network. Each must be a valid run in which
//! the fault really happened: the servers took the clock offsets, a node was removed,
//! wiped and added back, leadership moved, partitions held real node-to-node connections.
//!
//! None needs root: with root the runs use network namespaces (`--net auto`), without it
//! they fall back to loopback proxies; the proxy run asks for proxies explicitly. Runs are
//! serialised by the harness's machine-wide lock. It runs the `arbor` server binary of the
//! same target dir (`cargo test --workspace` builds it).

mod common;

use common::{arbor_bin, phase};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// One finished run: its folder, results.json, and nemesis events.
struct Run {
    dir: PathBuf,
    results: Value,
    nemesis: Vec<Value>,
}

impl Run {
    /// The nemesis events named `f`.
    fn events(&self, f: &str) -> Vec<&Value> {
        self.nemesis.iter().filter(|e| e["f"] == f).collect()
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{node}/arbor.log"))).unwrap()
    }
}

/// Runs `arbor-jepsen run` with `args` in a store of its own; asserts it is valid.
fn run(name: &str, args: &[&str]) -> Run {
    let store = std::env::temp_dir().join(format!("arbor-jepsen-nemeses-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor-jepsen"))
        .args(["run", "--workload", "register", "--recovery", "2", "--rate", "120", "--quiet", "--arbor-bin"])
        .arg(arbor_bin())
        .arg("--store")
        .arg(&store)
        .args(args)
        .output()
        .expect("run arbor-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}({name}: {:.1} s)", started.elapsed().as_secs_f64());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: run not valid (exit {:?}); folder in {}",
        out.status,
        store.display()
    );
    let dir = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).expect("a run folder");
    let results: Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid?"], Value::Bool(true), "{results:#}");
    assert!(results["ops"]["ok"].as_u64().unwrap() >= 100, "{name}: too few ok ops: {}", results["ops"]);
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    let nemesis = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["process"] == "nemesis")
        .collect();
    Run { dir, results, nemesis }
}

fn done(run: Run) {
    if let Some(store) = run.dir.parent() {
        std::fs::remove_dir_all(store).unwrap();
    }
}

#[test]
fn clock_bumps_and_strobes_reach_the_servers_and_are_reset() {
    phase("register on 3 nodes, clock bumps and strobes every 1.5 s");
    let r = run(
        "clock",
        &["--nemesis", "clock", "--seed", "1", "--nodes", "3", "--time", "12", "--nemesis-interval", "1.5"],
    );
    let starts = r.events("start-clock");
    assert!(starts.len() >= 2, "{:?}", r.nemesis);
    assert!(starts.iter().any(|e| e["value"]["error"].is_null()), "every clock change failed: {starts:?}");
    phase("the last event resets every node to offset 0, and the servers logged the changes");
    let last = r.nemesis.iter().rev().find(|e| e["f"].as_str().unwrap().ends_with("-clock")).unwrap();
    assert_eq!(last["f"], "stop-clock");
    assert_eq!(last["value"]["reset"], serde_json::json!(["n1", "n2", "n3"]), "{last}");
    let changed: usize = (1..=3).map(|n| r.log(n).matches("clock offset changed").count()).sum();
    assert!(changed >= starts.len(), "{changed} offset changes logged for {} faults", starts.len());
    done(r);
}

#[test]
fn a_removed_node_is_wiped_rejoined_and_a_voter_again() {
    phase("register on 4 nodes, a node out of every group and back, every 2.5 s");
    let r = run(
        "member",
        &["--nemesis", "member", "--seed", "1", "--nodes", "4", "--time", "14", "--nemesis-interval", "2.5"],
    );
    let removed = r.events("start-member");
    assert!(!removed.is_empty(), "{:?}", r.nemesis);
    assert!(removed.iter().any(|e| e["value"]["rejoined-empty"] == true), "{removed:?}");
    let added = r.events("stop-member");
    assert!(added.iter().any(|e| e["value"]["error"].is_null()), "never added back: {added:?}");
    phase("the heal left every node a voter (else the harness reports a problem)");
    assert_eq!(r.results["harness"]["problems"], serde_json::json!([]), "{:#}", r.results["harness"]);
    let node = removed[0]["value"]["node"].as_str().unwrap().trim_start_matches('n').parse::<usize>().unwrap();
    assert!(r.log(node).contains("starting n") && r.log(node).contains("with --join"), "n{node} rejoined empty");
    done(r);
}

#[test]
fn leadership_moves_to_the_chosen_voter() {
    phase("register on 3 nodes, a leadership transfer every 1.5 s");
    let r = run(
        "leader",
        &["--nemesis", "leader", "--seed", "1", "--nodes", "3", "--time", "8", "--nemesis-interval", "1.5"],
    );
    let transfers = r.events("transfer-leader");
    assert!(!transfers.is_empty(), "{:?}", r.nemesis);
    let moved: Vec<&&Value> = transfers.iter().filter(|e| e["value"]["result"]["leader"] == e["value"]["to"]).collect();
    assert!(!moved.is_empty(), "no transfer reached its target: {transfers:?}");
    done(r);
}

#[test]
fn proxy_mode_partitions_cut_real_node_links() {
    phase("register on 3 nodes on loopback proxies, partitions and kills");
    let r = run(
        "proxy",
        &[
            "--net",
            "proxy",
            "--nemesis",
            "partition,kill",
            "--seed",
            "1",
            "--nodes",
            "3",
            "--time",
            "10",
            "--nemesis-interval",
            "1.5",
        ],
    );
    assert_eq!(r.results["net"]["mode"], "proxy", "{:#}", r.results["net"]);
    let proxy = &r.results["net"]["proxy"];
    assert!(proxy["node-link-connections"].as_u64().unwrap() > 0, "no connection attributed to a node: {proxy}");
    assert!(proxy["client-connections"].as_u64().unwrap() > 0, "{proxy}");
    assert!(!r.events("start-partition").is_empty(), "{:?}", r.nemesis);
    assert!(proxy["faulted-connections"].as_u64().unwrap() > 0, "no node connection met a partition: {proxy}");
    done(r);
}
