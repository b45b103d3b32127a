//! openraft's own storage conformance suite (`openraft::testing::Suite`)
//! against Arbor's log store (entries in RocksDB or in segment files) and
//! state machine.

use std::sync::Arc;

use arbor::hlc::{Hlc, SystemClock};
use arbor::raft::log_store::LogStore;
use arbor::raft::state_machine::StateMachine;
use arbor::raft::{StorageError, TypeConfig};
use arbor::routing::RangeDesc;
use arbor::sequencer::{GroupShared, GroupStateMachine};
use arbor_storage::{Durability, Engine, Rocks, RocksOptions};
use openraft::testing::{StoreBuilder, Suite};

/// Builds stores with the entries in RocksDB, or in segment files
/// (`raft.log_files`) when `.0`.
struct Builder(bool);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(Rocks::open(dir.path(), &RocksOptions::default()).unwrap());
        let range = RangeDesc { group: 7, start: Vec::new(), end: Vec::new() };
        let hlc = Arc::new(Hlc::new(Arc::new(SystemClock), 500));
        let sm =
            GroupStateMachine::open(range, engine.clone(), 2, Arc::new(GroupShared::default()), hlc, Durability::Sync)
                .unwrap();
        let mut log = LogStore::new(7, engine, Durability::Sync);
        if self.0 {
            log = log.with_segment_log(&dir.path().join("raft-log"), 64 << 10).unwrap();
        }
        Ok((dir, log, StateMachine::new(sm)))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case on a runtime of its own.
    Suite::test_all(Builder(false)).unwrap();
}

#[test]
fn openraft_storage_suite_with_the_log_in_segment_files() {
    Suite::test_all(Builder(true)).unwrap();
}
