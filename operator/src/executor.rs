//! Observing a cluster's members and carrying out planned membership steps, through the node
//! API (the `metastore-client` crate is the only way the operator talks to members).

use std::collections::BTreeMap;
use std::time::Duration;

use metastore_client::quorum;
use metastore_client::{AddMemberRequest, Client, ClientError, ClusterStatus, MemberRole as WireRole};

use crate::crd::MemberRole;
use crate::membership::{Observed, PodView, RaftMember, Step};
use crate::resources::Names;

/// A member that does not answer its status within this is treated as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where each member is reached. In Kubernetes, pod DNS names; in tests, local ports.
pub trait MemberDirectory: Send + Sync {
    fn peer_url(&self, id: u64) -> String;
    fn client_url(&self, id: u64) -> String;
}

impl MemberDirectory for Names {
    fn peer_url(&self, id: u64) -> String {
        Names::peer_url(self, id)
    }
    fn client_url(&self, id: u64) -> String {
        Names::client_url(self, id)
    }
}

/// What one observation found: the planner's input, and every member's own report.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub observed: Observed,
    /// Each reachable member's `/v1/cluster` answer.
    pub statuses: BTreeMap<u64, ClusterStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no leader to carry out {0:?}")]
    NoLeader(Step),
    #[error("member {id} refused or failed {step:?}: {source}")]
    Member {
        id: u64,
        step: Step,
        #[source]
        source: ClientError,
    },
}

fn client(dir: &dyn MemberDirectory, id: u64) -> Client {
    Client::new(dir.client_url(id))
}

/// Asks every member pod for its status and derives the leader, the membership and health.
/// `bootstrapped` is what the cluster's status recorded: whether it was ever bootstrapped.
pub async fn observe(
    dir: &dyn MemberDirectory,
    pod_ids: &[u64],
    stateful_set_replicas: i32,
    bootstrapped: bool,
) -> Observation {
    let probes = pod_ids.iter().map(|id| async move {
        let status = tokio::time::timeout(PROBE_TIMEOUT, client(dir, *id).cluster()).await;
        (*id, status.ok().and_then(Result::ok))
    });
    let answers = futures::future::join_all(probes).await;
    // An answer from another member than the pod's (a stale DNS record, a reused address) is
    // no answer at all.
    let statuses: BTreeMap<u64, ClusterStatus> = answers
        .into_iter()
        .filter_map(|(id, status)| status.filter(|s| s.member_id == id).map(|s| (id, s)))
        .collect();
    let pods = pod_ids
        .iter()
        .map(|id| PodView {
            id: *id,
            reachable: statuses.contains_key(id),
            initialized: statuses.get(id).is_some_and(|s| s.initialized),
        })
        .collect();
    let leader = agreed_leader(&statuses);
    let members = leader.map(|l| membership_of(l, &statuses)).unwrap_or_default();
    let observed = Observed {
        leader: leader.map(|l| l.member_id),
        members,
        pods,
        stateful_set_replicas,
        bootstrapped,
        restoring: false,
    };
    Observation { observed, statuses }
}

/// The leader whose membership the operator may act on: of the members that say they lead, the
/// one with the highest term, and only if a majority of its voters follow it in that term. A
/// leader cut off from its peers may still claim to lead; acting on its stale membership could
/// remove real members.
fn agreed_leader(statuses: &BTreeMap<u64, ClusterStatus>) -> Option<&ClusterStatus> {
    let leader = statuses
        .values()
        .filter(|s| s.state == "leader" && s.leader_id == Some(s.member_id))
        .max_by_key(|s| s.term)?;
    let voters = leader.members.iter().filter(|m| m.role == WireRole::Voter).count();
    let following =
        statuses.values().filter(|s| s.leader_id == Some(leader.member_id) && s.term == leader.term).count();
    (following > voters / 2).then_some(leader)
}

fn membership_of(leader: &ClusterStatus, statuses: &BTreeMap<u64, ClusterStatus>) -> Vec<RaftMember> {
    let last = leader.last_log_index.unwrap_or(0);
    let matched: BTreeMap<u64, Option<u64>> =
        leader.replication.iter().flatten().map(|r| (r.id, r.matched_index)).collect();
    leader
        .members
        .iter()
        .map(|m| {
            let caught_up = m.id == leader.member_id
                || matched
                    .get(&m.id)
                    .copied()
                    .flatten()
                    .is_some_and(|i| quorum::within_healthy_lag(last.saturating_sub(i)));
            RaftMember {
                id: m.id,
                role: match m.role {
                    WireRole::Voter => MemberRole::Voter,
                    WireRole::Learner => MemberRole::Learner,
                },
                healthy: caught_up && statuses.get(&m.id).is_some_and(|s| s.initialized),
                replaced_storage: !m.incarnation.is_empty()
                    && statuses.get(&m.id).is_some_and(|s| s.incarnation != m.incarnation),
            }
        })
        .collect()
}

/// Carries out a membership step, planned from `observation`, through the members' API,
/// presenting the cluster's peer `token` where its members have one. Steps that are not
/// membership changes (scaling the StatefulSet, waiting) are the caller's.
pub async fn execute(
    dir: &dyn MemberDirectory,
    observation: &Observation,
    step: &Step,
    token: Option<&str>,
) -> Result<(), ExecError> {
    let client = |id: u64| {
        let client = client(dir, id);
        match token {
            Some(token) => client.with_token(token),
            None => client,
        }
    };
    let leader = observation.observed.leader;
    let failed = |id: u64| {
        let step = step.clone();
        move |source| ExecError::Member { id, step, source }
    };
    let leader_id = || leader.ok_or_else(|| ExecError::NoLeader(step.clone()));
    match step {
        Step::Bootstrap => {
            client(1).init(Vec::new()).await.map_err(failed(1))?;
        }
        Step::AddLearner { id } => {
            let leader = leader_id()?;
            // Peers will talk to this incarnation of the member's storage only: should its volume
            // be lost later, the empty member is refused instead of trusted with a stale vote.
            let incarnation = observation.statuses.get(id).map(|s| s.incarnation.clone()).unwrap_or_default();
            let request = AddMemberRequest {
                id: *id,
                peer_url: dir.peer_url(*id),
                client_url: dir.client_url(*id),
                incarnation,
            };
            client(leader).add_learner(&request).await.map_err(failed(leader))?;
        }
        Step::Promote { id } => {
            let leader = leader_id()?;
            client(leader).promote(*id).await.map_err(failed(leader))?;
        }
        Step::Remove { id, .. } => {
            let leader = leader_id()?;
            client(leader).remove_member(*id).await.map_err(failed(leader))?;
        }
        Step::ScaleStatefulSet(_) | Step::Wait(_) | Step::Refuse(_) | Step::Done => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metastore_client::MemberStatus;

    fn status(id: u64, leader: Option<u64>, term: u64, voters: &[u64]) -> ClusterStatus {
        ClusterStatus {
            cluster_id: String::new(),
            member_id: id,
            version: String::new(),
            incarnation: String::new(),
            leader_id: leader,
            term,
            state: if leader == Some(id) { "leader" } else { "follower" }.into(),
            initialized: true,
            last_log_index: None,
            commit_index: None,
            applied_index: None,
            snapshot_index: None,
            purged_index: None,
            replication: None,
            members: voters
                .iter()
                .map(|v| MemberStatus {
                    id: *v,
                    role: WireRole::Voter,
                    peer_url: String::new(),
                    client_url: String::new(),
                    incarnation: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_leader_followed_by_a_majority_is_agreed() {
        let statuses =
            BTreeMap::from([(1, status(1, Some(1), 3, &[1, 2, 3])), (2, status(2, Some(1), 3, &[1, 2, 3]))]);
        assert_eq!(agreed_leader(&statuses).map(|l| l.member_id), Some(1));
    }

    #[test]
    fn a_cut_off_leader_with_a_stale_term_is_not_acted_on() {
        // 1 still says it leads in term 3; 2 and 3 elected 2 in term 4.
        let statuses = BTreeMap::from([
            (1, status(1, Some(1), 3, &[1, 2, 3])),
            (2, status(2, Some(2), 4, &[1, 2, 3])),
            (3, status(3, Some(2), 4, &[1, 2, 3])),
        ]);
        assert_eq!(agreed_leader(&statuses).map(|l| l.member_id), Some(2));
    }

    #[test]
    fn a_leader_without_a_following_majority_is_not_trusted() {
        // Of five voters only the self-declared leader answers.
        let statuses = BTreeMap::from([(1, status(1, Some(1), 3, &[1, 2, 3, 4, 5]))]);
        assert!(agreed_leader(&statuses).is_none());
    }
}
