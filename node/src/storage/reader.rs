//! Reads of the key-value data, served beside raft. Each read comes from one consistent view of
//! the store, so the revision it reports is the one its data is at.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier, DB};

use super::codec::{self, decode_record};
use super::state_machine::{read_revision, read_sm_meta};
use super::{cf, run_blocking, StoreError, CF_KV};
use crate::kv::KeyRecord;
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
    db: Arc<DB>,
}

impl KvReader {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    pub async fn get(&self, key: Vec<u8>) -> Result<KeyRead, StoreError> {
        // Most reads are answered from memory (memtables, block cache): try that here, and go to
        // a blocking thread only when the read would need the disk.
        match read_key(&self.db, &key, ReadTier::BlockCache) {
            Err(StoreError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
            answered => return answered,
        }
        let db = self.db.clone();
        run_blocking(move || read_key(&db, &key, ReadTier::All)).await
    }

    /// Keys in `[start, end)` (no upper bound when `end` is `None`), at most `limit` of them and
    /// about `max_bytes` of keys and records (at least one), read from one consistent view.
    pub async fn range(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<RangePage, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let view = db.snapshot();
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&view);
            let revision = read_revision(&db, &opts)?;
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            let mut next_key = None;
            let iter = view.iterator_cf(cf(&db, CF_KV)?, IteratorMode::From(&start, Direction::Forward));
            for item in iter {
                let (key, record) = item?;
                if end.as_ref().is_some_and(|end| *key >= **end) {
                    break;
                }
                let full = entries.len() == limit
                    || (!entries.is_empty() && bytes + key.len() + record.len() > max_bytes);
                if full {
                    next_key = Some(key.into_vec());
                    break;
                }
                bytes += key.len() + record.len();
                entries.push((key.into_vec(), decode_record(&record)?));
            }
            Ok(RangePage { entries, next_key, revision })
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

    /// Approximate on-disk size of the store, in bytes.
    pub fn disk_size(&self) -> u64 {
        super::disk_size(&self.db)
    }
}

/// The key and the store's revision from one view, reading no deeper than `tier`.
fn read_key(db: &DB, key: &[u8], tier: ReadTier) -> Result<KeyRead, StoreError> {
    let view = db.snapshot();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&view);
    opts.set_read_tier(tier);
    let record = db.get_pinned_cf_opt(cf(db, CF_KV)?, key, &opts)?.map(|b| decode_record(&b)).transpose()?;
    let revision = read_revision(db, &opts)?;
    Ok(KeyRead { record, revision })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::encode_record;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_only_on_disk_is_read_from_disk() {
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
            reader.get(b"\xff".to_vec()).await.expect("read"),
            KeyRead { record: Some(record), revision: 1 }
        );
        assert_eq!(
            reader.get(b"absent".to_vec()).await.expect("read"),
            KeyRead { record: None, revision: 1 }
        );
    }
}
