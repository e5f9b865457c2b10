//! What travels between members, and how it is framed.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{RevisionError, Write, WriteError, WriteResult};
use crate::types::{Member, MembershipChange, NodeId, SnapshotMeta, TypeConfig, Vote};

/// Largest peer request or answer body. Larger log batches are split (only the part that fits
/// is sent, and openraft is told so); snapshots travel in chunks well below this.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

pub const APPEND_PATH: &str = "append";
pub const VOTE_PATH: &str = "vote";
/// The leader hands leadership to the member it names (`Raft::handle_transfer_leader`).
pub const TRANSFER_LEADER_PATH: &str = "transfer-leader";
pub const SNAPSHOT_PATH: &str = "snapshot";
pub const FORWARD_PATH: &str = "forward";
/// Upgrades the request's connection to an append stream (see `append_stream`).
pub const APPEND_STREAM_PATH: &str = "append-stream";
/// The `Upgrade` protocol an append stream is asked for with.
pub const APPEND_STREAM_PROTOCOL: &str = "metastore-append/1";

/// Header naming the storage incarnation a peer request is meant for (see `Member::incarnation`).
pub const INCARNATION_HEADER: &str = "x-metastore-incarnation";

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Sizes the frame before encoding it: one over the limit is refused before anything is
/// allocated (a sender then splits what it sends), and the buffer is allocated once rather than
/// grown by copying.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let len = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(postcard::to_extend(value, Vec::with_capacity(len))?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    Ok(postcard::from_bytes(bytes)?)
}

/// Frames of an append stream: a 4-byte big-endian length, then that many bytes of postcard.
pub fn stream_codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_codec()
}

/// A follower's answer to one request on an append stream; answers come in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamAnswer {
    /// What raft made of the request. An error (a conflict, a greater vote) is the last answer
    /// on the stream.
    Appended(openraft::raft::StreamAppendResult<TypeConfig>),
    /// The follower's raft has stopped; so has the stream.
    Stopped(String),
}

/// One piece of a snapshot on its way from the leader. openraft hands the network a whole
/// snapshot; it travels in pieces so that no request holds a multi-MiB state in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sending leader's vote; a member with a greater one answers with it at once.
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// Names one transfer, so that a piece of an abandoned one is never taken for this one's.
    pub transfer: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The last piece: the receiver installs the snapshot before it answers.
    pub done: bool,
}

/// How a member took a snapshot piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotAck {
    /// Stored; send the next one.
    Received,
    /// The transfer is over: installed (after the last piece), or refused because the member
    /// has seen a greater vote. Either way openraft learns the member's vote.
    Finished(openraft::raft::SnapshotResponse<TypeConfig>),
}

/// Why a member could not take a snapshot piece; the sender starts the transfer over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("snapshot piece refused: {0}")]
pub struct SnapshotRefused(pub String);

/// Work a follower passes to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Client writes gathered on one member, in order; each is answered on its own.
    Writes(Vec<Write>),
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    ChangeMembership(MembershipChange),
    /// Compact history to this revision.
    Compact(u64),
    /// Start a lease's TTL again, on the leader, which keeps time.
    LeaseKeepAlive(i64),
    /// A lease's granted TTL and the time it has left, as the leader counts it.
    LeaseTimeToLive(i64),
    /// Change users, roles or whether auth is on, for this caller.
    Auth {
        caller: Option<crate::auth::Caller>,
        change: crate::auth::AuthChange,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// One answer per write, in order.
    Written(Vec<Result<WriteResult, ForwardError>>),
    ReadIndex(u64),
    /// The log index at which the membership change committed.
    MembershipChanged(u64),
    /// The compaction revision now in effect, or why the compaction was refused.
    Compacted(Result<u64, RevisionError>),
    /// The lease's granted TTL, now started again; `None`: no such lease.
    LeaseKept(Option<i64>),
    /// The lease's granted TTL and the milliseconds it has left; `None`: no such lease.
    LeaseRemaining(Option<(i64, u64)>),
    /// The auth revision after the change, or why it was refused.
    AuthChanged(Result<u64, crate::auth::AuthError>),
}

/// Why the leader could not do forwarded work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, Member)> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The work was handed to raft but no answer came: it may or may not take effect, so it
    /// must never be retried on the client's behalf.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The write was applied and took no effect, for this reason.
    #[error("{0}")]
    Write(WriteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        for garbage in [&b""[..], b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x00\x07ab"] {
            assert!(decode::<ForwardRequest>(garbage).is_err());
        }
    }

    #[test]
    fn a_huge_declared_length_does_not_allocate_it() {
        // Variant 0 (Writes), one write, Put, then a key length of about 2^63.
        let frame = [0u8, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<ForwardRequest>(&frame).is_err());
        // Variant 0 (Writes) declaring about 2^63 writes.
        let frame = [0u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<ForwardRequest>(&frame).is_err());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_with_its_size() {
        let value = vec![7u8; 1024 * 1024];
        let writes = (0..=MAX_FRAME_BYTES / value.len())
            .map(|i| Write::Put {
                key: format!("k{i}").into_bytes(),
                value: value.clone(),
                precondition: None,
            })
            .collect();
        match encode(&ForwardRequest::Writes(writes)) {
            Err(FrameError::TooLarge(len)) => assert!(len > MAX_FRAME_BYTES),
            other => panic!("expected TooLarge, got {:?}", other.map(|b| b.len())),
        }
    }

    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use proptest::prelude::*;

    /// Decodes `bytes` as every message a member accepts from a peer; none may panic.
    fn decode_as_every_request(bytes: &[u8]) {
        let _ = decode::<AppendEntriesRequest<TypeConfig>>(bytes);
        let _ = decode::<StreamAnswer>(bytes);
        let _ = decode::<VoteRequest<TypeConfig>>(bytes);
        let _ = decode::<SnapshotChunk>(bytes);
        let _ = decode::<ForwardRequest>(bytes);
    }

    fn sample_frames() -> Vec<Vec<u8>> {
        let write = ForwardRequest::Writes(vec![Write::Put {
            key: b"key".to_vec(),
            value: vec![7; 40],
            precondition: None,
        }]);
        let vote: VoteRequest<TypeConfig> = VoteRequest::new(openraft::Vote::new(3, 1), None);
        vec![encode(&write).expect("encode"), encode(&vote).expect("encode")]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_an_error_or_a_message_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_as_every_request(&bytes);
        }

        #[test]
        fn damaged_frames_are_an_error_or_a_message_never_a_panic(
            frame in 0usize..2,
            cut in 0usize..64,
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
        ) {
            let mut bytes = sample_frames()[frame].clone();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            decode_as_every_request(&bytes);
        }
    }

    #[test]
    fn requests_round_trip() {
        let req = ForwardRequest::Writes(vec![Write::Put {
            key: vec![0xff, 0],
            value: vec![1, 2],
            precondition: None,
        }]);
        let back: ForwardRequest = decode(&encode(&req).expect("encode")).expect("decode");
        assert_eq!(back, req);
    }
}
