use std::time::Duration;

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ClientError};
use crate::lease::*;
use crate::tls::{ClientTls, TlsError};
use crate::txn::{TxnRequest, TxnResponse};
use crate::types::*;
use crate::ErrorCode;

/// Bytes left as they are in a key's URL path segment or query value (RFC 3986
/// "unreserved"); every other byte is percent-encoded, so keys may be any bytes.
pub(crate) const KEY_ESCAPES: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// Whatever the answering member has applied; no round trip to the leader.
    Stale,
}

impl Consistency {
    fn as_query(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// A condition a write requires of the key's current state (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key's current mod revision must be this one.
    ModRevision(u64),
}

impl Precondition {
    fn as_query(self) -> (&'static str, String) {
        match self {
            Precondition::Absent => ("if_absent", "true".to_string()),
            Precondition::ModRevision(rev) => ("if_mod_revision", rev.to_string()),
        }
    }
}

/// A range (listing) request: either a prefix, or a `[start, end)` interval. Keys are bytes.
#[derive(Debug, Clone, Default)]
pub struct RangeRequest {
    pub prefix: Option<Vec<u8>>,
    pub start: Option<Vec<u8>>,
    pub end: Option<Vec<u8>>,
    pub limit: Option<usize>,
    pub consistency: Consistency,
    /// List the keys as of this revision (the current one when `None`).
    pub revision: Option<u64>,
}

/// A connection pool with the timeouts of [`Client`]'s calls.
fn http_client(tls: &ClientTls) -> Result<reqwest::Client, TlsError> {
    crate::tls::http(Some(tls))?
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// An async client for one metaStore node's client API.
///
/// Any member serves every request: writes and linearizable reads sent to a follower are
/// forwarded to the leader by the node itself.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The cluster's peer token, presented on membership changes (see [`Client::with_token`]).
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: clients end up in logs.
        f.debug_struct("Client").field("base", &self.base).field("token", &self.token.is_some()).finish()
    }
}

impl Client {
    /// A client for the node at `base_url`, e.g. `http://127.0.0.1:12380`.
    /// Over https, the node's certificate must come from one of the system's trusted roots;
    /// [`Client::with_tls`] names the CA.
    pub fn new(base_url: impl Into<String>) -> Self {
        // The system's roots never fail to load (without them nothing is trusted), so neither
        // does this; plain http is kept working whatever happens.
        let http = http_client(&ClientTls::default()).unwrap_or_else(|_| crate::tls::default_http());
        Self::with_http(base_url, http)
    }

    /// A client for the node at `base_url` (`https://...`), trusting and presenting what `tls`
    /// names.
    pub fn with_tls(base_url: impl Into<String>, tls: &ClientTls) -> Result<Self, TlsError> {
        Ok(Self::with_http(base_url, http_client(tls)?))
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        let base = base_url.into().trim_end_matches('/').to_string();
        Self { base, http, token: None }
    }

    /// Presents `token` on membership changes (init, add, promote, remove) and snapshots,
    /// which members started with a peer token refuse without it.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A membership request, carrying the token if there is one.
    pub(crate) fn admin(&self, method: Method, url: &str) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(token) => req.bearer_auth(token.trim()),
            None => req,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn key_url(&self, key: &[u8]) -> String {
        format!("{}/v1/kv/{}", self.base, percent_encode(key, KEY_ESCAPES))
    }

    /// Reads one key; `Ok(None)` when it does not exist.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        self.get_at(key, consistency, None).await
    }

    /// Reads one key as of `revision` (the current one when `None`); `Ok(None)` when it did not
    /// exist then. A revision beyond the store's answers `future_revision`, one below its
    /// compaction revision `compacted`.
    pub async fn get_at(
        &self,
        key: impl AsRef<[u8]>,
        consistency: Consistency,
        revision: Option<u64>,
    ) -> Result<Option<KeyValue>, ClientError> {
        let url = self.key_url(key.as_ref());
        let mut req = self.http.get(&url).query(&[("consistency", consistency.as_query())]);
        if let Some(revision) = revision {
            req = req.query(&[("revision", revision)]);
        }
        match self.send_json::<KeyValue>(&url, req).await {
            Ok(kv) => Ok(Some(kv)),
            Err(ClientError::Api(e)) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one key; fails with status 409 when `precondition` does not hold.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        precondition: Option<Precondition>,
    ) -> Result<PutResponse, ClientError> {
        let url = self.key_url(key.as_ref());
        let mut req = self.http.put(&url).body(value.into());
        if let Some(p) = precondition {
            req = req.query(&[p.as_query()]);
        }
        self.send_json(&url, req).await
    }

    /// Deletes one key; fails with status 409 when `precondition` does not hold.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        precondition: Option<Precondition>,
    ) -> Result<DeleteResponse, ClientError> {
        let url = self.key_url(key.as_ref());
        let mut req = self.http.delete(&url);
        if let Some(p) = precondition {
            req = req.query(&[p.as_query()]);
        }
        self.send_json(&url, req).await
    }

    /// Lists keys in order.
    pub async fn range(&self, range: &RangeRequest) -> Result<RangeResponse, ClientError> {
        let mut url = format!("{}/v1/kv?consistency={}", self.base, range.consistency.as_query());
        for (name, bytes) in [("prefix", &range.prefix), ("start", &range.start), ("end", &range.end)] {
            if let Some(bytes) = bytes {
                url.push_str(&format!("&{name}={}", percent_encode(bytes, KEY_ESCAPES)));
            }
        }
        if let Some(l) = range.limit {
            url.push_str(&format!("&limit={l}"));
        }
        if let Some(revision) = range.revision {
            url.push_str(&format!("&revision={revision}"));
        }
        let req = self.http.get(&url);
        self.send_json(&url, req).await
    }

    /// Forgets history below `revision`; fails with `future_revision` above the store's
    /// revision and `compacted` at or below the compaction revision.
    pub async fn compact(&self, revision: u64) -> Result<CompactResponse, ClientError> {
        let url = format!("{}/v1/compact", self.base);
        let req = self.http.post(&url).json(&CompactRequest { revision });
        self.send_json(&url, req).await
    }

    /// Applies a transaction: its `success` operations if every compare holds, else its
    /// `failure` ones; atomically, at one revision.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, ClientError> {
        let url = format!("{}/v1/txn", self.base);
        let req = self.http.post(&url).json(txn);
        self.send_json(&url, req).await
    }

    /// Writes one key attached to lease `lease`: it goes when the lease does. Fails with 404
    /// `lease_not_found` when there is no such lease.
    pub async fn put_leased(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<PutResponse, ClientError> {
        let url = self.key_url(key.as_ref());
        let req = self.http.put(&url).query(&[("lease", lease)]).body(value.into());
        self.send_json(&url, req).await
    }

    /// Grants a lease of `ttl` seconds, its id chosen by the node.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, ClientError> {
        let url = format!("{}/v1/lease", self.base);
        let req = self.http.post(&url).json(&LeaseGrantRequest { ttl, id: 0 });
        self.send_json(&url, req).await
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        let url = format!("{}/v1/lease/{id}", self.base);
        let req = self.http.delete(&url);
        self.send_json(&url, req).await
    }

    /// Starts a lease's TTL again: call it well within the TTL to keep the lease.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        let url = format!("{}/v1/lease/{id}/keepalive", self.base);
        let req = self.http.post(&url);
        self.send_json(&url, req).await
    }

    /// A lease's time left and, with `keys`, the keys attached to it.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        let url = format!("{}/v1/lease/{id}?keys={keys}", self.base);
        let req = self.http.get(&url);
        self.send_json(&url, req).await
    }

    /// Every lease.
    pub async fn leases(&self) -> Result<LeaseListResponse, ClientError> {
        let url = format!("{}/v1/lease", self.base);
        let req = self.http.get(&url);
        self.send_json(&url, req).await
    }

    /// What the answering member knows about the cluster.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        let url = format!("{}/v1/cluster", self.base);
        let req = self.http.get(&url);
        self.send_json(&url, req).await
    }

    /// Initializes a new cluster on this (empty) node: of itself alone when `members` is empty.
    pub async fn init(&self, members: Vec<AddMemberRequest>) -> Result<MembershipResponse, ClientError> {
        let url = format!("{}/v1/cluster/init", self.base);
        let req = self.admin(Method::POST, &url).json(&InitRequest { members });
        self.send_json(&url, req).await
    }

    /// Adds a member as a learner; returns once it has caught up with the leader's log.
    pub async fn add_learner(&self, member: &AddMemberRequest) -> Result<MembershipResponse, ClientError> {
        let url = format!("{}/v1/cluster/members", self.base);
        let req = self.admin(Method::POST, &url).json(member);
        self.send_json(&url, req).await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<MembershipResponse, ClientError> {
        let url = format!("{}/v1/cluster/members/{id}/promote", self.base);
        let req = self.admin(Method::POST, &url);
        self.send_json(&url, req).await
    }

    /// Hands leadership to voter `id`; asked of the leader, it returns once `id` leads.
    pub async fn transfer_leadership(&self, id: u64) -> Result<TransferLeaderResponse, ClientError> {
        let url = format!("{}/v1/cluster/leader", self.base);
        let req = self.admin(Method::POST, &url).json(&TransferLeaderRequest { id });
        self.send_json(&url, req).await
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipResponse, ClientError> {
        let url = format!("{}/v1/cluster/members/{id}", self.base);
        let req = self.admin(Method::DELETE, &url);
        self.send_json(&url, req).await
    }

    /// True when the node reports ready: it has a leader and has applied what is committed.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        let url = format!("{}/readyz", self.base);
        let resp = self.send(&url, self.http.get(&url)).await?;
        Ok(resp.status().is_success())
    }

    async fn send(&self, url: &str, req: RequestBuilder) -> Result<Response, ClientError> {
        req.send().await.map_err(|source| ClientError::Transport { url: url.to_string(), source })
    }

    async fn send_json<T: DeserializeOwned>(&self, url: &str, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(url, req).await?;
        let status = resp.status();
        let body =
            resp.bytes().await.map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
                url: url.to_string(),
                message: format!("status {status}: {e}"),
            });
        }
        Err(ClientError::Api(decode_error(status, &body)))
    }
}

pub(crate) fn decode_error(status: StatusCode, body: &[u8]) -> ApiError {
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
        // Not one of the node's answers (a proxy's, say): kept as the code nobody sends.
        error: ErrorCode::Other("http_error".into()),
        message: String::from_utf8_lossy(body).into_owned(),
    });
    ApiError { status: status.as_u16(), body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_into_one_path_segment() {
        let c = Client::new("http://n:1/");
        assert_eq!(c.key_url(b"a/b c?%"), "http://n:1/v1/kv/a%2Fb%20c%3F%25");
        assert_eq!(c.key_url(b"plain-key_1.x~"), "http://n:1/v1/kv/plain-key_1.x~");
        assert_eq!(c.key_url(b"\xff\x00"), "http://n:1/v1/kv/%FF%00");
    }
}
