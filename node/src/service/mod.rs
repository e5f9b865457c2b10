//! The replicated store as clients see it, on any member.
//!
//! Writes and membership changes run on the leader: a follower forwards them over the peer
//! network itself, so clients never need to find the leader. Linearizable reads use the
//! read-index protocol: the leader confirms its leadership with a quorum and names the log
//! index a read must reflect; the member that got the read waits until it has applied that
//! index and then answers from its own copy. Concurrent reads share one confirmation, and a
//! confirmation lends the leader a lease during which it names read indexes without another
//! ([`ReadConfirmation`]). Concurrent writes share one raft entry ([`crate::batcher`]). Stale
//! reads skip all of it.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    ChangeMembershipError, ClientWriteError, ForwardToLeader, InitializeError, LinearizableReadError,
    RaftError,
};
use openraft::{ChangeMembers, LinearizerOption, ReadPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::batcher::WriteBatcher;
use crate::kv::{Write, WriteResult};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse, MembershipChange};
use crate::network::{PeerClient, PeerError};
use crate::raft::Raft;
use crate::storage::{self, KeyRead, KvReader, RangePage};
use crate::types::{Member, NodeId, RaftMetrics, TypeConfig};

/// How long a request may wait for a leader, forwarding hops and a read index in total.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Membership changes may wait longer: adding a learner waits until it has caught up.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(40);
/// How long adding a learner waits for it to catch up before answering anyway.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(20);
/// How long a readiness check waits for the applied index to reach the committed one.
const READY_CATCH_UP: Duration = Duration::from_millis(200);
/// How far behind the leader's log a voter may be and still count as healthy.
const HEALTHY_LAG: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no leader is known: the cluster is electing one, or has lost quorum")]
    NoLeader,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("local storage failed: {0}")]
    Storage(#[from] storage::StoreError),
}

impl From<ForwardError> for ServiceError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader { .. } => ServiceError::NoLeader,
            ForwardError::Unavailable(m) => ServiceError::Unavailable(m),
            ForwardError::Rejected(m) => ServiceError::Invalid(m),
            ForwardError::Conflict(m) => ServiceError::Conflict(m),
            ForwardError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m),
        }
    }
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

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
    peers: PeerClient,
    batcher: WriteBatcher,
    confirmation: ReadConfirmation,
    /// Linearizable reads waiting for a read index (see [`share_read_index`]).
    reads: mpsc::Sender<ReadIndexWaiter>,
    /// Writes waiting to be sent to the leader (see [`forward_writes`]).
    writes: mpsc::Sender<WriteWaiter>,
}

type ReadIndexWaiter = oneshot::Sender<Result<u64, ServiceError>>;

struct WriteWaiter {
    write: Write,
    reply: oneshot::Sender<Result<WriteResult, ServiceError>>,
}

/// Requests with gathered writes in flight to the leader at once, from one member.
const FORWARDS_IN_FLIGHT: usize = 4;

/// Reads waiting for a read index, or writes waiting to be forwarded; beyond this, callers
/// wait to queue (backpressure).
const QUEUE: usize = 8192;

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
    ) -> Self {
        let batcher = WriteBatcher::start(id, raft.clone());
        let confirmation = ReadConfirmation::new(lease);
        let (reads, waiting_reads) = mpsc::channel(QUEUE);
        let (writes, waiting_writes) = mpsc::channel(QUEUE);
        let shared = Shared { id, member, raft, reader, peers, batcher, confirmation, reads, writes };
        let service = Self { inner: Arc::new(shared) };
        tokio::spawn(share_read_index(service.clone(), waiting_reads));
        tokio::spawn(forward_writes(service.clone(), waiting_writes));
        service
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
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

    /// Commits `write` through raft and returns what applying it did.
    ///
    /// On the leader it goes straight to the batcher. Elsewhere, writes that arrive together
    /// travel to the leader in one request ([`forward_writes`]).
    pub async fn write(&self, write: Write) -> Result<WriteResult, ServiceError> {
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

    /// Commits gathered writes through the leader and answers each writer. Writes the leader
    /// refused because it no longer led were never proposed, and are sent again.
    async fn write_all(&self, mut pending: Vec<WriteWaiter>) {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        for attempt in 1u64.. {
            let writes = pending.iter().map(|w| w.write.clone()).collect();
            let answers = match self.execute_until(ForwardRequest::Writes(writes), deadline).await {
                Ok(ForwardResponse::Written(answers)) if answers.len() == pending.len() => answers,
                Ok(other) => {
                    let lost = format!("the leader's answer did not match the writes: {other:?}");
                    pending.iter().map(|_| Err(ForwardError::OutcomeUnknown(lost.clone()))).collect()
                }
                Err(e) => {
                    for waiter in pending {
                        let _ = waiter.reply.send(Err(e.shared()));
                    }
                    return;
                }
            };
            let mut refused = Vec::new();
            for (waiter, answer) in pending.into_iter().zip(answers) {
                match answer {
                    Err(ForwardError::NotLeader { .. }) => refused.push(waiter),
                    answer => {
                        let _ = waiter.reply.send(answer.map_err(ServiceError::from));
                    }
                }
            }
            if refused.is_empty() {
                return;
            }
            if Instant::now() >= deadline || attempt >= 20 {
                for waiter in refused {
                    let _ = waiter.reply.send(Err(ServiceError::NoLeader));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
            pending = refused;
        }
    }

    pub async fn get(&self, key: Vec<u8>, consistency: ReadConsistency) -> Result<KeyRead, ServiceError> {
        self.await_freshness(consistency).await?;
        Ok(self.reader().get(key).await?)
    }

    pub async fn range(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<RangePage, ServiceError> {
        self.await_freshness(consistency).await?;
        Ok(self.reader().range(start, end, limit, metastore_client::MAX_RANGE_BYTES).await?)
    }

    /// Carries out a membership change on the leader; returns the log index it committed at.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, ServiceError> {
        match self.execute(ForwardRequest::ChangeMembership(change)).await? {
            ForwardResponse::MembershipChanged(index) => Ok(index),
            other => Err(unexpected(other)),
        }
    }

    /// Keeps asking the leader to record this member's advertised client URL and, where none is
    /// recorded, its storage incarnation, until the membership holds them. Static clusters start
    /// with peer URLs only, since every member must propose the identical initial membership.
    pub async fn publish_identity(&self) {
        let mut metrics = self.raft().metrics();
        loop {
            let recorded = {
                let m = metrics.borrow_and_update();
                m.membership_config.membership().get_node(&self.id()).cloned()
            };
            match recorded {
                Some(r) if r.client_url == self.own_member().client_url && !r.incarnation.is_empty() => {
                    return
                }
                // Not a member yet (a joining member): wait for the membership to change.
                None => {}
                Some(_) => {
                    let change = MembershipChange::Describe {
                        id: self.id(),
                        client_url: self.own_member().client_url.clone(),
                        incarnation: self.own_member().incarnation.clone(),
                    };
                    match self.change_membership(change).await {
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::debug!(member = self.id(), error = %e, "member description not recorded yet")
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Initializes raft on this member with `members` (which must include it).
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), ServiceError> {
        match self.raft().initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(ServiceError::Conflict(
                "this member is already initialized; it never re-initializes".into(),
            )),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ServiceError::Invalid(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ServiceError::Unavailable(e.to_string())),
        }
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

    async fn await_freshness(&self, consistency: ReadConsistency) -> Result<(), ServiceError> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let (waiter, index) = oneshot::channel();
        self.inner.reads.send(waiter).await.map_err(|_| ServiceError::Unavailable("shutting down".into()))?;
        let index = index.await.map_err(|_| ServiceError::Unavailable("shutting down".into()))??;
        let wait = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                ServiceError::Unavailable(format!("this member did not catch up to index {index}: {e}"))
            })?;
        Ok(())
    }

    /// Runs `request` on the leader, forwarding it when this member is not the leader.
    ///
    /// Retries only where the request certainly did not run: the target said it is not the
    /// leader, or could not be connected to. Anything else is reported, since a write whose
    /// answer was lost may or may not have been applied.
    async fn execute(&self, request: ForwardRequest) -> Result<ForwardResponse, ServiceError> {
        let budget = match request {
            ForwardRequest::ChangeMembership(_) => MEMBERSHIP_DEADLINE,
            _ => REQUEST_DEADLINE,
        };
        self.execute_until(request, Instant::now() + budget).await
    }

    async fn execute_until(
        &self,
        request: ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardResponse, ServiceError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        // A lost answer to a read is just a failure: reads change nothing.
        let lost_answer = |message: String| match request {
            ForwardRequest::ReadIndex => ForwardError::Unavailable(message),
            _ => ForwardError::OutcomeUnknown(message),
        };
        let mut attempt: u32 = 0;
        loop {
            let (leader, member) = self.await_leader(deadline).await?;
            let outcome = if leader == self.id() {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.serve(request.clone())).await {
                    Ok(outcome) => outcome,
                    // The request may still commit: its outcome is unknown, not failed.
                    Err(_) => Err(lost_answer(format!("no outcome within {budget:?}; it may yet apply"))),
                }
            } else {
                crate::metrics::api().forwarded(route_of(&request));
                let timeout = deadline.saturating_duration_since(Instant::now());
                tokio::select! {
                    answer = self.inner.peers.forward(&member, &request, timeout) => match answer {
                        Ok(outcome) => outcome,
                        Err(PeerError::Unreachable { .. }) => Err(ForwardError::NotLeader { leader: None }),
                        // Refused before the request was read: nothing ran.
                        Err(e @ (PeerError::Unauthorized { .. } | PeerError::WrongIncarnation { .. })) => {
                            Err(ForwardError::Unavailable(format!(
                                "leader {leader} refused the forwarded request: {e}"
                            )))
                        }
                        Err(e) => Err(lost_answer(format!(
                            "forwarding to leader {leader} failed after sending: {e}"
                        ))),
                    },
                    // A leader cut off from this member may never answer: stop waiting once
                    // another is known. A read simply goes to the new one (reads change
                    // nothing); anything else may have been handed to raft already.
                    () = self.leader_replaced(leader, deadline) => match request {
                        ForwardRequest::ReadIndex => Err(ForwardError::NotLeader { leader: None }),
                        _ => Err(lost_answer(format!(
                            "leader {leader} was replaced while the request was in flight"
                        ))),
                    },
                }
            };
            match outcome {
                Ok(response) => return Ok(response),
                Err(ForwardError::NotLeader { .. }) if Instant::now() < deadline && attempt < 20 => {
                    attempt += 1;
                    // Try again as soon as another leader is known (right after an election,
                    // not up to a backoff later), or after the backoff if none is.
                    let backoff = Duration::from_millis(20 * u64::from(attempt.min(10)));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.leader_replaced(leader, deadline) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Resolves once this member knows a leader other than `leader`; never before `deadline`
    /// passes otherwise.
    async fn leader_replaced(&self, leader: NodeId, deadline: Instant) {
        let wait = deadline.saturating_duration_since(Instant::now());
        let replaced = self
            .raft()
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some_and(|l| l != leader), "another leader")
            .await;
        if replaced.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn await_leader(&self, deadline: Instant) -> Result<(NodeId, Member), ServiceError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let metrics = self
            .raft()
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await
            .map_err(|_| ServiceError::NoLeader)?;
        let leader = metrics.current_leader.ok_or(ServiceError::NoLeader)?;
        let member = metrics.membership_config.membership().get_node(&leader).cloned().unwrap_or_default();
        Ok((leader, member))
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
        }
    }

    /// The log index a linearizable read must reflect, named as the leader once it knows it
    /// still leads (see [`ReadConfirmation`]).
    async fn read_index(&self) -> Result<u64, ForwardError> {
        let confirmed = self.raft().get_read_log_id(self.inner.confirmation.option.clone()).await;
        match confirmed {
            Ok((read_log_id, _)) => {
                crate::metrics::api().leadership_confirmed(self.inner.confirmation.by);
                Ok(read_log_id.index())
            }
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                let answered: Vec<String> = e.got.iter().map(|id| id.to_string()).collect();
                Err(ForwardError::Unavailable(format!(
                    "leadership could not be confirmed: only members [{}] answered, short of a quorum",
                    answered.join(", ")
                )))
            }
            Err(RaftError::Fatal(e)) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }

    /// Waits (for a while) until the leader has replicated to learner `id` within the healthy
    /// lag, so that adding a learner returns when it can be promoted. openraft's own blocking
    /// add counts a learner nothing was replicated to yet as caught up while the log is short.
    async fn await_caught_up(&self, id: NodeId) {
        let caught_up = self
            .raft()
            .wait(Some(LEARNER_CATCH_UP))
            .metrics(|m| replication_lag(m, id).is_some_and(|lag| lag <= HEALTHY_LAG), "learner caught up")
            .await;
        if caught_up.is_err() {
            tracing::warn!(member = id, "learner added but not caught up yet");
        }
    }

    async fn apply_membership_change(
        &self,
        change: MembershipChange,
    ) -> Result<ForwardResponse, ForwardError> {
        if !self.leads() {
            return Err(ForwardError::NotLeader { leader: None });
        }
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let unchanged = Ok(ForwardResponse::MembershipChanged(
            metrics.membership_config.log_id().map_or(0, |id| id.index),
        ));
        let result = match change {
            MembershipChange::AddLearner { id, member } => {
                if voters.contains(&id) {
                    return Err(ForwardError::Conflict(format!("member {id} is already a voter")));
                }
                if let Some(existing) = membership.get_node(&id).filter(|m| **m != member) {
                    return Err(ForwardError::Conflict(format!(
                        "member {id} is already known as {existing}; remove it before adding it anew"
                    )));
                }
                tracing::info!(member = id, peer_url = %member.peer_url, "adding learner");
                // Not openraft's blocking add, which waits without a bound; the wait below is bounded.
                let added = self.raft().add_learner(id, member, false).await;
                if added.is_ok() {
                    self.await_caught_up(id).await;
                }
                added
            }
            MembershipChange::Promote { id } => {
                if voters.contains(&id) {
                    return unchanged;
                }
                if !learners.contains(&id) {
                    return Err(ForwardError::Rejected(format!(
                        "member {id} is not a learner: add it first"
                    )));
                }
                let lag = replication_lag(&metrics, id);
                if lag.is_none_or(|lag| lag > HEALTHY_LAG) {
                    return Err(ForwardError::Conflict(format!(
                        "learner {id} has not caught up with the leader's log (lag {lag:?}); try again later"
                    )));
                }
                tracing::info!(member = id, "promoting learner to voter");
                self.inner
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            MembershipChange::Describe { id, client_url, incarnation } => {
                let Some(current) = membership.get_node(&id) else {
                    return Err(ForwardError::Rejected(format!("member {id} is not in the cluster")));
                };
                let incarnation =
                    if current.incarnation.is_empty() { incarnation } else { current.incarnation.clone() };
                let member = Member { client_url, incarnation, ..current.clone() };
                if *current == member {
                    return unchanged;
                }
                tracing::info!(member = id, client_url = %member.client_url, incarnation = %member.incarnation, "recording member");
                self.inner
                    .raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])), false)
                    .await
            }
            MembershipChange::Remove { id } => {
                if voters.contains(&id) {
                    check_quorum_after_removal(&metrics, &voters, id)?;
                    tracing::info!(member = id, "removing voter");
                    self.inner
                        .raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else if learners.contains(&id) {
                    tracing::info!(member = id, "removing learner");
                    self.inner
                        .raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                } else {
                    return unchanged;
                }
            }
        };
        match result {
            Ok(response) => Ok(ForwardResponse::MembershipChanged(response.log_id.index)),
            Err(e) => Err(proposed_write_error(e)),
        }
    }

    /// Whether this member believes it leads. Work refused on this check was never proposed,
    /// so the forwarder may safely retry it elsewhere.
    fn leads(&self) -> bool {
        crate::batcher::leads(self.id(), self.raft())
    }
}

impl crate::network::LeaderWork for Service {
    async fn serve(&self, request: ForwardRequest) -> Result<ForwardResponse, ForwardError> {
        Service::serve(self, request).await
    }
}

/// Sends the writes waiting on this member to the leader, those that arrived together in one
/// request: a follower under load makes one round trip for many writes, not one each.
async fn forward_writes(service: Service, mut waiting: mpsc::Receiver<WriteWaiter>) {
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    loop {
        // Wait for a free slot before taking writes, so they gather while all slots are busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let gathered = crate::batcher::gather(first, &mut waiting, |w| &w.write);
        let service = service.clone();
        tokio::spawn(async move {
            service.write_all(gathered).await;
            drop(slot);
        });
    }
}

/// Answers linearizable reads' requests for a read index, sharing one leadership confirmation
/// among every read that arrived before it began. A confirmation that began before a read
/// arrived could reflect a leadership already lost by then, so a read only ever joins the
/// next one; one runs at a time, and reads queue behind it.
async fn share_read_index(service: Service, mut waiting: mpsc::Receiver<ReadIndexWaiter>) {
    while let Some(first) = waiting.recv().await {
        let mut readers = vec![first];
        while let Ok(next) = waiting.try_recv() {
            readers.push(next);
        }
        crate::metrics::api().read_index_shared(readers.len());
        let index = match service.execute(ForwardRequest::ReadIndex).await {
            Ok(ForwardResponse::ReadIndex(index)) => Ok(index),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        for reader in readers {
            let _ = reader.send(match &index {
                Ok(index) => Ok(*index),
                Err(e) => Err(e.shared()),
            });
        }
    }
}

impl ServiceError {
    /// The same error for another waiter; a storage error travels as its message.
    fn shared(&self) -> ServiceError {
        match self {
            ServiceError::NoLeader => ServiceError::NoLeader,
            ServiceError::Unavailable(m) => ServiceError::Unavailable(m.clone()),
            ServiceError::Invalid(m) => ServiceError::Invalid(m.clone()),
            ServiceError::Conflict(m) => ServiceError::Conflict(m.clone()),
            ServiceError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m.clone()),
            ServiceError::Storage(e) => ServiceError::Unavailable(e.to_string()),
        }
    }
}

/// How many entries `id`'s log is behind the leader's, as far as the leader knows.
fn replication_lag(metrics: &RaftMetrics, id: NodeId) -> Option<u64> {
    let last = metrics.last_log_index.unwrap_or(0);
    if id == metrics.id {
        return Some(0);
    }
    let matched = metrics.replication.as_ref()?.get(&id)?.as_ref()?.index;
    Some(last.saturating_sub(matched))
}

/// Refuses to remove voter `id` unless the remaining voters still hold a healthy majority.
fn check_quorum_after_removal(
    metrics: &RaftMetrics,
    voters: &BTreeSet<NodeId>,
    id: NodeId,
) -> Result<(), ForwardError> {
    let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Err(ForwardError::Rejected(format!("member {id} is the last voter and cannot be removed")));
    }
    let healthy =
        remaining.iter().filter(|v| replication_lag(metrics, **v).is_some_and(|l| l <= HEALTHY_LAG)).count();
    let quorum = remaining.len() / 2 + 1;
    if healthy < quorum {
        return Err(ForwardError::Conflict(format!(
            "removing member {id} would leave {healthy} healthy of {} voters, below the quorum of {quorum}",
            remaining.len()
        )));
    }
    Ok(())
}

/// How the leader knows it still leads when it names a read index.
///
/// With a lease: openraft's leader records, for each follower, when it *sent* the last request
/// that follower acknowledged; the latest time acknowledged by a quorum is the start of a lease
/// (`Leader::last_quorum_acked_time`). A follower that acknowledged a request refuses to vote
/// for anyone for `election_timeout_max` after it received it (`VoteHandler::update_vote`,
/// `Engine::handle_vote_req`), and a restarted one neither votes nor campaigns for as long after it starts
/// ([`crate::network::refuses_votes_until`]); so no other leader exists until that long after
/// the quorum's acknowledged send time. openraft judges the lease inside its core, at the
/// instant it handles the read (`RaftCore::handle_get_linearizer`): still the leader of its
/// term, and `now < quorum_acked_at + lease`; else it sends heartbeats and waits for a quorum
/// to acknowledge one sent after the read arrived. The lease asked for is `election_timeout_min`,
/// leaving a third of the followers' promise for clocks that run at different rates (clocks
/// need not agree, only advance alike; a virtual machine frozen whole cannot promise that: run
/// it with `--linearizable-reads read-index`). openraft's own `ReadPolicy::LeaseRead` uses the
/// whole promise, with no such margin.
///
/// Without a lease: a quorum must acknowledge a heartbeat sent after the read arrived.
#[derive(Clone)]
struct ReadConfirmation {
    option: LinearizerOption,
    /// The metric label of the confirmations it makes.
    by: &'static str,
}

impl ReadConfirmation {
    fn new(lease: Option<Duration>) -> Self {
        match lease {
            Some(lease) => Self { option: LinearizerOption::new(Some(lease), true), by: "lease" },
            None => Self { option: ReadPolicy::ReadIndex.into(), by: "quorum" },
        }
    }
}

fn not_leader(f: ForwardToLeader<TypeConfig>) -> ForwardError {
    ForwardError::NotLeader { leader: f.leader_id.zip(f.leader_node) }
}

/// What a failed proposal means to the client.
///
/// openraft answers ForwardToLeader both when it refuses a proposal and when it truncates an
/// uncommitted entry it had appended — and another member may still commit that entry (a
/// leader of a later term can, in clusters of five or more). Proposals are only made after
/// the member checked that it leads ([`crate::batcher::leads`]), so the answer here is
/// "unknown", never "retry": a retry could apply the write twice.
pub(crate) fn proposed_write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ForwardError {
    match e {
        RaftError::APIError(
            ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f),
        ) => ForwardError::OutcomeUnknown(format!(
            "leadership moved (new leader: {:?}) while the write was in flight; it may or may not apply",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(
            e,
        ))) => ForwardError::Conflict(format!("another membership change is in progress: {e}")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Rejected(e.to_string())
        }
        // Only for writes with openraft preconditions, which are never made here.
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => {
            ForwardError::OutcomeUnknown(format!("openraft refused the write: {e}"))
        }
        RaftError::Fatal(e) => {
            ForwardError::OutcomeUnknown(format!("raft stopped with the write in flight: {e}"))
        }
    }
}

fn route_of(request: &ForwardRequest) -> &'static str {
    match request {
        ForwardRequest::Writes(_) => "write",
        ForwardRequest::ReadIndex => "read_index",
        ForwardRequest::ChangeMembership(_) => "membership",
    }
}

fn unexpected(response: ForwardResponse) -> ServiceError {
    ServiceError::Unavailable(format!("the leader answered with an unexpected response: {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, Membership, ServerState, StoredMembership};
    use std::sync::Arc;

    fn leader_metrics(last: u64, matched: &[(NodeId, Option<u64>)]) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.last_log_index = Some(last);
        m.current_leader = Some(1);
        m.state = ServerState::Leader;
        let replication = matched
            .iter()
            .map(|(id, idx)| {
                (
                    *id,
                    idx.map(|i| {
                        LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, i)
                    }),
                )
            })
            .collect();
        m.replication = Some(replication);
        let voters: BTreeSet<NodeId> = std::iter::once(1).chain(matched.iter().map(|(id, _)| *id)).collect();
        let nodes: BTreeMap<NodeId, Member> = voters.iter().map(|id| (*id, Member::default())).collect();
        let membership = Membership::new(vec![voters], nodes).expect("voters are all nodes");
        m.membership_config = Arc::new(StoredMembership::new(None, membership));
        m
    }

    #[test]
    fn removing_a_voter_is_allowed_while_the_rest_hold_a_healthy_majority() {
        let m = leader_metrics(100, &[(2, Some(100)), (3, Some(99))]);
        assert!(check_quorum_after_removal(&m, &BTreeSet::from([1, 2, 3]), 3).is_ok());
    }

    #[test]
    fn removing_a_voter_is_refused_when_it_would_lose_quorum() {
        // Of 1, 2, 3: 2 is unreachable; removing 3 would leave {1, 2} with only 1 healthy.
        let m = leader_metrics(100, &[(2, None), (3, Some(100))]);
        let refused = check_quorum_after_removal(&m, &BTreeSet::from([1, 2, 3]), 3);
        assert!(matches!(refused, Err(ForwardError::Conflict(_))), "{refused:?}");
    }

    #[test]
    fn the_last_voter_is_never_removed() {
        let m = leader_metrics(100, &[]);
        assert!(matches!(
            check_quorum_after_removal(&m, &BTreeSet::from([1]), 1),
            Err(ForwardError::Rejected(_))
        ));
    }

    #[test]
    fn a_proposal_answered_with_forward_to_leader_has_an_unknown_outcome_and_is_not_retried() {
        // openraft sends this when it truncates an entry it had appended; that entry may still
        // commit elsewhere, so "not the leader" (which the forwarder retries) would be wrong.
        let truncated = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::new(
            2,
            Member::default(),
        )));
        assert!(matches!(proposed_write_error(truncated), ForwardError::OutcomeUnknown(_)));
        // openraft 0.10 names the truncation case apart; it is just as unknown.
        let discarded = RaftError::APIError(ClientWriteError::LogEntryDiscarded(ForwardToLeader::new(
            2,
            Member::default(),
        )));
        assert!(matches!(proposed_write_error(discarded), ForwardError::OutcomeUnknown(_)));
        let unknown = ServiceError::from(ForwardError::OutcomeUnknown("leadership moved".into()));
        assert!(matches!(unknown, ServiceError::OutcomeUnknown(_)));
    }

    #[test]
    fn a_lagging_member_is_not_healthy() {
        let m = leader_metrics(5_000, &[(2, Some(10))]);
        assert_eq!(replication_lag(&m, 2), Some(4_990));
        assert_eq!(replication_lag(&m, 1), Some(0));
        assert_eq!(replication_lag(&m, 9), None);
    }
}
