//! Single-key writes: a put or a delete, optionally conditional on the key's mod revision
//! (compare-and-swap, a one-compare transaction kept compact because it is the common case).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::lease::{LeaseRecord, WriteError};
use super::txn::{execute, set_key, CompareResult, CompareTarget, KeySpace, OpResponse, Txn};
use super::KeyRecord;

/// A condition on the key's current state that a write requires (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key's mod revision must be this one (0: the key must not exist, as in etcd).
    ModRevision(u64),
}

impl Precondition {
    /// The same condition as a transaction's compare on `key`.
    pub fn compare(self, key: &[u8]) -> super::Compare {
        let (result, target) = match self {
            Precondition::Absent => (CompareResult::Equal, CompareTarget::Version(0)),
            Precondition::ModRevision(rev) => (CompareResult::Equal, CompareTarget::ModRevision(rev)),
        };
        super::Compare { key: key.to_vec(), range_end: Vec::new(), result, target }
    }

    /// Whether the key's `current` state (None: missing) meets the condition: a transaction's
    /// compare, in short.
    pub fn holds(self, current: Option<&KeyRecord>) -> bool {
        match self {
            Precondition::Absent => current.is_none(),
            Precondition::ModRevision(rev) => {
                CompareTarget::ModRevision(rev).holds(CompareResult::Equal, current)
            }
        }
    }
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
    /// A transaction, checked ([`Txn::check`]) before it was proposed.
    Txn(Txn),
    /// Grants lease `id` for `ttl` seconds; the proposing member chose the id and `grant`.
    LeaseGrant { id: i64, ttl: i64, grant: u64 },
    /// Revokes lease `id`, deleting every key attached to it at one revision.
    LeaseRevoke { id: i64 },
    /// Revokes lease `id` as the leader found it expired: only the grant it counted time for.
    LeaseExpire { id: i64, grant: u64 },
    /// `write`, made for `caller` while auth was on: it applies only if the caller's grants
    /// allow it at the auth revision it applies at (see [`crate::auth`]).
    As { caller: crate::auth::Caller, write: Box<Write> },
}

impl Write {
    /// About how many bytes the write takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Write::Put { key, value, .. } => key.len() + value.len(),
            Write::Delete { key, .. } => key.len(),
            Write::Txn(txn) => txn.size(),
            Write::LeaseGrant { .. } | Write::LeaseRevoke { .. } | Write::LeaseExpire { .. } => 16,
            Write::As { caller, write } => caller.user.len() + write.size(),
        }
    }

    /// Whether applying it reads ranges of keys: work that grows with the store.
    pub fn scans(&self) -> bool {
        match self {
            Write::Txn(txn) => txn.scans(),
            Write::As { write, .. } => write.scans(),
            // However many keys the lease has.
            Write::LeaseRevoke { .. } | Write::LeaseExpire { .. } => true,
            Write::Put { .. } | Write::Delete { .. } | Write::LeaseGrant { .. } => false,
        }
    }

    /// Applies the write to `space`, a store at `revision`, and answers what it did (the
    /// answer's revision is the store's afterwards), or why nothing of it could apply.
    pub fn apply<S: KeySpace>(
        self,
        space: &mut S,
        revision: u64,
    ) -> Result<Result<WriteResult, WriteError>, S::Error> {
        let answer =
            |revision, succeeded, prev| Ok(WriteResult { revision, succeeded, prev, responses: Vec::new() });
        Ok(match self {
            Write::Put { key, value, precondition } => {
                let current = space.get(&key)?;
                if !precondition.is_none_or(|p| p.holds(current.as_ref())) {
                    return Ok(answer(revision, false, current));
                }
                let revision = revision + 1;
                let record = KeyRecord {
                    create_revision: current.as_ref().map_or(revision, |r| r.create_revision),
                    mod_revision: revision,
                    version: current.as_ref().map_or(1, |r| r.version + 1),
                    lease: 0,
                    value,
                };
                set_key(space, key, current.as_ref(), Some(record), revision, 0);
                answer(revision, true, current)
            }
            Write::Delete { key, precondition } => {
                let current = space.get(&key)?;
                if !precondition.is_none_or(|p| p.holds(current.as_ref())) {
                    return Ok(answer(revision, false, current));
                }
                if current.is_none() {
                    return Ok(answer(revision, true, None));
                }
                set_key(space, key, current.as_ref(), None, revision + 1, 0);
                answer(revision + 1, true, current)
            }
            Write::Txn(txn) => execute(txn, space, revision)?.map(|(result, revision)| WriteResult {
                revision,
                succeeded: result.succeeded,
                prev: None,
                responses: result.responses,
            }),
            Write::LeaseGrant { id, ttl, grant } => {
                if space.lease(id)?.is_some() {
                    return Ok(Err(WriteError::LeaseExists(id)));
                }
                space.set_lease(id, Some(LeaseRecord { ttl, grant }));
                answer(revision, true, None)
            }
            Write::LeaseRevoke { id } => revoke(space, id, None, revision)?,
            Write::LeaseExpire { id, grant } => revoke(space, id, Some(grant), revision)?,
            // The state machine checked the caller's grants before it got here.
            Write::As { write, .. } => write.apply(space, revision)?,
        })
    }
}

/// Revokes lease `id` (only if it is still the grant `grant`, when given), deleting its keys at
/// one revision.
fn revoke<S: KeySpace>(
    space: &mut S,
    id: i64,
    grant: Option<u64>,
    revision: u64,
) -> Result<Result<WriteResult, WriteError>, S::Error> {
    match space.lease(id)? {
        Some(lease) if grant.is_none_or(|grant| grant == lease.grant) => {}
        _ => return Ok(Err(WriteError::LeaseNotFound(id))),
    }
    let mut sub = 0;
    for key in space.attached(id)? {
        match space.get(&key)? {
            Some(record) if record.lease == id => {
                set_key(space, key, Some(&record), None, revision + 1, sub);
                sub += 1;
            }
            // Attached no more (never so, if the records agree): only the mark goes.
            _ => space.attach(id, &key, false),
        }
    }
    space.set_lease(id, None);
    let revision = if sub > 0 { revision + 1 } else { revision };
    Ok(Ok(WriteResult { revision, succeeded: true, prev: None, responses: Vec::new() }))
}

/// How logs name a write: what it does, never the value.
impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Put { key, value, .. } => {
                write!(f, "put {:?} ({} bytes)", String::from_utf8_lossy(key), value.len())
            }
            Write::Delete { key, .. } => write!(f, "delete {:?}", String::from_utf8_lossy(key)),
            Write::Txn(txn) => write!(f, "{txn}"),
            Write::LeaseGrant { id, ttl, .. } => write!(f, "grant lease {id} for {ttl} s"),
            Write::LeaseRevoke { id } => write!(f, "revoke lease {id}"),
            Write::LeaseExpire { id, .. } => write!(f, "expire lease {id}"),
            Write::As { caller, write } => write!(f, "{write} as {:?}", caller.user),
        }
    }
}

/// What applying a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The store's revision once the write was applied: the write's own revision when it
    /// changed something, else the revision the store was at.
    pub revision: u64,
    /// False when the precondition (the compares) did not hold: then a put or a delete wrote
    /// nothing, and a transaction applied its failure list.
    pub succeeded: bool,
    /// A put or a delete: the key before the write (on failure: the key as it is, which made
    /// the compare fail). A transaction: none.
    pub prev: Option<KeyRecord>,
    /// A transaction: what each operation of the list it applied did. A put or a delete: none.
    pub responses: Vec<OpResponse>,
}

#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    /// Applies `write` to a store holding `current` as key "k", at `revision`: the answer, and
    /// the key's change (None: none; `Some(None)`: deleted).
    fn apply_write(
        write: Write,
        current: Option<&KeyRecord>,
        revision: u64,
    ) -> (WriteResult, Option<Option<KeyRecord>>) {
        let mut space = Memory::default();
        if let Some(current) = current {
            space.keys.insert(b"k".to_vec(), current.clone());
        }
        let result = write.apply(&mut space, revision).expect("apply").expect("applies");
        let change = (!space.changes.is_empty()).then(|| space.keys.get(&b"k"[..]).cloned());
        (result, change)
    }

    fn answer(revision: u64, succeeded: bool, prev: Option<KeyRecord>) -> WriteResult {
        WriteResult { revision, succeeded, prev, responses: vec![] }
    }

    fn put(value: &str, precondition: Option<Precondition>) -> Write {
        Write::Put { key: b"k".to_vec(), value: value.as_bytes().to_vec(), precondition }
    }

    fn delete(precondition: Option<Precondition>) -> Write {
        Write::Delete { key: b"k".to_vec(), precondition }
    }

    #[test]
    fn a_first_put_creates_the_key_at_the_next_revision() {
        let (result, change) = apply_write(put("v", None), None, 6);
        assert_eq!(result, answer(7, true, None));
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
        assert_eq!(stale, answer(8, false, Some(current)));
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
        assert_eq!(result, answer(4, true, None));
        assert_eq!(change, None);
    }

    #[test]
    fn deleting_a_key_takes_the_next_revision() {
        let current = KeyRecord::at(3, 5, 2, "v");
        let (result, change) = apply_write(delete(None), Some(&current), 9);
        assert_eq!(result, answer(10, true, Some(current)));
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
