//! Proposing to raft as the leader: whether this member may propose, and what a failed
//! proposal means to the client. Shared by group commit and membership changes, the two ways
//! a member proposes.

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::ServerState;

use crate::network::wire::ForwardError;
use crate::raft::Raft;
use crate::types::{NodeId, TypeConfig};

/// Whether member `id` believes it leads. Work refused on this check was never proposed, so
/// the forwarder may safely retry it elsewhere.
pub fn leads(id: NodeId, raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    m.current_leader == Some(id) && m.state == ServerState::Leader
}

pub fn not_leader(f: ForwardToLeader<TypeConfig>) -> ForwardError {
    ForwardError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
}

/// What a failed proposal means to the client.
///
/// openraft answers ForwardToLeader both when it refuses a proposal and when it truncates an
/// uncommitted entry it had appended — and another member may still commit that entry (a
/// leader of a later term can, in clusters of five or more). Proposals are only made after
/// the member checked that it leads ([`leads`]), so the answer here is "unknown", never
/// "retry": a retry could apply the write twice.
pub fn proposed_write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ForwardError {
    match e {
        RaftError::APIError(
            ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f),
        ) => ForwardError::OutcomeUnknown(format!(
            "leadership moved (new leader: {:?}) while the write was in flight; it may or may not apply",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(
            e,
        ))) => ForwardError::Conflict(format!("another membership change is in progress: {e}")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Rejected(e.to_string())
        }
        // Only for writes with openraft preconditions, which are never made here.
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
            ForwardError::OutcomeUnknown(format!("openraft refused the write: {e}"))
        }
        RaftError::Fatal(e) => {
            ForwardError::OutcomeUnknown(format!("raft stopped with the write in flight: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Member;

    #[test]
    fn a_proposal_answered_with_forward_to_leader_has_an_unknown_outcome_and_is_not_retried() {
        // openraft sends this when it truncates an entry it had appended; that entry may still
        // commit elsewhere, so "not the leader" (which the forwarder retries) would be wrong.
        let truncated = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::new(
            2,
            Member::default(),
        )));
        assert!(matches!(proposed_write_error(truncated), ForwardError::OutcomeUnknown(_)));
        // openraft 0.10 names the truncation case apart; it is just as unknown.
        let discarded = RaftError::APIError(ClientWriteError::LogEntryDiscarded(ForwardToLeader::new(
            2,
            Member::default(),
        )));
        assert!(matches!(proposed_write_error(discarded), ForwardError::OutcomeUnknown(_)));
    }
}
