//! Member processes on 127.0.0.1 standing in for a StatefulSet's pods, shared by the tests
//! that drive membership against real `metastore` processes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use metastore_client::{Client, Consistency};
use metastore_operator::executor::{execute, observe, MemberDirectory};
use metastore_operator::membership::{plan, Step};
use metastore_testkit::{free_port, Process};

/// The `metastore` binary of this workspace.
fn metastore_bin() -> PathBuf {
    metastore_testkit::workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}"))
}

/// Member processes standing in for a StatefulSet's pods: member `id` is "pod" `id - 1`, with
/// ports and a data directory that outlive the process, as a pod's PVC does.
pub struct LocalStatefulSet {
    pub dir: tempfile::TempDir,
    pub ports: BTreeMap<u64, (u16, u16)>,
    pub running: BTreeMap<u64, Process>,
    pub replicas: i32,
    /// What the operator records in the cluster's status once it bootstrapped it.
    pub bootstrapped: bool,
    /// The peer token members start with, as pods do from the cluster's Secret.
    pub token: Option<String>,
}

/// Where each member listens (peer, client), for a reconciler that must own its directory.
#[derive(Clone)]
pub struct Ports(BTreeMap<u64, (u16, u16)>);

impl MemberDirectory for Ports {
    fn peer_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.0[&id].0)
    }
    fn client_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.0[&id].1)
    }
}

impl MemberDirectory for LocalStatefulSet {
    fn peer_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[&id].0)
    }
    fn client_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[&id].1)
    }
}

impl LocalStatefulSet {
    pub fn new() -> Self {
        let ports = (1..=9).map(|id| (id, (free_port(), free_port()))).collect();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            running: BTreeMap::new(),
            replicas: 0,
            bootstrapped: false,
            token: None,
        }
    }

    /// Members that require `token` of peers and on membership changes.
    pub fn with_peer_token(token: &str) -> Self {
        let mut set = Self::new();
        set.token = Some(token.to_string());
        set
    }

    pub fn directory(&self) -> Ports {
        Ports(self.ports.clone())
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    pub fn start(&mut self, id: u64) {
        let log = self.dir.path().join(format!("member-{id}.log"));
        let (peer, client) = self.ports[&id];
        let mut command = Command::new(metastore_bin());
        command
            .args(["--join", "--member-id", &id.to_string(), "--port", &client.to_string()])
            .args(["--advertise-peer-url", &format!("http://127.0.0.1:{peer}")])
            .args(["--advertise-client-url", &format!("http://127.0.0.1:{client}")])
            .arg("--data-dir")
            .arg(self.data_dir(id));
        if let Some(token) = &self.token {
            command.env("METASTORE_PEER_TOKEN", token);
        }
        let process = Process::spawn("metastore", command, &log).expect("spawn metastore");
        self.running.insert(id, process);
    }

    /// kill -9 (dropping the process kills it).
    pub fn stop(&mut self, id: u64) {
        self.running.remove(&id);
    }

    /// What the StatefulSet controller does: pods 0..replicas run, the rest are deleted (their
    /// volumes stay).
    pub fn scale(&mut self, replicas: i32) {
        self.replicas = replicas;
        let want: Vec<u64> = (1..=replicas as u64).collect();
        for id in want.iter().copied().filter(|id| !self.running.contains_key(id)).collect::<Vec<_>>() {
            self.start(id);
        }
        for id in self.running.keys().copied().filter(|id| !want.contains(id)).collect::<Vec<_>>() {
            self.stop(id);
        }
    }

    pub fn pod_ids(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    pub fn client(&self, id: u64) -> Client {
        Client::new(self.client_url(id))
    }

    pub fn logs(&self) -> String {
        (1..=9)
            .filter_map(|id| {
                std::fs::read_to_string(self.dir.path().join(format!("member-{id}.log")))
                    .ok()
                    .map(|l| (id, l))
            })
            .map(|(id, l)| {
                let lines: Vec<&str> = l.lines().collect();
                format!("--- member {id} ---\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs observe → plan → execute until the plan is done; returns the steps taken.
    pub async fn converge(&mut self, desired: i32) -> Vec<Step> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut taken = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "no convergence to {desired}: {taken:?}\n{}", self.logs());
            let observation = observe(self, &self.pod_ids(), self.replicas, self.bootstrapped).await;
            self.bootstrapped |= observation.observed.leader.is_some();
            let step = plan(desired, &observation.observed);
            match &step {
                Step::Done => return taken,
                Step::Refuse(why) => panic!("refused: {why}\n{taken:?}"),
                Step::Wait(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Step::ScaleStatefulSet(n) => self.scale(*n),
                membership_step => {
                    if let Err(e) = execute(self, &observation, membership_step, self.token.as_deref()).await
                    {
                        // Transient (e.g. a learner not caught up yet): observe again.
                        eprintln!("step {membership_step:?} failed, retrying: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    self.bootstrapped |= *membership_step == Step::Bootstrap;
                }
            }
            if !matches!(step, Step::Wait(_)) {
                taken.push(step);
            }
        }
    }

    pub async fn voters(&self) -> Vec<u64> {
        let observation = observe(self, &self.pod_ids(), self.replicas, self.bootstrapped).await;
        let mut voters: Vec<u64> = observation
            .observed
            .members
            .iter()
            .filter(|m| m.role == metastore_operator::crd::MemberRole::Voter)
            .map(|m| m.id)
            .collect();
        voters.sort();
        voters
    }

    /// Every key written so far reads back, linearizably, from every running member.
    pub async fn assert_data(&self, written: &BTreeMap<String, String>) {
        for id in self.pod_ids() {
            for (key, value) in written {
                let kv = self
                    .client(id)
                    .get(key, Consistency::Linearizable)
                    .await
                    .expect("read")
                    .expect("present");
                assert_eq!(String::from_utf8(kv.value).expect("utf-8"), *value, "{key} on member {id}");
            }
        }
    }

    pub async fn write(&self, written: &mut BTreeMap<String, String>, tag: &str) {
        for i in 0..5 {
            let (key, value) = (format!("{tag}-{i}"), format!("value-{tag}-{i}"));
            let leader = self.pod_ids()[0];
            self.client(leader).put(&key, value.clone().into_bytes(), None).await.expect("write");
            written.insert(key, value);
        }
    }
}

impl Drop for LocalStatefulSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.stop(id);
        }
    }
}
