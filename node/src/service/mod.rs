//! The replicated store as clients see it, on any member: the one layer every front end (the
//! HTTP API today, etcd's gRPC API next) goes through, and the only one that knows raft.
//!
//! Writes and membership changes run on the leader: a follower forwards them over the peer
//! network itself ([`forward`], one retry policy), so clients never need to find the leader.
//! Concurrent writes share one raft entry ([`batcher`]). Linearizable reads use the read-index
//! protocol and a leader's lease ([`reads`]); stale reads skip it. Membership rules and
//! bootstrap have modules of their own ([`membership`], [`bootstrap`]), and so does what a
//! member reports of the cluster ([`status`]).

mod auth;
pub mod auto_compaction;
mod backup;
mod batcher;
mod bootstrap;
mod error;
mod forward;
mod leadership;
pub mod leases;
mod membership;
mod proposal;
mod reads;
mod status;

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::auth::Caller;
use crate::engine::{Selected, Selection, Txn, Write, WriteResult};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};
use crate::network::PeerClient;
use crate::raft::Raft;
use crate::storage::{KeyRead, KvReader, RangePage};
use crate::types::{Member, NodeId, RaftMetrics};
use crate::watch::{WatchMessage, WatchRequest, Watches};
use batcher::WriteBatcher;
use forward::{WriteWaiter, REQUEST_DEADLINE};
use reads::{ReadConfirmation, ReadIndexWaiter};

pub use auth::{hash_password, token_key, Credentials, Need, TOKEN_TTL};
pub use error::ServiceError;
pub use leadership::TransferError;
pub use membership::PEER_URL_EXISTS;
pub use reads::ReadConsistency;
pub use status::{ClusterView, MemberView, Role, State};

/// How long a readiness check waits for the applied index to reach the committed one.
const READY_CATCH_UP: Duration = Duration::from_millis(200);

/// Reads waiting for a read index, or writes waiting to be forwarded; beyond this, callers
/// wait to queue (backpressure).
const QUEUE: usize = 8192;

/// Cheap to clone: every route and background task holds one, and each request takes its own
/// copy; the state is shared.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Shared>,
}

struct Shared {
    id: NodeId,
    member: Member,
    raft: Raft,
    reader: KvReader,
    watches: Watches,
    peers: PeerClient,
    batcher: WriteBatcher,
    confirmation: ReadConfirmation,
    /// Linearizable reads waiting for a read index (see [`reads::share_read_index`]).
    reads: mpsc::Sender<ReadIndexWaiter>,
    /// Writes waiting to be sent to the leader (see [`forward::forward_writes`]).
    writes: mpsc::Sender<WriteWaiter>,
    /// When leases expire, while this member leads (see [`leases`]).
    lessor: std::sync::Mutex<crate::lessor::Lessor>,
    /// The release this member runs, as it reports it.
    version: &'static str,
}

impl Service {
    /// Must be called within a Tokio runtime: it starts the member's write batcher and the
    /// tasks that share read indexes and forward gathered writes. As the leader it holds a
    /// read lease of `lease` after each leadership confirmation, or none.
    pub fn new(
        id: NodeId,
        member: Member,
        raft: Raft,
        reader: KvReader,
        peers: PeerClient,
        lease: Option<Duration>,
        version: &'static str,
    ) -> Self {
        let batcher = WriteBatcher::start(id, raft.clone());
        let confirmation = ReadConfirmation::new(lease);
        let (reads, waiting_reads) = mpsc::channel(QUEUE);
        let (writes, waiting_writes) = mpsc::channel(QUEUE);
        let watches = Watches::new(reader.clone());
        let shared = Shared {
            id,
            member,
            raft,
            reader,
            watches,
            peers,
            batcher,
            confirmation,
            reads,
            writes,
            lessor: Default::default(),
            version,
        };
        let service = Self { inner: Arc::new(shared) };
        tokio::spawn(reads::share_read_index(service.clone(), waiting_reads));
        tokio::spawn(forward::forward_writes(service.clone(), waiting_writes));
        service
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The release this member runs.
    pub fn version(&self) -> &'static str {
        self.inner.version
    }

    /// This member as it advertises itself.
    pub fn own_member(&self) -> &Member {
        &self.inner.member
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn reader(&self) -> &KvReader {
        &self.inner.reader
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft().metrics().borrow_watched().clone()
    }

    /// Commits `write` for `caller` through raft and returns what applying it did. While auth
    /// is on, the write carries its caller, whose grants are checked as it applies.
    ///
    /// On the leader it goes straight to the batcher. Elsewhere, writes that arrive together
    /// travel to the leader in one request ([`forward::forward_writes`]).
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.id(), %write))]
    pub async fn write(&self, caller: Option<&Caller>, write: Write) -> Result<WriteResult, ServiceError> {
        let write = match caller {
            Some(caller) => Write::As { caller: caller.clone(), write: Box::new(write) },
            None => write,
        };
        if self.leads() {
            let answer =
                tokio::time::timeout(REQUEST_DEADLINE, self.inner.batcher.write(write.clone())).await;
            match answer {
                // Leadership just moved, and the write was never proposed: forward it.
                Ok(Err(ForwardError::NotLeader { .. })) => {}
                Ok(answer) => return answer.map_err(ServiceError::from),
                Err(_) => {
                    let message = format!("no outcome within {REQUEST_DEADLINE:?}; it may yet apply");
                    return Err(ServiceError::OutcomeUnknown(message));
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let shutting_down = || ServiceError::Unavailable("this member is shutting down".into());
        self.inner.writes.send(WriteWaiter { write, reply }).await.map_err(|_| shutting_down())?;
        answer.await.map_err(|_| {
            ServiceError::OutcomeUnknown("this member stopped with the write in flight".into())
        })?
    }

    /// Commits a transaction: its success list if every compare holds, else its failure list.
    /// One that breaks etcd's rules (a key written twice, too many operations) is refused
    /// before it is proposed.
    pub async fn txn(&self, caller: Option<&Caller>, txn: Txn) -> Result<WriteResult, ServiceError> {
        txn.check().map_err(ServiceError::Txn)?;
        self.write(caller, Write::Txn(txn)).await
    }

    /// Watches keys on this member: their changes from a revision on, replayed from history,
    /// then as this member applies them (see [`crate::watch`]).
    pub fn watch(&self, request: WatchRequest) -> mpsc::Receiver<WatchMessage> {
        self.inner.watches.start(request)
    }

    /// [`Service::watch`], and a handle to ask the watcher for its progress at any time.
    pub fn watch_with_progress(
        &self,
        request: WatchRequest,
    ) -> (mpsc::Receiver<WatchMessage>, crate::watch::ProgressRequests) {
        self.inner.watches.start_with_progress(request)
    }

    /// Turns true when this member stops: long-lived client streams end on it.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.watches.stopping()
    }

    /// Ends every watch on this member: it is stopping.
    pub fn stop_watches(&self) {
        self.inner.watches.stop();
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.id(), key = %String::from_utf8_lossy(&key), ?consistency, ?at))]
    /// `key` as of revision `at` (the current one when `None`), as fresh as `consistency` asks.
    pub async fn get(
        &self,
        caller: Option<&Caller>,
        key: Vec<u8>,
        consistency: ReadConsistency,
        at: Option<u64>,
    ) -> Result<KeyRead, ServiceError> {
        self.await_freshness(consistency).await?;
        // After the wait: a permission revoked before the read began has reached this member.
        self.authorize(caller, Need::Read(&key, &[])).await?;
        Ok(self.reader().get(key, at).await?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.id(), limit = limit, ?consistency, ?at))]
    pub async fn range(
        &self,
        caller: Option<&Caller>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        consistency: ReadConsistency,
        at: Option<u64>,
    ) -> Result<RangePage, ServiceError> {
        self.await_freshness(consistency).await?;
        self.authorize(caller, Need::Read(&start, end.as_deref().unwrap_or(&[0]))).await?;
        Ok(self.reader().range(start, end, limit, metastore_client::MAX_RANGE_BYTES, at).await?)
    }

    /// etcd's range read (see [`crate::engine::Selection`]): the keys in `[start, end)` as of
    /// revision `at`, as fresh as `consistency` asks; with the store's revision. An answer
    /// larger than `max_bytes` is refused.
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.id(), ?consistency, ?at))]
    #[allow(clippy::too_many_arguments)]
    pub async fn select(
        &self,
        caller: Option<&Caller>,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        at: Option<u64>,
        selection: Selection,
        consistency: ReadConsistency,
        max_bytes: usize,
    ) -> Result<(Selected, u64), ServiceError> {
        self.await_freshness(consistency).await?;
        self.authorize(caller, Need::Read(&start, end.as_deref().unwrap_or(&[0]))).await?;
        Ok(self.reader().select(start, end, at, selection, max_bytes).await?)
    }

    /// The last committed log index as this member knows it.
    pub fn committed_index(&self) -> Option<u64> {
        self.metrics().local_committed.map(|id| id.index)
    }

    /// Ready to serve: a leader is known and everything known committed is applied.
    pub async fn is_ready(&self) -> bool {
        let m = self.metrics();
        if m.current_leader.is_none() || m.running_state.is_err() {
            return false;
        }
        let Some(committed) = m.local_committed.map(|id| id.index) else { return true };
        // openraft answers a write as soon as the state machine applied it, and shows it applied
        // in its metrics a moment later: allow for that moment.
        self.inner
            .raft
            .wait(Some(READY_CATCH_UP))
            .applied_index_at_least(Some(committed), "ready")
            .await
            .is_ok()
    }

    /// Does forwarded work here, as the leader; never forwards again, so requests cannot loop.
    async fn serve(&self, request: ForwardRequest) -> Result<ForwardResponse, ForwardError> {
        match request {
            ForwardRequest::Writes(writes) => {
                // Queued in order; the batcher answers each on its own.
                let answers =
                    futures::future::join_all(writes.into_iter().map(|w| self.inner.batcher.write(w)));
                Ok(ForwardResponse::Written(answers.await))
            }
            ForwardRequest::ReadIndex => self.read_index().await.map(ForwardResponse::ReadIndex),
            ForwardRequest::ChangeMembership(change) => self.apply_membership_change(change).await,
            ForwardRequest::Compact(revision) => self.propose_compaction(revision).await,
            ForwardRequest::LeaseKeepAlive(id) => {
                self.keep_alive_here(id).await.map(ForwardResponse::LeaseKept)
            }
            ForwardRequest::Auth { caller, change } => self.propose_auth(caller, change).await,
            ForwardRequest::LeaseTimeToLive(id) => self
                .time_to_live_here(id)
                .await
                .map(|left| ForwardResponse::LeaseRemaining(left.map(|(g, l)| (g, l.as_millis() as u64)))),
        }
    }

    /// Forgets history below `revision`, on every member; answers the compaction revision now
    /// in effect. A revision above the store's, or at or below the compaction revision, is
    /// refused (etcd's rule).
    #[tracing::instrument(skip(self), fields(member = self.id()))]
    pub async fn compact(&self, revision: u64) -> Result<u64, ServiceError> {
        match self.execute(ForwardRequest::Compact(revision)).await? {
            ForwardResponse::Compacted(outcome) => outcome.map_err(ServiceError::Revision),
            other => Err(forward::unexpected(other)),
        }
    }

    /// Proposes a compaction here, as the leader.
    async fn propose_compaction(&self, revision: u64) -> Result<ForwardResponse, ForwardError> {
        if !self.leads() {
            return Err(ForwardError::NotLeader { leader: None });
        }
        match self.raft().client_write(crate::types::Command::Compact { revision }).await {
            Ok(response) => match response.data {
                crate::types::Applied::Compaction(outcome) => Ok(ForwardResponse::Compacted(outcome)),
                other => Err(ForwardError::OutcomeUnknown(format!("a compaction was answered with {other}"))),
            },
            Err(e) => Err(proposal::proposed_write_error(e)),
        }
    }

    /// Whether this member believes it leads. Work refused on this check was never proposed,
    /// so the forwarder may safely retry it elsewhere.
    fn leads(&self) -> bool {
        proposal::leads(self.id(), self.raft())
    }
}

impl crate::network::LeaderWork for Service {
    async fn serve(&self, request: ForwardRequest) -> Result<ForwardResponse, ForwardError> {
        Service::serve(self, request).await
    }
}
