//! Read modes, clock skew and watches against real 3-node clusters
//! (issue #4): snapshot reads agree on every replica and never answer early,
//! skewed clocks break neither linearizability nor stamp monotonicity, and
//! watchers see every committed change exactly once, in order per key.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use arbor::client::{pb, read, Client, WatchTarget};
use arbor_proto::kv_client::KvClient;
use common::{phase, Cluster};
use tonic::Code;

/// A `Kv` client bound to one node (no redirects, no retries).
async fn kv_of(addr: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{addr}")).await.unwrap()
}

async fn get_at(addr: &str, key: &str, opts: pb::ReadOptions) -> Result<pb::GetResponse, tonic::Status> {
    let req = pb::GetRequest { key: key.as_bytes().to_vec(), read: Some(opts) };
    kv_of(addr).await.get(req).await.map(|r| r.into_inner())
}

async fn scan_at(addr: &str, prefix: &str, opts: pb::ReadOptions) -> Vec<(String, String)> {
    let req = pb::RangeRequest { prefix: prefix.as_bytes().to_vec(), read: Some(opts), ..Default::default() };
    let resp = kv_of(addr).await.range(req).await.unwrap().into_inner();
    resp.kvs.into_iter().map(|kv| (text(&kv.key), text(&kv.value))).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_reads_agree_on_every_replica_and_wait_rather_than_answer_early() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(1).await;
    let client = cluster.client();

    phase("write three generations of /r/*, remembering each generation's stamp");
    let mut stamps = Vec::new();
    for generation in 0..3 {
        let mut last = 0;
        for k in 0..5 {
            let r = client.put(format!("/r/{k}"), format!("g{generation}")).await.unwrap();
            last = r.header.unwrap().read_stamp;
        }
        stamps.push(last);
    }
    client.delete("/r/0").await.unwrap();

    phase("every replica, leader and followers, answers snapshot_at(t) identically");
    for (generation, &t) in stamps.iter().enumerate() {
        let want: Vec<(String, String)> = (0..5).map(|k| (format!("/r/{k}"), format!("g{generation}"))).collect();
        for node in &cluster.nodes {
            let got = scan_at(&node.addr, "/r/", read::snapshot_at(t)).await;
            assert_eq!(got, want, "node {} at generation {generation}", node.id);
            let one = get_at(&node.addr, "/r/3", read::snapshot_at(t)).await.unwrap();
            assert_eq!(one.header.unwrap().read_stamp, t, "the response names the stamp it reflects");
            assert_eq!(text(&one.kv.unwrap().value), format!("g{generation}"));
        }
    }

    phase("a bounded-staleness read on a follower sees a recent state, stamped");
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let r = get_at(&follower.addr, "/r/0", read::bounded_staleness(2_000)).await.unwrap();
    assert!(r.header.unwrap().read_stamp >= stamps[2]);

    phase("a linearizable read's stamp can be replayed as a snapshot read on a follower");
    let lin = cluster.client().get_with("/r/4", read::linearizable()).await.unwrap();
    let at = lin.header.unwrap().read_stamp;
    let again = get_at(&follower.addr, "/r/4", read::snapshot_at(at)).await.unwrap();
    assert_eq!(again.kv, lin.kv);

    phase("pause the other two nodes: the lone follower cannot prove a newer stamp");
    let others: Vec<u32> =
        cluster.nodes.iter().filter(|n| n.id != follower.id).map(|n| n.child.as_ref().unwrap().id()).collect();
    for &pid in &others {
        signal(pid, "-STOP");
    }
    let future = stamps[2] + arbor::hlc::pack(60_000, 0);
    let mut opts = read::snapshot_at(future);
    opts.timeout_ms = 300;
    let err = get_at(&follower.addr, "/r/1", opts).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("closed timestamp"), "{}", err.message());
    let mut opts = read::bounded_staleness(0);
    opts.timeout_ms = 300;
    let err = get_at(&follower.addr, "/r/1", opts).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    // What it can prove, it still answers.
    let old = get_at(&follower.addr, "/r/1", read::snapshot_at(stamps[1])).await.unwrap();
    assert_eq!(text(&old.kv.unwrap().value), "g1");
    for &pid in &others {
        signal(pid, "-CONT");
    }

    phase("a stamp below the retention is refused, naming the oldest readable stamp");
    let err = get_at(&follower.addr, "/r/1", read::snapshot_at(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("oldest readable stamp"), "{}", err.message());
}

/// Sets node `addr`'s clock offset through the test-only admin RPC.
/// Retries while the node is still starting.
async fn skew(addr: &str, offset_ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = arbor_proto::cluster_client::ClusterClient::connect(format!("http://{addr}")).await {
            if c.set_clock_offset(pb::SetClockOffsetRequest { offset_ms }).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {addr} did not accept a clock offset within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_clocks_keep_writes_linearizable_and_read_stamps_monotonic() {
    let mut cluster = Cluster::start(3, &["--unsafe-clock-admin"]);
    cluster.wait_for_leader(1).await;

    phase("the admin RPC is refused without the test-only switch");
    {
        let plain = Cluster::start(1, &[]);
        plain.wait_for_leader(1).await;
        let mut c = arbor_proto::cluster_client::ClusterClient::connect(format!("http://{}", plain.nodes[0].addr))
            .await
            .unwrap();
        let err = c.set_clock_offset(pb::SetClockOffsetRequest { offset_ms: 5 }).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("--unsafe-clock-admin"), "{}", err.message());
    }

    phase("skew node 1 by +10 s and node 2 by -10 s");
    skew(&cluster.nodes[0].addr, 10_000).await;
    skew(&cluster.nodes[1].addr, -10_000).await;

    // One client doing write, read, write, read...: each read must return the
    // last acknowledged write (linearizability for a sequential history),
    // and stamps must never go backwards.
    let client = cluster.client();
    let mut last_stamp = 0;
    let mut check = |stamp: u64, what: &str| {
        assert!(stamp >= last_stamp, "{what}: stamp {stamp} went back from {last_stamp}");
        last_stamp = stamp;
    };
    let mut written = Vec::new();
    for round in 0..3 {
        phase(&format!("round {round}: sequential writes and reads"));
        for i in 0..40 {
            let value = format!("{round}-{i}");
            let w = client.put("/skew/k", &value).await.unwrap();
            let ws = w.header.unwrap().read_stamp;
            check(ws, "write");
            written.push((ws, value.clone()));
            let r = client.get_with("/skew/k", read::linearizable()).await.unwrap();
            check(r.header.unwrap().read_stamp, "linearizable read");
            assert_eq!(text(&r.kv.unwrap().value), value, "a read after an acknowledged write sees it");
        }
        phase(&format!("round {round}: kill the leader; another (skewed) node takes over"));
        let leader = cluster.wait_for_leader(1).await;
        let i = cluster.index_of(leader);
        cluster.kill(i);
        let next = cluster.wait_for_leader(1).await;
        assert_ne!(next, leader);
        cluster.restart(i);
        if i < 2 {
            skew(&cluster.nodes[i].addr, if i == 0 { 10_000 } else { -10_000 }).await;
        }
        cluster.wait_for_leader(1).await;
    }

    phase("node 1 (+10 s) leads: the others refuse to adopt its stamps into their clocks, and say so");
    client.transfer_leader(1, 1).await.unwrap();
    for i in 0..20 {
        let w = client.put("/skew/k", format!("last-{i}")).await.unwrap();
        check(w.header.unwrap().read_stamp, "write under the +10 s leader");
    }
    let warned = |i: usize| cluster.log_of(i).contains("applied epoch stamp not adopted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned(2) {
        assert!(Instant::now() < deadline, "node 3 never logged the rejected stamp:\n{}", cluster.log_of(2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    phase("every write is readable at its own stamp, on every replica");
    for (stamp, value) in written.iter().step_by(7) {
        for node in &cluster.nodes {
            let r = get_at(&node.addr, "/skew/k", read::snapshot_at(*stamp)).await.unwrap();
            assert_eq!(&text(&r.kv.unwrap().value), value, "node {} at {stamp}", node.id);
        }
    }
}

/// Collects a watcher's events per key until its progress reaches `until`.
async fn drain(watcher: &mut arbor::client::Watcher<'_>, until: u64, events: &mut BTreeMap<String, Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while watcher.position() < until {
        assert!(Instant::now() < deadline, "watch stuck at {} < {until}", watcher.position());
        let batch = tokio::time::timeout(Duration::from_secs(10), watcher.next()).await.unwrap().unwrap();
        for e in batch.events {
            let kv = e.kv.unwrap();
            let value =
                if e.r#type == pb::watch_event::Type::Delete as i32 { "<deleted>".into() } else { text(&kv.value) };
            events.entry(text(&kv.key)).or_default().push(value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_see_every_change_once_in_order_and_resume_without_gaps() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(1).await;
    let endpoints = cluster.endpoints();

    phase("three watchers on /w/, one per node");
    let clients: Vec<Client> = endpoints.iter().map(|e| cluster.client_of(std::slice::from_ref(e))).collect();
    let mut watchers: Vec<_> = clients.iter().map(|c| c.watch(WatchTarget::Prefix(b"/w/".to_vec()), 0)).collect();
    for w in &mut watchers {
        w.next().await.unwrap(); // the starting position
    }

    phase("four writers put unique values to 8 shared keys, and create and delete keys of their own");
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let client = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..60 {
                let value = format!("w{writer}-{n}");
                if n % 10 == 9 {
                    // Create and delete a key of this writer's own (one
                    // writer: the two are in different epochs, in order).
                    let key = format!("/w/own-{writer}");
                    let r = client.put(&key, &value).await.unwrap();
                    acked.push((key.clone(), r.header.unwrap().read_stamp, Some((r.version, value))));
                    let r = client.delete(&key).await.unwrap();
                    assert_eq!(r.deleted, 1);
                    acked.push((key, r.header.unwrap().read_stamp, None));
                } else {
                    // Shared keys only get puts: versions order them.
                    let key = format!("/w/{}", (writer * 7 + n) % 8);
                    let r = client.put(&key, &value).await.unwrap();
                    acked.push((key, r.header.unwrap().read_stamp, Some((r.version, value))));
                }
            }
            acked
        }));
    }

    phase("meanwhile one watcher stops halfway and a new one resumes from its position");
    let mut seen: Vec<BTreeMap<String, Vec<String>>> = vec![BTreeMap::new(); 3];
    {
        let w = &mut watchers[2];
        let mut got = 0;
        while got < 40 {
            let batch = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap();
            for e in batch.events {
                got += 1;
                let kv = e.kv.unwrap();
                let value =
                    if e.r#type == pb::watch_event::Type::Delete as i32 { "<deleted>".into() } else { text(&kv.value) };
                seen[2].entry(text(&kv.key)).or_default().push(value);
            }
        }
    }
    let position = watchers[2].position();
    watchers.pop();
    // Resume on another node: versions are replicated, so any replica can.
    watchers.push(clients[0].watch(WatchTarget::Prefix(b"/w/".to_vec()), position));

    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let last = acked.iter().map(|(_, s, _)| *s).max().unwrap();

    phase("every watcher saw exactly the acknowledged changes, in commit order per key");
    // Commit order per key: by stamp, then (within one epoch) by version.
    acked.sort_by_key(|(k, s, v)| (k.clone(), *s, v.as_ref().map_or(0, |(version, _)| *version)));
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, _, v) in &acked {
        want.entry(k.clone()).or_default().push(v.as_ref().map_or("<deleted>".into(), |(_, value)| value.clone()));
    }
    for (i, w) in watchers.iter_mut().enumerate() {
        drain(w, last, &mut seen[i]).await;
        assert_eq!(seen[i], want, "watcher {i}");
    }

    phase("a stopping node ends its two watch streams instead of waiting for them");
    cluster.stop_promptly(0, "the watches");
}
