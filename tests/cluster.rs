//! Integration tests against real 3-node clusters: `arbor server`
//! processes with real gRPC and real RocksDB.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor::client::{op, Txn};
use common::{data_of, log_field, phase, Cluster};
use tonic::Code;

/// Puts `v{i}` at `key(i)` for `i` in `0..n`, one after the other; returns
/// the log index of the last.
async fn put_numbered(client: &arbor::client::Client, n: usize, key: impl Fn(usize) -> String) -> u64 {
    let mut last_index = 0;
    for i in 0..n {
        let r = client.put(key(i), format!("v{i}")).await.unwrap();
        last_index = r.header.unwrap().log_index;
    }
    last_index
}

/// `(applied_on_disk, applied)` from the last "group started" line of a
/// node's log: the applied index found on disk, and the one reached once
/// openraft re-applied the committed entries after it.
fn applied_at_start(log: &str) -> (u64, u64) {
    let line = log.lines().rev().find(|l| l.contains("group started")).expect("a group started");
    (log_field(line, "applied_on_disk"), log_field(line, "applied"))
}

/// Stops every node, asserts that they hold byte-identical data and
/// returns it.
fn stop_identical_replicas(c: &mut Cluster) -> BTreeMap<Vec<u8>, arbor::tree::Record> {
    for i in 0..c.nodes.len() {
        c.stop(i);
    }
    let mut replicas: Vec<_> = c.nodes.iter().map(|n| data_of(&n.dir)).collect();
    assert!(replicas.iter().all(|r| r == &replicas[0]), "replicas diverged");
    replicas.swap_remove(0)
}

/// Restarts every stopped node, waits for group 1's leader and returns a
/// client of the cluster.
async fn restart_all(c: &mut Cluster) -> arbor::client::Client {
    for i in 0..c.nodes.len() {
        c.restart(i);
    }
    c.wait_for_leader(1).await;
    c.client()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_survive_leader_loss_and_full_restart() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(1).await;
    let client = c.client();

    phase("writes through the client are acknowledged with their log index");
    let last_index = put_numbered(&client, 50, |i| format!("/t/k{i:02}")).await;

    phase("every replica applies them");
    c.wait_applied(1, last_index).await;

    phase("a lone client's writes went to the followers during the leader's fsync, once");
    for i in 0..3 {
        let g = c.group_status(i, 1).await.unwrap();
        if c.nodes[i].id == leader {
            // One per follower and write: at least half of the 50 writes.
            assert!(g.eager_appends >= 50, "the leader sent {} eager requests for 50 writes", g.eager_appends);
            // The replication stream's own request for each write is
            // answered with the follower's reply to the eager one.
            assert!(
                g.eager_answers >= 50,
                "{} of the {} eager replies answered the stream's request",
                g.eager_answers,
                g.eager_appends
            );
        } else {
            assert_eq!((g.eager_appends, g.eager_answers), (0, 0), "node {} is a follower", c.nodes[i].id);
        }
    }

    phase("kill -9 the leader; the others elect a new one and keep every write");
    c.kill(c.index_of(leader));
    let new_leader = c.wait_for_leader(1).await;
    assert_ne!(new_leader, leader);
    let survivors: Vec<String> = c.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.addr.clone()).collect();
    let client = c.client_of(&survivors);
    for i in 0..50 {
        let kv = client.get(format!("/t/k{i:02}")).await.unwrap().expect("acknowledged write survives");
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    let r = client.put("/t/after", "x").await.unwrap();

    phase("the killed node restarts from its data dir and catches up");
    c.restart(c.index_of(leader));
    c.wait_applied(1, r.header.unwrap().log_index).await;

    phase("a full-cluster restart keeps every acknowledged write");
    assert_eq!(stop_identical_replicas(&mut c).len(), 51);
    let client = restart_all(&mut c).await;
    let scan = client.scan("/t/", 0).await.unwrap();
    assert_eq!(scan.kvs.len(), 51);
    assert_eq!(client.get("/t/after").await.unwrap().unwrap().value, b"x");
}

/// Commit notices (`arbor::raft::commit_notice`): under a write load the
/// leader answers the AppendEntries that only carry a commit index itself,
/// and an idle follower still learns the last commit at once, not at the
/// next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_each_commit_though_the_leader_answers_commit_notices() {
    // Heartbeats every 4 s (a notice is answered up to 2 s after the
    // follower's last acceptance) and no empty epochs: only the notice the
    // leader still owes can tell an idle follower of the last commit within
    // the 1.5 s allowed below.
    let config = "[raft]\nheartbeat_ms = 4000\nelection_timeout_min_ms = 10000\nelection_timeout_max_ms = 12000\n\
                  [reads]\nclose_interval_ms = 0\n";
    let c = Cluster::start_with_config(3, config, &[]);
    let leader = c.wait_for_leader(1).await;
    let client = c.client();

    phase("eight writers, 40 puts each: the leader answers commit notices itself");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = c.client();
            tokio::spawn(async move { put_numbered(&client, 40, |i| format!("/n/w{w}/k{i:02}")).await })
        })
        .collect();
    let mut last_index = 0;
    for w in writers {
        last_index = last_index.max(w.await.unwrap());
    }
    c.wait_applied(1, last_index).await;
    for i in 0..3 {
        let answered = c.group_status(i, 1).await.unwrap().commit_notices_answered;
        if c.nodes[i].id == leader {
            assert!(answered > 0, "the leader answered no commit notice in 320 writes");
        } else {
            assert_eq!(answered, 0, "node {} is a follower", c.nodes[i].id);
        }
    }

    phase("one write at a time on an idle group: every follower applies it within 1.5 s");
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = client.put(format!("/n/idle{round}"), "x").await.unwrap();
        let index = r.header.unwrap().log_index;
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        for i in 0..3 {
            loop {
                let applied = c.group_status(i, 1).await.map_or(0, |g| g.applied_index);
                if applied >= index {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {} applied {applied} < {index} 1.5 s after the write (round {round})",
                    c.nodes[i].id
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    phase("linearizable reads still see every write");
    for round in 0..3 {
        assert_eq!(client.get(format!("/n/idle{round}")).await.unwrap().unwrap().value, b"x");
    }
    assert_eq!(client.scan("/n/w", 0).await.unwrap().kvs.len(), 320);
}

/// The name of the Raft log's column family (`keys::raft_log_keys`).
const LOG_FAMILY: &str = "keys-05-06";

/// The column families of a stopped node's RocksDB, and how many keys of
/// the Raft log's range each holds.
fn log_keys_per_family(dir: &std::path::Path) -> Vec<(String, usize)> {
    let path = dir.join("db");
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &names).unwrap();
    let log = arbor::keys::raft_log_keys();
    let count = |name: &str| {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(log.start.clone());
        ro.set_iterate_upper_bound(log.end.clone());
        db.iterator_cf_opt(db.cf_handle(name).unwrap(), ro, rocksdb::IteratorMode::Start).count()
    };
    names.iter().map(|name| (name.clone(), count(name))).collect()
}

/// Puts a stopped node's Raft log back where versions before the log's
/// column family kept it: in the default family, the log family dropped.
fn move_log_to_default_family(dir: &std::path::Path) {
    let path = dir.join("db");
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &names).unwrap();
    let mut batch = rocksdb::WriteBatch::default();
    let family = db.cf_handle(LOG_FAMILY).unwrap();
    for item in db.iterator_cf(family, rocksdb::IteratorMode::Start) {
        let (k, v) = item.unwrap();
        batch.put(k, v);
    }
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).unwrap();
    db.drop_cf(LOG_FAMILY).unwrap();
}

/// The name of the history's column family (`keys::history_keys`).
const HISTORY_FAMILY: &str = "keys-23-24";

/// Lays a stopped node's versions out as the layouts before current
/// versions and history kept them: every version of a key under a
/// `Version` key (the history's family dropped), each key's current record
/// also under its `Data` key, plus `legacy`, a record written before
/// versions existed (a `Data` key alone).
fn write_legacy_layout(dir: &std::path::Path, legacy: (&[u8], &arbor::tree::Record)) {
    use arbor::keys::{self, Key};
    use arbor::tree::{encode_record, encode_version, stored_position, stored_record};
    let path = dir.join("db");
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &names).unwrap();
    let mut batch = rocksdb::WriteBatch::default();
    let mut version = |user: &[u8], stored: &[u8]| {
        let (stamp, pos) = stored_position(stored).unwrap();
        let record = stored_record(stored).unwrap();
        batch.put(Key::Version(user, stamp, pos).encode(), encode_version(record.as_ref()));
        record
    };
    let (start, end) = keys::current_bounds(b"", b"");
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_iterate_lower_bound(start.clone());
    ro.set_iterate_upper_bound(end.clone());
    let mut data = Vec::new();
    for item in db.iterator_opt(rocksdb::IteratorMode::Start, ro) {
        let (k, v) = item.unwrap();
        let user = keys::decode_current(&k).unwrap().to_vec();
        if let Some(record) = version(&user, &v) {
            data.push((user, record));
        }
    }
    for item in db.iterator_cf(db.cf_handle(HISTORY_FAMILY).unwrap(), rocksdb::IteratorMode::Start) {
        let (k, v) = item.unwrap();
        let (_, _, user) = keys::decode_history(&k).unwrap();
        version(&user, &v);
    }
    for (user, record) in data {
        batch.put(Key::Data(&user).encode(), encode_record(&record));
    }
    batch.put(Key::Data(legacy.0).encode(), encode_record(legacy.1));
    batch.delete_range(start, end);
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).unwrap();
    db.drop_cf(HISTORY_FAMILY).unwrap();
}

/// How many `Data` and `Version` keys a stopped node's RocksDB holds, and
/// how many keys its history's family.
fn legacy_and_history_keys(dir: &std::path::Path) -> (usize, usize) {
    let path = dir.join("db");
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &names).unwrap();
    let legacy = db.prefix_iterator(arbor::keys::data_prefix()).take_while(|kv| kv.as_ref().unwrap().0[0] <= 0x21);
    let history = db.cf_handle(HISTORY_FAMILY).map_or(0, |f| db.iterator_cf(f, rocksdb::IteratorMode::Start).count());
    (legacy.count(), history)
}

/// An upgrade: nodes whose data directories hold the Raft log in the
/// default column family, every version of a key under a `Version` key and
/// each key's current record under a `Data` key, as earlier versions wrote
/// them, killed with applied state only in their
/// memtables, so that the restart must re-apply the log it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_an_earlier_layout_is_converted_at_start() {
    // Those versions kept the log in RocksDB.
    let mut c = Cluster::start_with_config(3, "[raft]\nlog_files = false\n", &[]);
    c.wait_for_leader(1).await;
    let client = c.client();
    put_numbered(&client, 40, |i| format!("/up/k{i:02}")).await;
    for value in ["h1", "h2", "h3"] {
        client.put("/up/h", value).await.unwrap();
    }
    let last_index = client.put("/up/h", "h4").await.unwrap().header.unwrap().log_index;
    c.wait_applied(1, last_index).await;
    let legacy = arbor::tree::Record { value: b"old".to_vec().into(), version: 3, create_stamp: 7, mod_stamp: 9 };

    phase("kill -9 every node and lay their logs and records out as before");
    for i in 0..3 {
        c.kill(i);
        let before = log_keys_per_family(&c.nodes[i].dir);
        let in_family = before.iter().find(|(name, _)| name == LOG_FAMILY).map_or(0, |f| f.1);
        assert!(in_family as u64 >= last_index, "node {}: {before:?}", c.nodes[i].id);
        write_legacy_layout(&c.nodes[i].dir, (b"/up/legacy", &legacy));
        move_log_to_default_family(&c.nodes[i].dir);
        assert_eq!(log_keys_per_family(&c.nodes[i].dir), [("default".to_string(), in_family)]);
        let (legacy_keys, history) = legacy_and_history_keys(&c.nodes[i].dir);
        assert!(legacy_keys >= 1 && history == 0, "node {}: {legacy_keys} legacy keys", c.nodes[i].id);
    }

    phase("restarted, the nodes re-apply the moved log and keep every write");
    let client = restart_all(&mut c).await;
    let scan = client.scan("/up/k", 0).await.unwrap();
    assert_eq!(scan.kvs.len(), 40);
    for (i, kv) in scan.kvs.iter().enumerate() {
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    assert_eq!(client.get("/up/h").await.unwrap().unwrap().value, b"h4");
    let kv = client.get("/up/legacy").await.unwrap().expect("the record written before versions");
    assert_eq!((kv.value, kv.version), (legacy.value.to_vec(), legacy.version));
    let r = client.put("/up/after", "x").await.unwrap();
    c.wait_applied(1, r.header.unwrap().log_index).await;

    phase("the log is in its own family again, versions are current ones and history, and the replicas agree");
    assert_eq!(stop_identical_replicas(&mut c).len(), 43);
    for node in &c.nodes {
        let (legacy_keys, history) = legacy_and_history_keys(&node.dir);
        assert_eq!(legacy_keys, 0, "node {}", node.id);
        assert!(history >= 3, "node {}: /up/h's three older versions, {history} in all", node.id);
        let families = log_keys_per_family(&node.dir);
        let default = families.iter().find(|(name, _)| name == "default").unwrap().1;
        let log = families.iter().find(|(name, _)| name == LOG_FAMILY).expect("the log's family").1;
        assert_eq!(default, 0, "node {}: {families:?}", node.id);
        assert!(log as u64 > last_index, "node {}: {families:?}", node.id);
    }
}

/// Apply batches skip RocksDB's WAL (the Raft log is the state machine's
/// write-ahead log), so kill -9 loses the applied state since the last
/// memtable flush, and a restarted replica re-applies the log after it. A
/// snapshot is recorded only after a flush: logs purged up to a snapshot
/// never hold entries that a replica killed later still has to re-apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_killed_after_purging_its_logs_comes_back_with_every_write() {
    let config =
        "[reads]\nclose_interval_ms = 0\n[raft]\nsnapshot_every_entries = 40\nkeep_entries_after_snapshot = 5\n";
    let mut c = Cluster::start_with_config(3, config, &[]);
    c.wait_for_leader(1).await;
    let client = c.client();

    phase("300 acknowledged puts, one epoch each: several snapshots, logs purged");
    let last_index = put_numbered(&client, 300, |i| format!("/p/k{i:03}")).await;
    c.wait_applied(1, last_index).await;
    for i in 0..3 {
        c.wait_group(i, 1, "purged its log", |s| s.purged_index > 100).await;
    }

    // A snapshot is a flush and a record, taken once the log grew by 40
    // entries: wait until some node's last one is within 30 entries of its
    // log's end (one more put every two looks of the policy gets there), so
    // that 5 more puts take no snapshot, and flush nothing, on that node.
    phase("settle until a node's snapshot is close to its log's end, then 5 more puts: applied, not flushed");
    let (mut last_index, mut settled) = (last_index, false);
    loop {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut close = false;
        for i in 0..3 {
            let s = c.group_status(i, 1).await.expect("status");
            close |= s.last_log_index.saturating_sub(s.snapshot_index) < 30;
        }
        if close {
            break;
        }
        last_index = client.put("/p/settle", "").await.unwrap().header.unwrap().log_index;
        settled = true;
    }
    last_index = last_index.max(put_numbered(&client, 5, |i| format!("/p/late{i:03}")).await);
    c.wait_applied(1, last_index).await;

    phase("kill -9 all three at once (no memtable flushed since the last snapshot), restart them");
    for i in 0..3 {
        c.kill(i);
    }
    let client = restart_all(&mut c).await;
    // The kill lost applied state (it was past the last flush) on at least
    // one node, which re-applied it from the log while starting: else this
    // test would not exercise what it is about.
    let reapplied: Vec<(u64, u64)> = (0..3).map(|i| applied_at_start(&c.log_of(i))).collect();
    eprintln!("(applied on disk, applied) when each node started again: {reapplied:?}");
    assert!(reapplied.iter().any(|(on_disk, applied)| on_disk < applied), "(on disk, applied) at start: {reapplied:?}");
    let numbered = |prefix: &'static str, n: usize| (0..n).map(move |i| (format!("{prefix}{i:03}"), format!("v{i}")));
    for (key, value) in numbered("/p/k", 300).chain(numbered("/p/late", 5)) {
        let kv = client.get(&key).await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
        assert_eq!(kv.map(|kv| kv.value), Some(value.into_bytes()), "{key}");
    }
    let r = client.put("/p/fence", "").await.unwrap();
    c.wait_applied(1, r.header.unwrap().log_index).await;

    phase("the replicas hold the same keys: 300, 5 late ones, the fence (and /p/settle if it was written)");
    assert_eq!(stop_identical_replicas(&mut c).len(), 306 + usize::from(settled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_ranges_start_one_group_per_range() {
    let c = Cluster::start(3, &["--initial-ranges", "/m,/t"]);
    for g in 1..=3 {
        c.wait_for_leader(g).await;
    }
    let client = c.client();

    phase("each group serves the keys of its range");
    for (key, group) in [("/a", 1), ("/n", 2), ("/z", 3)] {
        let r = client.put(key, key).await.unwrap();
        assert_eq!(r.header.unwrap().group_id, group, "{key} routed to group {group}");
        assert_eq!(client.get(key).await.unwrap().unwrap().value, key.as_bytes());
    }
    let s = client.status().await.unwrap();
    assert_eq!(s.groups.len(), 3);
    assert!(s.groups.iter().all(|g| g.leader != 0 && g.epoch > 0), "{s:?}");

    phase("a transaction over two ranges is refused, naming them");
    let err = client.txn(Txn::new().then(op::put("/a", "1")).then(op::put("/z", "1"))).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("group 1") && msg.contains("group 3"), "{msg}");
    assert_eq!(client.get("/a").await.unwrap().unwrap().value, b"/a", "nothing changed");
    let err = client.scan("/", 0).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_a_write_load_loses_nothing_and_applies_nothing_twice() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(1).await;
    let client = Arc::new(c.client());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));

    phase("4 writers increment 8 counters; each acknowledged increment is counted");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = w;
                let mut unknown = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = i % 8;
                    match client.increment(format!("/ctr/{k}"), 1).await {
                        Ok(_) => {
                            acked[k].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => unknown += 1,
                    }
                    i += 1;
                }
                unknown
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    phase("kill -9 a follower mid-load, then restart it");
    let leader = c.wait_for_leader(1).await;
    let victim = c.nodes.iter().position(|n| n.id != leader).unwrap();
    c.kill(victim);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.restart(victim);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    phase("kill -9 the leader mid-load, then restart it");
    let leader = c.wait_for_leader(1).await;
    c.kill(c.index_of(leader));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart(c.index_of(leader));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut unknown = 0;
    for w in writers {
        unknown += w.await.unwrap();
    }

    phase("every replica converges; counters hold every acknowledged increment, at most the unknown ones more");
    c.wait_for_leader(1).await;
    let r = client.put("/ctr/fence", "").await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.wait_applied(1, r.header.unwrap().log_index).await;
    let data = stop_identical_replicas(&mut c);
    let total_acked: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    eprintln!("acknowledged {total_acked} increments, {unknown} with unknown outcome");
    assert!(total_acked > 50, "the load made progress ({total_acked} increments)");
    let mut total_applied = 0;
    for (k, a) in acked.iter().enumerate() {
        let record = &data[format!("/ctr/{k}").as_bytes()];
        let value: u64 = String::from_utf8(record.value.to_vec()).unwrap().parse().unwrap();
        let acked = a.load(Ordering::Relaxed);
        assert!(value >= acked, "counter {k}: {value} < {acked} acknowledged increments (lost write)");
        assert_eq!(record.version, value, "counter {k}: one version per applied increment");
        total_applied += value;
    }
    eprintln!("applied {total_applied} increments");
    assert!(
        total_applied <= total_acked + unknown,
        "{total_applied} applied > {total_acked} acked + {unknown} unknown: applied twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = Cluster::start(1, &[]);
    c.wait_for_leader(1).await;
    let client = c.client();
    client.put("/keep", "1").await.unwrap();
    let before = client.scan("/", 0).await.unwrap();

    let cases: Vec<(&str, Txn, &str)> = vec![
        ("key over 4 KiB", Txn::new().then(op::put(format!("/{}", "k".repeat(5000)), "v")), "limits.max_key_bytes"),
        ("value over 1 MiB", Txn::new().then(op::put("/v", vec![b'x'; (1 << 20) + 1])), "limits.max_value_bytes"),
        (
            "too many ops",
            (0..129).fold(Txn::new(), |t, i| t.then(op::put(format!("/o/{i}"), ""))),
            "limits.max_ops_per_txn",
        ),
        ("empty key", Txn::new().then(op::put("", "v")), "empty"),
        ("invalid UTF-8", Txn::new().then(op::put(b"/\xff\xfe".as_slice(), "v")), "UTF-8"),
        ("not a path", Txn::new().then(op::put("users", "v")), "start with '/'"),
        ("no ops", Txn::new(), "no ops"),
    ];
    for (what, txn, needle) in cases {
        let err = client.txn(txn).await.expect_err(what);
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{what}: {err}");
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }

    phase("a request over the size limit is refused by the transport");
    let err = client.put("/big", vec![b'x'; 5 << 20]).await.unwrap_err();
    assert!(matches!(err.code(), Some(Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument)), "{err}");

    phase("an increment of a non-integer aborts the whole transaction");
    client.put("/text", "abc").await.unwrap();
    let err = client.txn(Txn::new().then(op::put("/half2", "x")).then(op::increment("/text", 1))).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("not a signed 64-bit integer"), "{err}");
    assert!(client.get("/half2").await.unwrap().is_none(), "nothing of an aborted transaction is applied");

    phase("a malformed protobuf is refused with a decode error");
    let err =
        common::raw_unary(&c.nodes[0].addr, "/arbor.v1.Kv/Put", vec![0x0a, 0xff, 0xff, 0xff, 0x01]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed protobuf message"), "{err:?}");
    let err = common::raw_unary(&c.nodes[0].addr, "/arbor.v1.Kv/Txn", vec![0x12, 0x02, 0x3a, 0x00]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "an op with an empty append is validated: {err:?}");

    phase("a client of another cluster is refused");
    let other = arbor::client::Client::with_options(
        c.endpoints(),
        arbor::client::ClientOptions { cluster_id: Some("other".into()), ..Default::default() },
    )
    .unwrap();
    let err = other.get("/keep").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(err.to_string().contains("wrong cluster"), "{err}");

    let after = client.scan("/", 0).await.unwrap();
    let keys = |r: &arbor::client::pb::RangeResponse| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    let mut expected = keys(&before);
    expected.push(b"/text".to_vec());
    expected.sort();
    assert_eq!(keys(&after), expected, "only the valid requests changed the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_executes_once() {
    let c = Cluster::start(1, &[]);
    c.wait_for_leader(1).await;
    let client = c.client();
    let txn = || Txn::new().then(op::increment("/once", 5)).request_id("fixed-id-1");
    let first = client.txn(txn()).await.unwrap();
    let second = client.txn(txn()).await.unwrap();
    assert_eq!(first.results, second.results, "the retry returns the first result");
    assert_eq!(client.get("/once").await.unwrap().unwrap().value, b"5");
    let scan = client.list("/").await.unwrap();
    assert!(scan.kvs.iter().any(|kv| kv.key == b"/once"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replaced_record_comes_back_only_when_asked_for() {
    use arbor_proto::op_result::Result as R;
    let c = Cluster::start(1, &[]);
    c.wait_for_leader(1).await;
    let client = c.client();
    let first = client.put_prev("/p", "a").await.unwrap();
    assert_eq!((first.prev, first.version), (None, 1), "nothing to replace yet");
    let plain = client.put("/p", "b").await.unwrap();
    assert_eq!((plain.prev, plain.version), (None, 2), "a plain put returns no previous record");
    let asked = client.put_prev("/p", "c").await.unwrap();
    let prev = asked.prev.expect("the replaced record");
    assert_eq!((prev.key.as_slice(), prev.value.as_slice(), prev.version), (&b"/p"[..], &b"b"[..], 2));
    assert_eq!(asked.version, 3);

    let txn = Txn::new().then(op::put("/p", "d")).then(op::put_prev("/p", "e")).then(op::append("/p", "f"));
    let results = client.txn(txn).await.unwrap().results;
    let puts: Vec<_> = results
        .iter()
        .map(|r| match &r.result {
            Some(R::Put(p)) | Some(R::Append(p)) => (p.prev.as_ref().map(|kv| kv.value.clone()), p.version),
            other => panic!("unexpected result {other:?}"),
        })
        .collect();
    assert_eq!(puts, [(None, 4), (Some(b"d".to_vec()), 5), (None, 6)]);
    assert_eq!(client.get("/p").await.unwrap().unwrap().value, b"ef");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_keeps_epochs_moving_forward() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(1).await;
    let client = c.client();
    let mut last = (0, 0);
    for i in 0..20 {
        let h = client.put(format!("/r/{i}"), "a").await.unwrap().header.unwrap();
        last = (h.log_index, h.epoch);
    }

    phase("kill -9 the leader and restart it before the others time out");
    // openraft restores a restarted leader as leader of its old term; its
    // sequencer must continue that term's epochs, not restart them at 1.
    let i = c.index_of(leader);
    c.kill(i);
    c.restart(i);
    for round in 0..3 {
        for k in 0..20 {
            let h = client.put(format!("/r/{k}"), format!("b{round}")).await.unwrap().header.unwrap();
            assert!(h.log_index > last.0 && h.epoch > last.1, "epochs move forward: {h:?} after {last:?}");
            last = (h.log_index, h.epoch);
        }
    }
    c.wait_applied(1, last.0).await;
    let s = client.status().await.unwrap();
    assert_eq!(s.groups[0].epoch_gaps, 0);
    for k in 0..20 {
        assert_eq!(client.get(format!("/r/{k}")).await.unwrap().unwrap().value, b"b2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_keep_epochs_in_log_order() {
    // Pipelined epochs must reach the Raft log in the order they were
    // numbered, or every replica stops on the "epoch from the past" check.
    let c = Cluster::start(3, &[]);
    c.wait_for_leader(1).await;
    let client = Arc::new(c.client());
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let writers: Vec<_> = (0..128)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while std::time::Instant::now() < deadline {
                    client.put(format!("/load/{w}"), done.to_string()).await.map_err(|e| e.to_string())?;
                    done += 1;
                }
                Ok::<u64, String>(done)
            })
        })
        .collect();
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap().unwrap_or_else(|e| panic!("a write failed: {e}\n{}", c.logs()));
    }
    eprintln!("{total} puts from 128 writers");
    let s = client.status().await.unwrap();
    assert!(s.groups[0].epoch > 0 && s.groups[0].epoch_gaps == 0, "{:?}", s.groups[0]);
    let r = client.put("/load/fence", "").await.unwrap();
    c.wait_applied(1, r.header.unwrap().log_index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_batch_stream_answers_each_call_as_its_unary_form_would() {
    use arbor::client::pb::{self, kv_batch_client::KvBatchClient, kv_call::Call, kv_reply::Reply};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    let mut c = Cluster::start_with_config(1, "[limits]\nmax_value_bytes = 1000\nmax_request_bytes = 8192\n", &[]);
    c.wait_for_leader(1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvBatchClient::new(channel);
    let call = |id, call| pb::KvCall { id, call: Some(call) };
    let put = |key: &str, value: Vec<u8>, id: &str| {
        Call::Put(pb::PutRequest { key: key.into(), value, request_id: id.into(), prev_kv: false })
    };
    let get = |key: &str| Call::Get(pb::GetRequest { key: key.into(), read: None });
    let error = |r: &Reply| match r {
        Reply::Error(e) => (tonic::Code::from(e.code), e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    };

    phase("calls of every kind in one message, each answered once under its id");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut replies = kv.call(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    let incr = Call::Txn(Txn::new().then(op::increment("/b/n", 2)).request_id("r2").0);
    tx.send(pb::KvCalls {
        calls: vec![
            call(1, put("/b/1", b"one".to_vec(), "r1")),
            call(2, incr),
            call(3, put("", b"v".to_vec(), "r3")),
            call(4, put("/b/4", vec![b'x'; 1001], "r4")),
            call(5, put("/b/5", vec![b'x'; 9000], "r5")),
            pb::KvCall { id: 6, call: None },
        ],
    })
    .unwrap();
    let mut answers = BTreeMap::new();
    while answers.len() < 6 {
        for r in replies.message().await.unwrap().expect("a reply message").replies {
            assert!(answers.insert(r.id, r.reply.expect("a reply")).is_none(), "call {} answered twice", r.id);
        }
    }
    assert!(matches!(&answers[&1], Reply::Put(p) if p.version == 1), "{:?}", answers[&1]);
    assert!(matches!(&answers[&2], Reply::Txn(t) if t.succeeded), "{:?}", answers[&2]);
    let (code, msg) = error(&answers[&3]);
    assert!(code == tonic::Code::InvalidArgument && msg.contains("empty"), "{code:?} {msg}");
    let (code, msg) = error(&answers[&4]);
    assert!(code == tonic::Code::InvalidArgument && msg.contains("limits.max_value_bytes"), "{code:?} {msg}");
    let (code, msg) = error(&answers[&5]);
    assert!(code == tonic::Code::OutOfRange && msg.contains("limits.max_request_bytes"), "{code:?} {msg}");
    let (code, msg) = error(&answers[&6]);
    assert!(code == tonic::Code::InvalidArgument && msg.contains("no request"), "{code:?} {msg}");

    phase("later calls on the same stream see the earlier writes; closing the stream ends it after the replies");
    let range = Call::Range(pb::RangeRequest { prefix: b"/b/".to_vec(), ..Default::default() });
    tx.send(pb::KvCalls { calls: vec![call(7, get("/b/1")), call(8, get("/b/n")), call(9, range)] }).unwrap();
    drop(tx);
    let mut answers = BTreeMap::new();
    while let Some(msg) = replies.message().await.unwrap() {
        answers.extend(msg.replies.into_iter().map(|r| (r.id, r.reply.unwrap())));
    }
    let value = |r: &Reply| match r {
        Reply::Get(g) => g.kv.as_ref().map(|kv| kv.value.clone()),
        other => panic!("expected a get, got {other:?}"),
    };
    assert_eq!(value(&answers[&7]), Some(b"one".to_vec()));
    assert_eq!(value(&answers[&8]), Some(b"2".to_vec()));
    assert!(matches!(&answers[&9], Reply::Range(r) if r.kvs.len() == 2), "{:?}", answers[&9]);

    phase("a message over the call limit ends the stream with an error naming the limit");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut replies = kv.call(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(pb::KvCalls { calls: (0..1025).map(|i| call(i, get("/b/1"))).collect() }).unwrap();
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("1025 calls; the limit is 1024"), "{err:?}");

    phase("a stream naming another cluster is refused");
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::KvCalls>();
    let mut req = tonic::Request::new(UnboundedReceiverStream::new(rx));
    req.metadata_mut().insert(arbor::api::CLUSTER_ID_HEADER, "other".parse().unwrap());
    let err = kv.call(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    phase("the client's concurrent calls share its stream, each with its own answer");
    let client = Arc::new(c.client());
    let writes = (0..200).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.put(format!("/c/{i}"), format!("v{i}")).await.unwrap() })
    });
    for w in futures::future::join_all(writes).await {
        assert_eq!(w.unwrap().version, 1);
    }
    let reads = (0..200).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { (i, client.get(format!("/c/{i}")).await.unwrap()) })
    });
    for r in futures::future::join_all(reads).await {
        let (i, kv) = r.unwrap();
        assert_eq!(kv.unwrap().value, format!("v{i}").into_bytes());
    }

    phase("a stopping node ends the client's open stream instead of waiting for it");
    c.stop_promptly(0, "the client's stream");
}
