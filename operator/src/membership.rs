//! Planning raft membership changes: a pure function from what the operator wants and what it
//! observed to the single next step. The reconciler carries out one step, then observes again,
//! so a crash between two halves of a change (a learner added but not promoted, a member
//! removed but its pod not yet gone) is finished by the next reconcile.
//!
//! Member `id` always lives in pod ordinal `id - 1`.

use metastore_client::quorum::{self, RemovalRefused};

use crate::crd::MemberRole;

/// A member of the raft group, as the leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMember {
    pub id: u64,
    pub role: MemberRole,
    /// Its pod answers, and the leader's log reaches it within a small lag.
    pub healthy: bool,
    /// Its pod answers with another storage incarnation than the membership records: it lost
    /// its data since it was added, and its peers refuse it until it is added anew.
    pub replaced_storage: bool,
}

/// What a member pod answered, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodView {
    pub id: u64,
    /// The pod answered its client API.
    pub reachable: bool,
    /// The pod reports raft state: it was initialized or added at some point.
    pub initialized: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The leader as the members report it; `None` when no leader can be observed.
    pub leader: Option<u64>,
    /// The raft membership (from the leader); empty without a leader.
    pub members: Vec<RaftMember>,
    /// The member pods that exist.
    pub pods: Vec<PodView>,
    /// The StatefulSet's current replica count.
    pub stateful_set_replicas: i32,
    /// The cluster was bootstrapped before (recorded in its status): it is never bootstrapped
    /// again, whatever its pods answer now.
    pub bootstrapped: bool,
    /// The cluster starts from a backup: member 1 restores it by itself, and is never
    /// bootstrapped empty.
    pub restoring: bool,
}

/// Why a member is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The cluster is shrinking past it.
    ScaleDown,
    /// Its pod came back empty while raft still lists it: its vote and log are gone, so it must
    /// not be trusted as the member it was. It is re-added as a new learner afterwards.
    StorageLost,
}

/// The next single change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the StatefulSet's replica count.
    ScaleStatefulSet(i32),
    /// Initialize raft on member 1 (pod 0), a cluster of one.
    Bootstrap,
    AddLearner {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
        why: Removal,
    },
    /// Nothing can be done until something changes by itself (a pod starts, a leader is elected).
    Wait(String),
    /// The next step would lose quorum; a person must look.
    Refuse(String),
    /// Membership and pods match the spec.
    Done,
}

impl Step {
    /// Whether carrying out this step changes the raft membership through a member's API.
    pub fn changes_membership(&self) -> bool {
        matches!(self, Step::Bootstrap | Step::AddLearner { .. } | Step::Promote { .. } | Step::Remove { .. })
    }
}

fn pod(observed: &Observed, id: u64) -> Option<&PodView> {
    observed.pods.iter().find(|p| p.id == id)
}

/// Would removing member `id` leave the remaining voters with a healthy majority? By the rule
/// the leader itself applies before removing a voter ([`quorum::check_removal`]).
fn keeps_quorum(members: &[RaftMember], id: u64) -> Result<(), RemovalRefused> {
    let voters = members.iter().filter(|m| m.role == MemberRole::Voter);
    let healthy = |v| members.iter().any(|m| m.id == v && m.healthy);
    quorum::check_removal(voters.map(|m| m.id), id, healthy)
}

/// The next step towards `desired` members, given what was observed.
pub fn plan(desired: i32, observed: &Observed) -> Step {
    let desired = desired.max(1);
    let n = desired as u64;

    if observed.restoring && observed.leader.is_some() {
        // Not before the restore is tidied up (its Secret gone): see `backup::restoring`.
        return Step::Wait("member 1 leads the restored store; the others join next".into());
    }
    let Some(_leader) = observed.leader else {
        // Growing is always safe (pods start in join mode) and may be what brings quorum back,
        // e.g. after the StatefulSet was scaled down behind the operator's back.
        if observed.stateful_set_replicas < desired {
            return Step::ScaleStatefulSet(desired);
        }
        if observed.bootstrapped || observed.pods.iter().any(|p| p.initialized) {
            return Step::Wait(
                "no leader can be observed: the members are electing one, or quorum is lost".into(),
            );
        }
        if observed.restoring {
            return Step::Wait("waiting for member 1 to restore from the backup".into());
        }
        // Bootstrap only when every pod answers and none has raft state: a pod that does not
        // answer may be a member of a cluster that exists.
        let all_answer = observed.pods.len() as i32 >= observed.stateful_set_replicas
            && observed.pods.iter().all(|p| p.reachable);
        return if all_answer && pod(observed, 1).is_some() {
            Step::Bootstrap
        } else {
            Step::Wait("waiting for every pod to answer before bootstrapping".into())
        };
    };

    // A member that lost its storage is removed, then added anew: a voter whose pod answers as
    // empty (an empty learner may only be catching up), or any member whose storage is another
    // incarnation than the one recorded (its peers refuse it; it could never catch up).
    let lost = |m: &&RaftMember| {
        m.replaced_storage
            || (m.role == MemberRole::Voter
                && pod(observed, m.id).is_some_and(|p| p.reachable && !p.initialized))
    };
    if let Some(m) = observed.members.iter().find(lost) {
        if m.role == MemberRole::Voter {
            if let Err(why) = keeps_quorum(&observed.members, m.id) {
                return Step::Refuse(format!("member {} lost its storage, but {why}", m.id));
            }
        }
        return Step::Remove { id: m.id, why: Removal::StorageLost };
    }

    // Shrink: the highest member beyond the desired size leaves raft before its pod goes.
    if let Some(m) = observed.members.iter().filter(|m| m.id > n).max_by_key(|m| m.id) {
        if m.role == MemberRole::Voter {
            if let Err(why) = keeps_quorum(&observed.members, m.id) {
                return Step::Refuse(why.to_string());
            }
        }
        return Step::Remove { id: m.id, why: Removal::ScaleDown };
    }

    // A learner within the desired size is promoted once it has caught up.
    if let Some(m) = observed.members.iter().filter(|m| m.role == MemberRole::Learner).min_by_key(|m| m.id) {
        return if m.healthy {
            Step::Promote { id: m.id }
        } else {
            Step::Wait(format!("learner {} is catching up with the leader", m.id))
        };
    }

    if observed.stateful_set_replicas != desired {
        return Step::ScaleStatefulSet(desired);
    }

    // Grow: add the lowest missing member whose pod is up, one at a time.
    if let Some(id) = (1..=n).find(|id| !observed.members.iter().any(|m| m.id == *id)) {
        return match pod(observed, id) {
            Some(p) if p.reachable => Step::AddLearner { id },
            _ => Step::Wait(format!("waiting for the pod of member {id} to start")),
        };
    }
    Step::Done
}

/// Members for other modules' tests.
#[cfg(test)]
pub mod fixtures {
    use super::RaftMember;
    use crate::crd::MemberRole;

    /// Voters 1, 2, ... healthy as `healthy` says.
    pub fn voters(healthy: &[bool]) -> Vec<RaftMember> {
        let voter = |(i, healthy): (usize, &bool)| RaftMember {
            id: i as u64 + 1,
            role: MemberRole::Voter,
            healthy: *healthy,
            replaced_storage: false,
        };
        healthy.iter().enumerate().map(voter).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberRole::{Learner, Voter};

    fn voter(id: u64) -> RaftMember {
        RaftMember { id, role: Voter, healthy: true, replaced_storage: false }
    }
    fn learner(id: u64, healthy: bool) -> RaftMember {
        RaftMember { id, role: Learner, healthy, replaced_storage: false }
    }
    fn sick(id: u64) -> RaftMember {
        RaftMember { id, role: Voter, healthy: false, replaced_storage: false }
    }
    fn up(id: u64) -> PodView {
        PodView { id, reachable: true, initialized: true }
    }
    fn empty(id: u64) -> PodView {
        PodView { id, reachable: true, initialized: false }
    }
    fn down(id: u64) -> PodView {
        PodView { id, reachable: false, initialized: false }
    }

    fn cluster(members: Vec<RaftMember>, pods: Vec<PodView>, sts: i32) -> Observed {
        Observed {
            leader: members.first().map(|m| m.id),
            members,
            pods,
            stateful_set_replicas: sts,
            bootstrapped: true,
            restoring: false,
        }
    }

    fn fresh(pods: Vec<PodView>, sts: i32) -> Observed {
        Observed { pods, stateful_set_replicas: sts, ..Observed::default() }
    }

    #[test]
    fn a_new_cluster_creates_its_pods_then_bootstraps_member_one() {
        assert_eq!(plan(3, &fresh(vec![], 0)), Step::ScaleStatefulSet(3));
        assert!(matches!(plan(3, &fresh(vec![down(1), empty(2)], 3)), Step::Wait(_)));
        assert_eq!(plan(3, &fresh(vec![empty(1), empty(2), empty(3)], 3)), Step::Bootstrap);
    }

    #[test]
    fn a_pod_that_does_not_answer_prevents_bootstrap_it_may_hold_the_cluster() {
        // Pod 0 came back empty while the others are still starting: not a new cluster.
        assert!(matches!(plan(3, &fresh(vec![empty(1), down(2), down(3)], 3)), Step::Wait(_)));
    }

    #[test]
    fn a_cluster_being_restored_waits_for_member_one_and_is_never_bootstrapped_empty() {
        let restoring = Observed { restoring: true, ..fresh(vec![empty(1), empty(2), empty(3)], 3) };
        assert!(matches!(plan(3, &restoring), Step::Wait(why) if why.contains("restore")));
        let leads = Observed {
            leader: Some(1),
            members: vec![voter(1)],
            pods: vec![up(1), empty(2), empty(3)],
            ..restoring
        };
        assert!(
            matches!(plan(3, &leads), Step::Wait(_)),
            "nobody joins until the restore is tidied up: a pod 0 that lost its volume meanwhile must not restore again"
        );
        let restored = Observed { restoring: false, ..leads };
        assert_eq!(plan(3, &restored), Step::AddLearner { id: 2 }, "then the others join as usual");
    }

    #[test]
    fn a_cluster_bootstrapped_once_is_never_bootstrapped_again() {
        let mut lost_everything = fresh(vec![empty(1), empty(2), empty(3)], 3);
        lost_everything.bootstrapped = true;
        assert!(matches!(plan(3, &lost_everything), Step::Wait(_)));
    }

    #[test]
    fn without_a_leader_a_statefulset_scaled_down_behind_our_back_is_grown_back() {
        let observed = Observed { bootstrapped: true, ..fresh(vec![up(1)], 1) };
        assert_eq!(plan(3, &observed), Step::ScaleStatefulSet(3));
    }

    #[test]
    fn after_bootstrap_members_join_one_at_a_time_as_learners_then_voters() {
        let pods = vec![up(1), empty(2), empty(3)];
        assert_eq!(plan(3, &cluster(vec![voter(1)], pods.clone(), 3)), Step::AddLearner { id: 2 });
        // Until the leader's log reaches it, the new learner answers as empty: that is not a loss.
        let catching_up = cluster(vec![voter(1), learner(2, false)], pods, 3);
        assert!(matches!(plan(3, &catching_up), Step::Wait(_)));
        let pods = vec![up(1), up(2), empty(3)];
        assert_eq!(
            plan(3, &cluster(vec![voter(1), learner(2, true)], pods.clone(), 3)),
            Step::Promote { id: 2 }
        );
        assert_eq!(plan(3, &cluster(vec![voter(1), voter(2)], pods, 3)), Step::AddLearner { id: 3 });
    }

    #[test]
    fn a_learner_still_catching_up_is_not_promoted() {
        let observed = cluster(vec![voter(1), learner(2, false)], vec![up(1), up(2)], 2);
        assert!(matches!(plan(2, &observed), Step::Wait(_)));
    }

    #[test]
    fn a_missing_members_pod_that_is_not_up_is_waited_for() {
        let observed = cluster(vec![voter(1), voter(2), voter(3)], vec![up(1), up(2), up(3), down(4)], 5);
        assert!(matches!(plan(5, &observed), Step::Wait(_)));
    }

    #[test]
    fn scaling_up_grows_the_statefulset_before_adding_members() {
        let observed = cluster(vec![voter(1), voter(2), voter(3)], vec![up(1), up(2), up(3)], 3);
        assert_eq!(plan(5, &observed), Step::ScaleStatefulSet(5));
    }

    #[test]
    fn scaling_down_removes_the_highest_member_from_raft_before_shrinking_the_statefulset() {
        let members = vec![voter(1), voter(2), voter(3), voter(4), voter(5)];
        let pods = vec![up(1), up(2), up(3), up(4), up(5)];
        let step = plan(3, &cluster(members, pods.clone(), 5));
        assert_eq!(step, Step::Remove { id: 5, why: Removal::ScaleDown });
        // Crash point: 4 and 5 left raft, the StatefulSet still has five pods.
        let step = plan(3, &cluster(vec![voter(1), voter(2), voter(3)], pods, 5));
        assert_eq!(step, Step::ScaleStatefulSet(3));
    }

    #[test]
    fn a_scale_down_that_would_lose_quorum_is_refused() {
        // 1, 2, 3 with 2 unhealthy: removing 3 leaves {1, 2} with one healthy voter.
        let observed = cluster(vec![voter(1), sick(2), voter(3)], vec![up(1), down(2), up(3)], 3);
        assert!(matches!(plan(2, &observed), Step::Refuse(_)));
    }

    #[test]
    fn a_learner_added_but_not_promoted_before_a_crash_is_promoted_next() {
        let observed = cluster(
            vec![voter(1), voter(2), voter(3), learner(4, true)],
            vec![up(1), up(2), up(3), up(4)],
            4,
        );
        assert_eq!(plan(4, &observed), Step::Promote { id: 4 });
    }

    #[test]
    fn a_member_whose_storage_was_lost_is_removed_then_re_added() {
        let pods = vec![up(1), up(2), empty(3)];
        let lost = cluster(vec![voter(1), voter(2), sick(3)], pods.clone(), 3);
        assert_eq!(plan(3, &lost), Step::Remove { id: 3, why: Removal::StorageLost });
        let removed = cluster(vec![voter(1), voter(2)], pods, 3);
        assert_eq!(plan(3, &removed), Step::AddLearner { id: 3 });
    }

    #[test]
    fn a_learner_back_with_another_storage_incarnation_is_removed_not_waited_on() {
        let mut replaced = learner(3, false);
        replaced.replaced_storage = true;
        let observed = cluster(vec![voter(1), voter(2), replaced], vec![up(1), up(2), empty(3)], 3);
        assert_eq!(plan(3, &observed), Step::Remove { id: 3, why: Removal::StorageLost });
    }

    #[test]
    fn a_lost_member_is_not_removed_when_that_would_lose_quorum() {
        // Three voters, 2 is down and 3 came back empty: removing 3 leaves {1, 2}, one healthy.
        let observed = cluster(vec![voter(1), sick(2), sick(3)], vec![up(1), down(2), empty(3)], 3);
        assert!(matches!(plan(3, &observed), Step::Refuse(_)));
    }

    #[test]
    fn without_a_leader_an_initialized_cluster_is_waited_for_never_re_bootstrapped() {
        let observed = fresh(vec![up(1), up(2), empty(3)], 3);
        assert!(matches!(plan(3, &observed), Step::Wait(_)));
    }

    #[test]
    fn a_matching_cluster_needs_nothing() {
        let observed = cluster(vec![voter(1), voter(2), voter(3)], vec![up(1), up(2), up(3)], 3);
        assert_eq!(plan(3, &observed), Step::Done);
    }

    #[test]
    fn the_last_voter_is_never_removed() {
        let observed = cluster(vec![voter(1)], vec![empty(1)], 1);
        assert!(matches!(plan(1, &observed), Step::Refuse(_)));
    }
}
