//! The store a local control plane keeps Kubernetes' state in: one etcd, or a metaStore cluster
//! of real `metastore` processes that kube-apiserver reaches through etcd's v3 API, every
//! member's URL in `--etcd-servers` as a production apiserver would have them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use metastore_testkit::{free_port, workspace_binary, Process};

/// Which store backs the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// etcd 3.4, as Kubernetes ships with.
    Etcd,
    /// A 3-member metaStore cluster.
    MetaStore,
}

impl StoreKind {
    /// What the machine lacks to run this store, if anything.
    pub fn missing(self) -> Option<String> {
        match self {
            Self::Etcd if !metastore_testkit::available(Path::new("etcd"), "--version") => {
                Some("`etcd` (apt-get install etcd-server)".into())
            }
            Self::MetaStore => workspace_binary("metastore").err(),
            _ => None,
        }
    }
}

/// One member: how to start it again after a crash, and the running process.
struct Member {
    name: String,
    client_url: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    process: Option<Process>,
}

impl Member {
    fn start(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        self.process = Some(Process::spawn(&self.name, command, &self.log)?);
        Ok(())
    }
}

pub struct Store {
    kind: StoreKind,
    members: Vec<Member>,
}

impl Store {
    /// Starts `members` members (etcd: 1, metaStore: 3 when `None`) in `dir`;
    /// [`Store::wait_ready`] waits for them to serve.
    pub fn start(kind: StoreKind, members: Option<usize>, dir: &Path) -> anyhow::Result<Self> {
        let count = members.unwrap_or(match kind {
            StoreKind::Etcd => 1,
            StoreKind::MetaStore => 3,
        });
        anyhow::ensure!(count > 0, "a store needs a member");
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[i].1);
        let program = match kind {
            StoreKind::Etcd => PathBuf::from("etcd"),
            StoreKind::MetaStore => workspace_binary("metastore").map_err(anyhow::Error::msg)?,
        };
        let mut members: Vec<Member> = (0..count)
            .map(|i| {
                let (id, port) = (i + 1, ports[i].0);
                let client_url = format!("http://127.0.0.1:{port}");
                let (name, args) = match kind {
                    StoreKind::Etcd => {
                        let cluster: Vec<String> =
                            (0..count).map(|j| format!("etcd-{}={}", j + 1, peer_url(j))).collect();
                        let args = vec![
                            format!("--name=etcd-{id}"),
                            format!("--data-dir={}", dir.join(format!("etcd-{id}")).display()),
                            format!("--listen-client-urls={client_url}"),
                            format!("--advertise-client-urls={client_url}"),
                            format!("--listen-peer-urls={}", peer_url(i)),
                            format!("--initial-advertise-peer-urls={}", peer_url(i)),
                            format!("--initial-cluster={}", cluster.join(",")),
                        ];
                        (format!("etcd-{id}"), args)
                    }
                    StoreKind::MetaStore => {
                        let cluster: Vec<String> = (0..count).map(peer_url).collect();
                        let args = vec![
                            format!("--member-id={id}"),
                            format!("--cluster={}", cluster.join(",")),
                            format!("--port={port}"),
                            format!("--data-dir={}", dir.join(format!("metastore-{id}")).display()),
                        ];
                        (format!("metastore-{id}"), args)
                    }
                };
                let log = dir.join(format!("{name}.log"));
                Member { name, client_url, program: program.clone(), args, log, process: None }
            })
            .collect();
        for member in &mut members {
            member.start()?;
        }
        Ok(Self { kind, members })
    }

    /// Every member's client URL: the apiserver's `--etcd-servers`.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Until every running member says it serves with a leader elected: etcd's `/health`,
    /// metaStore's `/readyz`.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = metastore_client::tls::http(None)?.timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                continue;
            }
            let path = match self.kind {
                StoreKind::Etcd => "health",
                StoreKind::MetaStore => "readyz",
            };
            let url = format!("{}/{path}", self.members[i].client_url);
            loop {
                let healthy = match http.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        body["health"] == "true" || body["ready"] == true
                    }
                    _ => false,
                };
                if healthy {
                    break;
                }
                self.check_alive()?;
                if Instant::now() > deadline {
                    bail!("{} not healthy after 60 s:\n{}", self.members[i].name, self.log_tail(i, 30));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    fn log_tail(&self, member: usize, lines: usize) -> String {
        metastore_testkit::tail(&self.members[member].log, lines)
    }

    /// The last lines of every member's log, for a failure message.
    pub fn diagnostics(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("--- {} log (last 15 lines)\n{}\n", self.members[i].name, self.log_tail(i, 15)))
            .collect()
    }

    /// The index (0-based) of the member that leads, as the members themselves say.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        anyhow::ensure!(self.kind == StoreKind::MetaStore, "only a metaStore cluster has members to ask");
        for member in self.members.iter().filter(|m| m.process.is_some()) {
            let client = metastore_client::Client::new(member.client_url.clone());
            if let Ok(status) = client.cluster().await {
                if let Some(leader) = status.leader_id {
                    let index = leader.checked_sub(1).context("member ids start at 1")?;
                    return usize::try_from(index).context("member id");
                }
            }
        }
        bail!("no member names a leader")
    }

    /// SIGKILL to one member: a crash, mid-write.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut process) = self.members[member].process.take() {
            process.kill();
        }
    }

    /// Starts a killed or stopped member again on its data.
    pub fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        self.kill(member);
        self.members[member].start()
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.process.as_ref().map(Process::id)).collect()
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Fails with its log if a member that should run has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            if let Some(process) = member.process.as_mut() {
                if let Some(status) = process.exited() {
                    bail!("{} exited ({status}):\n{}", process.name(), process.tail(30));
                }
            }
        }
        Ok(())
    }

    /// Stops every member, gracefully.
    pub fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                process.stop(Duration::from_secs(5));
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}
