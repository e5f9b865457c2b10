//! A short, fixed-seed run of every nemesis against a real three-member cluster: any anomaly
//! or lost acknowledged write fails the test. Longer runs: `metastore-robustness --all`
//! (docs/robustness.md).

use std::time::Duration;

use metastore_robustness::nemesis::Nemesis;
use metastore_robustness::run::{run, Config};
use metastore_robustness::workload::Workload;

async fn survives(nemesis: Nemesis) {
    let binary = metastore_testkit::workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        binary,
        members: 3,
        clients: 6,
        keys: 4,
        duration: Duration::from_secs(8),
        seed: 7,
        nemesis,
        workload: Workload::Mixed,
        hold: Duration::from_millis(1_500),
        settle: Duration::from_millis(1_000),
    };
    let report = run(&config).await.unwrap_or_else(|e| panic!("{nemesis:?}: {e:#}"));
    eprintln!("{}", report.summary());
    assert!(report.faults.len() >= 2 || nemesis == Nemesis::None, "the nemesis struck: {:?}", report.faults);
    assert!(report.ok > 100, "the clients made progress: {}", report.summary());
    assert!(report.passed(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_faults() {
    survives(Nemesis::None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_members_killed() {
    survives(Nemesis::Kill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed() {
    survives(Nemesis::KillLeader).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_members_paused() {
    survives(Nemesis::Pause).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_paused() {
    survives(Nemesis::PauseLeader).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_removed_and_added_back() {
    survives(Nemesis::Membership).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_wiped_and_replaced() {
    survives(Nemesis::Wipe).await;
}
