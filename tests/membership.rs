//! Membership changes and their safety checks, on real
//! clusters of `arbor server` processes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{data_of, phase, Cluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_under_a_write_load() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(1).await;
    let writers_client = Arc::new(c.client());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (client, acked, stop) = (writers_client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut i, mut unknown) = (w, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match client.increment(format!("/m/{}", i % 4), 1).await {
                        Ok(_) => {
                            acked[i % 4].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => unknown += 1,
                    }
                    i += 1;
                }
                unknown
            })
        })
        .collect();

    phase("start nodes 4 and 5 with --join and add them: learners first, then voters");
    let admin = c.client();
    for _ in 0..2 {
        let i = c.start_joining_node();
        let (id, addr) = (c.nodes[i].id, c.nodes[i].addr.clone());
        let r = admin.add_node(1, id, &addr).await.unwrap();
        assert!(r.voters.contains(&id), "node {id} is a voter: {r:?}");
    }
    let status = admin.status().await.unwrap();
    assert_eq!(status.groups[0].voters, vec![1, 2, 3, 4, 5]);
    assert_eq!(status.members.len(), 5, "members come from the live membership");

    phase("remove nodes 1 and 2, whoever leads, and stop them");
    for id in [1, 2] {
        let r = admin.remove_node(1, id, false).await.unwrap();
        assert!(!r.voters.contains(&id), "{r:?}");
        c.stop(c.index_of(id));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut unknown = 0;
    for w in writers {
        unknown += w.await.unwrap();
    }

    phase("the three remaining replicas converge and hold every acknowledged increment exactly once");
    let remaining: Vec<String> = c.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.addr.clone()).collect();
    let client = c.client_of(&remaining);
    let fence = client.put("/m/fence", "").await.unwrap().header.unwrap().log_index;
    c.wait_applied(1, fence).await;
    let running: Vec<usize> = (0..c.nodes.len()).filter(|&i| c.nodes[i].child.is_some()).collect();
    assert_eq!(running.len(), 3);
    for &i in &running {
        c.stop(i);
    }
    let replicas: Vec<BTreeMap<Vec<u8>, Vec<u8>>> =
        running.iter().map(|&i| data_of(&c.nodes[i].dir).into_iter().collect()).collect();
    assert!(replicas.iter().all(|r| r == &replicas[0]), "replicas diverged");
    let total_acked: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    assert!(total_acked > 20, "the load made progress ({total_acked})");
    let mut total = 0;
    for (k, a) in acked.iter().enumerate() {
        let key = arbor::keys::Key::Data(format!("/m/{k}").as_bytes()).encode();
        let record = arbor::tree::decode_record(&replicas[0][&key]).unwrap();
        let value: u64 = String::from_utf8(record.value).unwrap().parse().unwrap();
        assert!(value >= a.load(Ordering::Relaxed), "counter {k} lost increments");
        assert_eq!(record.version, value, "counter {k}: one version per increment");
        total += value;
    }
    assert!(total <= total_acked + unknown, "an increment was applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_that_would_cost_the_quorum_is_refused() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(1).await;
    let followers: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|&id| id != leader).collect();
    c.stop(c.index_of(followers[0]));
    // The leader counts a voter as reachable for two election timeouts
    // (1.6 s by default) after its last answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alive: Vec<String> = c.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.addr.clone()).collect();
    let client = c.client_of(&alive);
    client.put("/q", "1").await.unwrap();
    let err = client.remove_node(1, followers[1], false).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("less than a quorum"), "{err}");
    let err = client.remove_node(1, 99, false).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert_eq!(client.status().await.unwrap().groups[0].voters.len(), 3, "nothing changed");
}
