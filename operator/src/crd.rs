//! The `MetaStoreCluster` custom resource (`metastore.io/v1alpha1`, short name `msc`).
//!
//! `metastore-operator crd` prints the CustomResourceDefinition generated from these types;
//! `crds/metastorecluster.yaml` is that output, and a test fails when it is stale.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::restore::RestoreSpec;
use crate::backup::BackupSchedule;

/// The smallest and largest cluster the operator runs. Past nine voters every write waits on
/// more fsyncs for no gain in fault tolerance that matters.
pub const MIN_REPLICAS: i32 = 1;
pub const MAX_REPLICAS: i32 = 9;

/// A replicated metaStore cluster: a StatefulSet of members whose raft membership the
/// operator keeps equal to `replicas`, without ever losing quorum.
// Every printer column repeats `type_`: not a duplicated attribute, whatever clippy thinks.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "metastore.io",
    version = "v1alpha1",
    kind = "MetaStoreCluster",
    plural = "metastoreclusters",
    shortname = "msc",
    namespaced,
    status = "MetaStoreClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MetaStoreClusterSpec {
    /// Number of members (raft voters), 1 to 9. Odd sizes tolerate the most failures per member.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// Container image holding the `metastore` binary; the operator's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Each member's persistent volume.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Resources of the `metastore` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Pod scheduling. Without an affinity, members prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How members spread over zones or nodes, beyond the default preference for distinct nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The member pods' PriorityClass: a metadata store usually outranks what it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Labels added to the member pods (the operator's own labels win where they clash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations of the member pods (a service mesh's or a log shipper's, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Raft timing; defaults suit a data-centre network.
    #[serde(default)]
    pub raft: RaftSpec,

    /// Backups on a schedule, to S3-compatible object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSchedule>,

    /// Start the new cluster from a backup instead of empty: every key, its history and the
    /// revisions as they were, under a new cluster id. Read when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// A member's persistent volume.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// Storage class of the volumes; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_string())
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None }
    }
}

/// Raft timing, passed to every member.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftSpec {
    /// Leader heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: u32,
    /// Shortest election timeout in milliseconds; at least three heartbeats.
    #[serde(default = "default_election")]
    #[schemars(range(min = 30, max = 60000))]
    pub election_timeout_ms: u32,
    /// Entries between snapshots.
    #[serde(default = "default_snapshot_entries")]
    #[schemars(range(min = 100))]
    pub snapshot_entries: u32,
}

fn default_heartbeat() -> u32 {
    100
}
fn default_election() -> u32 {
    300
}
fn default_snapshot_entries() -> u32 {
    10_000
}

impl Default for RaftSpec {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: default_heartbeat(),
            election_timeout_ms: default_election(),
            snapshot_entries: default_snapshot_entries(),
        }
    }
}

/// Where the cluster is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Waiting for pods.
    Pending,
    /// The first member is being initialized and the rest added.
    Bootstrapping,
    /// Membership equals the spec and a leader serves.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// A changed pod template (a new image) is rolling through the members.
    Upgrading,
    /// A leader serves but some member is unhealthy, or a step was refused.
    Degraded,
    /// No leader or no quorum can be observed.
    Failed,
}

/// A raft member's role.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MemberRole {
    Voter,
    Learner,
}

/// One member as the members themselves report it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberState {
    /// Raft member id: the pod's ordinal plus one.
    pub id: u64,
    pub pod: String,
    pub role: MemberRole,
    /// Answering, and replicating within reach of the leader.
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// The release the member runs, as it reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What the operator observed, from the members themselves.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetaStoreClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Raft voters (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Members that are ready: they have a leader and have applied what is committed.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pod name of the current leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberState>,
    /// `Available`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Set once the cluster has been bootstrapped; the operator never bootstraps it again.
    #[serde(default)]
    pub bootstrapped: bool,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The cluster's backups, scheduled or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupsStatus>,
    /// The restore the cluster started from, when its spec asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// Where a restore is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    /// The backup was checked whole; member 1 is fetching and restoring it.
    Restoring,
    /// Member 1 leads the restored store; the others join it as members of any new cluster.
    Restored,
    /// The backup cannot be used (see `message`): nothing of the cluster was created.
    Failed,
}

/// A cluster's restore.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    pub phase: RestorePhase,
    /// The backup object, as `s3://bucket/key`, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The snapshot's SHA-256, as its seal holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The last backups of a cluster, as their `MetaStoreBackup`s report them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    /// The schedule the times below are of: a new one counts from when it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The occurrence of the schedule the last scheduled backup was made for; when the schedule
    /// was set, if none has come since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<BackupRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupRecord>,
}

/// One backup, in the cluster's status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// The `MetaStoreBackup`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Where it went (a success) or why not (a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The CRD as YAML, as `metastore-operator crd` prints it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    yaml_of::<MetaStoreCluster>()
}

/// The CustomResourceDefinition of `K` as YAML.
pub fn yaml_of<K: kube::CustomResourceExt>() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&K::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let committed = include_str!("../../crds/metastorecluster.yaml");
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "crds/metastorecluster.yaml is stale: run `metastore-operator crd > crds/metastorecluster.yaml`"
        );
    }

    #[test]
    fn the_crd_has_scale_and_status_subresources_and_short_name() {
        let crd = MetaStoreCluster::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["msc".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let columns: Vec<&str> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Replicas", "Ready", "Leader", "Phase", "Age"]);
    }

    #[test]
    fn replicas_are_validated_between_one_and_nine() {
        let crd = serde_json::to_value(MetaStoreCluster::crd()).expect("json");
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(f64::from(MIN_REPLICAS)));
        assert_eq!(replicas["maximum"].as_f64(), Some(f64::from(MAX_REPLICAS)));
    }

    #[test]
    fn a_minimal_spec_gets_sensible_defaults() {
        let spec: MetaStoreClusterSpec = serde_json::from_str(r#"{"replicas": 3}"#).expect("parses");
        assert_eq!(spec.storage.size, Quantity("1Gi".into()));
        assert_eq!(spec.raft, RaftSpec::default());
        assert_eq!(spec.image, None);
    }
}
