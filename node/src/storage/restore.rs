//! Seeding a new cluster from a backup: a sealed snapshot file ([`metastore_client::seal`]; what
//! `GET /v1/snapshot`, Maintenance.Snapshot and `etcdctl snapshot save` write) becomes this
//! member's store — every key, its history and the revisions as they were — under a new
//! membership and a new cluster id.
//!
//! The store is then what a member holds after installing a snapshot from a leader: the state
//! machine at the snapshot's last log id, no log behind it (openraft starts the log there), a
//! checkpoint to send to members that join. It also holds a vote for the snapshot's term, so
//! that the first election is for a later term than the log's last entry: raft orders entries
//! by term, and a leader of an earlier term would write entries that sort before the ones the
//! store already holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use rocksdb::DB;

use super::checkpoint::Checkpoints;
use super::codec::{self, encode};
use super::snapshot::SnapshotReader;
use super::state_machine::snapshot_batch;
use super::{cf, identity, StoreError, CF_RAFT};
use crate::types::{LogId, Member, NodeId, StoredMembership, Vote};
use metastore_client::seal::{self, SealError};

/// Why a snapshot file could not seed a store.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is refused: {source}")]
    Seal { path: String, source: SealError },
    #[error("{path} is refused: {source}")]
    Snapshot { path: String, source: StoreError },
    #[error("{path} holds a snapshot of a store that was never part of a cluster")]
    NeverInitialized { path: String },
    #[error(
        "the data directory holds snapshots of an earlier store: restore into an empty data \
         directory"
    )]
    EarlierSnapshots,
    #[error("the restored membership is invalid: {0}")]
    Membership(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restore made of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The store's revision, as it was in the cluster the snapshot came from.
    pub revision: u64,
    /// The new cluster's id.
    pub cluster_id: u64,
    /// The last log entry the snapshot covers: the new cluster's log continues after it.
    pub last_log_id: LogId,
}

/// Makes the store in `db` the snapshot in the sealed file at `path`, with `members` as the
/// membership and `own` as this member. The store must hold no raft state. The file is
/// checked whole (its seal, then every record) before anything is written, and the store is
/// written in one synced batch: a refused or interrupted restore leaves it as it was. Blocking.
pub(crate) fn restore(
    db: &DB,
    checkpoints: &Checkpoints,
    path: &Path,
    own: NodeId,
    members: &BTreeMap<NodeId, Member>,
) -> Result<Restored, RestoreError> {
    // openraft would install the newest snapshot at start, over what was restored.
    if checkpoints.current().is_some() {
        return Err(RestoreError::EarlierSnapshots);
    }
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| RestoreError::Open { path: name.clone(), source })?;
    let sealed =
        seal::check(&mut file).map_err(|source| RestoreError::Seal { path: name.clone(), source })?;
    let refused = |source| RestoreError::Snapshot { path: name.clone(), source };

    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = openraft::Membership::new(vec![voters], members.clone())
        .map_err(|e| RestoreError::Membership(e.to_string()))?;
    let cluster_id = identity::of_restore(&sealed.checksum, members)?;
    let mut restored = None;
    let mut batch = snapshot_batch(db, |put| {
        let (mut header, mut reader) = SnapshotReader::open(BufReader::new((&mut file).take(sealed.body)))?;
        while let Some((family, key, record)) = reader.next_record()? {
            family.check(&key, &record)?;
            put(family, &key, &record)?;
        }
        if let Some(last) = header.meta.last_log_id {
            header.meta.last_membership = StoredMembership::new(Some(last), membership);
            header.cluster_id = Some(cluster_id);
            restored = Some(Restored { revision: header.revision, cluster_id, last_log_id: last });
        }
        Ok(header)
    })
    .map_err(refused)?;
    let Some(restored) = restored else { return Err(RestoreError::NeverInitialized { path: name }) };
    let vote = Vote::new(restored.last_log_id.leader_id.term, own);
    batch.put_cf(cf(db, CF_RAFT)?, codec::VOTE, encode(&vote)?);
    super::write_synced(db, batch)?;
    checkpoints.take(db)?;
    Ok(restored)
}
