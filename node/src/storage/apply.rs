//! The engine's rules ([`crate::engine`]) over RocksDB: the keys as one apply `WriteBatch` will
//! leave them. Each change writes the key's new state (`kv`), the key as of that revision
//! (`history`: its record, or an empty tombstone for a deletion) and the change itself
//! (`changes`, by revision and sub-revision: what a watch replays).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use rocksdb::{ColumnFamily, WriteBatch, DB};

use super::codec::{self, decode_record, encode_record};
use super::{cf, StoreError, CF_CHANGES, CF_HISTORY, CF_KV, CF_LEASES, CF_LEASE_KEYS};
use crate::engine::{KeyRecord, KeySpace, LeaseRecord};

pub(super) struct Applier<'db> {
    db: &'db DB,
    kv: &'db ColumnFamily,
    history: &'db ColumnFamily,
    changes: &'db ColumnFamily,
    leases: &'db ColumnFamily,
    lease_keys: &'db ColumnFamily,
    batch: WriteBatch,
    /// The keys this batch changes, as it leaves them (None: deleted): reads in later writes
    /// must see them, and the database does not hold them until the batch is written.
    pending: BTreeMap<Vec<u8>, Option<KeyRecord>>,
    /// Likewise the leases it grants or revokes, and the attachments it makes or undoes.
    pending_leases: HashMap<i64, Option<LeaseRecord>>,
    pending_attached: BTreeMap<(i64, Vec<u8>), bool>,
}

impl<'db> Applier<'db> {
    pub(super) fn new(db: &'db DB) -> Result<Self, StoreError> {
        Ok(Self {
            db,
            kv: cf(db, CF_KV)?,
            history: cf(db, CF_HISTORY)?,
            changes: cf(db, CF_CHANGES)?,
            leases: cf(db, CF_LEASES)?,
            lease_keys: cf(db, CF_LEASE_KEYS)?,
            batch: WriteBatch::default(),
            pending: BTreeMap::new(),
            pending_leases: HashMap::new(),
            pending_attached: BTreeMap::new(),
        })
    }

    /// The batch, for the caller to add its metadata to and write.
    pub(super) fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

impl KeySpace for Applier<'_> {
    type Error = StoreError;

    fn get(&mut self, key: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        match self.pending.get(key) {
            Some(state) => Ok(state.clone()),
            None => self.db.get_pinned_cf(self.kv, key)?.map(|b| decode_record(&b)).transpose(),
        }
    }

    /// Merges the stored keys with this batch's changes, which take precedence.
    fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &KeyRecord) -> bool,
    ) -> Result<(), StoreError> {
        if end.is_some_and(|end| end <= start) {
            // An empty range (or one written backwards): nothing in it, as in etcd.
            return Ok(());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut changed = self.pending.range::<[u8], _>((Bound::Included(start), upper)).peekable();
        let mut stored = self.db.raw_iterator_cf(self.kv);
        stored.seek(start);
        loop {
            let stored_key = stored.key().filter(|k| end.is_none_or(|end| *k < end));
            let take_stored = match (stored_key, changed.peek()) {
                (None, None) => break,
                (Some(key), Some((next, _))) => key < next.as_slice(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            let go_on = if take_stored {
                let (Some(key), Some(value)) = (stored.key(), stored.value()) else { break };
                let go_on = visit(key, &decode_record(value)?);
                stored.next();
                go_on
            } else {
                let Some((key, state)) = changed.next() else { break };
                if stored.key() == Some(key.as_slice()) {
                    stored.next();
                }
                state.as_ref().is_none_or(|record| visit(key, record))
            };
            if !go_on {
                break;
            }
        }
        stored.status()?;
        Ok(())
    }

    fn change(&mut self, key: Vec<u8>, state: Option<KeyRecord>, revision: u64, sub: u32) {
        let at = codec::history_key(&key, revision);
        match &state {
            Some(record) => {
                let encoded = encode_record(record);
                self.batch.put_cf(self.history, at, &encoded);
                self.batch.put_cf(self.kv, &key, encoded);
            }
            None => {
                self.batch.put_cf(self.history, at, []);
                self.batch.delete_cf(self.kv, &key);
            }
        }
        self.batch.put_cf(self.changes, codec::change_key(revision, sub), &key);
        self.pending.insert(key, state);
    }

    fn lease(&mut self, id: i64) -> Result<Option<LeaseRecord>, StoreError> {
        match self.pending_leases.get(&id) {
            Some(lease) => Ok(*lease),
            None => self
                .db
                .get_pinned_cf(self.leases, codec::lease_key(id))?
                .map(|b| codec::decode_lease(&b))
                .transpose(),
        }
    }

    fn set_lease(&mut self, id: i64, lease: Option<LeaseRecord>) {
        match &lease {
            Some(lease) => self.batch.put_cf(self.leases, codec::lease_key(id), codec::encode_lease(lease)),
            None => self.batch.delete_cf(self.leases, codec::lease_key(id)),
        }
        self.pending_leases.insert(id, lease);
    }

    fn attach(&mut self, id: i64, key: &[u8], attached: bool) {
        let at = codec::attachment_key(id, key);
        if attached {
            self.batch.put_cf(self.lease_keys, at, []);
        } else {
            self.batch.delete_cf(self.lease_keys, at);
        }
        self.pending_attached.insert((id, key.to_vec()), attached);
    }

    fn attached(&mut self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = codec::lease_key(id);
        let mut keys = BTreeSet::new();
        let mut stored = self.db.raw_iterator_cf(self.lease_keys);
        stored.seek(prefix);
        while let Some(at) = stored.key().filter(|k| k.starts_with(&prefix)) {
            keys.insert(codec::decode_attachment_key(at)?.1.to_vec());
            stored.next();
        }
        stored.status()?;
        for ((lease, key), attached) in self.pending_attached.range((id, Vec::new())..) {
            if *lease != id {
                break;
            }
            if *attached {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().collect())
    }
}
