//! Handing leadership to another voter, as the leader: before the leader's member is restarted
//! (an upgrade rolling through the cluster), so that writes pause for a handover instead of an
//! election timeout. Asked over etcd's `Maintenance.MoveLeader` and `POST /v1/cluster/leader`.

use std::time::Duration;

use super::{Role, Service};
use crate::types::NodeId;

/// How long the new leader gets to take over.
const TRANSFER_WITHIN: Duration = Duration::from_secs(5);

/// Why leadership was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("this member does not lead (the leader is {leader:?}): ask the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("member {0} is not another voter of this cluster")]
    BadTransferee(NodeId),
    #[error("member {target} did not take over within {within:?}")]
    TimedOut { target: NodeId, within: Duration },
    #[error("raft refused the transfer: {0}")]
    Raft(String),
}

impl Service {
    /// Hands leadership to voter `target`; returns once it leads.
    #[tracing::instrument(skip(self), fields(member = self.id()))]
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), TransferError> {
        let leader = self.metrics().current_leader;
        if leader != Some(self.id()) {
            return Err(TransferError::NotLeader { leader });
        }
        let voter = self.members().iter().any(|m| m.id == target && m.role == Role::Voter);
        if !voter || target == self.id() {
            return Err(TransferError::BadTransferee(target));
        }
        let raft = self.raft();
        raft.trigger().transfer_leader(target).await.map_err(|e| TransferError::Raft(e.to_string()))?;
        raft.wait(Some(TRANSFER_WITHIN))
            .current_leader(target, "leadership transfer")
            .await
            .map_err(|_| TransferError::TimedOut { target, within: TRANSFER_WITHIN })?;
        tracing::info!(to = target, "handed leadership over");
        Ok(())
    }
}
