//! etcd's v3 gRPC API on real members, through a client built for etcd (the Rust `etcd-client`
//! crate, on tonic and h2): the calls Kubernetes and etcd's tools make, with etcd's answers.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use etcd_client::{
    Client, Compare, CompareOp, Error, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

async fn started(members: usize) -> (Cluster, Vec<Client>) {
    let cluster = Cluster::start(members, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        let url = node.client_url();
        let client = eventually(Duration::from_secs(10), || Client::connect([url.clone()], None)).await;
        clients.push(client);
    }
    let first = clients[0].clone();
    eventually(Duration::from_secs(10), || {
        let mut client = first.clone();
        async move { client.put("warmup", "x", None).await }
    })
    .await;
    (cluster, clients)
}

fn grpc_error(error: Error) -> (tonic::Code, String) {
    match error {
        Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key_str().expect("text")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_answer_what_etcd_answers_with_every_option() {
    let (_cluster, mut clients) = started(1).await;
    let client = &mut clients[0];
    for (key, value) in [("r/a", "3"), ("r/b", "1"), ("r/c", "2"), ("s/x", "0")] {
        client.put(key, value, None).await.expect("put");
    }
    let put = client.put("r/b", "9", Some(PutOptions::new().with_prev_key())).await.expect("overwrite");
    assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
    let head = put.header().expect("header").revision();

    let page = client.get("r/", Some(GetOptions::new().with_prefix().with_limit(2))).await.expect("page");
    assert_eq!((keys(page.kvs()), page.more(), page.count()), (vec!["r/a", "r/b"], true, 3));
    assert_eq!(page.header().expect("header").revision(), head);

    let by_value = GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Descend);
    assert_eq!(keys(client.get("r/", Some(by_value)).await.expect("sorted").kvs()), ["r/b", "r/a", "r/c"]);
    let counted =
        client.get("r/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count");
    assert_eq!((counted.kvs().len(), counted.count()), (0, 3));
    let recent = GetOptions::new().with_prefix().with_min_mod_revision(head);
    assert_eq!(keys(client.get("r/", Some(recent)).await.expect("filtered").kvs()), ["r/b"]);

    let past = client.get("r/b", Some(GetOptions::new().with_revision(head - 1))).await.expect("past");
    assert_eq!(past.kvs()[0].value(), b"1");
    assert_eq!(past.header().expect("header").revision(), head, "the header names the current revision");
    let current = client.get("r/b", None).await.expect("get");
    let kv = &current.kvs()[0];
    // Created three writes before the overwrite: r/c and s/x came between.
    assert_eq!((kv.version(), kv.mod_revision(), kv.create_revision()), (2, head, head - 3));

    let future =
        client.get("r/b", Some(GetOptions::new().with_revision(head + 10))).await.expect_err("future");
    assert_eq!(
        grpc_error(future),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into())
    );
    client.compact(head - 1, None).await.expect("compact");
    let compacted =
        client.get("r/b", Some(GetOptions::new().with_revision(head - 2))).await.expect_err("old");
    assert_eq!(
        grpc_error(compacted),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into())
    );
    let empty = client.get("", None).await.expect_err("no key");
    assert_eq!(grpc_error(empty), (tonic::Code::InvalidArgument, "etcdserver: key is not provided".into()));

    let deleted = client
        .delete("r/", Some(etcd_client::DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!((deleted.deleted(), deleted.prev_kvs().len()), (3, 3));
    assert_eq!(client.get("r/", Some(GetOptions::new().with_prefix())).await.expect("gone").count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_style_transactions_report_the_revision_in_the_nested_header() {
    let (_cluster, mut clients) = started(3).await;
    // Through a follower or the leader alike: every member serves every call.
    let client = &mut clients[1];
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let create = Txn::new()
        .when([Compare::mod_revision("/registry/pods/a", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("/registry/pods/a", "v1", Some(PutOptions::new().with_lease(lease)))]);
    let created = client.txn(create.clone()).await.expect("create");
    assert!(created.succeeded());
    let Some(TxnOpResponse::Put(put)) = created.op_responses().into_iter().next() else { panic!("a put") };
    let revision = put.header().expect("nested header").revision();
    assert_eq!(revision, created.header().expect("header").revision());

    // The same create again fails its compare and reads the key instead.
    let again =
        client.txn(create.or_else([TxnOp::get("/registry/pods/a", None)])).await.expect("second create");
    assert!(!again.succeeded());
    let Some(TxnOpResponse::Get(current)) = again.op_responses().into_iter().next() else { panic!("a get") };
    assert_eq!((current.kvs()[0].mod_revision(), current.kvs()[0].lease()), (revision, lease));

    let stale = Txn::new()
        .when([Compare::mod_revision("/registry/pods/a", CompareOp::Equal, revision - 1)])
        .and_then([TxnOp::put("/registry/pods/a", "v2", None)]);
    assert!(!client.txn(stale).await.expect("stale update").succeeded());

    let twice = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    assert_eq!(
        grpc_error(client.txn(twice).await.expect_err("duplicate")),
        (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into())
    );
    let unknown_lease =
        client.put("x", "v", Some(PutOptions::new().with_lease(12345))).await.expect_err("lease");
    assert_eq!(
        grpc_error(unknown_lease),
        (tonic::Code::NotFound, "etcdserver: requested lease not found".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_share_a_stream_replay_history_and_answer_progress_after_their_events() {
    let (_cluster, mut clients) = started(3).await;
    let client = &mut clients[2];
    let first = client.put("w/a", "1", None).await.expect("put").header().expect("header").revision();
    client.put("w/a", "2", None).await.expect("put");

    let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(first);
    let mut stream = client.watch("w/", Some(options)).await.expect("watch");
    let created = stream.message().await.expect("stream").expect("created");
    assert!(created.created());
    assert_eq!(created.watch_id(), 0, "ids on a stream start at 0");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let response = stream.message().await.expect("stream").expect("events");
        seen.extend(response.events().iter().map(|e| e.kv().expect("kv").mod_revision()));
        if let Some(update) = response.events().iter().find(|e| e.kv().is_some_and(|kv| kv.version() == 2)) {
            assert_eq!(update.prev_kv().expect("prev").value(), b"1", "the value before the change");
        }
    }
    assert_eq!(seen, [first, first + 1], "history replayed in order");

    client.delete("w/a", None).await.expect("delete");
    let live = stream.message().await.expect("stream").expect("live");
    assert_eq!(live.events()[0].event_type(), EventType::Delete);
    let deleted_at = live.events()[0].kv().expect("kv").mod_revision();

    stream.watch("other", None).await.expect("a second watch on the stream");
    let second = stream.message().await.expect("stream").expect("created");
    assert!(second.created());
    assert_eq!(second.watch_id(), 1);

    stream.request_progress().await.expect("progress request");
    let progress = stream.message().await.expect("stream").expect("progress");
    assert!(progress.events().is_empty());
    assert_eq!(progress.watch_id(), -1, "a progress answer for the whole stream");
    assert!(progress.header().expect("header").revision() >= deleted_at, "synced past every event sent");

    stream.cancel(0).await.expect("cancel");
    let canceled = stream.message().await.expect("stream").expect("canceled");
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), 0);

    client.compact(deleted_at, None).await.expect("compact");
    let options = WatchOptions::new().with_prefix().with_start_revision(first);
    let mut old_stream = client.watch("w/", Some(options)).await.expect("watch the past");
    let mut answer = old_stream.message().await.expect("stream").expect("answer");
    if answer.created() && !answer.canceled() {
        answer = old_stream.message().await.expect("stream").expect("canceled");
    }
    assert!(answer.canceled());
    assert_eq!(answer.compact_revision(), deleted_at);
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_keep_alive_over_a_stream_and_take_their_keys_with_them() {
    let (_cluster, mut clients) = started(3).await;
    let client = &mut clients[1];
    let lease = client.lease_grant(30, None).await.expect("grant");
    assert_eq!(lease.ttl(), 30);
    client.put("l/a", "v", Some(PutOptions::new().with_lease(lease.id()))).await.expect("put");
    let (mut keeper, mut kept) = client.lease_keep_alive(lease.id()).await.expect("keep-alive stream");
    keeper.keep_alive().await.expect("keep alive");
    let answer = kept.message().await.expect("stream").expect("answer");
    assert_eq!((answer.id(), answer.ttl()), (lease.id(), 30));

    let status = client
        .lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!((status.granted_ttl(), status.keys().to_vec()), (30, vec![b"l/a".to_vec()]));
    assert!(client.leases().await.expect("list").leases().iter().any(|l| l.id() == lease.id()));

    client.lease_revoke(lease.id()).await.expect("revoke");
    assert_eq!(client.get("l/a", None).await.expect("get").count(), 0, "the key went with its lease");
    assert_eq!(client.lease_time_to_live(lease.id(), None).await.expect("gone").ttl(), -1);
    keeper.keep_alive().await.expect("keep alive a revoked lease");
    assert_eq!(kept.message().await.expect("stream").expect("answer").ttl(), 0, "etcd's answer for none");
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_and_members_look_like_etcd_and_agree_across_members() {
    let (cluster, mut clients) = started(3).await;
    clients[0].put("h/a", "1", None).await.expect("put");
    let revision = clients[0].put("h/b", "2", None).await.expect("put").header().expect("header").revision();

    // Static members record their client URLs once they are up: wait for all three.
    let expected: Vec<(u64, Vec<String>)> =
        cluster.nodes.iter().map(|n| (n.id, vec![n.client_url()])).collect();
    let lister = clients[0].clone();
    eventually(Duration::from_secs(10), || {
        let (mut client, expected) = (lister.clone(), expected.clone());
        async move {
            let members = client.member_list().await.map_err(|e| e.to_string())?;
            let mut listed: Vec<(u64, Vec<String>)> =
                members.members().iter().map(|m| (m.id(), m.client_urls().to_vec())).collect();
            listed.sort();
            if listed == expected {
                Ok(())
            } else {
                Err(format!("{listed:?}"))
            }
        }
    })
    .await;

    let mut hashes = Vec::new();
    for client in &mut clients {
        let status = client.status().await.expect("status");
        assert!(status.version().starts_with("3."), "an etcd-shaped version: {}", status.version());
        assert!(status.leader() != 0 && status.raft_term() > 0);
        // kube-apiserver exports it as etcd_db_total_size_in_bytes; the keys are in it.
        assert!(status.db_size() > 0, "a store holding keys has a size: {}", status.db_size());
        // Every member at the revision before hashing at it.
        eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            async move {
                let head = c.get("h/b", Some(GetOptions::new().with_serializable())).await?;
                if head.header().map(|h| h.revision()) >= Some(revision) {
                    Ok(())
                } else {
                    Err(Error::InvalidArgs("behind".into()))
                }
            }
        })
        .await;
        hashes.push(client.hash_kv(revision).await.expect("hash").hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "every member's keys hash alike: {hashes:?}");
    clients[0].put("h/c", "3", None).await.expect("put");
    assert_ne!(clients[0].hash_kv(0).await.expect("hash").hash(), hashes[0], "and a change changes it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_streams_the_store_as_of_the_request_from_any_member() {
    let (_cluster, mut clients) = started(3).await;
    // Over a megabyte: the snapshot comes in several messages, each under gRPC's 4 MiB default.
    let value = "v".repeat(4096);
    for i in 0..300 {
        clients[0].put(format!("snap/{i:03}"), value.as_str(), None).await.expect("put");
    }
    let last = clients[0].put("snap/last", "the last write", None).await.expect("put");
    let written = last.header().expect("header").revision();
    // A follower has applied the last write once it reads it serializably.
    let mut follower = clients[1].clone();
    eventually(Duration::from_secs(10), || {
        let mut c = follower.clone();
        async move {
            let read = c.get("snap/last", Some(GetOptions::new().with_serializable())).await?;
            if read.kvs().is_empty() {
                Err(Error::InvalidArgs("not applied yet".into()))
            } else {
                Ok(())
            }
        }
    })
    .await;
    let mut stream = follower.snapshot().await.expect("a snapshot stream");
    let (mut bytes, mut messages, mut remaining) = (Vec::new(), 0, u64::MAX);
    while let Some(answer) = stream.message().await.expect("a piece") {
        assert!(answer.header().is_some_and(|h| h.revision() >= written), "as of the request or later");
        bytes.extend_from_slice(answer.blob());
        remaining = answer.remaining_bytes();
        messages += 1;
    }
    assert!(messages > 1, "{} bytes in {messages} message(s)", bytes.len());
    assert_eq!(remaining, 0, "the last message says nothing remains");
    assert!(bytes.starts_with(b"MSSNAP03"), "metaStore's snapshot format");
    assert!(metastore_client::seal::is_sealed(&bytes), "sealed as a file, by its SHA-256");
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(holds(b"snap/last") && holds(b"the last write"), "the write made just before is in it");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_member_names_its_clusters_id_and_another_cluster_names_another() {
    let (one, clients) = started(3).await;
    let (_other, others) = started(1).await;
    let mut ids = Vec::new();
    for client in clients.iter().chain(&others) {
        let mut client = client.clone();
        let header = client.status().await.expect("status").header().cloned().expect("a header");
        ids.push(header.cluster_id());
    }
    assert!(ids[..3].iter().all(|id| *id == ids[0]), "one id on every member of a cluster: {ids:x?}");
    assert_ne!(ids[3], ids[0], "two clusters, two ids: {ids:x?}");
    let http = one.node(2).client().cluster().await.expect("status").cluster_id;
    assert_eq!(http, format!("{:016x}", ids[0]), "the HTTP API names the same id");
}
