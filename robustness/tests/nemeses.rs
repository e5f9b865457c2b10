//! A short, fixed-seed run of every nemesis against a real three-member cluster: any anomaly
//! or lost acknowledged write fails the test. Longer runs: `metastore-robustness --all`
//! (docs/robustness.md).

use std::time::Duration;

use metastore_robustness::nemesis::Nemesis;
use metastore_robustness::network::run_test_with_own_networks;
use metastore_robustness::run::{run, Config};
use metastore_robustness::workload::Workload;

async fn survives(nemesis: Nemesis) {
    report_of(nemesis).await;
}

async fn report_of(nemesis: Nemesis) -> metastore_robustness::run::Report {
    let binary = metastore_testkit::workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        binary,
        members: 3,
        clients: 6,
        keys: 4,
        duration: Duration::from_secs(9),
        seed: 7,
        nemesis,
        workload: Workload::Mixed,
        // Long enough for the others to notice a lost leader and elect one (about 1.7 s).
        hold: Duration::from_millis(3_000),
        settle: Duration::from_millis(1_000),
        snapshot_entries: 200,
        compaction_retention: 100,
        bank_accounts: 6,
    };
    let report = run(&config).await.unwrap_or_else(|e| panic!("{nemesis:?}: {e:#}"));
    eprintln!("{}", report.summary());
    assert!(report.faults.len() >= 2 || nemesis == Nemesis::None, "the nemesis struck: {:?}", report.faults);
    assert!(report.ok > 100, "the clients made progress: {}", report.summary());
    assert!(report.grpc_operations > 0, "half the clients spoke gRPC: {}", report.summary());
    assert!(report.bank.transfers > 0 && report.bank.audits > 0, "the bank worked: {}", report.summary());
    assert!(report.watch.events > report.ok / 2, "the watchers followed: {}", report.summary());
    assert!(report.leases.leases > 0, "leases were held: {}", report.summary());
    if matches!(nemesis, Nemesis::KillLeader | Nemesis::PauseLeader | Nemesis::PartitionLeader) {
        assert!(report.elections > 0, "taking the leader away forced elections: {}", report.summary());
    }
    assert!(report.passed(), "{}", report.summary());
    report
}

/// Partitions need members in network namespaces of their own: the test re-runs itself in a
/// sandbox (root), or says why it cannot.
fn survives_partitions(nemesis: Nemesis, test: &str) {
    run_test_with_own_networks(test, || survives(nemesis));
}

#[test]
fn minority_partitioned_off() {
    survives_partitions(Nemesis::Partition, "minority_partitioned_off");
}

#[test]
fn the_leader_partitioned_off() {
    survives_partitions(Nemesis::PartitionLeader, "the_leader_partitioned_off");
}

#[test]
fn the_leader_deaf_to_the_others() {
    survives_partitions(Nemesis::PartitionOneWay, "the_leader_deaf_to_the_others");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_faults() {
    let report = report_of(Nemesis::None).await;
    let half = report.operations / 4..=report.operations * 3 / 4;
    assert!(half.contains(&report.grpc_operations), "both protocols carried load: {}", report.summary());
    assert!(report.leases.grpc_leases > 0, "a lease was held through gRPC: {}", report.summary());
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

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renewed_under_load() {
    let report = report_of(Nemesis::RotateCertificates).await;
    // Members that read renewed files never drop a connection: no request may fail.
    assert_eq!((report.failed, report.unknown), (0, 0), "{}", report.summary());
}
