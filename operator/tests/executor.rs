//! The membership executor against real `metastore` processes on 127.0.0.1: a local stand-in
//! for the StatefulSet starts and stops member processes in join mode, exactly as the pods run,
//! and the planner + executor drive raft membership through the node API.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metastore_client::{Client, Consistency};
use metastore_operator::executor::{execute, observe, MemberDirectory};
use metastore_operator::membership::{plan, Step};

/// The `metastore` binary of this workspace: integration tests run from `<target>/debug/deps`.
fn metastore_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("metastore");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p metastore-node` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A free port below Linux's ephemeral range, where outgoing connections cannot take it
/// between this check and the member's bind.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(104_729);
    loop {
        let port = (20_000 + seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Member processes standing in for a StatefulSet's pods: member `id` is "pod" `id - 1`, with
/// ports and a data directory that outlive the process, as a pod's PVC does.
struct LocalStatefulSet {
    dir: tempfile::TempDir,
    ports: BTreeMap<u64, (u16, u16)>,
    running: BTreeMap<u64, Child>,
    replicas: i32,
    /// What the operator records in the cluster's status once it bootstrapped it.
    bootstrapped: bool,
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
    fn new() -> Self {
        let ports = (1..=9).map(|id| (id, (free_port(), free_port()))).collect();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            running: BTreeMap::new(),
            replicas: 0,
            bootstrapped: false,
        }
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    fn start(&mut self, id: u64) {
        let log = std::fs::File::create(self.dir.path().join(format!("member-{id}.log"))).expect("log");
        let (peer, client) = self.ports[&id];
        let child = Command::new(metastore_bin())
            .args(["--join", "--member-id", &id.to_string(), "--port", &client.to_string()])
            .args(["--advertise-peer-url", &format!("http://127.0.0.1:{peer}")])
            .args(["--advertise-client-url", &format!("http://127.0.0.1:{client}")])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn metastore");
        self.running.insert(id, child);
    }

    fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.running.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the StatefulSet controller does: pods 0..replicas run, the rest are deleted (their
    /// volumes stay).
    fn scale(&mut self, replicas: i32) {
        self.replicas = replicas;
        let want: Vec<u64> = (1..=replicas as u64).collect();
        for id in want.iter().copied().filter(|id| !self.running.contains_key(id)).collect::<Vec<_>>() {
            self.start(id);
        }
        for id in self.running.keys().copied().filter(|id| !want.contains(id)).collect::<Vec<_>>() {
            self.stop(id);
        }
    }

    fn pod_ids(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    fn client(&self, id: u64) -> Client {
        Client::new(self.client_url(id))
    }

    fn logs(&self) -> String {
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
    async fn converge(&mut self, desired: i32) -> Vec<Step> {
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
                    if let Err(e) = execute(self, &observation, membership_step).await {
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

    async fn voters(&self) -> Vec<u64> {
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
    async fn assert_data(&self, written: &BTreeMap<String, String>) {
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

    async fn write(&self, written: &mut BTreeMap<String, String>, tag: &str) {
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

#[tokio::test(flavor = "multi_thread")]
async fn membership_follows_one_three_five_three_one_and_keeps_every_key() {
    let mut set = LocalStatefulSet::new();
    let mut written = BTreeMap::new();

    let steps = set.converge(1).await;
    assert_eq!(steps, [Step::ScaleStatefulSet(1), Step::Bootstrap]);
    set.write(&mut written, "at1").await;

    for (size, voters) in [(3, vec![1, 2, 3]), (5, vec![1, 2, 3, 4, 5]), (3, vec![1, 2, 3]), (1, vec![1])] {
        set.converge(size).await;
        assert_eq!(set.voters().await, voters, "raft voters at size {size}");
        assert_eq!(set.pod_ids(), voters, "pods at size {size}");
        set.assert_data(&written).await;
        let tag = format!("at{size}-{}", written.len());
        set.write(&mut written, &tag).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_interrupted_halfway_is_finished_by_the_next_reconcile() {
    let mut set = LocalStatefulSet::new();
    set.converge(3).await;

    // Crash point 1: the learner was added, the operator died before promoting it.
    set.scale(4);
    let observation = observe(&set, &set.pod_ids(), 4, true).await;
    execute(&set, &observation, &Step::AddLearner { id: 4 }).await.expect("add learner");
    let steps = set.converge(4).await;
    assert_eq!(steps.first(), Some(&Step::Promote { id: 4 }));
    assert_eq!(set.voters().await, [1, 2, 3, 4]);

    // Crash point 2: the member left raft, the operator died before shrinking the StatefulSet.
    let observation = observe(&set, &set.pod_ids(), 4, true).await;
    execute(
        &set,
        &observation,
        &Step::Remove { id: 4, why: metastore_operator::membership::Removal::ScaleDown },
    )
    .await
    .expect("remove");
    let steps = set.converge(3).await;
    assert_eq!(steps, [Step::ScaleStatefulSet(3)]);
    assert_eq!(set.voters().await, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_lost_its_storage_is_removed_and_added_anew() {
    let mut set = LocalStatefulSet::new();
    let mut written = BTreeMap::new();
    set.converge(3).await;
    set.write(&mut written, "before").await;

    // The pod of member 3 comes back on an empty volume.
    set.stop(3);
    std::fs::remove_dir_all(set.data_dir(3)).expect("wipe member 3");
    set.start(3);
    // The operator requeues until it can observe the pod; here, until it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while set.client(3).cluster().await.is_err() {
        assert!(Instant::now() < deadline, "member 3 did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let steps = set.converge(3).await;
    assert_eq!(
        steps.first(),
        Some(&Step::Remove { id: 3, why: metastore_operator::membership::Removal::StorageLost }),
        "{steps:?}"
    );
    assert!(
        steps.contains(&Step::AddLearner { id: 3 }) && steps.contains(&Step::Promote { id: 3 }),
        "{steps:?}"
    );
    assert_eq!(set.voters().await, [1, 2, 3]);
    set.assert_data(&written).await;
}
