//! The leader's sequencer loop for one group: it takes client transactions,
//! closes epochs as the [`Batcher`] decides, proposes each epoch as one Raft
//! entry and answers every client with its transaction's outcome once the
//! epoch is applied (durably) on this node.
//!
//! Epoch numbers are `term << 32 | sequence`: a leader numbers its epochs
//! 1, 2, 3... within its term, so epochs grow along the log without the
//! leader having to learn the previous leader's last epoch. An epoch whose
//! entry lands in a different term than it was numbered for (leadership
//! changed in between) is rejected deterministically by every replica, and
//! its clients are told to retry.
//!
//! openraft restores a restarted leader as leader *of the same term*, so a
//! sequence cannot simply restart at 1 when the driver does: before its
//! first proposal in a term the driver waits until the state machine has
//! applied every entry already in the local log, and continues after the
//! last epoch of the term found there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::raft::{client_write_error, NodeId, Raft, ServerMetrics};
use crate::sequencer::batcher::{Batcher, BatcherConfig};
use crate::sequencer::{Compression, EpochBatch, EpochResponse, GroupShared};
use crate::tree::{Txn, TxnOutcome};

/// Capacity of a group's submission queue, in transactions.
pub const SUBMIT_QUEUE_CAPACITY: usize = 16 * 1024;
/// How long a new leader may take to apply its log before proposing.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// The epoch number of sequence `seq` in `term`.
pub fn epoch_number(term: u64, seq: u64) -> u64 {
    (term << 32) | (seq & 0xffff_ffff)
}

/// The term an epoch number was minted in.
pub fn epoch_term(epoch: u64) -> u64 {
    epoch >> 32
}

/// A transaction's result as its client sees it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub outcome: TxnOutcome,
    pub index: u64,
    pub epoch: u64,
    pub stamp: u64,
}

struct Submission {
    txn: Txn,
    reply: oneshot::Sender<Result<Committed>>,
}

/// The clients of a proposed epoch, until it is answered: by the apply on
/// this node (`GroupShared::waiting`), or, if it failed or the apply did not
/// see it, by the task waiting for openraft's reply. Whichever takes it from
/// the map answers, so each client hears once.
#[derive(Debug)]
pub struct Waiting {
    replies: Vec<oneshot::Sender<Result<Committed>>>,
    /// Tells the driver an epoch of its pipeline is done.
    done: mpsc::UnboundedSender<()>,
}

impl Waiting {
    /// The clients of an epoch (in the order of its transactions) and the
    /// driver's signal.
    pub fn new(replies: Vec<oneshot::Sender<Result<Committed>>>, done: mpsc::UnboundedSender<()>) -> Self {
        Waiting { replies, done }
    }

    /// Answers each client with its transaction's outcome.
    pub fn answer(self, r: &EpochResponse) {
        if r.outcomes.len() != self.replies.len() {
            tracing::error!(
                index = r.index,
                epoch = r.epoch,
                "epoch response has {} outcomes for {} transactions",
                r.outcomes.len(),
                self.replies.len()
            );
        }
        for (reply, outcome) in self.replies.into_iter().zip(&r.outcomes) {
            let committed = Committed { outcome: outcome.clone(), index: r.index, epoch: r.epoch, stamp: r.stamp };
            let _ = reply.send(Ok(committed));
        }
        let _ = self.done.send(());
    }

    fn fail(self, e: &Error) {
        for reply in self.replies {
            let _ = reply.send(Err(clone_request_error(e)));
        }
        let _ = self.done.send(());
    }
}

/// Sends transactions to a group's sequencer.
#[derive(Clone)]
pub struct SequencerHandle {
    tx: mpsc::Sender<Submission>,
}

impl SequencerHandle {
    /// Sequences `txn` and waits for its outcome.
    pub async fn submit(&self, txn: Txn) -> Result<Committed> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submission { txn, reply })
            .await
            .map_err(|_| Error::Unavailable("the group's sequencer has stopped".into()))?;
        rx.await.map_err(|_| Error::Indeterminate("the sequencer stopped before answering".into()))?
    }
}

/// Epoch limits, the compression threshold and the closed-timestamp and
/// version-retention settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub batcher: BatcherConfig,
    pub compress_threshold: usize,
    /// Empty epochs are proposed after this long without one (0 = never).
    pub close_interval_ms: u64,
    /// Each batch lets versions older than its stamp minus this be collected.
    pub version_retention_ms: u64,
}

/// Starts the sequencer of `group` on this node.
pub fn spawn(
    group: u64,
    node: NodeId,
    raft: Raft,
    shared: Arc<GroupShared>,
    hlc: Arc<Hlc>,
    cfg: DriverConfig,
) -> SequencerHandle {
    let (tx, rx) = mpsc::channel(SUBMIT_QUEUE_CAPACITY);
    let compression = Compression::new(cfg.compress_threshold);
    let driver =
        Driver { group, node, raft, shared, hlc, cfg, rx, term: 0, seq: 0, compression, started: Instant::now() };
    tokio::spawn(driver.run());
    SequencerHandle { tx }
}

struct Driver {
    group: u64,
    node: NodeId,
    raft: Raft,
    shared: Arc<GroupShared>,
    hlc: Arc<Hlc>,
    cfg: DriverConfig,
    rx: mpsc::Receiver<Submission>,
    /// The term `seq` counts in.
    term: u64,
    seq: u64,
    compression: Compression,
    started: Instant,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self) {
        let mut batcher: Batcher<Submission> = Batcher::new(self.cfg.batcher.clone());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let close_every = Duration::from_millis(self.cfg.close_interval_ms.max(1));
        let mut close_tick = tokio::time::interval(close_every);
        close_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = batcher.deadline().map(|d| d.saturating_sub(self.now_ms()));
            tokio::select! {
                biased;
                Some(()) = done_rx.recv() => batcher.committed(),
                msg = self.rx.recv(), if !batcher.full() => match msg {
                    Some(sub) => {
                        let now = self.now_ms();
                        let bytes = sub.txn.approx_bytes();
                        batcher.push(sub, bytes, now);
                        while !batcher.full() {
                            match self.rx.try_recv() {
                                Ok(sub) => {
                                    let bytes = sub.txn.approx_bytes();
                                    batcher.push(sub, bytes, now);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(sleep.unwrap_or(0))), if sleep.is_some() => {}
                _ = close_tick.tick(), if self.cfg.close_interval_ms > 0 => {
                    if self.leader_term().is_ok() && batcher.poll_idle(self.now_ms(), self.cfg.close_interval_ms) {
                        self.propose(Vec::new(), done_tx.clone()).await;
                    }
                }
            }
            while let Some(subs) = batcher.poll(self.now_ms()) {
                self.propose(subs, done_tx.clone()).await;
            }
        }
        for sub in batcher.drain() {
            let _ = sub.reply.send(Err(Error::Unavailable("shutting down".into())));
        }
        tracing::debug!(group = self.group, "sequencer stopped");
    }

    /// The leader's current term, or who to ask instead.
    fn leader_term(&self) -> Result<u64> {
        // Borrowed, not cloned: this runs for every epoch.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.current_leader == Some(self.node) && m.state.is_leader() {
            return Ok(m.current_term);
        }
        let leader_addr =
            m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        Err(Error::NotLeader { group: self.group, leader: m.current_leader, leader_addr })
    }

    /// Makes `self.seq` continue the sequence of `term` (see module docs).
    async fn catch_up(&mut self, term: u64) -> Result<()> {
        if term == self.term {
            return Ok(());
        }
        let last_log = self.raft.metrics().borrow().last_log_index;
        self.raft.wait(Some(CATCH_UP_TIMEOUT)).applied_index_at_least(last_log, "sequencer catch-up").await.map_err(
            |e| Error::Unavailable(format!("group {}: the new leader is still applying its log: {e}", self.group)),
        )?;
        let applied = self.shared.epoch.load(Ordering::Acquire);
        self.seq = if epoch_term(applied) == term { applied & 0xffff_ffff } else { 0 };
        self.term = term;
        tracing::info!(group = self.group, term, seq = self.seq, "sequencing as leader");
        Ok(())
    }

    async fn propose(&mut self, subs: Vec<Submission>, done: mpsc::UnboundedSender<()>) {
        let ready = match self.leader_term() {
            Ok(term) => self.catch_up(term).await.map(|()| term),
            Err(e) => Err(e),
        };
        let term = match ready {
            Ok(t) => t,
            Err(e) => {
                Waiting::new(subs.into_iter().map(|s| s.reply).collect(), done).fail(&e);
                return;
            }
        };
        self.seq += 1;
        let epoch = epoch_number(term, self.seq);
        let (txns, replies): (Vec<Txn>, Vec<_>) = subs.into_iter().map(|s| (s.txn, s.reply)).unzip();
        // Above every applied stamp even if this node's clock did not adopt
        // them (too far ahead of it): stamps never go back along the log.
        let stamp = self.hlc.now().max(self.shared.stamp.load(Ordering::Acquire) + 1);
        let retention = crate::hlc::pack(self.cfg.version_retention_ms, 0);
        let batch = EpochBatch { epoch, stamp, txns, gc_before: stamp.saturating_sub(retention) };
        let group = self.group;
        // Waiting before it is proposed: the apply may come before
        // `client_write_ff` returns.
        self.shared.wait_for(epoch, Waiting::new(replies, done));
        // Hand the proposal to openraft here, in the driver's own order:
        // epochs must reach the log in the order they were numbered.
        // Only the wait for the outcome runs in its own task.
        let submitted = match batch.encode(&mut self.compression) {
            Ok(payload) => self
                .raft
                .client_write_ff(payload)
                .await
                .map_err(|e| Error::Unavailable(format!("group {group}: raft stopped: {e}"))),
            Err(e) => Err(e),
        };
        let (raft, me, shared) = (self.raft.clone(), self.node, self.shared.clone());
        tokio::spawn(async move {
            let result = match submitted {
                Ok(rx) => tokio::select! {
                    biased;
                    reply = rx => match reply {
                        Ok(Ok(resp)) => Ok(resp),
                        Ok(Err(e)) => Err(client_write_error(group, openraft::error::RaftError::APIError(e))),
                        Err(_) => Err(dropped_reply(&raft, group, me, epoch).await),
                    },
                    // openraft 0.9 does not always answer a write pending
                    // when its leader steps down (e.g. removed from the
                    // group): never leave the clients waiting.
                    why = leadership_lost(raft.clone(), me, term) => Err(Error::Indeterminate(format!(
                        "group {group}: node {me} stopped leading term {term} before epoch {epoch} was answered \
                         ({why}); its outcome is unknown (a retry with the same request id is safe)"
                    ))),
                },
                Err(e) => Err(e),
            };
            // Usually the apply answered already.
            let Some(waiting) = shared.take_waiting(epoch) else {
                return;
            };
            match result {
                Ok(resp) => waiting.answer(&resp.data),
                Err(e) => {
                    tracing::debug!(group, epoch, error = %e, "epoch proposal failed");
                    waiting.fail(&e);
                }
            }
        });
    }
}

/// Resolves once `me` no longer leads `term` (or its Raft stopped), with
/// the reason.
async fn leadership_lost(raft: Raft, me: NodeId, term: u64) -> String {
    // The server metrics change only with the vote, the role, the leader or
    // the membership. `Raft::metrics` is sent again on every turn of the
    // Raft core's loop, several times per entry, and would wake every
    // epoch's task each time.
    let mut server = raft.server_metrics();
    let lost = |m: &ServerMetrics| m.vote.leader_id().get_term() != term || m.current_leader != Some(me);
    let changed = server
        .wait_for(lost)
        .await
        .map(|m| format!("now term {}, leader {:?}", m.vote.leader_id().get_term(), m.current_leader));
    match changed {
        Ok(why) => why,
        // The core is gone: a fatal error says why.
        Err(_) => match &raft.metrics().borrow().running_state {
            Err(fatal) => format!("its raft stopped: {fatal}"),
            Ok(()) => "its raft is gone".to_string(),
        },
    }
}

/// The error for an epoch whose reply raft dropped: it stopped, usually
/// on a storage fault (a full disk, say), which its metrics name once it
/// has shut down — shortly after it dropped the reply.
async fn dropped_reply(raft: &Raft, group: u64, me: NodeId, epoch: u64) -> Error {
    let stopped = raft.wait(Some(Duration::from_secs(2))).metrics(|m| m.running_state.is_err(), "raft stopped").await;
    let why = match stopped.as_ref().map(|m| &m.running_state) {
        Ok(Err(fatal)) => format!("group {group} is stopped on node {me}: {fatal}"),
        _ => format!("group {group}: raft dropped the reply"),
    };
    Error::Indeterminate(format!(
        "{why}; the outcome of epoch {epoch} is unknown (a retry with the same request id is safe)"
    ))
}

/// Request errors are re-created per waiting client.
fn clone_request_error(e: &Error) -> Error {
    match e {
        Error::NotLeader { group, leader, leader_addr } => {
            Error::NotLeader { group: *group, leader: *leader, leader_addr: leader_addr.clone() }
        }
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        other => Error::Indeterminate(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_across_terms() {
        assert!(epoch_number(2, 1) > epoch_number(1, 5000));
        assert_eq!(epoch_term(epoch_number(7, 3)), 7);
        assert_eq!(epoch_number(7, 3) & 0xffff_ffff, 3);
    }
}
