//! Durable storage of one member: the raft log, the raft metadata and the key-value state
//! machine, all in one RocksDB instance, one column family each.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `raft_log` | log index (u64, big-endian) | postcard-encoded [`Entry`](crate::types::Entry) |
//! | `raft_meta` | `vote`, `committed`, `last_purged` | postcard |
//! | `kv` | user key (any bytes) | [`codec::encode_record`]: the key as of now |
//! | `history` | [`codec::history_key`] (key, revision) | the key's record as of that revision, or empty for its deletion |
//! | `changes` | [`codec::change_key`] (revision, sub) | the user key that changed |
//! | `leases` | [`codec::lease_key`] (lease id) | [`codec::encode_lease`]: its granted TTL |
//! | `lease_keys` | [`codec::attachment_key`] (lease id, user key) | empty: the key is attached |
//! | `auth` | `state` | postcard: the [auth state](crate::auth::AuthState), users, roles and all |
//! | `sm_meta` | `last_applied`, `last_membership` (postcard); `revision`, `compacted`, `format`, `cluster_id` (u64) |
//!
//! Sharing one instance gives the log and the state machine one write-ahead log, whose order
//! is the order of writes: whatever survives a crash is a prefix of what was written.

mod apply;
mod auth;
mod changes;
mod checkpoint;
mod codec;
mod compactor;
mod identity;
mod leases;
mod log_store;
#[cfg(test)]
mod model_tests;
mod reader;
pub mod restore;
mod snapshot;
mod state_machine;
mod wal_sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

pub use crate::engine::RevisionError;
pub use auth::AuthCell;
pub use changes::{Change, ChangesBudget, ChangesPage};
pub use checkpoint::Checkpoint;
pub use compactor::Compactor;
pub use identity::{ClusterId, LEGACY_CLUSTER_ID};
pub use log_store::LogStore;
pub use reader::{KeyRead, KvReader, RangePage};
pub use snapshot::{Piece, Snapshot, SnapshotData, SnapshotInbox, SnapshotPieces, PIECE_BYTES};
pub use state_machine::StateMachine;

/// A store in a temporary directory, and writes applied to it as the state machine applies them.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::state_machine::tests::{apply_writes, open_test_db};
}

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT: &str = "raft_meta";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_HISTORY: &str = "history";
pub(crate) const CF_CHANGES: &str = "changes";
pub(crate) const CF_LEASES: &str = "leases";
pub(crate) const CF_LEASE_KEYS: &str = "lease_keys";
pub(crate) const CF_AUTH: &str = "auth";
pub(crate) const CF_SM: &str = "sm_meta";
/// Every column family of a store.
const COLUMN_FAMILIES: [&str; 9] =
    [CF_LOG, CF_RAFT, CF_KV, CF_HISTORY, CF_CHANGES, CF_LEASES, CF_LEASE_KEYS, CF_AUTH, CF_SM];

/// The column families of the key-value data: what a snapshot carries besides its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Kv,
    History,
    Changes,
    Leases,
    LeaseKeys,
    Auth,
}

impl Family {
    pub(crate) const ALL: [Family; 6] =
        [Family::Kv, Family::History, Family::Changes, Family::Leases, Family::LeaseKeys, Family::Auth];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Kv => CF_KV,
            Family::History => CF_HISTORY,
            Family::Changes => CF_CHANGES,
            Family::Leases => CF_LEASES,
            Family::LeaseKeys => CF_LEASE_KEYS,
            Family::Auth => CF_AUTH,
        }
    }

    /// How a snapshot names the family (0 is its end mark).
    pub(crate) fn tag(self) -> u8 {
        match self {
            Family::Kv => 1,
            Family::History => 2,
            Family::Changes => 3,
            Family::Leases => 4,
            Family::LeaseKeys => 5,
            Family::Auth => 6,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.tag() == tag)
    }

    /// Refuses an entry of this family that does not decode: snapshots arrive from peers.
    pub(crate) fn check(self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            Family::Kv => codec::decode_record(value).map(drop),
            Family::History => {
                codec::decode_history_key(key)?;
                codec::decode_history_entry(value).map(drop)
            }
            Family::Changes => codec::decode_change_key(key).map(drop),
            Family::Leases => {
                codec::decode_lease_key(key)?;
                codec::decode_lease(value).map(drop)
            }
            Family::LeaseKeys => codec::decode_attachment_key(key).map(drop),
            Family::Auth => auth::check(key, value),
        }
    }
}

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
    #[error(
        "the data directory was written in storage format {found}, and this version of metaStore \
         reads format {}: start this member on an empty data directory and let it join, or use \
         the version that wrote it",
        codec::FORMAT_VERSION
    )]
    UnsupportedFormat { found: u64 },
    #[error("storage task failed: {0}")]
    Task(String),
    /// A read asked for a revision the store cannot serve: not a failure of the store.
    #[error(transparent)]
    Revision(#[from] RevisionError),
    /// A read's answer would be larger than an answer may be.
    #[error(transparent)]
    TooLarge(#[from] crate::engine::TooLarge),
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
    let checked = db.clone();
    run_blocking(move || check_format(&checked)).await?;
    // Users and roles that cannot be read stop the start: guessing would make this member
    // admit or refuse writes unlike the others.
    let checked = db.clone();
    run_blocking(move || auth::read(&checked).map(drop)).await?;
    let log_store = LogStore::new(db.clone())?;
    let reader = KvReader::new(db.clone());
    let state_machine = StateMachine::new(db, dir.join("snapshots"), &reader).await?;
    Ok((log_store, state_machine, reader))
}

/// Writes `batch` and waits until it is on disk.
fn write_synced(db: &DB, batch: rocksdb::WriteBatch) -> Result<(), StoreError> {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    Ok(db.write_opt(batch, &opts)?)
}

/// Writes a snapshot of the store in `dir` (a stopped member's: RocksDB refuses a store another
/// process has open) to `out`, sealed; its revision and size.
pub async fn export_snapshot(dir: &Path, out: &Path) -> Result<(u64, u64), StoreError> {
    if !dir.join("db").is_dir() {
        return Err(StoreError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no store here")));
    }
    let (_, state_machine, _) = open(dir).await?;
    state_machine.export(out.to_path_buf()).await
}

/// True when the store in `dir` holds no raft state: no log, no vote, nothing applied.
/// Such a member may be bootstrapped; any other never is.
pub async fn is_pristine(log_store: &LogStore, reader: &KvReader) -> Result<bool, StoreError> {
    Ok(!log_store.has_any_state().await? && reader.last_applied().await?.is_none())
}

/// Refuses a store of another layout, and marks a new one with this version's.
fn check_format(db: &DB) -> Result<(), StoreError> {
    let sm = cf(db, CF_SM)?;
    if let Some(found) = db.get_cf(sm, codec::FORMAT)? {
        let found = codec::decode_u64(&found, "format")?;
        return match found {
            codec::FORMAT_VERSION => Ok(()),
            2 => history_from_format_two(db),
            found => Err(StoreError::UnsupportedFormat { found }),
        };
    }
    // Stores of the first format have no mark; they have a vote, a log or applied entries.
    let has = |name: &str| -> Result<bool, StoreError> {
        Ok(db.iterator_cf(cf(db, name)?, rocksdb::IteratorMode::Start).next().transpose()?.is_some())
    };
    let voted = db.get_cf(cf(db, CF_RAFT)?, codec::VOTE)?.is_some();
    if voted || has(CF_LOG)? || has(CF_SM)? || has(CF_KV)? || has(CF_HISTORY)? {
        return Err(StoreError::UnsupportedFormat { found: 1 });
    }
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(sm, codec::FORMAT, codec::encode_u64(codec::FORMAT_VERSION), &opts)?;
    Ok(())
}

/// Brings a store of format 2 (etcd's revisions, no history) to format 3: each key's current
/// record becomes its history at its mod revision, and the store is compacted at its current
/// revision, since nothing older was kept: reads below it answer `compacted`, never a wrong
/// state. One synced batch, so a crash leaves the store in one format or the other.
fn history_from_format_two(db: &DB) -> Result<(), StoreError> {
    let (kv, history, sm) = (cf(db, CF_KV)?, cf(db, CF_HISTORY)?, cf(db, CF_SM)?);
    let mut batch = rocksdb::WriteBatch::default();
    let mut keys = 0u64;
    for item in db.iterator_cf(kv, rocksdb::IteratorMode::Start) {
        let (key, record) = item?;
        let mod_revision = codec::decode_record(&record)?.mod_revision;
        batch.put_cf(history, codec::history_key(&key, mod_revision), &record);
        keys += 1;
    }
    let revision = state_machine::read_revision(db, &rocksdb::ReadOptions::default())?;
    batch.put_cf(sm, codec::COMPACTED, codec::encode_u64(revision));
    batch.put_cf(sm, codec::FORMAT, codec::encode_u64(codec::FORMAT_VERSION));
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    tracing::info!(keys, compacted = revision, "storage format 2 brought to 3: history begins here");
    Ok(())
}

const MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) fn open_db(path: &Path) -> Result<DB, StoreError> {
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
    let cfs = COLUMN_FAMILIES.map(|name| {
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

/// The sum of RocksDB `properties` over the column families `families` (a property read
/// without a family reads the default one, which holds nothing).
fn sum_properties<'a>(
    db: &DB,
    families: impl IntoIterator<Item = &'a str>,
    properties: &[&rocksdb::properties::PropName],
) -> u64 {
    families
        .into_iter()
        .filter_map(|name| db.cf_handle(name))
        .flat_map(|cf| properties.iter().filter_map(move |p| db.property_int_value_cf(cf, *p).ok().flatten()))
        .sum()
}

/// On-disk size of the store's table files, every column family's.
pub(crate) fn disk_size(db: &DB) -> u64 {
    sum_properties(db, COLUMN_FAMILIES, &[rocksdb::properties::TOTAL_SST_FILES_SIZE])
}

/// The size of the keys' store, as etcd reports its database's (its log not included): the
/// state machine's column families, their table files and the memory their memtables use for
/// what is not in those files yet.
pub(crate) fn stored_size(db: &DB) -> u64 {
    let state = Family::ALL.map(Family::name).into_iter().chain([CF_SM]);
    let properties =
        [rocksdb::properties::TOTAL_SST_FILES_SIZE, rocksdb::properties::CUR_SIZE_ALL_MEM_TABLES];
    sum_properties(db, state, &properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_store_is_marked_with_this_format_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(open(dir.path()).await.expect("a new store"));
        drop(open(dir.path()).await.expect("reopened"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_of_the_first_format_is_refused_with_both_formats_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            // metaStore 0.1 left a vote and applied entries, and no format mark.
            let db = open_db(&dir.path().join("db")).expect("open");
            db.put_cf(cf(&db, CF_RAFT).expect("cf"), codec::VOTE, b"vote").expect("put");
            db.put_cf(cf(&db, CF_SM).expect("cf"), codec::LAST_APPLIED, b"applied").expect("put");
        }
        let refused = open(dir.path()).await.err().expect("refused");
        assert!(matches!(refused, StoreError::UnsupportedFormat { found: 1 }), "{refused}");
        let message = refused.to_string();
        assert!(message.contains("format 1") && message.contains("format 3"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_of_format_two_gains_history_from_its_current_keys_and_is_compacted_there() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = crate::engine::KeyRecord {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
            value: b"v".to_vec(),
        };
        {
            let db = open_db(&dir.path().join("db")).expect("open");
            let sm = cf(&db, CF_SM).expect("cf");
            db.put_cf(sm, codec::FORMAT, codec::encode_u64(2)).expect("put");
            db.put_cf(sm, codec::REVISION, codec::encode_u64(9)).expect("put");
            db.put_cf(cf(&db, CF_KV).expect("cf"), b"\0k", codec::encode_record(&record)).expect("put");
        }
        let (_, _, reader) = open(dir.path()).await.expect("format 2 is brought to 3");
        let before = reader.get(b"\0k".to_vec(), Some(4)).await.expect_err("compacted");
        assert!(matches!(
            before,
            StoreError::Revision(RevisionError::Compacted { requested: 4, compacted: 9 })
        ));
        drop(reader);
        drop(open(dir.path()).await.expect("reopened as format 3"));
        let db = open_db(&dir.path().join("db")).expect("open");
        let kept = db.get_cf(cf(&db, CF_HISTORY).expect("cf"), codec::history_key(b"\0k", 5)).expect("read");
        assert_eq!(kept, Some(codec::encode_record(&record)), "the current record is its history at 5");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_of_a_later_format_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let db = open_db(&dir.path().join("db")).expect("open");
            db.put_cf(cf(&db, CF_SM).expect("cf"), codec::FORMAT, codec::encode_u64(4)).expect("put");
        }
        let refused = open(dir.path()).await.err().expect("refused");
        assert!(matches!(refused, StoreError::UnsupportedFormat { found: 4 }), "{refused}");
    }
}
