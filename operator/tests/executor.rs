//! The membership executor against real `metastore` processes on 127.0.0.1: a local stand-in
//! for the StatefulSet starts and stops member processes in join mode, exactly as the pods run,
//! and the planner + executor drive raft membership through the node API.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metastore_operator::executor::{execute, observe};
use metastore_operator::membership::Step;
use support::LocalStatefulSet;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn membership_follows_one_three_five_three_one_and_keeps_every_key() {
    // As under Kubernetes: members require the cluster's peer token on membership changes.
    let mut set = LocalStatefulSet::with_peer_token(TOKEN);
    let mut written = BTreeMap::new();

    let steps = set.converge(1).await;
    assert_eq!(steps, [Step::ScaleStatefulSet(1), Step::Bootstrap]);
    set.write(&mut written, "at1").await;

    // Without the token, a step is refused and changes nothing.
    set.scale(2);
    let observation = observe(&set, &set.pod_ids(), 2, true).await;
    let refused = execute(&set, &observation, &Step::AddLearner { id: 2 }, None).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("401")), "refused without the token");
    let after = observe(&set, &set.pod_ids(), 2, true).await;
    assert_eq!(after.observed.members.len(), 1, "not even a learner was added: {:?}", after.observed);

    for (size, voters) in [(3, vec![1, 2, 3]), (5, vec![1, 2, 3, 4, 5]), (3, vec![1, 2, 3]), (1, vec![1])] {
        set.converge(size).await;
        assert_eq!(set.voters().await, voters, "raft voters at size {size}");
        assert_eq!(set.pod_ids(), voters, "pods at size {size}");
        set.assert_data(&written).await;
        let tag = format!("at{size}-{}", written.len());
        set.write(&mut written, &tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_interrupted_halfway_is_finished_by_the_next_reconcile() {
    let mut set = LocalStatefulSet::new();
    set.converge(3).await;

    // Crash point 1: the learner was added, the operator died before promoting it.
    set.scale(4);
    let observation = observe(&set, &set.pod_ids(), 4, true).await;
    execute(&set, &observation, &Step::AddLearner { id: 4 }, None).await.expect("add learner");
    let steps = set.converge(4).await;
    assert_eq!(steps.first(), Some(&Step::Promote { id: 4 }));
    assert_eq!(set.voters().await, [1, 2, 3, 4]);

    // Crash point 2: the member left raft, the operator died before shrinking the StatefulSet.
    let observation = observe(&set, &set.pod_ids(), 4, true).await;
    execute(
        &set,
        &observation,
        &Step::Remove { id: 4, why: metastore_operator::membership::Removal::ScaleDown },
        None,
    )
    .await
    .expect("remove");
    let steps = set.converge(3).await;
    assert_eq!(steps, [Step::ScaleStatefulSet(3)]);
    assert_eq!(set.voters().await, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_lost_its_storage_is_removed_and_added_anew() {
    let mut set = LocalStatefulSet::new();
    let mut written = BTreeMap::new();
    set.converge(3).await;
    set.write(&mut written, "before").await;

    // The pod of member 3 comes back on an empty volume.
    set.stop(3);
    std::fs::remove_dir_all(set.data_dir(3)).expect("wipe member 3");
    set.start(3);
    // The operator requeues until it can observe the pod; here, until it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while set.client(3).cluster().await.is_err() {
        assert!(Instant::now() < deadline, "member 3 did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let steps = set.converge(3).await;
    assert_eq!(
        steps.first(),
        Some(&Step::Remove { id: 3, why: metastore_operator::membership::Removal::StorageLost }),
        "{steps:?}"
    );
    assert!(
        steps.contains(&Step::AddLearner { id: 3 }) && steps.contains(&Step::Promote { id: 3 }),
        "{steps:?}"
    );
    assert_eq!(set.voters().await, [1, 2, 3]);
    set.assert_data(&written).await;
}
