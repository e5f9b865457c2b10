//! The client side of metaStore's HTTP API.
//!
//! This crate is the one place the wire types live: the node serves them, and the operator, the
//! tests and the benchmarks consume them through [`Client`], so the API cannot drift between them.

mod client;
mod code;
mod error;
pub mod lease;
pub mod quorum;
pub mod seal;
mod snapshot;
pub mod tls;
pub mod txn;
pub mod types;
pub mod watch;

pub use client::{Client, Consistency, Precondition, RangeRequest};
pub use code::ErrorCode;
pub use error::{ApiError, ClientError};
pub use lease::*;
pub use snapshot::{SnapshotDownload, SNAPSHOT_CLUSTER_ID_HEADER, SNAPSHOT_REVISION_HEADER};
pub use txn::*;
pub use types::*;
pub use watch::{EventKind, Watch, WatchEvent, WatchRequest, WatchResponse};

/// The revision of a store nothing was ever written to: 1, as etcd's, so the first write is
/// revision 2. Kubernetes depends on it (resourceVersion 0 means "any version" to it).
pub const EMPTY_STORE_REVISION: u64 = 1;
