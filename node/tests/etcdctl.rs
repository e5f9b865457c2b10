//! One scripted etcdctl session (`-w json` wherever etcdctl has it) against a real etcd and
//! against a 3-member metaStore cluster: the outputs must be the same once what differs by
//! nature is masked (cluster and member ids, raft terms, lease ids) and revisions are counted
//! from where each store began. etcdctl is etcd's own Go client (clientv3 over grpc-go), so
//! this is also the HTTP/2 interop test of that stack.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, start_etcd, Cluster};
use serde_json::Value;

/// One step of the session: etcdctl's arguments (`{rev+N}` stands for the revision N writes
/// after the session began, `{lease}` for the lease granted last), and its standard input.
struct Step {
    args: &'static str,
    stdin: &'static str,
}

const fn step(args: &'static str) -> Step {
    Step { args, stdin: "" }
}

const SESSION: &[Step] = &[
    step("put a 1"),
    step("put a 2 --prev-kv -w json"),
    step("put b 3 -w json"),
    step("put c 4"),
    step("get a -w json"),
    step("get a --rev={rev+1} -w json"),
    step("get a --prefix -w json"),
    step("get a z -w json"),
    step("get a z --limit=2 -w json"),
    step("get a z --sort-by=VALUE --order=DESCEND -w json"),
    step("get a z --sort-by=MODIFY --order=ASCEND --limit=2 -w json"),
    step("get a z --keys-only -w json"),
    step("get a z --count-only -w json"),
    step("get --from-key b -w json"),
    step("get a --print-value-only"),
    step("get missing -w json"),
    Step { args: "txn -w json", stdin: "mod(\"a\") = \"{rev+2}\"\n\nput a 5\nget b\n\nget a\n\n" },
    Step {
        args: "txn -w json",
        stdin: "value(\"b\") > \"9\"\nversion(\"c\") = \"1\"\n\nput b 6\n\ndel c --prev-kv\nget a\n\n",
    },
    Step { args: "txn -w json", stdin: "create(\"nothing\") = \"0\"\n\nput n 1\n\n\n" },
    step("del b --prev-kv -w json"),
    step("del a z --prev-kv -w json"),
    step("get a z -w json"),
    step("put x/1 one"),
    step("put x/2 two"),
    step("watch --rev={rev+1} a -w json"),
    step("watch --rev={rev+1} --prefix x/ --prev-kv -w json"),
    step("compact {rev+9}"),
    step("get a --rev={rev+2}"),
    step("watch --rev={rev+2} a"),
    step("lease grant 60 -w json"),
    step("put l/1 v --lease={lease}"),
    step("lease timetolive {lease} --keys -w json"),
    step("lease keep-alive --once {lease} -w json"),
    step("lease revoke {lease}"),
    step("get l/1 -w json"),
    step("lease timetolive {lease} -w json"),
    step("lock my-lock -- echo inside the lock"),
    // A campaign never ends by itself: it has three seconds to win and say so (stopped, it
    // resigns).
    step("elect my-election candidate-1"),
    step("get x/ --prefix --keys-only"),
    step("endpoint health"),
];

/// What running the session on one system gave: each step's output, masked.
fn run_session(endpoint: &str) -> Vec<String> {
    let base = revision(endpoint);
    let mut lease = String::new();
    let mut outputs = Vec::new();
    for step in SESSION {
        let mut args = step.args.to_string();
        for n in (0..=20).rev() {
            args = args.replace(&format!("{{rev+{n}}}"), &(base + n).to_string());
        }
        args = args.replace("{lease}", &lease);
        let stdin = (0..=20)
            .rev()
            .fold(step.stdin.to_string(), |s, n| s.replace(&format!("{{rev+{n}}}"), &(base + n).to_string()));
        let watching = args.starts_with("watch") || args.starts_with("elect");
        let output = etcdctl(endpoint, &args, &stdin, watching);
        // etcdctl prints lease ids as 16 hex digits, leading zeros included.
        if args.starts_with("lease grant") {
            let granted: Value = serde_json::from_str(&output).expect("lease grant answers JSON");
            lease = format!("{:016x}", granted["ID"].as_i64().expect("an ID"));
        }
        outputs.push(format!("$ etcdctl {}\n{}", step.args, mask(&output, base, &lease)));
    }
    outputs
}

/// The store's revision now.
fn revision(endpoint: &str) -> i64 {
    let out = etcdctl(endpoint, "get revision-probe -w json", "", false);
    let answer: Value = serde_json::from_str(&out).expect("JSON");
    // Absent when 0: etcdctl leaves zero fields out.
    answer["header"]["revision"].as_i64().unwrap_or(0)
}

/// etcdctl's output (standard output, then standard error). A watch or an election never ends
/// by itself: it gets three seconds to print what it has.
fn etcdctl(endpoint: &str, args: &str, stdin: &str, watching: bool) -> String {
    let mut command = Command::new(if watching { "timeout" } else { "etcdctl" });
    if watching {
        command.args(["3", "etcdctl"]);
    }
    let mut child = command
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout=10s"])
        .args(args.split_whitespace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs");
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("etcdctl ends");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// Masks what differs by nature: ids, terms, timings, connections; revisions become relative to `base`.
fn mask(output: &str, base: i64, lease: &str) -> String {
    output
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut json) if json.is_object() => {
                mask_json(&mut json, base);
                json.to_string()
            }
            _ => mask_text(line, base, lease),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mask_json(value: &mut Value, base: i64) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match key.as_str() {
                    "cluster_id" | "member_id" | "raft_term" | "ID" | "id" => *field = Value::from("<id>"),
                    // etcdctl's own log lines: when, and through which connection.
                    "ts" | "target" => *field = Value::from("<masked>"),
                    "revision" | "create_revision" | "mod_revision" | "compact_revision" => {
                        if let Some(n) = field.as_i64().filter(|n| *n > 0) {
                            *field = Value::from(format!("rev+{}", n - base));
                        }
                    }
                    // Seconds left, which tick while the session runs.
                    "TTL" | "ttl" => *field = Value::from("<ttl>"),
                    _ => mask_json(field, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask_json(item, base)),
        _ => {}
    }
}

fn mask_text(line: &str, base: i64, lease: &str) -> String {
    let mut line = line.to_string();
    if let Some(n) = line.strip_prefix("compacted revision ").and_then(|n| n.trim().parse::<i64>().ok()) {
        line = format!("compacted revision rev+{}", n - base);
    }
    if !lease.is_empty() {
        line = line.replace(lease, "<lease>");
    }
    // An election's key ends in its campaign's lease id, in hex without leading zeros.
    if let Some(id) = line.strip_prefix("my-election/") {
        if !id.is_empty() && id.len() <= 16 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            line = "my-election/<lease>".to_string();
        }
    }
    // "... is healthy: successfully committed proposal: took = 2.1ms"
    if let Some(at) = line.find("took = ") {
        line.truncate(at + "took = ".len());
    }
    if let Some(at) = line.find("http://127.0.0.1:") {
        let end = line[at..].find([' ', ',']).map_or(line.len(), |e| at + e);
        line.replace_range(at..end, "<endpoint>");
    }
    line
}

fn wait_until_serving(endpoint: &str) {
    for _ in 0..200 {
        if etcdctl(endpoint, "endpoint health", "", false).contains("is healthy") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{endpoint} never became healthy");
}

/// Whether etcd and etcdctl are both here; says which is missing if not.
fn etcd_installed() -> bool {
    for (program, package) in [("etcdctl", "etcd-client"), ("etcd", "etcd-server")] {
        if !metastore_testkit::available(Path::new(program), "--version")
            && !metastore_testkit::available(Path::new(program), "version")
        {
            eprintln!("SKIPPED: {program} is not installed (apt-get install {package})");
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcdctl_session_answers_as_etcd_answers() {
    if !etcd_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (_etcd, etcd_url) = start_etcd(dir.path()).await;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    // Through a follower: every call must work on every member.
    let follower = cluster.nodes.iter().find(|n| n.id != leader).expect("a follower").client_url();
    let (etcd_url2, follower2) = (etcd_url.clone(), follower.clone());
    tokio::task::spawn_blocking(move || {
        wait_until_serving(&etcd_url2);
        wait_until_serving(&follower2);
        let expected = run_session(&etcd_url2);
        let actual = run_session(&follower2);
        for (etcd, metastore) in expected.iter().zip(&actual) {
            assert!(metastore == etcd, "\n--- metaStore ---\n{metastore}\n--- etcd ---\n{etcd}");
        }
        // Alike, and not alike in failing: the campaign won.
        let won = "$ etcdctl elect my-election candidate-1\nmy-election/<lease>\ncandidate-1";
        assert!(actual.iter().any(|o| o.starts_with(won)), "the election: {actual:#?}");
    })
    .await
    .expect("the session ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_that_needs_a_leader_is_refused_by_a_member_that_has_none() {
    if !metastore_testkit::available(Path::new("etcdctl"), "version") {
        eprintln!("SKIPPED: etcdctl is not installed (apt-get install etcd-client)");
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    // The quorum gone, member 1 is left without a leader once its election timeout passes.
    cluster.kill(2);
    cluster.kill(3);
    let lone = cluster.node(1).client_url();
    tokio::task::spawn_blocking(move || {
        // Each try runs for at most 3 s.
        for _ in 0..20 {
            // etcdctl watches with `hasleader` set, as Kubernetes does.
            let out = etcdctl(&lone, "watch some-key", "", true);
            if out.contains("etcdserver: no leader") {
                return;
            }
            assert!(out.trim().is_empty(), "a watch ended for another reason: {out}");
        }
        panic!("the watch was never refused for want of a leader");
    })
    .await
    .expect("the watch ran");
}

/// The added member's entry in `member add -w json`'s answer, its id masked.
fn added_member(output: &str) -> (u64, Value) {
    let answer: Value = serde_json::from_str(output).unwrap_or_else(|e| panic!("{e}: {output}"));
    let mut member = answer["member"].clone();
    let id = member["ID"].as_u64().unwrap_or_else(|| panic!("an ID: {output}"));
    member["ID"] = Value::from("<id>");
    (id, member)
}

/// The member `id` in `member list -w json`'s answer.
fn listed(endpoint: &str, id: u64) -> Option<Value> {
    let out = etcdctl(endpoint, "member list -w json", "", false);
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    list["members"].as_array()?.iter().find(|m| m["ID"].as_u64() == Some(id)).cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn members_are_added_updated_and_removed_as_etcdctl_does_it() {
    if !etcd_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (_etcd, etcd_url) = start_etcd(dir.path()).await;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).expect("a follower").client_url();
    let (peer, client) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");

    // A learner that is not running yet: added as etcd adds it, listed unstarted (no name).
    let learner_url = format!("http://127.0.0.1:{}", free_port());
    let add_learner = format!("member add learner --peer-urls={learner_url} --learner -w json");
    let (etcd_follower, etcd_add) = (follower.clone(), add_learner.clone());
    let (learner, ours, theirs) = tokio::task::spawn_blocking(move || {
        wait_until_serving(&etcd_url);
        wait_until_serving(&etcd_follower);
        let (_, theirs) = added_member(&etcdctl(&etcd_url, &etcd_add, "", false));
        let (learner, ours) = added_member(&etcdctl(&etcd_follower, &etcd_add, "", false));
        (learner, ours, theirs)
    })
    .await
    .expect("added");
    assert_eq!(ours, theirs, "the added learner as etcd describes it");
    let endpoint = follower.clone();
    let (member, refused) = tokio::task::spawn_blocking(move || {
        let listed_learner = listed(&endpoint, learner).expect("the learner is listed");
        assert_eq!(listed_learner["isLearner"], true, "{listed_learner}");
        assert!(listed_learner.get("name").is_none(), "unstarted: no name yet: {listed_learner}");
        let removed = etcdctl(&endpoint, &format!("member remove {learner:x}"), "", false);
        assert!(removed.contains("removed from cluster"), "{removed}");
        assert!(listed(&endpoint, learner).is_none(), "the learner is gone");

        // A voter: added as a learner, promoted once it has started and caught up.
        let add = format!("member add new --peer-urls={peer_url} -w json");
        let (member, _) = added_member(&etcdctl(&endpoint, &add, "", false));
        let again = etcdctl(&endpoint, &add, "", false);
        assert!(again.contains("etcdserver: Peer URLs already exists"), "{again}");
        let update = etcdctl(
            &endpoint,
            &format!("member update {member:x} --peer-urls=http://127.0.0.1:1"),
            "",
            false,
        );
        (member, update)
    })
    .await
    .expect("changed");
    assert!(refused.contains("never changes"), "a peer URL cannot move: {refused}");
    let args = ["--join", "--member-id", &member.to_string(), "--advertise-peer-url"];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend([format!("http://127.0.0.1:{peer}"), "--port".into(), client.to_string()]);
    cluster.add(member, peer, client, args);
    let endpoint = follower.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let entry = listed(&endpoint, member).expect("the new member is listed");
            // A voter, started (named, its client URL recorded).
            if entry.get("isLearner").is_none() && entry["name"] == format!("member-{member}") {
                assert_eq!(entry["clientURLs"][0], format!("http://127.0.0.1:{client}"), "{entry}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never promoted: {entry}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let removed = etcdctl(&endpoint, &format!("member remove {member:x}"), "", false);
        assert!(removed.contains("removed from cluster"), "{removed}");
        assert!(listed(&endpoint, member).is_none(), "the member is gone");
    })
    .await
    .expect("joined and left");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_saves_a_snapshot_of_any_member_that_starts_a_new_cluster() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).expect("a follower").client_url();
    let file = cluster.path().join("backup.snap");
    let saved_to = file.clone();
    tokio::task::spawn_blocking(move || {
        wait_until_serving(&follower);
        let put = etcdctl(&follower, "put saved-key saved-value", "", false);
        assert_eq!(put.trim(), "OK");
        let saved = etcdctl(&follower, &format!("snapshot save {}", file.display()), "", false);
        assert!(saved.contains(&format!("Snapshot saved at {}", file.display())), "{saved}");
        let bytes = std::fs::read(&file).expect("the snapshot file");
        assert!(bytes.starts_with(b"MSSNAP03"), "metaStore's snapshot format");
        assert!(bytes.windows(9).any(|w| w == b"saved-key"), "the key written before is in it");
        assert!(metastore_client::seal::is_sealed(&bytes), "sealed by its SHA-256");
    })
    .await
    .expect("saved");

    let mut restored = Cluster::empty();
    let (peer, port) = (common::free_port(), common::free_port());
    let args = [
        "--cluster".to_string(),
        format!("http://127.0.0.1:{peer}"),
        "--port".to_string(),
        port.to_string(),
        "--restore-from".to_string(),
        saved_to.display().to_string(),
    ];
    restored.add(1, peer, port, args.to_vec());
    restored.wait_for_leader(Duration::from_secs(30)).await;
    let endpoint = restored.node(1).client_url();
    tokio::task::spawn_blocking(move || {
        wait_until_serving(&endpoint);
        let read = etcdctl(&endpoint, "get saved-key --print-value-only", "", false);
        assert_eq!(read.trim(), "saved-value", "the new cluster holds what the file held");
    })
    .await
    .expect("restored");
}
