//! The client API on a real single-member store: revisions, compare-and-swap, ranges, errors.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use metastore_client::{Client, Consistency, Precondition, RangeRequest, MAX_KEY_BYTES, MAX_VALUE_BYTES};

async fn single() -> (Cluster, Client) {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(1).client();
    eventually(Duration::from_secs(10), || client.put("warmup", b"x".to_vec(), None)).await;
    (cluster, client)
}

fn url(cluster: &Cluster, path: &str) -> String {
    format!("{}{path}", cluster.node(1).client_url())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_carry_revisions_and_versions() {
    let (_cluster, client) = single().await;
    let first = client.put("a", b"1".to_vec(), None).await.expect("put");
    assert_eq!(first.prev_kv, None);
    let second = client.put("a", b"2".to_vec(), None).await.expect("put");
    assert!(second.revision > first.revision, "revisions grow");
    assert_eq!(second.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()));
    let kv = client.get("a", Consistency::Linearizable).await.expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (first.revision, second.revision, 2));
    assert_eq!(kv.value, b"2");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_revision_rises_by_one_per_change_and_not_for_a_write_that_changes_nothing() {
    let (cluster, client) = single().await;
    let a = client.put("rev/a", b"1".to_vec(), None).await.expect("put").revision;
    let b = client.put("rev/b", b"1".to_vec(), None).await.expect("put").revision;
    assert_eq!(b, a + 1, "one write, one revision");
    let failed = client.put("rev/a", b"2".to_vec(), Some(Precondition::Absent)).await.expect_err("exists");
    assert_eq!(failed.status(), Some(409));
    let nothing = client.delete("rev/none", None).await.expect("delete of nothing");
    assert_eq!((nothing.deleted, nothing.revision), (false, b), "deleting nothing keeps the revision");
    let deleted = client.delete("rev/a", None).await.expect("delete");
    assert_eq!(deleted.revision, b + 1);
    let again = client.put("rev/a", b"3".to_vec(), None).await.expect("put").revision;
    let kv = client.get("rev/a", Consistency::Linearizable).await.expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (again, again, 1), "recreated");

    // Reads report the revision they were served at, a missing key's 404 too.
    let answer = metastore_client::tls::default_http()
        .get(url(&cluster, "/v1/kv/rev/absent"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status().as_u16(), 404);
    assert_eq!(answer.headers()["x-metastore-revision"], again.to_string().as_str());
    let listing = client.range(&RangeRequest { prefix: Some("rev/".into()), ..Default::default() }).await;
    assert_eq!(listing.expect("range").revision, again);
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_at_a_past_revision_see_the_store_as_it_was_then() {
    let (cluster, client) = single().await;
    let first = client.put("hist/a", b"1".to_vec(), None).await.expect("put").revision;
    let second = client.put("hist/a", b"2".to_vec(), None).await.expect("put").revision;
    let deleted = client.delete("hist/a", None).await.expect("delete").revision;
    client.put("hist/b", b"1".to_vec(), None).await.expect("put");

    let at = |rev| client.get_at("hist/a", Consistency::Linearizable, Some(rev));
    assert_eq!(at(first).await.expect("get").map(|kv| kv.value), Some(b"1".to_vec()));
    let then = at(second).await.expect("get").expect("present at its second revision");
    assert_eq!((then.value.as_slice(), then.mod_revision, then.version), (&b"2"[..], second, 2));
    assert_eq!(at(deleted).await.expect("get"), None, "deleted then");
    let listed = |revision| {
        let client = client.clone();
        async move {
            client.range(&RangeRequest { prefix: Some("hist/".into()), revision, ..Default::default() }).await
        }
    };
    let keys = |page: metastore_client::RangeResponse| -> Vec<Vec<u8>> {
        page.kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(keys(listed(Some(second)).await.expect("range")), [b"hist/a".to_vec()]);
    assert_eq!(keys(listed(None).await.expect("range")), [b"hist/b".to_vec()]);

    // A revision beyond the store's is refused, naming both.
    let current = client.put("hist/c", b"1".to_vec(), None).await.expect("put").revision;
    let future = at(current + 10).await.expect_err("a future revision");
    let metastore_client::ClientError::Api(refused) = future else { panic!("{future}") };
    assert_eq!((refused.status, refused.code()), (400, &metastore_client::ErrorCode::FutureRevision));
    let message = &refused.body.message;
    assert!(
        message.contains(&(current + 10).to_string()) && message.contains(&current.to_string()),
        "{message}"
    );
    let bad = metastore_client::tls::default_http()
        .get(url(&cluster, "/v1/kv/hist/a?revision=-1"))
        .send()
        .await
        .expect("answered");
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compaction_forgets_history_below_it_and_keeps_the_state_at_it() {
    let (_cluster, client) = single().await;
    let first = client.put("cmp/a", b"1".to_vec(), None).await.expect("put").revision;
    let second = client.put("cmp/a", b"2".to_vec(), None).await.expect("put").revision;
    let current = client.put("cmp/b", b"1".to_vec(), None).await.expect("put").revision;

    let code = |e: metastore_client::ClientError| match e {
        metastore_client::ClientError::Api(e) => (e.status, e.code().clone()),
        other => panic!("{other}"),
    };
    use metastore_client::ErrorCode;
    let future = client.compact(current + 1).await.expect_err("a future revision");
    assert_eq!(code(future), (400, ErrorCode::FutureRevision));
    assert_eq!(client.compact(second).await.expect("compact").compacted, second);
    let again = client.compact(second).await.expect_err("compacted already");
    assert_eq!(code(again), (410, ErrorCode::Compacted));

    let gone = client.get_at("cmp/a", Consistency::Linearizable, Some(first)).await.expect_err("gone");
    assert_eq!(code(gone), (410, ErrorCode::Compacted));
    let kept = client.get_at("cmp/a", Consistency::Linearizable, Some(second)).await.expect("read");
    assert_eq!(kept.map(|kv| kv.value), Some(b"2".to_vec()), "the state at the compaction revision stays");
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_mode_auto_compaction_keeps_the_last_revisions_only() {
    let cluster =
        Cluster::start(1, &["--auto-compaction-mode", "revision", "--auto-compaction-retention", "5"]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(1).client();
    let mut last = 0;
    for i in 0..20 {
        last =
            eventually(Duration::from_secs(10), || client.put("auto/a", format!("{i}").into_bytes(), None))
                .await
                .revision;
    }
    // Within a few of its one-second looks, the leader compacts to all but the last 5.
    eventually(Duration::from_secs(15), || async {
        match client.get_at("auto/a", Consistency::Linearizable, Some(last - 6)).await {
            Err(metastore_client::ClientError::Api(e)) if e.status == 410 => Ok(()),
            other => Err(format!("revision {} still readable: {other:?}", last - 6)),
        }
    })
    .await;
    let kept = client.get_at("auto/a", Consistency::Linearizable, Some(last - 5)).await.expect("kept");
    assert_eq!(kept.map(|kv| kv.value), Some(b"14".to_vec()), "the last five revisions stay readable");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_bytes_percent_encoded_in_urls_and_base64_in_json() {
    let (cluster, client) = single().await;
    let key = vec![0xff, 0x00, b'/', 0xfe];
    client.put(&key, b"binary".to_vec(), None).await.expect("put");
    let kv = client.get(&key, Consistency::Linearizable).await.expect("get").expect("present");
    assert_eq!((kv.key.clone(), kv.value), (key.clone(), b"binary".to_vec()));
    let raw = metastore_client::tls::default_http()
        .get(url(&cluster, "/%FF%00%2F%FE"))
        .send()
        .await
        .expect("raw get");
    assert_eq!(raw.bytes().await.expect("body").as_ref(), b"binary", "the raw API takes the same key");
    let json: serde_json::Value = metastore_client::tls::default_http()
        .get(url(&cluster, "/v1/kv?prefix=%FF"))
        .send()
        .await
        .expect("range")
        .json()
        .await
        .expect("json");
    assert_eq!(json["kvs"][0]["key"], "/wAv/g==");
    let listed = client.range(&RangeRequest { prefix: Some(vec![0xff]), ..Default::default() }).await;
    assert_eq!(listed.expect("range").kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_swap_succeeds_only_on_the_expected_revision() {
    let (_cluster, client) = single().await;
    let created = client.put("cas", b"v1".to_vec(), Some(Precondition::Absent)).await.expect("create");
    let again = client.put("cas", b"v1".to_vec(), Some(Precondition::Absent)).await.expect_err("exists");
    assert_eq!(again.status(), Some(409));

    let stale =
        client.put("cas", b"v2".to_vec(), Some(Precondition::ModRevision(created.revision + 100))).await;
    assert_eq!(stale.expect_err("stale revision").status(), Some(409));
    client.put("cas", b"v2".to_vec(), Some(Precondition::ModRevision(created.revision))).await.expect("swap");

    let kv = client.get("cas", Consistency::Linearizable).await.expect("get").expect("present");
    let wrong = client.delete("cas", Some(Precondition::ModRevision(created.revision))).await;
    assert_eq!(wrong.expect_err("old revision").status(), Some(409));
    let deleted =
        client.delete("cas", Some(Precondition::ModRevision(kv.mod_revision))).await.expect("delete");
    assert!(deleted.deleted);
    assert_eq!(client.get("cas", Consistency::Linearizable).await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_list_in_order_and_paginate() {
    let (_cluster, client) = single().await;
    for i in 0..25 {
        client.put(&format!("dir/{i:02}"), vec![i as u8], None).await.expect("put");
    }
    client.put("dis", b"outside".to_vec(), None).await.expect("put");
    let mut seen = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .range(&RangeRequest {
                prefix: Some("dir/".into()),
                start: start.clone(),
                limit: Some(10),
                ..Default::default()
            })
            .await
            .expect("range");
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        start = page.next_key;
    }
    let expected: Vec<Vec<u8>> = (0..25).map(|i| format!("dir/{i:02}").into_bytes()).collect();
    assert_eq!(seen, expected);
    let stale = client
        .range(&RangeRequest {
            prefix: Some("dir/".into()),
            consistency: Consistency::Stale,
            ..Default::default()
        })
        .await
        .expect("stale range");
    assert_eq!(stale.kvs.len(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (cluster, client) = single().await;
    // A connection per request: the member answers an oversized body at once and closes the
    // connection without reading the rest, which a pooled connection could race with.
    let http = metastore_client::tls::http(None)
        .expect("tls")
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let check = |status: u16, code: &'static str| {
        move |resp: reqwest::Response| async move {
            assert_eq!(resp.status().as_u16(), status);
            let body: serde_json::Value = resp.json().await.expect("a JSON error body");
            assert_eq!(body["error"], code, "{body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    };
    let send = |req: reqwest::RequestBuilder| async move { req.send().await.expect("answered") };

    check(400, "invalid_key")(send(http.put(url(&cluster, "/")).body("x")).await).await;
    check(400, "unknown_parameter")(
        send(http.put(url(&cluster, "/v1/kv/a?prev_revision=1")).body("x")).await,
    )
    .await;
    check(400, "unknown_parameter")(send(http.get(url(&cluster, "/v1/kv?prefx=a"))).await).await;
    check(400, "unknown_parameter")(send(http.put(url(&cluster, "/raw?if_absent=true")).body("x")).await)
        .await;
    check(400, "duplicate_parameter")(send(http.get(url(&cluster, "/v1/kv?limit=1&limit=2"))).await).await;
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    check(413, "key_too_large")(send(http.put(url(&cluster, &format!("/v1/kv/{long_key}"))).body("x")).await)
        .await;
    let big = vec![b'v'; MAX_VALUE_BYTES + 1];
    check(413, "body_too_large")(send(http.put(url(&cluster, "/v1/kv/big")).body(big)).await).await;
    check(400, "invalid_precondition")(
        send(http.put(url(&cluster, "/v1/kv/a?if_mod_revision=x")).body("x")).await,
    )
    .await;
    check(400, "invalid_consistency")(send(http.get(url(&cluster, "/v1/kv/a?consistency=maybe"))).await)
        .await;
    check(400, "invalid_limit")(send(http.get(url(&cluster, "/v1/kv?limit=0"))).await).await;
    check(400, "invalid_json")(send(http.post(url(&cluster, "/v1/cluster/members")).body("{not json")).await)
        .await;
    let bad_member = r#"{"id": 0, "peer_url": "http://127.0.0.1:1"}"#;
    check(400, "invalid_member")(
        send(http.post(url(&cluster, "/v1/cluster/members")).body(bad_member)).await,
    )
    .await;
    check(404, "key_not_found")(send(http.get(url(&cluster, "/v1/kv/absent"))).await).await;
    check(404, "not_found")(send(http.get(url(&cluster, "/v1/nothing/here"))).await).await;

    assert_eq!(client.get("big", Consistency::Linearizable).await.expect("get"), None);
    assert_eq!(
        client.get("a", Consistency::Linearizable).await.expect("get"),
        None,
        "a refused write wrote nothing"
    );
    assert_eq!(client.get("raw", Consistency::Linearizable).await.expect("get"), None);
    // A value of exactly the limit is accepted.
    client.put("max", vec![b'v'; MAX_VALUE_BYTES], None).await.expect("a value at the limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_are_served() {
    let (cluster, client) = single().await;
    let http = metastore_client::tls::default_http();
    assert!(client.ready().await.expect("readyz"));
    let health = http.get(url(&cluster, "/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let metrics =
        http.get(url(&cluster, "/metrics")).send().await.expect("metrics").text().await.expect("text");
    for name in [
        "metastore_raft_term",
        "metastore_raft_applied_index",
        "metastore_http_requests_total",
        "metastore_log_sync_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_member_waits_until_initialized_through_the_api() {
    let mut cluster = Cluster::empty();
    let index = cluster.add_joining(1, &[]);
    let client = cluster.nodes[index].client();
    eventually(Duration::from_secs(10), || async {
        client.cluster().await.map(|s| assert!(!s.initialized, "a joining member does not bootstrap"))
    })
    .await;
    assert!(!client.ready().await.expect("readyz answers"));
    client.init(vec![]).await.expect("init");
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), || client.put("k", b"v".to_vec(), None)).await;
    assert_eq!(client.init(vec![]).await.expect_err("second init").status(), Some(409));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_flag_can_come_from_a_metastore_environment_variable() {
    let mut cluster = Cluster::empty();
    let (peer, client) = (common::free_port(), common::free_port());
    let data_dir = cluster.path().join("elsewhere");
    let env = vec![
        ("METASTORE_MEMBER_ID".to_string(), "7".to_string()),
        ("METASTORE_ADVERTISE_PEER_URL".to_string(), format!("http://127.0.0.1:{peer}")),
        ("METASTORE_PORT".to_string(), client.to_string()),
        ("METASTORE_DATA_DIR".to_string(), data_dir.display().to_string()),
        ("METASTORE_JOIN".to_string(), "true".to_string()),
    ];
    let index = cluster.add_with_env(7, peer, client, env);
    let node = cluster.nodes[index].client();
    let status = eventually(Duration::from_secs(10), || node.cluster()).await;
    assert_eq!(status.member_id, 7);
    assert!(!status.initialized, "METASTORE_JOIN=true keeps it from bootstrapping");
    node.init(vec![]).await.expect("init");
    eventually(Duration::from_secs(10), || node.put("k", b"v".to_vec(), None)).await;
    assert!(data_dir.join("db").is_dir(), "the data lives in METASTORE_DATA_DIR");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_takes_its_port_back_while_old_connections_linger_in_time_wait() {
    // Leave a connection in TIME_WAIT on the port, as a just-stopped member leaves behind: the
    // side that closes first (here the listening side) keeps it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    drop(accepted);
    drop(listener);
    drop(client);

    let mut cluster = Cluster::empty();
    let peer = common::free_port();
    let args = vec![
        "--port".to_string(),
        port.to_string(),
        "--cluster".to_string(),
        format!("http://127.0.0.1:{peer}"),
    ];
    cluster.add(1, peer, port, args);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_page_stops_at_its_byte_budget_and_continues_from_next_key() {
    let (_cluster, client) = single().await;
    let value = vec![b'x'; 1024 * 1024];
    let count = metastore_client::MAX_RANGE_BYTES / value.len() + 3;
    for i in 0..count {
        client.put(&format!("big/{i:02}"), value.clone(), None).await.expect("put");
    }
    let request = RangeRequest { prefix: Some("big/".into()), ..Default::default() };
    let first = client.range(&request).await.expect("range");
    assert!(first.more && first.kvs.len() < count, "a page of {} values of 1 MiB", first.kvs.len());
    let bytes: usize = first.kvs.iter().map(|kv| kv.value.len()).sum();
    assert!(bytes <= metastore_client::MAX_RANGE_BYTES);
    let rest = client.range(&RangeRequest { start: first.next_key.clone(), ..request }).await.expect("range");
    assert_eq!(first.kvs.len() + rest.kvs.len(), count);
}

/// Open sockets of process `pid`.
fn sockets_of(pid: u32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the member's file descriptors");
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_numerous_clients_cannot_take_a_member_down() {
    let cluster = Cluster::start(1, &["--max-connections", "16", "--header-timeout-ms", "500"]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let node = cluster.node(1);
    let pid = node.pid().expect("running");
    let before = sockets_of(pid);

    // 64 slow-loris connections: each sends half a request's headers, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", node.client_port)).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /v1/kv/x HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = sockets_of(pid) - before;
    assert!(held <= 16, "at most 16 connections are taken on at once, not {held}");

    // Each stalled connection is closed after half a second, so a real request gets through.
    let client = node.client();
    let answer =
        tokio::time::timeout(Duration::from_secs(15), client.put("still", b"here".to_vec(), None)).await;
    answer.expect("served once the stalled connections timed out").expect("the write succeeds");
    assert!(node.is_running());
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_a_byte_at_a_time_does_not_hold_a_connection_forever() {
    let limits = ["--max-connections", "4", "--header-timeout-ms", "500", "--request-timeout-ms", "1000"];
    let cluster = Cluster::start(1, &limits);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let node = cluster.node(1);

    // Eight writes whose headers promise a kilobyte of body, of which one byte ever comes.
    let mut trickling = Vec::new();
    for _ in 0..8 {
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", node.client_port)).await.expect("connect");
        let head = b"PUT /v1/kv/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nx";
        tokio::io::AsyncWriteExt::write_all(&mut stream, head).await.expect("write");
        trickling.push(stream);
    }
    let client = node.client();
    let answer =
        tokio::time::timeout(Duration::from_secs(15), client.put("still", b"here".to_vec(), None)).await;
    answer.expect("served once the trickling requests ran out of time").expect("the write succeeds");
    drop(trickling);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_answers_does_not_hold_a_connection_forever() {
    let cluster = Cluster::start(1, &["--max-connections", "2", "--header-timeout-ms", "500"]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let node = cluster.node(1);
    {
        let client = node.client();
        eventually(Duration::from_secs(10), || client.put("big", vec![b'v'; MAX_VALUE_BYTES], None)).await;
    }
    // That client's idle connection closes after the header timeout, leaving both places free.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Both connections ask for 64 MiB of answers and read none of it: far more than the
    // sockets' buffers hold, so the member's writes stall.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", node.client_port)).await.expect("connect");
        let request = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n".repeat(64);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &request).await.expect("write");
        stuck.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = node.client();
    let answer =
        tokio::time::timeout(Duration::from_secs(15), client.put("still", b"here".to_vec(), None)).await;
    answer.expect("served once the stalled writes timed out").expect("the write succeeds");
    drop(stuck);
}
