//! Peer traffic: raft RPCs and requests forwarded to the leader, over HTTP on the member's peer
//! listener (the `--cluster` URL), never on the client port.
//!
//! Every body is postcard-encoded (compact, no JSON on the peer path), and every answer is a
//! postcard `Result` so that errors cross the wire typed. Connections are pooled keep-alive.

mod client;
mod server;
pub mod wire;

pub use client::{PeerClient, PeerError, PeerNetwork};
pub use server::routes;
