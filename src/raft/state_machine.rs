//! openraft's [`RaftStateMachine`] over the sequencer state machine
//! ([`GroupStateMachine`]). All work runs on tokio's blocking pool: applying
//! an epoch blocks on the vshard executors and on a synced RocksDB write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorVerb, RaftSnapshotBuilder};

use crate::error::Error;
use crate::raft::snapshot_data::SnapshotData;
use crate::raft::{storage_error, Entry, LogId, Membership, SnapshotMeta, StorageError, TypeConfig};
use crate::sequencer::snapshot::SnapshotStore;
use crate::sequencer::{EpochResponse, GroupStateMachine};

/// Handle to a group's state machine; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<GroupStateMachine>>,
    /// Builds snapshots without locking `inner`: a large snapshot takes
    /// seconds, and applying must not wait for it.
    snapshots: SnapshotStore,
    /// Snapshots installed from a leader since this process started.
    installed: Arc<AtomicU64>,
}

impl StateMachine {
    pub fn new(sm: GroupStateMachine) -> Self {
        let snapshots = sm.snapshot_store();
        Self { inner: Arc::new(Mutex::new(sm)), snapshots, installed: Arc::new(AtomicU64::new(0)) }
    }

    /// The counter of snapshots this replica installed since it started (the
    /// status API shows it; tests use it to prove the snapshot path ran).
    pub fn snapshots_installed(&self) -> Arc<AtomicU64> {
        self.installed.clone()
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
        result.map_err(|e| {
            tracing::error!(error = %e, "state machine failed; stopping this group's replica");
            storage_error(e, verb)
        })
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> std::time::Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write into; the clock id is a
    // constant every Linux kernel supports.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    } else {
        std::time::Duration::ZERO
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshots = self.snapshots.clone();
        let started = std::time::Instant::now();
        let (built, cpu) = tokio::task::spawn_blocking(move || {
            let cpu = thread_cpu_time();
            (snapshots.build(), thread_cpu_time().saturating_sub(cpu))
        })
        .await
        .map_err(|e| storage_error(e, ErrorVerb::Write))?;
        let (meta, data) = built.map_err(|e| {
            tracing::error!(error = %e, "building a snapshot failed; stopping this group's replica");
            storage_error(e, ErrorVerb::Write)
        })?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.size().unwrap_or(0),
            ms = started.elapsed().as_millis() as u64,
            cpu_ms = cpu.as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot { meta, snapshot: Box::new(data.into()) })
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
        self.run(ErrorVerb::Write, move |sm| entries.into_iter().map(|e| sm.apply(e)).collect()).await
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

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.run(ErrorVerb::Read, |sm| sm.current_snapshot()).await?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data.into()) }))
    }
}
