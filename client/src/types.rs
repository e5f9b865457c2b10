//! JSON bodies of the `/v1` API.
//!
//! Keys and values are arbitrary bytes, so JSON carries them base64-encoded (standard alphabet,
//! padded), as etcd's JSON gateway does. In URL paths and query parameters keys are
//! percent-encoded.

use serde::{Deserialize, Serialize};

/// Largest key the API accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value the API accepts, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most entries one range request returns.
pub const MAX_RANGE_LIMIT: usize = 10_000;
/// Most bytes of keys and values one range page carries; a page stops early (with `more` and
/// `next_key`) rather than exceed it, but always holds at least one entry.
pub const MAX_RANGE_BYTES: usize = 8 * 1024 * 1024;

/// One key with its value and per-key metadata.
///
/// Revisions are etcd's: the store's revision rises by one with every write that changes a key
/// (a put, a delete that deleted something), so a larger revision always means a later write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since the key was created; 1 after the first.
    pub version: u64,
    /// The lease the key is attached to; 0 for none.
    #[serde(default)]
    pub lease: i64,
}

/// Answer to a `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The revision of this write: the store's revision once it applied.
    pub revision: u64,
    /// The key as it was before this write, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A `POST /v1/compact`: forget history below `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    pub revision: u64,
}

/// Answer to a `POST /v1/compact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResponse {
    /// The compaction revision now in effect: reads below it answer `compacted`.
    pub compacted: u64,
}

/// Answer to a `DELETE /v1/kv/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The store's revision after the delete.
    pub revision: u64,
    /// Whether a key was removed.
    pub deleted: bool,
    /// The key as it was before the delete, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Answer to a `GET /v1/kv?...` range request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Matching keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the listing short; continue from `next_key`.
    pub more: bool,
    /// The first key not returned, when `more` is true.
    #[serde(with = "base64_opt_bytes", default)]
    pub next_key: Option<Vec<u8>>,
    /// The store's revision the listing was read at.
    pub revision: u64,
}

/// A member's role in the raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Voter,
    Learner,
}

/// One member of the cluster, as the raft membership records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub role: MemberRole,
    pub peer_url: String,
    /// Empty when the member was configured statically without one.
    pub client_url: String,
    /// The storage incarnation peers address it by; empty while unknown.
    pub incarnation: String,
}

/// Answer to `GET /v1/cluster`: what this member knows about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's id, in hexadecimal as etcdctl prints it: the same on every member of one
    /// cluster, and new for a cluster restored from a backup.
    #[serde(default)]
    pub cluster_id: String,
    /// The member answering.
    pub member_id: u64,
    /// The release the answering member runs (empty from a member older than the field).
    #[serde(default)]
    pub version: String,
    /// The identity of the answering member's storage; changes when its data is lost.
    pub incarnation: String,
    /// The leader this member currently follows, if any.
    pub leader_id: Option<u64>,
    pub term: u64,
    /// The member's own raft state: leader, follower, candidate, learner or shutdown.
    pub state: String,
    pub initialized: bool,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last log index covered by this member's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Log entries up to this index have been removed behind a snapshot.
    pub purged_index: Option<u64>,
    /// Per member: the last log index known to be replicated there (leader only).
    pub replication: Option<Vec<ReplicationStatus>>,
    pub members: Vec<MemberStatus>,
}

/// Body of `POST /v1/cluster/leader`, asked of the leader: hand leadership to voter `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    pub id: u64,
}

/// Answer of `POST /v1/cluster/leader`: the member that leads now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderResponse {
    pub leader_id: u64,
}

/// How far the leader knows a member's log to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    pub id: u64,
    pub matched_index: Option<u64>,
}

/// Body of `POST /v1/cluster/members`: a new member, added as a learner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    pub id: u64,
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
    /// The new member's storage identity (from its `/v1/cluster`). When given, peers talk to
    /// that incarnation only: if the member later loses its data it is refused, not trusted.
    #[serde(default)]
    pub incarnation: String,
}

/// Body of `POST /v1/cluster/init` (optional): the members to start the cluster with.
/// Without a body, the node initializes a single-member cluster of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    #[serde(default)]
    pub members: Vec<AddMemberRequest>,
}

/// Answer to a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResponse {
    /// Log index at which the change committed.
    pub revision: u64,
    pub members: Vec<MemberStatus>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `key_not_found`, `compare_failed`, `no_leader`.
    pub error: crate::ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// Serde adapter: `Vec<u8>` as a standard base64 string.
pub mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: `Vec<Vec<u8>>` as a list of standard base64 strings.
pub mod base64_list {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(list.len()))?;
        for bytes in list {
            seq.serialize_element(&STANDARD.encode(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts.iter().map(|t| STANDARD.decode(t.as_bytes()).map_err(serde::de::Error::custom)).collect()
    }
}

/// Serde adapter: `Option<Vec<u8>>` as a standard base64 string or null.
pub mod base64_opt_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        text.map(|t| STANDARD.decode(t.as_bytes()).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_travel_as_base64_and_back() {
        let kv = KeyValue {
            key: vec![b'a', 0xff],
            value: vec![0, 255, b'x'],
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            lease: 0,
        };
        let json = serde_json::to_value(&kv).expect("serialize");
        assert_eq!(json["key"], "Yf8=");
        assert_eq!(json["value"], "AP94");
        let back: KeyValue = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, kv);
    }

    #[test]
    fn malformed_base64_is_rejected() {
        let json = r#"{"key":"YQ==","value":"***","create_revision":1,"mod_revision":1,"version":1}"#;
        assert!(serde_json::from_str::<KeyValue>(json).is_err());
    }

    #[test]
    fn a_listing_names_the_next_key_as_base64_or_null() {
        let page = RangeResponse { kvs: vec![], more: true, next_key: Some(vec![0xfe]), revision: 9 };
        let json = serde_json::to_value(&page).expect("serialize");
        assert_eq!(json["next_key"], "/g==");
        assert_eq!(serde_json::from_value::<RangeResponse>(json).expect("deserialize"), page);
        let last = RangeResponse { kvs: vec![], more: false, next_key: None, revision: 9 };
        let json = serde_json::to_value(&last).expect("serialize");
        assert!(json["next_key"].is_null());
        assert_eq!(serde_json::from_value::<RangeResponse>(json).expect("deserialize"), last);
    }
}

/// `POST /v1/auth/authenticate`: a user's name and password, for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

/// A token to present as `Token: <token>` (or `Authorization: <token>`) with later requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    pub token: String,
}
