//! Eager replication: when its pipeline is idle, a leader sends a new entry
//! to its followers while its own fsync of that entry runs.
//!
//! openraft 0.9 starts replicating an entry only after the leader's own
//! append has been flushed (`RaftCore::append_to_log` awaits it), so a lone
//! write waits for the leader's fsync and then a follower's, in sequence.
//! etcd sends first and syncs meanwhile (Raft thesis §10.2.1). Here the log
//! store hands such an entry to [`EagerReplication`], which sends it to every
//! follower as an ordinary AppendEntries from the current leader. When
//! openraft's own replication stream comes to send the entry after the
//! leader's flush, the follower already holds it.
//!
//! Why this is safe: the request is exactly one openraft's stream could send
//! (the leader's committed vote, the entry's true predecessor, the leader's
//! own entries, a commit index already committed). Raft followers accept
//! AppendEntries from the leader of their term in any order and any number of
//! times: an entry already held is skipped, a gap is refused, and only an
//! entry conflicting with the leader's log is truncated. The leader still
//! counts itself towards the quorum only after its own fsync (openraft
//! decides that), so an entry is committed only once a majority holds it on
//! disk.
//!
//! The reply serves the stream's request too ([`EagerReplies`]): when
//! openraft's stream sends a request identical to the eager one (same vote,
//! predecessor, entries and commit index), the follower's answer to the
//! eager request is its answer to that one (a duplicated AppendEntries is
//! answered alike, and an acceptance only ever says the follower held those
//! entries on disk under this vote, true however late it is read). The
//! stream therefore waits for the eager reply instead of sending the request
//! again: a lone write is committed after the leader's fsync and one round
//! trip that ran beside it, not a second round trip that starts after the
//! fsync. Only an acceptance is reused; any other reply, or none within the
//! request's soft deadline, and the stream sends its request as usual.
//!
//! It is used only when the pipeline is idle (the new entry directly
//! follows the last committed one): under load the entries in flight keep
//! openraft's streams busy, and an extra request per entry would only add
//! CPU on every node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::Vote;
use tokio::sync::watch;

use crate::raft::network::{GroupNetwork, Peers};
use crate::raft::{other_voters, Entry, LogId, Metrics, NodeId, TypeConfig};

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

/// What makes two AppendEntries the same request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId>,
    first: Option<LogId>,
    last: Option<LogId>,
    leader_commit: Option<LogId>,
}

impl Identity {
    /// Entries are named by their log ids: two entries with the same log id
    /// are the same entry (Raft's log matching property).
    fn of(req: &AppendEntriesRequest<TypeConfig>) -> Self {
        Identity {
            vote: req.vote,
            prev_log_id: req.prev_log_id,
            first: req.entries.first().map(|e| e.log_id),
            last: req.entries.last().map(|e| e.log_id),
            leader_commit: req.leader_commit,
        }
    }
}

/// A follower's answer to an eager request, as the replication stream
/// needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EagerReply {
    /// Not answered yet.
    Pending,
    /// The follower accepted the entries (`AppendEntriesResponse::Success`).
    Accepted,
    /// Anything else: refused, failed or abandoned.
    Other,
}

/// An eager request and where its reply will be.
struct Sent {
    identity: Identity,
    reply: watch::Receiver<EagerReply>,
}

/// The last eager request to each follower of each group and its reply,
/// until the replication stream sends the same request (see the module
/// docs). One per node, shared by its groups ([`Peers::eager_replies`]).
#[derive(Default)]
pub struct EagerReplies {
    /// By group and follower.
    last: Mutex<HashMap<(u64, NodeId), Sent>>,
    /// Stream requests answered with an eager reply, per group.
    answered: Mutex<HashMap<u64, u64>>,
}

impl EagerReplies {
    /// Records `req`, sent eagerly to `target`; its reply goes to the
    /// returned sender. It replaces the follower's previous record.
    pub fn sent(
        &self,
        group: u64,
        target: NodeId,
        req: &AppendEntriesRequest<TypeConfig>,
    ) -> watch::Sender<EagerReply> {
        let (tx, rx) = watch::channel(EagerReply::Pending);
        let sent = Sent { identity: Identity::of(req), reply: rx };
        self.last.lock().unwrap_or_else(|e| e.into_inner()).insert((group, target), sent);
        tx
    }

    /// The reply to the eager request identical to `req`, if `req` is the
    /// same request as the last one sent eagerly to `target`; each record
    /// serves one request.
    pub fn claim(
        &self,
        group: u64,
        target: NodeId,
        req: &AppendEntriesRequest<TypeConfig>,
    ) -> Option<watch::Receiver<EagerReply>> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(&(group, target))?.identity != Identity::of(req) {
            return None;
        }
        last.remove(&(group, target)).map(|sent| sent.reply)
    }

    /// Waits for a claimed reply, at most `within`: whether the follower
    /// accepted the entries.
    pub async fn accepted(&self, group: u64, mut reply: watch::Receiver<EagerReply>, within: Duration) -> bool {
        let answer = tokio::time::timeout(within, reply.wait_for(|r| *r != EagerReply::Pending)).await;
        let accepted = matches!(answer, Ok(Ok(r)) if *r == EagerReply::Accepted);
        if accepted {
            *self.answered.lock().unwrap_or_else(|e| e.into_inner()).entry(group).or_default() += 1;
        }
        accepted
    }

    /// How many of `group`'s stream requests an eager reply answered.
    pub fn answered(&self, group: u64) -> u64 {
        self.answered.lock().unwrap_or_else(|e| e.into_inner()).get(&group).copied().unwrap_or(0)
    }
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

    /// How many of the replication streams' requests an eager reply
    /// answered since this node started.
    pub fn answered(&self) -> u64 {
        self.peers.eager_replies().answered(self.group)
    }
}

impl EagerSink for EagerReplication {
    fn me(&self) -> NodeId {
        self.me
    }

    fn send(&self, req: AppendEntriesRequest<TypeConfig>) {
        let Some(metrics) = self.metrics.get() else { return };
        let targets = other_voters(metrics.borrow().membership_config.membership(), self.me);
        for (target, node) in targets {
            // One at a time per follower: a follower that does not answer
            // (partitioned, paused) holds at most one request, not one per
            // entry until the timeout.
            let Some(in_flight) = self.in_flight.start(target) else { continue };
            self.sent.fetch_add(1, Ordering::Relaxed);
            let reply = self.peers.eager_replies().sent(self.group, target, &req);
            let mut network = GroupNetwork { group: self.group, peers: self.peers.clone() };
            let req = req.clone();
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let mut conn = network.new_client(target, &node).await;
                let answer = match conn.send_append_entries(req, RPCOption::new(EAGER_TTL)).await {
                    Ok(AppendEntriesResponse::Success) => EagerReply::Accepted,
                    Ok(other) => {
                        tracing::debug!(target, reply = %other, "eager AppendEntries not accepted");
                        EagerReply::Other
                    }
                    Err(e) => {
                        tracing::debug!(target, error = %e, "eager AppendEntries failed (the replication stream retries)");
                        EagerReply::Other
                    }
                };
                let _ = reply.send(answer);
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

    fn request(commit: u64, entries: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        let committed = LogId::new(CommittedLeaderId::new(3, 1), commit);
        AppendEntriesRequest {
            vote: committed_vote(3, 1),
            prev_log_id: Some(committed),
            entries: entries.iter().map(|i| entry(3, 1, *i)).collect(),
            leader_commit: Some(committed),
        }
    }

    #[tokio::test]
    async fn only_the_same_request_is_answered_with_an_eager_reply_and_only_once() {
        let replies = EagerReplies::default();
        let sent = request(9, &[10]);
        let reply = replies.sent(1, 2, &sent);

        // Another follower, another group, other entries, another commit
        // index or another vote: a different request.
        assert!(replies.claim(1, 3, &sent).is_none());
        assert!(replies.claim(2, 2, &sent).is_none());
        assert!(replies.claim(1, 2, &request(9, &[10, 11])).is_none());
        let mut later_commit = sent.clone();
        later_commit.leader_commit = Some(LogId::new(CommittedLeaderId::new(3, 1), 10));
        assert!(replies.claim(1, 2, &later_commit).is_none());
        let mut other_vote = sent.clone();
        other_vote.vote = committed_vote(4, 1);
        assert!(replies.claim(1, 2, &other_vote).is_none());

        let claimed = replies.claim(1, 2, &sent.clone()).expect("the same request");
        assert!(replies.claim(1, 2, &sent).is_none(), "a record serves one request");
        reply.send(EagerReply::Accepted).unwrap();
        assert!(replies.accepted(1, claimed, Duration::from_secs(5)).await);
        assert_eq!((replies.answered(1), replies.answered(2)), (1, 0));
    }

    #[tokio::test]
    async fn only_an_acceptance_answers_the_stream() {
        let replies = EagerReplies::default();
        let req = request(9, &[10]);

        // Refused or failed.
        let reply = replies.sent(1, 2, &req);
        let claimed = replies.claim(1, 2, &req).unwrap();
        reply.send(EagerReply::Other).unwrap();
        assert!(!replies.accepted(1, claimed, Duration::from_secs(5)).await);

        // Abandoned (the sending task is gone).
        let reply = replies.sent(1, 2, &req);
        let claimed = replies.claim(1, 2, &req).unwrap();
        drop(reply);
        assert!(!replies.accepted(1, claimed, Duration::from_secs(5)).await);

        // Not answered in time.
        let _reply = replies.sent(1, 2, &req);
        let claimed = replies.claim(1, 2, &req).unwrap();
        assert!(!replies.accepted(1, claimed, Duration::from_millis(20)).await);
        assert_eq!(replies.answered(1), 0);

        // A newer eager request replaces the follower's record.
        let _old = replies.sent(1, 2, &req);
        let _new = replies.sent(1, 2, &request(10, &[11]));
        assert!(replies.claim(1, 2, &req).is_none());
        assert!(replies.claim(1, 2, &request(10, &[11])).is_some());
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
