//! Commit notices: the AppendEntries that only tell a follower a new commit
//! index, answered by the leader's own transport while that follower keeps
//! receiving entries.
//!
//! openraft 0.9 sends each follower a second AppendEntries per entry: once
//! the entry is committed, an empty request whose predecessor is the
//! follower's matching entry, carrying the new commit index
//! (`ReplicationCore::process_event` on `Replicate::Committed`). Its
//! periodic heartbeat is the same request. Under load the follower's next
//! entry carries that commit index anyway, and each round trip costs the
//! three nodes ~100 µs of CPU (item 37 of `docs/BENCHMARKS.md`). So the
//! transport answers such a request itself, with `Success`, when
//! ([`CommitNotices::answer`]):
//!
//! - it holds no entries, and its predecessor is at or before the last
//!   entry this follower accepted from this leader (the same vote). The
//!   follower then holds that predecessor (Raft's log matching: it holds
//!   the leader's whole log up to an entry it accepted under that leader's
//!   vote), so `Success` is what it would answer. openraft takes nothing
//!   from the answer but the leader's liveness metric: a request without
//!   entries never moves a follower's matching index, so it can commit
//!   nothing;
//! - the follower really accepted an AppendEntries within `window` (half a
//!   heartbeat interval). When a follower falls silent, or the group goes
//!   idle, real requests go out again after at most that: a follower hears
//!   from its leader at least every heartbeat plus `window`, well inside
//!   an election timeout, and a deposed leader learns of the higher vote
//!   that much later at most.
//!
//! The commit index is still owed to the follower. If no real request to
//! it carried that commit index within [`OWED_DELAY`], the transport sends
//! the notice then ([`CommitNotices::take_owed`]): an idle follower applies
//! the last entry a few milliseconds late, not a heartbeat late, so its
//! closed timestamp and bounded-staleness reads are not held back.
//!
//! Requests held back for a leader transfer are never answered here (the
//! caller checks), and neither are requests sent outside openraft's
//! replication streams: eager entries, the snapshot transfer's keep-alive
//! and the read barrier's probes go out through
//! [`crate::raft::network::PeerConnection::send_append_entries`].
//!
//! What this gives up: openraft's own read-index probes
//! (`Raft::ensure_linearizable`) look exactly like commit notices, so a
//! local answer would confirm a leadership that no follower confirmed.
//! Arbor never calls them: its read barrier confirms leadership with
//! probes of its own ([`crate::raft::read_index::confirm_leadership`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::raft::AppendEntriesRequest;
use openraft::Vote;

use crate::raft::{LogId, NodeId, TypeConfig};

/// How long a commit notice answered here may wait for a real request to
/// carry its commit index before it is sent itself.
pub const OWED_DELAY: Duration = Duration::from_millis(5);

/// What the transport does with an AppendEntries from openraft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Send it: not a commit notice this transport may answer.
    Send,
    /// Answer `Success` without sending. `owe` says that no delivery of an
    /// owed notice is pending for this follower yet: the caller starts one
    /// (waits [`OWED_DELAY`], then [`CommitNotices::take_owed`]).
    Answer { owe: bool },
}

/// What one follower of one group accepted from its leader.
#[derive(Debug)]
struct Link {
    vote: Vote<NodeId>,
    /// The last entry the follower accepted under `vote`.
    matching: LogId,
    /// When it last accepted a request carrying a log position.
    accepted_at: Instant,
    /// The last notice answered here that no real request has carried yet.
    owed: Option<AppendEntriesRequest<TypeConfig>>,
    /// A delivery of `owed` is pending.
    delivering: bool,
}

/// The links of every group's followers, shared by a node's connections
/// ([`crate::raft::network::Peers`]). Time is passed in, so the rules are
/// tested without a clock.
pub struct CommitNotices {
    window: Duration,
    links: Mutex<HashMap<(u64, NodeId), Link>>,
    groups: Mutex<HashMap<u64, Tally>>,
}

/// What a group's leader told its followers, since this node started.
#[derive(Clone, Copy, Default)]
struct Tally {
    /// Notices answered here.
    answered: u64,
    /// The highest commit index sent to any follower.
    told: u64,
}

impl CommitNotices {
    /// `window`: how recently the follower must have accepted a real
    /// request for a notice to be answered here.
    pub fn new(window: Duration) -> Self {
        Self { window, links: Mutex::new(HashMap::new()), groups: Mutex::new(HashMap::new()) }
    }

    /// Records that `target` accepted `req` (a real AppendEntries of
    /// `group`) at `now`.
    pub fn accepted(&self, group: u64, target: NodeId, req: &AppendEntriesRequest<TypeConfig>, now: Instant) {
        // Requests without a log position (the read barrier's probes, the
        // snapshot keep-alive) say nothing about the follower's log.
        let Some(matching) = req.entries.last().map(|e| e.log_id).or(req.prev_log_id) else { return };
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match links.get_mut(&(group, target)) {
            Some(link) if link.vote == req.vote => {
                // Replies can come back out of order (an eager request and
                // the stream's): keep the furthest.
                if matching.index > link.matching.index {
                    link.matching = matching;
                }
                link.accepted_at = now;
                if link.owed.as_ref().is_some_and(|owed| owed.leader_commit <= req.leader_commit) {
                    link.owed = None;
                }
            }
            _ => {
                let link = Link { vote: req.vote, matching, accepted_at: now, owed: None, delivering: false };
                links.insert((group, target), link);
            }
        }
    }

    /// What to do with `req`, an AppendEntries openraft asks to send to
    /// `target` at `now` (see the module docs).
    pub fn answer(&self, group: u64, target: NodeId, req: &AppendEntriesRequest<TypeConfig>, now: Instant) -> Notice {
        if !req.entries.is_empty() {
            return Notice::Send;
        }
        let Some(prev) = req.prev_log_id else { return Notice::Send };
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let Some(link) = links.get_mut(&(group, target)) else { return Notice::Send };
        let fresh = now.saturating_duration_since(link.accepted_at) <= self.window;
        if link.vote != req.vote || prev.index > link.matching.index || !fresh {
            return Notice::Send;
        }
        if link.owed.as_ref().is_none_or(|owed| owed.leader_commit <= req.leader_commit) {
            link.owed = Some(req.clone());
        }
        let owe = !link.delivering;
        link.delivering = true;
        drop(links);
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).entry(group).or_default().answered += 1;
        Notice::Answer { owe }
    }

    /// Ends a pending delivery: the notice still owed to `target`, if any,
    /// to be sent now.
    pub fn take_owed(&self, group: u64, target: NodeId) -> Option<AppendEntriesRequest<TypeConfig>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = links.get_mut(&(group, target))?;
        link.delivering = false;
        link.owed.take()
    }

    /// Records that `req`, about to be sent, tells a follower of `group`
    /// its commit index.
    pub fn telling(&self, group: u64, req: &AppendEntriesRequest<TypeConfig>) {
        let Some(commit) = req.leader_commit else { return };
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let tally = groups.entry(group).or_default();
        tally.told = tally.told.max(commit.index);
    }

    /// The highest commit index this node sent any follower of `group`: a
    /// follower may have applied up to it (the read barrier waits for it,
    /// see [`crate::raft::read_index`]).
    pub fn told(&self, group: u64) -> u64 {
        self.tally(group).told
    }

    /// How many of `group`'s notices this node answered itself.
    pub fn answered(&self, group: u64) -> u64 {
        self.tally(group).answered
    }

    fn tally(&self, group: u64) -> Tally {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&group).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::Entry;

    const WINDOW: Duration = Duration::from_millis(50);

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn vote(term: u64) -> Vote<NodeId> {
        Vote::new_committed(term, 1)
    }

    /// Entries `first..=last` of `term` after `prev`, committed up to `commit`.
    fn entries(term: u64, prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(term),
            prev_log_id: Some(log_id(term, prev)),
            entries: (prev + 1..=last)
                .map(|i| Entry { log_id: log_id(term, i), payload: EntryPayload::Blank })
                .collect(),
            leader_commit: Some(log_id(term, commit)),
        }
    }

    /// openraft's commit notice (and heartbeat): no entries after `prev`.
    fn notice(term: u64, prev: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        entries(term, prev, prev, commit)
    }

    #[test]
    fn a_notice_to_a_follower_that_just_accepted_entries_is_answered_once_owed() {
        let n = CommitNotices::new(WINDOW);
        let t0 = Instant::now();
        n.accepted(1, 2, &entries(3, 9, 12, 9), t0);
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0 + WINDOW / 2), Notice::Answer { owe: true });
        // A second notice while the first is owed needs no second delivery,
        // and the newer commit index is the one owed.
        assert_eq!(n.answer(1, 2, &notice(3, 11, 13), t0 + WINDOW / 2), Notice::Answer { owe: false });
        assert_eq!(n.answered(1), 2);
        assert_eq!(n.answered(7), 0);
        let owed = n.take_owed(1, 2).expect("a notice is owed");
        assert_eq!(owed.leader_commit, Some(log_id(3, 13)));
        assert!(n.take_owed(1, 2).is_none(), "owed once");
        assert_eq!(n.answer(1, 2, &notice(3, 12, 14), t0 + WINDOW), Notice::Answer { owe: true });
    }

    #[test]
    fn a_real_request_carrying_the_commit_pays_what_is_owed() {
        let n = CommitNotices::new(WINDOW);
        let t0 = Instant::now();
        n.accepted(1, 2, &entries(3, 9, 12, 9), t0);
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0), Notice::Answer { owe: true });
        // An older commit index does not pay it.
        n.accepted(1, 2, &entries(3, 12, 13, 11), t0);
        n.accepted(1, 2, &entries(3, 13, 14, 12), t0);
        assert!(n.take_owed(1, 2).is_none(), "the follower learnt commit 12 from entry 14's request");
    }

    #[test]
    fn requests_that_carry_news_or_reach_an_unconfirmed_follower_are_sent() {
        let n = CommitNotices::new(WINDOW);
        let t0 = Instant::now();
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0), Notice::Send, "nothing accepted yet");
        n.accepted(1, 2, &entries(3, 9, 12, 9), t0);
        assert_eq!(n.answer(1, 2, &entries(3, 12, 13, 12), t0), Notice::Send, "entries");
        assert_eq!(n.answer(1, 2, &notice(3, 13, 12), t0), Notice::Send, "a predecessor not accepted");
        assert_eq!(n.answer(1, 2, &notice(4, 12, 12), t0), Notice::Send, "another vote");
        assert_eq!(n.answer(1, 3, &notice(3, 12, 12), t0), Notice::Send, "another follower");
        assert_eq!(n.answer(2, 2, &notice(3, 12, 12), t0), Notice::Send, "another group");
        let no_prev = AppendEntriesRequest { prev_log_id: None, ..notice(3, 12, 12) };
        assert_eq!(n.answer(1, 2, &no_prev, t0), Notice::Send, "no predecessor");
        let later = t0 + WINDOW + Duration::from_millis(1);
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), later), Notice::Send, "accepted too long ago");
        assert_eq!(n.answered(1), 0);
        assert!(n.take_owed(1, 2).is_none());
    }

    #[test]
    fn the_highest_commit_index_sent_is_kept_per_group() {
        let n = CommitNotices::new(WINDOW);
        assert_eq!(n.told(1), 0);
        n.telling(1, &notice(3, 12, 12));
        n.telling(1, &notice(3, 10, 11));
        n.telling(2, &notice(3, 4, 4));
        n.telling(1, &AppendEntriesRequest { leader_commit: None, ..notice(3, 12, 12) });
        assert_eq!((n.told(1), n.told(2)), (12, 4));
    }

    #[test]
    fn acceptances_keep_the_furthest_entry_and_a_new_vote_starts_over() {
        let n = CommitNotices::new(WINDOW);
        let t0 = Instant::now();
        n.accepted(1, 2, &entries(3, 9, 12, 9), t0);
        // A late reply to an earlier request.
        n.accepted(1, 2, &entries(3, 8, 10, 8), t0);
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0), Notice::Answer { owe: true });
        // A probe without a log position changes nothing.
        let probe = AppendEntriesRequest { vote: vote(5), prev_log_id: None, entries: vec![], leader_commit: None };
        n.accepted(1, 2, &probe, t0);
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0), Notice::Answer { owe: false });
        // A new leader's acceptance replaces the old leader's link.
        n.accepted(1, 2, &entries(5, 12, 13, 12), t0);
        assert!(n.take_owed(1, 2).is_none(), "the old leader's owed notice is gone with its link");
        assert_eq!(n.answer(1, 2, &notice(3, 12, 12), t0), Notice::Send);
        assert_eq!(n.answer(1, 2, &notice(5, 13, 13), t0), Notice::Answer { owe: true });
    }
}
