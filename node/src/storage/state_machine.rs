//! The key-value state machine, implementing openraft's [`RaftStateMachine`].
//!
//! The state machine is persistent: `apply` writes the keys, `last_applied` and the membership
//! in one atomic `WriteBatch`, so a restart resumes from where it was instead of replaying the
//! whole log. Snapshots are built from a consistent RocksDB snapshot (a point-in-time view that
//! holds data and `last_applied` together) and streamed to a file; installing one replaces the
//! whole `kv` column family and the metadata in one `WriteBatch`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{Direction, IteratorMode, ReadOptions, ReadTier, WriteBatch, WriteOptions, DB};

use super::codec::{self, decode, decode_record, encode, encode_record};
use super::snapshot::{SnapshotReader, SnapshotWriter};
use super::{cf, run_blocking, run_write, StoreError, CF_KV, CF_SM};
use crate::metrics;
use crate::types::{
    Applied, Command, CommandResult, Entry, KeyRecord, LogId, Precondition, Snapshot, SnapshotMeta,
    StoredMembership, TypeConfig,
};

const CURRENT_SNAPSHOT: &str = "current.snap";

/// Applies a single write to its key's current state. Pure: returns the answer and, if the key
/// changes, its new state (`Some(None)` for a deletion). Batches are unpacked by the caller.
pub(crate) fn apply_command(
    command: Command,
    revision: u64,
    current: Option<&KeyRecord>,
) -> (CommandResult, Option<Option<KeyRecord>>) {
    let holds = |p: Option<Precondition>| match p {
        None => true,
        Some(Precondition::Absent) | Some(Precondition::ModRevision(0)) => current.is_none(),
        Some(Precondition::ModRevision(rev)) => current.is_some_and(|r| r.mod_revision == rev),
    };
    let prev = current.cloned();
    match command {
        Command::Put { value, precondition, .. } => {
            if !holds(precondition) {
                return (CommandResult { revision, succeeded: false, prev }, None);
            }
            let record = KeyRecord {
                create_revision: current.map_or(revision, |r| r.create_revision),
                mod_revision: revision,
                version: current.map_or(1, |r| r.version + 1),
                value,
            };
            (CommandResult { revision, succeeded: true, prev }, Some(Some(record)))
        }
        Command::Delete { precondition, .. } => {
            if !holds(precondition) {
                return (CommandResult { revision, succeeded: false, prev }, None);
            }
            let change = current.map(|_| None);
            (CommandResult { revision, succeeded: true, prev }, change)
        }
        // Never reached: batches are unpacked before this. Refused rather than half-applied.
        Command::Batch(_) => (CommandResult { revision, succeeded: false, prev }, None),
    }
}

/// Where snapshots live, and the lock that orders replacing the current one: openraft builds
/// snapshots in a task of their own, which can overlap installing one received from the leader.
#[derive(Clone)]
struct SnapshotDir {
    path: PathBuf,
    replace: Arc<Mutex<()>>,
}

impl SnapshotDir {
    fn current(&self) -> PathBuf {
        self.path.join(CURRENT_SNAPSHOT)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic while holding it left no half-done state behind the lock: files are renamed
        // atomically. Carry on with the inner guard.
        self.replace.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotDir,
}

impl StateMachine {
    pub(crate) async fn new(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, StoreError> {
        let snapshots = SnapshotDir { path: snapshot_dir, replace: Arc::default() };
        let dir = snapshots.clone();
        let store = db.clone();
        run_blocking(move || {
            std::fs::create_dir_all(&dir.path).map_err(|e| StoreError::io(&dir.path, e))?;
            // A crash while building or installing leaves partial files; they are never read.
            for entry in std::fs::read_dir(&dir.path).map_err(|e| StoreError::io(&dir.path, e))? {
                let path = entry.map_err(|e| StoreError::io(&dir.path, e))?.path();
                if path.file_name().is_some_and(|n| n != CURRENT_SNAPSHOT) {
                    std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                }
            }
            finish_interrupted_install(&store, &dir)
        })
        .await?;
        Ok(Self { db, snapshots })
    }
}

/// Installing a snapshot renames it into place, then writes it into the state machine. A crash
/// between the two leaves a current snapshot ahead of the state machine; openraft would never
/// install it again, so finish the job here.
fn finish_interrupted_install(db: &DB, dir: &SnapshotDir) -> Result<(), StoreError> {
    let Some((meta, _)) = open_current_snapshot(&dir.current())? else { return Ok(()) };
    let applied = read_sm_meta::<Option<LogId>>(db, ReadOptions::default(), codec::LAST_APPLIED)?.flatten();
    if meta.last_log_id > applied {
        tracing::warn!(last_log_id = ?meta.last_log_id, ?applied, "finishing an interrupted snapshot install");
        load_snapshot(db, &dir.current(), &meta)?;
    }
    Ok(())
}

/// openraft's storage traits speak `io::Error`; it adds what was being done itself.
fn io_err(e: StoreError) -> std::io::Error {
    std::io::Error::other(e)
}

fn read_sm_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    opts: ReadOptions,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match db.get_cf_opt(cf(db, CF_SM)?, key, &opts)? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// About how many bytes applying `entry` writes.
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => command.size(),
        _ => 0,
    }
}

fn apply_entries(db: &DB, entries: Vec<Entry>) -> Result<Vec<Applied>, StoreError> {
    let kv = cf(db, CF_KV)?;
    let mut batch = WriteBatch::default();
    // Later commands in the batch must see the effect of earlier ones on the same key.
    let mut pending: HashMap<String, Option<KeyRecord>> = HashMap::new();
    let mut results = Vec::with_capacity(entries.len());
    let mut last_applied = None;
    let mut membership = None;
    for entry in entries {
        let revision = entry.log_id.index;
        last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => results.push(Applied::default()),
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                results.push(Applied::default());
            }
            EntryPayload::Normal(command) => {
                let mut applied = Vec::with_capacity(1);
                for write in command.into_writes() {
                    let Some(key) = write.key().map(str::to_string) else { continue };
                    let current = match pending.get(&key) {
                        Some(state) => state.clone(),
                        None => {
                            db.get_pinned_cf(kv, key.as_bytes())?.map(|b| decode_record(&b)).transpose()?
                        }
                    };
                    let (result, change) = apply_command(write, revision, current.as_ref());
                    if let Some(new_state) = change {
                        match &new_state {
                            Some(record) => batch.put_cf(kv, key.as_bytes(), encode_record(record)),
                            None => batch.delete_cf(kv, key.as_bytes()),
                        }
                        pending.insert(key, new_state);
                    }
                    applied.push(result);
                }
                results.push(Applied(applied));
            }
        }
    }
    let sm = cf(db, CF_SM)?;
    if let Some(last_applied) = last_applied {
        batch.put_cf(sm, codec::LAST_APPLIED, encode(&Some(last_applied))?);
    }
    if let Some(membership) = membership {
        batch.put_cf(sm, codec::LAST_MEMBERSHIP, encode(&membership)?);
    }
    // Not synced: every applied entry is committed, so on disk on a majority (not necessarily
    // here yet: openraft 0.10 may apply before this member's own fsync ends), and RocksDB's
    // single write-ahead log keeps this write ordered after the entries' own log writes. A crash
    // loses at most a suffix of both, which openraft replays from the log or the leader.
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    db.write_opt(batch, &opts)?;
    Ok(results)
}

/// A name for a snapshot file being built, unique among concurrent builds.
fn building_name(last: Option<LogId>) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    match last {
        Some(id) => format!("{}-{}-{nanos}.building", id.leader_id.term, id.index),
        None => format!("0-0-{nanos}.building"),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

/// Writes a snapshot of the state machine as of now, makes it the current one unless a newer one
/// was installed meanwhile, and returns the current one opened for reading.
fn build_snapshot_file(db: &DB, dir: &SnapshotDir) -> Result<(SnapshotMeta, File), StoreError> {
    let started = std::time::Instant::now();
    let view = db.snapshot();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&view);
    let last_applied: Option<LogId> = read_sm_meta::<Option<LogId>>(db, opts, codec::LAST_APPLIED)?.flatten();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&view);
    let last_membership: StoredMembership =
        read_sm_meta(db, opts, codec::LAST_MEMBERSHIP)?.unwrap_or_default();
    let meta = SnapshotMeta { last_log_id: last_applied, last_membership };

    let building = dir.path.join(building_name(last_applied));
    let file = File::create(&building).map_err(|e| StoreError::io(&building, e))?;
    let mut writer = SnapshotWriter::new(BufWriter::new(file), &meta)?;
    for item in view.iterator_cf(cf(db, CF_KV)?, IteratorMode::Start) {
        let (key, record) = item?;
        writer.record(&key, &record)?;
    }
    let file = writer.finish()?.into_inner().map_err(|e| StoreError::io(&building, e.into_error()))?;
    file.sync_all().map_err(|e| StoreError::io(&building, e))?;
    drop(file);

    let _replacing = dir.lock();
    if let Some((newer, file)) =
        open_current_snapshot(&dir.current())?.filter(|(c, _)| c.last_log_id >= meta.last_log_id)
    {
        std::fs::remove_file(&building).map_err(|e| StoreError::io(&building, e))?;
        return Ok((newer, file));
    }
    std::fs::rename(&building, dir.current()).map_err(|e| StoreError::io(dir.current(), e))?;
    sync_dir(&dir.path)?;
    metrics::storage().observe_snapshot_build(started.elapsed());
    let file = File::open(dir.current()).map_err(|e| StoreError::io(dir.current(), e))?;
    Ok((meta, file))
}

/// Makes the received snapshot in `received` current, then replaces the state machine with it.
fn install_snapshot_file(
    db: &DB,
    dir: &SnapshotDir,
    mut received: File,
    expected: &SnapshotMeta,
) -> Result<(), StoreError> {
    let installing = dir.path.join("installing.tmp");
    received.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(&installing, e))?;
    let mut copy = File::create(&installing).map_err(|e| StoreError::io(&installing, e))?;
    std::io::copy(&mut received, &mut copy).map_err(|e| StoreError::io(&installing, e))?;
    copy.sync_all().map_err(|e| StoreError::io(&installing, e))?;
    drop(copy);

    let file = File::open(&installing).map_err(|e| StoreError::io(&installing, e))?;
    let (meta, _) = SnapshotReader::open(BufReader::new(file))?;
    check_meta(&meta, expected)?;
    // The rename is the commit point: from here a restart finishes the install itself.
    let _replacing = dir.lock();
    std::fs::rename(&installing, dir.current()).map_err(|e| StoreError::io(dir.current(), e))?;
    sync_dir(&dir.path)?;
    load_snapshot(db, &dir.current(), &meta)
}

/// Replaces the whole state machine with the snapshot at `path`, in one atomic write.
fn load_snapshot(db: &DB, path: &Path, meta: &SnapshotMeta) -> Result<(), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let (_, mut reader) = SnapshotReader::open(BufReader::new(file))?;
    let kv = cf(db, CF_KV)?;
    let mut batch = WriteBatch::default();
    // User keys are UTF-8, which never contains the byte 0xFF: this range covers every key.
    batch.delete_range_cf(kv, &b""[..], &b"\xff"[..]);
    while let Some((key, record)) = reader.next_record()? {
        decode_record(&record)?;
        batch.put_cf(kv, &key, &record);
    }
    let sm = cf(db, CF_SM)?;
    batch.put_cf(sm, codec::LAST_APPLIED, encode(&meta.last_log_id)?);
    batch.put_cf(sm, codec::LAST_MEMBERSHIP, encode(&meta.last_membership)?);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    Ok(())
}

fn open_current_snapshot(current: &Path) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
    let file = match File::open(current) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(current, e)),
    };
    let (meta, _) = SnapshotReader::open(BufReader::new(&file))?;
    let mut file = file;
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(current, e))?;
    Ok(Some((meta, file)))
}

/// Entries applied in one RocksDB write, at most: bounds the memory a long catch-up takes.
const APPLY_CHUNK: usize = 1024;

impl StateMachine {
    /// Where snapshots received from the leader are gathered before they are installed.
    pub fn inbox(&self) -> SnapshotInbox {
        SnapshotInbox { dir: self.snapshots.path.clone() }
    }

    /// Applies `chunk` in one write and answers the clients waiting for its entries.
    async fn apply_chunk(
        &self,
        chunk: Vec<Entry>,
        responders: Vec<Option<openraft::storage::ApplyResponder<TypeConfig>>>,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let count = chunk.len();
        let bytes = chunk.iter().map(entry_size).sum();
        let results = run_write(bytes, move || apply_entries(&db, chunk)).await?;
        metrics::storage().observe_apply(started.elapsed(), count);
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            let applied = read_sm_meta::<Option<LogId>>(&db, ReadOptions::default(), codec::LAST_APPLIED)?;
            let membership = read_sm_meta(&db, ReadOptions::default(), codec::LAST_MEMBERSHIP)?;
            Ok((applied.flatten(), membership.unwrap_or_default()))
        })
        .await
        .map_err(io_err)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        let mut chunk = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            chunk.push(entry);
            responders.push(responder);
            if chunk.len() >= APPLY_CHUNK {
                self.apply_chunk(std::mem::take(&mut chunk), std::mem::take(&mut responders))
                    .await
                    .map_err(io_err)?;
            }
        }
        if !chunk.is_empty() {
            self.apply_chunk(chunk, responders).await.map_err(io_err)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), snapshots: self.snapshots.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: tokio::fs::File,
    ) -> Result<(), std::io::Error> {
        let received = snapshot.into_std().await;
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        let expected = meta.clone();
        run_blocking(move || install_snapshot_file(&db, &dir, received, &expected)).await.map_err(io_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let current = self.snapshots.current();
        let current = run_blocking(move || open_current_snapshot(&current)).await.map_err(io_err)?;
        Ok(current.map(|(meta, file)| Snapshot { meta, snapshot: tokio::fs::File::from_std(file) }))
    }
}

/// Makes the files that snapshots arriving from the leader are written to.
#[derive(Clone, Debug)]
pub struct SnapshotInbox {
    dir: PathBuf,
}

impl SnapshotInbox {
    /// An unnamed temporary file beside the snapshots: it disappears by itself if the transfer
    /// is abandoned.
    pub async fn new_file(&self) -> Result<tokio::fs::File, StoreError> {
        let dir = self.dir.clone();
        let file =
            run_blocking(move || tempfile::tempfile_in(&dir).map_err(|e| StoreError::io(&dir, e))).await?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Reads a received snapshot through and returns it, rewound, if it is one this member can
    /// install: a well-formed file that describes `expected` and whose every record decodes.
    /// openraft treats a failed install as a storage failure and stops, so a snapshot that would
    /// fail must be refused to its sender before raft is given it.
    pub async fn check(
        &self,
        received: tokio::fs::File,
        expected: &SnapshotMeta,
    ) -> Result<tokio::fs::File, StoreError> {
        let mut file = received.into_std().await;
        let expected = expected.clone();
        let file = run_blocking(move || {
            check_snapshot(&mut file, &expected)?;
            file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io("received snapshot", e))?;
            Ok(file)
        })
        .await?;
        Ok(tokio::fs::File::from_std(file))
    }
}

fn check_meta(meta: &SnapshotMeta, expected: &SnapshotMeta) -> Result<(), StoreError> {
    if meta.last_log_id != expected.last_log_id || meta.last_membership != expected.last_membership {
        return Err(StoreError::Corrupt(format!(
            "snapshot file describes {:?}, but it was sent as {:?}",
            meta.last_log_id, expected.last_log_id
        )));
    }
    Ok(())
}

fn check_snapshot(file: &mut File, expected: &SnapshotMeta) -> Result<(), StoreError> {
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io("received snapshot", e))?;
    let (meta, mut reader) = SnapshotReader::open(BufReader::new(file))?;
    check_meta(&meta, expected)?;
    while let Some((_, record)) = reader.next_record()? {
        decode_record(&record)?;
    }
    Ok(())
}

/// Builds snapshots on openraft's request, from a consistent view of the state machine.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshots: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        let (meta, file) = run_blocking(move || build_snapshot_file(&db, &dir)).await.map_err(io_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot { meta, snapshot: tokio::fs::File::from_std(file) })
    }
}

/// One page of an ordered listing.
#[derive(Debug)]
pub struct RangePage {
    pub entries: Vec<(String, KeyRecord)>,
    pub next_key: Option<String>,
    /// The revision (last applied log index) the page was read at.
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

    pub async fn get(&self, key: String) -> Result<Option<KeyRecord>, StoreError> {
        // Most reads are answered from memory (memtables, block cache): try that here, and go to
        // a blocking thread only when the read would need the disk.
        let mut in_memory = ReadOptions::default();
        in_memory.set_read_tier(ReadTier::BlockCache);
        match self.db.get_pinned_cf_opt(cf(&self.db, CF_KV)?, key.as_bytes(), &in_memory) {
            Ok(found) => return found.map(|b| decode_record(&b)).transpose(),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
            Err(e) => return Err(e.into()),
        }
        let db = self.db.clone();
        run_blocking(move || {
            db.get_pinned_cf(cf(&db, CF_KV)?, key.as_bytes())?.map(|b| decode_record(&b)).transpose()
        })
        .await
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
            let revision = read_sm_meta::<Option<LogId>>(&db, opts, codec::LAST_APPLIED)?
                .flatten()
                .map_or(0, |id| id.index);
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            let mut next_key = None;
            let iter = view.iterator_cf(cf(&db, CF_KV)?, IteratorMode::From(&start, Direction::Forward));
            for item in iter {
                let (key, record) = item?;
                if end.as_ref().is_some_and(|end| *key >= **end) {
                    break;
                }
                let key = String::from_utf8(key.into_vec())
                    .map_err(|_| StoreError::Corrupt("a stored key is not UTF-8".into()))?;
                let full = entries.len() == limit
                    || (!entries.is_empty() && bytes + key.len() + record.len() > max_bytes);
                if full {
                    next_key = Some(key);
                    break;
                }
                bytes += key.len() + record.len();
                entries.push((key, decode_record(&record)?));
            }
            Ok(RangePage { entries, next_key, revision })
        })
        .await
    }

    /// The last log id applied to the state machine.
    pub async fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            Ok(read_sm_meta::<Option<LogId>>(&db, ReadOptions::default(), codec::LAST_APPLIED)?.flatten())
        })
        .await
    }

    /// Approximate on-disk size of the store, in bytes.
    pub fn disk_size(&self) -> u64 {
        super::disk_size(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
    }

    /// A store whose state machine has applied up to `applied`, and a snapshot directory whose
    /// current snapshot is at `snapshot` and holds `k = v`.
    fn store_with_snapshot(applied: u64, snapshot: u64) -> (tempfile::TempDir, Arc<DB>, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(super::super::open_db(&dir.path().join("db")).expect("open"));
        let sm = cf(&db, CF_SM).expect("cf");
        db.put_cf(sm, codec::LAST_APPLIED, encode(&Some(log_id(applied))).expect("encode")).expect("put");
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("mkdir");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(snapshot)),
            last_membership: StoredMembership::default(),
        };
        let file = File::create(snapshots.join(CURRENT_SNAPSHOT)).expect("create");
        let mut writer = SnapshotWriter::new(file, &meta).expect("header");
        writer.record(b"k", &encode_record(&record(1, 1, 1, "v"))).expect("record");
        writer.finish().expect("finish");
        (dir, db, snapshots)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restart_finishes_an_install_interrupted_after_its_commit_point() {
        let (_dir, db, snapshots) = store_with_snapshot(5, 10);
        StateMachine::new(db.clone(), snapshots).await.expect("open");
        let reader = KvReader::new(db);
        assert_eq!(reader.last_applied().await.expect("read"), Some(log_id(10)));
        assert_eq!(reader.get("k".into()).await.expect("read").map(|r| r.value), Some(b"v".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_build_never_replaces_a_newer_installed_snapshot() {
        let (_dir, db, snapshots) = store_with_snapshot(5, 50);
        let sm = StateMachine::new(db.clone(), snapshots.clone()).await.expect("open");
        // The store is at 50 now; pretend it had only applied 20 when the build began.
        db.put_cf(cf(&db, CF_SM).expect("cf"), codec::LAST_APPLIED, encode(&Some(log_id(20))).expect("enc"))
            .expect("put");
        let (meta, _) = build_snapshot_file(&db, &sm.snapshots).expect("build");
        assert_eq!(meta.last_log_id, Some(log_id(50)), "the newer snapshot stays current");
        let leftovers: Vec<_> = std::fs::read_dir(&snapshots).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "the stale build was discarded");
    }

    /// A snapshot at `index` holding `k = v`, as a peer would send it, cut to its first `len` bytes.
    async fn received_snapshot(index: u64, len: Option<usize>) -> (SnapshotMeta, tokio::fs::File) {
        let meta =
            SnapshotMeta { last_log_id: Some(log_id(index)), last_membership: StoredMembership::default() };
        let mut writer = SnapshotWriter::new(Vec::new(), &meta).expect("header");
        writer.record(b"k", &encode_record(&record(1, 1, 1, "v"))).expect("record");
        let mut bytes = writer.finish().expect("finish");
        bytes.truncate(len.unwrap_or(bytes.len()));
        let mut file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut file, &bytes).expect("write");
        (meta, tokio::fs::File::from_std(file))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_received_snapshot_is_read_through_before_raft_may_install_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = SnapshotInbox { dir: dir.path().to_path_buf() };

        let (meta, whole) = received_snapshot(10, None).await;
        let checked = inbox.check(whole, &meta).await.expect("a whole snapshot passes");
        let mut checked = checked.into_std().await;
        let (read, _) = SnapshotReader::open(BufReader::new(&mut checked)).expect("rewound to its start");
        assert_eq!(read.last_log_id, meta.last_log_id);

        // Cut inside its last record: the header is fine, only reading it through shows the loss.
        let (meta, truncated) = received_snapshot(10, Some(40)).await;
        let refused = inbox.check(truncated, &meta).await.expect_err("a truncated snapshot is refused");
        assert!(refused.to_string().contains("truncated"), "{refused}");

        let (_, other) = received_snapshot(10, None).await;
        let sent_as = SnapshotMeta { last_log_id: Some(log_id(11)), ..meta };
        assert!(inbox.check(other, &sent_as).await.is_err(), "a file describing another snapshot is refused");
    }

    fn put(value: &str, precondition: Option<Precondition>) -> Command {
        Command::Put { key: "k".into(), value: value.as_bytes().to_vec(), precondition }
    }

    fn record(create: u64, modified: u64, version: u64, value: &str) -> KeyRecord {
        KeyRecord {
            create_revision: create,
            mod_revision: modified,
            version,
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_first_put_creates_the_key_at_its_revision() {
        let (result, change) = apply_command(put("v", None), 7, None);
        assert!(result.succeeded);
        assert_eq!(result.prev, None);
        assert_eq!(change, Some(Some(record(7, 7, 1, "v"))));
    }

    #[test]
    fn a_later_put_keeps_the_create_revision_and_bumps_the_version() {
        let current = record(7, 7, 1, "v");
        let (result, change) = apply_command(put("w", None), 9, Some(&current));
        assert_eq!(result.prev, Some(current));
        assert_eq!(change, Some(Some(record(7, 9, 2, "w"))));
    }

    #[test]
    fn compare_and_swap_writes_only_when_the_mod_revision_matches() {
        let current = record(3, 5, 2, "v");
        let (ok, change) = apply_command(put("w", Some(Precondition::ModRevision(5))), 8, Some(&current));
        assert!(ok.succeeded);
        assert!(change.is_some());
        let (stale, change) = apply_command(put("w", Some(Precondition::ModRevision(4))), 8, Some(&current));
        assert!(!stale.succeeded);
        assert_eq!(stale.prev, Some(current));
        assert_eq!(change, None);
    }

    #[test]
    fn must_not_exist_fails_on_an_existing_key_and_succeeds_on_a_missing_one() {
        let current = record(3, 5, 2, "v");
        let (exists, change) = apply_command(put("w", Some(Precondition::Absent)), 8, Some(&current));
        assert!(!exists.succeeded);
        assert_eq!(change, None);
        let (absent, change) = apply_command(put("w", Some(Precondition::Absent)), 8, None);
        assert!(absent.succeeded);
        assert_eq!(change, Some(Some(record(8, 8, 1, "w"))));
    }

    #[test]
    fn deleting_a_missing_key_changes_nothing() {
        let (result, change) =
            apply_command(Command::Delete { key: "k".into(), precondition: None }, 4, None);
        assert!(result.succeeded);
        assert_eq!(result.prev, None);
        assert_eq!(change, None);
    }

    #[test]
    fn a_conditional_delete_removes_only_the_expected_revision() {
        let current = record(3, 5, 2, "v");
        let delete =
            |rev| Command::Delete { key: "k".into(), precondition: Some(Precondition::ModRevision(rev)) };
        assert_eq!(apply_command(delete(4), 9, Some(&current)).1, None);
        assert_eq!(apply_command(delete(5), 9, Some(&current)).1, Some(None));
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(command) }
    }

    #[test]
    fn a_batch_applies_its_writes_in_order_at_the_entry_revision_and_answers_each() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let put_to = |key: &str, value: &str, precondition| Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            precondition,
        };
        let batch = Command::Batch(vec![
            put_to("a", "1", None),
            put_to("b", "2", Some(Precondition::Absent)),
            put_to("c", "3", Some(Precondition::ModRevision(99))),
        ]);
        let answers =
            apply_entries(&db, vec![entry(4, put_to("b", "0", None)), entry(5, batch)]).expect("apply");
        assert_eq!(answers.len(), 2, "one answer per entry");
        let results: Vec<(u64, bool)> = answers[1].0.iter().map(|r| (r.revision, r.succeeded)).collect();
        assert_eq!(results, [(5, true), (5, false), (5, false)], "each write answered, in order");
        let kv = cf(&db, CF_KV).expect("cf");
        let stored =
            |key: &str| db.get_cf(kv, key).expect("read").map(|b| decode_record(&b).expect("record"));
        assert_eq!(stored("a"), Some(record(5, 5, 1, "1")));
        assert_eq!(stored("b"), Some(record(4, 4, 1, "0")), "its compare failed: unchanged");
        assert_eq!(stored("c"), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_only_on_disk_is_read_from_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let db = super::super::open_db(&path).expect("open");
            let kv = cf(&db, CF_KV).expect("cf");
            db.put_cf(kv, "k", encode_record(&record(1, 1, 1, "v"))).expect("put");
            db.flush_cf(kv).expect("flush to a table file");
        }
        // Reopened, nothing is in memory: the in-memory attempt is incomplete and must fall back.
        let reader = KvReader::new(Arc::new(super::super::open_db(&path).expect("reopen")));
        assert_eq!(reader.get("k".into()).await.expect("read").map(|r| r.value), Some(b"v".to_vec()));
        assert_eq!(reader.get("absent".into()).await.expect("read"), None);
    }
}
