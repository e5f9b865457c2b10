//! The key-value engine's rules, free of raft, RocksDB and HTTP: what a key holds, what a
//! client write and a transaction are, and how they change the keys and the store's revision.
//! The state machine applies them to RocksDB through [`KeySpace`]; tests apply them to memory.
//!
//! Revisions are etcd's: the store has one revision, raised by one for every write that changes
//! something (a put; a delete that deleted a key; a transaction that did either, however many
//! keys it changed) and by nothing for a write that does not (a failed precondition; a delete of
//! a missing key; a transaction that only read). Writes committed together in one raft entry
//! get consecutive revisions, in their order. Per key: the revision that created it (since it
//! last did not exist), the revision of its last change, its version (1 on creation, +1 per put)
//! and its lease (0: none).
//!
//! Keys and values are bytes: nothing here assumes they are text.
//!
//! A key attached to a lease goes when the lease is revoked; a write that names a lease that
//! does not exist fails whole ([`WriteError`]).

mod lease;
#[cfg(test)]
pub(crate) mod memory;
mod revision;
mod select;
mod span;
mod txn;
mod write;

use serde::{Deserialize, Serialize};

pub use lease::{LeaseRecord, WriteError, MAX_LEASE_TTL};
pub use revision::{compaction, RevisionError};
pub use select::{Selected, Selection, SortOrder, SortTarget, TooLarge};
pub use span::{interval, KeyRange};
pub use txn::{
    execute, Compare, CompareResult, CompareTarget, KeySpace, Op, OpResponse, Txn, TxnError, TxnResult,
    MAX_TXN_DEPTH, MAX_TXN_OPS,
};
pub use write::{Precondition, Write, WriteResult};

/// A key as stored: its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[cfg(test)]
impl KeyRecord {
    /// A record holding `value` with these revisions and no lease.
    pub(crate) fn at(create_revision: u64, mod_revision: u64, version: u64, value: &str) -> Self {
        Self { create_revision, mod_revision, version, lease: 0, value: value.as_bytes().to_vec() }
    }
}
