//! A harness that runs real `metastore` processes on 127.0.0.1, each on ports of its own and
//! with its data in a temporary directory, and talks to them through the client crate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use metastore_client::tls::ClientTls;
use metastore_client::{Client, ClusterStatus};
use metastore_testkit::Process;

pub const BIN: &str = env!("CARGO_BIN_EXE_metastore");

pub use metastore_testkit::free_port;

pub struct Node {
    pub id: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How the test reaches the client port over TLS, if it speaks TLS.
    pub tls: Option<ClientTls>,
    /// Whether the peer port speaks TLS.
    pub peer_tls: bool,
    process: Option<Process>,
    log: PathBuf,
}

impl Node {
    pub fn peer_url(&self) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn client(&self) -> Client {
        match &self.tls {
            Some(tls) => Client::with_tls(self.client_url(), tls).expect("the test's TLS files"),
            None => Client::new(self.client_url()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }
}

/// A set of member processes sharing one working directory (so `data/N` lands in it).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// `n` members started statically with the seed report's flags, on fresh ports.
    pub fn start(n: usize, extra: &[&str]) -> Self {
        let mut cluster = Self::empty();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let urls: Vec<String> = ports.iter().map(|(p, _)| format!("http://127.0.0.1:{p}")).collect();
        for (i, (peer, client)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mut args = vec![
                "--member-id".to_string(),
                id.to_string(),
                "--cluster".to_string(),
                urls.join(","),
                "--port".to_string(),
                client.to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            cluster.add(id, *peer, *client, args);
        }
        cluster
    }

    pub fn empty() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), nodes: Vec::new() }
    }

    /// Registers and starts a member with explicit arguments.
    pub fn add(&mut self, id: u64, peer_port: u16, client_port: u16, args: Vec<String>) -> usize {
        let log = self.dir.path().join(format!("node-{id}.log"));
        let (tls, peer_tls) = (None, false);
        self.nodes.push(Node {
            id,
            client_port,
            peer_port,
            args,
            env: Vec::new(),
            tls,
            peer_tls,
            process: None,
            log,
        });
        let index = self.nodes.len() - 1;
        self.spawn(index);
        index
    }

    /// Registers and starts a member whose ports speak TLS as `tls` (client port) and
    /// `peer_tls` say.
    pub fn add_tls(
        &mut self,
        id: u64,
        (peer_port, client_port): (u16, u16),
        args: Vec<String>,
        tls: Option<ClientTls>,
        peer_tls: bool,
    ) -> usize {
        let log = self.dir.path().join(format!("node-{id}.log"));
        let env = Vec::new();
        self.nodes.push(Node { id, client_port, peer_port, args, env, tls, peer_tls, process: None, log });
        let index = self.nodes.len() - 1;
        self.spawn(index);
        index
    }

    /// Registers and starts a member configured through environment variables only.
    pub fn add_with_env(
        &mut self,
        id: u64,
        peer_port: u16,
        client_port: u16,
        env: Vec<(String, String)>,
    ) -> usize {
        let log = self.dir.path().join(format!("node-{id}.log"));
        let (args, tls, peer_tls) = (Vec::new(), None, false);
        self.nodes.push(Node { id, client_port, peer_port, args, env, tls, peer_tls, process: None, log });
        let index = self.nodes.len() - 1;
        self.spawn(index);
        index
    }

    /// Starts a member that joins (does not bootstrap) and waits to be added.
    pub fn add_joining(&mut self, id: u64, extra: &[&str]) -> usize {
        let (peer, client) = (free_port(), free_port());
        let mut args = vec![
            "--join".to_string(),
            "--member-id".to_string(),
            id.to_string(),
            "--advertise-peer-url".to_string(),
            format!("http://127.0.0.1:{peer}"),
            "--port".to_string(),
            client.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.add(id, peer, client, args)
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("no such member")
    }

    fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("no such member")
    }

    fn spawn(&mut self, index: usize) {
        let dir = self.dir.path().to_path_buf();
        let node = &mut self.nodes[index];
        let mut command = Command::new(BIN);
        command
            .args(&node.args)
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&dir)
            .env_remove("RUST_LOG");
        node.process = Some(Process::spawn("metastore", command, &node.log).expect("spawn metastore"));
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(id.to_string())
    }

    /// The data directory member `id` uses, wherever its flags put it.
    pub fn data_dir_of(&self, id: u64) -> PathBuf {
        let node = self.node(id);
        match node.args.iter().position(|a| a == "--data-dir") {
            Some(i) => self.dir.path().join(&node.args[i + 1]),
            None => self.data_dir(id),
        }
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        let index = self.index_of(id);
        if let Some(mut process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        let index = self.index_of(id);
        if let Some(mut process) = self.nodes[index].process.take() {
            match process.stop(Duration::from_secs(20)) {
                Some(status) => assert!(status.success(), "member {id} exited with {status} after SIGTERM"),
                None => panic!("member {id} did not stop within 20s of SIGTERM"),
            }
        }
    }

    pub fn restart(&mut self, id: u64) {
        let index = self.index_of(id);
        assert!(self.nodes[index].process.is_none(), "member {id} is still running");
        self.spawn(index);
    }

    /// Restart with different arguments (the data directory stays).
    pub fn restart_with(&mut self, id: u64, args: Vec<String>) {
        let index = self.index_of(id);
        self.nodes[index].args = args;
        self.restart(id);
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Waits until every running member names the same leader, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for node in self.running() {
                leaders.push(node.client().cluster().await.ok().and_then(|s| s.leader_id));
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*first)) && self.running().any(|n| n.id == *first) {
                    return *first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status(&self, id: u64) -> ClusterStatus {
        self.node(id).client().cluster().await.expect("cluster status")
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            // Backtraces would push the interesting lines out of the tail.
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("  ")).collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!("--- member {} ---\n{}\n", node.id, tail.join("\n")));
        }
        out
    }

    /// Everything member `id` has logged.
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for node in &mut self.nodes {
            node.process.take();
        }
    }
}

/// Adds running member `id` of `cluster` through `admin` (which holds the token, if any): as a
/// learner at its incarnation, then as a voter.
pub async fn add_member(admin: &Client, cluster: &Cluster, id: u64) {
    let node = cluster.node(id);
    let client = node.client();
    let incarnation = eventually(Duration::from_secs(10), || client.cluster()).await.incarnation;
    let request = metastore_client::AddMemberRequest {
        id,
        peer_url: node.peer_url(),
        client_url: node.client_url(),
        incarnation,
    };
    eventually(Duration::from_secs(30), || admin.add_learner(&request)).await;
    eventually(Duration::from_secs(30), || admin.promote(id)).await;
}

/// Retries `f` until it succeeds or `timeout` passes; returns the last error on timeout.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("gave up after {timeout:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A one-member etcd (Debian's `etcd-server`) with its data in `dir`, once it says it is
/// healthy; its client URL.
pub async fn start_etcd(dir: &Path) -> (Process, String) {
    let (peer, client) = (free_port(), free_port());
    let (peer_url, client_url) = (format!("http://127.0.0.1:{peer}"), format!("http://127.0.0.1:{client}"));
    let mut command = Command::new("etcd");
    command.arg("--data-dir").arg(dir.join("etcd"));
    command.args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url]);
    command.args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url]);
    command.args(["--initial-cluster", &format!("default={peer_url}"), "--log-level", "error"]);
    let etcd = Process::spawn("etcd", command, &dir.join("etcd.log")).expect("etcd starts");
    let health = format!("{client_url}/health");
    eventually(Duration::from_secs(30), || async {
        let answer =
            metastore_client::tls::default_http().get(&health).send().await.map_err(|e| e.to_string())?;
        let text = answer.text().await.map_err(|e| e.to_string())?;
        if text.contains("\"health\":\"true\"") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    (etcd, client_url)
}
