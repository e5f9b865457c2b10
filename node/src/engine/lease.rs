//! Leases: a time to live that keys are attached to. Granting, revoking and attaching are
//! writes like any other, applied alike on every member; revoking one deletes its keys, all at
//! one revision. When a lease expires is not decided here: only the leader keeps time, and it
//! revokes what expired with an ordinary revoke (see `crate::lessor`).

use serde::{Deserialize, Serialize};

/// Longest time to live a lease may be granted, in seconds (etcd's limit).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The time to live it was granted, in seconds.
    pub ttl: i64,
    /// Tells this grant of the id from any other (an id may be granted again once revoked):
    /// chosen with the grant, so the leader's expiry of one never revokes the next.
    pub grant: u64,
}

/// Why a write could not apply: decided the same on every member, and nothing of the write
/// took effect. The messages are etcd's, without its `etcdserver: ` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("requested lease not found")]
    LeaseNotFound(i64),
    #[error("lease already exists")]
    LeaseExists(i64),
    /// The caller's grants do not allow the write ([`crate::auth`]).
    #[error(transparent)]
    Denied(#[from] crate::auth::AuthError),
}
