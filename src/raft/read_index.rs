//! Read-index batching: concurrent linearizable reads of a group share one
//! leadership confirmation.
//!
//! A linearizable read needs a read index taken *after* the read arrived:
//! the leader confirms with a quorum that it still leads, and the read
//! waits until the state machine applied everything committed before that.
//! One confirmation (a heartbeat round) per read makes N concurrent reads
//! cost N rounds. Here a read joins the queue of the next round instead:
//! a round takes every read queued when it *starts*, so each read is served
//! by a confirmation that began after it arrived — exactly the guarantee of
//! its own round — and reads arriving during a round wait for the next one.
//! This is etcd's ReadIndex batching.
//!
//! The core is generic over the confirmation (`confirm`), so it is tested
//! without a Raft group.
//!
//! ## The confirmation ([`confirm_leadership`])
//!
//! A round takes its read index when it starts: the highest commit index
//! this leader has sent any follower ([`CommitNotices::told`](crate::raft::commit_notice::CommitNotices::told)), and at
//! least the leader's first entry of its term (openraft's blank entry).
//! It then needs a quorum of the voters to accept an AppendEntries from
//! this leader's vote sent after the round started, and waits until the
//! leader's state machine applied the read index. The reads then see the
//! state applied at that moment or later:
//!
//! - every write a client was told about is in it. A leader answers a
//!   write only after applying it (`crate::sequencer::apply`), and a write
//!   an earlier leader answered comes before this leader's first entry;
//! - so is everything another replica may have applied (and shown to a
//!   bounded-staleness read or a watch): a follower learns that an entry
//!   is committed only from this leader's requests, whose commit indexes
//!   the read index covers;
//! - no newer leader can have answered a write before the round started:
//!   each voter that accepted the probe had then granted no higher vote,
//!   and a newer leader needs the votes of a quorum, which shares a voter
//!   with the one that accepted.
//!
//! This is openraft's read index (`Raft::ensure_linearizable`), except
//! that an entry openraft has committed but neither applied nor told a
//! follower about is not waited for: nobody has seen it. openraft 0.9
//! does not expose its commit index, and its own probes look like commit
//! notices, which the transport may answer itself
//! ([`crate::raft::commit_notice`]). Arbor's probes are empty AppendEntries
//! without a log position (no previous entry, no entries, no commit
//! index), which a follower accepts whatever its log holds, and which are
//! always sent.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::Vote;
use tokio::sync::{mpsc, oneshot};

use crate::raft::network::{GroupNetwork, Peers};
use crate::raft::{other_voters, Metrics, NodeId, Raft};

type Waiter<E> = oneshot::Sender<Result<(), E>>;

/// Queues reads for the next confirmation round. Cheap to clone.
pub struct ReadBarrier<E> {
    tx: mpsc::UnboundedSender<Waiter<E>>,
}

impl<E> Clone for ReadBarrier<E> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<E: Clone + Send + 'static> ReadBarrier<E> {
    /// Starts the round loop; `confirm` runs one confirmation. The loop
    /// ends when every `ReadBarrier` handle is dropped.
    pub fn spawn<F, Fut>(mut confirm: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter<E>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut round = vec![first];
                while let Ok(w) = rx.try_recv() {
                    round.push(w);
                }
                let result = confirm().await;
                for w in round {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Waits for a confirmation that started after this call; `None` if the
    /// loop is gone (the group is shutting down).
    pub async fn wait(&self) -> Option<Result<(), E>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).ok()?;
        rx.await.ok()
    }
}

/// Why a read-index round failed; every read of the round gets it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    /// This node does not lead the group (`leader`: who does, if known).
    #[error("not the leader")]
    NotLeader { leader: Option<NodeId>, leader_addr: Option<String> },
    /// Leadership could not be confirmed in time (no quorum answered).
    #[error("{0}")]
    Unavailable(String),
}

/// Whether `granted` holds a majority of every configuration of a (possibly
/// joint) membership.
pub fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty() && configs.iter().all(|c| c.intersection(granted).count() * 2 > c.len())
}

fn not_leader(m: &Metrics) -> ReadIndexError {
    let leader = m.current_leader.filter(|l| *l != m.id);
    let leader_addr = leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    ReadIndexError::NotLeader { leader, leader_addr }
}

/// Confirms that `me` leads `group` for a read-index round and waits until
/// its state machine applied the round's read index (see the module docs).
/// `ttl` bounds each wait and each probe.
pub async fn confirm_leadership(
    raft: &Raft,
    peers: &Arc<Peers>,
    group: u64,
    me: NodeId,
    ttl: Duration,
) -> Result<(), ReadIndexError> {
    // Taken first: whatever a follower was told is committed by now is
    // read below.
    let told = peers.commit_notices().told(group);
    let (vote, configs, followers) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        if !m.state.is_leader() || m.vote.leader_id().voted_for() != Some(me) {
            return Err(not_leader(&m));
        }
        let membership = m.membership_config.membership();
        let followers = other_voters(membership, me);
        // A leader's vote is committed (a quorum granted it), though the
        // metrics may still show it as it was before being saved so.
        let vote = Vote::new_committed(m.vote.leader_id().get_term(), me);
        (vote, membership.get_joint_config().clone(), followers)
    };
    // The read index: this leader's first entry, and every commit index it
    // told a follower.
    let read_index = |m: &Metrics| m.last_applied.is_some_and(|l| l.leader_id == *vote.leader_id() && l.index >= told);
    let probe = AppendEntriesRequest { vote, prev_log_id: None, entries: vec![], leader_commit: None };
    confirm_quorum(peers, group, me, configs, followers, probe, ttl).await?;
    if read_index(&raft.metrics().borrow()) {
        return Ok(());
    }
    let same_leader = |m: &Metrics| m.vote.leader_id() == vote.leader_id();
    let waited = raft.wait(Some(ttl)).metrics(|m| read_index(m) || !same_leader(m), "the read index applied").await;
    match waited {
        Ok(m) if same_leader(&m) => Ok(()),
        Ok(m) => Err(not_leader(&m)),
        Err(e) => Err(ReadIndexError::Unavailable(format!(
            "group {group}: the read index (this leader's first entry, commit index {told}) is not applied yet ({e})"
        ))),
    }
}

/// Sends `probe` to every follower and waits for a quorum of `configs` to
/// accept it (`me` counts).
async fn confirm_quorum(
    peers: &Arc<Peers>,
    group: u64,
    me: NodeId,
    configs: Vec<BTreeSet<NodeId>>,
    followers: Vec<(NodeId, openraft::BasicNode)>,
    probe: AppendEntriesRequest<crate::raft::TypeConfig>,
    ttl: Duration,
) -> Result<(), ReadIndexError> {
    let mut granted = BTreeSet::from([me]);
    if is_quorum(&configs, &granted) {
        return Ok(());
    }
    let mut probes = tokio::task::JoinSet::new();
    for (target, node) in followers {
        let mut network = GroupNetwork { group, peers: peers.clone() };
        let probe = probe.clone();
        probes.spawn(async move {
            let mut conn = network.new_client(target, &node).await;
            (target, conn.send_append_entries(probe, RPCOption::new(ttl)).await)
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = probes.join_next().await {
        let Ok((target, answer)) = done else { continue };
        match answer {
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)) => {
                granted.insert(target);
                if is_quorum(&configs, &granted) {
                    // The other probes finish on their own: cancelling a
                    // request in flight costs both ends more than its answer.
                    probes.detach_all();
                    return Ok(());
                }
            }
            Ok(AppendEntriesResponse::HigherVote(higher)) => {
                tracing::debug!(group, target, %higher, "a read-index probe found a higher vote");
                return Err(ReadIndexError::NotLeader { leader: None, leader_addr: None });
            }
            Ok(other) => failures.push(format!("node {target}: {other}")),
            Err(e) => failures.push(format!("node {target}: {e}")),
        }
    }
    Err(ReadIndexError::Unavailable(format!(
        "group {group}: leadership not confirmed by a quorum of {configs:?} (confirmed: {granted:?}; {})",
        failures.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_share_a_round_and_late_ones_wait_for_the_next() {
        let rounds = Arc::new(AtomicU64::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(0u64);
        let r = rounds.clone();
        // Round n starts, then waits until the test lets it finish.
        let barrier = ReadBarrier::<String>::spawn(move || {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let mut gate = gate_rx.clone();
            async move {
                gate.wait_for(|&open| open >= n).await.map_err(|e| e.to_string())?;
                Ok(())
            }
        });
        let first = tokio::spawn({
            let b = barrier.clone();
            async move { b.wait().await }
        });
        while rounds.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Round 1 is under way: these three arrived after it started.
        let late: Vec<_> = (0..3)
            .map(|_| {
                let b = barrier.clone();
                tokio::spawn(async move { b.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate_tx.send_replace(1);
        assert_eq!(first.await.unwrap(), Some(Ok(())));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(late.iter().all(|h| !h.is_finished()), "a read that arrived mid-round waits for the next round");
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "one round for all three");
        gate_tx.send_replace(2);
        for h in late {
            assert_eq!(h.await.unwrap(), Some(Ok(())));
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<NodeId>>();
        let three = vec![set(&[1, 2, 3])];
        assert!(!is_quorum(&three, &set(&[1])));
        assert!(is_quorum(&three, &set(&[1, 3])));
        assert!(is_quorum(&[set(&[1])], &set(&[1])), "a lone voter is its own quorum");
        assert!(!is_quorum(&[set(&[1, 2, 3, 4])], &set(&[1, 2])), "half is not a majority");
        // Joint consensus: a majority of the old and of the new voters.
        let joint = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &set(&[1, 2])));
        assert!(!is_quorum(&joint, &set(&[3, 4])));
        assert!(is_quorum(&joint, &set(&[1, 3, 4])));
        assert!(!is_quorum(&[], &set(&[1])), "no configuration, no quorum");
    }

    #[tokio::test]
    async fn a_failed_round_fails_every_read_in_it() {
        let barrier = ReadBarrier::<String>::spawn(|| async { Err("not the leader".to_string()) });
        let (a, b) = tokio::join!(barrier.wait(), barrier.wait());
        assert_eq!(a, Some(Err("not the leader".to_string())));
        assert_eq!(b, Some(Err("not the leader".to_string())));
    }
}
