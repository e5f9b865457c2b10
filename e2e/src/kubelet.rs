//! A stand-in kubelet for the pods of metaStore clusters, on a control plane with no nodes.
//!
//! It registers one Node and binds each pod to it (the scheduler's part), then runs the pod as a
//! local `metastore` process from the pod's own container env (after its init containers ran
//! to completion), the way a container runtime would: downward-API and Secret values filled in, `$(VAR)` references expanded, an address of the
//! sandbox's pod network in place of the pod's own network namespace, and a data
//! directory per PersistentVolumeClaim (keyed by the claim's UID, so a new claim starts empty
//! and a claim outlives its pods). It probes `/readyz` and writes the pod status the
//! StatefulSet and endpoints controllers read, stops the process when the pod is deleted, and
//! makes the pods' DNS names resolve through the hosts file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, Node, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokio::sync::Mutex;

use crate::sandbox::HostsFile;
use metastore_testkit::Process;

/// The pods this kubelet plays: the members of every MetaStoreCluster.
const POD_SELECTOR: &str = "app.kubernetes.io/name=metastore";
const SYNC_PERIOD: Duration = Duration::from_millis(300);
const NODE: &str = "e2e-node";
/// The node's address; pods get the ones after it.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// A stopping member gets at most this long; the pod's own grace period is longer than any
/// test wants to wait.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// How long a pod whose init container failed waits before it is tried again.
const INIT_BACKOFF: Duration = Duration::from_secs(5);

struct RunningPod {
    name: String,
    ip: Ipv4Addr,
    hostnames: Vec<String>,
    launch: Launch,
    env: Vec<(String, String)>,
    process: Process,
    restarts: i32,
    /// What the pod's status shows.
    status: Reported,
}

/// A pod's status as the kubelet last wrote it.
#[derive(Debug, Clone)]
struct Reported {
    ready: bool,
    /// When `ready` last changed.
    changed: Time,
    restarts: i32,
    /// The last run's exit code and end.
    last_exit: Option<(i32, Time)>,
}

impl Reported {
    fn new() -> Self {
        Self { ready: false, changed: now(), restarts: 0, last_exit: None }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// What the kubelet is running, shared with the test for inspection.
#[derive(Default)]
pub struct Pods {
    running: BTreeMap<String, RunningPod>,
}

impl Pods {
    pub fn count(&self) -> usize {
        self.running.len()
    }
}

pub struct Kubelet {
    api: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    secrets: Api<Secret>,
    /// The image's binaries, as this build made them.
    binaries: Binaries,
    dir: PathBuf,
    /// Pods whose init container failed, and when it may be run again.
    backoff: BTreeMap<String, std::time::Instant>,
    hosts: HostsFile,
    pods: Arc<Mutex<Pods>>,
    next_ip: u32,
}

impl Kubelet {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        binaries: Binaries,
        dir: PathBuf,
        hosts: HostsFile,
    ) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            claims: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            binaries,
            dir,
            backoff: BTreeMap::new(),
            hosts,
            pods: Arc::default(),
            next_ip: 0,
        }
    }

    pub fn pods(&self) -> Arc<Mutex<Pods>> {
        self.pods.clone()
    }

    /// Syncs until `stop` fires, then stops every member it started.
    pub async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        if let Err(e) = self.register_node().await {
            eprintln!("kubelet: cannot register the node: {e:#}");
        }
        loop {
            if let Err(e) = self.sync().await {
                eprintln!("kubelet: sync failed: {e:#}");
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(SYNC_PERIOD) => {}
            }
        }
        let mut pods = self.pods.lock().await;
        for (_, mut pod) in std::mem::take(&mut pods.running) {
            tokio::task::block_in_place(|| pod.process.stop(MAX_GRACE));
        }
    }

    /// The one Node every pod runs on: endpoints name their pod's node.
    async fn register_node(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.api.clone().into_client());
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let status = serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": Time(k8s_openapi::jiff::Timestamp::now())}],
        }});
        nodes.patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }

    /// What the scheduler does: bind the pod to the node.
    async fn bind(&self, pod: &str) -> anyhow::Result<()> {
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        });
        self.api
            .create_subresource::<serde_json::Value, serde_json::Value>(
                "binding",
                pod,
                &PostParams::default(),
                &binding,
            )
            .await?;
        Ok(())
    }

    async fn sync(&mut self) -> anyhow::Result<()> {
        let listed = self.api.list(&ListParams::default().labels(POD_SELECTOR)).await?;
        let mut seen = BTreeSet::new();
        for pod in listed.items {
            let uid = pod.uid().context("pod without a uid")?;
            seen.insert(uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&uid).await;
                // The kubelet's last word on a deleted pod: it is gone.
                let params = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
                let _ = self.api.delete(&pod.name_any(), &params).await;
                continue;
            }
            let known = self.pods.lock().await.running.contains_key(&uid);
            if known {
                self.tend(&uid).await?;
            } else {
                self.start(&pod, &uid).await?;
            }
        }
        let gone: Vec<String> =
            self.pods.lock().await.running.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
        for uid in gone {
            self.terminate(&uid).await;
        }
        Ok(())
    }

    async fn terminate(&mut self, uid: &str) {
        let Some(mut pod) = self.pods.lock().await.running.remove(uid) else { return };
        tokio::task::block_in_place(|| pod.process.stop(MAX_GRACE));
        if let Err(e) = self.hosts.remove(&pod.hostnames) {
            eprintln!("kubelet: cannot update the hosts file: {e:#}");
        }
    }

    /// The data directory of each of the pod's claims, or `None` while a claim is missing or
    /// being deleted: such a pod stays Pending, as it would on a real node.
    async fn volumes(&self, pod: &Pod) -> anyhow::Result<Option<BTreeMap<String, PathBuf>>> {
        let mut volumes = BTreeMap::new();
        let spec = pod.spec.as_ref().context("pod without a spec")?;
        for volume in spec.volumes.iter().flatten() {
            let Some(claim) = &volume.persistent_volume_claim else { continue };
            let Some(pvc) = self.claims.get_opt(&claim.claim_name).await? else { return Ok(None) };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Ok(None);
            }
            let dir = self.dir.join("volumes").join(pvc.uid().context("claim without a uid")?);
            std::fs::create_dir_all(&dir)?;
            volumes.insert(volume.name.clone(), dir);
        }
        Ok(Some(volumes))
    }

    /// The values of the Secret keys the container's env refers to, or `None` while one that
    /// is not optional is missing (the container cannot start, as on a real node).
    async fn secret_values(&self, container: &Container) -> anyhow::Result<Option<SecretValues>> {
        let mut values = SecretValues::new();
        for var in container.env.iter().flatten() {
            let Some(reference) = var.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()) else {
                continue;
            };
            let optional = reference.optional == Some(true);
            let secret = self.secrets.get_opt(&reference.name).await?;
            let Some(value) =
                secret.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(&reference.key))
            else {
                if optional {
                    continue;
                }
                return Ok(None);
            };
            let value = String::from_utf8(value.0.clone()).context("secret value is not UTF-8")?;
            values.insert((reference.name.clone(), reference.key.clone()), value);
        }
        Ok(Some(values))
    }

    async fn start(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let Some(volumes) = self.volumes(pod).await? else { return Ok(()) };
        let spec = pod.spec.as_ref().context("pod without a spec")?;
        if spec.node_name.is_none() {
            self.bind(&pod.name_any()).await?;
        }
        let container = spec.containers.first().context("pod without containers")?;
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        self.next_ip += 1;
        // A new address for every pod, as on a real node; DNS follows.
        let [a, b, _, _] = NODE_IP.octets();
        let ip = Ipv4Addr::new(a, b, (self.next_ip / 250) as u8, (self.next_ip % 250 + 2) as u8);

        let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        let mut hostnames = vec![hostname.clone()];
        if let Some(subdomain) = &spec.subdomain {
            let fqdn = format!("{hostname}.{subdomain}.{namespace}.svc");
            hostnames.push(format!("{fqdn}.cluster.local"));
            hostnames.push(fqdn);
        }
        if self.backoff.get(uid).is_some_and(|until| std::time::Instant::now() < *until) {
            return Ok(());
        }
        // Init containers run to completion, in order, before the member starts.
        for init in spec.init_containers.iter().flatten() {
            let Some(secrets) = self.secret_values(init).await? else { return Ok(()) };
            let env = container_env(init, pod, ip, &volumes, &secrets);
            let log = self.dir.join(format!("{name}-{}.log", init.name));
            let mut process = self.binaries.command(&Launch::of(init), &env)?;
            process
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(log.with_extension("err"))?);
            let status = tokio::task::block_in_place(|| process.status())?;
            if !status.success() {
                eprintln!(
                    "kubelet: {name}'s init container {} failed ({status}); see {}",
                    init.name,
                    log.display()
                );
                self.backoff.insert(uid.to_string(), std::time::Instant::now() + INIT_BACKOFF);
                return Ok(());
            }
            eprintln!("kubelet: {name}'s init container {} completed", init.name);
        }
        self.backoff.remove(uid);
        let Some(secrets) = self.secret_values(container).await? else { return Ok(()) };
        let mut env = container_env(container, pod, ip, &volumes, &secrets);
        env.push(("HOSTNAME".into(), hostname));
        let launch = Launch::of(container);
        self.hosts.add(ip, &hostnames)?;
        let log = self.dir.join(format!("{name}.log"));
        let process = spawn_member(&self.binaries, &launch, &env, &log)?;
        eprintln!("kubelet: started {name} at {ip} (pid {})", process.id());
        self.pods.lock().await.running.insert(
            uid.to_string(),
            RunningPod {
                name: name.clone(),
                ip,
                hostnames,
                launch,
                env,
                process,
                restarts: 0,
                status: Reported::new(),
            },
        );
        self.report(&name, ip, &Reported::new()).await
    }

    /// Restarts a member that exited (restartPolicy Always) and reports readiness changes.
    async fn tend(&mut self, uid: &str) -> anyhow::Result<()> {
        let (name, ip, was_ready, restarts, reported, url) = {
            let mut pods = self.pods.lock().await;
            let Some(pod) = pods.running.get_mut(uid) else { return Ok(()) };
            if let Some(status) = pod.process.exited() {
                eprintln!("kubelet: {} exited ({status}); restarting", pod.name);
                let log = self.dir.join(format!("{}.log", pod.name));
                pod.process = spawn_member(&self.binaries, &pod.launch, &pod.env, &log)?;
                pod.restarts += 1;
                pod.status.last_exit = Some((status.code().unwrap_or(-1), now()));
            }
            let url = format!("http://{}:12380", pod.ip);
            (pod.name.clone(), pod.ip, pod.status.ready, pod.restarts, pod.status.restarts, url)
        };
        let member = metastore_client::Client::new(url);
        let ready =
            matches!(tokio::time::timeout(Duration::from_secs(2), member.ready()).await, Ok(Ok(true)));
        if ready != was_ready || restarts != reported {
            let status = {
                let mut pods = self.pods.lock().await;
                let Some(pod) = pods.running.get_mut(uid) else { return Ok(()) };
                if ready != was_ready {
                    pod.status.ready = ready;
                    pod.status.changed = now();
                }
                pod.status.restarts = restarts;
                pod.status.clone()
            };
            self.report(&name, ip, &status).await?;
        }
        Ok(())
    }

    /// Writes the pod's status as a kubelet does: running at its address, Ready or not (since
    /// when), its restarts and how the last run ended.
    async fn report(&self, name: &str, ip: Ipv4Addr, reported: &Reported) -> anyhow::Result<()> {
        let (ready, restarts, changed) = (reported.ready, reported.restarts, &reported.changed);
        let flag = if ready { "True" } else { "False" };
        let condition = |kind: &str, status: &str| serde_json::json!({"type": kind, "status": status, "lastTransitionTime": changed});
        let last_state = match &reported.last_exit {
            Some((code, at)) => {
                serde_json::json!({"terminated": {"exitCode": code, "reason": "Error", "finishedAt": at}})
            }
            None => serde_json::json!({}),
        };
        let now = now();
        let status = serde_json::json!({
            "status": {
                "phase": "Running",
                "hostIP": NODE_IP.to_string(),
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "startTime": now,
                "conditions": [
                    condition("PodScheduled", "True"),
                    condition("Initialized", "True"),
                    condition("ContainersReady", flag),
                    condition("Ready", flag),
                ],
                "containerStatuses": [{
                    "name": "metastore",
                    "ready": ready,
                    "restartCount": restarts,
                    "image": "metastore",
                    "imageID": "",
                    "started": true,
                    "state": {"running": {"startedAt": now}},
                    "lastState": last_state,
                }],
            }
        });
        self.api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }
}

/// The binaries of the images, as this build made them.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The member, in every image but those of `images`.
    pub metastore: PathBuf,
    pub operator: PathBuf,
    /// The member binary of other images by name (`metastore:next`, a later release, say).
    pub images: BTreeMap<String, PathBuf>,
}

impl Binaries {
    /// The container's command, with the image's binaries mapped to this build's, and only
    /// the container's environment. The image's entrypoint is `metastore`.
    fn command(&self, launch: &Launch, env: &[(String, String)]) -> anyhow::Result<Command> {
        let command = &launch.command;
        let program = command.first().map(String::as_str).map(|p| p.rsplit('/').next().unwrap_or(p));
        let member = self.images.get(&launch.image).unwrap_or(&self.metastore);
        let (binary, args) = match program {
            Some("metastore") => (member, &command[1..]),
            Some("metastore-operator") => (&self.operator, &command[1..]),
            None => (member, &command[..]),
            Some(other) => anyhow::bail!("the image has no `{other}`"),
        };
        let mut process = Command::new(binary);
        process.args(args).env_clear().env("PATH", "/usr/bin:/bin").envs(env.iter().cloned());
        Ok(process)
    }
}

/// What a container runs: its image, command and arguments.
#[derive(Debug, Clone)]
struct Launch {
    image: String,
    command: Vec<String>,
}

impl Launch {
    fn of(container: &Container) -> Self {
        let command =
            container.command.iter().flatten().chain(container.args.iter().flatten()).cloned().collect();
        Self { image: container.image.clone().unwrap_or_default(), command }
    }
}

fn spawn_member(
    binaries: &Binaries,
    launch: &Launch,
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Process> {
    Ok(Process::spawn("metastore", binaries.command(launch, env)?, log)?)
}

/// The container's environment as the kubelet would give it: literal values with `$(VAR)`
/// expanded against earlier variables, downward-API fields, volume paths mapped to the
/// claims' directories, and the pod's address for a wildcard bind.
fn container_env(
    container: &Container,
    pod: &Pod,
    ip: Ipv4Addr,
    volumes: &BTreeMap<String, PathBuf>,
    secrets: &SecretValues,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let source = var.value_from.as_ref();
        let value = if let Some(value) = &var.value {
            expand(value, &env)
        } else if let Some(reference) = source.and_then(|v| v.secret_key_ref.as_ref()) {
            match secrets.get(&(reference.name.clone(), reference.key.clone())) {
                Some(value) => value.clone(),
                None => continue,
            }
        } else if let Some(field) = source.and_then(|v| v.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => pod.namespace().unwrap_or_default(),
                "status.podIP" => ip.to_string(),
                _ => continue,
            }
        } else {
            continue;
        };
        env.push((var.name.clone(), value));
    }
    let mounts: Vec<(String, &PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| volumes.get(&m.name).map(|dir| (m.mount_path.clone(), dir)))
        .collect();
    for (name, value) in &mut env {
        // Each pod has its own network namespace on a node; here, its own loopback address.
        if name == "METASTORE_BIND_ADDRESS" && value == "0.0.0.0" {
            *value = ip.to_string();
        }
        for (mount_path, dir) in &mounts {
            if let Some(rest) = value.strip_prefix(mount_path.as_str()) {
                *value = format!("{}{rest}", dir.display());
            }
        }
    }
    env
}

/// Secret values by (Secret name, key).
type SecretValues = BTreeMap<(String, String), String>;

/// Kubernetes' `$(VAR)` expansion against the variables defined so far.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (name, replacement) in env {
        out = out.replace(&format!("$({name})"), replacement);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_to_earlier_variables_only() {
        let env = vec![("POD_NAME".to_string(), "demo-0".to_string())];
        assert_eq!(expand("http://$(POD_NAME).peer:1", &env), "http://demo-0.peer:1");
        assert_eq!(expand("$(LATER)", &env), "$(LATER)");
    }
}
