//! The `MetaStoreCluster` status, built from what the members themselves report. Pure: the
//! reconciler passes in the observation, the planned step and the current time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{MemberRole, MemberState, MetaStoreClusterStatus, Phase, RestorePhase, RestoreStatus};
use crate::executor::Observation;
use crate::membership::Step;
use crate::resources::Names;
use crate::rollout::Roll;

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Every member runs the StatefulSet's current template.
pub const UPDATED: &str = "Updated";
/// Only on clusters started from a backup.
pub const RESTORED: &str = "Restored";

/// A condition as computed now; its transition time is kept from `previous` when its status did
/// not change, as Kubernetes conventions ask.
fn condition(
    previous: &[Condition],
    type_: &str,
    holds: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if holds { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn step_reason(step: &Step) -> &'static str {
    match step {
        Step::ScaleStatefulSet(_) => "ScalingStatefulSet",
        Step::Bootstrap => "Bootstrapping",
        Step::AddLearner { .. } => "AddingMember",
        Step::Promote { .. } => "PromotingMember",
        Step::Remove { .. } => "RemovingMember",
        Step::Wait(_) => "Waiting",
        Step::Refuse(_) => "StepRefused",
        Step::Done => "Converged",
    }
}

fn step_message(step: &Step) -> String {
    match step {
        Step::ScaleStatefulSet(n) => format!("setting the StatefulSet to {n} pods"),
        Step::Bootstrap => "initializing member 1".to_string(),
        Step::AddLearner { id } => format!("adding member {id} as a learner"),
        Step::Promote { id } => format!("promoting member {id} to voter"),
        Step::Remove { id, why } => format!("removing member {id} ({why:?})"),
        Step::Wait(why) | Step::Refuse(why) => why.clone(),
        Step::Done => "raft membership matches the spec".to_string(),
    }
}

/// Records a rollout step in `status`: the `Updated` condition, and the phase while it rolls.
/// Without one (the membership was changing) the condition stays as it was.
pub fn record_roll(
    status: &mut MetaStoreClusterStatus,
    roll: Option<&Roll>,
    previous: &[Condition],
    now: &Time,
) {
    let Some(roll) = roll else {
        status.conditions.extend(previous.iter().find(|c| c.type_ == UPDATED).cloned());
        return;
    };
    let generation = status.observed_generation;
    let (holds, reason, message) = match roll {
        Roll::Done => (true, "UpToDate", "every member runs the current template".to_string()),
        Roll::Restart { id } => (false, "Rolling", format!("restarting member {id} on the current template")),
        Roll::TransferLeadership { from, to } => {
            (false, "Rolling", format!("member {from} hands leadership to member {to} before its restart"))
        }
        Roll::Wait(why) => (false, "Rolling", why.clone()),
        Roll::Halt(why) => (false, "RollHalted", why.clone()),
    };
    status.conditions.push(condition(previous, UPDATED, holds, reason, message, generation, now));
    if !holds && status.phase == Some(Phase::Running) {
        status.phase = Some(Phase::Upgrading);
    }
    if matches!(roll, Roll::Halt(_)) {
        status.phase = Some(Phase::Degraded);
    }
}

/// The `Restored` condition of a cluster started from a backup, as its restore stands.
pub fn restore_condition(
    restore: &RestoreStatus,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let location = restore.location.as_deref().unwrap_or("the backup");
    let (holds, reason, message) = match restore.phase {
        RestorePhase::Restoring => match &restore.message {
            Some(stalled) => (false, "RestoreStalled", stalled.clone()),
            None => (false, "Restoring", format!("member 1 is restoring {location}")),
        },
        RestorePhase::Restored => (true, "Restored", format!("started from {location}")),
        RestorePhase::Failed => {
            (false, "RestoreFailed", restore.message.clone().unwrap_or_else(|| "the restore failed".into()))
        }
    };
    condition(previous, RESTORED, holds, reason, message, generation, now)
}

/// The status to write for `names`' cluster at `generation`, given what was observed, the
/// step planned from it, and the conditions currently recorded.
pub fn build(
    names: &Names,
    generation: Option<i64>,
    observation: &Observation,
    step: &Step,
    previous: &[Condition],
    now: &Time,
) -> MetaStoreClusterStatus {
    let observed = &observation.observed;
    let leader = observed.leader;
    let voters: Vec<_> = observed.members.iter().filter(|m| m.role == MemberRole::Voter).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let quorum = metastore_client::quorum::quorum(voters.len());
    let available = leader.is_some() && !voters.is_empty() && healthy_voters >= quorum;
    let unhealthy: Vec<u64> = observed.members.iter().filter(|m| !m.healthy).map(|m| m.id).collect();
    let ready_replicas = observation
        .statuses
        .values()
        .filter(|s| s.leader_id.is_some() && s.applied_index >= s.commit_index)
        .count();

    let phase = match (leader, step) {
        (None, Step::Bootstrap | Step::ScaleStatefulSet(_)) => Phase::Bootstrapping,
        (None, _) if observed.pods.iter().any(|p| p.initialized) => Phase::Failed,
        (None, _) => Phase::Pending,
        (Some(_), Step::Refuse(_)) => Phase::Degraded,
        (Some(_), Step::Done) if !unhealthy.is_empty() => Phase::Degraded,
        (Some(_), Step::Done) => Phase::Running,
        (Some(_), _) => Phase::Scaling,
    };

    let (available_reason, available_message) = match leader {
        None => ("NoLeader", "no member reports a leader".to_string()),
        Some(_) if !available => {
            ("QuorumAtRisk", format!("{healthy_voters} of {} voters healthy, {quorum} needed", voters.len()))
        }
        Some(id) => (
            "QuorumHealthy",
            format!("leader {}, {healthy_voters} of {} voters healthy", names.pod(id), voters.len()),
        ),
    };
    let degraded = matches!(step, Step::Refuse(_)) || !unhealthy.is_empty();
    let (degraded_reason, degraded_message) = if let Step::Refuse(why) = step {
        ("StepRefused", why.clone())
    } else if !unhealthy.is_empty() {
        ("MemberUnhealthy", format!("unhealthy members: {unhealthy:?}"))
    } else {
        ("AllMembersHealthy", "every member answers and keeps up".to_string())
    };
    let conditions = vec![
        condition(previous, AVAILABLE, available, available_reason, available_message, generation, now),
        condition(
            previous,
            PROGRESSING,
            !matches!(step, Step::Done | Step::Refuse(_)),
            step_reason(step),
            step_message(step),
            generation,
            now,
        ),
        condition(previous, DEGRADED, degraded, degraded_reason, degraded_message, generation, now),
    ];

    let members = observed
        .members
        .iter()
        .map(|m| MemberState {
            id: m.id,
            pod: names.pod(m.id),
            role: m.role,
            healthy: m.healthy,
            applied_index: observation.statuses.get(&m.id).and_then(|s| s.applied_index),
            version: observation.statuses.get(&m.id).map(|s| s.version.clone()).filter(|v| !v.is_empty()),
        })
        .collect();

    MetaStoreClusterStatus {
        phase: Some(phase),
        replicas: i32::try_from(voters.len()).unwrap_or(i32::MAX),
        ready_replicas: i32::try_from(ready_replicas).unwrap_or(i32::MAX),
        leader: leader.map(|id| names.pod(id)),
        term: leader.and_then(|id| observation.statuses.get(&id)).map(|s| s.term),
        members,
        conditions,
        observed_generation: generation,
        bootstrapped: observed.bootstrapped || leader.is_some(),
        selector: Some(crate::resources::selector_string(names)),
        // Filled in by the backup scheduler, which reads the cluster's backups.
        backups: None,
        // Filled in by the restore, which knows the backup.
        restore: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Observed, PodView, Removal};
    use metastore_client::ClusterStatus;
    use std::collections::BTreeMap;

    fn names() -> Names {
        Names { cluster: "demo".into(), namespace: "ns".into() }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("time"))
    }

    fn member_status(id: u64, leader: Option<u64>, applied: u64, committed: u64) -> ClusterStatus {
        ClusterStatus {
            cluster_id: String::new(),
            member_id: id,
            version: String::new(),
            incarnation: format!("inc-{id}"),
            leader_id: leader,
            term: 4,
            state: if leader == Some(id) { "leader" } else { "follower" }.into(),
            initialized: true,
            last_log_index: Some(committed),
            commit_index: Some(committed),
            applied_index: Some(applied),
            snapshot_index: None,
            purged_index: None,
            replication: None,
            members: vec![],
        }
    }

    fn observation(healthy: &[bool]) -> Observation {
        let members = crate::membership::fixtures::voters(healthy);
        let pods = members
            .iter()
            .map(|m| PodView { id: m.id, reachable: m.healthy, initialized: m.healthy })
            .collect();
        let statuses: BTreeMap<u64, ClusterStatus> = members
            .iter()
            .filter(|m| m.healthy)
            .map(|m| (m.id, member_status(m.id, Some(1), 10, 10)))
            .collect();
        Observation {
            observed: Observed {
                leader: Some(1),
                members,
                pods,
                stateful_set_replicas: healthy.len() as i32,
                bootstrapped: true,
                restoring: false,
            },
            statuses,
        }
    }

    fn find<'a>(status: &'a MetaStoreClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).expect("condition present")
    }

    #[test]
    fn a_converged_healthy_cluster_is_running_and_available() {
        let status = build(&names(), Some(3), &observation(&[true, true, true]), &Step::Done, &[], &now());
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(status.leader.as_deref(), Some("demo-0"));
        assert_eq!(status.term, Some(4));
        assert_eq!(find(&status, AVAILABLE).status, "True");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.members[2].pod, "demo-2");
    }

    #[test]
    fn losing_quorum_clears_available() {
        let status = build(&names(), Some(1), &observation(&[true, false, false]), &Step::Done, &[], &now());
        let available = find(&status, AVAILABLE);
        assert_eq!((available.status.as_str(), available.reason.as_str()), ("False", "QuorumAtRisk"));
        assert_eq!(find(&status, DEGRADED).status, "True");
        assert_eq!(status.phase, Some(Phase::Degraded));
    }

    #[test]
    fn without_a_leader_nothing_is_available() {
        let mut obs = observation(&[true, true, true]);
        obs.observed.leader = None;
        let status = build(&names(), Some(1), &obs, &Step::Wait("electing".into()), &[], &now());
        assert_eq!(find(&status, AVAILABLE).reason, "NoLeader");
        assert_eq!(status.phase, Some(Phase::Failed));
    }

    #[test]
    fn a_membership_step_in_flight_is_progressing_and_scaling() {
        let step = Step::Remove { id: 3, why: Removal::ScaleDown };
        let status = build(&names(), Some(2), &observation(&[true, true, true]), &step, &[], &now());
        let progressing = find(&status, PROGRESSING);
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "RemovingMember"));
        assert_eq!(status.phase, Some(Phase::Scaling));
    }

    #[test]
    fn a_refused_step_is_reported_as_degraded_with_the_reason() {
        let step = Step::Refuse("removing member 3 would lose quorum".into());
        let status = build(&names(), Some(2), &observation(&[true, true, true]), &step, &[], &now());
        let degraded = find(&status, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "StepRefused"));
        assert!(degraded.message.contains("would lose quorum"));
    }

    #[test]
    fn transition_times_change_only_when_a_condition_flips() {
        let first = build(&names(), Some(1), &observation(&[true, true, true]), &Step::Done, &[], &now());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("time"));
        let same = build(
            &names(),
            Some(1),
            &observation(&[true, true, true]),
            &Step::Done,
            &first.conditions,
            &later,
        );
        assert_eq!(find(&same, AVAILABLE).last_transition_time, now());
        let lost = build(
            &names(),
            Some(1),
            &observation(&[true, false, false]),
            &Step::Done,
            &same.conditions,
            &later,
        );
        assert_eq!(find(&lost, AVAILABLE).last_transition_time, later);
    }

    #[test]
    fn a_member_that_has_not_applied_what_is_committed_is_not_ready() {
        let mut obs = observation(&[true, true, true]);
        obs.statuses.insert(3, member_status(3, Some(1), 5, 10));
        let status = build(&names(), Some(1), &obs, &Step::Done, &[], &now());
        assert_eq!(status.ready_replicas, 2);
    }
}
