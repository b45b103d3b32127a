//! Eager replication: when its pipeline is idle, a leader sends a new entry
//! to its followers while its own fsync of that entry runs.
//!
//! openraft 0.9 starts replicating an entry only after the leader's own
//! append has been flushed (`RaftCore::append_to_log` awaits it), so a lone
//! write waits for the leader's fsync and then a follower's, in sequence.
//! etcd sends first and syncs meanwhile (Raft thesis §10.2.1). Here the log
//! store hands such an entry to [`EagerReplication`], which sends it to every
//! follower as an ordinary AppendEntries from the current leader. When
//! openraft's own replication stream sends the entry after the leader's
//! flush, the follower already holds it and answers at once.
//!
//! Why this is safe: the request is exactly one openraft's stream could send
//! (the leader's committed vote, the entry's true predecessor, the leader's
//! own entries, a commit index already committed). Raft followers accept
//! AppendEntries from the leader of their term in any order and any number of
//! times: an entry already held is skipped, a gap is refused, and only an
//! entry conflicting with the leader's log is truncated. The leader still
//! counts itself towards the quorum only after its own fsync (openraft
//! decides that), so an entry is committed only once a majority holds it on
//! disk. Replies are ignored: progress is tracked by openraft's stream.
//!
//! It is used only when the pipeline is idle (the new entry directly
//! follows the last committed one): under load the entries in flight keep
//! openraft's streams busy, and an extra request per entry would only add
//! CPU on every node.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::AppendEntriesRequest;
use openraft::Vote;
use tokio::sync::watch;

use crate::raft::network::{GroupNetwork, Peers};
use crate::raft::{Entry, LogId, Metrics, NodeId, TypeConfig};

/// How long an eager AppendEntries may take before it is abandoned (the
/// replication stream delivers the entry anyway).
const EAGER_TTL: Duration = Duration::from_secs(1);

/// The AppendEntries to send eagerly for `entries`, which `me` is about to
/// append, or `None` when they are not this leader's idle-pipeline entries:
/// the vote must be `me`'s committed vote, every entry written under it,
/// and the first entry must directly follow the last committed one (which
/// is then its predecessor).
pub fn eager_request(
    me: NodeId,
    vote: Option<&Vote<NodeId>>,
    committed: Option<LogId>,
    entries: &[Entry],
) -> Option<AppendEntriesRequest<TypeConfig>> {
    let vote = vote?;
    let first = entries.first()?;
    let committed = committed?;
    let ours = vote.is_committed() && vote.leader_id().voted_for() == Some(me);
    let this_term = entries.iter().all(|e| e.log_id.leader_id == *vote.leader_id());
    if !ours || !this_term || first.log_id.index != committed.index + 1 {
        return None;
    }
    Some(AppendEntriesRequest {
        vote: *vote,
        prev_log_id: Some(committed),
        entries: entries.to_vec(),
        leader_commit: Some(committed),
    })
}

/// Where a log store hands the AppendEntries it wants sent eagerly.
pub trait EagerSink: Send + Sync {
    /// This node's id.
    fn me(&self) -> NodeId;
    /// Sends `req` to the followers, in the background.
    fn send(&self, req: AppendEntriesRequest<TypeConfig>);
}

/// Sends eager AppendEntries of one group to the voters named in the
/// group's current membership.
pub struct EagerReplication {
    me: NodeId,
    group: u64,
    peers: Arc<Peers>,
    /// The group's metrics (its membership); set once the group's Raft
    /// exists, which is after its log store.
    metrics: OnceLock<watch::Receiver<Metrics>>,
    /// Requests sent, counted per follower.
    sent: AtomicU64,
    in_flight: InFlight,
}

/// The followers with an eager request in flight.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<NodeId>>>);

/// Marks a follower's request in flight until dropped.
struct InFlightGuard(InFlight, NodeId);

impl InFlight {
    /// `None` if `target` already has a request in flight.
    fn start(&self, target: NodeId) -> Option<InFlightGuard> {
        let fresh = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(target);
        fresh.then(|| InFlightGuard(self.clone(), target))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

impl EagerReplication {
    pub fn new(me: NodeId, group: u64, peers: Arc<Peers>) -> Arc<Self> {
        Arc::new(Self {
            me,
            group,
            peers,
            metrics: OnceLock::new(),
            sent: AtomicU64::new(0),
            in_flight: InFlight::default(),
        })
    }

    pub fn set_metrics(&self, metrics: watch::Receiver<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// How many eager AppendEntries this node sent (one per follower)
    /// since it started.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl EagerSink for EagerReplication {
    fn me(&self) -> NodeId {
        self.me
    }

    fn send(&self, req: AppendEntriesRequest<TypeConfig>) {
        let Some(metrics) = self.metrics.get() else { return };
        let targets: Vec<_> = {
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != self.me)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect()
        };
        for (target, node) in targets {
            // One at a time per follower: a follower that does not answer
            // (partitioned, paused) holds at most one request, not one per
            // entry until the timeout.
            let Some(in_flight) = self.in_flight.start(target) else { continue };
            self.sent.fetch_add(1, Ordering::Relaxed);
            let mut network = GroupNetwork { group: self.group, peers: self.peers.clone() };
            let req = req.clone();
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let mut conn = network.new_client(target, &node).await;
                if let Err(e) = conn.append_entries(req, RPCOption::new(EAGER_TTL)).await {
                    tracing::debug!(target, error = %e, "eager AppendEntries failed (the replication stream retries)");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload: EntryPayload::Blank }
    }

    fn committed_vote(term: u64, leader: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, leader)
    }

    #[test]
    fn an_idle_leaders_entry_is_sent_with_its_committed_predecessor() {
        let vote = committed_vote(3, 1);
        let committed = LogId::new(CommittedLeaderId::new(2, 2), 9);
        let req = eager_request(1, Some(&vote), Some(committed), &[entry(3, 1, 10), entry(3, 1, 11)]).unwrap();
        assert_eq!(req.vote, vote);
        assert_eq!(req.prev_log_id, Some(committed));
        assert_eq!(req.leader_commit, Some(committed));
        assert_eq!(req.entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![10, 11]);
    }

    #[test]
    fn a_follower_has_one_eager_request_in_flight_at_most() {
        let in_flight = InFlight::default();
        let first = in_flight.start(2).expect("nothing in flight");
        assert!(in_flight.start(2).is_none(), "node 2 still has one");
        let other = in_flight.start(3).expect("node 3 is independent");
        drop(first);
        assert!(in_flight.start(2).is_some(), "node 2 answered");
        drop(other);
    }

    #[test]
    fn a_busy_pipeline_is_left_to_the_replication_stream() {
        let vote = committed_vote(3, 1);
        let committed = LogId::new(CommittedLeaderId::new(3, 1), 8);
        assert!(eager_request(1, Some(&vote), Some(committed), &[entry(3, 1, 10)]).is_none());
        assert!(eager_request(1, Some(&vote), None, &[entry(3, 1, 10)]).is_none());
    }

    #[test]
    fn only_the_leader_of_the_entries_term_sends() {
        let committed = LogId::new(CommittedLeaderId::new(3, 1), 9);
        let e = [entry(3, 1, 10)];
        // A follower appending the leader's entries.
        assert!(eager_request(2, Some(&committed_vote(3, 1)), Some(committed), &e).is_none());
        // A candidate's vote is not committed.
        assert!(eager_request(1, Some(&Vote::new(3, 1)), Some(committed), &e).is_none());
        // Entries of an older term (a leader receiving its own old entries
        // back would not hold that term's vote; never re-send them).
        assert!(eager_request(1, Some(&committed_vote(4, 1)), Some(committed), &e).is_none());
        assert!(eager_request(1, None, Some(committed), &e).is_none());
        assert!(eager_request(1, Some(&committed_vote(3, 1)), Some(committed), &[]).is_none());
    }
}
