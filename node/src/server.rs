//! Starting and stopping a member: storage, raft, the two listeners, bootstrap.

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Config, RaftLogReader, SnapshotPolicy};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::config::{Bootstrap, NodeConfig, RaftTuning};
use crate::network::{self, PeerClient, PeerNetwork, RaftRpcs, SnapshotReceiver};
use crate::service::{Service, ServiceError};
use crate::storage;
use crate::types::{NodeId, Raft};
use crate::{api, listener};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {dir}: {source}")]
    Storage {
        dir: std::path::PathBuf,
        #[source]
        source: storage::StoreError,
    },
    #[error("invalid raft configuration: {0}")]
    RaftConfig(#[source] Box<openraft::ConfigError>),
    #[error("cannot start raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the peer HTTP client: {0}")]
    PeerClient(#[from] reqwest::Error),
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(#[from] ServiceError),
}

/// Keeps a restarted member from campaigning until `until`, as it keeps from voting
/// ([`network::refuses_votes_until`]): its vote for itself would break the same promise to the
/// leader. A lone voter has promised no one anything and may lead at once.
///
/// Elections are held off before raft's core first ticks; the membership is only known once
/// the core has loaded it and published metrics (right after `Raft::new` they still hold
/// openraft's empty initial ones), so the lone-voter case is decided then.
fn hold_elections_until(raft: &Raft, until: Instant) {
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
pub fn raft_config(tuning: &RaftTuning) -> Result<Arc<Config>, StartError> {
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
        snapshot_max_chunk_size: network::wire::SNAPSHOT_CHUNK_BYTES as u64,
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
    let config = config.validate().map_err(|e| StartError::RaftConfig(Box::new(e)))?;
    Ok(Arc::new(config))
}

/// Binds a listener with `SO_REUSEADDR`, so that a restarted member can take its ports back
/// while connections of its previous run linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    listen().map_err(|source| StartError::Listen { addr, source })
}

/// Runs a member until `shutdown` completes, then stops it gracefully.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let id = config.id;
    let started = Instant::now();
    let (mut log_store, state_machine, reader) = storage::open(&config.data_dir)
        .await
        .map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?;
    let pristine = storage::is_pristine(&log_store, &reader)
        .await
        .map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?;
    let mut member = config.member.clone();
    member.incarnation = log_store
        .incarnation()
        .await
        .map_err(|source| StartError::Storage { dir: config.data_dir.clone(), source })?;

    // Listen before starting raft, so that a port already in use fails the start at once.
    let peer_listener = bind(config.peer_listen)?;
    let client_listener = bind(config.client_listen)?;

    let recovered_leader_vote = log_store
        .read_vote()
        .await
        .map_err(|e| StartError::Storage {
            dir: config.data_dir.clone(),
            source: storage::StoreError::Task(e.to_string()),
        })?
        .is_some_and(|vote| vote.is_committed());
    let raft_config = raft_config(&config.raft)?;
    let lease = Duration::from_millis(raft_config.election_timeout_max);
    let (stop_tx, stop_rx) = watch::channel(false);
    let rpcs = RaftRpcs::new(
        SnapshotReceiver::new(state_machine.inbox(), 2 * config.limits.request_timeout),
        network::refuses_votes_until(started, recovered_leader_vote, lease),
        stop_rx.clone(),
    );

    let peers = PeerClient::new(config.peer_token.as_ref())?;
    let network = PeerNetwork::new(peers.clone());
    let directory = network.directory();
    let raft = Raft::new(id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let directory = tokio::spawn(directory.follow(raft.clone()));
    if let Some(until) = rpcs.refuse_votes_until {
        hold_elections_until(&raft, until);
    }
    let service = Service::new(id, member.clone(), raft.clone(), reader, peers, config.raft.read_lease());

    // Bootstrap before serving peer traffic, so that no leader's append can reach this member
    // between the pristine check and its own initialization.
    match (&config.bootstrap, pristine) {
        (Bootstrap::Static(members), true) => {
            tracing::info!(member = id, members = members.len(), "empty store: initializing the cluster");
            match service.initialize(members.clone()).await {
                Ok(()) => {}
                // openraft found raft state our pristine check did not: the cluster exists.
                Err(ServiceError::Conflict(_)) => {
                    tracing::info!(member = id, "already initialized by the leader")
                }
                Err(e) => return Err(e.into()),
            }
        }
        (Bootstrap::Static(_), false) => tracing::info!(member = id, "store has raft state: resuming"),
        (Bootstrap::Join, true) => {
            tracing::info!(member = id, "empty store: waiting to be added by a leader")
        }
        (Bootstrap::Join, false) => tracing::info!(member = id, "store has raft state: resuming"),
    }

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let peer_routes =
        network::routes(service.clone(), rpcs, member.incarnation.clone(), config.peer_token.clone());
    let peer_server = tokio::spawn(listener::serve(
        warp::service(peer_routes),
        peer_listener,
        config.limits,
        stopped(stop_rx.clone()),
    ));
    let client_server = tokio::spawn(listener::serve(
        warp::service(api::routes(service.clone(), config.peer_token.clone())),
        client_listener,
        config.limits,
        stopped(stop_rx.clone()),
    ));
    let change_logger = tokio::spawn(log_raft_changes(id, raft.clone()));
    let publisher = service.clone();
    let publisher = tokio::spawn(async move { publisher.publish_identity().await });
    tracing::info!(
        member = id,
        peer = %config.member.peer_url,
        client = %config.member.client_url,
        incarnation = %member.incarnation,
        data_dir = %config.data_dir.display(),
        "member started"
    );

    shutdown.await;
    tracing::info!(member = id, "shutting down");
    let _ = stop_tx.send(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(member = id, error = %e, "raft did not shut down cleanly");
    }
    let _ = peer_server.await;
    let _ = client_server.await;
    // Release every handle on the store before returning, so that it closes now.
    for task in [change_logger, publisher, directory] {
        task.abort();
        let _ = task.await;
    }
    drop(service);
    drop(raft);
    tracing::info!(member = id, "stopped");
    Ok(())
}

/// Logs every change of term, leader or role, so a failover can be followed from the logs.
async fn log_raft_changes(id: NodeId, raft: Raft) {
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
