//! The `amnesia` nemesis as a sensitivity test of `--unsafe-volatile-writes` (the server
//! writes its Raft log and state machine without the RocksDB WAL, so kill -9 loses them).
//!
//! `amnesia` cuts a minority of non-leaders off, lets the rest commit writes for 2 s, kills
//! -9 the rest together, restarts them and heals. With the switch, the killed nodes come
//! back without the writes they acknowledged, and the lagging node wins an election with
//! their votes: the `set` workload's final read misses acknowledged adds, and the run must
//! be **invalid**. The same run without the switch must be **valid**: the nemesis alone
//! loses nothing (a node's log survives kill -9), so the invalid verdict is the switch's.
//!
//! No root needed (`--net auto` falls back to loopback proxies); runs are serialised by the
//! harness's machine-wide lock. About 2 × 18 s.

mod common;

use common::arbor_bin;
use serde_json::Value;
use std::process::Command;
use std::time::Instant;

/// Runs a 15 s set workload on 3 nodes under `amnesia` (with `extra` flags); returns the exit
/// code, results.json and the nemesis events, and removes the run's store.
fn run(name: &str, extra: &[&str]) -> (Option<i32>, Value, Vec<Value>) {
    let store = std::env::temp_dir().join(format!("arbor-jepsen-amnesia-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor-jepsen"))
        .args(["run", "--workload", "set", "--nemesis", "amnesia", "--nodes", "3", "--time", "15"])
        .args(["--nemesis-interval", "3", "--recovery", "2", "--rate", "120", "--seed", "1", "--quiet"])
        .arg("--arbor-bin")
        .arg(arbor_bin())
        .arg("--store")
        .arg(&store)
        .args(extra)
        .output()
        .expect("run arbor-jepsen");
    eprintln!(
        "{}{}({name}: {:.1} s)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed().as_secs_f64()
    );
    let dir = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).expect("a run folder");
    let results: Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    let nemesis: Vec<Value> = std::fs::read_to_string(dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["process"] == "nemesis")
        .collect();
    let code = out.status.code();
    if (name == "durable" && code == Some(0)) || (name == "volatile" && code == Some(1)) {
        std::fs::remove_dir_all(&store).unwrap();
    } else {
        eprintln!("{name}: run folder kept in {}", store.display());
    }
    (code, results, nemesis)
}

/// The amnesia sequence really ran: a checkpoint, then isolate / kill / restart / heal, with
/// no error, the killed nodes being every node but the lagging one.
fn assert_amnesia_ran(name: &str, nemesis: &[Value]) {
    let fs: Vec<&str> = nemesis.iter().map(|e| e["f"].as_str().unwrap()).collect();
    assert_eq!(fs.first(), Some(&"amnesia-checkpoint"), "{name}: {nemesis:?}");
    let starts: Vec<&Value> = nemesis.iter().filter(|e| e["f"] == "start-amnesia").collect();
    assert!(!starts.is_empty(), "{name}: {nemesis:?}");
    for s in &starts {
        assert_eq!(s["value"]["lagging"].as_array().unwrap().len(), 1, "{name}: {s}");
        assert_eq!(s["value"]["to-kill"].as_array().unwrap().len(), 2, "{name}: {s}");
        assert!(
            s["value"]["leader"].is_null()
                || !s["value"]["lagging"].as_array().unwrap().contains(&s["value"]["leader"])
        );
    }
    for f in ["amnesia-kill", "amnesia-restart", "stop-amnesia"] {
        assert_eq!(fs.iter().filter(|&&x| x == f).count(), starts.len(), "{name}: {f} in {nemesis:?}");
    }
    assert!(
        nemesis.iter().all(|e| e["value"]["error"].is_null() && e["value"]["errors"].is_null()),
        "{name}: {nemesis:?}"
    );
    assert!(!fs.contains(&"amnesia-skipped"), "{name}: {nemesis:?}");
}

#[test]
fn amnesia_loses_acknowledged_writes_only_with_volatile_writes() {
    eprintln!("--- set on 3 nodes, amnesia every 3 s, durable writes: nothing may be lost");
    let (code, results, nemesis) = run("durable", &[]);
    assert_eq!(code, Some(0), "the amnesia nemesis alone must be valid: {results:#}");
    assert_eq!(results["valid?"], Value::Bool(true));
    assert!(results["ops"]["ok"].as_u64().unwrap() >= 100, "too few ok ops: {}", results["ops"]);
    assert_amnesia_ran("durable", &nemesis);
    assert!(nemesis.iter().all(|e| e["f"] != "crash"), "no server may crash: {nemesis:?}");

    eprintln!("--- the same with --unsafe-volatile-writes: acknowledged adds lost, invalid");
    let (code, results, nemesis) = run("volatile", &["--server-flag=--unsafe-volatile-writes"]);
    assert_eq!(code, Some(1), "volatile writes must be caught: {results:#}");
    assert_eq!(results["valid?"], Value::Bool(false));
    assert!(results["server-flags"].as_array().unwrap().contains(&Value::from("--unsafe-volatile-writes")));
    let lost = results["checker"]["lost"].as_array().map_or(0, Vec::len);
    assert!(lost > 0, "the set checker itself must see lost adds: {:#}", results["checker"]);
    assert_amnesia_ran("volatile", &nemesis);
}
