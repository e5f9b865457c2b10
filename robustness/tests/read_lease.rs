//! The leader's read lease ends before anyone else can lead: a leader cut off from the other
//! members may answer linearizable reads for a moment, but never once a successor has
//! acknowledged a write.

use std::time::{Duration, Instant};

use metastore_client::Consistency;
use metastore_robustness::cluster::Cluster;
use metastore_robustness::network::run_test_with_own_networks;

#[test]
fn a_leader_cut_off_never_answers_a_linearizable_read_its_successor_outdated() {
    let test = "a_leader_cut_off_never_answers_a_linearizable_read_its_successor_outdated";
    run_test_with_own_networks(test, || async {
        let binary = metastore_testkit::workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}"));
        let cluster = Cluster::start(binary, 3, true, Vec::new(), false).expect("three members");
        let old = cluster.wait_for_leader(Duration::from_secs(20)).await.expect("a leader");
        let old_leader = cluster.client(old);
        old_leader.put("k", "before", None).await.expect("first write");
        // Reads now run on the lease the last confirmation gave.
        for _ in 0..20 {
            let read = old_leader.get("k", Consistency::Linearizable).await.expect("read on the leader");
            assert_eq!(read.map(|kv| kv.value), Some(b"before".to_vec()));
        }

        let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
        cluster.partition(&[old], &others, true).expect("partition");
        let (new, acknowledged) = write_on_successor(&cluster, &others, old).await;

        let stale = old_leader.get("k", Consistency::Stale).await.expect("a stale read still answers");
        assert_eq!(
            stale.map(|kv| kv.value),
            Some(b"before".to_vec()),
            "the cut-off leader still holds the old value, so a linearizable answer could be stale"
        );
        for attempt in 0..10 {
            match old_leader.get("k", Consistency::Linearizable).await {
                Ok(read) => assert_eq!(
                    read.map(|kv| kv.value),
                    Some(b"after".to_vec()),
                    "read {attempt} on member {old}, {:?} after member {new} acknowledged a newer write",
                    acknowledged.elapsed()
                ),
                Err(e) => eprintln!("read {attempt} on the cut-off member refused: {e}"),
            }
        }
    });
}

/// Writes "after" through whichever of `others` leads once they have replaced `old`; returns
/// that member and when the write was acknowledged.
async fn write_on_successor(cluster: &Cluster, others: &[u64], old: u64) -> (u64, Instant) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for id in others {
            let client = cluster.client(*id);
            let leads = client.cluster().await.is_ok_and(|s| s.leader_id == Some(*id) && *id != old);
            if leads && client.put("k", "after", None).await.is_ok() {
                return (*id, Instant::now());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no successor acknowledged a write within 20 s\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
