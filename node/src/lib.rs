//! metaStore's storage node: openraft consensus over a RocksDB store, served over HTTP and
//! etcd's v3 gRPC API.
//!
//! - [`auth`]: users, roles and permissions on keys, and the checks (no raft, no RocksDB).
//! - [`engine`]: the key-value engine's rules: records, writes, transactions, revisions (no
//!   raft, no RocksDB, no HTTP).
//! - [`storage`]: the raft log, vote and key-value state machine in one RocksDB instance.
//! - [`raft`]: the member's openraft instance, its configuration and duties around it.
//! - [`network`]: peer traffic (raft RPCs, forwarding to the leader) on the peer listener.
//! - [`lessor`]: when leases expire, as the leader keeps time (no raft, no HTTP).
//! - [`watch`]: watches, replayed from history then live, on any member (no raft, no HTTP).
//! - [`service`]: the store as clients see it on any member: forwarding to the leader, group
//!   commit, linearizable reads, membership rules, bootstrap. Front ends go through it.
//! - [`api`]: the client HTTP API.
//! - [`grpc`]: etcd's v3 gRPC API, beside the HTTP API on the client port.
//! - [`listener`]: serving HTTP/1.1 and HTTP/2 within connection and header-time limits.
//! - [`server`]: starting, bootstrapping and stopping a member.
//! - [`cli`]: the `metastore` command line.

// The etcd API's membership calls nest the service layer's futures deeply.
#![recursion_limit = "256"]

/// This build's release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod lessor;
pub mod listener;
pub mod metrics;
pub mod network;
pub mod raft;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;
pub mod types;
pub mod watch;
