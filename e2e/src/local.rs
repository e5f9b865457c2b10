//! The local provider: a real kube-apiserver and kube-controller-manager on 127.0.0.1, their
//! state in etcd or in a metaStore cluster, the chart installed by the real `helm`, the operator
//! running as a process with the ServiceAccount identity (and so exactly the RBAC) the chart
//! grants it, and a stand-in kubelet running the members' pods as local `metastore` processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::Api;
use tokio::sync::Mutex;

use crate::control_plane::{self, ControlPlane, Options};
use crate::kubelet::{Binaries, Kubelet, Pods};
use crate::sandbox::{self, HostsFile};
use crate::scenarios::{self, eventually, Provider};
use crate::store::StoreKind;
use metastore_testkit::{free_port, workspace_binary, Process};

const OPERATOR_NAMESPACE: &str = "metastore-system";
const RELEASE: &str = "ops";
/// The chart names the ServiceAccount after the release.
const SERVICE_ACCOUNT: &str = "ops-metastore-operator";
const CLUSTER_NAMESPACE: &str = "e2e";

/// Everything the local provider needs from the machine.
pub struct Prerequisites {
    k8s_bin: PathBuf,
    helm: PathBuf,
    metastore: PathBuf,
    operator: PathBuf,
    /// The member's next release (`metastore-next`).
    next: PathBuf,
    store: StoreKind,
}

impl Prerequisites {
    /// What is here for a control plane on `store`, or what is missing and how to get it.
    pub fn check(store: StoreKind) -> Result<Self, String> {
        metastore_testkit::sandbox::can_isolate(&[])
            .map_err(|missing| format!("{missing} (the pods' network and DNS names live in a sandbox)"))?;
        let k8s_bin = control_plane::binaries()?;
        if let Some(missing) = store.missing() {
            return Err(missing);
        }
        let helm = std::env::var_os("METASTORE_HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/metastore/tools/helm".into());
        if !metastore_testkit::available(&helm, "version") {
            return Err(format!("helm not found at {} (scripts/install-helm.sh)", helm.display()));
        }
        let metastore = workspace_binary("metastore")?;
        let operator = workspace_binary("metastore-operator")?;
        let next = workspace_binary("metastore-next")?;
        Ok(Self { k8s_bin, helm, metastore, operator, next, store })
    }
}

pub struct Local {
    // Field order is drop order: the kubelet's members and the operator stop before the API
    // server they talk to, and the directory goes last.
    kubelet: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    operator: Option<Process>,
    operator_starts: u32,
    pods: Arc<Mutex<Pods>>,
    admin: kube::Client,
    plane: std::sync::Mutex<ControlPlane>,
    prerequisites: Prerequisites,
    dir: tempfile::TempDir,
}

fn chart() -> PathBuf {
    metastore_testkit::chart("metastore-operator")
}

impl Local {
    /// Starts the control plane, installs the chart, starts the operator and the kubelet.
    /// Must run inside the sandbox (see `sandbox`).
    pub async fn start(prerequisites: Prerequisites) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("metastore-e2e-").tempdir()?;
        eprintln!("e2e: local provider in {}", dir.path().display());
        sandbox::set_up_network()?;
        let hosts = HostsFile::take_over(dir.path())?;
        let options = Options { store: prerequisites.store, ..Options::default() };
        let plane = ControlPlane::start(&prerequisites.k8s_bin, dir.path(), &options).await?;
        let admin = plane.admin_client().await?;
        eprintln!("e2e: kube-apiserver ready at {} on {:?}", plane.server, prerequisites.store);

        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": CLUSTER_NAMESPACE}}))?;
        namespaces.create(&PostParams::default(), &namespace).await?;

        // The chart as a user installs it; no replica of the operator Deployment, since this
        // machine runs no images: the operator runs below as a process with its identity.
        let helm = Command::new(&prerequisites.helm)
            .args(["install", RELEASE])
            .arg(chart())
            .args(["--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--set", "replicaCount=0"])
            .arg("--kubeconfig")
            .arg(dir.path().join("admin.kubeconfig"))
            .output()?;
        if !helm.status.success() {
            bail!("helm install failed: {}", String::from_utf8_lossy(&helm.stderr));
        }
        eprintln!("e2e: chart installed");

        let kubelet_dir = dir.path().join("kubelet");
        std::fs::create_dir_all(&kubelet_dir)?;
        let kubelet = Kubelet::new(
            admin.clone(),
            CLUSTER_NAMESPACE,
            Binaries {
                metastore: prerequisites.metastore.clone(),
                operator: prerequisites.operator.clone(),
                images: BTreeMap::from([
                    (scenarios::NEXT_IMAGE.to_string(), prerequisites.next.clone()),
                    // A release whose member exits at once.
                    (scenarios::BROKEN_IMAGE.to_string(), PathBuf::from("/bin/false")),
                ]),
            },
            kubelet_dir,
            hosts,
        );
        let pods = kubelet.pods();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(kubelet.run(stopped));

        let mut local = Self {
            kubelet: Some((stop, task)),
            operator: None,
            operator_starts: 0,
            pods,
            admin,
            plane: std::sync::Mutex::new(plane),
            prerequisites,
            dir,
        };
        local.write_operator_kubeconfig().await?;
        local.start_operator()?;
        Ok(local)
    }

    /// A kubeconfig with the token of the chart's ServiceAccount: the operator gets exactly the
    /// rights the chart's RBAC gives it.
    async fn write_operator_kubeconfig(&self) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), OPERATOR_NAMESPACE);
        let token = eventually("the operator's ServiceAccount token", Duration::from_secs(60), || async {
            let list = secrets
                .list(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
                .await?;
            list.items
                .into_iter()
                .filter(|s| {
                    s.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/service-account.name"))
                        == Some(&SERVICE_ACCOUNT.to_string())
                })
                .find_map(|s| s.data.and_then(|d| d.get("token").map(|t| t.0.clone())))
                .context("no token yet")
        })
        .await?;
        let token = String::from_utf8(token).context("token is not UTF-8")?;
        let plane = self.plane.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}");
        std::fs::write(self.operator_kubeconfig(), plane.kubeconfig_for_token(&user, &token))?;
        Ok(())
    }

    fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("operator.kubeconfig")
    }

    fn start_operator(&mut self) -> anyhow::Result<()> {
        self.operator_starts += 1;
        let mut command = Command::new(&self.prerequisites.operator);
        command
            .arg("run")
            .env("KUBECONFIG", self.operator_kubeconfig())
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("HOSTNAME", format!("operator-{}", self.operator_starts))
            .env("METASTORE_OPERATOR_METRICS_ADDRESS", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "info");
        self.operator =
            Some(Process::spawn("metastore-operator", command, &self.dir.path().join("operator.log"))?);
        Ok(())
    }

    /// The logs worth reading when a scenario failed.
    pub fn diagnostics(&self) -> String {
        let mut out = self.plane.lock().map(|plane| plane.diagnostics()).unwrap_or_default();
        if let Some(operator) = &self.operator {
            out += &format!("--- operator log (last 40 lines)\n{}\n", operator.tail(40));
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("kubelet")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    out += &format!(
                        "--- {} (last 15 lines)\n{}\n",
                        path.display(),
                        metastore_testkit::tail(&path, 15)
                    );
                }
            }
        }
        out
    }

    /// How many member processes the kubelet runs.
    pub async fn running_members(&self) -> usize {
        self.pods.lock().await.count()
    }

    /// Stops everything; the directory is kept when `keep` (for a post-mortem).
    pub async fn shut_down(mut self, keep: bool) {
        if let Some((stop, task)) = self.kubelet.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some(mut operator) = self.operator.take() {
            operator.stop(Duration::from_secs(5));
        }
        if keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("e2e: kept {} for inspection", dir.display());
        }
    }
}

impl Provider for Local {
    fn operator_reaches_test_loopback(&self) -> Result<(), &'static str> {
        // The operator is a process beside the test, in the same network namespace.
        Ok(())
    }

    fn runs_other_releases(&self) -> Result<(), &'static str> {
        // The kubelet maps the images to this build's binaries, and the hosts file resolves
        // the members' names for the test too.
        Ok(())
    }

    fn kube(&self) -> kube::Client {
        self.admin.clone()
    }

    fn namespace(&self) -> &str {
        CLUSTER_NAMESPACE
    }

    /// No kube-proxy here: the Service's own endpoints, as the endpoints controller lists
    /// them, stand in for its virtual IP.
    async fn service_url(&self, service: &str) -> anyhow::Result<String> {
        let endpoints: Api<Endpoints> = Api::namespaced(self.admin.clone(), CLUSTER_NAMESPACE);
        let endpoints = endpoints.get(service).await?;
        for subset in endpoints.subsets.iter().flatten() {
            let port = subset.ports.iter().flatten().map(|p| p.port).next();
            if let (Some(address), Some(port)) = (subset.addresses.iter().flatten().next(), port) {
                return Ok(format!("http://{}:{port}", address.ip));
            }
        }
        bail!("Service {service} has no ready endpoint")
    }

    async fn pod_url(&self, pod: &str, port: u16) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), CLUSTER_NAMESPACE);
        let ip = pods.get(pod).await?.status.and_then(|s| s.pod_ip).context("the pod has no address yet")?;
        Ok(format!("http://{ip}:{port}"))
    }

    async fn restart_operator(&mut self) -> anyhow::Result<()> {
        if let Some(mut operator) = self.operator.take() {
            operator.kill();
        }
        self.start_operator()
    }

    async fn uninstall(&mut self) -> anyhow::Result<()> {
        if let Some(mut operator) = self.operator.take() {
            operator.stop(Duration::from_secs(10));
        }
        let helm = Command::new(&self.prerequisites.helm)
            .args(["uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--kubeconfig"])
            .arg(self.dir.path().join("admin.kubeconfig"))
            .output()?;
        if !helm.status.success() {
            bail!("helm uninstall failed: {}", String::from_utf8_lossy(&helm.stderr));
        }
        let deployments: Api<Deployment> = Api::namespaced(self.admin.clone(), OPERATOR_NAMESPACE);
        anyhow::ensure!(deployments.list(&ListParams::default()).await?.items.is_empty(), "Deployment left");
        // Helm never deletes a chart's CRDs (that would delete every cluster): it stays.
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        anyhow::ensure!(crds.get_opt("metastoreclusters.metastore.io").await?.is_some(), "CRD deleted");
        Ok(())
    }

    fn check_environment(&self) -> anyhow::Result<()> {
        self.plane.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.check_alive()
    }
}

/// The whole suite on a local control plane whose state is in `store`: re-runs `test_name`
/// inside the sandbox and runs the scenarios there. Prints why and returns when the machine
/// cannot.
pub fn run_suite(test_name: &str, store: StoreKind) {
    let prerequisites = match Prerequisites::check(store) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: the local end-to-end suite needs {why}");
            return;
        }
    };
    if !metastore_testkit::sandbox::inside() {
        let passed = metastore_testkit::sandbox::rerun_test_inside(test_name).expect("re-run under unshare");
        assert!(passed, "the end-to-end scenarios failed (output above)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut local = Local::start(prerequisites).await.expect("local control plane and operator");
        let outcome = crate::scenarios::run_all(&mut local).await;
        if let Err(e) = &outcome {
            eprintln!("{}", local.diagnostics());
            eprintln!("e2e: FAILED: {e:#}");
        }
        let members = local.running_members().await;
        local.shut_down(outcome.is_err()).await;
        outcome.expect("end-to-end scenarios");
        assert_eq!(members, 0, "member processes left after the uninstall");
    });
}
