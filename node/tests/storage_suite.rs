//! openraft's own storage conformance suite, run against the RocksDB store.

use metastore_node::storage::{self, LogStore, StateMachine};
use metastore_node::types::{StorageError, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm, _reader) = storage::open(dir.path()).await.expect("open store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rocksdb_store_passes_openraft_conformance() {
    if let Err(e) = Suite::test_all(RocksBuilder).await {
        panic!("openraft's storage suite failed: {e}");
    }
}
