//! A cluster's restore as its reconciler carries it out: before anything of the cluster
//! exists, the backup is checked whole and handed to the first pod (the restore Secret); once
//! member 1 leads the restored store, the Secret goes.
//!
//! not started → (volume 0 free, backup whole) → Restoring → (a leader) → Restored
//!             ↘ Failed: nothing created; tried again after [`RETRY_AFTER`] or a spec change

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

use super::restore::{self, RestoreError};
use super::{Credentials, MetaStoreBackup};
use crate::crd::{MetaStoreCluster, RestorePhase, RestoreStatus};
use crate::resources::{self, volumes, Names};

/// How long a failed restore waits before it is tried again (unless the spec changes first):
/// each try reads the whole backup.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where the cluster's restore stands after this pass.
#[derive(Debug)]
pub enum Restore {
    /// The spec asks for none.
    None,
    /// Under way or done: the cluster is reconciled as usual, with this status.
    Proceeding(RestoreStatus),
    /// It cannot start; nothing of the cluster was created.
    Failed(RestoreStatus),
}

/// One pass of `cluster`'s restore; `bootstrapped` as its status records it.
#[tracing::instrument(skip_all, fields(cluster = %names.cluster))]
pub async fn reconcile(
    client: &Client,
    cluster: &MetaStoreCluster,
    names: &Names,
    bootstrapped: bool,
) -> Result<Restore, crate::Error> {
    let Some(spec) = &cluster.spec.restore else { return Ok(Restore::None) };
    let previous = cluster.status.as_ref().and_then(|s| s.restore.clone());
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    if bootstrapped {
        return Ok(Restore::Proceeding(match previous {
            Some(done) if done.phase == RestorePhase::Restored => done,
            // Member 1 leads: no pod may fetch the backup again (one whose volume is lost
            // later must join the cluster, not start another).
            previous => {
                match secrets.delete(&names.restore_secret(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(crate::Error::Kube(e)),
                }
                tracing::info!("restored: member 1 leads");
                RestoreStatus { phase: RestorePhase::Restored, message: None, ..started(previous) }
            }
        }));
    }
    // Handed over already: the first pod is fetching it, or member 1 restoring it.
    if secrets.get_opt(&names.restore_secret()).await.map_err(crate::Error::Kube)?.is_some() {
        let status = RestoreStatus { phase: RestorePhase::Restoring, message: None, ..started(previous) };
        return Ok(Restore::Proceeding(status));
    }
    match hand_over(client, cluster, names, spec).await {
        Ok(status) => Ok(Restore::Proceeding(status)),
        Err(Failure::Kube(e)) => Err(e),
        Err(Failure::Restore { location, error }) => {
            tracing::warn!(error = %error, "cannot restore");
            Ok(Restore::Failed(RestoreStatus {
                phase: RestorePhase::Failed,
                location,
                size_bytes: None,
                sha256: None,
                message: Some(error.to_string()),
            }))
        }
    }
}

/// The status of a restore that was handed over, as recorded then.
fn started(previous: Option<RestoreStatus>) -> RestoreStatus {
    previous.unwrap_or(RestoreStatus {
        phase: RestorePhase::Restoring,
        location: None,
        size_bytes: None,
        sha256: None,
        message: None,
    })
}

enum Failure {
    Restore { location: Option<String>, error: RestoreError },
    Kube(crate::Error),
}

impl From<RestoreError> for Failure {
    fn from(error: RestoreError) -> Self {
        match error {
            // The API server's trouble, not the backup's: the reconcile is retried soon.
            RestoreError::Kube(e) => Failure::Kube(crate::Error::Kube(e)),
            error => Failure::Restore { location: None, error },
        }
    }
}

/// Checks that the first member's volume is free and the backup whole, then writes the restore
/// Secret the first pod fetches it with.
async fn hand_over(
    client: &Client,
    cluster: &MetaStoreCluster,
    names: &Names,
    spec: &restore::RestoreSpec,
) -> Result<RestoreStatus, Failure> {
    let namespace = &names.namespace;
    // A claim left by an earlier cluster of this name would give member 1 its old store.
    let claim = volumes::claim_name(names, 0);
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    if claims.get_opt(&claim).await.map_err(RestoreError::Kube)?.is_some() {
        return Err(RestoreError::VolumeExists { claim }.into());
    }
    let backups = Api::<MetaStoreBackup>::namespaced(client.clone(), namespace);
    let source = restore::resolve(spec, &backups).await?;
    let location = Some(source.location());
    let failed = |error| Failure::Restore { location: location.clone(), error };
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let credentials =
        Credentials::of(&source.s3, &secrets).await.map_err(|e| failed(RestoreError::Credentials(e)))?;
    let verified = restore::verify(&source, credentials.as_ref()).await.map_err(failed)?;
    tracing::info!(location = %source.location(), bytes = verified.bytes, "the backup is whole: restoring");
    let secret = resources::restore_secret(cluster, &source, credentials.as_ref())
        .map_err(|e| Failure::Kube(e.into()))?;
    secrets
        .patch(
            &names.restore_secret(),
            &PatchParams::apply(crate::controller::MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|source| {
            Failure::Kube(crate::Error::Apply { kind: "Secret".into(), name: names.restore_secret(), source })
        })?;
    Ok(RestoreStatus {
        phase: RestorePhase::Restoring,
        location,
        size_bytes: Some(verified.bytes),
        sha256: Some(verified.sha256),
        message: None,
    })
}
