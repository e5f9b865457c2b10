use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::{
    labels, owned_metadata, selector_labels, BuildError, Names, CLIENT_PORT, DATA_DIR, PEER_PORT,
    PEER_TOKEN_KEY, RESTORE_SOURCE_KEY, VOLUME,
};
use crate::backup::restore::SEED_FILE;
use crate::backup::{ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN};
use crate::crd::MetaStoreCluster;

/// The init container of a cluster started from a backup.
pub const RESTORE_CONTAINER: &str = "restore";

/// The image used when the resource names none: the one released with this operator.
pub const DEFAULT_IMAGE: &str = concat!("metastore:", env!("CARGO_PKG_VERSION"));

/// Seconds a member gets to stop after SIGTERM: enough to finish in-flight writes.
const TERMINATION_GRACE_SECONDS: i64 = 30;
/// The non-root user of the image.
const USER_ID: i64 = 65532;

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_string(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), ..Default::default() }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("client".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// Members prefer distinct nodes, so that losing a node costs at most one member.
fn spread_affinity(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(names)),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".to_string(),
                    ..Default::default()
                },
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The member container. Every pod starts in join mode: the operator initializes the first
/// member and adds the others through the raft API, so a pod never bootstraps by itself and a
/// pod that lost its volume comes back empty instead of forming a cluster of its own.
fn container(cluster: &MetaStoreCluster, names: &Names, peer_auth: bool) -> Container {
    let host = format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc", names.peer_service());
    let raft = &cluster.spec.raft;
    let mut env = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env("METASTORE_MEMBER_ID_FROM_HOSTNAME", "true"),
        env("METASTORE_JOIN", "true"),
        env("METASTORE_BIND_ADDRESS", "0.0.0.0"),
        env("METASTORE_PORT", CLIENT_PORT.to_string()),
        env("METASTORE_PEER_PORT", PEER_PORT.to_string()),
        env("METASTORE_ADVERTISE_PEER_URL", format!("http://{host}:{PEER_PORT}")),
        env("METASTORE_ADVERTISE_CLIENT_URL", format!("http://{host}:{CLIENT_PORT}")),
        env("METASTORE_DATA_DIR", DATA_DIR),
        env("METASTORE_LOG_FORMAT", "json"),
        env("METASTORE_HEARTBEAT_INTERVAL_MS", raft.heartbeat_interval_ms.to_string()),
        env("METASTORE_ELECTION_TIMEOUT_MS", raft.election_timeout_ms.to_string()),
        env("METASTORE_SNAPSHOT_ENTRIES", raft.snapshot_entries.to_string()),
    ];
    if peer_auth {
        env.push(EnvVar {
            name: "METASTORE_PEER_TOKEN".to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.peer_token_secret(),
                    key: PEER_TOKEN_KEY.to_string(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Container {
        name: "metastore".to_string(),
        image: Some(image(cluster)),
        env: Some(env),
        ports: Some(vec![
            ContainerPort { name: Some("client".into()), container_port: CLIENT_PORT, ..Default::default() },
            ContainerPort { name: Some("peer".into()), container_port: PEER_PORT, ..Default::default() },
        ]),
        // Opening a large store can take a while; liveness starts counting only once it serves.
        startup_probe: Some(http_probe("/healthz", 2, 150)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: cluster.spec.resources.clone(),
        volume_mounts: Some(vec![data_mount()]),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

/// A container's security context that meets the "restricted" Pod Security Standard.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), ..Default::default() }),
        ..Default::default()
    }
}

fn data_mount() -> VolumeMount {
    VolumeMount { name: VOLUME.to_string(), mount_path: DATA_DIR.to_string(), ..Default::default() }
}

/// An environment variable from `key` of the Secret `name`, unset when either is missing.
fn env_from_optional_secret(env: &str, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: env.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.to_string(),
                key: key.to_string(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Makes `stateful_set`'s members those of a cluster started from a backup: an init
/// container fetches the backup into the first pod's empty volume, and every member is told to
/// restore from it where it is there (`--join --restore-from`). Kept for the cluster's life
/// once its restore began, so that the template never changes (which would restart every
/// member): the restore Secret the init container reads is optional, and once it is gone the
/// init container does nothing.
pub fn start_from_backup(
    stateful_set: &mut StatefulSet,
    cluster: &MetaStoreCluster,
) -> Result<(), BuildError> {
    let names = Names::of(cluster)?;
    let pod = stateful_set.spec.as_mut().and_then(|s| s.template.spec.as_mut());
    let pod = pod.ok_or(BuildError::MissingMetadata("pod template"))?;
    for member in &mut pod.containers {
        let env = member.env.get_or_insert_with(Vec::new);
        env.push(self::env("METASTORE_RESTORE_FROM", format!("{DATA_DIR}/{SEED_FILE}")));
    }
    pod.init_containers = Some(vec![restore_container(cluster, &names)]);
    Ok(())
}

/// The init container of a cluster started from a backup: in the first pod, while the
/// cluster's restore Secret exists, it fetches the backup into the member's empty volume
/// (`metastore-operator fetch-backup`, from the same image); anywhere else it does nothing.
fn restore_container(cluster: &MetaStoreCluster, names: &Names) -> Container {
    let secret = names.restore_secret();
    let mut env = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env("METASTORE_DATA_DIR", DATA_DIR),
        env_from_optional_secret("METASTORE_RESTORE_SOURCE", &secret, RESTORE_SOURCE_KEY),
    ];
    for key in [ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN] {
        env.push(env_from_optional_secret(key, &secret, key));
    }
    Container {
        name: RESTORE_CONTAINER.to_string(),
        image: Some(image(cluster)),
        command: Some(vec!["metastore-operator".to_string(), "fetch-backup".to_string()]),
        env: Some(env),
        // Held to the member's own limits (a namespace's quota may require some).
        resources: cluster.spec.resources.clone(),
        volume_mounts: Some(vec![data_mount()]),
        security_context: Some(restricted()),
        // Why a fetch failed, in the pod's status, where the operator reports it from.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}

fn image(cluster: &MetaStoreCluster) -> String {
    cluster.spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

fn volume_claim(cluster: &MetaStoreCluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(VOLUME.to_string()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), cluster.spec.storage.size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The StatefulSet of members, with `replicas` pods. The reconciler chooses `replicas`: on a
/// scale-down it shrinks the set only after the member left raft. With `peer_auth`, members
/// present and demand the token of the cluster's peer-token Secret.
pub fn stateful_set(
    cluster: &MetaStoreCluster,
    replicas: i32,
    peer_auth: bool,
) -> Result<StatefulSet, BuildError> {
    let names = Names::of(cluster)?;
    let mut pod_labels = cluster.spec.pod_labels.clone();
    pod_labels.extend(labels(&names));
    Ok(StatefulSet {
        metadata: owned_metadata(cluster, &names, names.stateful_set())?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peer_service()),
            // Members start in join mode and wait to be added, so none needs another to be
            // ready first; parallel start makes bootstrap and recovery faster.
            pod_management_policy: Some("Parallel".to_string()),
            // Pods take a new template only when the operator restarts them, one at a time,
            // followers first (`rollout`): the StatefulSet's own rolling update ignores
            // member health and may restart the leader first.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                ..Default::default()
            }),
            selector: LabelSelector { match_labels: Some(selector_labels(&names)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(cluster.spec.pod_annotations.clone()).filter(|a| !a.is_empty()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(cluster, &names, peer_auth)],
                    affinity: Some(cluster.spec.affinity.clone().unwrap_or_else(|| spread_affinity(&names))),
                    tolerations: Some(cluster.spec.tolerations.clone()).filter(|t| !t.is_empty()),
                    node_selector: Some(cluster.spec.node_selector.clone()).filter(|n| !n.is_empty()),
                    topology_spread_constraints: Some(cluster.spec.topology_spread_constraints.clone())
                        .filter(|t| !t.is_empty()),
                    priority_class_name: cluster.spec.priority_class_name.clone(),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(USER_ID),
                        run_as_group: Some(USER_ID),
                        fs_group: Some(USER_ID),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![volume_claim(cluster)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, String> {
        let c = &sts.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod").containers[0];
        c.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect()
    }

    #[test]
    fn with_peer_authentication_members_read_the_token_from_the_clusters_secret() {
        let token_of = |sts: &StatefulSet| {
            let c = &sts.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod").containers[0];
            c.env.iter().flatten().find(|e| e.name == "METASTORE_PEER_TOKEN").cloned()
        };
        let with = stateful_set(&cluster(3), 3, true).expect("builds");
        let source =
            token_of(&with).and_then(|e| e.value_from).and_then(|v| v.secret_key_ref).expect("secret ref");
        assert_eq!((source.name.as_str(), source.key.as_str()), ("demo-peer-token", PEER_TOKEN_KEY));
        let without = stateful_set(&cluster(3), 3, false).expect("builds");
        assert!(token_of(&without).is_none(), "no token for a cluster created without one");
    }

    #[test]
    fn pods_join_with_their_ordinal_as_member_id_and_advertise_stable_dns() {
        let sts = stateful_set(&cluster(3), 3, true).expect("builds");
        let env = env_of(&sts);
        assert_eq!(env["METASTORE_MEMBER_ID_FROM_HOSTNAME"], "true");
        assert_eq!(env["METASTORE_JOIN"], "true");
        assert_eq!(env["METASTORE_BIND_ADDRESS"], "0.0.0.0");
        assert_eq!(
            env["METASTORE_ADVERTISE_PEER_URL"],
            "http://$(POD_NAME).demo-peer.$(POD_NAMESPACE).svc:12379"
        );
        assert_eq!(env["METASTORE_DATA_DIR"], DATA_DIR);
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.service_name.as_deref(), Some("demo-peer"));
        assert_eq!(spec.replicas, Some(3));
    }

    #[test]
    fn a_restored_cluster_fetches_its_backup_in_an_init_container_and_seeds_from_it() {
        let plain = stateful_set(&cluster(3), 3, true).expect("builds");
        let pod = plain.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
        assert!(pod.init_containers.is_none(), "nothing to fetch for a new, empty cluster");
        assert!(!env_of(&plain).contains_key("METASTORE_RESTORE_FROM"));

        let mut sts = plain.clone();
        start_from_backup(&mut sts, &cluster(3)).expect("builds");
        assert_eq!(env_of(&sts)["METASTORE_RESTORE_FROM"], "/var/lib/metastore/restore.snapshot");
        let pod = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
        let init = &pod.init_containers.as_ref().expect("init containers")[0];
        assert_eq!(
            init.command.as_deref(),
            Some(&["metastore-operator".to_string(), "fetch-backup".to_string()][..])
        );
        assert_eq!(init.image, pod.containers[0].image, "the operator's binary ships in the member image");
        let from_secret: Vec<_> = init
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .collect();
        assert_eq!(from_secret.len(), 4, "the source and three AWS keys");
        assert!(
            from_secret.iter().all(|s| s.name == "demo-restore" && s.optional == Some(true)),
            "the Secret may go once restored without the template changing"
        );
    }

    #[test]
    fn probes_use_readyz_and_healthz_on_the_client_port() {
        let sts = stateful_set(&cluster(3), 3, true).expect("builds");
        let c = &sts.spec.expect("spec").template.spec.expect("pod").containers[0];
        let path =
            |p: &Option<Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    }

    #[test]
    fn the_container_meets_the_restricted_pod_security_standard() {
        let sts = stateful_set(&cluster(3), 3, true).expect("builds");
        let c = &sts.spec.expect("spec").template.spec.expect("pod").containers[0];
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
        assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        assert!(c.startup_probe.is_some(), "slow starts are not killed by the liveness probe");
    }

    #[test]
    fn each_pod_gets_its_own_volume_of_the_requested_size() {
        let mut c = cluster(3);
        c.spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".into());
        c.spec.storage.storage_class_name = Some("fast".into());
        let sts = stateful_set(&c, 3, true).expect("builds");
        let claims = sts.spec.expect("spec").volume_claim_templates.expect("claims");
        let spec = claims[0].spec.as_ref().expect("claim spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
        assert_eq!(requests["storage"].0, "5Gi");
    }

    #[test]
    fn members_prefer_distinct_nodes_unless_the_user_says_otherwise() {
        let sts = stateful_set(&cluster(3), 3, true).expect("builds");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let preferred = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution);
        assert_eq!(
            preferred.expect("anti-affinity")[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(TERMINATION_GRACE_SECONDS));
    }

    #[test]
    fn spread_priority_labels_and_annotations_reach_the_pods_and_the_selector_stays_ours() {
        let mut demo = cluster(3);
        demo.spec = serde_json::from_value(serde_json::json!({
            "replicas": 3,
            "priorityClassName": "system-cluster-critical",
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
            }],
            "podLabels": {"team": "platform", "app.kubernetes.io/instance": "not-demo"},
            "podAnnotations": {"sidecar.istio.io/inject": "false"},
        }))
        .expect("spec");
        let sts = stateful_set(&demo, 3, true).expect("builds");
        let template = sts.spec.expect("spec").template;
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
        assert_eq!(labels.get("app.kubernetes.io/instance").map(String::as_str), Some("demo"), "ours win");
        let annotations = template.metadata.and_then(|m| m.annotations).expect("annotations");
        assert_eq!(annotations.get("sidecar.istio.io/inject").map(String::as_str), Some("false"));
        let pod = template.spec.expect("pod");
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-cluster-critical"));
        let spread = pod.topology_spread_constraints.expect("spread");
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    }

    #[test]
    fn the_replica_count_is_the_reconcilers_choice_not_the_specs() {
        let sts = stateful_set(&cluster(3), 5, true).expect("builds");
        assert_eq!(sts.spec.expect("spec").replicas, Some(5));
    }
}
