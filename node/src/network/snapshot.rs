//! Receiving snapshots from the leader. openraft 0.10 sends and installs whole snapshots; the
//! leader's side ([`super::client`]) sends one in pieces, and this side gathers the pieces in a
//! file and hands the finished snapshot to raft.

use openraft::async_runtime::WatchReceiver;
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::wire::{SnapshotAck, SnapshotChunk, SnapshotRefused};
use crate::raft::Raft;
use crate::storage::{Snapshot, SnapshotData, SnapshotInbox};
use crate::types::LogId;

/// A snapshot being received.
struct Inbound {
    transfer: u64,
    file: tokio::fs::File,
    /// Where the next piece must start.
    next: u64,
    last_piece: Instant,
}

/// Gathers snapshot pieces. One transfer at a time: a new one (a piece at offset 0) replaces
/// whatever was being received, and one that no piece has come for in `abandoned_after` is
/// dropped, so that a partial snapshot does not hold its disk space until the next transfer.
#[derive(Clone)]
pub struct SnapshotReceiver {
    inbox: SnapshotInbox,
    inbound: Arc<Mutex<Option<Inbound>>>,
    abandoned_after: Duration,
}

impl SnapshotReceiver {
    /// `abandoned_after` should exceed the longest a piece can take to arrive (the listener's
    /// request timeout bounds it): the sender sends each piece once the last is answered.
    pub fn new(inbox: SnapshotInbox, abandoned_after: Duration) -> Self {
        Self { inbox, inbound: Arc::default(), abandoned_after }
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
            *inbound = Some(Inbound { transfer: chunk.transfer, file, next: 0, last_piece: Instant::now() });
            let watch = forget_when_abandoned(self.inbound.clone(), chunk.transfer, self.abandoned_after);
            tokio::spawn(watch);
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
        receiving.last_piece = Instant::now();
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
        let snapshot = Snapshot { meta: chunk.meta, snapshot: SnapshotData::Received(file) };
        let response = raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map_err(|e| SnapshotRefused(format!("raft could not install the snapshot: {e}")))?;
        Ok(SnapshotAck::Finished(response))
    }
}

/// Drops transfer `transfer` once no piece of it has come for `after`; returns when it is
/// dropped, finished or replaced.
async fn forget_when_abandoned(inbound: Arc<Mutex<Option<Inbound>>>, transfer: u64, after: Duration) {
    loop {
        let due = match inbound.lock().await.as_ref().filter(|i| i.transfer == transfer) {
            Some(receiving) => receiving.last_piece + after,
            None => return,
        };
        tokio::time::sleep_until(due.into()).await;
        let mut inbound = inbound.lock().await;
        let Some(receiving) = inbound.as_ref().filter(|i| i.transfer == transfer) else { return };
        if receiving.last_piece.elapsed() >= after {
            tracing::info!(
                transfer = format!("{transfer:x}"),
                received = receiving.next,
                "snapshot transfer abandoned by its sender: dropping what was received"
            );
            *inbound = None;
            return;
        }
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

    fn receiving(transfer: u64) -> Option<Inbound> {
        let file = tokio::fs::File::from_std(tempfile::tempfile().expect("temp file"));
        Some(Inbound { transfer, file, next: 0, last_piece: Instant::now() })
    }

    #[tokio::test]
    async fn a_transfer_no_piece_comes_for_is_dropped() {
        let inbound = Arc::new(Mutex::new(receiving(7)));
        let after = Duration::from_millis(50);
        tokio::time::timeout(Duration::from_secs(10), forget_when_abandoned(inbound.clone(), 7, after))
            .await
            .expect("the watch ends");
        assert!(inbound.lock().await.is_none(), "the partial snapshot is dropped");
    }

    #[tokio::test]
    async fn the_watch_on_a_replaced_transfer_leaves_its_successor_alone() {
        let inbound = Arc::new(Mutex::new(receiving(7)));
        let watch = tokio::spawn(forget_when_abandoned(inbound.clone(), 7, Duration::from_millis(50)));
        *inbound.lock().await = receiving(8);
        tokio::time::timeout(Duration::from_secs(10), watch).await.expect("the watch ends").expect("join");
        assert_eq!(inbound.lock().await.as_ref().map(|i| i.transfer), Some(8));
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
