//! The CI smoke of `arbor-bench` (issue #6): every workload runs for a
//! moment against a real 3-node cluster through the bench library, then the
//! storage reference and the report. It proves the bench works end to end;
//! the figures themselves belong to `scripts/bench-vs-etcd.sh` (etcd is not
//! needed here).

mod common;

use std::sync::Arc;
use std::time::Duration;

use arbor::bench::storage::{run_storage, StorageConfig};
use arbor::bench::{self, rss, ArborTarget, LoadConfig, RunRecord, Workload};
use common::{phase, Cluster};

const KEY_SPACE: u64 = 200;

fn config(workload: Workload, pids: &[u32]) -> LoadConfig {
    let mut c = LoadConfig::new(workload);
    c.clients = 4;
    c.warmup = Duration::from_millis(200);
    c.duration = Duration::from_millis(600);
    c.key_space = KEY_SPACE;
    c.op_timeout = Duration::from_secs(10);
    c.pids = pids.to_vec();
    c
}

/// What every run must show, whatever the machine's speed.
fn assert_sane(r: &RunRecord, cfg: &LoadConfig) {
    let what = format!("{} {}: {r:?}", r.system, r.workload);
    assert!(r.ops > 0 && r.ops_per_sec > 0.0, "no operation completed: {what}");
    assert_eq!(r.errors, 0, "errors: {what}");
    let l = &r.latency;
    assert!(l.p50_us > 0 && l.is_ordered(), "percentiles out of order: {what}");
    assert!(l.max_us < cfg.op_timeout.as_micros() as u64, "a latency beyond the op timeout: {what}");
    assert!(l.mean_us >= 1.0 && l.mean_us <= l.max_us as f64, "mean outside [1 µs, max]: {what}");
    assert_eq!(r.rss.len(), 3, "one RSS peak per node: {what}");
    // The kernel batches each thread's RSS counts, so a VmRSS sample may
    // run a few hundred KiB ahead of the VmHWM read later.
    let hwm_covers = |p: &rss::RssPeak| p.hwm_kib + rss::COUNTER_SLACK_KIB >= p.sampled_peak_kib;
    assert!(r.rss.iter().all(|p| p.sampled_peak_kib > 0 && hwm_covers(p)), "RSS: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_against_a_real_cluster_and_reports() {
    let c = Cluster::start(3, &[]);
    c.wait_for_leader(1).await;
    let pids = c.pids();
    let target = Arc::new(ArborTarget::connect(&c.endpoints(), 2, Duration::from_secs(10)).unwrap());
    let mut records = Vec::new();

    phase("put, then get of the preloaded key space: every key is found");
    for workload in [Workload::Put, Workload::Get] {
        let mut cfg = config(workload, &pids);
        cfg.timeline = (workload == Workload::Put).then_some(Duration::from_millis(100));
        let r = bench::run(target.clone(), &cfg).await.unwrap();
        assert_sane(&r, &cfg);
        if let Some(t) = &r.timeline {
            // Every measured operation in one slice, the slices ordered.
            assert_eq!(t.slices.iter().map(|s| s.ops).sum::<u64>(), r.ops, "{t:?}");
            assert!(t.slices.len() >= 6, "600 ms in 100 ms slices: {t:?}");
            assert!(t.slices.iter().all(|s| s.p50_us <= s.p99_us && s.p99_us <= s.max_us), "{t:?}");
            // The run's histogram keeps 3 significant digits.
            let slowest = t.slices.iter().map(|s| s.max_us).max().unwrap_or(0) as f64;
            assert!((slowest - r.latency.max_us as f64).abs() <= r.latency.max_us as f64 * 0.002, "{t:?}");
            let started_ms = r.started_at * 1_000;
            assert!(t.start_unix_ms >= started_ms && t.start_unix_ms < started_ms + 60_000, "{t:?}");
        } else {
            assert!(cfg.timeline.is_none(), "a timeline was asked for");
        }
        records.push(r);
    }
    let get = &records[1];
    assert_eq!(get.preload.as_ref().map(|p| p.keys), Some(KEY_SPACE));
    assert_eq!(get.misses, 0, "every preloaded key is read back");

    phase("get-follower: bounded-staleness reads from every node find every preloaded key");
    let mut cfg = config(Workload::GetFollower, &pids);
    cfg.preload = false;
    // Four clients over two connections: one reads from node 1, one from
    // node 2, so at least one follower answers whichever node leads.
    let r = bench::run(target.clone(), &cfg).await.unwrap();
    assert_sane(&r, &cfg);
    assert_eq!(r.misses, 0, "the get run gave every replica time to apply the preload");
    assert_eq!(r.max_staleness_ms, Some(bench::DEFAULT_MAX_STALENESS.as_millis() as u64));
    records.push(r);

    phase("txn (4 compares + 4 puts), mixed without a new preload, append");
    for workload in [Workload::Txn, Workload::Mixed, Workload::Append] {
        let mut cfg = config(workload, &pids);
        cfg.preload = false;
        let r = bench::run(target.clone(), &cfg).await.unwrap();
        assert_sane(&r, &cfg);
        if workload == Workload::Mixed {
            assert_eq!(r.misses, 0, "mixed reads the keys the get workload preloaded");
            assert_eq!(r.read_ratio, Some(cfg.read_ratio));
        }
        records.push(r);
    }
    let appended = c.client().scan("/a/", 0).await.unwrap();
    assert!(!appended.kvs.is_empty(), "the append workload wrote under /a/");

    phase("the storage reference: synced RocksDB batches in a temp dir");
    let tmp = tempfile::tempdir().unwrap();
    let storage_cfg = StorageConfig {
        writers: 2,
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        dir: Some(tmp.path().to_path_buf()),
        ..Default::default()
    };
    let storage = tokio::task::spawn_blocking(move || run_storage(&storage_cfg)).await.unwrap().unwrap();
    assert!(storage.ops > 0 && storage.latency.is_ordered(), "{storage:?}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the storage reference removes its database");
    records.push(storage);

    phase("the report reads the JSON records back: table and plot");
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("runs")).unwrap();
    for (i, r) in records.iter().enumerate() {
        let file = out.path().join("runs").join(format!("{i:02}-{}-{}.json", r.workload, r.system));
        std::fs::write(file, serde_json::to_vec(r).unwrap()).unwrap();
    }
    let md = bench::report::write_report(out.path()).unwrap();
    for w in Workload::ALL {
        assert!(md.contains(&format!("| {} | 4 | – | ", w.name())), "a row per workload (no etcd here):\n{md}");
    }
    assert!(md.contains("Storage reference") && md.contains("Peak RSS"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("txn: p99 latency"), "{svg}");
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(all["runs"].as_array().map(Vec::len), Some(records.len()));
}
