//! The cluster as one member sees it, in the service's terms rather than openraft's: what
//! every front end reports (the HTTP API's `/v1/cluster`; etcd's member list and status next).

use openraft::ServerState;

use super::Service;
use crate::types::{Member, NodeId, RaftMetrics};

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

/// What this member is doing in raft right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Leader,
    Candidate,
    Follower,
    /// Replicated to without a vote (or not a member yet).
    Learner,
    Shutdown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Leader => "leader",
            State::Candidate => "candidate",
            State::Follower => "follower",
            State::Learner => "learner",
            State::Shutdown => "shutdown",
        }
    }
}

impl From<ServerState> for State {
    fn from(state: ServerState) -> Self {
        match state {
            ServerState::Leader => State::Leader,
            ServerState::Candidate => State::Candidate,
            ServerState::Follower => State::Follower,
            ServerState::Learner => State::Learner,
            ServerState::Shutdown => State::Shutdown,
        }
    }
}

/// A member of the raft membership, as this member knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: NodeId,
    pub role: Role,
    pub member: Member,
}

/// This member's view of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub member_id: NodeId,
    /// This member's storage incarnation.
    pub incarnation: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: State,
    /// Raft was initialized here (or this member was added to a cluster).
    pub initialized: bool,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// On the leader: each member's last log index known replicated to it.
    pub replication: Option<Vec<(NodeId, Option<u64>)>>,
    pub members: Vec<MemberView>,
}

impl Service {
    pub fn cluster_view(&self) -> ClusterView {
        let m = self.metrics();
        ClusterView {
            member_id: m.id,
            incarnation: self.own_member().incarnation.clone(),
            leader: m.current_leader,
            term: m.current_term,
            state: m.state.into(),
            initialized: !m.membership_config.membership().get_joint_config().is_empty(),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|id| id.index),
            applied_index: m.last_applied.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
            purged_index: m.purged.map(|id| id.index),
            replication: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, matched)| (*id, matched.map(|l| l.index))).collect()),
            members: members(&m),
        }
    }

    /// The members of the raft membership, as this member knows it.
    pub fn members(&self) -> Vec<MemberView> {
        members(&self.metrics())
    }
}

fn members(metrics: &RaftMetrics) -> Vec<MemberView> {
    let membership = metrics.membership_config.membership();
    membership
        .nodes()
        .map(|(id, member)| MemberView {
            id: *id,
            role: if membership.voter_ids().any(|v| v == *id) { Role::Voter } else { Role::Learner },
            member: member.clone(),
        })
        .collect()
}
