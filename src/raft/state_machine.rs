//! openraft's [`RaftStateMachine`] over the sequencer state machine
//! ([`GroupStateMachine`]). Its work runs on tokio's blocking pool: applying
//! an epoch may wait for the vshard executors and writes to RocksDB. The
//! exception is a small apply (entries of at most [`INLINE_APPLY_MAX_BYTES`],
//! a few transactions): it runs on the calling task, because handing it to
//! the pool and back costs more thread switches than the apply takes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorVerb, RaftSnapshotBuilder};

use crate::error::Error;
use crate::raft::snapshot_data::SnapshotData;
use crate::raft::{storage_error, Entry, LogId, Membership, SnapshotMeta, StorageError, TypeConfig};
use crate::sequencer::snapshot::{SnapshotContent, SnapshotStore};
use crate::sequencer::{EpochResponse, GroupStateMachine};

/// Entries whose payloads total at most this many bytes are applied on the
/// state machine's task, not on the blocking pool (see the module docs):
/// an epoch of one put is ~0.4 KB and applies in tens of µs; at 64 clients
/// an epoch holds ~30 puts (~10 KB) and still goes to the pool.
pub const INLINE_APPLY_MAX_BYTES: usize = 4 << 10;

/// Handle to a group's state machine; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<GroupStateMachine>>,
    /// Records snapshot positions without locking `inner`: the flush
    /// before a record takes a while, and applying must not wait for it.
    snapshots: SnapshotStore,
    /// Snapshots installed from a leader since this process started.
    installed: Arc<AtomicU64>,
    /// Whether openraft asked for the current snapshot yet (see
    /// `get_current_snapshot`).
    started: bool,
}

impl StateMachine {
    pub fn new(sm: GroupStateMachine) -> Self {
        let snapshots = sm.snapshot_store();
        Self { inner: Arc::new(Mutex::new(sm)), snapshots, installed: Arc::new(AtomicU64::new(0)), started: false }
    }

    /// The counter of snapshots this replica installed since it started (the
    /// status API shows it; tests use it to prove the snapshot path ran).
    pub fn snapshots_installed(&self) -> Arc<AtomicU64> {
        self.installed.clone()
    }

    /// Runs `f` on the calling task if the state machine is free at once;
    /// otherwise (a snapshot holds it) on the blocking pool like [`Self::run`].
    async fn run_here<T: Send + 'static>(
        &self,
        verb: ErrorVerb,
        f: impl FnOnce(&mut GroupStateMachine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, StorageError> {
        // A block, so the (not `Send`) guard is gone before the await.
        {
            let guard = match self.inner.try_lock() {
                Ok(sm) => Some(sm),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut sm) = guard {
                return f(&mut sm).map_err(|e| failed(e, verb));
            }
        }
        self.run(verb, f).await
    }

    async fn run<T: Send + 'static>(
        &self,
        verb: ErrorVerb,
        f: impl FnOnce(&mut GroupStateMachine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut sm = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut sm)
        })
        .await
        .map_err(|e| storage_error(e, verb))?;
        result.map_err(|e| failed(e, verb))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Records the applied position as the snapshot, after a flush (see
    /// [`crate::sequencer::snapshot`]): no copy of the state is made.
    /// openraft uses only the meta of what this returns, so the data is
    /// empty.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let snapshots = self.snapshots.clone();
        let recorded = tokio::task::spawn_blocking(move || snapshots.record())
            .await
            .map_err(|e| storage_error(e, ErrorVerb::Write))?;
        let meta = recorded.map_err(|e| {
            tracing::error!(error = %e, "recording a snapshot failed; stopping this group's replica");
            storage_error(e, ErrorVerb::Write)
        })?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            ms = started.elapsed().as_millis() as u64,
            "recorded a snapshot position"
        );
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotContent::Bytes(Vec::new()).into()) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        self.run(ErrorVerb::Read, |sm| Ok((sm.applied().last_applied, sm.applied().membership.clone()))).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EpochResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let small = payload_bytes(&entries) <= INLINE_APPLY_MAX_BYTES;
        let apply = move |sm: &mut GroupStateMachine| entries.into_iter().map(|e| sm.apply(e)).collect();
        if small {
            self.run_here(ErrorVerb::Write, apply).await
        } else {
            self.run(ErrorVerb::Write, apply).await
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let target = self.run(ErrorVerb::Write, |sm| sm.receive_snapshot()).await?;
        Ok(Box::new(target.into()))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let meta = meta.clone();
        let content = snapshot.into_content().await.map_err(|e| storage_error(e, ErrorVerb::Write))?;
        let id = meta.snapshot_id.clone();
        self.run(ErrorVerb::Write, move |sm| sm.install_snapshot(&meta, content)).await?;
        self.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %id, "installed a snapshot received from the leader");
        Ok(())
    }

    /// The snapshot to send to a follower behind the log: usually an image
    /// of the current state, written while openraft already streams it.
    ///
    /// openraft's first call comes from its start-up (`get_initial_state`),
    /// which only keeps the meta and may purge the log up to it: that call
    /// gets only a stored snapshot with data, never an image at a position
    /// that is not yet flushed. For a recorded position it gets `None`, and
    /// openraft then records a position again (a flush) if it had purged
    /// anything.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let starting = !std::mem::replace(&mut self.started, true);
        let current = self
            .run(ErrorVerb::Read, move |sm| if starting { sm.stored_snapshot() } else { sm.current_snapshot() })
            .await?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data.into()) }))
    }
}

/// A state machine error as openraft's, which stops the group's replica.
fn failed(e: Error, verb: ErrorVerb) -> StorageError {
    tracing::error!(error = %e, "state machine failed; stopping this group's replica");
    storage_error(e, verb)
}

/// The bytes of the epoch payloads among `entries`.
fn payload_bytes(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(p) => p.0.len(),
            _ => 0,
        })
        .sum()
}
