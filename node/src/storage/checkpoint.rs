//! Snapshots as RocksDB checkpoints: taking one costs the same whatever the store's size.
//!
//! The state machine is persistent, so a snapshot only has to let raft purge its log and give
//! a lagging member the state. A checkpoint is a consistent point-in-time copy of the store made
//! of hard links to its table files (RocksDB flushes the memtables first, work in proportion to
//! what was written since the last flush, not to the store). Nothing is read or copied until a
//! member needs the snapshot: then the checkpoint's records are streamed from it
//! ([`Checkpoint::write_to`], through `SnapshotData::pieces`) in the snapshot format (`snapshot.rs`). Before this, every snapshot
//! rewrote the whole store into a file, and writes' tail latency grew with the data.
//!
//! On disk, `snapshots/<id>/` holds `db/` (the checkpoint) and `header` (what it holds: raft's
//! description and the store's revision), written last: a directory without a header is an
//! unfinished build. The newest finished checkpoint is the current snapshot; the others are
//! removed at start. A checkpoint replaced while it is being streamed stays on disk until the
//! stream ends.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rocksdb::checkpoint::Checkpoint as RocksCheckpoint;
use rocksdb::{IteratorMode, Options, ReadOptions, DB};

use super::codec::{self, decode, encode};
use super::identity;
use super::snapshot::{SnapshotHeader, SnapshotWriter};
use super::state_machine::{read_compacted, read_revision};
use super::{cf, Family, StoreError, CF_LOG, CF_RAFT, CF_SM};
use crate::metrics;
use crate::types::{LogId, SnapshotMeta, StoredMembership};

const HEADER: &str = "header";
const DB_DIR: &str = "db";

/// One finished checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    header: SnapshotHeader,
    /// Set once a newer checkpoint replaced this one: the last holder removes it from disk.
    retired: AtomicBool,
}

impl Checkpoint {
    pub(crate) fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    pub(crate) fn meta(&self) -> &SnapshotMeta {
        &self.header.meta
    }

    /// Writes the checkpoint's records in the snapshot format to `out`. Blocking.
    pub(crate) fn write_to<W: std::io::Write>(&self, out: W) -> Result<W, StoreError> {
        let mut writer = SnapshotWriter::new(out, &self.header)?;
        self.for_each_record(|family, key, record| writer.record(family, key, record))?;
        writer.finish()
    }

    /// The checkpoint's key-value data, family by family, each in key order. Blocking.
    pub(crate) fn for_each_record(
        &self,
        mut f: impl FnMut(Family, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let db = open_read_only(&self.dir.join(DB_DIR))?;
        for family in Family::ALL {
            let Some(handle) = db.cf_handle(family.name()) else { continue };
            for item in db.iterator_cf(handle, IteratorMode::Start) {
                let (key, record) = item?;
                f(family, &key, &record)?;
            }
        }
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            remove_dir(&self.dir);
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old snapshot");
        }
    }
}

/// The member's checkpoints: where they live and which is current. Clones share them.
#[derive(Clone)]
pub(crate) struct Checkpoints {
    dir: PathBuf,
    current: Arc<Mutex<Option<Arc<Checkpoint>>>>,
}

impl Checkpoints {
    /// Finds the current checkpoint in `dir` and removes everything else there (unfinished
    /// builds, replaced checkpoints, files of earlier formats). If the log was purged beyond
    /// the current checkpoint (a crash between installing a snapshot and checkpointing it),
    /// takes one now: raft needs a snapshot that covers everything purged. Blocking.
    pub(crate) fn open(db: &DB, dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut newest: Option<Checkpoint> = None;
        for entry in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let path = entry.map_err(|e| StoreError::io(&dir, e))?.path();
            let finished = read_header(&path).ok().flatten();
            match finished {
                Some(header)
                    if newest.as_ref().is_none_or(|n| n.meta().last_log_id < header.meta.last_log_id) =>
                {
                    if let Some(older) =
                        newest.replace(Checkpoint { dir: path, header, retired: AtomicBool::new(false) })
                    {
                        older.retired.store(true, Ordering::Release);
                    }
                }
                _ if path.is_dir() => remove_dir(&path),
                _ => std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?,
            }
        }
        let checkpoints = Self { dir, current: Arc::new(Mutex::new(newest.map(Arc::new))) };
        let covered = checkpoints.current().and_then(|c| c.meta().last_log_id);
        if !log_covers_since(db, covered)? {
            tracing::info!(
                ?covered,
                "the log does not cover what was applied since the last snapshot: taking one"
            );
            checkpoints.take(db)?;
        }
        Ok(checkpoints)
    }

    /// The current checkpoint, if any.
    pub(crate) fn current(&self) -> Option<Arc<Checkpoint>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Checkpoint>>> {
        // Nothing is left half-done behind the lock: carry on after a panic elsewhere.
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a checkpoint of the store as of now and makes it current, unless a newer one
    /// became current meanwhile (a snapshot installed while this one was taken); returns the
    /// current one. Blocking.
    pub(crate) fn take(&self, db: &DB) -> Result<Arc<Checkpoint>, StoreError> {
        let started = Instant::now();
        let dir = self.dir.join(unique_name());
        std::fs::create_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let taken = write_checkpoint(db, &dir);
        let header = match taken {
            Ok(header) => header,
            Err(e) => {
                remove_dir(&dir);
                return Err(e);
            }
        };
        // A power loss must not take the finished checkpoint's directory entry with it.
        sync_dir(&self.dir)?;
        let taken = Arc::new(Checkpoint { dir, header, retired: AtomicBool::new(false) });
        let mut current = self.lock();
        if let Some(newer) = current.as_ref().filter(|c| c.meta().last_log_id >= taken.meta().last_log_id) {
            taken.retired.store(true, Ordering::Release);
            return Ok(newer.clone());
        }
        if let Some(replaced) = current.replace(taken.clone()) {
            replaced.retired.store(true, Ordering::Release);
        }
        metrics::storage().observe_snapshot_build(started.elapsed());
        Ok(taken)
    }
}

/// Whether raft's log, as it will be once openraft has loaded it, still holds every entry
/// applied after `covered`: openraft needs a snapshot that covers whatever it purged. It purges
/// up to the applied index when the log ends before it (a crash after a snapshot from the
/// leader was loaded and before it was checkpointed); it purged behind snapshots before.
fn log_covers_since(db: &DB, covered: Option<LogId>) -> Result<bool, StoreError> {
    let purged: Option<LogId> =
        db.get_cf(cf(db, CF_RAFT)?, codec::LAST_PURGED)?.map(|b| decode(&b)).transpose()?;
    if purged > covered {
        return Ok(false);
    }
    let applied: Option<LogId> =
        db.get_cf(cf(db, CF_SM)?, codec::LAST_APPLIED)?.map(|b| decode(&b)).transpose()?.flatten();
    let Some(applied) = applied.filter(|a| Some(*a) > covered) else { return Ok(true) };
    let last = match db.iterator_cf(cf(db, CF_LOG)?, IteratorMode::End).next().transpose()? {
        Some((key, _)) => Some(codec::decode_log_key(&key)?),
        None => purged.map(|p| p.index),
    };
    Ok(last.is_some_and(|last| last >= applied.index))
}

/// A directory name no other build or checkpoint has.
fn unique_name() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{nanos}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed))
}

/// Checkpoints `db` into `dir`, reads back what the checkpoint holds and writes its header.
fn write_checkpoint(db: &DB, dir: &Path) -> Result<SnapshotHeader, StoreError> {
    let db_dir = dir.join(DB_DIR);
    RocksCheckpoint::new(db)?.create_checkpoint(&db_dir)?;
    // The checkpoint is one consistent view of every column family; its own metadata says
    // which log id and revision its records are at (the live store has moved on).
    let header = {
        let view = open_read_only(&db_dir)?;
        let read = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(view.get_cf_opt(cf(&view, CF_SM)?, key, &ReadOptions::default())?)
        };
        let last_log_id: Option<LogId> =
            read(codec::LAST_APPLIED)?.map(|b| decode(&b)).transpose()?.flatten();
        let last_membership: StoredMembership =
            read(codec::LAST_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        SnapshotHeader {
            meta: SnapshotMeta { last_log_id, last_membership },
            revision: read_revision(&view, &ReadOptions::default())?,
            compacted: read_compacted(&view, &ReadOptions::default())?,
            cluster_id: identity::read(&view)?,
        }
    };
    let path = dir.join(HEADER);
    let mut file = File::create(&path).map_err(|e| StoreError::io(&path, e))?;
    file.write_all(&encode(&header)?).map_err(|e| StoreError::io(&path, e))?;
    file.sync_all().map_err(|e| StoreError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(header)
}

/// The header of the checkpoint in `dir`; `None` when it is not a finished checkpoint.
fn read_header(dir: &Path) -> Result<Option<SnapshotHeader>, StoreError> {
    let path = dir.join(HEADER);
    match std::fs::read(&path) {
        Ok(bytes) if dir.join(DB_DIR).is_dir() => Ok(Some(SnapshotHeader::decode(&bytes)?)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Opens a checkpoint with the column families it has: one taken by an earlier version may
/// lack families added since, which then hold nothing.
fn open_read_only(path: &Path) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    // A checkpoint is read once, front to back: keep table readers out of memory until needed.
    opts.set_max_open_files(64);
    let families = DB::list_cf(&opts, path)?;
    Ok(DB::open_cf_for_read_only(&opts, path, families, false)?)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KeyRecord;
    use crate::storage::codec::encode_record;
    use crate::storage::snapshot::SnapshotReader;
    use crate::storage::CF_KV;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
    }

    fn record(value: &str) -> Vec<u8> {
        encode_record(&KeyRecord::at(1, 1, 1, value))
    }

    /// A store that has applied up to `applied` at revision `revision`, holding `keys`.
    fn store(dir: &Path, applied: u64, revision: u64, keys: &[&[u8]]) -> DB {
        let db = crate::storage::open_db(&dir.join("db")).expect("open");
        let sm = cf(&db, CF_SM).expect("cf");
        db.put_cf(sm, codec::LAST_APPLIED, encode(&Some(log_id(applied))).expect("encode")).expect("put");
        db.put_cf(sm, codec::REVISION, codec::encode_u64(revision)).expect("put");
        for key in keys {
            db.put_cf(cf(&db, CF_KV).expect("cf"), key, record("v")).expect("put");
        }
        db
    }

    fn keys_of(checkpoint: &Checkpoint) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        checkpoint
            .for_each_record(|family, k, _| {
                if family == Family::Kv {
                    keys.push(k.to_vec());
                }
                Ok(())
            })
            .expect("read");
        keys
    }

    #[test]
    fn a_checkpoint_holds_the_store_as_it_was_when_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 10, 7, &[b"a", b"\xff\x00binary"]);
        let checkpoints = Checkpoints::open(&db, dir.path().join("snapshots")).expect("open");
        let taken = checkpoints.take(&db).expect("take");
        db.put_cf(cf(&db, CF_KV).expect("cf"), b"later", record("x")).expect("put");
        assert_eq!(taken.meta().last_log_id, Some(log_id(10)));
        assert_eq!(taken.header().revision, 7);
        assert_eq!(keys_of(&taken), [b"a".to_vec(), b"\xff\x00binary".to_vec()], "not the later write");

        let streamed = taken.write_to(Vec::new()).expect("stream");
        let (header, mut reader) = SnapshotReader::open(&streamed[..]).expect("a snapshot");
        assert_eq!(&header, taken.header());
        let mut streamed_keys = Vec::new();
        while let Some((family, key, _)) = reader.next_record().expect("record") {
            if family == Family::Kv {
                streamed_keys.push(key);
            }
        }
        assert_eq!(streamed_keys, keys_of(&taken));
    }

    #[test]
    fn a_replaced_checkpoint_stays_on_disk_until_its_last_reader_is_done() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 10, 7, &[b"a"]);
        let checkpoints = Checkpoints::open(&db, dir.path().join("snapshots")).expect("open");
        let first = checkpoints.take(&db).expect("take");
        db.put_cf(cf(&db, CF_SM).expect("cf"), codec::LAST_APPLIED, encode(&Some(log_id(20))).expect("enc"))
            .expect("put");
        let second = checkpoints.take(&db).expect("take");
        assert_eq!(checkpoints.current().map(|c| c.meta().last_log_id), Some(Some(log_id(20))));
        assert!(first.dir.exists(), "still being read");
        assert_eq!(keys_of(&first), [b"a".to_vec()]);
        let first_dir = first.dir.clone();
        drop(first);
        assert!(!first_dir.exists(), "removed by its last reader");
        assert!(second.dir.exists());
    }

    #[test]
    fn an_older_checkpoint_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 50, 7, &[b"a"]);
        let checkpoints = Checkpoints::open(&db, dir.path().join("snapshots")).expect("open");
        checkpoints.take(&db).expect("take");
        // As if a snapshot at 50 was installed while a build of the store at 20 was under way.
        db.put_cf(cf(&db, CF_SM).expect("cf"), codec::LAST_APPLIED, encode(&Some(log_id(20))).expect("enc"))
            .expect("put");
        let current = checkpoints.take(&db).expect("take");
        assert_eq!(current.meta().last_log_id, Some(log_id(50)));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("snapshots")).expect("ls").collect();
        assert_eq!(left.len(), 1, "the stale build was discarded");
    }

    #[test]
    fn a_restart_keeps_the_newest_checkpoint_and_clears_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let snapshots = dir.path().join("snapshots");
        let db = store(dir.path(), 10, 7, &[b"a"]);
        let checkpoints = Checkpoints::open(&db, snapshots.clone()).expect("open");
        checkpoints.take(&db).expect("take");
        std::fs::create_dir(snapshots.join("unfinished")).expect("mkdir");
        std::fs::write(snapshots.join("current.snap"), b"an earlier format").expect("write");
        drop(checkpoints);

        let reopened = Checkpoints::open(&db, snapshots.clone()).expect("reopen");
        assert_eq!(reopened.current().map(|c| c.meta().last_log_id), Some(Some(log_id(10))));
        assert_eq!(std::fs::read_dir(&snapshots).expect("ls").count(), 1);
    }

    /// Appends a raft log entry at `index` as the log store keeps it.
    fn logged(db: &DB, index: u64) {
        let entry = crate::types::Entry { log_id: log_id(index), payload: openraft::EntryPayload::Blank };
        db.put_cf(cf(db, CF_LOG).expect("cf"), codec::log_key(index), encode(&entry).expect("enc"))
            .expect("put");
    }

    fn purged(db: &DB, index: u64) {
        // As the log store writes it: the log id itself.
        db.put_cf(cf(db, CF_RAFT).expect("cf"), codec::LAST_PURGED, encode(&log_id(index)).expect("enc"))
            .expect("put");
    }

    fn current_at_open(db: &DB, dir: &Path) -> Option<LogId> {
        let checkpoints = Checkpoints::open(db, dir.join("snapshots")).expect("open");
        checkpoints.current().and_then(|c| c.meta().last_log_id)
    }

    #[test]
    fn a_log_purged_beyond_the_last_checkpoint_gets_one_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 30, 7, &[b"a"]);
        purged(&db, 30);
        assert_eq!(current_at_open(&db, dir.path()), Some(log_id(30)));
    }

    #[test]
    fn a_snapshot_loaded_but_not_checkpointed_before_a_crash_gets_one_at_start() {
        // A follower's log ended at 12 when it loaded the leader's snapshot at 40 and crashed:
        // openraft will purge up to 40 at start, so a snapshot must cover 40.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 40, 7, &[b"a"]);
        logged(&db, 12);
        assert_eq!(current_at_open(&db, dir.path()), Some(log_id(40)));
    }

    #[test]
    fn a_log_that_covers_what_was_applied_needs_no_checkpoint_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store(dir.path(), 40, 7, &[b"a"]);
        for index in 1..=45 {
            logged(&db, index);
        }
        assert_eq!(current_at_open(&db, dir.path()), None, "a restart costs no flush");
        purged(&db, 20);
        logged(&db, 46);
        assert_eq!(current_at_open(&db, dir.path()), Some(log_id(40)), "purged beyond any snapshot");
    }
}
