//! openraft's own storage conformance suite (`openraft::testing::Suite`)
//! against Arbor's RocksDB log store and state machine.

use std::sync::Arc;

use arbor::hlc::{Hlc, SystemClock};
use arbor::raft::log_store::LogStore;
use arbor::raft::state_machine::StateMachine;
use arbor::raft::{StorageError, TypeConfig};
use arbor::routing::RangeDesc;
use arbor::sequencer::{GroupShared, GroupStateMachine};
use arbor_storage::{Durability, Engine, Rocks, RocksOptions};
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(Rocks::open(dir.path(), &RocksOptions::default()).unwrap());
        let range = RangeDesc { group: 7, start: Vec::new(), end: Vec::new() };
        let hlc = Arc::new(Hlc::new(Arc::new(SystemClock), 500));
        let sm =
            GroupStateMachine::open(range, engine.clone(), 2, Arc::new(GroupShared::default()), hlc, Durability::Sync)
                .unwrap();
        Ok((dir, LogStore::new(7, engine, Durability::Sync), StateMachine::new(sm)))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case on a runtime of its own.
    Suite::test_all(Builder).unwrap();
}
