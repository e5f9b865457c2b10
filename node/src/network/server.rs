//! The answering side of peer traffic: `POST /raft/{append,vote,snapshot,forward}`, and
//! `/raft/append-stream`, which upgrades its connection to an append stream.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::append_stream;
use super::auth::PeerToken;
use super::snapshot::SnapshotReceiver;
use super::wire::{self, ForwardError, ForwardRequest, ForwardResponse, SnapshotChunk};
use crate::listener::Upgrade;
use crate::raft::Raft;
use crate::types::TypeConfig;
use openraft::async_runtime::WatchReceiver;
use openraft::error::RaftError;
use openraft::vote::RaftLeaderId;

type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;

/// Append streams a member serves at once, at most: two per leader (replication and
/// heartbeats), and a leader's close when it steps down.
const MAX_APPEND_STREAMS: usize = 64;

/// What a member does with work a follower forwarded to it as the leader. The service layer
/// does it; the network only carries it, and knows nothing of how it is done.
pub trait LeaderWork: Clone + Send + Sync + 'static {
    /// Does `request` here, as the leader, and never forwards it again: requests cannot loop.
    fn serve(
        &self,
        request: ForwardRequest,
    ) -> impl std::future::Future<Output = Result<ForwardResponse, ForwardError>> + Send;
}

/// What answering raft's RPCs needs beside raft itself.
#[derive(Clone)]
pub struct RaftRpcs {
    pub snapshots: SnapshotReceiver,
    /// Until then, vote requests are refused (see [`refuses_votes_until`]).
    pub refuse_votes_until: Option<Instant>,
    /// Places for append streams; each open one holds one.
    stream_places: Arc<Semaphore>,
    /// Becomes true when the member stops, which closes its append streams.
    stopping: watch::Receiver<bool>,
}

impl RaftRpcs {
    pub fn new(
        snapshots: SnapshotReceiver,
        refuse_votes_until: Option<Instant>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let stream_places = Arc::new(Semaphore::new(MAX_APPEND_STREAMS));
        Self { snapshots, refuse_votes_until, stream_places, stopping }
    }
}

/// When a member that restarts may vote again.
///
/// A follower promises its leader not to vote for anyone else for `election_timeout_max` after
/// it last heard from it, and the leader's read lease rests on that promise. openraft 0.9 kept
/// the promise across a restart (the vote it recovered counted as heard from just then);
/// 0.10 recovers the vote with no lease at all (`StorageHelper::get_initial_state`). So a
/// member that restarts with a leader's vote keeps the promise here: it answers no vote request
/// for `election_timeout_max` after it starts, which a candidate counts as not granted.
pub fn refuses_votes_until(
    started: Instant,
    recovered_leader_vote: bool,
    lease: std::time::Duration,
) -> Option<Instant> {
    recovered_leader_vote.then(|| started + lease)
}

/// The peer listener's routes. With a `token`, requests that do not present it are refused
/// with 401 before anything else is looked at. `incarnation` is this member's storage
/// identity: requests addressed to another incarnation (this member lost its data since the
/// sender learnt of it) are refused with 409, so a wiped member never acts on a membership it
/// no longer remembers.
pub fn routes(
    raft: Raft,
    work: impl LeaderWork,
    rpcs: RaftRpcs,
    incarnation: String,
    token: Option<PeerToken>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let body = warp::body::content_length_limit(wire::MAX_FRAME_BYTES as u64).and(warp::body::bytes());
    let with_member = warp::any().map(move || (raft.clone(), work.clone(), rpcs.clone()));
    let own = warp::any().map(move || incarnation.clone());
    let token = warp::any().map(move || token.clone());
    let authorized = warp::header::optional::<String>("authorization").and(token).and_then(
        |presented: Option<String>, token: Option<PeerToken>| async move {
            match token {
                Some(token) if !token.admits(presented.as_deref()) => Err(warp::reject::custom(Unauthorized)),
                _ => Ok(()),
            }
        },
    );
    // A connection's upgrade, when asked for one to an append stream.
    let upgrade = warp::header::optional::<String>("upgrade").and(warp::ext::optional::<Upgrade>()).map(
        |protocol: Option<String>, upgrade: Option<Upgrade>| {
            upgrade.filter(|_| protocol.as_deref() == Some(wire::APPEND_STREAM_PROTOCOL))
        },
    );
    warp::post()
        .and(warp::path("raft"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(authorized.untuple_one())
        .and(warp::header::optional::<String>(wire::INCARNATION_HEADER))
        .and(own)
        .and(body)
        .and(upgrade)
        .and(with_member)
        .then(
            |rpc: String,
             addressed: Option<String>,
             own: String,
             body: Bytes,
             upgrade: Option<Upgrade>,
             (raft, work, rpcs)| async move {
                match addressed.filter(|a| !a.is_empty() && *a != own) {
                    Some(addressed) => plain(
                        StatusCode::CONFLICT,
                        format!("addressed to storage incarnation {addressed}, but this member's is {own}"),
                    ),
                    None if rpc == wire::APPEND_STREAM_PATH => accept_stream(upgrade, raft, rpcs),
                    None => dispatch(&rpc, &body, raft, work, rpcs).await,
                }
            },
        )
        .recover(|rejection: warp::Rejection| async move {
            if rejection.find::<Unauthorized>().is_some() {
                Ok(plain(
                    StatusCode::UNAUTHORIZED,
                    "peer authentication failed: wrong or missing peer token".into(),
                ))
            } else {
                Err(rejection)
            }
        })
        .unify()
}

/// A peer request without this cluster's token.
#[derive(Debug)]
struct Unauthorized;

impl warp::reject::Reject for Unauthorized {}

#[tracing::instrument(level = "debug", skip_all, fields(%rpc))]
async fn dispatch(rpc: &str, body: &[u8], raft: Raft, work: impl LeaderWork, rpcs: RaftRpcs) -> Response {
    match rpc {
        wire::APPEND_PATH => answer(body, |req| async move { raft.append_entries(req).await }).await,
        wire::VOTE_PATH => {
            let mut request: VoteRequest = match wire::decode(body) {
                Ok(request) => request,
                Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
            };
            // A vote for the member the leader handed leadership to comes after that leader
            // stopped leading (openraft turns its lease off and forwards its reads and writes
            // once it hands over): no read lease of its stands on the promise below, nor on
            // openraft's own. Only for the term right after the leader this member follows: a
            // transfer arriving late, after another was elected for that term, must not
            // overrule the newer leader's lease. Any other request claiming it is an ordinary one.
            let own = raft.metrics().borrow_watched().vote;
            let next_term = own.leader_id().term() + 1 == request.vote.leader_id().term();
            request.leadership_transfer &= own.is_committed() && next_term;
            let transfer = request.leadership_transfer;
            match rpcs.refuse_votes_until.filter(|until| !transfer && Instant::now() < *until) {
                Some(until) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "restarted recently: votes for no one for another {:?}, as promised to its leader",
                        until.saturating_duration_since(Instant::now())
                    ),
                ),
                None => reply(&raft.vote(request).await),
            }
        }
        wire::TRANSFER_LEADER_PATH => {
            answer(body, |req: openraft::raft::TransferLeaderRequest<TypeConfig>| async move {
                raft.handle_transfer_leader(req).await.map_err(RaftError::<TypeConfig>::Fatal)
            })
            .await
        }
        wire::SNAPSHOT_PATH => {
            answer(body, |chunk: SnapshotChunk| async move { rpcs.snapshots.receive(&raft, chunk).await })
                .await
        }
        wire::FORWARD_PATH => answer(body, |req: ForwardRequest| async move { work.serve(req).await }).await,
        other => plain(StatusCode::NOT_FOUND, format!("no peer rpc named {other:?}")),
    }
}

/// Switches the connection to an append stream served by this member's raft.
fn accept_stream(upgrade: Option<Upgrade>, raft: Raft, rpcs: RaftRpcs) -> Response {
    let Some(upgrade) = upgrade.and_then(|upgrade| upgrade.take()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!(
                "an append stream is asked for with `Connection: upgrade` and `Upgrade: {}`",
                wire::APPEND_STREAM_PROTOCOL
            ),
        );
    };
    let Ok(place) = rpcs.stream_places.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_APPEND_STREAMS} append streams are open already"),
        );
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                append_stream::serve(raft, hyper_util::rt::TokioIo::new(upgraded), rpcs.stopping, place).await
            }
            Err(e) => tracing::debug!(error = %e, "append stream: the upgrade failed"),
        }
    });
    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "connection", "upgrade");
    warp::reply::with_header(reply, "upgrade", wire::APPEND_STREAM_PROTOCOL).into_response()
}

/// Decodes the request, runs `handler`, and encodes its `Result` as the answer.
async fn answer<Req, Resp, F, Fut>(body: &[u8], handler: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let request: Req = match wire::decode(body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
    };
    reply(&handler(request).await)
}

/// An answer to a peer, encoded.
fn reply<Resp: Serialize>(answer: &Resp) -> Response {
    match wire::encode(answer) {
        Ok(bytes) => {
            warp::reply::with_header(bytes, "content-type", "application/octet-stream").into_response()
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    warp::reply::with_status(message, status).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::refuses_votes_until;

    #[test]
    fn a_member_restarting_with_a_leaders_vote_refuses_votes_for_the_lease() {
        let started = Instant::now();
        let lease = Duration::from_millis(450);
        assert_eq!(refuses_votes_until(started, true, lease), Some(started + lease));
        assert_eq!(refuses_votes_until(started, false, lease), None, "it promised no leader anything");
    }
}
