//! The `MetaStoreBackup` custom resource (`metastore.io/v1alpha1`, short name `msb`): one
//! backup of a cluster, taken once, to S3-compatible object storage.
//!
//! `metastore-operator crd backup` prints its CustomResourceDefinition;
//! `crds/metastorebackup.yaml` is that output, and a test fails when it is stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::S3Destination;

/// A backup of the `MetaStoreCluster` named `clusterName` in this namespace: a snapshot from
/// one of its members, kept as one object under the destination.
// Every printer column repeats `type_`: not a duplicated attribute, whatever clippy thinks.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "metastore.io",
    version = "v1alpha1",
    kind = "MetaStoreBackup",
    plural = "metastorebackups",
    shortname = "msb",
    namespaced,
    status = "MetaStoreBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Location", type_ = "string", json_path = ".status.location"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MetaStoreBackupSpec {
    /// The cluster to back up, in this namespace.
    pub cluster_name: String,
    /// Where the backup goes.
    pub s3: S3Destination,
}

/// Where a backup is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Being taken, or about to be tried again after a failure.
    Running,
    /// Kept: `location` holds a whole snapshot.
    Succeeded,
    /// Given up after repeated failures; nothing was kept.
    Failed,
}

impl BackupPhase {
    /// Whether the backup is over, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(self, BackupPhase::Succeeded | BackupPhase::Failed)
    }
}

/// What became of the backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetaStoreBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The object, as `s3://bucket/key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The store's revision in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The id of the cluster it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The snapshot file's SHA-256, as its seal holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The CRD as YAML, as `metastore-operator crd backup` prints it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    crate::crd::yaml_of::<MetaStoreBackup>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let committed = include_str!("../../../crds/metastorebackup.yaml");
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "crds/metastorebackup.yaml is stale: run `metastore-operator crd backup > crds/metastorebackup.yaml`"
        );
    }

    #[test]
    fn a_backup_names_its_cluster_and_bucket() {
        let spec: MetaStoreBackupSpec = serde_json::from_value(serde_json::json!({
            "clusterName": "demo",
            "s3": {"bucket": "backups", "endpoint": "http://minio:9000", "forcePathStyle": true}
        }))
        .expect("parses");
        assert_eq!((spec.cluster_name.as_str(), spec.s3.bucket.as_str()), ("demo", "backups"));
        assert!(!BackupPhase::Running.is_final() && BackupPhase::Failed.is_final());
    }
}
