//! The application types openraft is instantiated with: what a member is, what a log entry
//! carries, and what applying it answers.

use std::fmt;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// metaStore's raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot as openraft hands it around: its description and its file.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, tokio::fs::File>;
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

/// A condition on the key's current state that a write requires (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    Absent,
    ModRevision(u64),
}

/// A state-machine command: the payload of a normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        // As one byte string, not a sequence of bytes one call each: the same encoding in
        // postcard, with one copy. Likewise for every value and snapshot piece below.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        precondition: Option<Precondition>,
    },
    Delete {
        key: String,
        precondition: Option<Precondition>,
    },
    /// Client writes proposed together as one entry (group commit), applied in order. They
    /// share the entry's revision, so the leader never puts one key in a batch twice: a key's
    /// mod revision must name one state of it.
    Batch(Vec<Command>),
}

impl Command {
    /// The client writes this command carries, in order: itself, or a batch's.
    pub fn into_writes(self) -> Vec<Command> {
        match self {
            Command::Batch(commands) => commands.into_iter().flat_map(Command::into_writes).collect(),
            single => vec![single],
        }
    }

    /// The key a single write changes; `None` for a batch.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => Some(key),
            Command::Batch(_) => None,
        }
    }

    /// About how many bytes the command takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::Batch(commands) => commands.iter().map(Command::size).sum(),
        }
    }
}

/// How openraft logs an entry's payload: what it does, never the value.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value, .. } => write!(f, "put {key:?} ({} bytes)", value.len()),
            Command::Delete { key, .. } => write!(f, "delete {key:?}"),
            Command::Batch(commands) => write!(f, "batch of {} writes", commands.len()),
        }
    }
}

/// A key as stored: its value and revision metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What applying a log entry did: one answer per client write it carried, in order (none for
/// blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Vec<CommandResult>);

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} answers", self.0.len())
    }
}

/// What applying a single write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The revision (log index) of the entry that carried the command.
    pub revision: u64,
    /// False when the precondition did not hold; then nothing was written.
    pub succeeded: bool,
    /// The key before the command (on failure: the key as it is, which made the compare fail).
    pub prev: Option<KeyRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs, snapshots and peers of earlier versions hold these bytes: the encoding must not move.
    #[test]
    fn values_keep_their_encoding() {
        let put = Command::Put { key: "k".into(), value: vec![7, 8], precondition: None };
        assert_eq!(postcard::to_stdvec(&put).expect("encode"), [0, 1, b'k', 2, 7, 8, 0]);
        let record = KeyRecord { create_revision: 1, mod_revision: 2, version: 3, value: vec![7, 8] };
        assert_eq!(postcard::to_stdvec(&record).expect("encode"), [1, 2, 3, 2, 7, 8]);
        assert_eq!(postcard::from_bytes::<KeyRecord>(&[1, 2, 3, 2, 7, 8]).expect("decode"), record);
    }
}
