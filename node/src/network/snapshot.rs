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
use crate::types::{LogId, Raft, Snapshot};

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
        check_consistent(&chunk, raft.metrics().borrow_watched().local_committed)?;
        let file = self
            .inbox
            .check(file, &chunk.meta)
            .await
            .map_err(|e| SnapshotRefused(format!("the snapshot received cannot be installed: {e}")))?;
        let snapshot = Snapshot { meta: chunk.meta, snapshot: file };
        let response = raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map_err(|e| SnapshotRefused(format!("raft could not install the snapshot: {e}")))?;
        Ok(SnapshotAck::Finished(response))
    }
}

/// openraft stops (panics) on a snapshot that no protocol-following leader could have sent: one
/// with entries of a later leader than its sender, or one past this member's committed log
/// that contradicts it (`FollowingHandler::install_full_snapshot`). Refuse such a snapshot
/// here instead, with an error its sender sees. (The committed log id only grows, and only in
/// agreement with an honest leader's snapshot, so checking it first is enough for those.)
fn check_consistent(chunk: &SnapshotChunk, committed: Option<LogId>) -> Result<(), SnapshotRefused> {
    let Some(last) = &chunk.meta.last_log_id else { return Ok(()) };
    if last.leader_id > *chunk.vote.leader_id() {
        return Err(SnapshotRefused(format!(
            "snapshot up to {last} is beyond its sender's vote {}",
            chunk.vote
        )));
    }
    if let Some(committed) = committed.filter(|c| last > c && last.index <= c.index) {
        return Err(SnapshotRefused(format!(
            "snapshot up to {last} contradicts this member's committed log up to {committed}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::Vote;

    use super::*;
    use crate::types::{SnapshotMeta, StoredMembership};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    fn chunk(vote_term: u64, last: LogId) -> SnapshotChunk {
        SnapshotChunk {
            vote: Vote::new_committed(vote_term, 1),
            meta: SnapshotMeta { last_log_id: Some(last), last_membership: StoredMembership::default() },
            transfer: 1,
            offset: 0,
            data: Vec::new(),
            done: true,
        }
    }

    #[test]
    fn a_snapshot_a_leader_could_send_is_accepted() {
        assert!(check_consistent(&chunk(3, log_id(3, 10)), Some(log_id(2, 5))).is_ok());
        assert!(check_consistent(&chunk(3, log_id(2, 10)), None).is_ok());
    }

    #[test]
    fn a_snapshot_beyond_its_senders_vote_is_refused() {
        assert!(check_consistent(&chunk(3, log_id(4, 10)), None).is_err());
    }

    #[test]
    fn a_snapshot_contradicting_the_committed_log_is_refused() {
        assert!(check_consistent(&chunk(3, log_id(3, 5)), Some(log_id(2, 5))).is_err());
        assert!(check_consistent(&chunk(3, log_id(3, 4)), Some(log_id(2, 5))).is_err());
    }
}
