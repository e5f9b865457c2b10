//! A cluster of real `metastore` processes on 127.0.0.1 that faults can be done to: killed,
//! paused, stopped, wiped, removed from raft and added back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use metastore_client::{AddMemberRequest, Client, MemberRole};
use metastore_testkit::{free_port, Process};

use crate::network::Network;
use crate::pki::{Credentials, Pki};
use metastore_client::tls::ClientTls;

/// Whether a TLS handshake with `url` as `tls` succeeds: any HTTP answer means it did.
async fn handshake(url: &str, tls: &ClientTls) -> anyhow::Result<bool> {
    let http = metastore_client::tls::http(Some(tls))?.timeout(Duration::from_secs(2)).build()?;
    Ok(http.get(format!("{url}/health")).send().await.is_ok())
}

pub struct Member {
    pub id: u64,
    /// 127.0.0.1, or its own address when members have networks of their own.
    pub host: String,
    pub peer_port: u16,
    pub client_port: u16,
    process: Option<Process>,
    paused: bool,
    /// Started in join mode (after a wipe or a removal): waits to be added.
    joining: bool,
    /// Whether both its ports speak TLS.
    tls: bool,
}

impl Member {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

pub struct Cluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub members: BTreeMap<u64, Member>,
    /// Short timeouts, so that a fault is noticed within a second or two.
    http: reqwest::Client,
    /// Flags every member is started with, beside those the cluster sets.
    member_args: Vec<String>,
    /// The certificates, when members speak TLS.
    pki: Option<Pki>,
    credentials: Option<Credentials>,
    /// Members' own networks, when links between them are to be cut. Last, so that it is torn
    /// down after the members (dropped with `members`) have stopped.
    network: Option<Network>,
}

impl Cluster {
    /// Starts `size` members as a static cluster (`--cluster`), as the seed report does; with
    /// `own_networks`, each in a network namespace of its own (inside the sandbox only); every
    /// member also gets `member_args`; with `tls`, both ports of every member speak TLS, client
    /// certificates demanded.
    pub fn start(
        binary: PathBuf,
        size: u64,
        own_networks: bool,
        member_args: Vec<String>,
        tls: bool,
    ) -> anyhow::Result<Self> {
        let ids: Vec<u64> = (1..=size).collect();
        let network = if own_networks { Some(Network::create(&ids)?) } else { None };
        let members: BTreeMap<u64, Member> = ids
            .iter()
            .map(|&id| {
                let (host, peer_port, client_port) = match &network {
                    Some(network) => (network.address(id), 12379, 12380),
                    None => ("127.0.0.1".to_string(), free_port(), free_port()),
                };
                let member = Member {
                    id,
                    host,
                    peer_port,
                    client_port,
                    process: None,
                    paused: false,
                    joining: false,
                    tls,
                };
                (id, member)
            })
            .collect();
        let dir = tempfile::tempdir()?;
        let hosts: Vec<(u64, String)> = members.values().map(|m| (m.id, m.host.clone())).collect();
        let pki = if tls { Some(Pki::new(dir.path(), &hosts)?) } else { None };
        let credentials = pki.as_ref().map(Pki::credentials).transpose()?;
        let http = metastore_client::tls::http(credentials.as_ref().map(|c| &c.files))?
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_millis(500))
            .build()?;
        let mut cluster = Self { binary, dir, network, members, http, member_args, pki, credentials };
        for id in ids {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let peers: Vec<String> = self.members.values().map(Member::peer_url).collect();
        let member = &self.members[&id];
        let mut command = match &self.network {
            Some(network) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &network.namespace(id)]).arg(&self.binary);
                command.args(["--bind-address", &member.host]);
                command
            }
            None => Command::new(&self.binary),
        };
        command.args(["--member-id", &id.to_string(), "--port", &member.client_port.to_string()]);
        command.arg("--data-dir").arg(self.data_dir(id));
        if member.joining {
            command.args(["--join", "--advertise-peer-url", &member.peer_url()]);
            command.args(["--advertise-client-url", &member.client_url()]);
        } else {
            command.args(["--cluster", &peers.join(",")]);
        }
        command.args(&self.member_args);
        if let Some(pki) = &self.pki {
            command.args(pki.member_flags(id));
        }
        command.env_remove("RUST_LOG");
        let log = self.dir.path().join(format!("member-{id}.log"));
        let process = Process::spawn("metastore", command, &log)?;
        let member = self.members.get_mut(&id).context("no such member")?;
        member.process = Some(process);
        member.paused = false;
        Ok(())
    }

    pub fn client(&self, id: u64) -> Client {
        Client::with_http(self.members[&id].client_url(), self.http.clone())
    }

    /// What clients present and trust, when members speak TLS.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Starts moving every member to certificates of a new CA, as files replaced under them:
    /// the new CA trusted beside the old, then (once members have read that) new certificates.
    pub async fn renew_certificates(&self) -> anyhow::Result<()> {
        let pki = self.pki.as_ref().context("the members do not speak TLS")?;
        let (current, next) = (pki.current(), pki.next());
        pki.trust_next();
        // Members present their old certificates still, and must take peers' new ones.
        let (client, peer) = pki.probes(current, next);
        self.until_handshakes("trust the next CA", &client, &peer, |_, peer| peer).await?;
        let hosts: Vec<(u64, String)> = self.members.values().map(|m| (m.id, m.host.clone())).collect();
        pki.issue_next(&hosts);
        let (client, peer) = pki.probes(next, next);
        self.until_handshakes("present the next CA's certificates", &client, &peer, |client, peer| {
            client && peer
        })
        .await
    }

    /// Waits until `ready` holds, for every running member, of whether a handshake with its
    /// client port as `client` and with its peer port as `peer` succeed. Each try opens new
    /// connections: a pooled one would prove nothing.
    async fn until_handshakes(
        &self,
        what: &str,
        client: &ClientTls,
        peer: &ClientTls,
        ready: impl Fn(bool, bool) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        for member in self.members.values().filter(|m| m.is_running()) {
            loop {
                let (client_url, peer_url) = (member.client_url(), member.peer_url());
                let (client_port, peer_port) =
                    tokio::join!(handshake(&client_url, client), handshake(&peer_url, peer));
                if ready(client_port?, peer_port?) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "member {} did not {what} within 15 s (its files are read every second)",
                        member.id
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Ends a renewal: the old CA no longer trusted. Then checks, with connections of its own,
    /// that every member's peer port refuses the old CA's certificates and its client port
    /// still presents the new CA's: the clients' connections, made before, show neither.
    pub async fn distrust_previous_ca(&mut self) -> anyhow::Result<()> {
        let pki = self.pki.as_mut().context("the members do not speak TLS")?;
        let previous = pki.current();
        pki.drop_previous();
        let (client, peer) = pki.probes(pki.current(), previous);
        self.until_handshakes("distrust the previous CA", &client, &peer, |client, peer| client && !peer)
            .await
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(member) = self.members.get_mut(&id) {
            if let Some(mut process) = member.process.take() {
                process.kill();
            }
            member.paused = false;
        }
    }

    /// Starts a stopped member again, on its data.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if !self.members[&id].is_running() {
            self.spawn(id)?;
        }
        Ok(())
    }

    fn signal(&mut self, id: u64, signal: &str) -> anyhow::Result<()> {
        let member = self.members.get_mut(&id).context("no such member")?;
        let Some(process) = &member.process else { return Ok(()) };
        let status = Command::new("kill").arg(signal).arg(process.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        member.paused = signal == "-STOP";
        Ok(())
    }

    /// SIGSTOP: the member stops in its tracks, as in a long GC pause or a frozen VM.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-STOP")
    }

    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        if self.members.get(&id).is_some_and(|m| m.paused) {
            self.signal(id, "-CONT")?;
        }
        Ok(())
    }

    /// Kills the member and deletes its data directory: a lost disk.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot wipe {}", dir.display()))?;
        }
        Ok(())
    }

    /// The leader a majority of the reachable members names.
    pub async fn leader(&self) -> Option<u64> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for member in self.members.values().filter(|m| m.is_running() && !m.paused) {
            if let Ok(status) = self.client(member.id).cluster().await {
                if let Some(leader) = status.leader_id {
                    *votes.entry(leader).or_default() += 1;
                }
            }
        }
        let majority = self.members.len() / 2 + 1;
        votes.into_iter().find(|(_, n)| *n >= majority).map(|(id, _)| id)
    }

    pub async fn wait_for_leader(&self, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("no leader within {limit:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces member `id` in raft by a fresh one on an empty store: removes it, starts it in
    /// join mode, adds it as a learner with its new incarnation and promotes it. What the
    /// operator does for a member that lost its storage.
    pub async fn replace(&mut self, id: u64) -> anyhow::Result<()> {
        self.remove(id).await.context("remove")?;
        self.wipe(id)?;
        self.members.get_mut(&id).context("no such member")?.joining = true;
        self.spawn(id)?;
        let fresh = self.client(id);
        let incarnation = retry(|| fresh.cluster()).await?.incarnation;
        let member = &self.members[&id];
        let request = AddMemberRequest {
            id,
            peer_url: member.peer_url(),
            client_url: member.client_url(),
            incarnation,
        };
        let request = &request;
        self.on_leader(|leader| async move {
            let members = leader.cluster().await?.members;
            match members.iter().find(|m| m.id == id).map(|m| m.role) {
                None => {
                    leader.add_learner(request).await?;
                    leader.promote(id).await?;
                }
                Some(MemberRole::Learner) => {
                    leader.promote(id).await?;
                }
                Some(MemberRole::Voter) => {}
            }
            Ok(())
        })
        .await
        .context("add and promote")
    }

    /// Takes member `id` out of raft; its process runs on, no longer a member.
    pub async fn remove(&self, id: u64) -> anyhow::Result<()> {
        self.on_leader(|leader| async move {
            // Idempotent: an attempt whose answer was lost may have done it.
            if leader.cluster().await?.members.iter().any(|m| m.id == id) {
                leader.remove_member(id).await?;
            }
            Ok(())
        })
        .await
    }

    /// Runs a membership change on whichever member leads at each attempt, for up to 30 s,
    /// with a timeout long enough for a learner to catch up.
    async fn on_leader<F, Fut>(&self, change: F) -> anyhow::Result<()>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), metastore_client::ClientError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let outcome = match self.leader().await {
                Some(leader) => {
                    let leader = self.client(leader);
                    // The others may not have noticed yet that it is gone or lost its memory:
                    // only a member that says it leads is asked.
                    match leader.cluster().await {
                        Ok(status) if status.leader_id == Some(status.member_id) => {
                            change(leader).await.map_err(|e| e.to_string())
                        }
                        Ok(_) => Err("the named leader does not lead".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("no leader".to_string()),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Cuts every link between `one` and `other`, in the directions given: `one` stops
    /// hearing `other`, and with `both_ways` the reverse too.
    pub fn partition(&self, one: &[u64], other: &[u64], both_ways: bool) -> anyhow::Result<()> {
        let network = self.network.as_ref().context("partitions need members with networks of their own")?;
        for a in one {
            for b in other {
                network.block(*b, *a)?;
                if both_ways {
                    network.block(*a, *b)?;
                }
            }
        }
        Ok(())
    }

    pub fn heal_network(&self) -> anyhow::Result<()> {
        match &self.network {
            Some(network) => Ok(network.heal()?),
            None => Ok(()),
        }
    }

    /// Every member running and not paused, and every link working.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.heal_network()?;
        for id in self.ids() {
            self.resume(id)?;
            self.restart(id)?;
        }
        Ok(())
    }

    pub fn logs(&self) -> String {
        self.ids()
            .iter()
            .map(|id| {
                let log = self.dir.path().join(format!("member-{id}.log"));
                format!("--- member {id}\n{}", metastore_testkit::tail(&log, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Retries a call for up to 20 s: the member may be starting.
async fn retry<T, E: std::fmt::Display, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => bail!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Paused members are continued first, so that every member stops the same way.
        for id in self.ids() {
            let _ = self.resume(id);
        }
    }
}
