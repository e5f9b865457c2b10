//! The calling side of peer traffic: openraft's network (append, vote, snapshots in pieces) and
//! the forwarding of client work to the leader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::append_stream::{self, AppendStream, StreamError};
use super::auth::PeerToken;
use super::wire::{
    self, ForwardError, ForwardRequest, ForwardResponse, FrameError, SnapshotAck, SnapshotChunk,
    SnapshotRefused,
};
use crate::storage::Snapshot;
use crate::types::{Member, NodeId, TypeConfig, Vote};

/// Why a peer call failed before the peer could answer it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} is unreachable: {reason}")]
    Unreachable {
        url: String,
        /// The whole chain of causes: a refused TLS handshake says why only at its end.
        reason: String,
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
    #[error("cannot read the snapshot to send: {0}")]
    SnapshotFile(#[source] std::io::Error),
}

/// An HTTP client for peer listeners, with one keep-alive connection pool for all peers.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
}

impl PeerClient {
    /// A client whose every request presents `token`, if the cluster has one, and that speaks
    /// to https:// peers as `tls` says (their URLs say which; plain when `None`).
    pub fn new(token: Option<&PeerToken>, tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            // A token is printable ASCII (checked at start), so it is a valid header value.
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&token.header_value()) {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        // Without peer TLS, https:// peers are refused: nothing is trusted.
        // With it, never http://: the token would cross the network in clear text.
        let https_only = tls.is_some();
        let tls = tls.unwrap_or_else(metastore_client::tls::trusting_nothing);
        let http = metastore_client::tls::http_with(tls)
            .https_only(https_only)
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
        if !status.is_success() {
            return Err(refusal(url, status, &bytes));
        }
        Ok(wire::decode(&bytes)?)
    }

    /// Opens an append stream to `target` (see [`super::append_stream`]). `Ok(None)` if the
    /// peer does not offer them: it runs an earlier version, and gets one request per append.
    pub async fn open_stream(
        &self,
        target: &Member,
        timeout: Duration,
    ) -> Result<Option<AppendStream>, PeerError> {
        let url = format!("{}/raft/{}", target.peer_url.trim_end_matches('/'), wire::APPEND_STREAM_PATH);
        let request = self
            .http
            .post(&url)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, wire::APPEND_STREAM_PROTOCOL)
            .header(wire::INCARNATION_HEADER, &target.incarnation)
            // Peer listeners want a length, even of nothing (an earlier version's too, which
            // must answer 404 here).
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send();
        // Not reqwest's own timeout, which would go on bounding the stream once upgraded.
        let response = match tokio::time::timeout(timeout, request).await {
            Ok(sent) => sent.map_err(|source| classify(&url, source))?,
            Err(_) => {
                return Err(PeerError::Network { url, message: format!("no answer within {timeout:?}") })
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = response.upgrade().await.map_err(|source| classify(&url, source))?;
            return Ok(Some(AppendStream::new(upgraded)));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(|source| classify(&url, source))?;
        Err(refusal(url, status, &bytes))
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

/// The append stream a connection keeps between sessions (see `PeerConnection::stream`).
fn kept(stream: &mut Mutex<Option<AppendStream>>) -> &mut Option<AppendStream> {
    stream.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How openraft should treat an append stream that ended early: like a peer that is down if
/// its raft has stopped, else like a call that failed (it starts a new stream at once).
fn stream_failure(e: StreamError) -> RPCError<TypeConfig> {
    match e {
        StreamError::Stopped(_) => RPCError::Unreachable(Unreachable::new(&e)),
        e => RPCError::Network(NetworkError::new(&e)),
    }
}

/// What a peer's answer with an unsuccessful `status` means.
fn refusal(url: String, status: reqwest::StatusCode, body: &[u8]) -> PeerError {
    let message = String::from_utf8_lossy(body).into_owned();
    match status {
        reqwest::StatusCode::UNAUTHORIZED => PeerError::Unauthorized { url, message },
        reqwest::StatusCode::CONFLICT => PeerError::WrongIncarnation { url, message },
        _ => PeerError::Network { url, message: format!("status {status}: {message}") },
    }
}

fn classify(url: &str, source: reqwest::Error) -> PeerError {
    let reason = causes(&source);
    if source.is_connect() {
        PeerError::Unreachable { url: url.to_string(), reason, source }
    } else {
        PeerError::Network { url: url.to_string(), message: reason }
    }
}

/// An error and every cause beneath it, one line.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// Which peers answered their last call, so that a peer going down or coming back is logged
/// once, not on every retry.
#[derive(Default)]
struct Reachability {
    unreachable: Mutex<HashMap<NodeId, bool>>,
}

impl Reachability {
    /// Records the outcome of a call; returns whether the peer was reachable before it.
    fn record(&self, target: NodeId, url: &str, failure: Option<&PeerError>) -> bool {
        let reachable = failure.is_none();
        let Ok(mut states) = self.unreachable.lock() else { return true };
        let was_unreachable = states.insert(target, !reachable).unwrap_or(false);
        match (was_unreachable, failure) {
            (false, Some(e)) => tracing::warn!(peer = target, url, error = %e, "peer unreachable"),
            (true, None) => tracing::info!(peer = target, url, "peer reachable again"),
            _ => {}
        }
        !was_unreachable
    }
}

/// The members as the latest membership records them.
///
/// openraft 0.10 keeps a replication stream, and the connection it was made with, when a
/// membership change leaves its target in place; the member record it was given then goes
/// stale. A connection looks its target up here on every call instead, so that a member's
/// newly recorded storage incarnation is demanded at once (0.9 made new connections on every
/// membership change).
#[derive(Clone, Default)]
pub struct MemberDirectory {
    members: Arc<Mutex<HashMap<NodeId, Member>>>,
}

impl MemberDirectory {
    fn get(&self, id: NodeId) -> Option<Member> {
        self.members.lock().ok()?.get(&id).cloned()
    }

    fn replace(&self, members: HashMap<NodeId, Member>) {
        if let Ok(mut current) = self.members.lock() {
            *current = members;
        }
    }

    /// Keeps the directory equal to `raft`'s effective membership, until raft stops.
    pub async fn follow(self, raft: crate::raft::Raft) {
        use openraft::async_runtime::WatchReceiver;
        let mut metrics = raft.metrics();
        loop {
            let members = {
                let m = metrics.borrow_and_update();
                m.membership_config.membership().nodes().map(|(id, member)| (*id, member.clone())).collect()
            };
            self.replace(members);
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

/// openraft's view of the peer network: one [`PeerConnection`] per target member.
#[derive(Clone)]
pub struct PeerNetwork {
    client: PeerClient,
    reachability: Arc<Reachability>,
    directory: MemberDirectory,
}

impl PeerNetwork {
    pub fn new(client: PeerClient) -> Self {
        Self { client, reachability: Arc::default(), directory: MemberDirectory::default() }
    }

    /// The directory its connections look their targets up in; see [`MemberDirectory::follow`].
    pub fn directory(&self) -> MemberDirectory {
        self.directory.clone()
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
            directory: self.directory.clone(),
            stream: Mutex::default(),
            stream_opened_for: None,
            streams_offered: true,
        }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    /// The target as recorded when the connection was made; see [`MemberDirectory`].
    member: Member,
    reachability: Arc<Reachability>,
    directory: MemberDirectory,
    /// The append stream kept between sessions... (in a mutex only because openraft wants a
    /// connection `Sync`: it is reached through `&mut self`, never locked.)
    stream: Mutex<Option<AppendStream>>,
    /// ...and the target's record when it was opened.
    stream_opened_for: Option<Member>,
    /// False once the target answered that it has no append streams (an earlier version).
    streams_offered: bool,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

impl PeerConnection {
    /// The target as the membership records it now.
    fn member(&self) -> Member {
        self.directory.get(self.target).unwrap_or_else(|| self.member.clone())
    }

    async fn call<Req, Resp>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, RaftError<TypeConfig>>, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        self.client.call(&self.member(), path, request, timeout).await
    }

    /// Records whether the peer answered, logging changes once, and says how openraft should
    /// treat a failure to reach it.
    fn failure(&self, answer: Result<(), &PeerError>) -> Option<Unreachable<TypeConfig>> {
        let unreachable = answer.err().filter(|e| {
            matches!(
                e,
                PeerError::Unreachable { .. }
                    | PeerError::WrongIncarnation { .. }
                    | PeerError::Unauthorized { .. }
            )
        });
        let was_reachable = self.reachability.record(self.target, &self.member().peer_url, unreachable);
        match answer {
            Ok(()) => None,
            Err(e @ PeerError::WrongIncarnation { .. }) => {
                tracing::debug!(peer = self.target, error = %e, "peer refused: it lost its storage");
                Some(Unreachable::new(e))
            }
            // A configuration error worth an operator's attention, once per outage.
            Err(e @ PeerError::Unauthorized { .. }) => {
                if was_reachable {
                    tracing::warn!(peer = self.target, error = %e, "peer refused this member's peer token")
                }
                Some(Unreachable::new(e))
            }
            // Unreachable makes openraft back off instead of retrying at full speed; a member
            // that lost its storage, or that is not of this cluster, is as good as unreachable.
            Err(e @ PeerError::Unreachable { .. }) => Some(Unreachable::new(e)),
            Err(_) => None,
        }
    }

    fn answer<Resp>(
        &self,
        answer: Result<Result<Resp, RaftError<TypeConfig>>, PeerError>,
    ) -> RpcResult<Resp> {
        match answer {
            Ok(Ok(response)) => {
                self.failure(Ok(()));
                Ok(response)
            }
            // The peer's raft has stopped (it is shutting down, or its storage failed): nothing
            // to do but wait for it, like for a peer that is down.
            Ok(Err(e)) => {
                self.failure(Ok(()));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(self.call_failed(&e)),
        }
    }

    /// Records that a call to the peer failed and says what openraft should make of it.
    fn call_failed(&self, e: &PeerError) -> RPCError<TypeConfig> {
        match self.failure(Err(e)) {
            Some(unreachable) => RPCError::Unreachable(unreachable),
            None => RPCError::Network(NetworkError::new(e)),
        }
    }

    /// The append stream to run the next session on: the one kept from the last session if it
    /// is fresh and the target's record has not changed since, or a new one. `None` if the
    /// target does not offer streams. A failure to open one is the caller's to record.
    async fn append_stream(&mut self, timeout: Duration) -> Result<Option<AppendStream>, PeerError> {
        let member = self.member();
        if let Some(stream) = kept(&mut self.stream).take() {
            if self.stream_opened_for.as_ref() == Some(&member) && stream.is_fresh() {
                return Ok(Some(stream));
            }
        }
        let opened = self.client.open_stream(&member, timeout).await;
        self.stream_opened_for = Some(member);
        if opened.is_ok() {
            self.failure(Ok(()));
        }
        if let Ok(None) = opened {
            tracing::info!(peer = self.target, "peer has no append streams: one request per append");
            self.streams_offered = false;
        }
        opened
    }

    /// Sends `snapshot` piece by piece as it is read; the last piece's answer is the peer's.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
        timeout: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let Snapshot { meta, snapshot } = snapshot;
        let unreadable = |e| StreamingError::Network(NetworkError::new(&PeerError::SnapshotFile(e)));
        let mut pieces = snapshot.pieces(crate::storage::PIECE_BYTES).await;
        let transfer = transfer_id();
        let mut offset = 0u64;
        loop {
            let (data, done) = match pieces.recv().await {
                Some(Ok(piece)) => (piece.data, piece.last),
                Some(Err(e)) => return Err(unreadable(std::io::Error::other(e))),
                None => {
                    return Err(unreadable(std::io::Error::other(
                        "the snapshot ended without its last piece",
                    )))
                }
            };
            let sent = data.len() as u64;
            let chunk = SnapshotChunk { vote, meta: meta.clone(), transfer, offset, data, done };
            // The last piece is answered once the snapshot is installed, which reads it through
            // and loads it: time in proportion to its size, known by then.
            let timeout = if done { timeout + install_time(offset + sent) } else { timeout };
            let answer: Result<Result<SnapshotAck, SnapshotRefused>, PeerError> =
                self.client.call(&self.member(), wire::SNAPSHOT_PATH, &chunk, timeout).await;
            let failure = self.failure(answer.as_ref().map(|_| ()));
            match answer {
                Ok(Ok(SnapshotAck::Finished(response))) => return Ok(response),
                Ok(Ok(SnapshotAck::Received)) if !done => offset += sent,
                Ok(Ok(SnapshotAck::Received)) => {
                    let e = SnapshotRefused("the last piece was not answered with the outcome".into());
                    return Err(StreamingError::Network(NetworkError::new(&e)));
                }
                Ok(Err(refused)) => return Err(StreamingError::Network(NetworkError::new(&refused))),
                Err(e) => {
                    return Err(match failure {
                        Some(unreachable) => StreamingError::Unreachable(unreachable),
                        None => StreamingError::Network(NetworkError::new(&e)),
                    })
                }
            }
        }
    }
}

/// What installing a snapshot of `len` bytes may take beyond an ordinary piece's round trip. A
/// 277 MB snapshot (a million keys) installs in under 4 s here; this allows for a disk half as
/// fast. The receiving listener's `--request-timeout-ms` (60 s) bounds it too.
fn install_time(len: u64) -> Duration {
    const BYTES_PER_SECOND: u64 = 32 * 1024 * 1024;
    Duration::from_secs(len / BYTES_PER_SECOND)
}

/// Differs between transfers: a retried transfer is never mistaken for the rest of an aborted one.
fn transfer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.finish()
}

/// Waits between attempts to reach an unreachable peer: short at first, so a member that was
/// restarted is caught up as soon as it listens (openraft's default starts at 200 ms), then
/// doubling to half a second.
fn reconnect_backoff() -> Backoff {
    let delays = std::iter::successors(Some(Duration::from_millis(25)), |d| Some((*d * 2).min(MAX_BACKOFF)));
    Backoff::new(delays)
}

const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = crate::storage::SnapshotData;

    fn backoff(&self) -> Option<Backoff> {
        Some(reconnect_backoff())
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        // Entries that do not fit in one frame: send the first half, until a part fits, and tell
        // openraft how far it got; it sends the rest next.
        let requested = rpc.entries.len();
        loop {
            let answer = self.call(wire::APPEND_PATH, &rpc, option.hard_ttl()).await;
            match answer {
                Err(PeerError::Frame(FrameError::TooLarge(_))) if rpc.entries.len() > 1 => {
                    let keep = rpc.entries.len() / 2;
                    rpc.entries.truncate(keep);
                }
                answer => {
                    let response = self.answer(answer)?;
                    return Ok(match (response, rpc.entries.last()) {
                        (AppendEntriesResponse::Success, Some(last)) if rpc.entries.len() < requested => {
                            AppendEntriesResponse::PartialSuccess(Some(last.log_id))
                        }
                        (response, _) => response,
                    });
                }
            }
        }
    }

    /// Sends the session's requests on an append stream (see [`append_stream`]); with a peer
    /// that has none, one request per append.
    fn stream_append<'s, S>(
        &'s mut self,
        requests: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            if !self.streams_offered {
                return stream_append_sequential(self, requests, option).await;
            }
            let stream = match self.append_stream(option.soft_ttl()).await {
                Ok(Some(stream)) => stream,
                Ok(None) => return stream_append_sequential(self, requests, option).await,
                Err(e) => return Err(self.call_failed(&e)),
            };
            let ttl = option.hard_ttl();
            let answers = append_stream::session(
                stream,
                requests,
                ttl,
                append_stream::PIPELINE,
                kept(&mut self.stream),
            );
            Ok(Box::pin(answers.map(|answer| answer.map_err(stream_failure))) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        let answer = self.call(wire::VOTE_PATH, &rpc, option.hard_ttl()).await;
        self.answer(answer)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        let answer = self.call(wire::TRANSFER_LEADER_PATH, &req, option.hard_ttl()).await;
        self.answer(answer)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.send_snapshot(vote, snapshot, option.hard_ttl()) => sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_snapshot_piece_gets_time_to_install_in_proportion_to_size() {
        assert_eq!(install_time(4 * 1024 * 1024), Duration::ZERO);
        assert_eq!(install_time(277_000_000), Duration::from_secs(8));
    }

    #[tokio::test]
    async fn a_peer_of_an_earlier_version_is_found_to_have_no_append_streams() {
        use warp::Filter;

        // Its peer listener: a length demanded, and 404 for an rpc it does not know.
        let routes = warp::post()
            .and(warp::path!("raft" / String))
            .and(warp::body::content_length_limit(1024))
            .and(warp::body::bytes())
            .map(|rpc: String, _| {
                warp::reply::with_status(
                    format!("no peer rpc named {rpc:?}"),
                    warp::http::StatusCode::NOT_FOUND,
                )
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let member = Member {
            peer_url: format!("http://{}", listener.local_addr().expect("address")),
            ..Member::default()
        };
        let limits = crate::listener::Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        };
        let listener = crate::listener::Listener { socket: listener, tls: None, name: "peer" };
        tokio::spawn(crate::listener::serve(warp::service(routes), listener, limits, std::future::pending()));

        let client = PeerClient::new(None, None).expect("client");
        let opened = client.open_stream(&member, Duration::from_secs(5)).await.expect("an answer");
        assert!(opened.is_none(), "no stream, so one request per append");
    }

    #[test]
    fn a_lost_peer_is_retried_soon_then_every_half_second() {
        let delays: Vec<u128> = reconnect_backoff().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [25, 50, 100, 200, 400, 500, 500]);
    }
}
