//! The cluster-admin calls the nemeses make, and the cluster's view of its groups.
//!
//! - [`ClockAdmin`]: `Cluster.SetClockOffset` on one node (servers run with
//!   `--unsafe-clock-admin` when the clock nemesis is on). It moves Arbor's offset clock,
//!   never the machine's.
//! - [`transfer_leader`]: `Cluster.TransferLeader` on a group's leader.
//! - [`remove_everywhere`] / [`add_everywhere`]: `Cluster.ChangeMembership` through
//!   `arbor::client::Client` (which follows the leader), group by group.
//! - [`groups`]: each group's leader, term and membership, from every node's `Status`.
//!
//! Every call is bounded in time; failures come back as text for the nemesis' history event.

use arbor::client::pb::cluster_client::ClusterClient;
use arbor::client::{pb, Client, ClientError};
use futures::future::join_all;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Time limit of one clock or transfer call (a paused node must not hold the nemesis up).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Time limit of one membership change. The client bounds its retries, not a call that
/// hangs: a change the leader cannot commit (no quorum), or an addition waiting for a
/// learner that cannot catch up (partitioned), would block the nemesis for good.
pub const MEMBERSHIP_CALL: Duration = Duration::from_secs(10);

/// Time limit of a leadership transfer: the server waits up to 10 s for the target to
/// catch up (`arbor::server::TRANSFER_CATCH_UP_TIMEOUT`), then for its election.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(12);

fn cluster_client(addr: &str) -> Result<ClusterClient<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok(ClusterClient::new(ep.connect_timeout(RPC_TIMEOUT).tcp_nodelay(true).connect_lazy()))
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// The clock of one node.
#[derive(Clone)]
pub struct ClockAdmin {
    client: ClusterClient<Channel>,
}

impl ClockAdmin {
    /// Admin of the node at `addr` (connects lazily).
    pub fn new(addr: &str) -> Result<ClockAdmin, String> {
        Ok(ClockAdmin { client: cluster_client(addr)? })
    }

    /// Sets the node's clock offset; returns the previous one.
    pub async fn set(&self, offset_ms: i64) -> Result<i64, String> {
        let mut client = self.client.clone();
        let call = client.set_clock_offset(pb::SetClockOffsetRequest { offset_ms });
        match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Err(_) => Err(format!("no answer within {RPC_TIMEOUT:?}")),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(r)) => Ok(r.into_inner().previous_offset_ms),
        }
    }
}

/// Asks the node at `addr` (the group's leader, as last seen) to hand `group` to voter `to`,
/// following one redirection to the current leader; returns the (leader, term) it reports.
pub async fn transfer_leader(addr: &str, group: u64, to: u64) -> Result<(u64, u64), String> {
    let mut addr = addr.to_string();
    for attempt in 0..2 {
        let mut client = cluster_client(&addr)?;
        let call = client.transfer_leader(pb::TransferLeaderRequest { group_id: group, to });
        match tokio::time::timeout(TRANSFER_TIMEOUT, call).await {
            Err(_) => return Err(format!("no answer within {TRANSFER_TIMEOUT:?} from {addr}")),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                return Ok((r.leader, r.term));
            }
            Ok(Err(s)) => {
                let leader = s.metadata().get(arbor::api::LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok());
                match leader {
                    Some(l) if attempt == 0 && !l.is_empty() && l != addr => {
                        addr = l.trim_start_matches("http://").to_string()
                    }
                    _ => return Err(status_text(&s)),
                }
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// One group as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupView {
    /// Group id.
    pub id: u64,
    /// Its leader's node id (0: none known).
    pub leader: u64,
    /// The term of the answer this view comes from.
    pub term: u64,
    /// Voter node ids.
    pub voters: Vec<u64>,
    /// Learner node ids.
    pub learners: Vec<u64>,
}

impl GroupView {
    /// Whether node `id` is a voter or a learner.
    pub fn has_member(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// Merges `Status` answers: per group, the answer of a node that leads it in the highest
/// term, else the highest-term answer (pure).
pub fn merge_views(answers: &[pb::StatusResponse]) -> Vec<GroupView> {
    let mut best: BTreeMap<u64, (bool, u64, GroupView)> = BTreeMap::new();
    for a in answers {
        for g in &a.groups {
            let leads = g.leader == a.node_id && g.leader != 0;
            let view = GroupView {
                id: g.group_id,
                leader: g.leader,
                term: g.term,
                voters: g.voters.clone(),
                learners: g.learners.clone(),
            };
            let better = match best.get(&g.group_id) {
                None => true,
                Some((l, t, _)) => (leads, g.term) > (*l, *t),
            };
            if better {
                best.insert(g.group_id, (leads, g.term, view));
            }
        }
    }
    best.into_values().map(|(_, _, v)| v).collect()
}

/// Every group, as the reachable nodes report them (empty if none answers).
pub async fn groups(endpoints: &[String]) -> Vec<GroupView> {
    let Ok(client) = super::cluster::admin_client(endpoints, Duration::from_millis(800)) else { return Vec::new() };
    let answers: Vec<pb::StatusResponse> =
        join_all(endpoints.iter().map(|a| client.status_of(a))).await.into_iter().flatten().collect();
    merge_views(&answers)
}

/// A client for membership changes: it follows the leader, and stops retrying after
/// `timeout` (each call is bounded by [`MEMBERSHIP_CALL`] on top).
pub fn membership_client(endpoints: &[String], timeout: Duration) -> Result<Client, String> {
    super::cluster::admin_client(endpoints, timeout).map_err(|e| e.to_string())
}

fn not_a_member(e: &ClientError) -> bool {
    e.code() == Some(Code::InvalidArgument) && e.to_string().contains("not a member")
}

/// Why a membership change failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub text: String,
    /// The change certainly did not happen (refused, invalid); otherwise (a timeout, an
    /// unreachable leader) it may still commit.
    pub definite: bool,
}

/// Removes node `id` from each of `groups`, in order, stopping at the first failure;
/// returns the groups it is no longer in, and the failure.
pub async fn remove_everywhere(client: &Client, id: u64, groups: &[u64]) -> (Vec<u64>, Option<Failure>) {
    let mut done = Vec::new();
    for &g in groups {
        match tokio::time::timeout(MEMBERSHIP_CALL, client.remove_node(g, id, false)).await {
            Err(_) => {
                let text = format!("group {g}: no answer within {MEMBERSHIP_CALL:?}");
                return (done, Some(Failure { text, definite: false }));
            }
            Ok(Ok(_)) => done.push(g),
            // A retried removal that had gone through.
            Ok(Err(e)) if not_a_member(&e) => done.push(g),
            Ok(Err(e)) => {
                let definite = matches!(e.code(), Some(Code::FailedPrecondition | Code::InvalidArgument));
                return (done, Some(Failure { text: format!("group {g}: {e}"), definite }));
            }
        }
    }
    (done, None)
}

/// Adds node `id` at `addr` to each of `groups` (learner, catch-up, voter); returns the
/// groups it was added to, and the first failure.
pub async fn add_everywhere(client: &Client, id: u64, addr: &str, groups: &[u64]) -> (Vec<u64>, Option<String>) {
    let mut done = Vec::new();
    for &g in groups {
        match tokio::time::timeout(MEMBERSHIP_CALL, client.add_node(g, id, addr)).await {
            Err(_) => return (done, Some(format!("group {g}: no answer within {MEMBERSHIP_CALL:?}"))),
            Ok(Ok(r)) if r.voters.contains(&id) => done.push(g),
            Ok(Ok(r)) => return (done, Some(format!("group {g}: not a voter after the change: {r:?}"))),
            Ok(Err(e)) => return (done, Some(format!("group {g}: {e}"))),
        }
    }
    (done, None)
}

/// Repeats `step` (which returns `Ok` when done) until it succeeds or `deadline`; returns
/// the last error.
pub async fn retry_until<F, Fut>(deadline: Instant, mut step: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    loop {
        let e = match step().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: u64, groups: &[(u64, u64, u64, &[u64])]) -> pb::StatusResponse {
        pb::StatusResponse {
            node_id: node,
            groups: groups
                .iter()
                .map(|&(id, leader, term, voters)| pb::GroupStatus {
                    group_id: id,
                    leader,
                    term,
                    voters: voters.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_leaders_own_view_wins() {
        let answers = [
            // Node 1 still believes in an old configuration, in a newer term it heard of.
            answer(1, &[(1, 2, 6, &[1, 2, 3, 4])]),
            answer(2, &[(1, 2, 5, &[1, 2, 3]), (2, 3, 4, &[1, 2, 3])]),
            answer(3, &[(2, 3, 4, &[1, 2, 3, 4])]),
        ];
        let v = merge_views(&answers);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].id, v[0].leader, v[0].voters.clone()), (1, 2, vec![1, 2, 3]));
        assert_eq!((v[1].id, v[1].voters.clone()), (2, vec![1, 2, 3, 4]));
        assert!(v[1].has_member(4) && !v[0].has_member(4));
        assert!(merge_views(&[]).is_empty());
    }
}
