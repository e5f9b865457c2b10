//! Reads of the leases: which exist, their granted TTLs, the keys attached to each.

use rocksdb::{IteratorMode, DB};

use super::codec;
use super::{cf, run_blocking, KvReader, StoreError, CF_LEASES, CF_LEASE_KEYS};
use crate::engine::LeaseRecord;

impl KvReader {
    /// Every lease, in id order.
    pub async fn leases(&self) -> Result<Vec<(i64, LeaseRecord)>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let mut leases = Vec::new();
            for item in db.iterator_cf(cf(&db, CF_LEASES)?, IteratorMode::Start) {
                let (id, lease) = item?;
                leases.push((codec::decode_lease_key(&id)?, codec::decode_lease(&lease)?));
            }
            Ok(leases)
        })
        .await
    }

    /// Lease `id`, if it exists.
    pub async fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            db.get_pinned_cf(cf(&db, CF_LEASES)?, codec::lease_key(id))?
                .map(|b| codec::decode_lease(&b))
                .transpose()
        })
        .await
    }

    /// The keys attached to lease `id`, in order.
    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || attached(&db, id)).await
    }
}

fn attached(db: &DB, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    let prefix = codec::lease_key(id);
    let mut keys = Vec::new();
    let mut iter = db.raw_iterator_cf(cf(db, CF_LEASE_KEYS)?);
    iter.seek(prefix);
    while let Some(at) = iter.key().filter(|k| k.starts_with(&prefix)) {
        keys.push(codec::decode_attachment_key(at)?.1.to_vec());
        iter.next();
    }
    iter.status()?;
    Ok(keys)
}
