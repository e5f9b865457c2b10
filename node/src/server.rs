//! Starting and stopping a member: storage, raft, the two listeners (the client one serving
//! the HTTP API and etcd's gRPC API side by side), bootstrap.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openraft::RaftLogReader;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::config::{Bootstrap, NodeConfig};
use crate::network::{self, PeerClient, PeerNetwork, RaftRpcs, SnapshotReceiver};
use crate::raft::{self, Raft};
use crate::service::{Service, ServiceError};
use crate::storage;
use crate::types::{Member, NodeId};
use crate::{api, grpc, listener, tls};

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
    #[error("cannot use the {listener} port's TLS files: {source}")]
    Tls {
        listener: &'static str,
        #[source]
        source: metastore_client::tls::TlsError,
    },
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(#[from] ServiceError),
    #[error("cannot restore: {0}")]
    Restore(#[from] storage::restore::RestoreError),
    #[error("cannot check or remove the seed file {path}: {source}")]
    SeedFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the seed file is there; an error reading the directory is no answer to act on.
fn is_there(seed_file: &std::path::Path) -> Result<bool, StartError> {
    seed_file.try_exists().map_err(|source| StartError::SeedFile { path: seed_file.to_path_buf(), source })
}

/// Removes the seed file for good: its directory synced, so that it cannot come back after a
/// power loss.
fn consume(seed_file: &std::path::Path) -> Result<(), StartError> {
    let failed = |source| StartError::SeedFile { path: seed_file.to_path_buf(), source };
    std::fs::remove_file(seed_file).map_err(failed)?;
    let dir = seed_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed)
}

/// Seeds the empty store from `snapshot` as a new cluster of `members`.
async fn seed(
    state_machine: &storage::StateMachine,
    id: NodeId,
    snapshot: &std::path::Path,
    members: BTreeMap<NodeId, Member>,
) -> Result<(), StartError> {
    let restored = state_machine.restore(snapshot.to_path_buf(), id, members).await?;
    tracing::info!(
        member = id,
        snapshot = %snapshot.display(),
        revision = restored.revision,
        cluster_id = format_args!("{:016x}", restored.cluster_id),
        "empty store: restored from the snapshot, as a new cluster"
    );
    Ok(())
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
    // Certificates first: files that cannot be used stop the start before anything changes.
    let tls = |files: &Option<tls::TlsFiles>, listener| {
        files
            .clone()
            .map(|files| tls::Reloading::start(files, listener))
            .transpose()
            .map_err(|source| StartError::Tls { listener, source })
    };
    let (peer_tls, client_tls) = (tls(&config.peer_tls, "peer")?, tls(&config.client_tls, "client")?);
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
    // Seeded before raft starts, which reads the store's state once, at start.
    let pristine = match (&config.bootstrap, pristine) {
        (Bootstrap::Restore { snapshot, members }, true) => {
            seed(&state_machine, id, snapshot, members.clone()).await?;
            false
        }
        (Bootstrap::Restore { snapshot, .. }, false) => {
            tracing::warn!(member = id, snapshot = %snapshot.display(), "the store exists: not restoring over it");
            false
        }
        (Bootstrap::Join { restore: Some(seed_file) }, pristine) if is_there(seed_file)? => {
            if pristine {
                seed(&state_machine, id, seed_file, BTreeMap::from([(id, member.clone())])).await?;
            } else {
                tracing::warn!(member = id, seed = %seed_file.display(), "the store exists: not restoring over it");
            }
            // Restored and synced, or never to be: a seed file left behind would found another
            // cluster on a later start with an empty store (a volume wiped), which must join.
            consume(seed_file)?;
            false
        }
        (_, pristine) => pristine,
    };

    // Listen before starting raft, so that a port already in use fails the start at once.
    let peer_listener = listener::Listener { socket: bind(config.peer_listen)?, tls: peer_tls, name: "peer" };
    let client_listener =
        listener::Listener { socket: bind(config.client_listen)?, tls: client_tls, name: "client" };

    let recovered_leader_vote = log_store
        .read_vote()
        .await
        .map_err(|e| StartError::Storage {
            dir: config.data_dir.clone(),
            source: storage::StoreError::Task(e.to_string()),
        })?
        .is_some_and(|vote| vote.is_committed());
    let raft_config = raft::config(&config.raft).map_err(|e| StartError::RaftConfig(Box::new(e)))?;
    let lease = Duration::from_millis(raft_config.election_timeout_max);
    let (stop_tx, stop_rx) = watch::channel(false);
    let rpcs = RaftRpcs::new(
        SnapshotReceiver::new(state_machine.inbox(), 2 * config.limits.request_timeout),
        network::refuses_votes_until(started, recovered_leader_vote, lease),
        stop_rx.clone(),
    );

    let peer_tls = peer_listener.tls.clone().map(tls::peer_client_config).transpose();
    let peer_tls = peer_tls.map_err(|source| StartError::Tls { listener: "peer", source })?;
    let peers = PeerClient::new(config.peer_token.as_ref(), peer_tls)?;
    let network = PeerNetwork::new(peers.clone());
    let directory = network.directory();
    let raft = Raft::new(id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let directory = tokio::spawn(directory.follow(raft.clone()));
    if let Some(until) = rpcs.refuse_votes_until {
        raft::hold_elections_until(&raft, until);
    }
    let compactor = storage::Compactor::start(&reader);
    let service = Service::new(
        id,
        member.clone(),
        raft.clone(),
        reader,
        peers,
        config.raft.read_lease(),
        config.version,
    );

    // Bootstrap before serving peer traffic, so that no leader's append can reach this member
    // between the pristine check and its own initialization.
    service.bootstrap(&config.bootstrap, pristine).await?;

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let peer_routes = network::routes(
        raft.clone(),
        service.clone(),
        rpcs,
        member.incarnation.clone(),
        config.peer_token.clone(),
    );
    let peer_server = tokio::spawn(listener::serve(
        warp::service(peer_routes),
        peer_listener,
        config.limits,
        stopped(stop_rx.clone()),
    ));
    let client_routes = grpc::Dispatch {
        http: warp::service(api::routes(service.clone(), config.peer_token.clone())),
        grpc: grpc::routes(service.clone(), config.peer_token.clone(), config.watch_progress_every),
    };
    let client_server = tokio::spawn(listener::serve(
        client_routes,
        client_listener,
        config.limits,
        stopped(stop_rx.clone()),
    ));
    let change_logger = tokio::spawn(raft::log_changes(id, raft.clone()));
    let auto_compaction = match config.auto_compaction {
        Some(policy) => tokio::spawn(crate::service::auto_compaction::run(service.clone(), policy)),
        None => tokio::spawn(async {}),
    };
    let lessor = tokio::spawn(crate::service::leases::run(service.clone()));
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
    service.stop_watches();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(member = id, error = %e, "raft did not shut down cleanly");
    }
    let _ = peer_server.await;
    let _ = client_server.await;
    compactor.stop().await;
    // Release every handle on the store before returning, so that it closes now.
    for task in [change_logger, publisher, directory, auto_compaction, lessor] {
        task.abort();
        let _ = task.await;
    }
    drop(service);
    drop(raft);
    tracing::info!(member = id, "stopped");
    Ok(())
}
