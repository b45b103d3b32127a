//! CI smoke of the cluster harness: two real, short `arbor-jepsen run`s on 3 nodes in
//! network namespaces — register, then list-append — under partitions and kills, each
//! asserted valid, with the faults and the report really there.
//!
//! Needs root (network namespaces). Without root it is skipped with a message, unless
//! `CI=true`, where it fails. It runs the `arbor` server binary of the same target dir
//! (`cargo test --workspace` builds it; `cargo test -p arbor-jepsen` alone does not).

mod common;

use common::{find_arbor_bin, phase};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs one workload; returns (run folder, results.json).
fn run(store: &Path, arbor: &Path, workload: &str, seed: &str) -> (PathBuf, Value) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor-jepsen"))
        .args(["run", "--workload", workload, "--nemesis", "partition,kill", "--nodes", "3"])
        .args(["--time", "8", "--nemesis-interval", "1.5", "--recovery", "2", "--rate", "150", "--seed", seed])
        .args(["--quiet", "--arbor-bin"])
        .arg(arbor)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run arbor-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}({workload}: {:.1} s)", started.elapsed().as_secs_f64());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{workload} run not valid (exit {:?}); folders in {}",
        out.status,
        store.display()
    );
    let dir = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{workload}-")))
        .expect("a run folder");
    let results: Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    (dir, results)
}

fn assert_run_is_real(dir: &Path, results: &Value, workload: &str) {
    assert_eq!(results["valid?"], Value::Bool(true), "{results:#}");
    let ok = results["ops"]["ok"].as_u64().unwrap();
    assert!(ok >= 100, "{workload}: only {ok} ok ops");
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    for fault in ["start-partition", "stop-partition", "start-kill", "stop-kill"] {
        assert!(history.contains(&format!(r#""f":"{fault}""#)), "{workload}: no {fault} in the history");
    }
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("VALID") && report.matches("<svg").count() == 3, "{workload}: report incomplete");
    for n in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("n{n}/arbor.log"))).unwrap();
        assert!(log.contains("starting arbor"), "n{n}'s server log");
    }
}

#[test]
fn register_and_list_append_stay_valid_under_partitions_and_kills() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !root {
        assert!(!ci, "the Jepsen smoke needs root (network namespaces), and CI=true");
        eprintln!("skipping the Jepsen smoke: it needs root for network namespaces");
        return;
    }
    let arbor = find_arbor_bin().unwrap_or_else(|| {
        panic!(
            "no `arbor` binary in the target dir: build it first (cargo build --bin arbor, or cargo test --workspace)"
        )
    });
    let store = std::env::temp_dir().join(format!("arbor-jepsen-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&store).unwrap();

    phase("register: independent cas registers, partitions (halves) and kills (minority, leader)");
    let (dir, results) = run(&store, &arbor, "register", "1");
    assert_run_is_real(&dir, &results, "register");
    assert_eq!(results["checker"]["model"], "cas-register");

    phase("list-append: Elle transactions, strict serializability, a bridge partition and a majority kill");
    let (dir, results) = run(&store, &arbor, "list-append", "8");
    assert_run_is_real(&dir, &results, "list-append");
    assert_eq!(results["checker"]["checker"], "elle-list-append");

    phase("the test network is gone");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("arbj-"), "leftover links");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("arbj-"), "leftover namespaces");
    std::fs::remove_dir_all(&store).unwrap();
}
