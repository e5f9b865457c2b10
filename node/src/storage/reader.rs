//! Reads of the key-value data, served beside raft. Each read comes from one consistent view of
//! the store, so the revision it reports is the one its data is at. A read at the current
//! revision comes from the keys as they are (`kv`); one at a past revision from their history,
//! which holds every version down to the compaction revision.

use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::watch;

use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier, SnapshotWithThreadMode, DB};

use super::codec::{self, decode_history_entry, decode_history_key, decode_record};
use super::identity::ClusterId;
use super::state_machine::{read_compacted, read_revision, read_sm_meta};
use super::{cf, run_blocking, StoreError, CF_HISTORY, CF_KV};
use crate::engine::{KeyRecord, RevisionError, Selected, Selection};
use crate::types::LogId;

/// One key as of a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRead {
    pub record: Option<KeyRecord>,
    /// The store's revision the key was read at.
    pub revision: u64,
}

/// One page of an ordered listing.
#[derive(Debug)]
pub struct RangePage {
    pub entries: Vec<(Vec<u8>, KeyRecord)>,
    pub next_key: Option<Vec<u8>>,
    /// The store's revision the page was read at.
    pub revision: u64,
}

/// Read access to the key-value data, for serving clients beside raft.
#[derive(Clone)]
pub struct KvReader {
    pub(super) db: Arc<DB>,
    /// The store's revision as the state machine last applied or installed it.
    applied: Arc<watch::Sender<u64>>,
    /// The cluster's id, as the state machine last set it.
    cluster_id: ClusterId,
    /// Users, roles and whether auth is on, as the state machine last set them.
    auth: super::AuthCell,
}

impl KvReader {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        // Only a start value: a waiter reads the store itself before waiting for more.
        let revision = read_revision(&db, &ReadOptions::default()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the store's revision; watches start from an empty store's");
            codec::EMPTY_STORE_REVISION
        });
        let cluster_id = ClusterId::load(&db).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the cluster's id; reporting none until one is applied");
            ClusterId::default()
        });
        let auth = super::AuthCell::load(&db).unwrap_or_else(|e| {
            // Never guess auth off: a store whose users cannot be read lets nobody in (`open`
            // refuses such a store before it gets here).
            tracing::error!(error = %e, "cannot read the auth state; refusing every request");
            super::AuthCell::locked()
        });
        Self { db, applied: Arc::new(watch::channel(revision).0), cluster_id, auth }
    }

    /// Users, roles and whether requests are checked, as this member last applied them.
    pub fn auth(&self) -> &super::AuthCell {
        &self.auth
    }

    /// The id of the cluster this member's store belongs to.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.get()
    }

    /// The shared id the state machine keeps current.
    pub(crate) fn cluster_id_cell(&self) -> ClusterId {
        self.cluster_id.clone()
    }

    /// The store's revision, changing as the state machine applies writes or installs a
    /// snapshot: what a watch waits on for new changes.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Where the state machine announces the revisions it reaches.
    pub(crate) fn announcer(&self) -> Arc<watch::Sender<u64>> {
        self.applied.clone()
    }

    /// `key` as of revision `at` (the current revision when `None`).
    pub async fn get(&self, key: Vec<u8>, at: Option<u64>) -> Result<KeyRead, StoreError> {
        // Most reads are answered from memory (memtables, block cache): try that here, and go to
        // a blocking thread only when the read would need the disk.
        match read_key(&self.db, &key, at, ReadTier::BlockCache) {
            Err(StoreError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
            answered => return answered,
        }
        let db = self.db.clone();
        run_blocking(move || read_key(&db, &key, at, ReadTier::All)).await
    }

    /// Keys in `[start, end)` (no upper bound when `end` is `None`) as of revision `at` (the
    /// current one when `None`), at most `limit` of them and about `max_bytes` of keys and
    /// records (at least one), read from one consistent view.
    pub async fn range(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        max_bytes: usize,
        at: Option<u64>,
    ) -> Result<RangePage, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let mut page = Page { entries: Vec::new(), bytes: 0, limit, max_bytes, next_key: None };
            let revision = scan(&db, &start, end.as_deref(), at, &mut |key, encoded| {
                if !page.room_for(key, encoded.len()) {
                    return Ok(ControlFlow::Break(()));
                }
                page.push(key.to_vec(), decode_record(encoded)?, encoded.len());
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(RangePage { entries: page.entries, next_key: page.next_key, revision })
        })
        .await
    }

    /// etcd's range read: the keys in `[start, end)` (no upper bound when `end` is `None`) as
    /// of revision `at` (the current one when `None`) through `selection` (filters, sort,
    /// limit, count), from one consistent view; with the store's revision.
    pub async fn select(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        at: Option<u64>,
        selection: Selection,
        max_bytes: usize,
    ) -> Result<(Selected, u64), StoreError> {
        // One key (etcd's get) is answered like `get`: from memory on this task when it can be.
        if end
            .as_deref()
            .is_some_and(|end| end.len() == start.len() + 1 && end.starts_with(&start) && end.ends_with(&[0]))
        {
            match read_key(&self.db, &start, at, ReadTier::BlockCache) {
                Err(StoreError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
                read => return select_one(selection, max_bytes, &start, read?),
            }
        }
        let db = self.db.clone();
        run_blocking(move || {
            let mut selector = selection.selector(max_bytes);
            let revision = scan(&db, &start, end.as_deref(), at, &mut |key, encoded| {
                // Keys only counted (past the limit, or a count) are never decoded.
                if selector.wants_more() {
                    selector.offer(key, decode_record(encoded)?)?;
                } else {
                    selector.count();
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok((selector.finish(), revision))
        })
        .await
    }

    /// The store's revision and its compaction revision, from one view.
    pub async fn revisions(&self) -> Result<(u64, u64), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let view = db.snapshot();
            let opts = view_options(&view);
            Ok((read_revision(&db, &opts)?, read_compacted(&db, &opts)?))
        })
        .await
    }

    /// The last log id applied to the state machine.
    pub async fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            Ok(read_sm_meta::<Option<LogId>>(&db, &ReadOptions::default(), codec::LAST_APPLIED)?.flatten())
        })
        .await
    }

    /// A checksum of every key as of revision `at` (the current one when `None`): equal on
    /// every member at one revision, unless a member's copy differs. With the revision hashed
    /// at and the compaction revision.
    pub async fn hash(&self, at: Option<u64>) -> Result<(u32, u64, u64), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let mut hash = Fnv32::default();
            let revision = scan(&db, &[], None, at, &mut |key, encoded| {
                let record = decode_record(encoded)?;
                for part in [&(key.len() as u64).to_be_bytes()[..], key] {
                    hash.write(part);
                }
                for n in [record.create_revision, record.mod_revision, record.version, record.lease as u64] {
                    hash.write(&n.to_be_bytes());
                }
                hash.write(&(record.value.len() as u64).to_be_bytes());
                hash.write(&record.value);
                Ok(ControlFlow::Continue(()))
            })?;
            let compacted = read_compacted(&db, &ReadOptions::default())?;
            Ok((hash.0, at.filter(|at| *at != 0).unwrap_or(revision), compacted))
        })
        .await
    }

    /// Rewrites the store's files without the space deleted data left behind (etcd's
    /// defragmentation): RocksDB's full compaction of every column family.
    pub async fn compact_files(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            for family in super::Family::ALL {
                db.compact_range_cf(cf(&db, family.name())?, None::<&[u8]>, None::<&[u8]>);
            }
            Ok(())
        })
        .await
    }

    /// Approximate on-disk size of the store, in bytes.
    pub fn disk_size(&self) -> u64 {
        super::disk_size(&self.db)
    }

    /// What the store holds, table files and memtables: etcd's database size.
    pub fn stored_size(&self) -> u64 {
        super::stored_size(&self.db)
    }
}

/// The key as of `at` and the store's revision, from one view, reading no deeper than `tier`.
fn read_key(db: &DB, key: &[u8], at: Option<u64>, tier: ReadTier) -> Result<KeyRead, StoreError> {
    let view = db.snapshot();
    let mut opts = view_options(&view);
    opts.set_read_tier(tier);
    let revision = read_revision(db, &opts)?;
    let record = match past(db, &opts, revision, at)? {
        None => db.get_pinned_cf_opt(cf(db, CF_KV)?, key, &opts)?.map(|b| decode_record(&b)).transpose()?,
        Some(at) => {
            let mut iter = db.raw_iterator_cf_opt(cf(db, CF_HISTORY)?, opts);
            // The newest version at or before `at`, if it is this key's.
            iter.seek_for_prev(codec::history_key(key, at));
            iter.status()?;
            match (iter.key(), iter.value()) {
                (Some(k), Some(v)) if k.starts_with(&codec::history_prefix(key)) => decode_history_entry(v)?,
                _ => None,
            }
        }
    };
    Ok(KeyRead { record, revision })
}

/// [`KvReader::select`] of the one key `read` read.
fn select_one(
    selection: Selection,
    max_bytes: usize,
    key: &[u8],
    read: KeyRead,
) -> Result<(Selected, u64), StoreError> {
    let mut selector = selection.selector(max_bytes);
    if let Some(record) = read.record {
        if selector.wants_more() {
            selector.offer(key, record)?;
        } else {
            selector.count();
        }
    }
    Ok((selector.finish(), read.revision))
}

/// FNV-1a, 32 bits: a checksum every member computes alike, whatever its build.
struct Fnv32(u32);

impl Default for Fnv32 {
    fn default() -> Self {
        Self(0x811c_9dc5)
    }
}

impl Fnv32 {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
}

/// Options reading from `view`.
pub(super) fn view_options(view: &SnapshotWithThreadMode<'_, DB>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_snapshot(view);
    opts
}

/// The past revision a read at `at` must be served from, or `None` for the current state;
/// refuses a revision beyond the store's or below its compaction revision.
fn past(db: &DB, opts: &ReadOptions, current: u64, at: Option<u64>) -> Result<Option<u64>, StoreError> {
    let Some(at) = at.filter(|at| *at != 0 && *at != current) else { return Ok(None) };
    if at > current {
        return Err(RevisionError::Future { requested: at, current }.into());
    }
    let compacted = read_compacted(db, opts)?;
    if at < compacted {
        return Err(RevisionError::Compacted { requested: at, compacted }.into());
    }
    Ok(Some(at))
}

/// A page of a listing being filled.
struct Page {
    entries: Vec<(Vec<u8>, KeyRecord)>,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
    next_key: Option<Vec<u8>>,
}

impl Page {
    /// Whether `key` fits; if not, it is where the next page starts.
    fn room_for(&mut self, key: &[u8], encoded_len: usize) -> bool {
        let full = self.entries.len() == self.limit
            || (!self.entries.is_empty() && self.bytes + key.len() + encoded_len > self.max_bytes);
        if full {
            self.next_key = Some(key.to_vec());
        }
        !full
    }

    fn push(&mut self, key: Vec<u8>, record: KeyRecord, encoded_len: usize) {
        self.bytes += key.len() + encoded_len;
        self.entries.push((key, record));
    }
}

/// What [`scan`] does with each key: the key and its record, encoded (`decode_record`), so
/// that a visitor that only counts keys decodes nothing.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// Hands `visit` the keys in `[start, end)` as of revision `at` (the current one when `None`),
/// in key order, until it breaks; from one consistent view, whose revision it answers.
fn scan(
    db: &DB,
    start: &[u8],
    end: Option<&[u8]>,
    at: Option<u64>,
    visit: &mut Visit<'_>,
) -> Result<u64, StoreError> {
    let view = db.snapshot();
    let opts = view_options(&view);
    let revision = read_revision(db, &opts)?;
    match past(db, &opts, revision, at)? {
        None => {
            let iter = view.iterator_cf(cf(db, CF_KV)?, IteratorMode::From(start, Direction::Forward));
            for item in iter {
                let (key, record) = item?;
                if end.is_some_and(|end| *key >= *end) {
                    break;
                }
                if visit(&key, &record)?.is_break() {
                    break;
                }
            }
        }
        Some(at) => scan_history(db, &view, start, end, at, visit)?,
    }
    Ok(revision)
}

/// [`scan`] as of a past revision `at`, from the keys' history: each key's newest version at
/// or before `at`, unless that is its deletion. Two seeks per key in the range, however many
/// versions it has.
fn scan_history(
    db: &DB,
    view: &SnapshotWithThreadMode<'_, DB>,
    start: &[u8],
    end: Option<&[u8]>,
    at: u64,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_HISTORY)?, view_options(view));
    iter.seek(codec::history_prefix(start));
    loop {
        let Some(entry) = iter.key() else {
            // The end of the history, or an error: tell them apart.
            iter.status()?;
            return Ok(());
        };
        let (key, _) = decode_history_key(entry)?;
        if end.is_some_and(|end| key.as_slice() >= end) {
            return Ok(());
        }
        let prefix = codec::history_prefix(&key);
        iter.seek_for_prev(codec::history_key(&key, at));
        iter.status()?;
        let version = match (iter.key(), iter.value()) {
            (Some(k), Some(v)) if k.starts_with(&prefix) => Some(v.to_vec()),
            // Created after `at`.
            _ => None,
        };
        // An empty version is the key's deletion.
        if let Some(version) = version.filter(|v| !v.is_empty()) {
            if visit(&key, &version)?.is_break() {
                return Ok(());
            }
        }
        // Past every version of this key: nine 0xff bytes sort after any eight-byte revision,
        // and before the next key's history (an escaped key never holds its end mark).
        let mut after = prefix;
        after.extend_from_slice(&[0xff; 9]);
        iter.seek(&after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::encode_record;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_only_on_disk_is_read_from_disk_by_get_and_by_select() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        let record =
            KeyRecord { create_revision: 1, mod_revision: 1, version: 1, lease: 0, value: b"v".to_vec() };
        {
            let db = super::super::open_db(&path).expect("open");
            let kv = cf(&db, CF_KV).expect("cf");
            db.put_cf(kv, b"\xff", encode_record(&record)).expect("put");
            db.put_cf(cf(&db, super::super::CF_SM).expect("cf"), codec::REVISION, codec::encode_u64(1))
                .expect("put");
            db.flush_cf(kv).expect("flush to a table file");
            db.flush_cf(cf(&db, super::super::CF_SM).expect("cf")).expect("flush");
        }
        // Reopened, nothing is in memory: the in-memory attempt is incomplete and must fall back.
        let reader = KvReader::new(Arc::new(super::super::open_db(&path).expect("reopen")));
        assert_eq!(
            reader.get(b"\xff".to_vec(), None).await.expect("read"),
            KeyRead { record: Some(record.clone()), revision: 1 }
        );
        assert_eq!(
            reader.get(b"absent".to_vec(), None).await.expect("read"),
            KeyRead { record: None, revision: 1 }
        );
        // So is a select of that one key (etcd's get), which tries memory first too.
        let one = |key: &[u8], selection| {
            let end = [key, &[0]].concat();
            reader.select(key.to_vec(), Some(end), None, selection, usize::MAX)
        };
        let (selected, revision) = one(b"\xff", Selection::default()).await.expect("select");
        assert_eq!(
            (selected.kvs, selected.count, selected.more, revision),
            (vec![(b"\xff".to_vec(), record)], 1, false, 1)
        );
        let counted = Selection { count_only: true, ..Selection::default() };
        let (selected, _) = one(b"\xff", counted).await.expect("count");
        assert_eq!((selected.kvs.len(), selected.count), (0, 1));
        let (selected, _) = one(b"absent", Selection::default()).await.expect("select");
        assert_eq!((selected.kvs.len(), selected.count), (0, 0));
    }
}
