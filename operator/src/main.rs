//! `metastore-operator`: the Kubernetes operator for `MetaStoreCluster` resources.

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{predicates, Predicate};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use metastore_operator::backup::{controller as backup_controller, MetaStoreBackup};
use metastore_operator::controller::{error_policy, reconcile, Context};
use metastore_operator::crd::MetaStoreCluster;
use metastore_operator::lease::{Election, LeaderLease};
use metastore_operator::resources;

/// The Kubernetes operator for metaStore clusters.
#[derive(Parser)]
#[command(name = "metastore-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Cluster,
    Backup,
}

#[derive(Subcommand)]
enum Command {
    /// Print a CustomResourceDefinition as YAML: MetaStoreCluster's, or MetaStoreBackup's.
    Crd {
        #[arg(value_enum, default_value = "cluster")]
        kind: CrdKind,
    },
    /// Run the controller: watch MetaStoreClusters in every namespace and reconcile them.
    Run {
        /// Where `/metrics` and `/healthz` are served.
        #[arg(long, env = "METASTORE_OPERATOR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
        metrics_address: std::net::SocketAddr,
        /// Namespace of the leader-election Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Identity in the Lease; the pod name.
        #[arg(long, env = "HOSTNAME", default_value = "metastore-operator")]
        identity: String,
    },
    /// The init container of a cluster started from a backup: in its first pod, fetch the
    /// backup into the member's empty volume, checked whole; anywhere else, do nothing.
    FetchBackup {
        /// The pod: `<cluster>-<ordinal>`; ordinal 0 is member 1.
        #[arg(long, env = "POD_NAME")]
        pod_name: String,
        /// The member's data directory.
        #[arg(long, env = "METASTORE_DATA_DIR")]
        data_dir: std::path::PathBuf,
        /// The object to fetch, as the operator's restore Secret holds it (JSON); unset once the
        /// restore is over. Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
        /// AWS_SESSION_TOKEN.
        #[arg(long, env = "METASTORE_RESTORE_SOURCE", hide_env_values = true)]
        source: Option<String>,
    },
}

/// Member id of a StatefulSet pod: its ordinal plus one.
fn member_id(pod_name: &str) -> Option<u64> {
    pod_name.rsplit_once('-')?.1.parse::<u64>().ok()?.checked_add(1)
}

#[tokio::main(flavor = "current_thread")]
async fn fetch_backup(
    pod_name: &str,
    data_dir: &std::path::Path,
    source: Option<&str>,
) -> anyhow::Result<()> {
    use metastore_operator::backup::restore::{fetch, Fetched};
    use metastore_operator::backup::{Credentials, ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN};
    let id = member_id(pod_name).with_context(|| format!("{pod_name} is not a StatefulSet pod's name"))?;
    // The keys the restore Secret copied, if the bucket needs any; otherwise whatever identity
    // the pod has.
    let key = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let credentials = match (key(ACCESS_KEY_ID), key(SECRET_ACCESS_KEY)) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Some(Credentials { access_key_id, secret_access_key, session_token: key(SESSION_TOKEN) })
        }
        _ => None,
    };
    let said = match fetch(id, source, credentials.as_ref(), data_dir).await? {
        Fetched::NotFirstMember => format!("member {id} joins the restored cluster: nothing to fetch"),
        Fetched::NothingPending => "no restore is pending: nothing to fetch".to_string(),
        Fetched::StoreExists => format!("{} holds a store: it is never restored over", data_dir.display()),
        Fetched::AlreadyThere => "the backup was fetched before: the member restores it".to_string(),
        Fetched::Fetched(verified) => {
            format!(
                "fetched the backup, {} bytes, SHA-256 {}: the member restores it",
                verified.bytes, verified.sha256
            )
        }
    };
    println!("metastore-operator fetch-backup: {said}");
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd { kind } => match match kind {
            CrdKind::Cluster => metastore_operator::crd::crd_yaml(),
            CrdKind::Backup => metastore_operator::backup::resource::crd_yaml(),
        } {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("metastore-operator: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::FetchBackup { pod_name, data_dir, source } => {
            match fetch_backup(&pod_name, &data_dir, source.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("metastore-operator fetch-backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { metrics_address, lease_namespace, identity } => {
            match run(metrics_address, &lease_namespace, identity) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("metastore-operator: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Waits until this replica holds the leader Lease, then keeps renewing it; exits the process if
/// it cannot (another replica takes over once the lease expires).
async fn lead(lease: LeaderLease) -> anyhow::Result<()> {
    loop {
        match lease.try_lead(k8s_openapi::jiff::Timestamp::now()).await {
            Ok(Election::Leading) => break,
            Ok(Election::Following { holder }) => tracing::info!(%holder, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(lease.duration() / 3).await;
    }
    tracing::info!("leading");
    tokio::spawn(async move {
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(lease.duration() / 3).await;
            // Bounded: a hung request must not outlast the lease while this replica reconciles.
            let attempt = tokio::time::timeout(
                lease.duration() / 3,
                lease.try_lead(k8s_openapi::jiff::Timestamp::now()),
            );
            let outcome = match attempt.await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            match outcome {
                Ok(Election::Leading) => last_renewal = std::time::Instant::now(),
                Ok(Election::Following { holder }) => {
                    tracing::error!(%holder, "lost the leader lease; exiting");
                    std::process::exit(1);
                }
                Err(e) if last_renewal.elapsed() > lease.duration() * 2 / 3 => {
                    tracing::error!(error = %e, "cannot renew the leader lease; exiting before it expires");
                    std::process::exit(1);
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed; retrying"),
            }
        }
    });
    Ok(())
}

#[tokio::main]
async fn run(
    metrics_address: std::net::SocketAddr,
    lease_namespace: &str,
    identity: String,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour codes only for a person at a terminal, never in a pod's logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let client =
        Client::try_default().await.context("cannot reach Kubernetes (in-cluster config or kubeconfig)")?;
    let clusters = Api::<MetaStoreCluster>::all(client.clone());
    clusters.list(&kube::api::ListParams::default().limit(1)).await.context(
        "cannot list MetaStoreClusters: is the CRD installed? (kubectl apply -f crds/metastorecluster.yaml)",
    )?;
    let lease = LeaderLease::new(
        Api::<Lease>::namespaced(client.clone(), lease_namespace),
        "metastore-operator",
        identity,
        Duration::from_secs(15),
    );
    let ctx = Arc::new(Context::new(client.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(metrics_address)
        .await
        .with_context(|| format!("cannot listen on {metrics_address} for /metrics"))?;
    let server = metastore_operator::metrics::serve(listener, ctx.metrics.clone(), async {
        let _ = stopped.await;
    });
    let server = tokio::spawn(server);
    lead(lease).await?;
    tracing::info!(%metrics_address, "watching MetaStoreClusters");
    // Reconcile on spec changes and annotation changes (pausing, resuming), on owned objects and
    // timers; not on the operator's own status writes, which change with every reconcile.
    let (reader, writer) = reflector::store();
    let specs = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::annotations), Default::default());
    // Backups: each reconciled until it succeeds or fails for good. Its own status writes do not
    // wake it (only a new generation does), so a retry waits for its requeue.
    let (backup_reader, backup_writer) = reflector::store();
    let new_backups = watcher(Api::<MetaStoreBackup>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(backup_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let backups = Controller::for_stream(new_backups, backup_reader)
        .shutdown_on_signal()
        .run(backup_controller::reconcile, backup_controller::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                // The watch itself failed: most often, the MetaStoreBackup CRD is not installed.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    tracing::warn!(error = %e, "cannot watch MetaStoreBackups (is crds/metastorebackup.yaml applied?)")
                }
                Err(e) => tracing::debug!(error = %e, "backup reconcile outcome"),
                Ok(_) => {}
            }
        });
    let backups = tokio::spawn(backups);
    Controller::for_stream(specs, reader)
        .owns(Api::<StatefulSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        // Pods belong to the StatefulSet, not to the cluster; but a member pod that starts,
        // becomes ready or comes back empty is news to its cluster, sooner than the next requeue.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(resources::MEMBER_POD_SELECTOR),
            |pod| {
                let namespace = pod.namespace()?;
                let cluster = resources::cluster_of_pod(pod.labels())?;
                Some(ObjectRef::<MetaStoreCluster>::new(cluster).within(&namespace))
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile outcome");
            }
        })
        .await;
    // Stopped by the same signal.
    let _ = backups.await;
    let _ = stop.send(());
    server.await.context("metrics server task")?;
    tracing::info!("stopped");
    Ok(())
}
