//! The reconciler of `MetaStoreBackup`s: each is taken once, from a healthy member of its
//! cluster, and its status says where it went or why it could not be kept.
//!
//! running (attempts +1) → upload → succeeded | retry later | failed after `MAX_ATTEMPTS`

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::schedule::is_scheduled;
use super::{
    object_path, prune, upload, BackupError, BackupPhase, Credentials, CredentialsError, MetaStoreBackup,
    MetaStoreBackupStatus,
};
use crate::controller::{read_peer_token, Context, MANAGER};
use crate::crd::MetaStoreCluster;
use crate::executor::MemberDirectory;
use crate::metrics::ClusterLabels;
use crate::resources::Names;

/// Attempts before a backup is given up as failed.
pub const MAX_ATTEMPTS: u32 = 3;
/// The pause before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why a backup attempt failed, before or during the upload.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("there is no MetaStoreCluster {0} in this namespace")]
    NoCluster(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Cluster(#[from] crate::Error),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// One reconcile of `backup`.
#[tracing::instrument(skip_all, fields(backup = %backup.name_any(), cluster = %backup.spec.cluster_name))]
pub async fn reconcile(backup: Arc<MetaStoreBackup>, ctx: Arc<Context>) -> Result<Action, crate::Error> {
    let mut status = backup.status.clone().unwrap_or_default();
    if status.phase.is_some_and(BackupPhase::is_final) {
        return Ok(Action::await_change());
    }
    let namespace = backup.namespace().unwrap_or_default();
    let backups = Api::<MetaStoreBackup>::namespaced(ctx.client.clone(), &namespace);
    status.phase = Some(BackupPhase::Running);
    status.attempts += 1;
    status.started_at.get_or_insert_with(now);
    write_status(&backups, &backup, &status).await?;

    let labels = ClusterLabels { namespace: namespace.clone(), cluster: backup.spec.cluster_name.clone() };
    ctx.metrics.backup_attempted(&labels);
    match attempt(&backup, &namespace, &ctx).await {
        Ok(uploaded) => {
            let location = format!("s3://{}/{}", backup.spec.s3.bucket, uploaded.path);
            status.phase = Some(BackupPhase::Succeeded);
            status.completed_at = Some(now());
            status.revision = Some(uploaded.revision);
            status.cluster_id = Some(uploaded.cluster_id);
            status.size_bytes = Some(uploaded.bytes);
            status.sha256 = Some(uploaded.sha256);
            status.message = None;
            let note =
                format!("revision {} kept at {location} ({} bytes)", uploaded.revision, uploaded.bytes);
            status.location = Some(location);
            write_status(&backups, &backup, &status).await?;
            ctx.metrics.backed_up(labels, k8s_openapi::jiff::Timestamp::now().as_second());
            event(&ctx, &backup, EventType::Normal, "BackupSucceeded", note).await;
            if let Err(e) = apply_retention(&backup, &namespace, &ctx).await {
                let note = format!("cannot prune old backups: {e}");
                event(&ctx, &backup, EventType::Warning, "BackupRetentionFailed", note).await;
            }
            Ok(Action::await_change())
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(error = %message, attempts = status.attempts, "backup attempt failed");
            ctx.metrics.backup_failed(labels);
            let give_up = status.attempts >= MAX_ATTEMPTS;
            if give_up {
                status.phase = Some(BackupPhase::Failed);
                status.completed_at = Some(now());
            }
            status.message = Some(message.clone());
            write_status(&backups, &backup, &status).await?;
            let note = format!("attempt {} of {MAX_ATTEMPTS}: {message}", status.attempts);
            event(&ctx, &backup, EventType::Warning, "BackupFailed", note).await;
            Ok(if give_up { Action::await_change() } else { Action::requeue(RETRY_AFTER) })
        }
    }
}

/// Takes the backup from the first healthy member of its cluster.
async fn attempt(
    backup: &MetaStoreBackup,
    namespace: &str,
    ctx: &Context,
) -> Result<super::Uploaded, AttemptError> {
    let clusters = Api::<MetaStoreCluster>::namespaced(ctx.client.clone(), namespace);
    let name = &backup.spec.cluster_name;
    let cluster = clusters.get_opt(name).await?.ok_or_else(|| AttemptError::NoCluster(name.clone()))?;
    let names = Names::of(&cluster).map_err(crate::Error::from)?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    let token = read_peer_token(&secrets, &names).await?;
    let credentials = Credentials::of(&backup.spec.s3, &secrets).await?;
    let members = cluster.status.as_ref().map(|s| s.members.clone()).unwrap_or_default();
    let member = members.iter().find(|m| m.healthy).map_or(1, |m| m.id);
    let directory: &dyn MemberDirectory = match &ctx.directory {
        Some(d) => d.as_ref(),
        None => &names,
    };
    let client = metastore_client::Client::new(directory.client_url(member)).with_token(token);
    let store = backup.spec.s3.store(credentials.as_ref())?;
    let at = chrono::Utc::now();
    let path = |revision| object_path(&backup.spec.s3, namespace, name, at, revision);
    Ok(upload(&client, &store, path).await?)
}

/// After a scheduled backup was kept: deletes the backups under its cluster's prefix that the
/// schedule's retention no longer keeps.
async fn apply_retention(
    backup: &MetaStoreBackup,
    namespace: &str,
    ctx: &Context,
) -> Result<(), AttemptError> {
    if !is_scheduled(backup) {
        return Ok(());
    }
    let clusters = Api::<MetaStoreCluster>::namespaced(ctx.client.clone(), namespace);
    let Some(cluster) = clusters.get_opt(&backup.spec.cluster_name).await? else { return Ok(()) };
    let Some(schedule) = &cluster.spec.backup else { return Ok(()) };
    let credentials =
        Credentials::of(&backup.spec.s3, &Api::namespaced(ctx.client.clone(), namespace)).await?;
    let store = backup.spec.s3.store(credentials.as_ref())?;
    let prefix = backup.spec.s3.cluster_prefix(namespace, &backup.spec.cluster_name);
    prune(&store, &prefix, &schedule.retention, chrono::Utc::now()).await?;
    Ok(())
}

async fn write_status(
    backups: &Api<MetaStoreBackup>,
    backup: &MetaStoreBackup,
    status: &MetaStoreBackupStatus,
) -> Result<(), crate::Error> {
    let patch = serde_json::json!({
        "apiVersion": "metastore.io/v1alpha1",
        "kind": "MetaStoreBackup",
        "status": status,
    });
    backups
        .patch_status(&backup.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(drop)
        .map_err(|source| crate::Error::Apply {
            kind: "MetaStoreBackup/status".into(),
            name: backup.name_any(),
            source,
        })
}

async fn event(ctx: &Context, backup: &MetaStoreBackup, type_: EventType, reason: &str, note: String) {
    let reference: ObjectReference = backup.object_ref(&());
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(crate::controller::event_note(note)),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, reason, "cannot record an event");
    }
}

/// Failed reconciles (the status could not be written) are retried after a pause.
pub fn error_policy(backup: Arc<MetaStoreBackup>, error: &crate::Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.metric_label());
    tracing::warn!(backup = %backup.name_any(), error = %error, "backup reconcile failed");
    Action::requeue(RETRY_AFTER)
}
