//! Rolling a changed pod template (a new image, above all) through the members one at a time,
//! never risking quorum. The StatefulSet updates pods only when they are deleted (`OnDelete`):
//! the operator decides which and when. Pure: the reconciler passes in what it observed.
//!
//! A step at a time, re-planned from what is observed each pass:
//! - nothing rolls while the membership is changing, without a leader, or while a pod is
//!   going away;
//! - a member already on the new template that is not healthy stops the roll: it is waited
//!   for while it starts, and the roll is halted once it has crashed or stayed unhealthy too
//!   long (setting the previous template back rolls back the same way);
//! - an outdated member that is not healthy is restarted first: it costs no availability;
//! - then outdated followers, highest first, each only while every voter is healthy;
//! - the leader last: leadership goes to an updated voter first, then it is a follower.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::membership::Observed;
use crate::resources::Names;

/// The label the StatefulSet controller puts on each pod: the revision it was made from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How long a member restarted on the new template may take to become healthy before the roll
/// is halted: beyond a large store's opening and catching up.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(300);

/// A member pod as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub id: u64,
    /// The StatefulSet revision it was made from (its `controller-revision-hash` label).
    pub revision: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// How long ago it was created.
    pub age: Duration,
    /// Its member container's restarts: a new version that crashes shows here first.
    pub restarts: i32,
}

impl PodState {
    /// `pod` of `names`' cluster, as seen at `now`; `None` for a pod that is not one of its
    /// members'.
    pub fn of(pod: &Pod, names: &Names, now: k8s_openapi::jiff::Timestamp) -> Option<Self> {
        let ordinal =
            pod.name_any().strip_prefix(&format!("{}-", names.stateful_set()))?.parse::<u64>().ok()?;
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let age = created.and_then(|c| now.duration_since(c).try_into().ok()).unwrap_or_default();
        let member = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        let restarts =
            member.and_then(|c| c.iter().find(|c| c.name == "metastore")).map_or(0, |c| c.restart_count);
        Some(Self {
            id: ordinal + 1,
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            age,
            restarts,
        })
    }
}

/// The next rollout step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roll {
    /// Every member runs the current template.
    Done,
    /// Delete member `id`'s pod: the StatefulSet makes it again from the current template.
    Restart {
        id: u64,
    },
    /// Hand leadership from `from` to `to` before `from` is restarted.
    TransferLeadership {
        from: u64,
        to: u64,
    },
    Wait(String),
    /// A member on the new template does not become healthy: nothing more rolls until it does,
    /// or the previous template is set back.
    Halt(String),
}

/// The next step towards every pod running `update_revision`, the StatefulSet's current
/// template.
pub fn plan(update_revision: Option<&str>, pods: &[PodState], observed: &Observed) -> Roll {
    let Some(update) = update_revision else { return Roll::Done };
    let current = |p: &&PodState| p.revision.as_deref() == Some(update);
    let healthy = |id: u64| observed.members.iter().any(|m| m.id == id && m.healthy);
    if let Some(going) = pods.iter().find(|p| p.terminating) {
        return Roll::Wait(format!("member {} is restarting", going.id));
    }
    let outdated: Vec<&PodState> = pods.iter().filter(|p| !current(p)).collect();
    if outdated.is_empty() {
        return Roll::Done;
    }
    // A member on the new template that is not healthy: is it starting, or failing?
    if let Some(sick) = pods.iter().filter(current).find(|p| !healthy(p.id)) {
        if sick.restarts > 0 || sick.age > HEALTHY_WITHIN {
            let why = if sick.restarts > 0 {
                format!("it restarted {} times", sick.restarts)
            } else {
                format!("it is not healthy after {} s", sick.age.as_secs())
            };
            return Roll::Halt(format!(
                "member {} runs the new template but {why}: the roll is halted; fix the cause, or set \
                 the previous template back to roll back",
                sick.id
            ));
        }
        return Roll::Wait(format!("member {} is starting on the new template", sick.id));
    }
    let Some(leader) = observed.leader else {
        return Roll::Wait("no leader: the roll waits for one".into());
    };
    // Restarting a member that is already down costs nothing more.
    if let Some(sick) = outdated.iter().find(|p| !healthy(p.id)) {
        return Roll::Restart { id: sick.id };
    }
    if let Some(unhealthy) = observed.members.iter().find(|m| !m.healthy) {
        return Roll::Wait(format!("member {} is not healthy: the roll waits", unhealthy.id));
    }
    if let Some(follower) = outdated.iter().filter(|p| p.id != leader).max_by_key(|p| p.id) {
        return Roll::Restart { id: follower.id };
    }
    // Only the leader is left: hand leadership to a voter on the new template.
    let voters = observed.members.iter().filter(|m| m.role == crate::crd::MemberRole::Voter);
    match voters.filter(|m| m.id != leader).map(|m| m.id).max() {
        Some(to) => Roll::TransferLeadership { from: leader, to },
        // A cluster of one: its restart is its upgrade.
        None => Roll::Restart { id: leader },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "rev-old";
    const NEW: &str = "rev-new";

    fn pod(id: u64, revision: &str) -> PodState {
        PodState {
            id,
            revision: Some(revision.into()),
            terminating: false,
            age: Duration::from_secs(600),
            restarts: 0,
        }
    }

    fn cluster(leader: u64, healthy: &[bool]) -> Observed {
        let members = crate::membership::fixtures::voters(healthy);
        Observed { leader: Some(leader), members, bootstrapped: true, ..Observed::default() }
    }

    #[test]
    fn followers_roll_first_highest_first_then_leadership_moves_and_the_old_leader_rolls() {
        let healthy = cluster(1, &[true, true, true]);
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, OLD)];
        assert_eq!(plan(Some(NEW), &pods, &healthy), Roll::Restart { id: 3 });
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, NEW)];
        assert_eq!(plan(Some(NEW), &pods, &healthy), Roll::Restart { id: 2 });
        let pods = [pod(1, OLD), pod(2, NEW), pod(3, NEW)];
        assert_eq!(plan(Some(NEW), &pods, &healthy), Roll::TransferLeadership { from: 1, to: 3 });
        let moved = cluster(3, &[true, true, true]);
        assert_eq!(plan(Some(NEW), &pods, &moved), Roll::Restart { id: 1 });
        let pods = [pod(1, NEW), pod(2, NEW), pod(3, NEW)];
        assert_eq!(plan(Some(NEW), &pods, &moved), Roll::Done);
    }

    #[test]
    fn each_step_waits_for_the_last_member_back_and_every_voter_healthy() {
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, NEW)];
        let restarting = [pod(1, OLD), pod(2, OLD), PodState { terminating: true, ..pod(3, OLD) }];
        assert!(matches!(plan(Some(NEW), &restarting, &cluster(1, &[true; 3])), Roll::Wait(_)));
        let starting = [pod(1, OLD), pod(2, OLD), PodState { age: Duration::from_secs(5), ..pod(3, NEW) }];
        let back_soon = cluster(1, &[true, true, false]);
        assert!(
            matches!(plan(Some(NEW), &starting, &back_soon), Roll::Wait(why) if why.contains("starting"))
        );
        let no_leader = Observed { leader: None, ..cluster(1, &[true; 3]) };
        assert!(matches!(plan(Some(NEW), &pods, &no_leader), Roll::Wait(_)));
    }

    #[test]
    fn an_outdated_member_that_is_down_is_restarted_first() {
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, OLD)];
        assert_eq!(plan(Some(NEW), &pods, &cluster(1, &[true, false, true])), Roll::Restart { id: 2 });
    }

    #[test]
    fn a_new_template_that_crashes_or_never_gets_healthy_halts_the_roll_and_the_old_one_rolls_back() {
        let crashing = [pod(1, OLD), pod(2, OLD), PodState { restarts: 2, ..pod(3, NEW) }];
        let sick = cluster(1, &[true, true, false]);
        assert!(
            matches!(plan(Some(NEW), &crashing, &sick), Roll::Halt(why) if why.contains("restarted 2 times"))
        );
        let stuck = [pod(1, OLD), pod(2, OLD), PodState { age: HEALTHY_WITHIN * 2, ..pod(3, NEW) }];
        assert!(matches!(plan(Some(NEW), &stuck, &sick), Roll::Halt(_)));
        // The previous template set back: the crashing member is outdated now, and down, so
        // it goes first.
        assert_eq!(plan(Some(OLD), &crashing, &sick), Roll::Restart { id: 3 });
    }

    #[test]
    fn a_cluster_of_one_restarts_its_only_member() {
        let one = cluster(1, &[true]);
        assert_eq!(plan(Some(NEW), &[pod(1, OLD)], &one), Roll::Restart { id: 1 });
        assert_eq!(plan(None, &[pod(1, OLD)], &one), Roll::Done, "no revision known: nothing to do");
    }
}
