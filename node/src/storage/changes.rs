//! The changes since a revision, as a watch replays them: the `changes` family lists every
//! change by (revision, sub-revision), and each key's `history` holds what the change made of
//! it and what it was before. Read from one consistent view, in whole revisions: a
//! transaction's changes are never split between two reads.

use rocksdb::{ReadTier, DB};

use super::codec::{self, decode_change_key, decode_history_entry};
use super::reader::view_options;
use super::state_machine::{read_compacted, read_revision};
use super::{cf, run_blocking, KvReader, StoreError, CF_CHANGES, CF_HISTORY};
use crate::engine::{KeyRange, KeyRecord, RevisionError};

/// One change to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    /// The revision of the change.
    pub revision: u64,
    /// The key after the change; `None`: it was deleted.
    pub record: Option<KeyRecord>,
    /// The key before the change, when asked for and it existed.
    pub prev: Option<KeyRecord>,
}

/// The changes of a run of revisions.
#[derive(Debug)]
pub struct ChangesPage {
    /// The changes to the wanted keys, in revision then sub-revision order.
    pub changes: Vec<Change>,
    /// Every change up to this revision was read: a watcher given `changes` is synced to it.
    pub through: u64,
    /// The store's revision when read: `through` is below it when the page was cut short.
    pub revision: u64,
}

/// What one read may gather before it stops at the next revision boundary.
#[derive(Debug, Clone, Copy)]
pub struct ChangesBudget {
    /// Changes to the wanted keys.
    pub changes: usize,
    /// Bytes of their keys and values.
    pub bytes: usize,
    /// Changes looked at, wanted or not: a watch on a rare key does not scan a long backlog in
    /// one go.
    pub scanned: usize,
}

impl KvReader {
    /// The changes to `keys` from revision `from` on, up to `budget` (at least one revision's
    /// worth), with each key's previous state if `prev` asks for it. `from` below the
    /// compaction revision is refused: those changes are gone.
    pub async fn changes(
        &self,
        from: u64,
        keys: KeyRange,
        prev: bool,
        budget: ChangesBudget,
    ) -> Result<ChangesPage, StoreError> {
        // A watcher that keeps up reads a few changes just applied, still in memory: read them
        // here, in a small bite, and go to a blocking thread only when the disk is needed
        // (thousands of watchers woken by each write would otherwise queue thousands of thread
        // hand-offs).
        let bite = ChangesBudget {
            changes: budget.changes.min(INLINE_CHANGES),
            bytes: budget.bytes.min(INLINE_BYTES),
            scanned: budget.scanned.min(INLINE_CHANGES),
        };
        match read_changes(&self.db, from, &keys, prev, bite, ReadTier::BlockCache) {
            Err(StoreError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
            answered => return answered,
        }
        let db = self.db.clone();
        run_blocking(move || read_changes(&db, from, &keys, prev, budget, ReadTier::All)).await
    }
}

/// At most this many changes are read on the async runtime at once...
const INLINE_CHANGES: usize = 64;
/// ...and about this many bytes.
const INLINE_BYTES: usize = 256 * 1024;

/// The page, reading no deeper than `tier`.
fn read_changes(
    db: &DB,
    from: u64,
    keys: &KeyRange,
    prev: bool,
    budget: ChangesBudget,
    tier: ReadTier,
) -> Result<ChangesPage, StoreError> {
    let view = db.snapshot();
    let options = || {
        let mut opts = view_options(&view);
        opts.set_read_tier(tier);
        opts
    };
    let opts = options();
    let revision = read_revision(db, &opts)?;
    let compacted = read_compacted(db, &opts)?;
    if from < compacted {
        return Err(RevisionError::Compacted { requested: from, compacted }.into());
    }
    let history = cf(db, CF_HISTORY)?;
    let mut versions = db.raw_iterator_cf_opt(history, options());
    let mut iter = db.raw_iterator_cf_opt(cf(db, CF_CHANGES)?, options());
    iter.seek(codec::change_key(from.max(1), 0));
    let (mut changes, mut bytes, mut scanned) = (Vec::new(), 0usize, 0usize);
    let mut through = revision;
    let mut current: Option<u64> = None;
    while let (Some(entry), Some(key)) = (iter.key(), iter.value()) {
        let (at, _) = decode_change_key(entry)?;
        if current != Some(at) {
            // A revision boundary: the only place a page may end.
            let spent = changes.len() >= budget.changes || bytes >= budget.bytes || scanned >= budget.scanned;
            if spent && current.is_some() {
                through = at - 1;
                break;
            }
            current = Some(at);
        }
        scanned += 1;
        if keys.contains(key) {
            let version =
                db.get_pinned_cf_opt(history, codec::history_key(key, at), &opts)?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "the change at revision {at} to key {:?} has no version in the history",
                        key.escape_ascii().to_string()
                    ))
                })?;
            let record = decode_history_entry(&version)?;
            let before = if prev && at > 1 {
                versions.seek_for_prev(codec::history_key(key, at - 1));
                versions.status()?;
                match (versions.key(), versions.value()) {
                    (Some(k), Some(v)) if k.starts_with(&codec::history_prefix(key)) => {
                        decode_history_entry(v)?
                    }
                    _ => None,
                }
            } else {
                None
            };
            bytes += key.len()
                + record.as_ref().map_or(0, |r| r.value.len())
                + before.as_ref().map_or(0, |r| r.value.len());
            changes.push(Change { key: key.to_vec(), revision: at, record, prev: before });
        }
        iter.next();
    }
    iter.status()?;
    Ok(ChangesPage { changes, through, revision })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Op, Txn, Write};
    use crate::storage::state_machine::tests::{apply_writes, open_test_db};

    const ALL: ChangesBudget = ChangesBudget { changes: usize::MAX, bytes: usize::MAX, scanned: usize::MAX };

    fn put(key: &str, value: &str) -> Write {
        Write::Put { key: key.into(), value: value.into(), precondition: None }
    }

    fn summary(page: &ChangesPage) -> Vec<(u64, String, Option<String>, Option<String>)> {
        let text = |r: &Option<KeyRecord>| r.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned());
        page.changes
            .iter()
            .map(|c| {
                (c.revision, String::from_utf8_lossy(&c.key).into_owned(), text(&c.record), text(&c.prev))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_changes_to_a_range_come_in_revision_order_with_what_they_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("w/a", "1"), put("other", "x"), put("w/a", "2")]);
        apply_writes(&db, vec![Write::Delete { key: b"w/a".to_vec(), precondition: None }]);
        let reader = KvReader::new(db.clone());

        let page = reader.changes(1, KeyRange::prefix(b"w/"), true, ALL).await.expect("read");
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            summary(&page),
            [
                (2, "w/a".into(), some("1"), None),
                (4, "w/a".into(), some("2"), some("1")),
                (5, "w/a".into(), None, some("2")),
            ]
        );
        assert_eq!((page.through, page.revision), (5, 5));
        let later = reader.changes(4, KeyRange::prefix(b"w/"), false, ALL).await.expect("read");
        assert_eq!(later.changes.len(), 2, "from revision 4 on");
        assert_eq!(later.changes[0].prev, None, "previous states only when asked for");
        let future = reader.changes(9, KeyRange::prefix(b"w/"), false, ALL).await.expect("read");
        assert!(future.changes.is_empty());
        assert_eq!(future.through, 5);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_page_ends_only_between_revisions_so_a_transaction_is_never_split() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        let txn = Txn {
            success: vec![
                Op::Put { key: b"t/a".to_vec(), value: b"1".to_vec(), lease: 0, prev_kv: false },
                Op::Put { key: b"t/b".to_vec(), value: b"1".to_vec(), lease: 0, prev_kv: false },
            ],
            ..Txn::default()
        };
        apply_writes(&db, vec![Write::Txn(txn), put("t/c", "1")]);
        let reader = KvReader::new(db.clone());
        let one = ChangesBudget { changes: 1, bytes: usize::MAX, scanned: usize::MAX };
        let page = reader.changes(1, KeyRange::prefix(b"t/"), false, one).await.expect("read");
        assert_eq!(page.changes.len(), 2, "both changes of revision 2, though the budget is one");
        assert_eq!((page.through, page.revision), (2, 3));
        let rest = reader.changes(page.through + 1, KeyRange::prefix(b"t/"), false, one).await.expect("read");
        assert_eq!(summary(&rest)[0].1, "t/c");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn changes_only_on_disk_are_read_from_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let db = open_test_db(dir.path());
            apply_writes(&db, vec![put("d/a", "1"), put("d/a", "2")]);
            for family in
                [super::super::CF_CHANGES, super::super::CF_HISTORY, super::super::CF_SM, super::super::CF_KV]
            {
                db.flush_cf(cf(&db, family).expect("cf")).expect("flush to a table file");
            }
        }
        // Reopened, nothing is in memory: the in-memory attempt is incomplete and must fall back.
        let reader = KvReader::new(Arc::new(open_test_db(dir.path())));
        let page = reader.changes(1, KeyRange::prefix(b"d/"), true, ALL).await.expect("read");
        assert_eq!(summary(&page).len(), 2);
        assert_eq!(summary(&page)[1].3.as_deref(), Some("1"), "the previous value, from disk too");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn changes_below_the_compaction_revision_are_refused_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("a", "1"), put("a", "2"), put("a", "3")]);
        db.put_cf(cf(&db, super::super::CF_SM).expect("cf"), codec::COMPACTED, codec::encode_u64(3))
            .expect("put");
        let reader = KvReader::new(db.clone());
        let refused = reader.changes(2, KeyRange::prefix(b""), false, ALL).await.expect_err("compacted");
        assert!(matches!(
            refused,
            StoreError::Revision(RevisionError::Compacted { requested: 2, compacted: 3 })
        ));
        assert_eq!(
            reader.changes(3, KeyRange::prefix(b""), false, ALL).await.expect("read").changes.len(),
            2
        );
    }
}
