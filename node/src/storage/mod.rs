//! Durable storage of one member: the raft log, the raft metadata and the key-value state
//! machine, all in one RocksDB instance, one column family each.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `raft_log` | log index (u64, big-endian) | postcard-encoded [`Entry`](crate::types::Entry) |
//! | `raft_meta` | `vote`, `committed`, `last_purged` | postcard |
//! | `kv` | user key (UTF-8) | [`codec::encode_record`] |
//! | `sm_meta` | `last_applied`, `last_membership` | postcard |
//!
//! Sharing one instance gives the log and the state machine one write-ahead log, whose order
//! is the order of writes: whatever survives a crash is a prefix of what was written.

mod codec;
mod log_store;
mod snapshot;
mod state_machine;
mod wal_sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

pub use log_store::LogStore;
pub use state_machine::{KvReader, RangePage, SnapshotInbox, StateMachine};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT: &str = "raft_meta";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_SM: &str = "sm_meta";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("encoding: {0}")]
    Codec(#[from] postcard::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }
}

/// Opens (creating if needed) the store in `dir`: the raft log store, the state machine, and a
/// reader for serving client reads beside raft.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachine, KvReader), StoreError> {
    let db_dir = dir.join("db");
    let db = Arc::new(run_blocking(move || open_db(&db_dir)).await?);
    let log_store = LogStore::new(db.clone())?;
    let state_machine = StateMachine::new(db.clone(), dir.join("snapshots")).await?;
    let reader = KvReader::new(db);
    Ok((log_store, state_machine, reader))
}

/// True when the store in `dir` holds no raft state: no log, no vote, nothing applied.
/// Such a member may be bootstrapped; any other never is.
pub async fn is_pristine(log_store: &LogStore, reader: &KvReader) -> Result<bool, StoreError> {
    Ok(!log_store.has_any_state().await? && reader.last_applied().await?.is_none())
}

const MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;

fn open_db(path: &Path) -> Result<DB, StoreError> {
    std::fs::create_dir_all(path).map_err(|e| StoreError::io(path, e))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Metadata stores are small; keep the memory footprint and file count modest.
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    // Bounds the write-ahead log that a restart after a crash must replay: beyond it, RocksDB
    // flushes the column families holding the oldest log. Unbounded, a million fresh keys left
    // hundreds of MB to replay, and a restart took seconds.
    opts.set_max_total_wal_size(MAX_WAL_BYTES);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cfs = [CF_LOG, CF_RAFT, CF_KV, CF_SM].map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    Ok(DB::open_cf_descriptors(&opts, path, cfs)?)
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::Corrupt(format!("column family {name} is missing")))
}

/// Runs RocksDB work on the blocking pool, so that disk I/O never stalls the async runtime.
async fn run_blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Below this many bytes, an unsynced write goes straight to RocksDB's memtable on the calling
/// task: it takes microseconds, less than handing it to a blocking thread and back, which on
/// the write path happens several times per commit on every member.
const INLINE_WRITE_BYTES: usize = 64 * 1024;

/// Runs an unsynced write of about `bytes` bytes: inline when small, else on a blocking thread.
async fn run_write<T, F>(bytes: usize, f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    if bytes < INLINE_WRITE_BYTES {
        f()
    } else {
        run_blocking(f).await
    }
}

/// Approximate on-disk size of the store's table files.
pub(crate) fn disk_size(db: &DB) -> u64 {
    db.property_int_value(rocksdb::properties::TOTAL_SST_FILES_SIZE).ok().flatten().unwrap_or(0)
}
