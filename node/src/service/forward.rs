//! Getting work done on the leader from any member, with one retry policy.
//!
//! Work is retried only where it certainly did not run: the target said it is not the leader
//! (and so never proposed it), or could not be connected to. Anything else is reported, since
//! a write whose answer was lost may or may not have been applied. A request, and every write
//! gathered into it, spends one [`Retry`] budget across all its attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{batcher, Service, ServiceError};
use crate::engine::{Write, WriteResult};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};
use crate::network::PeerError;
use crate::types::{Member, NodeId};

/// How long a request may wait for a leader, forwarding hops and a read index in total.
pub(super) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Membership changes may wait longer: adding a learner waits until it has caught up.
pub(super) const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(40);

/// Requests with gathered writes in flight to the leader at once, from one member.
const FORWARDS_IN_FLIGHT: usize = 4;

/// A write waiting on a follower to be sent to the leader.
pub(super) struct WriteWaiter {
    pub write: Write,
    pub reply: oneshot::Sender<Result<WriteResult, ServiceError>>,
}

/// The budget of one request's attempts: a deadline, and a bound on how often it is retried.
pub(super) struct Retry {
    deadline: Instant,
    retries: u32,
    /// The leader the last attempt went to; the next one waits for another to be known.
    leader: Option<NodeId>,
}

impl Retry {
    const MAX_RETRIES: u32 = 20;

    pub fn within(budget: Duration) -> Self {
        Self { deadline: Instant::now() + budget, retries: 0, leader: None }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits before the next attempt: until another leader than the last one tried is known
    /// (right after an election, not a backoff later), or a backoff that grows per attempt.
    /// False when the budget is spent.
    async fn pause(&mut self, service: &Service) -> bool {
        if Instant::now() >= self.deadline || self.retries >= Self::MAX_RETRIES {
            return false;
        }
        self.retries += 1;
        let backoff = Duration::from_millis(20 * u64::from(self.retries.min(10)));
        match self.leader {
            Some(leader) => tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = service.leader_replaced(leader, self.deadline) => {}
            },
            None => tokio::time::sleep(backoff).await,
        }
        true
    }
}

impl Service {
    /// Runs `request` on the leader, forwarding it when this member is not the leader.
    pub(super) async fn execute(&self, request: ForwardRequest) -> Result<ForwardResponse, ServiceError> {
        let budget = match request {
            ForwardRequest::ChangeMembership(_) => MEMBERSHIP_DEADLINE,
            _ => REQUEST_DEADLINE,
        };
        self.execute_within(request, &mut Retry::within(budget)).await
    }

    async fn execute_within(
        &self,
        request: ForwardRequest,
        retry: &mut Retry,
    ) -> Result<ForwardResponse, ServiceError> {
        loop {
            let (leader, member) = self.await_leader(retry.deadline()).await?;
            retry.leader = Some(leader);
            match self.attempt(&request, leader, &member, retry.left()).await {
                Ok(response) => return Ok(response),
                Err(ForwardError::NotLeader { .. }) if retry.pause(self).await => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One attempt at `request` on `leader`, within `left`.
    #[tracing::instrument(level = "debug", skip_all, fields(route = route_of(request), leader = leader))]
    async fn attempt(
        &self,
        request: &ForwardRequest,
        leader: NodeId,
        member: &Member,
        left: Duration,
    ) -> Result<ForwardResponse, ForwardError> {
        let deadline = Instant::now() + left;
        // A lost answer to a read is just a failure: reads change nothing (nor does a
        // keep-alive sent twice).
        let lost_answer = |message: String| match request {
            ForwardRequest::ReadIndex
            | ForwardRequest::LeaseKeepAlive(_)
            | ForwardRequest::LeaseTimeToLive(_) => ForwardError::Unavailable(message),
            _ => ForwardError::OutcomeUnknown(message),
        };
        if leader == self.id() {
            return match tokio::time::timeout(left, self.serve(request.clone())).await {
                Ok(outcome) => outcome,
                // The request may still commit: its outcome is unknown, not failed.
                Err(_) => Err(lost_answer(format!("no outcome in the {left:?} left; it may yet apply"))),
            };
        }
        crate::metrics::api().forwarded(route_of(request));
        tokio::select! {
            answer = self.inner.peers.forward(member, request, left) => match answer {
                Ok(outcome) => outcome,
                Err(PeerError::Unreachable { .. }) => Err(ForwardError::NotLeader { leader: None }),
                // Refused before the request was read: nothing ran.
                Err(e @ (PeerError::Unauthorized { .. } | PeerError::WrongIncarnation { .. })) => {
                    Err(ForwardError::Unavailable(format!("leader {leader} refused the forwarded request: {e}")))
                }
                Err(e) => Err(lost_answer(format!("forwarding to leader {leader} failed after sending: {e}"))),
            },
            // A leader cut off from this member may never answer: stop waiting once another is
            // known. A read simply goes to the new one (reads change nothing); anything else
            // may have been handed to raft already.
            () = self.leader_replaced(leader, deadline) => match request {
                ForwardRequest::ReadIndex | ForwardRequest::LeaseKeepAlive(_) | ForwardRequest::LeaseTimeToLive(_) => {
                    Err(ForwardError::NotLeader { leader: None })
                }
                _ => Err(lost_answer(format!("leader {leader} was replaced while the request was in flight"))),
            },
        }
    }

    /// Commits writes gathered on this member through the leader and answers each writer.
    /// Writes the leader refused because it no longer led were never proposed, and are sent
    /// again within the same budget.
    #[tracing::instrument(level = "debug", skip_all, fields(writes = pending.len()))]
    async fn write_all(&self, mut pending: Vec<WriteWaiter>) {
        let mut retry = Retry::within(REQUEST_DEADLINE);
        loop {
            let writes = pending.iter().map(|w| w.write.clone()).collect();
            let answers = match self.execute_within(ForwardRequest::Writes(writes), &mut retry).await {
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
            if !retry.pause(self).await {
                for waiter in refused {
                    let _ = waiter.reply.send(Err(ServiceError::NoLeader));
                }
                return;
            }
            pending = refused;
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

    /// The leader as this member knows it, once it knows one before `deadline`.
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
}

/// Sends the writes waiting on this member to the leader, those that arrived together in one
/// request: a follower under load makes one round trip for many writes, not one each.
pub(super) async fn forward_writes(service: Service, mut waiting: mpsc::Receiver<WriteWaiter>) {
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    loop {
        // Wait for a free slot before taking writes, so they gather while all slots are busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let gathered = batcher::gather(first, &mut waiting, |w| &w.write);
        let service = service.clone();
        tokio::spawn(async move {
            service.write_all(gathered).await;
            drop(slot);
        });
    }
}

fn route_of(request: &ForwardRequest) -> &'static str {
    match request {
        ForwardRequest::Writes(_) => "write",
        ForwardRequest::ReadIndex => "read_index",
        ForwardRequest::ChangeMembership(_) => "membership",
        ForwardRequest::Compact(_) => "compact",
        ForwardRequest::LeaseKeepAlive(_) => "lease_keep_alive",
        ForwardRequest::LeaseTimeToLive(_) => "lease_time_to_live",
        ForwardRequest::Auth { .. } => "auth",
    }
}

pub(super) fn unexpected(response: ForwardResponse) -> ServiceError {
    ServiceError::Unavailable(format!("the leader answered with an unexpected response: {response:?}"))
}
