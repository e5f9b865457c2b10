//! The load generator against real stores: every workload runs without errors against a
//! metaStore member and, where etcd is installed, against etcd, over each system's HTTP API
//! and over etcd's gRPC API; open loop sends
//! the requests its rate schedules; a bad endpoint is refused with a clear error.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use metastore_testkit::{free_port, workspace_binary, Process};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_metastore-bench");

const WORKLOADS: [&str; 8] = ["put", "get", "stale-get", "mixed", "cas", "create", "txn", "past-get"];

/// Runs the generator with `args`; its JSON outcome.
fn bench(system: &str, endpoint: &str, args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(["--system", system, "--endpoints", endpoint, "--keys", "64", "--json"])
        .args(args)
        .output()
        .expect("metastore-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "metastore-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().expect("an outcome line");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Preloads every key, retrying until the store takes writes (it may still be starting).
fn preload(system: &str, endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new(BENCH)
            .args([
                "--system",
                system,
                "--endpoints",
                endpoint,
                "--keys",
                "64",
                "--preload",
                "--duration",
                "0",
            ])
            .output()
            .expect("metastore-bench runs");
        if status.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(Instant::now() < deadline, "{system} at {endpoint} never took writes: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_workload_runs_without_errors(system: &str, endpoint: &str) {
    preload(system, endpoint);
    for protocol in ["http", "grpc"] {
        for workload in WORKLOADS {
            let args = ["--protocol", protocol, "--workload", workload, "--clients", "4", "--duration", "1"];
            let outcome = bench(system, endpoint, &args);
            assert_clean(&outcome, &format!("{workload} on {system} over {protocol}"));
            let spoken = outcome["protocol"].as_str().map(str::to_lowercase);
            assert_eq!(spoken.as_deref(), Some(protocol), "{outcome}");
        }
        // Ten watchers, 50 writes a second: every change reaches every watcher.
        let args = [
            "--protocol",
            protocol,
            "--workload",
            "watch-fanout",
            "--clients",
            "10",
            "--rate",
            "50",
            "--duration",
            "1",
        ];
        let fanout = bench(system, endpoint, &args);
        assert_clean(&fanout, &format!("watch-fanout on {system} over {protocol}"));
        assert!(fanout["operations"].as_u64().unwrap_or(0) >= 400, "deliveries counted: {fanout}");
    }
}

/// Runs the generator with `args` against a fresh, preloaded member; its outcome, which must be
/// free of errors.
fn clean_load_on_one_member(args: &[&str], what: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_member, endpoint) = start_metastore(dir.path());
    preload("metastore", &endpoint);
    let outcome = bench("metastore", &endpoint, args);
    assert_clean(&outcome, what);
    outcome
}

fn assert_clean(outcome: &Value, what: &str) {
    assert_eq!(outcome["errors"], 0, "{what}: {outcome}");
    assert!(outcome["operations"].as_u64().is_some_and(|n| n > 0), "{what} did nothing: {outcome}");
    let ms = |field: &str| outcome[field].as_f64().unwrap_or(f64::NAN);
    assert!(ms("p50_ms") <= ms("p99_ms") && ms("p99_ms") <= ms("max_ms"), "{what}: {outcome}");
    assert!(ms("generator_cores") >= 0.0, "{what} measured its own CPU: {outcome}");
}

fn start_metastore(dir: &Path) -> (Process, String) {
    let (mut members, endpoints) = start_metastore_cluster(dir, 1);
    (members.remove(0), endpoints)
}

/// `n` members of one cluster; their client URLs, comma separated.
fn start_metastore_cluster(dir: &Path, n: usize) -> (Vec<Process>, String) {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> = ports.iter().map(|(peer, _)| format!("http://127.0.0.1:{peer}")).collect();
    let binary = workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}"));
    let members = (1..=n)
        .zip(&ports)
        .map(|(id, (_, client))| {
            let mut command = Command::new(&binary);
            command.args(["--member-id", &id.to_string(), "--cluster", &cluster.join(",")]);
            command.args(["--port", &client.to_string(), "--data-dir"]).arg(dir.join(format!("data{id}")));
            let log = dir.join(format!("metastore{id}.log"));
            Process::spawn("metastore", command, &log).expect("member starts")
        })
        .collect();
    let endpoints: Vec<String> =
        ports.iter().map(|(_, client)| format!("http://127.0.0.1:{client}")).collect();
    (members, endpoints.join(","))
}

/// The member at `url` by its own account: its raft state and term.
fn state_of(url: &str) -> (String, u64) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let status = runtime.block_on(metastore_client::Client::new(url).cluster()).expect("cluster status");
    (status.state, status.term)
}

#[test]
fn every_workload_runs_against_metastore_without_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_member, endpoint) = start_metastore(dir.path());
    every_workload_runs_without_errors("metastore", &endpoint);
}

#[test]
fn the_leader_and_follower_targets_send_to_one_member_of_that_role() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_members, endpoints) = start_metastore_cluster(dir.path(), 3);
    preload("metastore", &endpoints);
    let (_, elected) = state_of(endpoints.split(',').next().expect("an endpoint"));
    // Over gRPC a member's role comes from etcd's Status (the leader it names is itself).
    for (target, protocol) in
        [("leader", "http"), ("follower", "http"), ("leader", "grpc"), ("follower", "grpc")]
    {
        let args = [
            "--protocol",
            protocol,
            "--target",
            target,
            "--workload",
            "put",
            "--clients",
            "4",
            "--duration",
            "1",
        ];
        let outcome = bench("metastore", &endpoints, &args);
        assert_clean(&outcome, &format!("put on the {target} over {protocol}"));
        let used = outcome["endpoints"].as_array().expect("endpoints listed");
        assert_eq!(used.len(), 1, "{outcome}");
        let url = used[0].as_str().expect("a URL");
        assert!(endpoints.split(',').any(|e| e == url), "{url} is one of {endpoints}");
        let (state, term) = state_of(url);
        if term != elected {
            // An election since the load began (a busy machine) may have swapped the roles.
            eprintln!("term {term}: roles may have changed since the load began; not compared");
            continue;
        }
        assert_eq!(state, target, "{url} is the {target}");
    }
}

/// How many keys start with `prefix` on the member at `url`.
fn keys_under(url: &str, prefix: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let request = metastore_client::RangeRequest {
        prefix: Some(prefix.into()),
        limit: Some(10_000),
        ..Default::default()
    };
    let page = runtime.block_on(metastore_client::Client::new(url).range(&request)).expect("range");
    assert!(!page.more, "fewer than 10 000 keys");
    page.kvs.len()
}

#[test]
fn creates_and_a_preload_from_a_first_key_grow_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_member, endpoint) = start_metastore(dir.path());
    preload("metastore", &endpoint);
    bench("metastore", &endpoint, &["--preload", "--first-key", "64", "--duration", "0"]);
    assert_eq!(keys_under(&endpoint, "bench/"), 128, "the second preload wrote 64 new keys");
    let outcome =
        bench("metastore", &endpoint, &["--workload", "create", "--clients", "2", "--duration", "1"]);
    assert_clean(&outcome, "create");
    let created = outcome["operations"].as_u64().expect("a count") as usize;
    assert_eq!(keys_under(&endpoint, "bench-new/"), created, "every create wrote a key of its own");
}

#[test]
fn a_zipf_load_runs_without_errors() {
    let args = ["--workload", "cas", "--distribution", "zipf", "--clients", "4", "--duration", "1"];
    let outcome = clean_load_on_one_member(&args, "cas on zipf keys");
    assert_eq!(outcome["distribution"], "Zipf", "{outcome}");
}

#[test]
fn open_loop_sends_what_its_rate_schedules() {
    let args = ["--workload", "stale-get", "--clients", "4", "--rate", "200", "--duration", "1"];
    let outcome = clean_load_on_one_member(&args, "open loop");
    // 200 slots in the second, split among 4 senders: each sends its own, answered or not.
    assert_eq!(outcome["operations"], 200, "{outcome}");
}

#[test]
fn arguments_that_describe_no_load_are_refused() {
    for args in [
        &["--clients", "0"][..],
        &["--keys", "0"],
        &["--rate", "0"],
        &["--distribution", "zipf", "--zipf-exponent", "inf"],
    ] {
        let out = Command::new(BENCH)
            .args(["--endpoints", "http://127.0.0.1:9", "--duration", "0"])
            .args(args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(!out.stderr.is_empty(), "{args:?} was refused without a word");
    }
}

#[test]
fn every_workload_runs_against_etcd_without_errors() {
    if !metastore_testkit::available(Path::new("etcd"), "--version") {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (peer, client) = (free_port(), free_port());
    let (peer_url, client_url) = (format!("http://127.0.0.1:{peer}"), format!("http://127.0.0.1:{client}"));
    let mut command = Command::new("etcd");
    command.arg("--data-dir").arg(dir.path().join("etcd"));
    command.args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url]);
    command.args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url]);
    command.args(["--initial-cluster", &format!("default={peer_url}"), "--log-level", "error"]);
    let _etcd = Process::spawn("etcd", command, &dir.path().join("etcd.log")).expect("etcd starts");
    every_workload_runs_without_errors("etcd", &client_url);
    let args = ["--target", "leader", "--workload", "stale-get", "--clients", "2", "--duration", "1"];
    let outcome = bench("etcd", &client_url, &args);
    assert_clean(&outcome, "a lone etcd member leads");
}

#[test]
fn an_endpoint_that_is_not_a_member_url_is_refused() {
    let refusal = |args: &[&str]| {
        let out = Command::new(BENCH).args(args).output().expect("runs");
        assert!(!out.status.success(), "{args:?} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for endpoint in ["127.0.0.1:2379", "http://127.0.0.1:2379/v3", "ftp://127.0.0.1:2379"] {
        let said = refusal(&["--endpoints", endpoint]);
        assert!(said.contains("is not http://host:port or https://host:port"), "{endpoint}: {said}");
    }
    let said = refusal(&["--endpoints", "https://127.0.0.1:2379"]);
    assert!(said.contains("gRPC only"), "{said}");
    let said = refusal(&["--endpoints", "https://127.0.0.1:2379", "--protocol", "grpc"]);
    assert!(said.contains("--cacert"), "{said}");
}
