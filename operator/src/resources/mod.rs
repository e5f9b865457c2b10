//! The Kubernetes objects a `MetaStoreCluster` owns, one builder per kind. Builders are pure:
//! they take the resource and return the object to apply, with no client in sight.

mod pdb;
mod secret;
mod service;
mod statefulset;
pub mod volumes;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

pub use pdb::pod_disruption_budget;
pub use secret::{peer_token_secret, restore_secret, PEER_TOKEN_KEY, RESTORE_SOURCE_KEY};
pub use service::{client_service, peer_service};
pub use statefulset::{start_from_backup, stateful_set, DEFAULT_IMAGE, RESTORE_CONTAINER};

use crate::crd::MetaStoreCluster;

pub const CLIENT_PORT: i32 = 12380;
pub const PEER_PORT: i32 = 12379;
pub const DATA_DIR: &str = "/var/lib/metastore";
/// The name of each member's volume (its claims are `data-<pod>`).
pub const VOLUME: &str = "data";
const MANAGER: &str = "metastore-operator";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the MetaStoreCluster has no {0} yet")]
    MissingMetadata(&'static str),
    #[error("cannot serialize an object's data: {0}")]
    Unserializable(String),
}

/// Names of everything a cluster owns, derived from the cluster's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &MetaStoreCluster) -> Result<Self, BuildError> {
        let namespace = cluster.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
        Ok(Self { cluster: cluster.name_any(), namespace })
    }

    /// The StatefulSet, and the prefix of its pods.
    pub fn stateful_set(&self) -> String {
        self.cluster.clone()
    }

    /// The headless Service that gives each pod a stable DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.cluster)
    }

    /// The Service clients use.
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    /// The Secret with the members' peer token.
    pub fn peer_token_secret(&self) -> String {
        format!("{}-peer-token", self.cluster)
    }

    /// The Secret the first pod of a cluster being restored fetches its backup with.
    pub fn restore_secret(&self) -> String {
        format!("{}-restore", self.cluster)
    }

    pub fn pod(&self, member_id: u64) -> String {
        format!("{}-{}", self.cluster, member_id.saturating_sub(1))
    }

    fn pod_host(&self, member_id: u64) -> String {
        format!("{}.{}.{}.svc", self.pod(member_id), self.peer_service(), self.namespace)
    }

    pub fn peer_url(&self, member_id: u64) -> String {
        format!("http://{}:{PEER_PORT}", self.pod_host(member_id))
    }

    pub fn client_url(&self, member_id: u64) -> String {
        format!("http://{}:{CLIENT_PORT}", self.pod_host(member_id))
    }
}

/// Selects the member pods of every cluster.
pub const MEMBER_POD_SELECTOR: &str = "app.kubernetes.io/name=metastore";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The cluster a member pod belongs to, from its labels.
pub fn cluster_of_pod(labels: &BTreeMap<String, String>) -> Option<&str> {
    if labels.get("app.kubernetes.io/name").map(String::as_str) != Some("metastore") {
        return None;
    }
    labels.get(INSTANCE_LABEL).map(String::as_str)
}

/// The labels that select a cluster's pods.
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "metastore".to_string()),
        (INSTANCE_LABEL.to_string(), names.cluster.clone()),
    ])
}

/// Selector labels plus the ones that say who manages the object.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names);
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string());
    labels
}

/// The selector in `key=value,...` form, for the scale subresource's status.
pub fn selector_string(names: &Names) -> String {
    selector_labels(names).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn owner_reference(cluster: &MetaStoreCluster) -> Result<OwnerReference, BuildError> {
    cluster.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata("uid"))
}

/// Metadata of an owned object: name, namespace, labels and the controller owner reference
/// (so that deleting the cluster garbage-collects it).
fn owned_metadata(cluster: &MetaStoreCluster, names: &Names, name: String) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: Some(vec![owner_reference(cluster)?]),
        ..Default::default()
    })
}

/// Example objects for the operator's tests (unit and integration).
#[doc(hidden)]
pub mod fixtures {
    use crate::crd::{MetaStoreCluster, MetaStoreClusterSpec};

    /// A `demo` cluster in namespace `ns`, as the API server would return it.
    pub fn cluster(replicas: i32) -> MetaStoreCluster {
        let spec: MetaStoreClusterSpec =
            serde_json::from_value(serde_json::json!({ "replicas": replicas })).expect("valid spec");
        let mut cluster = MetaStoreCluster::new("demo", spec);
        cluster.metadata.namespace = Some("ns".into());
        cluster.metadata.uid = Some("uid-1".into());
        cluster
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::cluster;
    use super::*;

    #[test]
    fn member_ids_map_to_pod_ordinals_and_stable_dns_names() {
        let names = Names::of(&cluster(3)).expect("names");
        assert_eq!(names.pod(1), "demo-0");
        assert_eq!(names.peer_url(3), "http://demo-2.demo-peer.ns.svc:12379");
        assert_eq!(names.client_url(1), "http://demo-0.demo-peer.ns.svc:12380");
    }

    #[test]
    fn member_pods_lead_back_to_their_cluster_and_other_pods_do_not() {
        let names = Names::of(&cluster(3)).expect("names");
        assert_eq!(cluster_of_pod(&selector_labels(&names)), Some("demo"));
        let selector: Vec<String> = selector_labels(&names).iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert!(selector.contains(&MEMBER_POD_SELECTOR.to_string()), "the watch selects member pods");
        let other = BTreeMap::from([(INSTANCE_LABEL.to_string(), "demo".to_string())]);
        assert_eq!(cluster_of_pod(&other), None, "an unrelated pod with an instance label");
    }

    #[test]
    fn a_cluster_without_a_uid_cannot_own_anything() {
        let mut c = cluster(3);
        c.metadata.uid = None;
        let names = Names::of(&c).expect("names");
        assert_eq!(owned_metadata(&c, &names, "x".into()), Err(BuildError::MissingMetadata("uid")));
    }
}
