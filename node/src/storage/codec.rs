//! Byte layouts of what the store keeps in RocksDB.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;
use crate::engine::{KeyRecord, LeaseRecord};

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const INCARNATION: &[u8] = b"incarnation";
pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const LAST_MEMBERSHIP: &[u8] = b"last_membership";
/// The store's revision (u64, big-endian): the revision of the last write that changed a key.
/// Absent means [`EMPTY_STORE_REVISION`].
pub(crate) const REVISION: &[u8] = b"revision";
/// The revision of a store nothing was ever written to, as the API promises it: a list
/// answered at revision 0 is "illegal resource version from storage" to kube-apiserver.
pub(crate) const EMPTY_STORE_REVISION: u64 = metastore_client::EMPTY_STORE_REVISION;
/// The compaction revision (u64, big-endian): history below it is gone. Absent means 0.
pub(crate) const COMPACTED: &[u8] = b"compacted";
/// The cluster's id (u64, big-endian; see `identity.rs`). Absent in a cluster made before ids.
pub(crate) const CLUSTER_ID: &[u8] = b"cluster_id";
/// The layout of everything below, as one number: see [`FORMAT_VERSION`].
pub(crate) const FORMAT: &[u8] = b"format";

/// The store's layout version. 1 (never written: its stores have no `format` key) kept text
/// keys and used log indexes as revisions; 2 had etcd's revisions, byte keys and leases; 3
/// keeps history (the `history` and `changes` column families).
pub(crate) const FORMAT_VERSION: u64 = 3;

/// A history key: the user key escaped so that byte order is (key, revision) order whatever
/// bytes the key holds (0x00 becomes 0x00 0xFF, and 0x00 0x00 ends the key: an end sorts
/// before any continuation), then the revision, big-endian.
pub(crate) fn history_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// Where the history of `key` begins: its escaped form and end mark.
pub(crate) fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 8);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// The user key and revision of a history key.
pub(crate) fn decode_history_key(bytes: &[u8]) -> Result<(Vec<u8>, u64), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("history key of {} bytes is malformed", bytes.len()));
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    loop {
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(0), Some(0)) => break,
            (Some(0), Some(0xff)) => {
                key.push(0);
                i += 2;
            }
            (Some(0), _) | (None, _) => return Err(corrupt()),
            (Some(&b), _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    let revision = bytes.get(i + 2..).filter(|r| r.len() == 8).ok_or_else(corrupt)?;
    Ok((key, decode_u64(revision, "history revision")?))
}

/// A change's key: its revision, then its place among the changes of that revision (a
/// transaction's changes share one), both big-endian, so byte order is commit order.
pub(crate) fn change_key(revision: u64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&revision.to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

pub(crate) fn decode_change_key(bytes: &[u8]) -> Result<(u64, u32), StoreError> {
    let bytes: [u8; 12] =
        bytes.try_into().map_err(|_| StoreError::Corrupt(format!("change key of {} bytes", bytes.len())))?;
    let mut sub = [0u8; 4];
    sub.copy_from_slice(&bytes[8..]);
    Ok((decode_u64(&bytes[..8], "change revision")?, u32::from_be_bytes(sub)))
}

/// A lease's key in `leases`: its id, big-endian (ids are positive, so byte order is id order).
pub(crate) fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn decode_lease_key(bytes: &[u8]) -> Result<i64, StoreError> {
    decode_u64(bytes, "lease id").map(|id| id as i64)
}

/// A lease as stored: the TTL it was granted, then its grant, both big-endian.
pub(crate) fn encode_lease(lease: &LeaseRecord) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lease.ttl.to_be_bytes());
    out[8..].copy_from_slice(&lease.grant.to_be_bytes());
    out
}

pub(crate) fn decode_lease(bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    if bytes.len() != 16 {
        return Err(StoreError::Corrupt(format!("lease record of {} bytes", bytes.len())));
    }
    Ok(LeaseRecord {
        ttl: decode_u64(&bytes[..8], "lease TTL")? as i64,
        grant: decode_u64(&bytes[8..], "lease grant")?,
    })
}

/// A key's attachment to a lease in `lease_keys`: the lease's id, then the key; the value is
/// empty. A lease's keys are one prefix, in key order.
pub(crate) fn attachment_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&lease_key(id));
    out.extend_from_slice(key);
    out
}

pub(crate) fn decode_attachment_key(bytes: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    if bytes.len() < 9 {
        return Err(StoreError::Corrupt(format!("lease attachment key of {} bytes", bytes.len())));
    }
    Ok((decode_lease_key(&bytes[..8])?, &bytes[8..]))
}

/// A history entry: the key's record as of that revision, or nothing for a deletion (a
/// tombstone; every record has a header, so an empty entry is never one).
pub(crate) fn decode_history_entry(bytes: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    decode_record(bytes).map(Some)
}

/// Log indexes are stored big-endian so that RocksDB's byte order is log order.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn decode_log_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| StoreError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Sized first, so that the buffer is allocated once instead of grown by copying: log entries
/// are encoded on every member's write path.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let len = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())?;
    Ok(postcard::to_extend(value, Vec::with_capacity(len))?)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

const RECORD_HEADER: usize = 32;

/// A key's record: create revision, mod revision, version (u64 big-endian each) and lease (i64
/// big-endian), then the value. Fixed-width metadata lets a reader skip to the value without
/// decoding anything.
pub(crate) fn encode_record(record: &KeyRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + record.value.len());
    out.extend_from_slice(&record.create_revision.to_be_bytes());
    out.extend_from_slice(&record.mod_revision.to_be_bytes());
    out.extend_from_slice(&record.version.to_be_bytes());
    out.extend_from_slice(&record.lease.to_be_bytes());
    out.extend_from_slice(&record.value);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    if bytes.len() < RECORD_HEADER {
        return Err(StoreError::Corrupt(format!("key record of {} bytes", bytes.len())));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        w
    };
    Ok(KeyRecord {
        create_revision: u64::from_be_bytes(word(0)),
        mod_revision: u64::from_be_bytes(word(1)),
        version: u64::from_be_bytes(word(2)),
        lease: i64::from_be_bytes(word(3)),
        value: bytes[RECORD_HEADER..].to_vec(),
    })
}

pub(crate) fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let bytes: [u8; 8] =
        bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what} of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_in_index_order() {
        assert!(log_key(255) < log_key(256));
        assert!(log_key(1) < log_key(u64::MAX));
        assert_eq!(decode_log_key(&log_key(42)).ok(), Some(42));
    }

    #[test]
    fn records_round_trip() {
        let r =
            KeyRecord { create_revision: 7, mod_revision: 9, version: 3, lease: -2, value: b"v".to_vec() };
        assert_eq!(decode_record(&encode_record(&r)).ok(), Some(r));
    }

    proptest::proptest! {
        #[test]
        fn history_keys_sort_as_key_then_revision_and_decode_back(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
            ra in proptest::prelude::any::<u64>(),
            rb in proptest::prelude::any::<u64>(),
        ) {
            let (ka, kb) = (history_key(&a, ra), history_key(&b, rb));
            proptest::prop_assert_eq!(ka.cmp(&kb), (&a, ra).cmp(&(&b, rb)));
            proptest::prop_assert_eq!(decode_history_key(&ka).ok(), Some((a.clone(), ra)));
            proptest::prop_assert!(ka.starts_with(&history_prefix(&a)));
        }
    }

    #[test]
    fn malformed_history_keys_are_corrupt_not_a_panic() {
        for bytes in [&b""[..], b"a", b"a\0", b"a\0\x01", b"a\0\0", b"a\0\0\x01\x02"] {
            assert!(matches!(decode_history_key(bytes), Err(StoreError::Corrupt(_))), "{bytes:?}");
        }
        assert!(matches!(decode_change_key(&[1, 2]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn changes_sort_in_commit_order() {
        assert!(change_key(1, 7) < change_key(2, 0));
        assert!(change_key(2, 0) < change_key(2, 1));
        assert_eq!(decode_change_key(&change_key(9, 3)).ok(), Some((9, 3)));
    }

    #[test]
    fn a_tombstone_is_an_empty_history_entry() {
        assert_eq!(decode_history_entry(&[]).ok(), Some(None));
        let r = KeyRecord { create_revision: 1, mod_revision: 2, version: 2, lease: 0, value: vec![] };
        assert_eq!(decode_history_entry(&encode_record(&r)).ok(), Some(Some(r)));
    }

    #[test]
    fn short_records_are_corrupt_not_a_panic() {
        assert!(matches!(decode_record(&[1, 2, 3]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_u64(&[1, 2, 3], "revision"), Err(StoreError::Corrupt(_))));
    }
}
