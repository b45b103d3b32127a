//! Leader transfer (`arbor cluster transfer-leader`) on a real cluster of
//! `arbor server` processes: leadership moves to each voter named, in a later
//! term, while a writer keeps writing; refusals name what was wrong. openraft
//! 0.9 has no leader transfer; see `Node::transfer_leader` for how Arbor does
//! it safely.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{phase, Cluster};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_moves_leadership_to_each_follower_in_turn() {
    let mut c = Cluster::start(3, &[]);
    let first = c.wait_for_leader(1).await;
    let client = c.client();
    client.put("/t/before", "0").await.unwrap();

    phase("refused: an unknown group, a node that is not a member, node 0");
    let err = client.transfer_leader(9, 2).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("no group 9"), "{err}");
    let err = client.transfer_leader(1, 7).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("node 7 is not a member of group 1"), "{err}");
    let err = client.transfer_leader(1, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");

    phase("to the current leader: nothing to do");
    let r = client.transfer_leader(1, first).await.unwrap();
    assert_eq!(r.leader, first);
    let mut term = r.term;

    phase("a writer keeps writing through every transfer");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (Arc::new(c.client()), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/w/{i:06}");
                if client.put(&key, "x").await.is_ok() {
                    acked.push(key);
                }
                i += 1;
            }
            acked
        })
    };
    let followers: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|&id| id != first).collect();
    for target in followers.iter().copied().chain([first]) {
        phase(&format!("transfer group 1 to node {target}; every node then agrees it leads, in a later term"));
        let r = client.transfer_leader(1, target).await.unwrap();
        assert_eq!(r.leader, target, "{r:?}");
        assert!(r.term > term, "the new leader was elected in a later term: {r:?} after term {term}");
        term = r.term;
        assert_eq!(c.wait_for_leader(1).await, target, "{}", c.logs());
        let status = client.status_of(&c.nodes[c.index_of(target)].addr).await.unwrap();
        assert_eq!(status.groups[0].role, "Leader");

        phase("writes still succeed, and are served by the new leader");
        let put = client.put(format!("/t/led-by-{target}"), target.to_string()).await.unwrap();
        assert!(put.header.unwrap().log_index > 0);
    }

    phase("every acknowledged write is there");
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty(), "the writer made progress");
    let fence = client.put("/t/fence", "").await.unwrap().header.unwrap().log_index;
    c.wait_applied(1, fence).await;
    let got = client.scan("/t/", 100).await.unwrap();
    assert_eq!(got.kvs.len(), 2 + followers.len() + 1, "{got:?}");
    let written: std::collections::BTreeSet<Vec<u8>> =
        client.scan("/w/", 10_000).await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    for key in &acked {
        assert!(written.contains(key.as_bytes()), "acknowledged write {key} is missing");
    }

    phase("a node that cannot catch up is refused once the catch-up timeout ends");
    let leader = c.wait_for_leader(1).await;
    let lagging = c.nodes.iter().map(|n| n.id).find(|&id| id != leader).unwrap();
    c.stop(c.index_of(lagging));
    let alive: Vec<String> = c.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.addr.clone()).collect();
    let client = c.client_of(&alive);
    client.put("/t/while-down", "1").await.unwrap();
    let err = client.transfer_leader(1, lagging).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains(&format!("node {lagging} did not catch up")), "{err}");
    assert_eq!(c.wait_for_leader(1).await, leader, "leadership stayed where it was");
    client.put("/t/after-refusal", "1").await.unwrap();
}
