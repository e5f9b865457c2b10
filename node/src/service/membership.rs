//! Membership changes: the rules the leader applies before it changes the raft membership
//! (quorum kept, learners caught up before they vote, a member's recorded identity never
//! silently replaced), and a member recording its own description once it is a member.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use metastore_client::quorum::{self, RemovalRefused};
use openraft::ChangeMembers;

use super::forward::unexpected;
use super::proposal::proposed_write_error;
use super::{Service, ServiceError};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};
use crate::types::{Member, MembershipChange, NodeId, RaftMetrics};

/// How long adding a learner waits for it to catch up before answering anyway.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(20);
/// etcd's words for a member added at another member's peer URL, which its clients match.
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";

impl Service {
    /// Carries out a membership change on the leader; returns the log index it committed at.
    #[tracing::instrument(skip_all, fields(member = self.id(), ?change))]
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
            let (recorded, settled) = {
                let m = metrics.borrow_and_update();
                // A change proposed while the last one is uncommitted is refused (and openraft
                // logs the refusal as an error): wait for it to commit first.
                let settled =
                    m.membership_config.log_id().map(|id| id.index) <= m.local_committed.map(|id| id.index);
                (m.membership_config.membership().get_node(&self.id()).cloned(), settled)
            };
            match recorded {
                Some(r) if r.client_url == self.own_member().client_url && !r.incarnation.is_empty() => {
                    return
                }
                // Not a member yet (a joining member), or its membership not committed yet:
                // wait for the membership to change.
                None => {}
                Some(_) if !settled => {}
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

    /// Carries out `change` here, as the leader.
    #[tracing::instrument(skip_all, fields(member = self.id()))]
    pub(super) async fn apply_membership_change(
        &self,
        change: MembershipChange,
    ) -> Result<ForwardResponse, ForwardError> {
        if !self.leads() {
            return Err(ForwardError::NotLeader { leader: None });
        }
        let metrics = self.metrics();
        // openraft refuses a change while the last is uncommitted, and logs that as an error:
        // refuse it here, alike but quietly (members publishing themselves at start race so).
        let last = metrics.membership_config.log_id().map(|id| id.index);
        if last > metrics.local_committed.map(|id| id.index) {
            return Err(ForwardError::Conflict(format!(
                "another membership change is in progress (at log index {last:?})"
            )));
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let unchanged = Ok(ForwardResponse::MembershipChanged(
            metrics.membership_config.log_id().map_or(0, |id| id.index),
        ));
        let raft = self.raft();
        // etcd's MemberAdd comes before the member is started: nothing to wait for.
        let await_catch_up = matches!(change, MembershipChange::AddLearner { .. });
        let result = match change {
            MembershipChange::AddLearner { id, member }
            | MembershipChange::AddLearnerToStart { id, member } => {
                if voters.contains(&id) {
                    return Err(ForwardError::Conflict(format!("member {id} is already a voter")));
                }
                if let Some(existing) = membership.get_node(&id).filter(|m| **m != member) {
                    return Err(ForwardError::Conflict(format!(
                        "member {id} is already known as {existing}; remove it before adding it anew"
                    )));
                }
                // Two members at one address would be one process counted twice.
                if let Some((other, _)) =
                    membership.nodes().find(|(other, m)| **other != id && m.peer_url == member.peer_url)
                {
                    return Err(ForwardError::Conflict(format!(
                        "{}: member {other} is at {}",
                        PEER_URL_EXISTS, member.peer_url
                    )));
                }
                tracing::info!(member = id, peer_url = %member.peer_url, "adding learner");
                // Not openraft's blocking add, which waits without a bound; the wait below is bounded.
                let added = raft.add_learner(id, member, false).await;
                if added.is_ok() && await_catch_up {
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
                if !lag.is_some_and(quorum::within_healthy_lag) {
                    return Err(ForwardError::Conflict(format!(
                        "learner {id} has not caught up with the leader's log (lag {lag:?}); try again later"
                    )));
                }
                tracing::info!(member = id, "promoting learner to voter");
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
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
                raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])), false).await
            }
            MembershipChange::Remove { id } => {
                if voters.contains(&id) {
                    check_quorum_after_removal(&metrics, &voters, id)?;
                    tracing::info!(member = id, "removing voter");
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await
                } else if learners.contains(&id) {
                    tracing::info!(member = id, "removing learner");
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await
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

    /// Waits (for a while) until the leader has replicated to learner `id` within the healthy
    /// lag, so that adding a learner returns when it can be promoted. openraft's own blocking
    /// add counts a learner nothing was replicated to yet as caught up while the log is short.
    async fn await_caught_up(&self, id: NodeId) {
        let caught_up = self
            .raft()
            .wait(Some(LEARNER_CATCH_UP))
            .metrics(|m| replication_lag(m, id).is_some_and(quorum::within_healthy_lag), "learner caught up")
            .await;
        if caught_up.is_err() {
            tracing::warn!(member = id, "learner added but not caught up yet");
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

/// Refuses to remove voter `id` unless the remaining voters still hold a healthy majority, by
/// the rule the operator plans with ([`quorum::check_removal`]).
fn check_quorum_after_removal(
    metrics: &RaftMetrics,
    voters: &BTreeSet<NodeId>,
    id: NodeId,
) -> Result<(), ForwardError> {
    let healthy = |v| replication_lag(metrics, v).is_some_and(quorum::within_healthy_lag);
    quorum::check_removal(voters.iter().copied(), id, healthy).map_err(|refused| match refused {
        RemovalRefused::LastVoter { .. } => ForwardError::Rejected(refused.to_string()),
        RemovalRefused::WouldLoseQuorum { .. } => ForwardError::Conflict(refused.to_string()),
    })
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
    fn a_lagging_member_is_not_healthy() {
        let m = leader_metrics(5_000, &[(2, Some(10))]);
        assert_eq!(replication_lag(&m, 2), Some(4_990));
        assert_eq!(replication_lag(&m, 1), Some(0));
        assert_eq!(replication_lag(&m, 9), None);
    }
}
