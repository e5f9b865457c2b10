//! Cluster behaviour with real processes: failover, minority loss, catch-up through a snapshot,
//! growing and shrinking under load, and refusing to re-initialize.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{add_member, eventually, Cluster};
use metastore_client::{AddMemberRequest, Client, ClientError, Consistency, MemberRole, RangeRequest};

const ELECTION: Duration = Duration::from_secs(30);

async fn put(client: &Client, key: &str, value: &str) -> Result<u64, ClientError> {
    client.put(key, value.as_bytes().to_vec(), None).await.map(|r| r.revision)
}

async fn value_of(client: &Client, key: &str, consistency: Consistency) -> Option<String> {
    let kv = client.get(key, consistency).await.ok()??;
    String::from_utf8(kv.value).ok()
}

/// Waits until the member's own copy (a stale read) holds `key = expected`.
async fn caught_up(client: &Client, key: &str, expected: &str, timeout: Duration) {
    eventually(timeout, || async {
        match value_of(client, key, Consistency::Stale).await {
            Some(v) if v == expected => Ok(()),
            other => Err(format!("{} has {key} = {other:?}", client.base_url())),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_a_new_one_and_writes_resume() {
    let mut cluster = Cluster::start(3, &[]);
    let old = cluster.wait_for_leader(ELECTION).await;
    let any = cluster.node(old).client();
    eventually(Duration::from_secs(10), || put(&any, "before", "1")).await;

    cluster.kill(old);
    let new = cluster.wait_for_leader(ELECTION).await;
    assert_ne!(new, old, "a surviving member leads");
    let survivor = cluster.running().next().expect("a survivor").client();
    eventually(Duration::from_secs(10), || put(&survivor, "after", "2")).await;
    for node in cluster.running() {
        assert_eq!(value_of(&node.client(), "before", Consistency::Linearizable).await.as_deref(), Some("1"));
        assert_eq!(value_of(&node.client(), "after", Consistency::Linearizable).await.as_deref(), Some("2"));
    }

    // The old leader comes back as a follower and catches up.
    cluster.restart(old);
    let back = cluster.node(old).client();
    caught_up(&back, "after", "2", Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_one_member_of_three_down_writes_continue_and_it_catches_up() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(follower);

    let client = cluster.node(leader).client();
    for i in 0..20 {
        let (key, value) = (format!("k{i}"), i.to_string());
        eventually(Duration::from_secs(10), || put(&client, &key, &value)).await;
    }
    cluster.restart(follower);
    let back = cluster.node(follower).client();
    caught_up(&back, "k19", "19", Duration::from_secs(20)).await;
}

/// Waits until member `id` reports a snapshot. Its data shows before openraft's metrics do: the
/// install writes the store, and openraft records the snapshot once the install returns.
async fn installed_a_snapshot(cluster: &Cluster, id: u64) {
    eventually(Duration::from_secs(10), || async {
        let status = cluster.status(id).await;
        match status.snapshot_index {
            Some(_) => Ok(()),
            None => Err(format!("member {id} reports no snapshot: {status:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_fell_behind_a_purged_log_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-entries", "20"]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(lagging);

    let client = cluster.node(leader).client();
    for i in 0..150 {
        let (key, value) = (format!("key-{i:03}"), format!("v{i}"));
        eventually(Duration::from_secs(10), || put(&client, &key, &value)).await;
    }
    let purged = eventually(Duration::from_secs(20), || async {
        let status = cluster.status(leader).await;
        match status.purged_index {
            Some(p) if p > 20 => Ok(p),
            other => Err(format!("leader has purged up to {other:?}")),
        }
    })
    .await;
    assert!(purged > 20, "the leader purged its log behind a snapshot");

    cluster.restart(lagging);
    let back = cluster.node(lagging).client();
    caught_up(&back, "key-149", "v149", Duration::from_secs(30)).await;
    installed_a_snapshot(&cluster, lagging).await;
    for i in [0, 75, 149] {
        assert_eq!(
            value_of(&back, &format!("key-{i:03}"), Consistency::Stale).await,
            Some(format!("v{i}")),
            "key-{i:03} on member {lagging}"
        );
    }
    // The snapshot carried the revisions: the member that installed it holds every key with
    // the leader's metadata, and the next write gets the same revision on both.
    let next = put(&client, "after-snapshot", "x").await.expect("put");
    caught_up(&back, "after-snapshot", "x", Duration::from_secs(30)).await;
    let listing = |node: Client| async move {
        let request =
            RangeRequest { consistency: Consistency::Stale, limit: Some(1_000), ..Default::default() };
        node.range(&request).await.expect("range")
    };
    let (on_leader, on_lagging) = (listing(client.clone()).await, listing(back.clone()).await);
    assert_eq!(on_lagging.kvs, on_leader.kvs, "keys with their revisions and versions");
    assert_eq!((on_lagging.revision, on_leader.revision), (next, next));
    assert!(
        next >= 152,
        "the empty store at 1, a revision per write: 150 keys, then this one (retried ones may add): {next}"
    );
    // It carried the history too: the store as it was before most of the keys were written.
    let early = |node: Client| async move {
        let request = RangeRequest {
            consistency: Consistency::Stale,
            limit: Some(1_000),
            revision: Some(10),
            ..Default::default()
        };
        node.range(&request).await.expect("range at revision 10")
    };
    let (on_leader, on_lagging) = (early(client.clone()).await, early(back.clone()).await);
    assert_eq!(on_lagging.kvs, on_leader.kvs, "the same history on both");
    assert!(
        !on_leader.kvs.is_empty() && on_leader.kvs.len() < 150,
        "{} keys at revision 10",
        on_leader.kvs.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_larger_than_one_piece_reaches_a_lagging_member_whole() {
    let mut cluster = Cluster::start(3, &["--snapshot-entries", "20"]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(lagging);

    // About 10 MiB of state: the snapshot travels in three pieces of 4 MiB.
    let client = cluster.node(leader).client();
    let value = |i: usize| format!("{i:06}").repeat(256 * 1024 / 6);
    for i in 0..40 {
        let (key, value) = (format!("big-{i:02}"), value(i));
        eventually(Duration::from_secs(10), || put(&client, &key, &value)).await;
    }
    eventually(Duration::from_secs(20), || async {
        match cluster.status(leader).await.purged_index {
            Some(p) if p > 20 => Ok(()),
            other => Err(format!("leader has purged up to {other:?}")),
        }
    })
    .await;

    cluster.restart(lagging);
    let back = cluster.node(lagging).client();
    caught_up(&back, "big-39", &value(39), Duration::from_secs(30)).await;
    installed_a_snapshot(&cluster, lagging).await;
    for i in [0, 17, 39] {
        let key = format!("big-{i:02}");
        assert_eq!(
            value_of(&back, &key, Consistency::Stale).await,
            Some(value(i)),
            "{key} on member {lagging}"
        );
    }
}

/// Writes distinct keys in a loop through every member in turn, recording each acknowledged one.
async fn writer(clients: Vec<Client>, stop: Arc<AtomicBool>) -> BTreeMap<String, String> {
    let mut acknowledged = BTreeMap::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w-{i:06}");
        let value = format!("value-{i}");
        let client = &clients[i as usize % clients.len()];
        if client.put(&key, value.as_bytes().to_vec(), None).await.is_ok() {
            acknowledged.insert(key, value);
        }
        i += 1;
    }
    acknowledged
}

async fn voters_and_learners(client: &Client) -> (Vec<u64>, Vec<u64>) {
    let status = client.cluster().await.expect("status");
    let pick = |role| status.members.iter().filter(|m| m.role == role).map(|m| m.id).collect();
    (pick(MemberRole::Voter), pick(MemberRole::Learner))
}

#[tokio::test(flavor = "multi_thread")]
async fn growing_to_five_and_shrinking_to_three_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(ELECTION).await;
    let admin = cluster.node(1).client();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(writer((1..=3).map(|id| cluster.node(id).client()).collect(), stop.clone()));

    for id in [4, 5] {
        cluster.add_joining(id, &[]);
        let joining = cluster.node(id).client();
        eventually(Duration::from_secs(10), || joining.cluster()).await;
        assert!(
            !joining.ready().await.expect("readyz answers"),
            "a joining member is not ready before it is added"
        );
        add_member(&admin, &cluster, id).await;
    }
    assert_eq!(voters_and_learners(&admin).await, (vec![1, 2, 3, 4, 5], vec![]));

    for id in [5, 4] {
        eventually(Duration::from_secs(30), || admin.remove_member(id)).await;
        cluster.stop(id);
    }
    assert_eq!(voters_and_learners(&admin).await, (vec![1, 2, 3], vec![]));

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writers.await.expect("writer");
    assert!(acknowledged.len() > 20, "the writer made progress: {} writes", acknowledged.len());
    for id in 1..=3 {
        let client = cluster.node(id).client();
        let page = client
            .range(&metastore_client::RangeRequest {
                prefix: Some("w-".into()),
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .expect("range");
        let stored: BTreeMap<String, String> =
            page.kvs.into_iter().map(|kv| (utf8(kv.key), utf8(kv.value))).collect();
        for (key, value) in &acknowledged {
            assert_eq!(stored.get(key), Some(value), "acknowledged {key} on member {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_with_data_never_reinitializes_whatever_its_flags() {
    let mut cluster = Cluster::start(1, &[]);
    cluster.wait_for_leader(ELECTION).await;
    let client = cluster.node(1).client();
    eventually(Duration::from_secs(10), || put(&client, "kept", "yes")).await;
    cluster.stop(1);

    // Restarted as if it were the first of a new three-member cluster.
    let node = cluster.node(1);
    let other_peers = format!(
        "{},http://127.0.0.1:{},http://127.0.0.1:{}",
        node.peer_url(),
        common::free_port(),
        common::free_port()
    );
    let args = vec![
        "--member-id".to_string(),
        "1".to_string(),
        "--cluster".to_string(),
        other_peers,
        "--port".to_string(),
        node.client_port.to_string(),
    ];
    cluster.restart_with(1, args);
    cluster.wait_for_leader(ELECTION).await;
    let status = cluster.status(1).await;
    assert_eq!(status.members.len(), 1, "the membership is the stored one: {status:?}");
    assert_eq!(value_of(&client, "kept", Consistency::Linearizable).await.as_deref(), Some("yes"));
    let again = client.init(vec![]).await.expect_err("init on a member with data is refused");
    assert_eq!(again.status(), Some(409));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_lost_its_data_is_refused_until_it_is_removed_and_added_anew() {
    let mut cluster = Cluster::empty();
    for id in 1..=3 {
        cluster.add_joining(id, &[]);
    }
    let admin = cluster.node(1).client();
    eventually(Duration::from_secs(10), || admin.init(vec![])).await;
    for id in [2, 3] {
        add_member(&admin, &cluster, id).await;
    }
    eventually(Duration::from_secs(10), || put(&admin, "before", "1")).await;

    // Member 3 comes back on an empty data directory: a new incarnation without its votes.
    cluster.kill(3);
    std::fs::remove_dir_all(cluster.data_dir_of(3)).expect("wipe member 3");
    cluster.restart(3);
    let wiped = cluster.node(3).client();
    eventually(Duration::from_secs(10), || wiped.cluster()).await;
    eventually(Duration::from_secs(10), || put(&admin, "during", "2")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = wiped.cluster().await.expect("status");
    assert!(!status.initialized, "the leader must not replicate to a wiped member: {status:?}");
    assert_eq!(value_of(&wiped, "before", Consistency::Stale).await, None);

    // Re-adding it as it is now, without removing it first, is refused.
    let node = cluster.node(3);
    let request = AddMemberRequest {
        id: 3,
        peer_url: node.peer_url(),
        client_url: node.client_url(),
        incarnation: status.incarnation.clone(),
    };
    assert_eq!(admin.add_learner(&request).await.expect_err("a different member 3").status(), Some(409));

    // Removed and added anew, it catches up as a new incarnation.
    eventually(Duration::from_secs(30), || admin.remove_member(3)).await;
    add_member(&admin, &cluster, 3).await;
    caught_up(&wiped, "during", "2", Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_that_lost_its_data_is_refused_by_its_peers() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let admin = cluster.node(leader).client();
    // Every member has published its incarnation.
    eventually(Duration::from_secs(10), || async {
        let members = admin.cluster().await.map_err(|e| e.to_string())?.members;
        if members.iter().all(|m| !m.incarnation.is_empty()) {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    eventually(Duration::from_secs(10), || put(&admin, "before", "1")).await;

    // A follower restarts on an empty data directory with its static flags: it initializes
    // anew, but its peers no longer talk to it, so it never learns the data (or takes part).
    let wiped = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped)).expect("wipe");
    cluster.restart(wiped);
    let client = cluster.node(wiped).client();
    eventually(Duration::from_secs(10), || client.cluster()).await;
    eventually(Duration::from_secs(10), || put(&admin, "during", "2")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(value_of(&client, "before", Consistency::Stale).await, None);
    assert_eq!(value_of(&client, "during", Consistency::Stale).await, None);
    assert_eq!(value_of(&admin, "during", Consistency::Linearizable).await.as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_peer_token_a_stray_process_cannot_campaign_or_append() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let cluster = Cluster::start(3, &["--peer-token", TOKEN]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster.node(leader).client();
    put(&client, "before", "1").await.expect("members with the token replicate");
    let term = cluster.status(leader).await.term;

    // A vote request from a candidate with a far higher term: what a stray member would send.
    let candidate = openraft::Vote::new(term + 100, 9);
    let request: openraft::raft::VoteRequest<metastore_node::types::TypeConfig> =
        openraft::raft::VoteRequest::new(candidate, None);
    let frame = metastore_node::network::wire::encode(&request).expect("frame");
    let http = metastore_client::tls::default_http();
    for node in cluster.running() {
        let url = format!("{}/raft/vote", node.peer_url());
        for authorization in [None, Some("Bearer ffffffffffffffffffffffffffffffff")] {
            let mut call = http.post(&url).body(frame.clone());
            if let Some(header) = authorization {
                call = call.header("authorization", header);
            }
            let answer = call.send().await.expect("an answer");
            assert_eq!(answer.status(), 401, "member {} with {authorization:?}", node.id);
        }
    }
    assert_eq!(cluster.status(leader).await.term, term, "nobody took the stray vote request seriously");
    put(&client, "after", "2").await.expect("writes go on under the same leader");

    // The same request with the cluster's token is answered: the refusal was the token's doing.
    let url = format!("{}/raft/vote", cluster.node(leader).peer_url());
    let answer = http.post(&url).header("authorization", format!("Bearer {TOKEN}")).body(frame).send().await;
    assert_eq!(answer.expect("an answer").status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_peer_token_only_its_holders_change_the_membership() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let mut cluster = Cluster::empty();
    for id in 1..=2 {
        cluster.add_joining(id, &["--peer-token", TOKEN]);
    }
    let anyone = cluster.node(1).client();
    eventually(Duration::from_secs(10), || anyone.cluster()).await;
    assert_eq!(anyone.init(vec![]).await.expect_err("no token").status(), Some(401));
    let admin = cluster.node(1).client().with_token(TOKEN);
    eventually(Duration::from_secs(10), || admin.init(vec![])).await;

    // A stray process asks to be added at its own address: the leader would send it the log
    // and the token. Refused, whoever answers; the status stays open to read.
    let stray = AddMemberRequest {
        id: 9,
        peer_url: "http://127.0.0.1:9".into(),
        client_url: String::new(),
        incarnation: String::new(),
    };
    assert_eq!(anyone.add_learner(&stray).await.expect_err("no token").status(), Some(401));
    let wrong = cluster.node(1).client().with_token("ffffffffffffffffffffffffffffffff");
    assert_eq!(wrong.add_learner(&stray).await.expect_err("wrong token").status(), Some(401));
    assert_eq!(anyone.promote(9).await.expect_err("no token").status(), Some(401));
    let garbled = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text is allowed");
    let url = format!("{}/v1/cluster/members/9/promote", cluster.node(1).client_url());
    let answer = metastore_client::tls::default_http()
        .post(url)
        .header("authorization", garbled)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 401, "a header that is not text is no token, not another route");

    add_member(&admin, &cluster, 2).await;
    assert_eq!(anyone.remove_member(2).await.expect_err("no token").status(), Some(401));
    let members = anyone.cluster().await.expect("status is open").members;
    assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
}

async fn metrics_of(node: &common::Node) -> String {
    let answer = metastore_client::tls::default_http()
        .get(format!("{}/metrics", node.client_url()))
        .send()
        .await
        .expect("metrics");
    answer.text().await.expect("metrics text")
}

/// The total of the counters in a member's `/metrics` whose line starts with `prefix`.
async fn counter(node: &common::Node, prefix: &str) -> f64 {
    let text = metrics_of(node).await;
    let values = text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next());
    values.filter_map(|v| v.parse::<f64>().ok()).sum()
}

/// The sum and count of a histogram in a member's `/metrics`.
async fn histogram(node: &common::Node, name: &str) -> (f64, f64) {
    let text = metrics_of(node).await;
    let value = |suffix: &str| {
        let line = text.lines().find(|l| l.starts_with(&format!("{name}_{suffix} "))).expect("the metric");
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number")
    };
    (value("sum"), value("count"))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_share_raft_entries_requests_and_read_indexes_and_lose_no_update() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster.node(leader).client();
    eventually(Duration::from_secs(10), || put(&client, "counter", "0")).await;

    // 24 clients spread over the members each add 1 to a counter 10 times, by compare-and-swap
    // on the revision they read, retrying when another got there first; between increments
    // they overwrite one of four hot keys. Every write must replace a state older than itself:
    // two writes to one key sharing an entry's revision would hand the second a "previous"
    // state at its own revision, which a compare-and-swap could then wrongly match.
    let mut writers = Vec::new();
    for n in 0..24u64 {
        let client = cluster.node(n % 3 + 1).client();
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let Ok(Some(current)) = client.get("counter", Consistency::Linearizable).await else {
                    continue;
                };
                let next =
                    String::from_utf8(current.value).expect("utf-8").parse::<u64>().expect("a number") + 1;
                let precondition = Some(metastore_client::Precondition::ModRevision(current.mod_revision));
                if client.put("counter", next.to_string().into_bytes(), precondition).await.is_ok() {
                    done += 1;
                }
                let hot = format!("hot-{}", (n + done) % 4);
                if let Ok(written) = client.put(&hot, n.to_string().into_bytes(), None).await {
                    let replaced = written.prev_kv.map_or(0, |prev| prev.mod_revision);
                    assert!(
                        replaced < written.revision,
                        "{hot} at {} replaced a state at {replaced}",
                        written.revision
                    );
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(value_of(&client, "counter", Consistency::Linearizable).await.as_deref(), Some("240"));

    let (writes, entries) = histogram(cluster.node(leader), "metastore_proposal_writes").await;
    assert!(writes > entries, "group commit put several writes in some entries ({writes} in {entries})");
    for node in cluster.running().filter(|n| n.id != leader) {
        let forwarded = counter(node, "metastore_forwarded_requests_total{route=\"write\"}").await;
        let written = counter(node, "metastore_http_requests_total{route=\"kv\",method=\"PUT\"").await;
        assert!(forwarded < written, "member {} sent {written} writes in {forwarded} requests", node.id);
    }
    let mut shared = (0.0, 0.0);
    for node in cluster.running() {
        let (reads, indexes) = histogram(node, "metastore_read_index_reads").await;
        shared = (shared.0 + reads, shared.1 + indexes);
    }
    assert!(
        shared.0 > shared.1,
        "concurrent reads shared read indexes ({} reads, {} indexes)",
        shared.0,
        shared.1
    );
}

fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(sent.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_forwarded_to_a_leader_that_stopped_answering_goes_to_the_next_leader() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.running().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let client = cluster.node(follower).client();
    eventually(Duration::from_secs(10), || put(&client, "k", "v")).await;
    // The follower now holds a kept-alive connection to the leader. Stopped, the leader still
    // takes requests on it (the kernel buffers them) but never answers.
    assert_eq!(value_of(&client, "k", Consistency::Linearizable).await.as_deref(), Some("v"));
    let pid = cluster.node(leader).pid().expect("running");
    signal(pid, "-STOP");
    // Answered by way of the leader the others elect, well inside the request's deadline,
    // instead of waiting it out on the stopped one.
    let read = client.get("k", Consistency::Linearizable).await;
    signal(pid, "-CONT");
    let read = read.expect("the read is answered once a new leader is known");
    assert_eq!(read.map(|kv| kv.value), Some(b"v".to_vec()));
}

/// A follower promises its leader to vote for no one else for a while after it last heard from
/// it, and the leader's read lease rests on that promise; a restart must not break it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_member_refuses_votes_until_its_promise_to_the_leader_runs_out() {
    let (mut cluster, leader, term) = with_a_slow_election().await;

    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let candidate = (1..=3).find(|id| *id != leader && *id != follower).expect("another follower");
    cluster.kill(follower);
    cluster.restart(follower);
    let request: openraft::raft::VoteRequest<metastore_node::types::TypeConfig> =
        openraft::raft::VoteRequest::new(openraft::Vote::new(term + 1, candidate), None);
    let frame = metastore_node::network::wire::encode(&request).expect("frame");
    let url = format!("{}/raft/vote", cluster.node(follower).peer_url());
    let http = metastore_client::tls::default_http();
    let vote = || http.post(&url).body(frame.clone()).send();

    let refused = eventually(Duration::from_secs(5), vote).await;
    assert_eq!(refused.status(), 503, "a vote request right after the restart is refused");
    let body = refused.text().await.expect("body");
    assert!(body.contains("restarted recently"), "{body}");

    // Once the promise has run out, the request reaches raft, which judges it on its merits.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let answered = vote().await.expect("an answer");
    assert_eq!(answered.status(), 200, "{}", answered.text().await.unwrap_or_default());
}

/// Nor does a restarted member campaign within that promise: its vote for itself would break it
/// as surely as a vote for another.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_member_does_not_campaign_until_its_promise_runs_out() {
    let (mut cluster, leader, term) = with_a_slow_election().await;

    // With its leader gone as well, nothing but the promise keeps the member from campaigning.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(leader);
    cluster.kill(follower);
    cluster.restart(follower);
    let restarted = std::time::Instant::now();
    let member = cluster.node(follower).client();
    eventually(Duration::from_secs(5), || member.cluster()).await;
    let held = restarted + Duration::from_millis(5_500);
    while std::time::Instant::now() < held {
        let status = member.cluster().await.expect("status");
        assert_eq!(
            status.term,
            term,
            "member {follower} campaigned {:?} after it restarted",
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three members whose election timeout (4 s; campaigns 4–6 s after a member last heard from a
/// leader) stretches a follower's promise to its leader (1.5 times it: 6 s) to a testable
/// length, with a write committed; returns the leader and its term.
async fn with_a_slow_election() -> (Cluster, u64, u64) {
    let cluster = Cluster::start(3, &["--election-timeout-ms", "4000"]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster.node(leader).client();
    eventually(Duration::from_secs(10), || put(&client, "k", "v")).await;
    let term = cluster.status(leader).await.term;
    (cluster, leader, term)
}

fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_hands_leadership_to_a_voter_its_token_holders_name() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let cluster = Cluster::start(3, &["--peer-token", TOKEN]);
    let leader = cluster.wait_for_leader(ELECTION).await;
    let status = cluster.status(leader).await;
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"), "each member reports its release");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let admin = |id| cluster.node(id).client().with_token(TOKEN);

    let refused = cluster.node(leader).client().transfer_leadership(follower).await.expect_err("no token");
    assert_eq!(refused.status(), Some(401));
    let refused = admin(follower).transfer_leadership(leader).await.expect_err("asked of a follower");
    assert_eq!(refused.status(), Some(409), "{refused}");
    let refused = admin(leader).transfer_leadership(9).await.expect_err("no such voter");
    assert_eq!(refused.status(), Some(400), "{refused}");
    let refused = admin(leader).transfer_leadership(leader).await.expect_err("itself");
    assert_eq!(refused.status(), Some(400), "{refused}");

    let written = put(&cluster.node(leader).client(), "before", "handover").await.expect("put");
    let answer = admin(leader).transfer_leadership(follower).await.expect("handed over");
    assert_eq!(answer.leader_id, follower);
    assert_eq!(cluster.wait_for_leader(ELECTION).await, follower, "every member follows the new leader");
    let read = cluster.node(follower).client().get("before", Consistency::Linearizable).await.expect("get");
    assert_eq!(read.map(|kv| kv.mod_revision), Some(written), "nothing lost in the handover");
    put(&cluster.node(leader).client(), "after", "handover")
        .await
        .expect("writes go on through the old leader");
}
