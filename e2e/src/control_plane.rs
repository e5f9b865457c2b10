//! A real Kubernetes control plane on 127.0.0.1: its store (etcd or a metaStore cluster, see
//! `store`), kube-apiserver and kube-controller-manager (v1.20, built by
//! `e2e/local/control-plane.sh`), with throwaway TLS material and a static admin token. There is
//! no scheduler and no kubelet: see `kubelet`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;

use crate::store::{Store, StoreKind};
use metastore_testkit::{free_port, Process};

/// Where `e2e/local/control-plane.sh` caches the binaries unless told otherwise.
const DEFAULT_BIN_DIR: &str = "/var/cache/metastore/kubernetes/bin";
const ADMIN_TOKEN_USER: &str = "e2e-admin";

/// What a local control plane needs from the machine; `Err` says what is missing.
pub fn binaries() -> Result<PathBuf, String> {
    let dir = std::env::var_os("METASTORE_K8S_BIN").map(PathBuf::from).unwrap_or(DEFAULT_BIN_DIR.into());
    for binary in ["kube-apiserver", "kube-controller-manager"] {
        if !dir.join(binary).exists() {
            return Err(format!(
                "{} not found in {} (build it once with e2e/local/control-plane.sh)",
                binary,
                dir.display()
            ));
        }
    }
    if !metastore_testkit::available(Path::new("openssl"), "version") {
        return Err("`openssl` not found (apt-get install openssl)".into());
    }
    Ok(dir)
}

/// How to run a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: StoreKind,
    /// How many members the store has: etcd 1, metaStore 3 unless told.
    pub store_members: Option<usize>,
    /// Appended to the apiserver's own flags; a flag given twice takes the last value.
    pub apiserver_flags: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { store: StoreKind::Etcd, store_members: None, apiserver_flags: Vec::new() }
    }
}

pub struct ControlPlane {
    pub server: String,
    ca_pem: String,
    admin_token: String,
    // Dropped (killed) in reverse order of start.
    controller_manager: Option<Process>,
    apiserver: Option<Process>,
    store: Store,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().context("openssl")?;
    if !output.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// A CA, an API-server certificate for 127.0.0.1, and a service-account key pair.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=metastore-e2e-ca",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// A kubeconfig for `server` that authenticates with a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\ncurrent-context: e2e\n"
    )
}

impl ControlPlane {
    /// Starts the store, the API server and the controller manager in `dir`; returns once the
    /// API server is ready.
    pub async fn start(bin: &Path, dir: &Path, options: &Options) -> anyhow::Result<Self> {
        let dir = dir.to_path_buf();
        make_pki(&dir)?;
        let admin_token = format!("admin-{}", std::process::id());
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},{ADMIN_TOKEN_USER},1,\"system:masters\"\n"),
        )?;

        let mut store = Store::start(options.store, options.store_members, &dir)?;
        store.wait_ready().await?;

        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .current_dir(&dir)
            .arg(format!("--etcd-servers={}", store.client_urls().join(",")))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--insecure-port=0"])
            .arg(format!("--secure-port={api_port}"))
            .args(["--tls-cert-file=apiserver.crt", "--tls-private-key-file=apiserver.key"])
            .args(["--client-ca-file=ca.crt", "--token-auth-file=tokens.csv"])
            .args(["--authorization-mode=RBAC", "--allow-privileged=true"])
            .args([
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-account-key-file=sa.pub",
            ])
            .arg("--service-account-signing-key-file=sa.key")
            .args(["--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none"])
            .arg("--profiling=false")
            .args(&options.apiserver_flags);
        let apiserver = Process::spawn("kube-apiserver", apiserver, &dir.join("kube-apiserver.log"))?;

        let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))?;
        let mut plane =
            Self { server, ca_pem, admin_token, controller_manager: None, apiserver: Some(apiserver), store };
        plane.wait_ready().await?;

        std::fs::write(dir.join("admin.kubeconfig"), plane.admin_kubeconfig())?;
        let mut manager = Command::new(bin.join("kube-controller-manager"));
        // Everything that needs real nodes, volumes or a cloud is off; what stays includes the
        // StatefulSet, endpoints, garbage-collector, service-account token and PVC-protection
        // controllers.
        manager
            .current_dir(&dir)
            .args(["--kubeconfig=admin.kubeconfig", "--service-account-private-key-file=sa.key"])
            .args(["--root-ca-file=ca.crt", "--leader-elect=false", "--port=0", "--secure-port=0"])
            .arg(
                "--controllers=*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,\
                 -csrsigning,-cloud-node-lifecycle,-route,-service",
            );
        plane.controller_manager = Some(Process::spawn(
            "kube-controller-manager",
            manager,
            &dir.join("kube-controller-manager.log"),
        )?);
        Ok(plane)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = self.admin_client().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    let log = self.apiserver.as_ref().map(|p| p.tail(30)).unwrap_or_default();
                    bail!("kube-apiserver not ready after 60 s:\n{log}");
                }
                _ => {}
            }
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn admin_kubeconfig(&self) -> String {
        kubeconfig(&self.server, &self.ca_pem, ADMIN_TOKEN_USER, &self.admin_token)
    }

    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> String {
        kubeconfig(&self.server, &self.ca_pem, user, token)
    }

    /// A client in the `system:masters` group.
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.admin_kubeconfig()).await
    }

    /// The last lines of the apiserver's and the store's logs, for a failure message.
    pub fn diagnostics(&self) -> String {
        let apiserver = self.apiserver.as_ref().map(|p| p.tail(15)).unwrap_or_default();
        format!("--- kube-apiserver log (last 15 lines)\n{apiserver}\n{}", self.store.diagnostics())
    }

    /// The apiserver's process id, while it runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(Process::id)
    }

    /// The store the control plane keeps its state in.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Fails with the component's log if any part of the control plane died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.store.check_alive()?;
        for process in [&mut self.apiserver, &mut self.controller_manager].into_iter().flatten() {
            if let Some(status) = process.exited() {
                bail!("{} exited ({status}):\n{}", process.name(), process.tail(30));
            }
        }
        Ok(())
    }
}

pub async fn client_from_kubeconfig(yaml: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The controller manager first, the store last, so no component logs a storm of errors
        // about the one below it going away.
        for process in [&mut self.controller_manager, &mut self.apiserver] {
            if let Some(mut p) = process.take() {
                p.stop(Duration::from_secs(5));
            }
        }
        self.store.stop();
    }
}
