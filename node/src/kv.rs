//! The key-value engine's rules, free of raft, RocksDB and HTTP: what a client write is, what a
//! key holds, and how a write changes a key and the store's revision.
//!
//! Revisions are etcd's: the store has one revision, raised by one for every write that changes
//! something (a put; a delete that deleted a key) and by nothing for a write that does not (a
//! failed precondition; a delete of a missing key). Writes committed together in one raft entry
//! get consecutive revisions, in their order. Per key: the revision that created it (since it
//! last did not exist), the revision of its last change, its version (1 on creation, +1 per put)
//! and its lease (0: none).
//!
//! Keys and values are bytes: nothing here assumes they are text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A condition on the key's current state that a write requires (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key's mod revision must be this one (0: the key must not exist, as in etcd).
    ModRevision(u64),
}

/// A client write, as the state machine applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Put {
        // As byte strings, not sequences of bytes one call each: one copy, and a compact encoding.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        precondition: Option<Precondition>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        precondition: Option<Precondition>,
    },
}

impl Write {
    /// The key the write changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } => key,
        }
    }

    /// About how many bytes the write takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Write::Put { key, value, .. } => key.len() + value.len(),
            Write::Delete { key, .. } => key.len(),
        }
    }
}

/// How logs name a write: what it does, never the value.
impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Put { key, value, .. } => {
                write!(f, "put {:?} ({} bytes)", String::from_utf8_lossy(key), value.len())
            }
            Write::Delete { key, .. } => write!(f, "delete {:?}", String::from_utf8_lossy(key)),
        }
    }
}

/// Why a revision cannot be read at, or compacted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RevisionError {
    #[error("revision {requested} is a future revision: the store is at revision {current}")]
    Future { requested: u64, current: u64 },
    #[error("revision {requested} has been compacted: history begins at revision {compacted}")]
    Compacted { requested: u64, compacted: u64 },
}

/// The compaction revision after asking to compact to `requested`, with the store at `current`
/// and compacted to `compacted`: etcd's rule, a revision above the store's or at or below the
/// compaction revision is refused.
pub fn compaction(requested: u64, current: u64, compacted: u64) -> Result<u64, RevisionError> {
    if requested > current {
        return Err(RevisionError::Future { requested, current });
    }
    if requested <= compacted {
        return Err(RevisionError::Compacted { requested, compacted });
    }
    Ok(requested)
}

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

/// What applying a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The store's revision once the write was applied: the write's own revision when it
    /// changed something, else the revision the store was at.
    pub revision: u64,
    /// False when the precondition did not hold; then nothing was written.
    pub succeeded: bool,
    /// The key before the write (on failure: the key as it is, which made the compare fail).
    pub prev: Option<KeyRecord>,
}

/// What a write does to its key: `None` leaves it as it is, `Some(None)` deletes it.
pub type KeyChange = Option<Option<KeyRecord>>;

/// Applies `write` to its key's `current` state in a store at `revision`. Pure: returns the
/// answer, the key's change, and the store's revision afterwards.
pub fn apply_write(write: Write, current: Option<&KeyRecord>, revision: u64) -> (WriteResult, KeyChange) {
    let holds = |p: Option<Precondition>| match p {
        None => true,
        Some(Precondition::Absent) | Some(Precondition::ModRevision(0)) => current.is_none(),
        Some(Precondition::ModRevision(rev)) => current.is_some_and(|r| r.mod_revision == rev),
    };
    let prev = current.cloned();
    let unchanged = |succeeded, prev| (WriteResult { revision, succeeded, prev }, None);
    match write {
        Write::Put { value, precondition, .. } => {
            if !holds(precondition) {
                return unchanged(false, prev);
            }
            let revision = revision + 1;
            let record = KeyRecord {
                create_revision: current.map_or(revision, |r| r.create_revision),
                mod_revision: revision,
                version: current.map_or(1, |r| r.version + 1),
                lease: 0,
                value,
            };
            (WriteResult { revision, succeeded: true, prev }, Some(Some(record)))
        }
        Write::Delete { precondition, .. } => {
            if !holds(precondition) {
                return unchanged(false, prev);
            }
            if prev.is_none() {
                return unchanged(true, None);
            }
            (WriteResult { revision: revision + 1, succeeded: true, prev }, Some(None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: &str, precondition: Option<Precondition>) -> Write {
        Write::Put { key: b"k".to_vec(), value: value.as_bytes().to_vec(), precondition }
    }

    fn delete(precondition: Option<Precondition>) -> Write {
        Write::Delete { key: b"k".to_vec(), precondition }
    }

    #[test]
    fn a_first_put_creates_the_key_at_the_next_revision() {
        let (result, change) = apply_write(put("v", None), None, 6);
        assert_eq!(result, WriteResult { revision: 7, succeeded: true, prev: None });
        assert_eq!(change, Some(Some(KeyRecord::at(7, 7, 1, "v"))));
    }

    #[test]
    fn a_later_put_keeps_the_create_revision_and_bumps_the_version() {
        let current = KeyRecord::at(7, 7, 1, "v");
        let (result, change) = apply_write(put("w", None), Some(&current), 8);
        assert_eq!(result.revision, 9);
        assert_eq!(result.prev, Some(current));
        assert_eq!(change, Some(Some(KeyRecord::at(7, 9, 2, "w"))));
    }

    #[test]
    fn compare_and_swap_writes_only_when_the_mod_revision_matches() {
        let current = KeyRecord::at(3, 5, 2, "v");
        let (ok, change) = apply_write(put("w", Some(Precondition::ModRevision(5))), Some(&current), 8);
        assert_eq!((ok.succeeded, ok.revision), (true, 9));
        assert!(change.is_some());
        let (stale, change) = apply_write(put("w", Some(Precondition::ModRevision(4))), Some(&current), 8);
        assert_eq!(stale, WriteResult { revision: 8, succeeded: false, prev: Some(current) });
        assert_eq!(change, None, "a failed compare changes nothing, the revision included");
    }

    #[test]
    fn must_not_exist_fails_on_an_existing_key_and_succeeds_on_a_missing_one() {
        let current = KeyRecord::at(3, 5, 2, "v");
        for absent in [Precondition::Absent, Precondition::ModRevision(0)] {
            let (exists, change) = apply_write(put("w", Some(absent)), Some(&current), 8);
            assert!(!exists.succeeded);
            assert_eq!(change, None);
            let (created, change) = apply_write(put("w", Some(absent)), None, 8);
            assert!(created.succeeded);
            assert_eq!(change, Some(Some(KeyRecord::at(9, 9, 1, "w"))));
        }
    }

    #[test]
    fn deleting_a_missing_key_changes_nothing_and_keeps_the_revision() {
        let (result, change) = apply_write(delete(None), None, 4);
        assert_eq!(result, WriteResult { revision: 4, succeeded: true, prev: None });
        assert_eq!(change, None);
    }

    #[test]
    fn deleting_a_key_takes_the_next_revision() {
        let current = KeyRecord::at(3, 5, 2, "v");
        let (result, change) = apply_write(delete(None), Some(&current), 9);
        assert_eq!(result, WriteResult { revision: 10, succeeded: true, prev: Some(current) });
        assert_eq!(change, Some(None));
    }

    #[test]
    fn a_conditional_delete_removes_only_the_expected_revision() {
        let current = KeyRecord::at(3, 5, 2, "v");
        assert_eq!(apply_write(delete(Some(Precondition::ModRevision(4))), Some(&current), 9).1, None);
        assert_eq!(apply_write(delete(Some(Precondition::ModRevision(5))), Some(&current), 9).1, Some(None));
    }

    #[test]
    fn a_put_after_a_delete_starts_the_key_over() {
        let (_, change) = apply_write(put("again", None), None, 12);
        assert_eq!(change, Some(Some(KeyRecord::at(13, 13, 1, "again"))), "version restarts at 1");
    }
}
