//! Snapshots taken on request, for backups (etcd's Maintenance.Snapshot): this member's raft
//! snapshot, made fresh so that it holds every write acknowledged before it was asked. It is
//! the snapshot a lagging member would be sent (`storage/snapshot.rs`'s format, a RocksDB
//! checkpoint streamed record by record), so it carries raft's description with it: the last
//! log entry it covers and the membership. Handed to clients sealed as a file of its own
//! ([`Seal`]): what a restore checks before it takes one.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Service, ServiceError};
use crate::storage::{SnapshotData, SnapshotPieces};
use metastore_client::seal::Seal;

/// How long taking a snapshot may take: flushing the memtables, then linking the table files.
const SNAPSHOT_WITHIN: Duration = Duration::from_secs(60);
/// How often the snapshot is asked for again while none covers what was applied.
const RETRIGGER_AFTER: Duration = Duration::from_secs(2);

impl Service {
    /// A snapshot of this member's store covering at least every write acknowledged before it
    /// was asked (through any member, as a linearizable read would see them), and the store's
    /// revision in it.
    #[tracing::instrument(skip_all, fields(member = self.id()))]
    pub async fn fresh_snapshot(&self) -> Result<(SnapshotData, u64), ServiceError> {
        // A write forwarded through this member is acknowledged once the leader applied it,
        // perhaps before this member did: catch up with the leader first.
        self.await_freshness(super::ReadConsistency::Linearizable).await?;
        let applied = self.metrics().last_applied.map(|id| id.index);
        let raft = self.raft();
        let deadline = Instant::now() + SNAPSHOT_WITHIN;
        loop {
            // Ignored while a snapshot is being built; that one may end short of `applied`,
            // so the request is made again until one covers it.
            raft.trigger().snapshot().await.map_err(|e| ServiceError::Unavailable(e.to_string()))?;
            let taken = raft
                .wait(Some(RETRIGGER_AFTER))
                .metrics(|m| m.snapshot.map(|id| id.index) >= applied, "snapshot taken")
                .await;
            if taken.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Unavailable(format!(
                    "no snapshot covering log index {applied:?} was taken within {SNAPSHOT_WITHIN:?}"
                )));
            }
        }
        let snapshot = raft.get_snapshot().await.map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let Some(snapshot) = snapshot else {
            return Err(ServiceError::Unavailable("the member has no snapshot yet".into()));
        };
        let revision = match &snapshot.snapshot {
            SnapshotData::Checkpoint(checkpoint) => checkpoint.header().revision,
            // Never so: a member checkpoints a snapshot it installs, and hands out checkpoints.
            SnapshotData::Received(_) => *self.reader().applied().borrow(),
        };
        Ok((snapshot.snapshot, revision))
    }

    /// [`Self::fresh_snapshot`] as a sealed file, in pieces of about `piece` bytes (the last
    /// one ends with the seal), and the store's revision in it. Pieces that stop without a
    /// last one are a failed snapshot: a receiver must not keep what it got.
    pub async fn sealed_snapshot(&self, piece: usize) -> Result<(SnapshotPieces, u64), ServiceError> {
        let (data, revision) = self.fresh_snapshot().await?;
        let mut pieces = data.pieces(piece).await;
        let (sealed, out) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut seal = Seal::default();
            while let Some(mut piece) = pieces.recv().await {
                let last = piece.as_ref().map_or(true, |piece| piece.last);
                if let Ok(piece) = &mut piece {
                    seal.add(&piece.data);
                    if piece.last {
                        piece.data.extend(std::mem::take(&mut seal).finish());
                    }
                }
                // A receiver that went away wants no more.
                if sealed.send(piece).await.is_err() || last {
                    return;
                }
            }
        });
        Ok((out, revision))
    }
}
