//! Receiving snapshots from the leader. openraft 0.10 sends and installs whole snapshots; the
//! leader's side ([`super::client`]) sends one in pieces, and this side gathers the pieces in a
//! file and hands the finished snapshot to raft.

use openraft::async_runtime::WatchReceiver;
use std::cmp::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::wire::{SnapshotAck, SnapshotChunk, SnapshotRefused};
use crate::storage::SnapshotInbox;
use crate::types::{Raft, Snapshot};

/// A snapshot being received.
struct Inbound {
    transfer: u64,
    file: tokio::fs::File,
    /// Where the next piece must start.
    next: u64,
}

/// Gathers snapshot pieces. One transfer at a time: a new one (a piece at offset 0) replaces
/// whatever was being received.
#[derive(Clone)]
pub struct SnapshotReceiver {
    inbox: SnapshotInbox,
    inbound: Arc<Mutex<Option<Inbound>>>,
}

impl SnapshotReceiver {
    pub fn new(inbox: SnapshotInbox) -> Self {
        Self { inbox, inbound: Arc::default() }
    }

    pub async fn receive(&self, raft: &Raft, chunk: SnapshotChunk) -> Result<SnapshotAck, SnapshotRefused> {
        // A superseded leader learns it from the first piece, not after sending them all.
        let current = raft.metrics().borrow_watched().vote;
        if matches!(chunk.vote.partial_cmp(&current), None | Some(Ordering::Less)) {
            return Ok(SnapshotAck::Finished(openraft::raft::SnapshotResponse::new(current)));
        }
        let mut inbound = self.inbound.lock().await;
        if chunk.offset == 0 {
            let file = self.inbox.new_file().await.map_err(|e| SnapshotRefused(e.to_string()))?;
            *inbound = Some(Inbound { transfer: chunk.transfer, file, next: 0 });
        }
        let Some(receiving) =
            inbound.as_mut().filter(|i| i.transfer == chunk.transfer && i.next == chunk.offset)
        else {
            return Err(SnapshotRefused(format!(
                "piece at offset {} of transfer {:x} does not continue the transfer in progress",
                chunk.offset, chunk.transfer
            )));
        };
        let written = async {
            receiving.file.write_all(&chunk.data).await?;
            receiving.file.flush().await
        };
        if let Err(e) = written.await {
            *inbound = None;
            return Err(SnapshotRefused(format!("cannot store the snapshot piece: {e}")));
        }
        receiving.next += chunk.data.len() as u64;
        if !chunk.done {
            return Ok(SnapshotAck::Received);
        }
        let Some(Inbound { file, .. }) = inbound.take() else {
            return Err(SnapshotRefused("the transfer vanished".into()));
        };
        drop(inbound);
        check_consistent(&chunk)?;
        let snapshot = Snapshot { meta: chunk.meta, snapshot: file };
        let response = raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map_err(|e| SnapshotRefused(format!("raft could not install the snapshot: {e}")))?;
        Ok(SnapshotAck::Finished(response))
    }
}

/// openraft stops (panics) on a snapshot that no leader could have sent: one with entries of a
/// later leader than the sender. Refuse it here instead, with an error the sender sees.
fn check_consistent(chunk: &SnapshotChunk) -> Result<(), SnapshotRefused> {
    match &chunk.meta.last_log_id {
        Some(last) if last.leader_id > *chunk.vote.leader_id() => {
            Err(SnapshotRefused(format!("snapshot up to {last} is beyond its sender's vote {}", chunk.vote)))
        }
        _ => Ok(()),
    }
}
