//! The key-value state machine, implementing openraft's [`RaftStateMachine`].
//!
//! The state machine is persistent: `apply` writes the keys, their history, the store's
//! revision, `last_applied` and the membership in one atomic `WriteBatch`, so a restart
//! resumes from where it was instead of replaying the whole log. It is the only code that
//! changes the key-value data. Each change writes the key's new state (`kv`), the key as of
//! that revision (`history`: its record, or an empty tombstone for a deletion) and the change
//! itself (`changes`, by revision: what a watch replays). Snapshots are checkpoints of the
//! store ([`super::checkpoint`]), taken in time that does not grow with the store; installing
//! one received from the leader replaces the key-value data and the metadata in one
//! `WriteBatch`, then checkpoints the result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use tokio::sync::watch;

use super::apply::Applier;
use super::auth::{self, AuthCell};
use super::checkpoint::{Checkpoint, Checkpoints};
use super::codec::{self, decode, encode};
use super::identity::{self, ClusterId};
use super::restore::{self, RestoreError, Restored};
use super::snapshot::{read_received, Snapshot, SnapshotData, SnapshotHeader, SnapshotInbox};
use super::{cf, run_blocking, run_write, Family, KvReader, StoreError, CF_AUTH, CF_SM};
use crate::auth::AuthState;
use crate::engine::{self, Write, WriteError};
use crate::metrics;
use crate::types::{
    Applied, Command, Entry, LogId, Member, NodeId, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<DB>,
    checkpoints: Checkpoints,
    inbox: SnapshotInbox,
    /// Announces each revision the store reaches, to the watches waiting for changes.
    applied: Arc<watch::Sender<u64>>,
    /// Set by the first entry or by a snapshot; read by every response.
    cluster_id: ClusterId,
    /// Set by auth entries and snapshots; every request is checked against it.
    auth: AuthCell,
}

impl StateMachine {
    /// The state machine of `db`, announcing what it applies through `reader`.
    pub(crate) async fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        reader: &KvReader,
    ) -> Result<Self, StoreError> {
        let store = db.clone();
        let dir = snapshot_dir.clone();
        let checkpoints = run_blocking(move || Checkpoints::open(&store, dir)).await?;
        Ok(Self {
            db,
            checkpoints,
            inbox: SnapshotInbox { dir: snapshot_dir },
            applied: reader.announcer(),
            cluster_id: reader.cluster_id_cell(),
            auth: reader.auth().clone(),
        })
    }

    /// Tells the watches the store is at `revision` now, if that is news.
    fn announce(&self, revision: u64) {
        self.applied.send_if_modified(|announced| {
            let news = *announced != revision;
            *announced = revision;
            news
        });
    }
}

/// openraft's storage traits speak `io::Error`; it adds what was being done itself.
fn io_err(e: StoreError) -> std::io::Error {
    std::io::Error::other(e)
}

pub(crate) fn read_sm_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    opts: &ReadOptions,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match db.get_pinned_cf_opt(cf(db, CF_SM)?, key, opts)? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// About how many bytes applying `entry` writes; an entry whose transactions read ranges of
/// keys counts as large whatever its size, so that it applies on a blocking thread.
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(Command::Writes(writes)) if writes.iter().any(Write::scans) => {
            super::INLINE_WRITE_BYTES
        }
        EntryPayload::Normal(command) => command.size(),
        _ => 0,
    }
}

/// The store's revision as `opts` sees it; [`codec::EMPTY_STORE_REVISION`] before the first
/// write.
pub(crate) fn read_revision(db: &DB, opts: &ReadOptions) -> Result<u64, StoreError> {
    Ok(read_number(db, opts, codec::REVISION, "revision")?.unwrap_or(codec::EMPTY_STORE_REVISION))
}

/// The compaction revision as `opts` sees it: history below it is gone; 0 before any.
pub(crate) fn read_compacted(db: &DB, opts: &ReadOptions) -> Result<u64, StoreError> {
    Ok(read_number(db, opts, codec::COMPACTED, "compaction revision")?.unwrap_or(0))
}

fn read_number(db: &DB, opts: &ReadOptions, key: &[u8], what: &str) -> Result<Option<u64>, StoreError> {
    db.get_pinned_cf_opt(cf(db, CF_SM)?, key, opts)?.map(|bytes| codec::decode_u64(&bytes, what)).transpose()
}

/// What applying a chunk of entries did: each entry's answer, the store's revision afterwards,
/// and the auth state if an entry changed it.
pub(super) struct AppliedChunk {
    pub(super) answers: Vec<Applied>,
    pub(super) revision: u64,
    pub(super) auth: Option<AuthState>,
}

/// Applies `entries` in one write, checking writes made for callers against `auth` (as the
/// chunk's own auth entries leave it).
pub(super) fn apply_entries(
    db: &DB,
    entries: Vec<Entry>,
    auth: &AuthState,
) -> Result<AppliedChunk, StoreError> {
    let mut keys = Applier::new(db)?;
    let applied_revision = read_revision(db, &ReadOptions::default())?;
    let mut revision = applied_revision;
    // Read only for an entry that compacts: every write's apply would pay for it otherwise.
    let mut compacted: Option<u64> = None;
    let mut results = Vec::with_capacity(entries.len());
    let mut last_applied = None;
    let mut membership = None;
    let mut cluster_id = None;
    let mut changed_auth: Option<AuthState> = None;
    for entry in entries {
        last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => results.push(Applied::default()),
            EntryPayload::Membership(m) => {
                // The first entry names the cluster: every member applies the same one.
                if entry.log_id.index == 0 && identity::read(db)?.is_none() {
                    cluster_id = Some(identity::of_first_entry(&entry.log_id, &m)?);
                }
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                results.push(Applied::default());
            }
            EntryPayload::Normal(Command::Writes(writes)) => {
                let mut answers = Vec::with_capacity(writes.len());
                for write in writes {
                    let answer = match changed_auth.as_ref().unwrap_or(auth).admit(write, &mut keys)? {
                        Ok(write) => write.apply(&mut keys, revision)?,
                        Err(denied) => Err(WriteError::Denied(denied)),
                    };
                    if let Ok(result) = &answer {
                        revision = result.revision;
                    }
                    answers.push(answer);
                }
                results.push(Applied::Writes(answers));
            }
            EntryPayload::Normal(Command::Compact { revision: requested }) => {
                let current = match compacted {
                    Some(c) => c,
                    None => read_compacted(db, &ReadOptions::default())?,
                };
                let outcome = engine::compaction(requested, revision, current);
                compacted = Some(outcome.as_ref().map_or(current, |to| *to));
                results.push(Applied::Compaction(outcome));
            }
            EntryPayload::Normal(Command::Auth { caller, change }) => {
                // On a copy: a refused change leaves nothing of itself behind.
                let mut next = changed_auth.clone().unwrap_or_else(|| auth.clone());
                let outcome = next.check_admin(caller.as_ref()).and_then(|()| next.apply(change));
                let revision = next.revision;
                if outcome.is_ok() {
                    changed_auth = Some(next);
                }
                results.push(Applied::Auth(outcome.map(|()| revision)));
            }
            // Only a member of metaStore 0.1 writes these; applying one is impossible, and
            // skipping it would leave this member unlike the others.
            EntryPayload::Normal(_) => {
                return Err(StoreError::Corrupt(format!(
                    "log entry {} is in metaStore 0.1's format, which this version cannot apply",
                    entry.log_id
                )))
            }
        }
    }
    let mut batch = keys.into_batch();
    let sm = cf(db, CF_SM)?;
    if revision != applied_revision {
        batch.put_cf(sm, codec::REVISION, codec::encode_u64(revision));
    }
    if let Some(compacted) = compacted {
        batch.put_cf(sm, codec::COMPACTED, codec::encode_u64(compacted));
    }
    if let Some(last_applied) = last_applied {
        batch.put_cf(sm, codec::LAST_APPLIED, encode(&Some(last_applied))?);
    }
    if let Some(membership) = membership {
        batch.put_cf(sm, codec::LAST_MEMBERSHIP, encode(&membership)?);
    }
    if let Some(id) = cluster_id {
        batch.put_cf(sm, codec::CLUSTER_ID, codec::encode_u64(id));
    }
    if let Some(state) = &changed_auth {
        batch.put_cf(cf(db, CF_AUTH)?, auth::STATE, auth::encode_state(state)?);
    }
    // Not synced: every applied entry is committed, so on disk on a majority (not necessarily
    // here yet: openraft 0.10 may apply before this member's own fsync ends), and RocksDB's
    // single write-ahead log keeps this write ordered after the entries' own log writes. A crash
    // loses at most a suffix of both, which openraft replays from the log or the leader.
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    db.write_opt(batch, &opts)?;
    Ok(AppliedChunk { answers: results, revision, auth: changed_auth })
}

/// Replaces the whole state machine with a snapshot's, atomically and synced (see
/// [`snapshot_batch`]). A record that fails leaves the store as it was.
fn load_snapshot(
    db: &DB,
    fill: impl FnOnce(
        &mut dyn FnMut(Family, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<SnapshotHeader, StoreError>,
) -> Result<(), StoreError> {
    super::write_synced(db, snapshot_batch(db, fill)?)
}

/// The write that makes the state machine a snapshot's: `fill` adds its records to the batch
/// that also clears the key-value data and sets the metadata from the header it returns.
pub(super) fn snapshot_batch(
    db: &DB,
    fill: impl FnOnce(
        &mut dyn FnMut(Family, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<SnapshotHeader, StoreError>,
) -> Result<WriteBatch, StoreError> {
    let mut handles = Vec::with_capacity(Family::ALL.len());
    for family in Family::ALL {
        handles.push((family, cf(db, family.name())?));
    }
    let mut batch = WriteBatch::default();
    for (_, handle) in &handles {
        // Keys are any bytes, so no fixed bound covers them all: clear up to just past the last.
        if let Some(item) = db.iterator_cf(handle, IteratorMode::End).next() {
            let (last, _) = item?;
            let mut end = last.into_vec();
            end.push(0);
            batch.delete_range_cf(*handle, &b""[..], &end);
        }
    }
    let header = fill(&mut |family, key, record| {
        let (_, handle) = handles.iter().find(|(f, _)| *f == family).ok_or_else(|| {
            StoreError::Corrupt(format!("a snapshot record of family {family:?}, which this store lacks"))
        })?;
        batch.put_cf(*handle, key, record);
        Ok(())
    })?;
    let sm = cf(db, CF_SM)?;
    batch.put_cf(sm, codec::LAST_APPLIED, encode(&header.meta.last_log_id)?);
    batch.put_cf(sm, codec::LAST_MEMBERSHIP, encode(&header.meta.last_membership)?);
    // A checkpoint an older build took of a never-written store says 0; the sender reads that
    // store as at EMPTY_STORE_REVISION now, and so must the receiver.
    let revision = header.revision.max(codec::EMPTY_STORE_REVISION);
    batch.put_cf(sm, codec::REVISION, codec::encode_u64(revision));
    batch.put_cf(sm, codec::COMPACTED, codec::encode_u64(header.compacted));
    match header.cluster_id {
        Some(id) => batch.put_cf(sm, codec::CLUSTER_ID, codec::encode_u64(id)),
        // A snapshot of a cluster made before ids: its members have none either.
        None => batch.delete_cf(sm, codec::CLUSTER_ID),
    }
    Ok(batch)
}

/// Makes the state machine the snapshot's, then checkpoints it: from here `get_current_snapshot`
/// answers it (openraft's contract), and a restart finds the log covered. Blocking.
fn install(
    db: &DB,
    checkpoints: &Checkpoints,
    meta: &SnapshotMeta,
    data: Installing,
) -> Result<(), StoreError> {
    match data {
        Installing::Received(mut file) => {
            load_snapshot(db, |put| read_received(&mut file, meta, |f, k, r| put(f, k, r)))?;
        }
        Installing::Checkpoint(checkpoint) => {
            let applied: Option<LogId> =
                read_sm_meta(db, &ReadOptions::default(), codec::LAST_APPLIED)?.flatten();
            if checkpoint.meta().last_log_id <= applied {
                // Already reflected (openraft restoring at start a snapshot of this very store).
                return Ok(());
            }
            load_snapshot(db, |put| {
                checkpoint.for_each_record(|f, k, r| put(f, k, r))?;
                Ok(checkpoint.header().clone())
            })?;
        }
    }
    checkpoints.take(db)?;
    Ok(())
}

/// A snapshot's data on its way into the store, on a blocking thread.
enum Installing {
    Received(std::fs::File),
    Checkpoint(Arc<Checkpoint>),
}

/// Entries applied in one RocksDB write, at most: bounds the memory a long catch-up takes.
const APPLY_CHUNK: usize = 1024;

impl StateMachine {
    /// Where snapshots received from the leader are gathered before they are installed.
    pub fn inbox(&self) -> SnapshotInbox {
        self.inbox.clone()
    }

    /// Writes a snapshot of this (stopped) member's store to `out` as a sealed file, atomically:
    /// what `--restore-from` takes. Its revision and size.
    pub async fn export(&self, out: PathBuf) -> Result<(u64, u64), StoreError> {
        let db = self.db.clone();
        let checkpoints = self.checkpoints.clone();
        run_blocking(move || {
            let checkpoint = checkpoints.take(&db)?;
            let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let file = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
            let sealed =
                checkpoint.write_to(metastore_client::seal::Sealing::new(std::io::BufWriter::new(file)))?;
            let written = sealed.finish().map_err(|e| StoreError::io(&out, e))?;
            let file = written.into_inner().map_err(|e| StoreError::io(&out, e.into_error()))?;
            file.as_file().sync_all().map_err(|e| StoreError::io(&out, e))?;
            let bytes = file.as_file().metadata().map_err(|e| StoreError::io(&out, e))?.len();
            file.persist(&out).map_err(|e| StoreError::io(&out, e.error))?;
            Ok((checkpoint.header().revision, bytes))
        })
        .await
    }

    /// Seeds this member's store, which must hold no raft state, from the sealed snapshot file
    /// at `path`, with `members` as the new cluster's membership ([`restore::restore`]).
    pub async fn restore(
        &self,
        path: PathBuf,
        own: NodeId,
        members: BTreeMap<NodeId, Member>,
    ) -> Result<Restored, RestoreError> {
        let db = self.db.clone();
        let checkpoints = self.checkpoints.clone();
        let cluster_id = self.cluster_id.clone();
        let auth = self.auth.clone();
        let restored = run_blocking(move || {
            let restored = restore::restore(&db, &checkpoints, &path, own, &members);
            cluster_id.refresh(&db)?;
            auth.refresh(&db)?;
            Ok(restored)
        })
        .await??;
        self.announce(restored.revision);
        Ok(restored)
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
        let bytes = chunk.iter().map(entry_size).fold(0, usize::saturating_add);
        let first = chunk.first().is_some_and(|entry| entry.log_id.index == 0);
        let auth = self.auth.get();
        let applied = run_write(bytes, move || apply_entries(&db, chunk, &auth)).await?;
        metrics::storage().observe_apply(started.elapsed(), count);
        if first {
            self.cluster_id.refresh(&self.db)?;
        }
        if let Some(state) = applied.auth {
            self.auth.set(state);
        }
        self.announce(applied.revision);
        for (responder, result) in responders.into_iter().zip(applied.answers) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            let applied = read_sm_meta::<Option<LogId>>(&db, &ReadOptions::default(), codec::LAST_APPLIED)?;
            let membership = read_sm_meta(&db, &ReadOptions::default(), codec::LAST_MEMBERSHIP)?;
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
        SnapshotBuilder { db: self.db.clone(), checkpoints: self.checkpoints.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let data = match snapshot {
            SnapshotData::Received(file) => Installing::Received(file.into_std().await),
            SnapshotData::Checkpoint(checkpoint) => Installing::Checkpoint(checkpoint),
        };
        let db = self.db.clone();
        let checkpoints = self.checkpoints.clone();
        let expected = meta.clone();
        let cluster_id = self.cluster_id.clone();
        let auth = self.auth.clone();
        let revision = run_blocking(move || {
            install(&db, &checkpoints, &expected, data)?;
            cluster_id.refresh(&db)?;
            auth.refresh(&db)?;
            read_revision(&db, &ReadOptions::default())
        })
        .await
        .map_err(io_err)?;
        self.announce(revision);
        tracing::info!(last_log_id = ?meta.last_log_id, revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        Ok(self.checkpoints.current().map(|checkpoint| Snapshot {
            meta: checkpoint.meta().clone(),
            snapshot: SnapshotData::Checkpoint(checkpoint),
        }))
    }
}

/// Takes snapshots on openraft's request: checkpoints of the store.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    checkpoints: Checkpoints,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let db = self.db.clone();
        let checkpoints = self.checkpoints.clone();
        let checkpoint = run_blocking(move || checkpoints.take(&db)).await.map_err(io_err)?;
        tracing::info!(last_log_id = ?checkpoint.meta().last_log_id, revision = checkpoint.header().revision, "took snapshot");
        Ok(Snapshot { meta: checkpoint.meta().clone(), snapshot: SnapshotData::Checkpoint(checkpoint) })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::{KeyRecord, Precondition, Write};
    use crate::storage::codec::{decode_record, encode_record};
    use crate::storage::snapshot::SnapshotWriter;
    use crate::storage::RevisionError;
    use crate::storage::{CF_CHANGES, CF_HISTORY, CF_KV};

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
    }

    pub(crate) fn open_test_db(dir: &std::path::Path) -> DB {
        super::super::open_db(&dir.join("db")).expect("open")
    }

    /// What applying `entries` in one write answers.
    pub(crate) fn answers_of(db: &DB, entries: Vec<Entry>) -> Result<Vec<Applied>, StoreError> {
        let auth = auth::read(db)?;
        apply_entries(db, entries, &auth).map(|applied| applied.answers)
    }

    /// Applies `writes` as one entry, the next after those applied so far.
    pub(crate) fn apply_writes(db: &DB, writes: Vec<Write>) -> Vec<Applied> {
        let applied: Option<LogId> =
            read_sm_meta(db, &ReadOptions::default(), codec::LAST_APPLIED).expect("read").flatten();
        let index = applied.map_or(1, |id| id.index + 1);
        answers_of(db, vec![entry(index, writes)]).expect("apply")
    }

    /// The answers of an entry of writes, every one of which applied.
    pub(crate) fn written(applied: &Applied) -> Vec<&crate::engine::WriteResult> {
        match applied {
            Applied::Writes(answers) => answers.iter().map(|a| a.as_ref().expect("applied")).collect(),
            other => panic!("not writes: {other:?}"),
        }
    }

    fn entry(index: u64, writes: Vec<Write>) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(Command::Writes(writes)) }
    }

    fn put(key: &[u8], value: &str, precondition: Option<Precondition>) -> Write {
        Write::Put { key: key.to_vec(), value: value.as_bytes().to_vec(), precondition }
    }

    fn stored(db: &DB, key: &[u8]) -> Option<KeyRecord> {
        db.get_cf(cf(db, CF_KV).expect("cf"), key).expect("read").map(|b| decode_record(&b).expect("record"))
    }

    fn revision(db: &DB) -> u64 {
        read_revision(db, &ReadOptions::default()).expect("revision")
    }

    fn delete(key: &[u8]) -> Write {
        Write::Delete { key: key.to_vec(), precondition: None }
    }

    /// Applies, one entry each to a store at revision 1 (an empty one's): a=1 (rev 2), b=1 (3),
    /// a=2 (4), delete a (5), a=3 (6), and "\0" and "\0\0" (7, 8), keys whose escaped history
    /// must not mix with others.
    fn store_with_history(dir: &std::path::Path) -> Arc<DB> {
        let db = Arc::new(super::super::open_db(&dir.join("db")).expect("open"));
        let writes = [
            put(b"a", "1", None),
            put(b"b", "1", None),
            put(b"a", "2", None),
            delete(b"a"),
            put(b"a", "3", None),
            put(b"\0", "z", None),
            put(b"\0\0", "zz", None),
        ];
        for (i, write) in writes.into_iter().enumerate() {
            answers_of(&db, vec![entry(i as u64 + 1, vec![write])]).expect("apply");
        }
        db
    }

    fn value(read: &crate::storage::KeyRead) -> Option<String> {
        read.record.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_read_at_a_past_revision_is_as_it_was_then() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reader = crate::storage::KvReader::new(store_with_history(dir.path()));
        let a_at = |rev| {
            let reader = reader.clone();
            async move { reader.get(b"a".to_vec(), Some(rev)).await.expect("read") }
        };
        assert_eq!(a_at(1).await.record, None, "the empty store, before any write");
        assert_eq!(value(&a_at(2).await).as_deref(), Some("1"));
        assert_eq!(value(&a_at(3).await).as_deref(), Some("1"), "b's write left a as it was");
        let second = a_at(4).await;
        assert_eq!(value(&second).as_deref(), Some("2"));
        let record = second.record.expect("a at 4");
        assert_eq!((record.create_revision, record.mod_revision, record.version), (2, 4, 2));
        assert_eq!(a_at(5).await.record, None, "deleted at 5");
        let recreated = a_at(6).await.record.expect("a at 6");
        assert_eq!((recreated.create_revision, recreated.version), (6, 1), "a new life after the delete");
        assert_eq!(a_at(5).await.revision, 8, "the answer names the store's revision");
        let before = reader.get(b"b".to_vec(), Some(2)).await.expect("read");
        assert_eq!(before.record, None, "b did not exist yet");
        let nul = reader.get(b"\0".to_vec(), Some(7)).await.expect("read");
        assert_eq!(value(&nul).as_deref(), Some("z"));
        assert_eq!(reader.get(b"\0\0".to_vec(), Some(7)).await.expect("read").record, None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_range_at_a_past_revision_lists_the_keys_as_they_were_then() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reader = crate::storage::KvReader::new(store_with_history(dir.path()));
        let listed = |at: u64, limit: usize| {
            let reader = reader.clone();
            async move {
                let page = reader.range(Vec::new(), None, limit, usize::MAX, Some(at)).await.expect("range");
                let keys: Vec<(Vec<u8>, String)> = page
                    .entries
                    .into_iter()
                    .map(|(k, r)| (k, String::from_utf8_lossy(&r.value).into_owned()))
                    .collect();
                (keys, page.next_key)
            }
        };
        let owned = |pairs: &[(&[u8], &str)]| -> Vec<(Vec<u8>, String)> {
            pairs.iter().map(|(k, v)| (k.to_vec(), v.to_string())).collect()
        };
        assert_eq!(listed(2, 10).await, (owned(&[(b"a", "1")]), None));
        assert_eq!(listed(4, 10).await, (owned(&[(b"a", "2"), (b"b", "1")]), None));
        assert_eq!(listed(5, 10).await, (owned(&[(b"b", "1")]), None), "a was deleted");
        assert_eq!(listed(7, 10).await, (owned(&[(b"\0", "z"), (b"a", "3"), (b"b", "1")]), None));
        assert_eq!(listed(7, 2).await, (owned(&[(b"\0", "z"), (b"a", "3")]), Some(b"b".to_vec())));
        let from_a = reader.range(b"a".to_vec(), Some(b"b".to_vec()), 10, usize::MAX, Some(4)).await;
        let from_a: Vec<Vec<u8>> = from_a.expect("range").entries.into_iter().map(|(k, _)| k).collect();
        assert_eq!(from_a, [b"a".to_vec()], "[a, b) holds only a");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_revision_beyond_the_store_or_below_its_compaction_is_refused_naming_both() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_with_history(dir.path());
        let reader = crate::storage::KvReader::new(db.clone());
        let future = reader.get(b"a".to_vec(), Some(9)).await.expect_err("future");
        assert!(matches!(future, StoreError::Revision(RevisionError::Future { requested: 9, current: 8 })));
        assert!(future.to_string().contains('9') && future.to_string().contains('8'), "{future}");
        db.put_cf(cf(&db, CF_SM).expect("cf"), codec::COMPACTED, codec::encode_u64(4)).expect("put");
        let compacted = reader.range(Vec::new(), None, 10, usize::MAX, Some(3)).await.expect_err("gone");
        let expected = RevisionError::Compacted { requested: 3, compacted: 4 };
        assert!(matches!(compacted, StoreError::Revision(ref e) if *e == expected), "{compacted}");
        assert!(reader.get(b"a".to_vec(), Some(4)).await.is_ok(), "the compaction revision itself is kept");
    }

    #[test]
    fn a_transaction_sees_the_stored_keys_and_the_changes_of_its_own_apply_batch() {
        use crate::engine::{Op, OpResponse, Txn};
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let stored_first = vec![put(b"k/a", "1", None), put(b"k/b", "1", None), put(b"k/c", "1", None)];
        answers_of(&db, vec![entry(1, stored_first)]).expect("apply");
        let txn = Txn {
            compares: vec![],
            success: vec![
                Op::DeleteRange { key: b"k/c".to_vec(), range_end: b"k/d".to_vec(), prev_kv: false },
                Op::Put { key: b"k/d".to_vec(), value: b"4".to_vec(), lease: 0, prev_kv: false },
                Op::Range {
                    key: b"k/".to_vec(),
                    range_end: b"k0".to_vec(),
                    limit: 0,
                    keys_only: true,
                    count_only: false,
                },
            ],
            failure: vec![],
        };
        // One apply batch: a delete in an earlier entry, then the transaction.
        let answers = answers_of(&db, vec![entry(2, vec![delete(b"k/a")]), entry(3, vec![Write::Txn(txn)])])
            .expect("apply");
        let txn_answers = written(&answers[1]);
        let OpResponse::Range { kvs, count, .. } = &txn_answers[0].responses[2] else {
            panic!("{txn_answers:?}")
        };
        let keys: Vec<&[u8]> = kvs.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            [&b"k/b"[..], b"k/d"],
            "k/a deleted by the entry before, k/c by the txn, k/d put by it"
        );
        assert_eq!(*count, 2);
        assert_eq!(txn_answers[0].revision, 6, "the transaction's two changes share revision 6");
        assert_eq!(stored(&db, b"k/d").map(|r| r.mod_revision), Some(6));
        let changes: Vec<((u64, u32), Vec<u8>)> = db
            .iterator_cf(cf(&db, CF_CHANGES).expect("cf"), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.expect("change");
                (codec::decode_change_key(&k).expect("key"), v.into_vec())
            })
            .skip(4)
            .collect();
        assert_eq!(changes, [((6, 0), b"k/c".to_vec()), ((6, 1), b"k/d".to_vec())]);
    }

    #[test]
    fn a_range_written_backwards_is_empty_even_beside_the_batchs_own_changes() {
        use crate::engine::{Op, OpResponse, Txn};
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let backwards = Txn {
            success: vec![
                Op::Put { key: b"m".to_vec(), value: b"1".to_vec(), lease: 0, prev_kv: false },
                Op::DeleteRange { key: b"z".to_vec(), range_end: b"b".to_vec(), prev_kv: true },
            ],
            ..Txn::default()
        };
        let answers = answers_of(&db, vec![entry(1, vec![put(b"a", "1", None), Write::Txn(backwards)])])
            .expect("apply");
        let writes = written(&answers[0]);
        assert_eq!(writes[1].responses[1], OpResponse::DeleteRange { deleted: 0, prev: vec![] });
        assert!(stored(&db, b"a").is_some() && stored(&db, b"m").is_some());
    }

    #[test]
    fn every_change_is_recorded_by_revision() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store_with_history(dir.path());
        let changes: Vec<(u64, Vec<u8>)> = db
            .iterator_cf(cf(&db, CF_CHANGES).expect("cf"), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.expect("change");
                (codec::decode_change_key(&k).expect("key").0, v.into_vec())
            })
            .collect();
        let keys: Vec<&[u8]> = vec![b"a", b"b", b"a", b"a", b"a", b"\0", b"\0\0"];
        let expected: Vec<(u64, Vec<u8>)> =
            keys.into_iter().enumerate().map(|(i, k)| (i as u64 + 2, k.to_vec())).collect();
        assert_eq!(changes, expected);
    }

    #[test]
    fn writes_take_consecutive_revisions_in_entry_order_and_failures_take_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let batch = vec![
            put(b"a", "1", None),
            put(b"b", "2", Some(Precondition::Absent)),
            put(b"c", "3", Some(Precondition::ModRevision(99))),
            put(b"a", "again", None),
            Write::Delete { key: b"missing".to_vec(), precondition: None },
            Write::Delete { key: b"b".to_vec(), precondition: None },
        ];
        let answers =
            answers_of(&db, vec![entry(4, vec![put(b"b", "0", None)]), entry(5, batch)]).expect("apply");
        assert_eq!(answers.len(), 2, "one answer per entry");
        let batch_answers = written(&answers[1]);
        let results: Vec<(u64, bool)> = batch_answers.iter().map(|r| (r.revision, r.succeeded)).collect();
        assert_eq!(
            results,
            [(3, true), (3, false), (3, false), (4, true), (4, true), (5, true)],
            "each write answered in order, at the revision it made or found"
        );
        assert_eq!(stored(&db, b"a"), Some(KeyRecord::at(3, 4, 2, "again")), "one key twice in one entry");
        assert_eq!(stored(&db, b"b"), None);
        assert_eq!(stored(&db, b"c"), None);
        assert_eq!(revision(&db), 5);
        // The next entry carries on from the stored revision.
        let next = answers_of(&db, vec![entry(6, vec![put(b"z", "9", None)])]).expect("apply");
        assert_eq!(written(&next[0])[0].revision, 6);
    }

    fn compact(index: u64, revision: u64) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(Command::Compact { revision }) }
    }

    fn history_of(db: &DB, key: &[u8]) -> Vec<u64> {
        db.prefix_iterator_cf(cf(db, CF_HISTORY).expect("cf"), codec::history_prefix(key))
            .map(|item| item.expect("entry"))
            .take_while(|(k, _)| k.starts_with(&codec::history_prefix(key)))
            .map(|(k, _)| codec::decode_history_key(&k).expect("key").1)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_compaction_refuses_reads_below_it_and_deletes_only_what_no_read_can_reach() {
        let dir = tempfile::tempdir().expect("temp dir");
        // a: 2, 4, deleted at 5, 6; b: 3; "\0": 7; "\0\0": 8.
        let db = store_with_history(dir.path());
        let answers = answers_of(&db, vec![compact(8, 10), compact(9, 5), compact(10, 5)]).expect("apply");
        assert_eq!(
            answers,
            [
                Applied::Compaction(Err(RevisionError::Future { requested: 10, current: 8 })),
                Applied::Compaction(Ok(5)),
                Applied::Compaction(Err(RevisionError::Compacted { requested: 5, compacted: 5 })),
            ]
        );
        let reader = crate::storage::KvReader::new(db.clone());
        assert!(reader.get(b"a".to_vec(), Some(4)).await.is_err(), "below the compaction");
        while super::super::compactor::step(&db).expect("step") > 0 {}
        // a's version at 2 is superseded by 4; 4 stays (the state at 4 is what the deletion at
        // 5 replaced, and a watch from 5 reports it), and so does the deletion (a read at 5
        // sees it, a watch from 5 replays it); b's only version stays.
        assert_eq!(history_of(&db, b"a"), [4, 5, 6]);
        assert_eq!(history_of(&db, b"b"), [3]);
        assert_eq!(reader.get(b"a".to_vec(), Some(5)).await.expect("read").record, None);
        assert_eq!(value(&reader.get(b"b".to_vec(), Some(5)).await.expect("read")).as_deref(), Some("1"));
        let listed = reader.range(Vec::new(), None, 10, usize::MAX, Some(6)).await.expect("range");
        let keys: Vec<Vec<u8>> = listed.entries.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()], "the state at 6 is whole");
        let changes: Vec<u64> = db
            .iterator_cf(cf(&db, CF_CHANGES).expect("cf"), IteratorMode::Start)
            .map(|item| codec::decode_change_key(&item.expect("change").0).expect("key").0)
            .collect();
        assert_eq!(changes, [5, 6, 7, 8], "changes below the compaction are gone, from it on kept");

        // Compacting past the deletion removes it too: nothing older is left for it to hide.
        answers_of(&db, vec![compact(11, 7)]).expect("apply");
        while super::super::compactor::step(&db).expect("step") > 0 {}
        assert_eq!(history_of(&db, b"a"), [6]);
        assert_eq!(value(&reader.get(b"a".to_vec(), Some(7)).await.expect("read")).as_deref(), Some("3"));

        // A version kept by one compaction (b's at 3, the latest then) goes at a later one,
        // once something newer below it supersedes it: nothing is left behind for good.
        answers_of(&db, vec![entry(12, vec![put(b"b", "2", None)]), entry(13, vec![put(b"z", "1", None)])])
            .expect("apply");
        assert_eq!(history_of(&db, b"b"), [3, 9]);
        answers_of(&db, vec![compact(14, 10)]).expect("apply");
        while super::super::compactor::step(&db).expect("step") > 0 {}
        assert_eq!(history_of(&db, b"b"), [9]);
    }

    #[test]
    fn an_entry_of_the_first_format_is_refused_not_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let put = Command::FormatOneDelete { key: b"k".to_vec(), precondition: None };
        let old = Entry { log_id: log_id(3), payload: EntryPayload::Normal(put) };
        assert!(answers_of(&db, vec![old]).is_err());
    }

    /// A snapshot at `index` holding `keys`, as a peer would send it.
    fn received_snapshot(index: u64, keys: &[&[u8]]) -> (SnapshotMeta, tokio::fs::File) {
        received_snapshot_at(index, keys, 77)
    }

    /// A snapshot at `index` holding `keys` at store revision `revision`.
    fn received_snapshot_at(index: u64, keys: &[&[u8]], revision: u64) -> (SnapshotMeta, tokio::fs::File) {
        let meta =
            SnapshotMeta { last_log_id: Some(log_id(index)), last_membership: StoredMembership::default() };
        let header = SnapshotHeader { meta: meta.clone(), revision, compacted: 0, cluster_id: Some(7) };
        let mut writer = SnapshotWriter::new(Vec::new(), &header).expect("header");
        for key in keys {
            writer.record(Family::Kv, key, &encode_record(&KeyRecord::at(1, 1, 1, "v"))).expect("record");
        }
        let bytes = writer.finish().expect("finish");
        let mut file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut file, &bytes).expect("write");
        (meta, tokio::fs::File::from_std(file))
    }

    fn leased_put(key: &[u8], lease: i64) -> Write {
        let put = crate::engine::Op::Put { key: key.to_vec(), value: b"v".to_vec(), lease, prev_kv: false };
        Write::Txn(crate::engine::Txn { success: vec![put], ..Default::default() })
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_at_one_revision_and_a_put_naming_none_fails_whole() {
        use crate::engine::WriteError;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_test_db(dir.path());
        apply_writes(&db, vec![Write::LeaseGrant { id: 7, ttl: 10, grant: 1 }]);
        // Granted, attached and re-attached within one batch: the batch's own state counts.
        apply_writes(
            &db,
            vec![leased_put(b"a", 7), leased_put(b"b", 7), put(b"c", "plain", None), leased_put(b"c", 7)],
        );
        apply_writes(&db, vec![put(b"b", "detached", None)]);
        let answers =
            apply_writes(&db, vec![leased_put(b"d", 8), Write::LeaseGrant { id: 7, ttl: 5, grant: 2 }]);
        let Applied::Writes(refused) = &answers[0] else { panic!("{answers:?}") };
        assert_eq!(refused[0], Err(WriteError::LeaseNotFound(8)));
        assert_eq!(refused[1], Err(WriteError::LeaseExists(7)));
        assert_eq!(stored(&db, b"d"), None, "nothing of a refused write applied");
        let before = revision(&db);

        let stale = apply_writes(&db, vec![Write::LeaseExpire { id: 7, grant: 2 }]);
        assert!(
            matches!(&stale[0], Applied::Writes(w) if w[0] == Err(WriteError::LeaseNotFound(7))),
            "another grant"
        );
        assert_eq!(revision(&db), before, "an expiry of a grant that is not the lease's does nothing");
        let answers =
            apply_writes(&db, vec![Write::LeaseExpire { id: 7, grant: 1 }, Write::LeaseRevoke { id: 7 }]);
        let Applied::Writes(revoked) = &answers[0] else { panic!("{answers:?}") };
        assert_eq!(revoked[0].as_ref().map(|r| r.revision), Ok(before + 1), "a and c go at one revision");
        assert_eq!(revoked[1], Err(WriteError::LeaseNotFound(7)), "revoked once");
        assert_eq!((stored(&db, b"a"), stored(&db, b"c")), (None, None));
        assert_eq!(
            stored(&db, b"b").map(|r| r.value),
            Some(b"detached".to_vec()),
            "a put without the lease took b off it"
        );
    }

    fn membership_entry(index: u64, voters: &[NodeId]) -> Entry {
        let nodes: BTreeMap<NodeId, Member> = voters.iter().map(|id| (*id, Member::default())).collect();
        let membership =
            openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes).expect("valid");
        Entry { log_id: log_id(index), payload: EntryPayload::Membership(membership) }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_first_entry_names_the_cluster_and_a_snapshot_carries_the_name() {
        let (from, to) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let source = Arc::new(open_test_db(from.path()));
        let reader = crate::storage::KvReader::new(source.clone());
        let mut sm =
            StateMachine::new(source.clone(), from.path().join("snapshots"), &reader).await.expect("open");
        assert_eq!(reader.cluster_id(), identity::LEGACY_CLUSTER_ID, "nothing applied: no id of its own");
        let first = membership_entry(0, &[1, 2, 3]);
        let expected = match &first.payload {
            EntryPayload::Membership(m) => identity::of_first_entry(&first.log_id, m).expect("id"),
            _ => unreachable!("a membership entry"),
        };
        let stream = futures::stream::iter(vec![Ok((first, None)), Ok((membership_entry(5, &[1, 2]), None))]);
        sm.apply(stream).await.expect("apply");
        assert_eq!(reader.cluster_id(), expected, "named by the first entry, not changed by later ones");

        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        let target = Arc::new(open_test_db(to.path()));
        let joined = crate::storage::KvReader::new(target.clone());
        let mut installed =
            StateMachine::new(target.clone(), to.path().join("snapshots"), &joined).await.expect("open");
        installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(joined.cluster_id(), expected, "a member that catches up from a snapshot");
        drop(installed);
        let reopened = crate::storage::KvReader::new(target.clone());
        assert_eq!(reopened.cluster_id(), expected, "kept across a restart");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_snapshot_carries_leases_and_the_keys_attached_to_them() {
        let (from, to) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let source = Arc::new(open_test_db(from.path()));
        apply_writes(&source, vec![Write::LeaseGrant { id: 3, ttl: 60, grant: 1 }, leased_put(b"k", 3)]);
        let reader = crate::storage::KvReader::new(source.clone());
        let mut sm =
            StateMachine::new(source.clone(), from.path().join("snapshots"), &reader).await.expect("open");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");

        let target = Arc::new(open_test_db(to.path()));
        let reader = crate::storage::KvReader::new(target.clone());
        let mut installed =
            StateMachine::new(target.clone(), to.path().join("snapshots"), &reader).await.expect("open");
        installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(stored(&target, b"k").map(|r| r.lease), Some(3));
        let answers = apply_writes(&target, vec![Write::LeaseRevoke { id: 3 }]);
        assert!(matches!(&answers[0], Applied::Writes(w) if w[0].is_ok()), "{answers:?}");
        assert_eq!(stored(&target, b"k"), None, "the lease and its key came with the snapshot");
    }

    fn auth_entry(index: u64, change: crate::auth::AuthChange) -> Entry {
        let command = Command::Auth { caller: None, change };
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(command) }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn auth_changes_apply_as_entries_are_stored_and_travel_in_snapshots() {
        use crate::auth::{AuthChange, AuthError, ROOT};
        let (from, to) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let source = Arc::new(open_test_db(from.path()));
        let answers = answers_of(
            &source,
            vec![
                auth_entry(1, AuthChange::Enable { token_key: vec![1] }),
                auth_entry(2, AuthChange::UserAdd { name: ROOT.into(), password: None }),
                auth_entry(3, AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() }),
                auth_entry(4, AuthChange::Enable { token_key: vec![1] }),
                // With auth on, only root may change it; this entry names no caller.
                auth_entry(5, AuthChange::RoleAdd { name: "app".into() }),
            ],
        )
        .expect("applied");
        assert_eq!(answers[0], Applied::Auth(Err(AuthError::RootUserNotExist)));
        assert!(matches!(answers[3], Applied::Auth(Ok(_))), "{answers:?}");
        assert_eq!(answers[4], Applied::Auth(Err(AuthError::UserEmpty)));
        let answers = apply_writes(&source, vec![put(b"k", "v", None)]);
        assert_eq!(answers[0], Applied::Writes(vec![Err(WriteError::Denied(AuthError::UserEmpty))]));

        let reader = crate::storage::KvReader::new(source.clone());
        assert!(reader.auth().get().enabled, "read back from the store");
        let mut sm =
            StateMachine::new(source.clone(), from.path().join("snapshots"), &reader).await.expect("open");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        let target = Arc::new(open_test_db(to.path()));
        let reader = crate::storage::KvReader::new(target.clone());
        assert!(!reader.auth().get().enabled);
        let mut installed =
            StateMachine::new(target.clone(), to.path().join("snapshots"), &reader).await.expect("open");
        installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        let state = reader.auth().get();
        assert!(state.enabled && state.users.contains_key(ROOT), "came with the snapshot: {state:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn installing_a_snapshot_replaces_every_key_and_becomes_the_current_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(super::super::open_db(&dir.path().join("db")).expect("open"));
        answers_of(&db, vec![entry(1, vec![put(b"old", "x", None), put(b"\xff\xffold", "y", None)])])
            .expect("apply");
        let reader = crate::storage::KvReader::new(db.clone());
        let mut sm =
            StateMachine::new(db.clone(), dir.path().join("snapshots"), &reader).await.expect("open");

        let (meta, file) = received_snapshot(10, &[b"k", b"\xfe"]);
        sm.install_snapshot(&meta, SnapshotData::Received(file)).await.expect("install");

        assert_eq!(stored(&db, b"old"), None);
        assert_eq!(stored(&db, b"\xff\xffold"), None, "keys of any bytes are cleared");
        assert!(stored(&db, b"k").is_some() && stored(&db, b"\xfe").is_some());
        assert_eq!(revision(&db), 77);
        let (applied, _) = sm.applied_state().await.expect("state");
        assert_eq!(applied, Some(log_id(10)));
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta, meta);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_snapshot_of_a_never_written_store_installs_at_an_empty_stores_revision() {
        // A checkpoint taken by an older build of a store never written to says revision 0; the
        // member that sends it reads that store as at revision 1 now, and so must the receiver.
        for sent in [0, codec::EMPTY_STORE_REVISION] {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = Arc::new(super::super::open_db(&dir.path().join("db")).expect("open"));
            let reader = crate::storage::KvReader::new(db.clone());
            let mut sm =
                StateMachine::new(db.clone(), dir.path().join("snapshots"), &reader).await.expect("open");
            let (meta, file) = received_snapshot_at(10, &[], sent);
            sm.install_snapshot(&meta, SnapshotData::Received(file)).await.expect("install");
            assert_eq!(revision(&db), codec::EMPTY_STORE_REVISION, "a snapshot saying {sent}");
            let next = answers_of(&db, vec![entry(11, vec![put(b"a", "1", None)])]).expect("apply");
            assert_eq!(written(&next[0])[0].revision, 2, "the first write is 2, as on the sender");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_received_snapshot_is_read_through_before_raft_may_install_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = SnapshotInbox { dir: dir.path().to_path_buf() };

        let (meta, whole) = received_snapshot(10, &[b"k"]);
        let checked = inbox.check(whole, &meta).await.expect("a whole snapshot passes");
        let mut checked = checked.into_std().await;
        let header = read_received(&mut checked, &meta, |_, _, _| Ok(())).expect("rewound to its start");
        assert_eq!(header.meta.last_log_id, meta.last_log_id);

        // Cut inside its last record: the header is fine, only reading it through shows the loss.
        let (meta, truncated) = received_snapshot(10, &[b"k"]);
        let cut = truncated.into_std().await;
        let len = cut.metadata().expect("len").len();
        cut.set_len(len - 14).expect("truncate");
        let refused = inbox
            .check(tokio::fs::File::from_std(cut), &meta)
            .await
            .expect_err("a truncated snapshot is refused");
        assert!(refused.to_string().contains("truncated"), "{refused}");

        let (_, other) = received_snapshot(10, &[b"k"]);
        let sent_as = SnapshotMeta { last_log_id: Some(log_id(11)), ..meta };
        assert!(inbox.check(other, &sent_as).await.is_err(), "a file describing another snapshot is refused");
    }
}
