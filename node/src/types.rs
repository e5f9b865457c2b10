//! The application types openraft is instantiated with: what a member is, what a log entry
//! carries, and what applying it answers; and the changes a membership may undergo.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthChange, AuthError, Caller};
use crate::engine::{Precondition, RevisionError, Write, WriteError, WriteResult};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// metaStore's raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// A member as the raft membership records it: where its peers and its clients reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Base URL of the member's peer (raft) listener.
    pub peer_url: String,
    /// Base URL of the member's client API; empty when it was configured statically without one.
    pub client_url: String,
    /// The identity of the member's storage, made when its store was first created. Peers
    /// address every RPC to it, so a member that comes back on an empty volume (a new
    /// incarnation, no memory of its votes) is refused until it is removed and added anew.
    /// Empty when unknown (static clusters), which disables the check.
    pub incarnation: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} client={} incarnation={}", self.peer_url, self.client_url, self.incarnation)
    }
}

/// A change to the raft membership, always carried out by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a learner and wait until it has caught up.
    AddLearner { id: NodeId, member: Member },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a voter or a learner.
    Remove { id: NodeId },
    /// Record what a member says of itself: its client URL, and its storage incarnation where
    /// none is recorded yet (static members start without one). Its peer URL never changes this
    /// way (a member reachable at two addresses could count twice towards a quorum), nor does a
    /// recorded incarnation (that is how a member that lost its data is kept out).
    Describe { id: NodeId, client_url: String, incarnation: String },
    /// Add a learner that may not be running yet, without waiting for it (etcd's MemberAdd,
    /// which comes before the member is started).
    AddLearnerToStart { id: NodeId, member: Member },
}

/// The payload of a normal raft log entry, as the log keeps it and peers send it. The variant
/// is the encoding's version: a member meets an entry of another version as an error that says
/// so, never as a misread write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// metaStore 0.1's entries (revisions were log indexes, keys text). Their tags and shapes
    /// are kept so that one is read whole (postcard does not describe itself: a shorter shape
    /// would leave its bytes to be misread as what follows) and then refused.
    FormatOnePut {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        precondition: Option<Precondition>,
    },
    FormatOneDelete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        precondition: Option<Precondition>,
    },
    FormatOneBatch(Vec<Command>),
    /// Client writes proposed together (group commit), applied in order, each at the store's
    /// next revision if it changes anything.
    Writes(Vec<Write>),
    /// Forget history below `revision`: reads below it are refused from this entry on, on every
    /// member alike; the versions it supersedes are deleted in the background.
    Compact {
        revision: u64,
    },
    /// Changes users, roles or whether auth is on; made for `caller`, who must hold the root
    /// role while auth is on (checked as it applies).
    Auth {
        caller: Option<Caller>,
        change: AuthChange,
    },
}

impl Command {
    /// About how many bytes the command takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Command::Writes(writes) => writes.iter().map(Write::size).sum(),
            _ => 0,
        }
    }
}

/// How openraft logs an entry's payload: what it does, never the value.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Writes(writes) => match writes.as_slice() {
                [single] => write!(f, "{single}"),
                writes => write!(f, "{} writes", writes.len()),
            },
            Command::Compact { revision } => write!(f, "compact to revision {revision}"),
            Command::Auth { change, .. } => write!(f, "auth: {}", change.describe()),
            _ => write!(f, "an entry of metaStore 0.1's format"),
        }
    }
}

/// What applying a log entry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Blank and membership entries answer nothing.
    #[default]
    Nothing,
    /// One answer per client write the entry carried, in order: what it did, or why none of
    /// it could apply.
    Writes(Vec<Result<WriteResult, WriteError>>),
    /// The compaction revision now in effect, or why the compaction was refused.
    Compaction(Result<u64, RevisionError>),
    /// The auth revision after the change, or why it was refused.
    Auth(Result<u64, AuthError>),
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Nothing => write!(f, "nothing"),
            Applied::Writes(answers) => write!(f, "{} answers", answers.len()),
            Applied::Compaction(outcome) => write!(f, "compaction: {outcome:?}"),
            Applied::Auth(outcome) => write!(f, "auth: {outcome:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs and peers hold these bytes: the encoding must not move.
    #[test]
    fn entries_keep_their_encoding() {
        let put =
            Command::Writes(vec![Write::Put { key: b"k".to_vec(), value: vec![7, 8], precondition: None }]);
        assert_eq!(postcard::to_stdvec(&put).expect("encode"), [3, 1, 0, 1, b'k', 2, 7, 8, 0]);
        let delete = Command::Writes(vec![Write::Delete {
            key: vec![0xff],
            precondition: Some(Precondition::ModRevision(5)),
        }]);
        assert_eq!(postcard::to_stdvec(&delete).expect("encode"), [3, 1, 1, 1, 0xff, 1, 1, 5]);
    }

    #[test]
    fn an_entry_of_the_first_format_is_read_whole_as_what_it_is() {
        // metaStore 0.1's `Batch([Put { key: "k", value: [7, 8], precondition: None }])`, then
        // the next field of whatever held it.
        let bytes = [2, 1, 0, 1, b'k', 2, 7, 8, 0, 42];
        let (old, rest): (Command, _) = postcard::take_from_bytes(&bytes).expect("decode");
        let put = Command::FormatOnePut { key: b"k".to_vec(), value: vec![7, 8], precondition: None };
        assert_eq!(old, Command::FormatOneBatch(vec![put]));
        assert_eq!(rest, [42], "nothing of it is left to be misread");
    }
}
