//! Peer traffic: raft RPCs and requests forwarded to the leader, over HTTP on the member's peer
//! listener (the `--cluster` URL), never on the client port.
//!
//! Every body is postcard-encoded (compact, no JSON on the peer path), and every answer is a
//! postcard `Result` so that errors cross the wire typed. Connections are pooled keep-alive.
//! With a peer token configured, every request carries it and every member demands it.

mod auth;
mod client;
mod server;
mod snapshot;
pub mod wire;

pub use auth::{PeerToken, TokenError};
pub use client::{MemberDirectory, PeerClient, PeerError, PeerNetwork};
pub use server::{refuses_votes_until, routes, RaftRpcs};
pub use snapshot::SnapshotReceiver;
