//! How a member runs openraft: the instance over metaStore's state machine, its configuration,
//! and the background duties around it (holding elections after a restart, logging changes).

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Instant;

use openraft::{Config, SnapshotPolicy};

use crate::config::RaftTuning;
use crate::types::{NodeId, TypeConfig};

/// A member's raft: metaStore's types over its RocksDB state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachine>;

/// Keeps a restarted member from campaigning until `until`, as it keeps from voting
/// ([`crate::network::refuses_votes_until`]): its vote for itself would break the same promise to the
/// leader. A lone voter has promised no one anything and may lead at once.
///
/// Elections are held off before raft's core first ticks; the membership is only known once
/// the core has loaded it and published metrics (right after `Raft::new` they still hold
/// openraft's empty initial ones), so the lone-voter case is decided then.
pub fn hold_elections_until(raft: &Raft, until: Instant) {
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        let lone_voter = raft
            .wait(Some(until.saturating_duration_since(Instant::now())))
            .metrics(|m| m.membership_config.log_id().is_some(), "membership loaded")
            .await
            .is_ok_and(|m| m.membership_config.membership().voter_ids().count() <= 1);
        if !lone_voter {
            tokio::time::sleep_until(until.into()).await;
        }
        raft.runtime_config().elect(true);
    });
}

/// openraft's configuration for real networks and multi-MiB snapshots. Its defaults assume a
/// LAN-speed test bed (50ms heartbeats, 150–300ms elections, 200ms per snapshot chunk).
pub fn config(tuning: &RaftTuning) -> Result<Arc<Config>, openraft::ConfigError> {
    let keep = (tuning.snapshot_entries / 2).min(1_000);
    let config = Config {
        cluster_name: "metastore".to_string(),
        // Heartbeats well inside the election timeout; etcd's defaults are 100ms / 1000ms.
        heartbeat_interval: tuning.heartbeat_interval_ms,
        // Randomized in [min, 1.5*min) so that split votes resolve quickly. openraft also makes
        // a follower that knows a leader wait a lease of `max` before it campaigns, so a dead
        // leader is replaced after `max` + [min, max): 750-900 ms with the default 300 ms. A
        // range of [min, 2*min) with 500 ms took 1.8 s.
        election_timeout_min: tuning.election_timeout_ms,
        election_timeout_max: tuning.election_timeout_ms * 3 / 2,
        // Per snapshot piece: a 4 MiB piece over a slow link plus an fsync needs seconds.
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: crate::storage::PIECE_BYTES as u64,
        // Entries per append request; larger batches are split when they exceed the frame limit.
        max_payload_entries: 256,
        // A member whose log went back (it lost its disk, and kept its incarnation) is caught up
        // from scratch rather than stopping replication to it, as 0.9's
        // `loosen-follower-log-revert` did.
        allow_log_reversion: Some(true),
        // Snapshot, then purge the log behind it, every `snapshot_entries` applied entries.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_entries),
        // Keep some log behind the snapshot so that briefly lagging followers catch up from
        // the log instead of needing a whole snapshot.
        max_in_snapshot_log_to_keep: keep,
        // Purging is one range delete, so batching it buys little; keep it below the kept log.
        purge_batch_size: keep.clamp(1, 256),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Logs every change of term, leader or role, so a failover can be followed from the logs.
pub async fn log_changes(id: NodeId, raft: Raft) {
    let mut metrics = raft.metrics();
    let mut seen: Option<(u64, Option<NodeId>, openraft::ServerState)> = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader, m.state)
        };
        if seen != Some(now) {
            let (term, leader, state) = now;
            tracing::info!(member = id, term, leader = ?leader, state = ?state, "raft state changed");
            seen = Some(now);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
