//! `GET /v1/watch` on real members, through the client's resuming `Watch`: history replayed
//! then live changes, whole transactions, previous values, compaction, and a watch that
//! survives its member's restart, a leader's death and a snapshot install with no gap and no
//! duplicate.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use metastore_client::{
    Client, EventKind, TxnOp, TxnRequest, Watch, WatchEvent, WatchRequest, WatchResponse,
};

async fn started(members: usize, extra: &[&str]) -> (Cluster, Client) {
    let cluster = Cluster::start(members, extra);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(leader).client();
    eventually(Duration::from_secs(10), || client.put("warmup", b"x".to_vec(), None)).await;
    (cluster, client)
}

async fn line(watch: &mut Watch) -> WatchResponse {
    let next = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("a line in time");
    next.expect("the watch goes on").expect("a line")
}

/// Events until `count` have come (progress lines skipped), each line's revision checked to
/// cover its events.
async fn events(watch: &mut Watch, count: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let line = line(watch).await;
        assert!(!line.canceled, "{line:?}");
        assert!(line.events.iter().all(|e| e.kv.mod_revision <= line.revision), "{line:?}");
        events.extend(line.events);
    }
    events
}

fn keys_and_revisions(events: &[WatchEvent]) -> Vec<(String, u64)> {
    events.iter().map(|e| (String::from_utf8_lossy(&e.kv.key).into_owned(), e.kv.mod_revision)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_replays_history_then_streams_changes_with_a_transaction_in_one_line() {
    let (_cluster, client) = started(1, &[]).await;
    let first = client.put("app/a", b"1".to_vec(), None).await.expect("put").revision;
    client.put("elsewhere", b"1".to_vec(), None).await.expect("put");

    let mut watch =
        client.watch(WatchRequest { start_revision: first, prev_kv: true, ..WatchRequest::prefix("app/") });
    assert!(line(&mut watch).await.created);
    let replayed = events(&mut watch, 1).await;
    assert_eq!(
        keys_and_revisions(&replayed),
        [("app/a".to_string(), first)],
        "history: the key outside is not watched"
    );

    let txn = TxnRequest {
        success: vec![TxnOp::put("app/a", "2"), TxnOp::put("app/b", "1")],
        ..Default::default()
    };
    let done = client.txn(&txn).await.expect("txn");
    let together = line(&mut watch).await;
    assert_eq!(together.events.len(), 2, "a transaction's changes come in one line: {together:?}");
    assert!(together.events.iter().all(|e| e.kv.mod_revision == done.revision));
    assert_eq!(together.events[0].prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()));

    let deleted = client.delete("app/b", None).await.expect("delete").revision;
    let delete = events(&mut watch, 1).await;
    assert_eq!((delete[0].kind, delete[0].kv.mod_revision), (EventKind::Delete, deleted));
    assert_eq!(delete[0].prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_below_the_compaction_revision_is_cancelled_with_it() {
    let (_cluster, client) = started(1, &[]).await;
    for i in 0..5 {
        client.put("c/k", i.to_string().into_bytes(), None).await.expect("put");
    }
    let compacted = client.put("c/k", b"last".to_vec(), None).await.expect("put").revision;
    client.compact(compacted).await.expect("compact");
    let mut watch = client.watch(WatchRequest { start_revision: 2, ..WatchRequest::prefix("c/") });
    assert!(line(&mut watch).await.created);
    let cancelled = line(&mut watch).await;
    assert!(cancelled.canceled, "{cancelled:?}");
    assert_eq!(cancelled.compact_revision, compacted);
    assert!(tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("ends").is_none());

    let mut from_there =
        client.watch(WatchRequest { start_revision: compacted, ..WatchRequest::prefix("c/") });
    assert!(line(&mut from_there).await.created);
    assert_eq!(
        events(&mut from_there, 1).await[0].kv.value,
        b"last",
        "from the compaction revision on all is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_watches_are_refused_with_a_clear_error() {
    let (cluster, _client) = started(1, &[]).await;
    let url = |query: &str| format!("{}/v1/watch?{query}", cluster.node(1).client_url());
    for (query, status) in [
        ("", 400),
        ("key=a&prefix=b", 400),
        ("prefix=a&range_end=b", 400),
        ("key=a&start_revision=x", 400),
        ("key=a&prev_kv=maybe", 400),
        ("key=a&nope=1", 400),
    ] {
        let answer = metastore_client::tls::default_http().get(url(query)).send().await.expect("answered");
        assert_eq!(answer.status().as_u16(), status, "{query}");
    }
}

/// Writes `count` keys under `prefix` through whichever member answers, and returns the
/// revisions of those acknowledged.
async fn write_through_any(cluster: &Cluster, prefix: &str, count: usize) -> Vec<u64> {
    let mut revisions = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i:04}");
        let written = eventually(Duration::from_secs(20), || async {
            for node in cluster.running() {
                if let Ok(put) = node.client().put(&key, b"v".to_vec(), None).await {
                    return Ok(put.revision);
                }
            }
            Err("no member took the write")
        })
        .await;
        revisions.push(written);
    }
    revisions
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_survives_its_members_stop_and_kill_and_the_leaders_death_with_no_gap_or_duplicate() {
    let (mut cluster, _) = started(3, &[]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let watched = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut watch = cluster.node(watched).client().watch(WatchRequest::prefix("w/"));
    assert!(line(&mut watch).await.created);

    let mut written = write_through_any(&cluster, "w/a", 20).await;
    cluster.stop(watched);
    cluster.restart(watched);
    written.extend(write_through_any(&cluster, "w/b", 20).await);
    cluster.kill(watched);
    cluster.restart(watched);
    written.extend(write_through_any(&cluster, "w/c", 20).await);
    cluster.kill(leader);
    written.extend(write_through_any(&cluster, "w/d", 20).await);

    let seen: Vec<u64> = events(&mut watch, written.len()).await.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(seen, written, "every acknowledged write once, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_replays_across_a_snapshot_its_member_installed() {
    let (mut cluster, _) = started(3, &["--snapshot-entries", "20"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut watch = cluster.node(lagging).client().watch(WatchRequest::prefix("s/"));
    assert!(line(&mut watch).await.created);
    let mut written = write_through_any(&cluster, "s/before", 5).await;
    assert_eq!(events(&mut watch, 5).await.len(), 5);

    // Down while the leader purges its log behind snapshots: it can only catch up from one.
    cluster.kill(lagging);
    written.extend(write_through_any(&cluster, "s/during", 60).await);
    let leader_client = cluster.node(leader).client();
    eventually(Duration::from_secs(20), || async {
        let status = leader_client.cluster().await.map_err(|e| e.to_string())?;
        match status.purged_index {
            Some(purged) if purged > 40 => Ok(()),
            other => Err(format!("the leader purged up to {other:?}")),
        }
    })
    .await;
    cluster.restart(lagging);
    written.extend(write_through_any(&cluster, "s/after", 5).await);

    let seen: Vec<u64> =
        events(&mut watch, written.len() - 5).await.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(seen, written[5..], "the snapshot's history replayed: no gap, no duplicate");
    assert!(
        cluster.log_of(lagging).contains("installed snapshot"),
        "member {lagging} caught up from a snapshot"
    );
}
