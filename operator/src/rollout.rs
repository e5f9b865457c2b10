//! Rolling a changed pod template (a new image, above all) through the members one at a time,
//! never risking quorum. The StatefulSet updates pods only when they are deleted (`OnDelete`):
//! the operator decides which and when. Pure: the reconciler passes in what it observed.
//!
//! A step at a time, re-planned from what is observed each pass:
//! - nothing rolls while the membership is changing, without a leader, or while a pod is
//!   going away;
//! - a member already on the new template is waited for until it is back: healthy, ready, and
//!   up for [`SETTLE`]; the roll is halted once it has crashed or stayed unhealthy too long
//!   (setting the previous template back rolls back the same way);
//! - an outdated member that is not healthy is restarted first, if the others keep a healthy
//!   majority without it: it costs no availability;
//! - then outdated followers, highest first, each only while every voter is healthy;
//! - the leader last: leadership goes to a voter on the new template first, then it is a
//!   follower.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use metastore_client::quorum;

use crate::crd::MemberRole;
use crate::membership::Observed;
use crate::resources::Names;

/// The label the StatefulSet controller puts on each pod: the revision it was made from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How long a member restarted on the new template may take to become healthy before the roll
/// is halted: beyond a large store's opening and catching up.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(300);
/// How long a restarted member must have been Ready without a break (and healthy) before the
/// next is restarted: the leader's view of it is then of the member as it is now.
pub const SETTLE: Duration = Duration::from_secs(10);
/// A pod whose Ready condition last changed within this of its creation never became Ready.
const NEVER_READY_SLACK: Duration = Duration::from_secs(60);

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
    /// How long ago its member container last stopped (crashed, or was killed), if ever.
    pub last_crash: Option<Duration>,
    /// How long it has been Ready (the member's `/readyz`: it has a leader and has applied
    /// what is committed) without a break; `None` while it is not.
    pub ready_for: Option<Duration>,
    /// It has never been Ready since it was made.
    pub never_ready: bool,
}

impl PodState {
    /// `pod` of `names`' cluster, as seen at `now`; `None` for a pod that is not one of its
    /// members'.
    pub fn of(pod: &Pod, names: &Names, now: k8s_openapi::jiff::Timestamp) -> Option<Self> {
        let ordinal =
            pod.name_any().strip_prefix(&format!("{}-", names.stateful_set()))?.parse::<u64>().ok()?;
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let age = created.and_then(|c| now.duration_since(c).try_into().ok()).unwrap_or_default();
        let since = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| -> Option<Duration> {
            now.duration_since(t.0).try_into().ok()
        };
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        let member = statuses.and_then(|c| c.iter().find(|c| c.name == "metastore"));
        let restarts = member.map_or(0, |c| c.restart_count);
        let stopped = member.and_then(|c| c.last_state.as_ref()).and_then(|s| s.terminated.as_ref());
        let last_crash = stopped.and_then(|t| t.finished_at.as_ref()).and_then(since);
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        let condition = conditions.and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let changed = condition.and_then(|c| c.last_transition_time.as_ref()).and_then(since);
        let ready_for = condition.filter(|c| c.status == "True").map(|_| changed.unwrap_or(age));
        // Not Ready since it started: the kubelet's first word on it was its last change.
        let never_ready =
            ready_for.is_none() && changed.is_none_or(|c| age.saturating_sub(c) < NEVER_READY_SLACK);
        Some(Self {
            id: ordinal + 1,
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            age,
            restarts,
            last_crash,
            ready_for,
            never_ready,
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

/// The next step towards every one of the `replicas` pods running `update_revision`, the
/// StatefulSet's current template, given the `pods` listed and the members observed after.
pub fn plan(update_revision: Option<&str>, replicas: u64, pods: &[PodState], observed: &Observed) -> Roll {
    let Some(update) = update_revision else { return Roll::Done };
    let current = |p: &&PodState| p.revision.as_deref() == Some(update);
    let healthy = |id: u64| observed.members.iter().any(|m| m.id == id && m.healthy);
    // Back: healthy by the leader's view, and Ready by its own long enough for the leader's
    // view to be of the member as it is now.
    let back = |p: &PodState| healthy(p.id) && p.ready_for.is_some_and(|r| r >= SETTLE);
    // Restarts that count against a release: recent ones. A member never rolled that once
    // crashed (weeks ago, say) is no evidence against the template it runs.
    let crashed = |p: &PodState| p.last_crash.is_some_and(|ago| ago < HEALTHY_WITHIN);
    if let Some(going) = pods.iter().find(|p| p.terminating) {
        return Roll::Wait(format!("member {} is restarting", going.id));
    }
    if let Some(missing) = (1..=replicas).find(|id| !pods.iter().any(|p| p.id == *id)) {
        return Roll::Wait(format!("member {missing}'s pod is being made again"));
    }
    let outdated: Vec<&PodState> = pods.iter().filter(|p| !current(p)).collect();
    let halted = |p: &PodState, why: String| {
        Roll::Halt(format!(
            "member {} runs the new template but {why}: the roll is halted; fix the cause, or set the \
             previous template back to roll back",
            p.id
        ))
    };
    for p in pods.iter().filter(current) {
        let restarted = || {
            format!(
                "it restarted {} times, the last {} s ago",
                p.restarts,
                p.last_crash.unwrap_or_default().as_secs()
            )
        };
        if outdated.is_empty() {
            // The roll is over; its last member crash-looping since it was made is its failure.
            if crashed(p) && !back(p) && p.age < HEALTHY_WITHIN {
                return halted(p, restarted());
            }
            continue;
        }
        if crashed(p) {
            return halted(p, restarted());
        }
        if !back(p) {
            if p.never_ready && p.age > HEALTHY_WITHIN {
                return halted(p, format!("it has not become ready in {} s", p.age.as_secs()));
            }
            if p.age < HEALTHY_WITHIN {
                return Roll::Wait(format!("member {} is starting on the new template", p.id));
            }
            return Roll::Wait(format!("member {} is not healthy: the roll waits", p.id));
        }
    }
    if outdated.is_empty() {
        return Roll::Done;
    }
    let Some(leader) = observed.leader else {
        return Roll::Wait("no leader: the roll waits for one".into());
    };
    let voters: Vec<_> = observed.members.iter().filter(|m| m.role == MemberRole::Voter).collect();
    // Whether the voters other than `id` keep a healthy majority without it (the two members
    // of a cluster of two, the only one of one, cannot: their restarts pause writes).
    let spare = |id: u64| {
        let others = voters.iter().filter(|m| m.id != id && m.healthy).count();
        others >= quorum::quorum(voters.len()).min(voters.len().saturating_sub(1))
    };
    // Restarting a member that is already down costs nothing more, if it is not voting still.
    if let Some(sick) = outdated.iter().find(|p| !healthy(p.id)) {
        if !spare(sick.id) {
            return Roll::Wait(format!("restarting member {} would leave too few healthy voters", sick.id));
        }
        return Roll::Restart { id: sick.id };
    }
    if let Some(unhealthy) = observed.members.iter().find(|m| !m.healthy) {
        return Roll::Wait(format!("member {} is not healthy: the roll waits", unhealthy.id));
    }
    if let Some(follower) = outdated.iter().filter(|p| p.id != leader).max_by_key(|p| p.id) {
        return Roll::Restart { id: follower.id };
    }
    // Only the leader is left: hand leadership to a voter already on the new template.
    let updated = |id: u64| pods.iter().any(|p| p.id == id && current(&p));
    match voters.iter().map(|m| m.id).filter(|id| *id != leader && updated(*id)).max() {
        Some(to) => Roll::TransferLeadership { from: leader, to },
        // A cluster of one: its restart is its upgrade.
        None if voters.len() <= 1 => Roll::Restart { id: leader },
        None => Roll::Wait("no other voter on the new template to hand leadership to".into()),
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
            last_crash: None,
            ready_for: Some(Duration::from_secs(590)),
            never_ready: false,
        }
    }

    /// A pod just made on `revision`, not Ready yet.
    fn young_on(id: u64, revision: &str) -> PodState {
        PodState { age: Duration::from_secs(20), ready_for: None, never_ready: true, ..pod(id, revision) }
    }

    fn young(id: u64) -> PodState {
        young_on(id, NEW)
    }

    fn crash_looping(id: u64, restarts: i32) -> PodState {
        PodState { restarts, last_crash: Some(Duration::from_secs(3)), ..young(id) }
    }

    fn cluster(leader: u64, healthy: &[bool]) -> Observed {
        let members = crate::membership::fixtures::voters(healthy);
        Observed { leader: Some(leader), members, bootstrapped: true, ..Observed::default() }
    }

    fn plan3(pods: &[PodState], observed: &Observed) -> Roll {
        plan(Some(NEW), 3, pods, observed)
    }

    #[test]
    fn followers_roll_first_highest_first_then_leadership_moves_and_the_old_leader_rolls() {
        let healthy = cluster(1, &[true, true, true]);
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, OLD)];
        assert_eq!(plan3(&pods, &healthy), Roll::Restart { id: 3 });
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, NEW)];
        assert_eq!(plan3(&pods, &healthy), Roll::Restart { id: 2 });
        let pods = [pod(1, OLD), pod(2, NEW), pod(3, NEW)];
        assert_eq!(plan3(&pods, &healthy), Roll::TransferLeadership { from: 1, to: 3 });
        let moved = cluster(3, &[true, true, true]);
        assert_eq!(plan3(&pods, &moved), Roll::Restart { id: 1 });
        let pods = [pod(1, NEW), pod(2, NEW), pod(3, NEW)];
        assert_eq!(plan3(&pods, &moved), Roll::Done);
    }

    #[test]
    fn each_step_waits_for_the_last_member_back_settled_and_every_voter_healthy() {
        let all = cluster(1, &[true; 3]);
        let restarting = [pod(1, OLD), pod(2, OLD), PodState { terminating: true, ..pod(3, OLD) }];
        assert!(matches!(plan3(&restarting, &all), Roll::Wait(_)));
        let gone = [pod(1, OLD), pod(2, OLD)];
        assert!(
            matches!(plan3(&gone, &all), Roll::Wait(why) if why.contains("member 3")),
            "a pod deleted and not yet made again, whatever the members said a moment before"
        );
        let just_up =
            [pod(1, OLD), pod(2, OLD), PodState { ready_for: Some(Duration::from_secs(2)), ..young(3) }];
        assert!(
            matches!(plan3(&just_up, &all), Roll::Wait(why) if why.contains("starting")),
            "healthy by the leader's memory is not back yet"
        );
        let not_ready = [pod(1, OLD), pod(2, OLD), young(3)];
        assert!(matches!(plan3(&not_ready, &all), Roll::Wait(_)));
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, NEW)];
        let no_leader = Observed { leader: None, ..all };
        assert!(matches!(plan3(&pods, &no_leader), Roll::Wait(_)));
    }

    #[test]
    fn an_outdated_member_that_is_down_is_restarted_first_if_the_others_keep_a_majority() {
        let pods = [pod(1, OLD), pod(2, OLD), pod(3, OLD)];
        assert_eq!(plan3(&pods, &cluster(1, &[true, false, true])), Roll::Restart { id: 2 });
        assert!(
            matches!(plan3(&pods, &cluster(1, &[true, false, false])), Roll::Wait(why) if why.contains("too few")),
            "member 2 may be slow but voting: restarting it could lose the majority"
        );
    }

    #[test]
    fn a_new_template_that_crashes_or_never_gets_healthy_halts_the_roll_and_the_old_one_rolls_back() {
        let crashing = [pod(1, OLD), pod(2, OLD), crash_looping(3, 2)];
        let sick = cluster(1, &[true, true, false]);
        assert!(matches!(plan3(&crashing, &sick), Roll::Halt(why) if why.contains("restarted 2 times")));
        let between_crashes =
            [pod(1, OLD), pod(2, OLD), PodState { ready_for: Some(SETTLE * 2), ..crash_looping(3, 1) }];
        assert!(
            matches!(plan3(&between_crashes, &cluster(1, &[true; 3])), Roll::Halt(_)),
            "healthy for now, but it crashed: the next member is not risked"
        );
        let stuck = [pod(1, OLD), pod(2, OLD), PodState { age: HEALTHY_WITHIN * 2, ..young(3) }];
        assert!(matches!(plan3(&stuck, &sick), Roll::Halt(_)));
        // The previous template set back: the crashing member is outdated now, and down, so
        // it goes first.
        assert_eq!(plan(Some(OLD), 3, &crashing, &sick), Roll::Restart { id: 3 });
        // The last member rolled crash-loops: the roll is over, but not well.
        let last = [pod(1, NEW), pod(2, NEW), crash_looping(3, 3)];
        assert!(matches!(plan3(&last, &sick), Roll::Halt(_)));
    }

    #[test]
    fn a_rollback_is_not_halted_by_restarts_of_members_it_never_touched() {
        // Member 1 crashed weeks ago; member 3 crashes on the new template.
        let old_crash =
            PodState { restarts: 4, last_crash: Some(Duration::from_secs(86_400)), ..pod(1, OLD) };
        let pods = [old_crash.clone(), pod(2, OLD), crash_looping(3, 2)];
        let sick = cluster(1, &[true, true, false]);
        assert!(matches!(plan3(&pods, &sick), Roll::Halt(_)));
        assert_eq!(plan(Some(OLD), 3, &pods, &sick), Roll::Restart { id: 3 }, "back to the old template");
        let rolled_back = [old_crash, pod(2, OLD), PodState { ready_for: Some(SETTLE), ..young_on(3, OLD) }];
        assert_eq!(plan(Some(OLD), 3, &rolled_back, &cluster(1, &[true; 3])), Roll::Done);
        let crashing_not_rolled = [
            pod(1, NEW),
            pod(2, NEW),
            PodState {
                restarts: 1,
                last_crash: Some(Duration::from_secs(30)),
                ready_for: None,
                ..pod(3, NEW)
            },
        ];
        assert_eq!(
            plan3(&crashing_not_rolled, &cluster(1, &[true, true, false])),
            Roll::Done,
            "a member that crashes long after it was made is unhealthy, not a failed roll"
        );
    }

    #[test]
    fn leadership_goes_only_to_a_voter_on_the_new_template() {
        let pods = [pod(1, OLD), pod(2, NEW), pod(3, OLD)];
        let three_leads_but_two_is_down = cluster(3, &[true, false, true]);
        assert!(matches!(plan3(&pods, &three_leads_but_two_is_down), Roll::Halt(_) | Roll::Wait(_)));
        let pods = [pod(1, NEW), pod(2, NEW), pod(3, OLD)];
        assert_eq!(plan3(&pods, &cluster(3, &[true; 3])), Roll::TransferLeadership { from: 3, to: 2 });
    }

    #[test]
    fn a_cluster_of_one_restarts_its_only_member() {
        let one = cluster(1, &[true]);
        assert_eq!(plan(Some(NEW), 1, &[pod(1, OLD)], &one), Roll::Restart { id: 1 });
        assert_eq!(plan(None, 1, &[pod(1, OLD)], &one), Roll::Done, "no revision known: nothing to do");
    }
}
