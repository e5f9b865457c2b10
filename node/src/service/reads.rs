//! Linearizable reads on any member, by the read-index protocol: the leader confirms its
//! leadership ([`ReadConfirmation`]) and names the log index a read must reflect; the member
//! that got the read waits until it has applied that index and then answers from its own copy.
//! Concurrent reads share one confirmation ([`share_read_index`]). Stale reads skip all of it.

use std::time::{Duration, Instant};

use openraft::error::{LinearizableReadError, RaftError};
use openraft::{LinearizerOption, ReadPolicy};
use tokio::sync::{mpsc, oneshot};

use super::forward::{unexpected, REQUEST_DEADLINE};
use super::proposal::not_leader;
use super::{Service, ServiceError};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

/// A linearizable read waiting for a read index.
pub(super) type ReadIndexWaiter = oneshot::Sender<Result<u64, ServiceError>>;

impl Service {
    /// Returns once this member's copy is fresh enough for a read of `consistency`.
    pub async fn await_freshness(&self, consistency: ReadConsistency) -> Result<(), ServiceError> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let shutting_down = || ServiceError::Unavailable("this member is shutting down".into());
        let (waiter, index) = oneshot::channel();
        self.inner.reads.send(waiter).await.map_err(|_| shutting_down())?;
        let index = index.await.map_err(|_| shutting_down())??;
        let wait = deadline.saturating_duration_since(Instant::now());
        self.raft().wait(Some(wait)).applied_index_at_least(Some(index), "linearizable read").await.map_err(
            |e| ServiceError::Unavailable(format!("this member did not catch up to index {index}: {e}")),
        )?;
        Ok(())
    }

    /// The log index a linearizable read must reflect, named as the leader once it knows it
    /// still leads (see [`ReadConfirmation`]).
    pub(super) async fn read_index(&self) -> Result<u64, ForwardError> {
        let confirmation = &self.inner.confirmation;
        match self.raft().get_read_log_id(confirmation.option.clone()).await {
            Ok((read_log_id, _)) => {
                crate::metrics::api().leadership_confirmed(confirmation.by);
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
}

/// Answers linearizable reads' requests for a read index, sharing one leadership confirmation
/// among every read that arrived before it began. A confirmation that began before a read
/// arrived could reflect a leadership already lost by then, so a read only ever joins the
/// next one; one runs at a time, and reads queue behind it.
pub(super) async fn share_read_index(service: Service, mut waiting: mpsc::Receiver<ReadIndexWaiter>) {
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
pub(super) struct ReadConfirmation {
    option: LinearizerOption,
    /// The metric label of the confirmations it makes.
    by: &'static str,
}

impl ReadConfirmation {
    pub fn new(lease: Option<Duration>) -> Self {
        match lease {
            Some(lease) => Self { option: LinearizerOption::new(Some(lease), true), by: "lease" },
            None => Self { option: ReadPolicy::ReadIndex.into(), by: "quorum" },
        }
    }
}
