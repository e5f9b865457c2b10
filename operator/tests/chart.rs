//! The Helm chart, rendered by the real `helm` and read back as Kubernetes objects: it lints,
//! every object is valid for its kind, its RBAC grants exactly what the operator uses, and
//! values reach the objects they configure.
//!
//! `helm` comes from `scripts/install-helm.sh` (which `.ci/run` calls); without it these tests
//! say they are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use metastore_operator::crd::MetaStoreCluster;
use metastore_operator::rbac::{Scope, REQUIRED};

fn chart() -> PathBuf {
    metastore_testkit::chart("metastore-operator")
}

fn helm() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("METASTORE_HELM").map(PathBuf::from),
        Some(PathBuf::from("/var/cache/metastore/tools/helm")),
        Some(PathBuf::from("helm")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|h| Command::new(h).arg("version").output().is_ok_and(|o| o.status.success()))
}

macro_rules! helm_or_skip {
    () => {
        match helm() {
            Some(helm) => helm,
            None => {
                eprintln!("SKIPPED: helm not found (run scripts/install-helm.sh or set METASTORE_HELM)");
                return;
            }
        }
    };
}

/// `helm template` with `--set` values; the rendered documents, or helm's complaint.
fn render(helm: &Path, values: &[&str]) -> Result<Vec<serde_yaml::Value>, String> {
    let mut command = Command::new(helm);
    command.args(["template", "ops", "--namespace", "metastore-system"]).arg(chart());
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().map_err(|e| format!("cannot run helm: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).map_err(|e| e.to_string())?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

use serde::Deserialize;

fn objects<K: serde::de::DeserializeOwned>(documents: &[serde_yaml::Value], kind: &str) -> Vec<K> {
    documents
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| {
            serde_yaml::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind} is not a valid {kind}: {e}"))
        })
        .collect()
}

fn one<K: serde::de::DeserializeOwned>(documents: &[serde_yaml::Value], kind: &str) -> K {
    let mut all = objects::<K>(documents, kind);
    assert_eq!(all.len(), 1, "exactly one {kind}");
    all.remove(0)
}

/// Every (group, resource, verb) a set of rules grants, wildcards refused outright.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for item in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert_ne!(item, "*", "least privilege: no wildcards ({rule:?})");
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

fn required(scope: Scope) -> BTreeSet<(String, String, String)> {
    REQUIRED
        .iter()
        .filter(|p| p.scope == scope)
        .flat_map(|p| p.verbs.iter().map(|v| (p.group.to_string(), p.resource.to_string(), v.to_string())))
        .collect()
}

#[test]
fn the_chart_lints_strictly() {
    let helm = helm_or_skip!();
    let output = Command::new(&helm).args(["lint", "--strict"]).arg(chart()).output().expect("helm lint");
    assert!(output.status.success(), "helm lint --strict:\n{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn the_rbac_grants_exactly_what_the_operator_uses() {
    let helm = helm_or_skip!();
    let documents = render(&helm, &[]).expect("renders");
    let cluster_role: ClusterRole = one(&documents, "ClusterRole");
    let role: Role = one(&documents, "Role");
    assert_eq!(grants(&cluster_role.rules.unwrap_or_default()), required(Scope::Cluster));
    assert_eq!(grants(&role.rules.unwrap_or_default()), required(Scope::OperatorNamespace));
    assert_eq!(role.metadata.namespace.as_deref(), Some("metastore-system"), "leases: own namespace only");

    // Both bindings name the operator's ServiceAccount, which the Deployment runs as.
    let account: ServiceAccount = one(&documents, "ServiceAccount");
    let account = account.metadata.name.expect("name");
    let cluster_binding: ClusterRoleBinding = one(&documents, "ClusterRoleBinding");
    let binding: RoleBinding = one(&documents, "RoleBinding");
    for subjects in [cluster_binding.subjects, binding.subjects] {
        let subject = &subjects.expect("subjects")[0];
        assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", account.as_str()));
        assert_eq!(subject.namespace.as_deref(), Some("metastore-system"));
    }
    let deployment: Deployment = one(&documents, "Deployment");
    let pod = deployment.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(account.as_str()));
}

#[test]
fn the_operator_deployment_is_probed_locked_down_and_elects_in_its_namespace() {
    let helm = helm_or_skip!();
    let documents = render(&helm, &[]).expect("renders");
    let deployment: Deployment = one(&documents, "Deployment");
    let pod = deployment.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.security_context.and_then(|s| s.run_as_non_root), Some(true));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("metastore:0.1.0"), "defaults to the appVersion");
    assert_eq!(
        container.command.as_deref(),
        Some(&["metastore-operator".to_string(), "run".to_string()][..])
    );
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let path = probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.as_deref());
        assert_eq!(path, Some("/healthz"));
    }
    let security = container.security_context.as_ref().expect("container security context");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let env = container.env.as_ref().expect("env");
    let namespace = env.iter().find(|e| e.name == "POD_NAMESPACE").expect("POD_NAMESPACE");
    let field =
        namespace.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("metadata.namespace"));
    assert!(container.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some(), "a memory limit");
}

#[test]
fn values_reach_the_objects_they_configure() {
    let helm = helm_or_skip!();
    let documents = render(
        &helm,
        &[
            "image.repository=registry.example/metastore",
            "image.tag=9.9.9",
            "replicaCount=2",
            "logLevel=debug",
            "metrics.port=9100",
            "sampleCluster.enabled=true",
            "sampleCluster.name=orders",
            "sampleCluster.replicas=5",
        ],
    )
    .expect("renders");
    let deployment: Deployment = one(&documents, "Deployment");
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let container = &spec.template.spec.expect("pod spec").containers[0];
    assert_eq!(container.image.as_deref(), Some("registry.example/metastore:9.9.9"));
    let env = container.env.clone().unwrap_or_default();
    let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(value("RUST_LOG").as_deref(), Some("debug"));
    assert_eq!(value("METASTORE_OPERATOR_METRICS_ADDRESS").as_deref(), Some("0.0.0.0:9100"));
    let service: Service = one(&documents, "Service");
    assert_eq!(service.spec.expect("spec").ports.expect("ports")[0].port, 9100);

    let sample: MetaStoreCluster = one(&documents, "MetaStoreCluster");
    assert_eq!(sample.metadata.name.as_deref(), Some("orders"));
    assert_eq!(sample.spec.replicas, 5);
    assert_eq!(
        sample.spec.image.as_deref(),
        Some("registry.example/metastore:9.9.9"),
        "members run the same build"
    );
}

#[test]
fn no_sample_cluster_or_metrics_service_unless_asked() {
    let helm = helm_or_skip!();
    let documents = render(&helm, &["metrics.service.enabled=false"]).expect("renders");
    assert!(objects::<MetaStoreCluster>(&documents, "MetaStoreCluster").is_empty());
    assert!(objects::<Service>(&documents, "Service").is_empty());
}

#[test]
fn the_values_schema_rejects_what_would_break_the_install() {
    let helm = helm_or_skip!();
    for bad in [
        "replicaCount=-1",
        "sampleCluster.replicas=10",
        "metrics.port=0",
        "image.pullPolicy=Sometimes",
        "unknownKey=1",
    ] {
        let error = render(&helm, &[bad]).expect_err(bad);
        assert!(error.contains("values don't meet the specifications of the schema"), "{bad}: {error}");
    }
}

#[test]
fn the_chart_carries_the_current_crds() {
    for (file, current) in [
        ("metastorecluster.yaml", metastore_operator::crd::crd_yaml()),
        ("metastorebackup.yaml", metastore_operator::backup::resource::crd_yaml()),
    ] {
        let shipped = std::fs::read_to_string(chart().join("crds").join(file)).expect("chart CRD");
        assert_eq!(shipped, current.expect("CRD renders"), "stale: charts/metastore-operator/crds/{file}");
    }
}

#[test]
fn every_rendered_object_is_valid_for_its_kind() {
    let helm = helm_or_skip!();
    let validate = Command::new("kubernetes-validate").arg("--version").output();
    if !validate.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: kubernetes-validate not found (pip install kubernetes-validate)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let all_on = ["sampleCluster.enabled=true"];
    let documents = render(&helm, &all_on).expect("renders");
    let file = dir.path().join("rendered.yaml");
    let text: Vec<String> = documents.iter().map(|d| serde_yaml::to_string(d).expect("yaml")).collect();
    std::fs::write(&file, text.join("---\n")).expect("write");
    // The oldest and the newest schemas the validator ships that the operator supports;
    // custom resources are checked above by deserializing them.
    for version in ["1.25.0", "1.33.0"] {
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .arg(&file)
            .output()
            .expect("kubernetes-validate");
        let report =
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        let failures: Vec<&str> = report.lines().filter(|l| l.starts_with("ERROR")).collect();
        assert!(output.status.success() && failures.is_empty(), "against {version}:\n{report}");
    }
}

#[test]
fn the_alert_rules_fire_when_they_should_and_only_then() {
    let files = chart().join("files");
    let Ok(output) = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg("prometheus-rules.test.yaml")
        .current_dir(&files)
        .output()
    else {
        eprintln!("SKIPPED: promtool not found (Debian's prometheus package; .ci/run installs it)");
        return;
    };
    assert!(
        output.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn monitoring_objects_render_only_when_asked_and_carry_the_tested_rules() {
    let helm = helm_or_skip!();
    let kinds = |documents: &[serde_yaml::Value]| -> BTreeSet<String> {
        documents.iter().filter_map(|d| d["kind"].as_str().map(str::to_string)).collect()
    };
    let plain = render(&helm, &[]).expect("renders");
    assert!(!kinds(&plain).contains("PodMonitor") && !kinds(&plain).contains("PrometheusRule"));
    let documents = render(
        &helm,
        &[
            "monitoring.podMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.grafanaDashboard.enabled=true",
            "monitoring.prometheusRule.labels.release=prometheus",
        ],
    )
    .expect("renders");

    let rule =
        documents.iter().find(|d| d["kind"].as_str() == Some("PrometheusRule")).expect("a PrometheusRule");
    let tested = std::fs::read_to_string(chart().join("files/prometheus-rules.yaml")).expect("rules file");
    let tested: serde_yaml::Value = serde_yaml::from_str(&tested).expect("rules YAML");
    assert_eq!(rule["spec"], tested, "the PrometheusRule holds exactly the rules promtool tests");
    assert_eq!(rule["metadata"]["labels"]["release"].as_str(), Some("prometheus"));

    let monitors: Vec<&serde_yaml::Value> =
        documents.iter().filter(|d| d["kind"].as_str() == Some("PodMonitor")).collect();
    let members = monitors
        .iter()
        .find(|m| {
            m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].as_str() == Some("metastore")
        })
        .expect("a PodMonitor of the members");
    let endpoint = &members["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("client"), "members serve /metrics on their client port");
    assert_eq!(
        endpoint["relabelings"][0]["targetLabel"].as_str(),
        Some("cluster"),
        "the rules group by cluster"
    );
    assert_eq!(monitors.len(), 2, "and one of the operator");

    let dashboard = documents
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap") && d["data"]["metastore.json"].is_string())
        .expect("the dashboard's ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["metastore.json"].as_str().expect("text"))
            .expect("dashboard JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("metastore_"))),
            "{panel}"
        );
    }
}
