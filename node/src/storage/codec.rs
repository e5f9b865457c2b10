//! Byte layouts of what the store keeps in RocksDB.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;
use crate::kv::KeyRecord;

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const INCARNATION: &[u8] = b"incarnation";
pub(crate) const LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const LAST_MEMBERSHIP: &[u8] = b"last_membership";
/// The store's revision (u64, big-endian): the revision of the last write that changed a key.
pub(crate) const REVISION: &[u8] = b"revision";
/// The layout of everything below, as one number: see [`FORMAT_VERSION`].
pub(crate) const FORMAT: &[u8] = b"format";

/// The store's layout version. 1 (never written: its stores have no `format` key) kept text
/// keys and used log indexes as revisions; 2 has etcd's revisions, byte keys and leases.
pub(crate) const FORMAT_VERSION: u64 = 2;

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

    #[test]
    fn short_records_are_corrupt_not_a_panic() {
        assert!(matches!(decode_record(&[1, 2, 3]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode_u64(&[1, 2, 3], "revision"), Err(StoreError::Corrupt(_))));
    }
}
