//! The calling side of peer traffic: openraft's network (append, vote, snapshot chunks) and
//! the forwarding of client work to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::PeerToken;
use super::wire::{self, ForwardError, ForwardRequest, ForwardResponse, FrameError};
use crate::types::{Member, NodeId, TypeConfig};

/// Why a peer call failed before the peer could answer it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("peer call to {url} failed: {message}")]
    Network { url: String, message: String },
    /// The peer's storage is not the one the membership knows: it lost its data.
    #[error("peer {url} is a different incarnation than the membership records: {message}")]
    WrongIncarnation { url: String, message: String },
    /// The peer does not accept this member's peer token: not the same cluster.
    #[error("peer {url} refused this member's peer token: {message}")]
    Unauthorized { url: String, message: String },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// An HTTP client for peer listeners, with one keep-alive connection pool for all peers.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
}

impl PeerClient {
    /// A client whose every request presents `token`, if the cluster has one.
    pub fn new(token: Option<&PeerToken>) -> Result<Self, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            // A token is printable ASCII (checked at start), so it is a valid header value.
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&token.header_value()) {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http })
    }

    /// POSTs `request` to `{peer_url}/raft/{path}` of `target` and decodes the peer's `Result`.
    pub async fn call<Req, Resp>(
        &self,
        target: &Member,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let body = wire::encode(request)?;
        let url = format!("{}/raft/{path}", target.peer_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(wire::INCARNATION_HEADER, &target.incarnation)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|source| classify(&url, source))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| classify(&url, source))?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            return Err(PeerError::Unauthorized { url, message });
        }
        if status == reqwest::StatusCode::CONFLICT {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            return Err(PeerError::WrongIncarnation { url, message });
        }
        if !status.is_success() {
            let message = format!("status {status}: {}", String::from_utf8_lossy(&bytes));
            return Err(PeerError::Network { url, message });
        }
        Ok(wire::decode(&bytes)?)
    }

    /// Passes client work to `leader`.
    pub async fn forward(
        &self,
        leader: &Member,
        request: &ForwardRequest,
        timeout: Duration,
    ) -> Result<Result<ForwardResponse, ForwardError>, PeerError> {
        self.call(leader, wire::FORWARD_PATH, request, timeout).await
    }
}

fn classify(url: &str, source: reqwest::Error) -> PeerError {
    if source.is_connect() {
        PeerError::Unreachable { url: url.to_string(), source }
    } else {
        PeerError::Network { url: url.to_string(), message: source.to_string() }
    }
}

/// Which peers answered their last call, so that a peer going down or coming back is logged
/// once, not on every retry.
#[derive(Default)]
struct Reachability {
    unreachable: Mutex<HashMap<NodeId, bool>>,
}

impl Reachability {
    /// Records the outcome of a call; returns whether the peer was reachable before it.
    fn record(&self, target: NodeId, url: &str, reachable: bool) -> bool {
        let Ok(mut states) = self.unreachable.lock() else { return true };
        let was_unreachable = states.insert(target, !reachable).unwrap_or(false);
        match (was_unreachable, reachable) {
            (false, false) => tracing::warn!(peer = target, url, "peer unreachable"),
            (true, true) => tracing::info!(peer = target, url, "peer reachable again"),
            _ => {}
        }
        !was_unreachable
    }
}

/// openraft's view of the peer network: one [`PeerConnection`] per target member.
#[derive(Clone)]
pub struct PeerNetwork {
    client: PeerClient,
    reachability: Arc<Reachability>,
}

impl PeerNetwork {
    pub fn new(client: PeerClient) -> Self {
        Self { client, reachability: Arc::default() }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
            member: node.clone(),
            reachability: self.reachability.clone(),
        }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    member: Member,
    reachability: Arc<Reachability>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Result<Resp, RaftError<NodeId, E>>, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.client.call(&self.member, path, request, option.hard_ttl()).await
    }

    // The error type is openraft's, fixed by the `RaftNetwork` trait.
    #[allow(clippy::result_large_err)]
    fn answer<Resp, E: std::error::Error>(
        &self,
        answer: Result<Result<Resp, RaftError<NodeId, E>>, PeerError>,
    ) -> RpcResult<Resp, E> {
        let reachable = !matches!(
            answer,
            Err(PeerError::Unreachable { .. }
                | PeerError::WrongIncarnation { .. }
                | PeerError::Unauthorized { .. })
        );
        let was_reachable = self.reachability.record(self.target, &self.member.peer_url, reachable);
        match &answer {
            Err(e @ PeerError::WrongIncarnation { .. }) => {
                tracing::debug!(peer = self.target, error = %e, "peer refused: it lost its storage")
            }
            // A configuration error worth an operator's attention, once per outage.
            Err(e @ PeerError::Unauthorized { .. }) if was_reachable => {
                tracing::warn!(peer = self.target, error = %e, "peer refused this member's peer token")
            }
            _ => {}
        }
        let answer = answer.map_err(|e| match e {
            // Unreachable makes openraft back off instead of retrying at full speed; a member
            // that lost its storage, or that is not of this cluster, is as good as unreachable.
            PeerError::Unreachable { .. }
            | PeerError::WrongIncarnation { .. }
            | PeerError::Unauthorized { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        })?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(self.target, self.member.clone(), e))
        })
    }
}

/// Waits between attempts to reach an unreachable peer: short at first, so a member that was
/// restarted is caught up as soon as it listens (openraft's default is a flat 500 ms), then
/// doubling to half a second.
fn reconnect_backoff() -> Backoff {
    let delays = std::iter::successors(Some(Duration::from_millis(25)), |d| Some((*d * 2).min(MAX_BACKOFF)));
    Backoff::new(delays)
}

const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl RaftNetwork<TypeConfig> for PeerConnection {
    fn backoff(&self) -> Backoff {
        reconnect_backoff()
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len() as u64;
        match self.call(wire::APPEND_PATH, &rpc, &option).await {
            // openraft answers by sending fewer entries at a time.
            Err(PeerError::Frame(FrameError::TooLarge(_))) if entries > 1 => {
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)))
            }
            answer => self.answer(answer),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let answer = self.call(wire::SNAPSHOT_PATH, &rpc, &option).await;
        self.answer(answer)
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let answer = self.call(wire::VOTE_PATH, &rpc, &option).await;
        self.answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_peer_is_retried_soon_then_every_half_second() {
        let delays: Vec<u128> = reconnect_backoff().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [25, 50, 100, 200, 400, 500, 500]);
    }
}
