//! A cluster's restore as its reconciler carries it out: before anything of the cluster
//! exists, the backup is checked whole and handed to the first pod (the restore Secret); once
//! member 1 leads the restored store, the Secret goes, and only then do the others join.
//!
//! not started → (no volume of the name left, backup whole) → Restoring → (a leader) → Restored
//!             ↘ Failed: nothing created; tried again after [`RETRY_AFTER`] or a spec change
//!
//! Once started, the restore follows its recorded status, not the spec: `spec.restore` is read
//! when the cluster is created, and changing or removing it later changes nothing.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};

use super::restore::{self, RestoreError};
use super::{Credentials, MetaStoreBackup};
use crate::crd::{MetaStoreCluster, RestorePhase, RestoreStatus, MAX_REPLICAS};
use crate::resources::{self, volumes, Names, RESTORE_CONTAINER};

/// How long a failed restore waits before it is tried again (unless the spec changes first):
/// each try may read the whole backup.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where the cluster's restore stands after this pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Restore {
    /// None asked for when the cluster was created.
    None,
    /// Handed to the first pod; no other member joins until member 1 leads and the restore
    /// Secret is gone.
    Restoring(RestoreStatus),
    Restored(RestoreStatus),
    /// It cannot start; nothing of the cluster was created.
    Failed(RestoreStatus),
}

impl Restore {
    /// Whether the members are those of a cluster started from a backup.
    pub fn began(&self) -> bool {
        matches!(self, Restore::Restoring(_) | Restore::Restored(_))
    }

    pub fn status(&self) -> Option<&RestoreStatus> {
        match self {
            Restore::None => None,
            Restore::Restoring(s) | Restore::Restored(s) | Restore::Failed(s) => Some(s),
        }
    }
}

/// One pass of `cluster`'s restore, given whether it is `bootstrapped` (as its status
/// records). A cluster that asks for none costs no API call.
#[tracing::instrument(skip_all, fields(cluster = %names.cluster))]
pub async fn reconcile(
    client: &Client,
    cluster: &MetaStoreCluster,
    names: &Names,
    bootstrapped: bool,
) -> Result<Restore, crate::Error> {
    let previous = cluster.status.as_ref().and_then(|s| s.restore.clone());
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    let began = match previous {
        Some(done) if done.phase == RestorePhase::Restored => return Ok(Restore::Restored(done)),
        Some(started) if started.phase == RestorePhase::Restoring => started,
        // Not begun, or failed before anything was made.
        previous => {
            let Some(spec) = &cluster.spec.restore else { return Ok(Restore::None) };
            let secret = secrets.get_opt(&names.restore_secret()).await.map_err(crate::Error::Kube)?;
            let sets = Api::<StatefulSet>::namespaced(client.clone(), &names.namespace);
            if let Some(secret) = secret {
                // Handed over in a pass whose status write was lost, or that this pass's copy
                // of the cluster (the watch's) does not show yet: the Secret says what.
                let handed = previous.or_else(|| handed_over(&secret));
                restoring(handed)
            } else if sets.get_opt(&names.stateful_set()).await.map_err(crate::Error::Kube)?.is_some() {
                tracing::warn!("spec.restore is read when a cluster is created; this one exists: ignored");
                return Ok(Restore::None);
            } else {
                return Ok(match hand_over(client, cluster, names, spec).await {
                    Ok(status) => Restore::Restoring(status),
                    Err(Failure::Kube(e)) => return Err(e),
                    Err(Failure::Restore { location, error }) => {
                        tracing::warn!(error = %error, "cannot restore");
                        Restore::Failed(RestoreStatus {
                            phase: RestorePhase::Failed,
                            location,
                            message: Some(error.to_string()),
                            ..restoring(None)
                        })
                    }
                });
            }
        }
    };
    if bootstrapped {
        // Member 1 leads. The Secret goes before any other member may join (the planner waits
        // while the restore is under way): a pod 0 that lost its volume by then must find no
        // backup to restore, or it would found a second cluster beside the first.
        match secrets.delete(&names.restore_secret(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(crate::Error::Kube(e)),
        }
        tracing::info!("restored: member 1 leads");
        return Ok(Restore::Restored(RestoreStatus {
            phase: RestorePhase::Restored,
            message: None,
            ..began
        }));
    }
    // Still under way: why not, if the first pod says.
    let pods = Api::<Pod>::namespaced(client.clone(), &names.namespace);
    let first = pods.get_opt(&names.pod(1)).await.map_err(crate::Error::Kube)?;
    Ok(Restore::Restoring(RestoreStatus { message: first.as_ref().and_then(stalled), ..began }))
}

/// The restore the Secret hands to the first pod, as a status: where from and its seal (its
/// size is not in the Secret).
fn handed_over(secret: &Secret) -> Option<RestoreStatus> {
    let source = secret.data.as_ref()?.get(resources::RESTORE_SOURCE_KEY)?;
    let source: restore::RestoreSource = serde_json::from_slice(&source.0).ok()?;
    Some(RestoreStatus {
        phase: RestorePhase::Restoring,
        location: Some(source.location()),
        size_bytes: None,
        sha256: source.sha256,
        message: None,
    })
}

fn restoring(previous: Option<RestoreStatus>) -> RestoreStatus {
    let blank = RestoreStatus {
        phase: RestorePhase::Restoring,
        location: None,
        size_bytes: None,
        sha256: None,
        message: None,
    };
    RestoreStatus { phase: RestorePhase::Restoring, message: None, ..previous.unwrap_or(blank) }
}

/// Why the first pod's restore is stuck, as its status tells: its init container (the fetch)
/// or its member (the restore itself) exited with an error.
pub fn stalled(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let failure = |c: &ContainerStatus| {
        let state = c.state.as_ref().and_then(|s| s.terminated.as_ref());
        let terminated = state.filter(|t| t.exit_code != 0).or_else(|| {
            c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0)
        })?;
        let said = terminated.message.as_deref().or(terminated.reason.as_deref()).unwrap_or("no message");
        Some(format!("exited with {}: {}", terminated.exit_code, said.trim()))
    };
    let fetch = status.init_container_statuses.iter().flatten().find(|c| c.name == RESTORE_CONTAINER);
    if let Some(why) = fetch.and_then(failure) {
        return Some(format!("fetching the backup failed: the {RESTORE_CONTAINER} container {why}"));
    }
    let member = status.container_statuses.iter().flatten().find(|c| c.name == "metastore");
    member.and_then(failure).map(|why| format!("member 1 did not start from the backup: it {why}"))
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

/// Checks that no volume of an earlier cluster of the name is left and that the backup is
/// whole, then writes the restore Secret the first pod fetches it with.
async fn hand_over(
    client: &Client,
    cluster: &MetaStoreCluster,
    names: &Names,
    spec: &restore::RestoreSpec,
) -> Result<RestoreStatus, Failure> {
    let namespace = &names.namespace;
    // Any member's claim left by an earlier cluster of this name would give that member the
    // old store: member 1 would restore a new cluster while the old members elect a leader of
    // the old one.
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    for ordinal in 0..u64::try_from(MAX_REPLICAS).unwrap_or(0) {
        let claim = volumes::claim_name(names, ordinal);
        if claims.get_opt(&claim).await.map_err(RestoreError::Kube)?.is_some() {
            return Err(RestoreError::VolumeExists { claim }.into());
        }
    }
    let backups = Api::<MetaStoreBackup>::namespaced(client.clone(), namespace);
    let mut source = restore::resolve(spec, &backups).await?;
    let location = Some(source.location());
    let failed = |error| Failure::Restore { location: location.clone(), error };
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let credentials =
        Credentials::of(&source.s3, &secrets).await.map_err(|e| failed(RestoreError::Credentials(e)))?;
    let verified = restore::verify(&source, credentials.as_ref()).await.map_err(failed)?;
    tracing::info!(location = %source.location(), bytes = verified.bytes, "the backup is whole: restoring");
    // The pod restores this very snapshot, not one put in its place since.
    source.sha256 = Some(verified.sha256.clone());
    let secret = resources::restore_secret(cluster, &source, credentials.as_ref())
        .map_err(|e| Failure::Kube(e.into()))?;
    let apply = PatchParams::apply(crate::controller::MANAGER).force();
    secrets.patch(&names.restore_secret(), &apply, &Patch::Apply(&secret)).await.map_err(|source| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "demo-0"}, "status": status}))
            .expect("pod")
    }

    #[test]
    fn a_restore_seen_only_in_its_secret_keeps_where_it_comes_from() {
        // As the API server returns a Secret: its string data moved to data.
        let source = serde_json::json!({
            "s3": {"bucket": "backups", "credentialsSecret": "s3-keys"},
            "object": "e2e/demo/x.snapshot",
            "sha256": "ab".repeat(32),
        });
        let data = [(
            resources::RESTORE_SOURCE_KEY.to_string(),
            k8s_openapi::ByteString(source.to_string().into_bytes()),
        )];
        let secret = Secret { data: Some(data.into_iter().collect()), ..Secret::default() };
        let status = restoring(handed_over(&secret));
        assert_eq!(status.phase, RestorePhase::Restoring);
        assert_eq!(status.location.as_deref(), Some("s3://backups/e2e/demo/x.snapshot"));
        assert_eq!(status.sha256, Some("ab".repeat(32)));
        let unreadable: Secret =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).expect("secret");
        assert_eq!(handed_over(&unreadable), None);
    }

    #[test]
    fn a_stuck_restore_says_which_step_failed_and_why() {
        let fetching = pod(serde_json::json!({"initContainerStatuses": [{
            "name": "restore", "ready": false, "restartCount": 2, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "cannot read s3://b/k: access denied\n"}},
        }]}));
        let why = stalled(&fetching).expect("stalled");
        assert!(why.contains("fetching the backup failed") && why.ends_with("access denied"), "{why}");

        let restoring = pod(serde_json::json!({
            "initContainerStatuses": [{"name": "restore", "ready": true, "restartCount": 0, "image": "i",
                "imageID": "", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": "metastore", "ready": false, "restartCount": 1, "image": "i",
                "imageID": "", "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        }));
        let why = stalled(&restoring).expect("stalled");
        assert!(why.starts_with("member 1 did not start from the backup"), "{why}");

        let fine = pod(serde_json::json!({"initContainerStatuses": [{"name": "restore", "ready": false,
            "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]}));
        assert_eq!(stalled(&fine), None);
    }
}
