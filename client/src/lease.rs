//! JSON bodies of `/v1/lease`: leases, etcd's. A lease has a time to live; keys put with it
//! (`PUT /v1/kv/{key}?lease=ID`) are deleted when it is revoked or expires, all at one revision.
//! Only the leader keeps time: keep-alives and time-to-live answers come from it, and a change
//! of leader gives every lease its whole TTL again, never less.

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/lease`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Seconds to live; below the node's minimum (2), the minimum.
    pub ttl: i64,
    /// The id to give it; 0 (or absent): one the node chooses.
    #[serde(default)]
    pub id: i64,
}

/// Answer to `POST /v1/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    pub id: i64,
    /// The TTL granted, in seconds.
    pub ttl: i64,
    pub revision: u64,
}

/// Answer to `DELETE /v1/lease/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// The store's revision after the revoke: the revision its keys were deleted at, if any.
    pub revision: u64,
}

/// Answer to `POST /v1/lease/{id}/keepalive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    pub id: i64,
    /// Seconds to live from now: the TTL it was granted.
    pub ttl: i64,
}

/// Answer to `GET /v1/lease/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    pub id: i64,
    /// Seconds left, rounded up, as the leader counts them.
    pub ttl: i64,
    pub granted_ttl: i64,
    /// With `?keys=true`: the keys attached to it, base64.
    #[serde(default, with = "crate::types::base64_list")]
    pub keys: Vec<Vec<u8>>,
}

/// Answer to `GET /v1/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseListResponse {
    pub leases: Vec<LeaseListed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseListed {
    pub id: i64,
}
