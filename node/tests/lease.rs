//! `/v1/lease` on real members: keys that go with their lease — when it is revoked, or when it
//! expires, never before its TTL from the last keep-alive, a leader's death included.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Cluster};
use metastore_client::{
    Client, ClientError, Consistency, ErrorCode, TxnOp, TxnPut, TxnRequest, WatchRequest,
};

async fn started(members: usize) -> (Cluster, Client) {
    let cluster = Cluster::start(members, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(leader).client();
    eventually(Duration::from_secs(10), || client.put("warmup", b"x".to_vec(), None)).await;
    (cluster, client)
}

async fn exists(client: &Client, key: &str) -> bool {
    client.get(key, Consistency::Linearizable).await.expect("get").is_some()
}

fn code(error: ClientError) -> ErrorCode {
    match error {
        ClientError::Api(e) => e.code().clone(),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_lease_deletes_its_keys_together_and_only_them() {
    let (_cluster, client) = started(1).await;
    let lease = client.lease_grant(60).await.expect("grant");
    assert_eq!(lease.ttl, 60);
    for key in ["l/a", "l/b"] {
        client.put_leased(key, b"v".to_vec(), lease.id).await.expect("put");
    }
    client.put("l/c", b"v".to_vec(), None).await.expect("put");
    let status = client.lease_time_to_live(lease.id, true).await.expect("ttl");
    assert_eq!((status.granted_ttl, &status.keys), (60, &vec![b"l/a".to_vec(), b"l/b".to_vec()]));
    assert!(status.ttl > 50 && status.ttl <= 60, "{status:?}");
    assert!(client.leases().await.expect("list").leases.iter().any(|l| l.id == lease.id));

    let mut watch = client.watch(WatchRequest::prefix("l/"));
    assert!(watch.next().await.expect("line").expect("created").created);
    let revoked = client.lease_revoke(lease.id).await.expect("revoke");
    let line = watch.next().await.expect("line").expect("events");
    assert_eq!(line.events.len(), 2, "both keys in one line: {line:?}");
    assert!(line.events.iter().all(|e| e.kv.mod_revision == revoked.revision));
    assert!(!exists(&client, "l/a").await && !exists(&client, "l/b").await);
    assert!(exists(&client, "l/c").await, "a key without the lease stays");
    assert_eq!(code(client.lease_revoke(lease.id).await.expect_err("gone")), ErrorCode::LeaseNotFound);
    assert_eq!(code(client.lease_keep_alive(lease.id).await.expect_err("gone")), ErrorCode::LeaseNotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_naming_no_lease_fails_whole_and_ids_are_not_granted_twice() {
    let (cluster, client) = started(1).await;
    let refused = client.put_leased("orphan", b"v".to_vec(), 424242).await.expect_err("no such lease");
    assert_eq!(code(refused), ErrorCode::LeaseNotFound);
    assert!(!exists(&client, "orphan").await);

    let http = metastore_client::tls::default_http();
    let url = format!("{}/v1/lease", cluster.node(1).client_url());
    let grant = |body: &'static str| http.post(&url).body(body).send();
    assert_eq!(grant(r#"{"ttl": 30, "id": 77}"#).await.expect("answered").status().as_u16(), 200);
    assert_eq!(grant(r#"{"ttl": 30, "id": 77}"#).await.expect("answered").status().as_u16(), 409);
    assert_eq!(grant(r#"{"ttl": 30, "id": -1}"#).await.expect("answered").status().as_u16(), 400);
    assert_eq!(grant(r#"{"ttl": 9000000001}"#).await.expect("answered").status().as_u16(), 400);
    let short = client.lease_grant(1).await.expect("grant");
    assert_eq!(short.ttl, 2, "raised to the minimum, so a lease outlives an election");
    let bad = metastore_client::tls::default_http().get(format!("{url}/abc")).send().await.expect("answered");
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_inside_a_transaction_attaches_its_key_to_a_lease() {
    let (_cluster, client) = started(1).await;
    let lease = client.lease_grant(60).await.expect("grant");
    let put = |key: &str, lease: i64| {
        TxnOp::Put(TxnPut { key: key.into(), value: b"v".to_vec(), lease, prev_kv: false })
    };
    let txn = TxnRequest { success: vec![put("t/leased", lease.id)], ..TxnRequest::default() };
    assert!(client.txn(&txn).await.expect("txn").succeeded);
    let status = client.lease_time_to_live(lease.id, true).await.expect("ttl");
    assert_eq!(status.keys, vec![b"t/leased".to_vec()]);
    let missing = TxnRequest { success: vec![put("t/orphan", 999_999)], ..TxnRequest::default() };
    assert_eq!(code(client.txn(&missing).await.expect_err("no such lease")), ErrorCode::LeaseNotFound);
    client.lease_revoke(lease.id).await.expect("revoke");
    assert!(!exists(&client, "t/leased").await && !exists(&client, "t/orphan").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_expires_after_its_ttl_from_the_last_keep_alive_and_not_before() {
    let (_cluster, client) = started(1).await;
    let lease = client.lease_grant(2).await.expect("grant");
    client.put_leased("exp/k", b"v".to_vec(), lease.id).await.expect("put");
    // Kept alive past several TTLs, it stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        client.lease_keep_alive(lease.id).await.expect("keep alive");
        assert!(exists(&client, "exp/k").await);
    }
    let last = Instant::now();
    eventually(Duration::from_secs(15), || async {
        if exists(&client, "exp/k").await {
            Err("still there")
        } else {
            Ok(())
        }
    })
    .await;
    assert!(last.elapsed() >= Duration::from_secs(2), "gone only after its TTL: {:?}", last.elapsed());
    assert_eq!(
        code(client.lease_time_to_live(lease.id, false).await.expect_err("expired")),
        ErrorCode::LeaseNotFound
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_change_never_expires_a_lease_early_and_leases_survive_restarts() {
    let (mut cluster, _) = started(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    let client = cluster.node(survivor).client();
    let kept = eventually(Duration::from_secs(10), || client.lease_grant(4)).await;
    let durable = eventually(Duration::from_secs(10), || client.lease_grant(600)).await;
    client.put_leased("f/kept", b"v".to_vec(), kept.id).await.expect("put");
    client.put_leased("f/durable", b"v".to_vec(), durable.id).await.expect("put");

    client.lease_keep_alive(kept.id).await.expect("keep alive");
    let kept_alive = Instant::now();
    cluster.kill(leader);
    // Keep-alives go on through the survivor while the others elect a new leader.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = client.lease_keep_alive(kept.id).await;
        assert!(
            client.get("f/kept", Consistency::Stale).await.expect("get").is_some()
                || kept_alive.elapsed() >= Duration::from_secs(4),
            "expired before its TTL counted from the last acknowledged keep-alive"
        );
    }
    assert!(exists(&client, "f/kept").await, "kept alive across the failover");

    for id in 1..=3 {
        if cluster.node(id).is_running() {
            cluster.stop(id);
        }
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(survivor).client();
    let listed = eventually(Duration::from_secs(20), || client.leases()).await;
    assert!(listed.leases.iter().any(|l| l.id == durable.id), "{listed:?}");
    assert!(eventually(Duration::from_secs(10), || client.get("f/durable", Consistency::Linearizable))
        .await
        .is_some());
}
