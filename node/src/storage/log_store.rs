//! The raft log and vote, implementing openraft's [`RaftLogStorage`].
//!
//! How each clause of openraft's contract is met:
//! - *Entries readable when `append` returns*: they are written to RocksDB (memtable and WAL)
//!   before it returns.
//! - *Callback only once durable*: the callback goes to the [`WalSyncer`], which fires it after
//!   an fsync of the write-ahead log that covers the entries. One fsync serves a whole batch.
//! - *Vote durable before `save_vote` returns*: it is written with `sync = true`.
//! - *Serialized I/O, no holes*: openraft calls one method at a time on this store; every call
//!   waits for its own write, and truncate/purge remove contiguous ranges. RocksDB's one
//!   write-ahead log keeps them in call order, so an fsync made for a later write (a vote, a
//!   truncation) also covers every earlier append.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB};

use super::codec::{self, decode, decode_log_key, encode, log_key};
use super::wal_sync::WalSyncer;
use super::{cf, run_blocking, run_write, StoreError, CF_LOG, CF_RAFT};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// The raft log store. Cloning is cheap; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<WalSyncer>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        let syncer = Arc::new(WalSyncer::start(db.clone())?);
        Ok(Self { db, syncer })
    }

    /// True when anything raft-related was ever stored: a vote, a log entry or a purge mark.
    pub(crate) async fn has_any_state(&self) -> Result<bool, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let raft = cf(&db, CF_RAFT)?;
            if db.get_cf(raft, codec::VOTE)?.is_some() || db.get_cf(raft, codec::LAST_PURGED)?.is_some() {
                return Ok(true);
            }
            let log = cf(&db, CF_LOG)?;
            Ok(db.iterator_cf(log, IteratorMode::Start).next().transpose()?.is_some())
        })
        .await
    }

    /// The identity of this store, created (and synced) the first time it is asked for. A
    /// wiped data directory gets a new one.
    pub async fn incarnation(&self) -> Result<String, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            if let Some(existing) = Self::read_meta::<String>(&db, codec::INCARNATION)? {
                return Ok(existing);
            }
            let fresh = new_incarnation();
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT)?, codec::INCARNATION, encode(&fresh)?);
            Self::write(&db, batch, true)?;
            Ok(fresh)
        })
        .await
    }

    fn read_meta<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, StoreError> {
        match db.get_cf(cf(db, CF_RAFT)?, key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn write(db: &DB, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(db.write_opt(batch, &opts)?)
    }
}

/// 128 bits that differ between stores: time, process and the standard library's per-process
/// random hash keys.
fn new_incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut a = std::collections::hash_map::RandomState::new().build_hasher();
    a.write_u128(nanos);
    a.write_u32(std::process::id());
    let mut b = std::collections::hash_map::RandomState::new().build_hasher();
    b.write_u64(a.finish());
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

/// openraft's storage traits speak `io::Error`; it adds what was being done (read logs, write
/// vote, ...) itself.
fn io_err(e: StoreError) -> std::io::Error {
    std::io::Error::other(e)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (start, end)
}

/// Most entries read on the calling task; longer ranges (a follower catching up) are read on a
/// blocking thread. The largest append request openraft sends.
const INLINE_READ_ENTRIES: u64 = 256;

/// Nor more bytes than this: copying large values would hold up the other tasks of a runtime
/// thread (256 entries of a MiB each take tens of milliseconds).
const INLINE_READ_BYTES: usize = 1024 * 1024;

/// Reads entries from `start` to `end` (exclusive), from what `tier` allows. `None` when they
/// are not all in memory (with [`ReadTier::BlockCache`], RocksDB answers `Incomplete` rather
/// than touch the disk) or hold more than `max_bytes`.
fn read_entries(
    db: &DB,
    start: u64,
    end: Option<u64>,
    tier: ReadTier,
    max_bytes: usize,
) -> Result<Option<Vec<Entry>>, StoreError> {
    let log = cf(db, CF_LOG)?;
    let from = log_key(start);
    let mut options = ReadOptions::default();
    options.set_read_tier(tier);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    for item in db.iterator_cf_opt(log, options, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = match item {
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => return Ok(None),
            item => item?,
        };
        let index = decode_log_key(&key)?;
        if end.is_some_and(|end| index >= end) {
            break;
        }
        bytes = bytes.saturating_add(value.len());
        if bytes > max_bytes {
            return Ok(None);
        }
        entries.push(decode::<Entry>(&value)?);
    }
    Ok(Some(entries))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let (start, end) = bounds(&range);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        // Replication and apply ask for entries just appended, which are still in the memtable:
        // reading them here takes microseconds, a blocking thread's round trip far more.
        if end.is_some_and(|end| end - start <= INLINE_READ_ENTRIES) {
            let read = read_entries(&self.db, start, end, ReadTier::BlockCache, INLINE_READ_BYTES);
            if let Some(entries) = read.map_err(io_err)? {
                return Ok(entries);
            }
        }
        let db = self.db.clone();
        let read = run_blocking(move || read_entries(&db, start, end, ReadTier::All, usize::MAX));
        read.await
            .map_err(io_err)?
            .ok_or_else(|| io_err(StoreError::Task("an unbounded read stopped short".into())))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        // Replication reads the vote around every batch of entries it sends; it is almost always
        // in memory.
        let mut in_memory = ReadOptions::default();
        in_memory.set_read_tier(ReadTier::BlockCache);
        match self.db.get_cf_opt(cf(&self.db, CF_RAFT).map_err(io_err)?, codec::VOTE, &in_memory) {
            Ok(Some(bytes)) => return decode(&bytes).map(Some).map_err(io_err),
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
            Err(e) => return Err(io_err(e.into())),
        }
        let db = self.db.clone();
        run_blocking(move || Self::read_meta(&db, codec::VOTE)).await.map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            let last_purged: Option<LogId> = Self::read_meta(&db, codec::LAST_PURGED)?;
            let log = cf(&db, CF_LOG)?;
            let last = match db.iterator_cf(log, IteratorMode::End).next().transpose()? {
                Some((_, value)) => Some(decode::<Entry>(&value)?.log_id),
                None => last_purged,
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        })
        .await
        .map_err(io_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let db = self.db.clone();
        let vote = *vote;
        run_blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT)?, codec::VOTE, encode(&vote)?);
            Self::write(&db, batch, true)
        })
        .await
        .map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let db = self.db.clone();
        run_write(0, move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT)?, codec::COMMITTED, encode(&committed)?);
            // Not synced: a lost commit mark is re-learned from the leader, and the state
            // machine records what it applied itself.
            Self::write(&db, batch, false)
        })
        .await
        .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        let db = self.db.clone();
        run_blocking(move || Ok(Self::read_meta::<Option<LogId>>(&db, codec::COMMITTED)?.flatten()))
            .await
            .map_err(io_err)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(io_err)?;
            encoded.push((log_key(entry.log_id.index), bytes));
        }
        let db = self.db.clone();
        let bytes = encoded.iter().map(|(_, value)| value.len()).sum();
        run_write(bytes, move || {
            let log = cf(&db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            for (key, value) in &encoded {
                batch.put_cf(log, key, value);
            }
            Self::write(&db, batch, false)
        })
        .await
        .map_err(io_err)?;
        self.syncer.sync_then(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let db = self.db.clone();
        let from = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        run_blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_LOG)?, log_key(from), log_key(u64::MAX));
            batch.delete_cf(cf(&db, CF_LOG)?, log_key(u64::MAX));
            // Synced so that conflicting entries a new leader overwrote never come back.
            Self::write(&db, batch, true)
        })
        .await
        .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT)?, codec::LAST_PURGED, encode(&log_id)?);
            let end = log_id.index.saturating_add(1);
            batch.delete_range_cf(cf(&db, CF_LOG)?, log_key(0), log_key(end));
            Self::write(&db, batch, false)
        })
        .await
        .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::EntryPayload;

    use crate::engine::Write;
    use crate::types::Command;

    fn blank(index: u64) -> Entry {
        Entry { log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index), payload: EntryPayload::Blank }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_only_on_disk_are_read_from_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let db = super::super::open_db(&path).expect("open");
            let log = cf(&db, CF_LOG).expect("cf");
            for index in 1..=3 {
                db.put_cf(log, log_key(index), encode(&blank(index)).expect("encode")).expect("put");
            }
            db.flush_cf(log).expect("flush to a table file");
        }
        // Reopened, nothing is in memory: the in-memory attempt is incomplete and must fall back.
        let mut store =
            LogStore::new(Arc::new(super::super::open_db(&path).expect("reopen"))).expect("store");
        let read = store.try_get_log_entries(2..4).await.expect("read");
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [2, 3]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_too_large_to_copy_inline_are_read_whole_on_a_blocking_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(super::super::open_db(&dir.path().join("db")).expect("open"));
        let log = cf(&db, CF_LOG).expect("cf");
        for index in 1..=3 {
            let put = Command::Writes(vec![Write::Put {
                key: format!("k{index}").into_bytes(),
                value: vec![7; 600 * 1024],
                precondition: None,
            }]);
            let entry = Entry { payload: EntryPayload::Normal(put), ..blank(index) };
            db.put_cf(log, log_key(index), encode(&entry).expect("encode")).expect("put");
        }
        let inline = read_entries(&db, 1, Some(4), ReadTier::BlockCache, INLINE_READ_BYTES).expect("read");
        assert!(inline.is_none(), "1.8 MB is over the inline budget");
        let mut store = LogStore::new(db).expect("store");
        let read = store.try_get_log_entries(1..4).await.expect("read");
        assert_eq!(read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
