//! The kind provider: a kind cluster that `e2e/kind/run.sh` created, with the image built and
//! loaded and the chart installed; the test reaches Services with `kubectl port-forward`, as a
//! user does.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::Api;

use crate::scenarios::Provider;

/// Set by `e2e/kind/run.sh`: the kubeconfig context of its kind cluster.
pub const CONTEXT_ENV: &str = "METASTORE_E2E_KIND_CONTEXT";
const OPERATOR_NAMESPACE: &str = "metastore-system";
const RELEASE: &str = "ops";
const CLUSTER_NAMESPACE: &str = "e2e";

pub struct Kind {
    context: String,
    client: kube::Client,
    helm: PathBuf,
    forward: Mutex<Option<Child>>,
}

impl Kind {
    pub async fn connect(context: String) -> anyhow::Result<Self> {
        let options =
            kube::config::KubeConfigOptions { context: Some(context.clone()), ..Default::default() };
        let config = kube::Config::from_kubeconfig(&options).await?;
        let helm = std::env::var_os("METASTORE_HELM").map(PathBuf::from).unwrap_or_else(|| "helm".into());
        Ok(Self { context, client: kube::Client::try_from(config)?, helm, forward: Mutex::new(None) })
    }

    fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.args(["--context", &self.context]);
        command
    }
}

impl Provider for Kind {
    fn operator_reaches_test_loopback(&self) -> Result<(), &'static str> {
        Err("the operator runs in a pod, which cannot reach the test's 127.0.0.1")
    }

    fn runs_other_releases(&self) -> Result<(), &'static str> {
        Err("kind is loaded with this build's image only, and the test cannot resolve pod names")
    }

    fn kube(&self) -> kube::Client {
        self.client.clone()
    }

    fn namespace(&self) -> &str {
        CLUSTER_NAMESPACE
    }

    /// A fresh `kubectl port-forward` to the Service (one pod behind it, which may have gone
    /// since the last call).
    async fn service_url(&self, service: &str) -> anyhow::Result<String> {
        self.port_forward(&format!("svc/{service}"), 12380)
    }

    async fn pod_url(&self, pod: &str, port: u16) -> anyhow::Result<String> {
        self.port_forward(&format!("pod/{pod}"), port)
    }

    async fn restart_operator(&mut self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let operator = ListParams::default().labels("app.kubernetes.io/name=metastore-operator");
        let params = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        pods.delete_collection(&params, &operator).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    async fn uninstall(&mut self) -> anyhow::Result<()> {
        let output = Command::new(&self.helm)
            .args(["uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--kube-context", &self.context])
            .output()?;
        if !output.status.success() {
            bail!("helm uninstall: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn check_environment(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Kind {
    /// Replaces the previous `kubectl port-forward` with one to `port` of `target`.
    fn port_forward(&self, target: &str, port: u16) -> anyhow::Result<String> {
        let mut forward = self.forward.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(mut old) = forward.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let mut child = self
            .kubectl()
            .args(["port-forward", "-n", CLUSTER_NAMESPACE, target, &format!(":{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward output")?;
        *forward = Some(child);
        // "Forwarding from 127.0.0.1:41234 -> 12380"
        let line = BufReader::new(stdout).lines().next().context("port-forward said nothing")??;
        let local = line
            .strip_prefix("Forwarding from ")
            .and_then(|rest| rest.split(" -> ").next())
            .with_context(|| format!("unexpected port-forward output: {line}"))?;
        Ok(format!("http://{local}"))
    }
}

impl Drop for Kind {
    fn drop(&mut self) {
        if let Ok(mut forward) = self.forward.lock() {
            if let Some(mut child) = forward.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The suite on the kind cluster `e2e/kind/run.sh` prepared; skipped without it.
pub fn run_suite() {
    let Ok(context) = std::env::var(CONTEXT_ENV) else {
        eprintln!("SKIPPED: the kind end-to-end suite runs from e2e/kind/run.sh (needs docker and kind)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut kind = Kind::connect(context).await.expect("kind cluster");
        crate::scenarios::run_all(&mut kind).await.expect("end-to-end scenarios on kind");
    });
}
