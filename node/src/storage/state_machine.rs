//! The key-value state machine, implementing openraft's [`RaftStateMachine`].
//!
//! The state machine is persistent: `apply` writes the keys, the store's revision,
//! `last_applied` and the membership in one atomic `WriteBatch`, so a restart resumes from where
//! it was instead of replaying the whole log. It is the only code that changes the key-value
//! data. Snapshots are checkpoints of the store ([`super::checkpoint`]), taken in time that does
//! not grow with the store; installing one received from the leader replaces the whole `kv`
//! column family and the metadata in one `WriteBatch`, then checkpoints the result.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use super::checkpoint::{Checkpoint, Checkpoints};
use super::codec::{self, decode, decode_record, encode, encode_record};
use super::snapshot::{read_received, Snapshot, SnapshotData, SnapshotHeader, SnapshotInbox};
use super::{cf, run_blocking, run_write, StoreError, CF_KV, CF_SM};
use crate::kv::{self, KeyRecord};
use crate::metrics;
use crate::types::{Applied, Command, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<DB>,
    checkpoints: Checkpoints,
    inbox: SnapshotInbox,
}

impl StateMachine {
    pub(crate) async fn new(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, StoreError> {
        let store = db.clone();
        let dir = snapshot_dir.clone();
        let checkpoints = run_blocking(move || Checkpoints::open(&store, dir)).await?;
        Ok(Self { db, checkpoints, inbox: SnapshotInbox { dir: snapshot_dir } })
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

/// About how many bytes applying `entry` writes.
fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => command.size(),
        _ => 0,
    }
}

/// The store's revision as `opts` sees it; 0 before the first write.
pub(crate) fn read_revision(db: &DB, opts: &ReadOptions) -> Result<u64, StoreError> {
    match db.get_pinned_cf_opt(cf(db, CF_SM)?, codec::REVISION, opts)? {
        Some(bytes) => codec::decode_u64(&bytes, "revision"),
        None => Ok(0),
    }
}

fn apply_entries(db: &DB, entries: Vec<Entry>) -> Result<Vec<Applied>, StoreError> {
    let kv = cf(db, CF_KV)?;
    let mut batch = WriteBatch::default();
    let applied_revision = read_revision(db, &ReadOptions::default())?;
    let mut revision = applied_revision;
    // Later writes in the batch must see the effect of earlier ones on the same key.
    let mut pending: HashMap<Vec<u8>, Option<KeyRecord>> = HashMap::new();
    let mut results = Vec::with_capacity(entries.len());
    let mut last_applied = None;
    let mut membership = None;
    for entry in entries {
        last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => results.push(Applied::default()),
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                results.push(Applied::default());
            }
            EntryPayload::Normal(Command::Writes(writes)) => {
                let mut answers = Vec::with_capacity(writes.len());
                for write in writes {
                    let key = write.key().to_vec();
                    let current = match pending.get(&key) {
                        Some(state) => state.clone(),
                        None => db.get_pinned_cf(kv, &key)?.map(|b| decode_record(&b)).transpose()?,
                    };
                    let (result, change) = kv::apply_write(write, current.as_ref(), revision);
                    revision = result.revision;
                    if let Some(new_state) = change {
                        match &new_state {
                            Some(record) => batch.put_cf(kv, &key, encode_record(record)),
                            None => batch.delete_cf(kv, &key),
                        }
                        pending.insert(key, new_state);
                    }
                    answers.push(result);
                }
                results.push(Applied(answers));
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
    let sm = cf(db, CF_SM)?;
    if revision != applied_revision {
        batch.put_cf(sm, codec::REVISION, codec::encode_u64(revision));
    }
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

/// Replaces the whole state machine with a snapshot's: `fill` adds its records to the batch
/// that also clears every key and sets the metadata from the header it returns, written
/// atomically and synced. A record that fails leaves the store as it was.
fn load_snapshot(
    db: &DB,
    fill: impl FnOnce(
        &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<SnapshotHeader, StoreError>,
) -> Result<(), StoreError> {
    let kv = cf(db, CF_KV)?;
    let mut batch = WriteBatch::default();
    // Keys are any bytes, so no fixed bound covers them all: clear up to just past the last one.
    if let Some(item) = db.iterator_cf(kv, IteratorMode::End).next() {
        let (last, _) = item?;
        let mut end = last.into_vec();
        end.push(0);
        batch.delete_range_cf(kv, &b""[..], &end);
    }
    let header = fill(&mut |key, record| {
        batch.put_cf(kv, key, record);
        Ok(())
    })?;
    let sm = cf(db, CF_SM)?;
    batch.put_cf(sm, codec::LAST_APPLIED, encode(&header.meta.last_log_id)?);
    batch.put_cf(sm, codec::LAST_MEMBERSHIP, encode(&header.meta.last_membership)?);
    batch.put_cf(sm, codec::REVISION, codec::encode_u64(header.revision));
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)?;
    Ok(())
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
            load_snapshot(db, |put| read_received(&mut file, meta, |k, r| put(k, r)))?;
        }
        Installing::Checkpoint(checkpoint) => {
            let applied: Option<LogId> =
                read_sm_meta(db, &ReadOptions::default(), codec::LAST_APPLIED)?.flatten();
            if checkpoint.meta().last_log_id <= applied {
                // Already reflected (openraft restoring at start a snapshot of this very store).
                return Ok(());
            }
            load_snapshot(db, |put| {
                checkpoint.for_each_record(|k, r| put(k, r))?;
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
        run_blocking(move || install(&db, &checkpoints, &expected, data)).await.map_err(io_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
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
mod tests {
    use super::*;
    use crate::kv::{Precondition, Write};
    use crate::storage::snapshot::SnapshotWriter;

    fn log_id(index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
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
            apply_entries(&db, vec![entry(4, vec![put(b"b", "0", None)]), entry(5, batch)]).expect("apply");
        assert_eq!(answers.len(), 2, "one answer per entry");
        let results: Vec<(u64, bool)> = answers[1].0.iter().map(|r| (r.revision, r.succeeded)).collect();
        assert_eq!(
            results,
            [(2, true), (2, false), (2, false), (3, true), (3, true), (4, true)],
            "each write answered in order, at the revision it made or found"
        );
        assert_eq!(stored(&db, b"a"), Some(KeyRecord::at(2, 3, 2, "again")), "one key twice in one entry");
        assert_eq!(stored(&db, b"b"), None);
        assert_eq!(stored(&db, b"c"), None);
        assert_eq!(revision(&db), 4);
        // The next entry carries on from the stored revision.
        let next = apply_entries(&db, vec![entry(6, vec![put(b"z", "9", None)])]).expect("apply");
        assert_eq!(next[0].0[0].revision, 5);
    }

    #[test]
    fn an_entry_of_the_first_format_is_refused_not_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(&dir.path().join("db")).expect("open");
        let put = Command::FormatOneDelete { key: b"k".to_vec(), precondition: None };
        let old = Entry { log_id: log_id(3), payload: EntryPayload::Normal(put) };
        assert!(apply_entries(&db, vec![old]).is_err());
    }

    /// A snapshot at `index` holding `keys`, as a peer would send it.
    fn received_snapshot(index: u64, keys: &[&[u8]]) -> (SnapshotMeta, tokio::fs::File) {
        let meta =
            SnapshotMeta { last_log_id: Some(log_id(index)), last_membership: StoredMembership::default() };
        let header = SnapshotHeader { meta: meta.clone(), revision: 77 };
        let mut writer = SnapshotWriter::new(Vec::new(), &header).expect("header");
        for key in keys {
            writer.record(key, &encode_record(&KeyRecord::at(1, 1, 1, "v"))).expect("record");
        }
        let bytes = writer.finish().expect("finish");
        let mut file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut file, &bytes).expect("write");
        (meta, tokio::fs::File::from_std(file))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn installing_a_snapshot_replaces_every_key_and_becomes_the_current_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(super::super::open_db(&dir.path().join("db")).expect("open"));
        apply_entries(&db, vec![entry(1, vec![put(b"old", "x", None), put(b"\xff\xffold", "y", None)])])
            .expect("apply");
        let mut sm = StateMachine::new(db.clone(), dir.path().join("snapshots")).await.expect("open");

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
    async fn a_received_snapshot_is_read_through_before_raft_may_install_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inbox = SnapshotInbox { dir: dir.path().to_path_buf() };

        let (meta, whole) = received_snapshot(10, &[b"k"]);
        let checked = inbox.check(whole, &meta).await.expect("a whole snapshot passes");
        let mut checked = checked.into_std().await;
        let header = read_received(&mut checked, &meta, |_, _| Ok(())).expect("rewound to its start");
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
