//! Peer traffic: raft RPCs and requests forwarded to the leader, over HTTP on the member's peer
//! listener (the `--cluster` URL), never on the client port.
//!
//! Every body is postcard-encoded (compact, no JSON on the peer path), and every answer is a
//! postcard `Result` so that errors cross the wire typed. Connections are pooled keep-alive.
//! Log replication and heartbeats run on append streams instead ([`append_stream`]): HTTP
//! connections upgraded to carry pipelined requests one frame each. With a peer token
//! configured, every request (and every upgrade) carries it and every member demands it.

mod append_stream;
mod auth;
mod client;
mod server;
mod snapshot;
pub mod wire;

pub use auth::{PeerToken, TokenError};
pub use client::{MemberDirectory, PeerClient, PeerError, PeerNetwork};
pub use server::{refuses_votes_until, routes, LeaderWork, RaftRpcs};
pub use snapshot::SnapshotReceiver;
