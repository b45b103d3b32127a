//! A short real run of the watch workload: 3 nodes under partitions and kills, writers
//! putting and deleting under `/jepsen/watch/`, one watcher per node plus a roaming and a
//! late one. It must be valid, with every watcher caught up on the same changes.
//!
//! Then the checker is shown to notice when that real history is broken the ways a buggy
//! watch would break it: one change missing from one watcher, two changes of a key
//! swapped, a change delivered twice (`arbor-jepsen check --model watch` on the edited
//! history, which must exit 1 naming the anomaly).
//!
//! No root needed: with root the run uses network namespaces (`--net auto`), without it
//! loopback proxies. It runs the `arbor` server binary of the same target dir (`cargo test
//! --workspace` builds it).

mod common;

use common::{arbor_bin, phase};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// `arbor-jepsen check --model watch` of `history`: (exit code, verdict).
fn check(path: &Path, history: &[Value]) -> (i32, Value) {
    let text: String = history.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor-jepsen"))
        .args(["check", "--model", "watch"])
        .arg(path)
        .output()
        .expect("run arbor-jepsen check");
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).expect("a JSON verdict"))
}

/// The chunks (`ok` watch completions) of watcher `name`, as indices into `history`.
fn chunks(history: &[Value], name: &str) -> Vec<usize> {
    (0..history.len())
        .filter(|&i| {
            let e = &history[i];
            e["f"] == "watch" && e["type"] == "ok" && e["value"]["watcher"] == name
        })
        .collect()
}

/// (chunk, position) of every event of watcher `name`, in stream order.
fn events(history: &[Value], name: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for c in chunks(history, name) {
        let n = history[c]["value"]["events"].as_array().unwrap().len();
        out.extend((0..n).map(|p| (c, p)));
    }
    out
}

/// The event at (chunk, position).
fn event(history: &[Value], at: (usize, usize)) -> &Value {
    &history[at.0]["value"]["events"][at.1]
}

fn event_mut(history: &mut [Value], at: (usize, usize)) -> &mut Value {
    &mut history[at.0]["value"]["events"][at.1]
}

fn anomaly_types(verdict: &Value) -> Vec<String> {
    verdict["anomaly-types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

#[test]
fn all_watchers_see_the_same_changes_under_partitions_and_kills() {
    let store = std::env::temp_dir().join(format!("arbor-jepsen-watch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();

    phase("watch on 3 nodes for 10 s: partitions and kills every 1.5 s, 5 watchers");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor-jepsen"))
        .args(["run", "--workload", "watch", "--nemesis", "partition,kill", "--nodes", "3"])
        .args(["--time", "10", "--nemesis-interval", "1.5", "--recovery", "2", "--rate", "150", "--seed", "3"])
        .args(["--quiet", "--arbor-bin"])
        .arg(arbor_bin())
        .arg("--store")
        .arg(&store)
        .output()
        .expect("run arbor-jepsen");
    eprintln!(
        "{}{}(watch: {:.1} s)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0), "watch run not valid; folder in {}", store.display());
    let dir = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    let results: Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["valid?"], Value::Bool(true), "{results:#}");
    let checker = &results["checker"];
    assert_eq!(checker["checker"], "watch");
    assert!(checker["writes"]["put"]["ok"].as_u64().unwrap() >= 100, "{}", checker["writes"]);
    assert!(checker["writes"]["delete"]["ok"].as_u64().unwrap() >= 10, "{}", checker["writes"]);

    phase("every watcher caught up, on the same number of changes; the roaming one moved");
    let watchers = checker["watchers"].as_array().unwrap();
    let names: HashSet<&str> = watchers.iter().map(|w| w["watcher"].as_str().unwrap()).collect();
    assert_eq!(names, HashSet::from(["n1", "n2", "n3", "roaming", "late"]));
    assert!(watchers.iter().all(|w| w["caught-up"] == json!(true)), "{watchers:#?}");
    let counts: HashSet<u64> = watchers.iter().map(|w| w["events"].as_u64().unwrap()).collect();
    assert_eq!(counts.len(), 1, "watchers saw different numbers of changes: {watchers:#?}");
    let roaming = watchers.iter().find(|w| w["watcher"] == "roaming").unwrap();
    assert!(roaming["resumes"].as_u64().unwrap() >= 2, "{roaming}");
    let text = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    for fault in ["start-partition", "start-kill", "stop-kill"] {
        assert!(text.contains(&format!(r#""f":"{fault}""#)), "no {fault} in the history");
    }
    assert!(std::fs::read_to_string(dir.join("report.html")).unwrap().contains("VALID"));

    let history: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let edited = dir.join("edited.jsonl");
    let (code, verdict) = check(&edited, &history);
    assert_eq!((code, verdict["valid?"].clone()), (0, json!(true)), "the CLI agrees with the run: {verdict:#}");
    let ok_puts: HashSet<(Value, Value)> = history
        .iter()
        .filter(|e| e["f"] == "put" && e["type"] == "ok")
        .map(|e| (e["key"].clone(), e["value"].clone()))
        .collect();
    let n2 = events(&history, "n2");
    let is_ok_put = |at: (usize, usize)| {
        let e = event(&history, at);
        ok_puts.contains(&(e[0].clone(), e[1].clone()))
    };

    phase("one acknowledged put missing from n2's stream: lost, and n2 diverges");
    let mut h = history.clone();
    let at = *n2.iter().find(|&&at| is_ok_put(at)).expect("an ok put watched by n2");
    h[at.0]["value"]["events"].as_array_mut().unwrap().remove(at.1);
    let (code, verdict) = check(&edited, &h);
    let types = anomaly_types(&verdict);
    assert_eq!(code, 1, "{verdict:#}");
    assert!(types.contains(&"lost".into()) && types.contains(&"divergent".into()), "{types:?}");
    assert_eq!(verdict["anomalies"]["lost"][0]["missing-from"], json!(["n2"]));

    phase("two changes of one key swapped in n2's stream: n2 diverges");
    let mut h = history.clone();
    let (i, j) = (0..n2.len())
        .find_map(|i| {
            let key = &event(&history, n2[i])[0];
            let j = (i + 1..n2.len()).find(|&j| event(&history, n2[j])[0] == *key)?;
            (is_ok_put(n2[i]) && is_ok_put(n2[j])).then_some((i, j))
        })
        .expect("two watched puts of one key");
    let (a, b) = (event(&h, n2[i]).clone(), event(&h, n2[j]).clone());
    *event_mut(&mut h, n2[i]) = b;
    *event_mut(&mut h, n2[j]) = a;
    let (code, verdict) = check(&edited, &h);
    assert_eq!(code, 1, "{verdict:#}");
    assert!(anomaly_types(&verdict).contains(&"divergent".into()), "{verdict:#}");

    phase("a change delivered twice to the roaming watcher: duplicated");
    let mut h = history.clone();
    let roam = events(&history, "roaming");
    let at = *roam[roam.len() / 2..].iter().find(|&&at| is_ok_put(at)).expect("an ok put watched by roaming");
    let copy = event(&h, at).clone();
    h[at.0]["value"]["events"].as_array_mut().unwrap().insert(at.1, copy);
    let (code, verdict) = check(&edited, &h);
    assert_eq!(code, 1, "{verdict:#}");
    assert!(anomaly_types(&verdict).contains(&"duplicated".into()), "{verdict:#}");

    std::fs::remove_dir_all(&store).unwrap();
}
