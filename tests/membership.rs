//! Membership changes' safety checks, on real clusters of `arbor server`
//! processes. Growing and shrinking a cluster under load is in
//! `tests/lifecycle.rs`.

mod common;

use std::time::Duration;

use common::Cluster;
use tonic::Code;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_comes_back_is_refused_and_cannot_disturb_the_group() {
    let mut c = Cluster::start(4, &[]);
    let leader = c.wait_for_leader(1).await;
    let gone = c.nodes.iter().map(|n| n.id).find(|&id| id != leader).unwrap();
    let i = c.index_of(gone);
    // Stopped first, so its own log never learns of its removal.
    c.stop(i);
    let alive: Vec<String> = c.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.addr.clone()).collect();
    let client = c.client_of(&alive);
    client.remove_node(1, gone, false).await.unwrap();
    client.put("/after-removal", "1").await.unwrap();
    let term = client.status().await.unwrap().groups[0].term;

    c.restart(i);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = |c: &Cluster| {
        (0..c.nodes.len()).filter(|&j| j != i).any(|j| {
            c.log_of(j).lines().any(|l| {
                l.contains("refusing a vote request from a non-member")
                    && l.contains(&format!("node {gone} asked for votes"))
            })
        })
    };
    while !refused(&c) {
        assert!(std::time::Instant::now() < deadline, "no member logged the refusal:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.put("/after-return", "1").await.unwrap();
    let s = client.status().await.unwrap();
    assert_eq!(s.groups[0].term, term, "the removed node's elections did not bump the group's term");
    assert!(!s.groups[0].voters.contains(&gone));
}
