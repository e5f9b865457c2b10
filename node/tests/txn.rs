//! `POST /v1/txn` on real members: etcd's transactions — compares, both lists, one revision for
//! every change, nested transactions, and the refusals etcd makes.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};
use metastore_client::{
    Client, CompareResult, CompareTarget, Consistency, ErrorCode, TxnCompare, TxnDeleteRange, TxnOp,
    TxnOpResponse, TxnRange, TxnRequest, MAX_VALUE_BYTES,
};

async fn started(members: usize) -> (Cluster, Client) {
    let cluster = Cluster::start(members, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.node(1).client();
    eventually(Duration::from_secs(10), || client.put("warmup", b"x".to_vec(), None)).await;
    (cluster, client)
}

fn mod_revision_is(key: &str, revision: u64) -> TxnCompare {
    TxnCompare::key(key, CompareResult::Equal, CompareTarget::ModRevision(revision))
}

async fn value(client: &Client, key: &str) -> Option<String> {
    let kv = client.get(key, Consistency::Linearizable).await.expect("get");
    kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_moves_both_balances_at_one_revision_or_not_at_all() {
    let (_cluster, client) = started(1).await;
    let alice = client.put("bank/alice", b"100".to_vec(), None).await.expect("put").revision;
    let bob = client.put("bank/bob", b"0".to_vec(), None).await.expect("put").revision;
    let transfer = |alice_at, bob_at| TxnRequest {
        compare: vec![mod_revision_is("bank/alice", alice_at), mod_revision_is("bank/bob", bob_at)],
        success: vec![TxnOp::put("bank/alice", "60"), TxnOp::put("bank/bob", "40")],
        failure: vec![TxnOp::get("bank/alice"), TxnOp::get("bank/bob")],
    };

    let done = client.txn(&transfer(alice, bob)).await.expect("txn");
    assert!(done.succeeded);
    assert_eq!(done.revision, bob + 1, "two changes, one revision");
    let TxnOpResponse::Put(previous) = &done.responses[0] else { panic!("{done:?}") };
    assert_eq!(previous.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"100".to_vec()));
    for key in ["bank/alice", "bank/bob"] {
        let kv = client.get(key, Consistency::Linearizable).await.expect("get").expect("present");
        assert_eq!(kv.mod_revision, done.revision, "{key}");
    }
    let before = client
        .get_at("bank/alice", Consistency::Linearizable, Some(bob))
        .await
        .expect("read at the revision before");
    assert_eq!(before.map(|kv| kv.value), Some(b"100".to_vec()), "history holds the state before it");

    // The same transfer again is stale: its compares fail, the failure list reads, nothing moves.
    let stale = client.txn(&transfer(alice, bob)).await.expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, done.revision, "a transaction that only read takes no revision");
    let TxnOpResponse::Range(current) = &stale.responses[0] else { panic!("{stale:?}") };
    assert_eq!(current.kvs[0].value, b"60", "the failure list shows why");
    assert_eq!(value(&client, "bank/bob").await.as_deref(), Some("40"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compares_read_versions_values_and_ranges_and_operations_see_earlier_ones() {
    let (_cluster, client) = started(1).await;
    for key in ["dir/a", "dir/b", "dir/c"] {
        client.put(key, b"v".to_vec(), None).await.expect("put");
    }
    let txn = TxnRequest {
        compare: vec![
            TxnCompare::key("absent", CompareResult::Equal, CompareTarget::Version(0)),
            TxnCompare {
                key: b"dir/".to_vec(),
                range_end: b"dir0".to_vec(),
                result: CompareResult::Equal,
                target: CompareTarget::Value(b"v".to_vec()),
            },
        ],
        success: vec![
            TxnOp::DeleteRange(TxnDeleteRange {
                key: b"dir/a".to_vec(),
                range_end: b"dir/c".to_vec(),
                prev_kv: true,
            }),
            TxnOp::put("dir/d", "new"),
            TxnOp::Range(TxnRange {
                key: b"dir/".to_vec(),
                range_end: b"dir0".to_vec(),
                ..TxnRange::default()
            }),
        ],
        failure: vec![],
    };
    let done = client.txn(&txn).await.expect("txn");
    assert!(done.succeeded, "a missing key has version 0, and every key in dir/ holds v");
    let TxnOpResponse::DeleteRange(deleted) = &done.responses[0] else { panic!("{done:?}") };
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (2, 2));
    let TxnOpResponse::Range(listed) = &done.responses[2] else { panic!("{done:?}") };
    let keys: Vec<&[u8]> = listed.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"dir/c"[..], b"dir/d"], "the range sees the delete and the put before it");

    // A value compare on a missing key never holds, whatever the operator.
    for result in [CompareResult::Equal, CompareResult::NotEqual] {
        let on_missing = TxnRequest {
            compare: vec![TxnCompare::key("absent", result, CompareTarget::Value(b"x".to_vec()))],
            ..TxnRequest::default()
        };
        assert!(!client.txn(&on_missing).await.expect("txn").succeeded, "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nested_transaction_answers_inside_its_parent_and_shares_its_revision() {
    let (_cluster, client) = started(1).await;
    // Every compare, nested ones included, is decided before anything applies (etcd's rule):
    // the nested one sees the lock as it was, free, though the outer list takes it first.
    let inner = TxnRequest {
        compare: vec![TxnCompare::key("lock", CompareResult::Equal, CompareTarget::Version(0))],
        success: vec![TxnOp::put("owned-by", "me")],
        failure: vec![TxnOp::put("owned-by", "somebody-else")],
    };
    let outer =
        TxnRequest { success: vec![TxnOp::put("lock", "held"), TxnOp::Txn(inner)], ..Default::default() };
    let done = client.txn(&outer).await.expect("txn");
    let TxnOpResponse::Txn(nested) = &done.responses[1] else { panic!("{done:?}") };
    assert!(nested.succeeded, "decided against the keys before the outer put");
    assert_eq!(nested.revision, done.revision);
    let owner = client.get("owned-by", Consistency::Linearizable).await.expect("get").expect("present");
    assert_eq!((owner.value.as_slice(), owner.mod_revision), (&b"me"[..], done.revision));
}

#[tokio::test(flavor = "multi_thread")]
async fn etcds_refusals_come_with_a_clear_code_and_write_nothing() {
    let (cluster, client) = started(1).await;
    let refused = |txn: TxnRequest| {
        let client = client.clone();
        async move {
            match client.txn(&txn).await.expect_err("refused") {
                metastore_client::ClientError::Api(e) => (e.status, e.code().clone()),
                other => panic!("not an API error: {other}"),
            }
        }
    };
    let twice =
        TxnRequest { success: vec![TxnOp::put("k", "1"), TxnOp::put("k", "2")], ..Default::default() };
    assert_eq!(refused(twice).await, (400, ErrorCode::DuplicateKey));
    let put_and_delete = TxnRequest {
        success: vec![
            TxnOp::put("p/k", "1"),
            TxnOp::DeleteRange(TxnDeleteRange {
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec(),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    };
    assert_eq!(refused(put_and_delete).await, (400, ErrorCode::DuplicateKey));
    let many = TxnRequest { success: vec![TxnOp::get("k"); 129], ..Default::default() };
    assert_eq!(refused(many).await, (400, ErrorCode::TooManyOperations));
    let empty_key = TxnRequest { success: vec![TxnOp::put("", "v")], ..Default::default() };
    assert_eq!(refused(empty_key).await, (400, ErrorCode::InvalidKey));
    let big = TxnRequest {
        success: vec![TxnOp::put("big", vec![b'v'; MAX_VALUE_BYTES + 1])],
        ..Default::default()
    };
    assert_eq!(refused(big).await.0, 413);
    let leased = TxnRequest {
        success: vec![TxnOp::Put(metastore_client::TxnPut {
            key: b"leased".to_vec(),
            value: b"v".to_vec(),
            lease: 7,
            prev_kv: false,
        })],
        ..Default::default()
    };
    assert_eq!(refused(leased).await, (404, ErrorCode::LeaseNotFound));

    let http = metastore_client::tls::default_http();
    let url = format!("{}/v1/txn", cluster.node(1).client_url());
    let answer = http.post(&url).body(r#"{"success": [{"put": {"key": "not base64!"}}]}"#).send().await;
    assert_eq!(answer.expect("answered").status().as_u16(), 400);

    for key in ["k", "p/k", "big", "leased"] {
        assert_eq!(value(&client, key).await, None, "{key}: a refused transaction wrote nothing");
    }
    // A value at the limit fits in a transaction's body, base64 and all.
    let at_limit =
        TxnRequest { success: vec![TxnOp::put("big", vec![b'v'; MAX_VALUE_BYTES])], ..Default::default() };
    assert!(client.txn(&at_limit).await.expect("txn").succeeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_sent_to_a_follower_commits_through_the_leader() {
    let (cluster, _) = started(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let follower = cluster.nodes.iter().find(|n| n.id != leader).expect("a follower").client();
    let claim = TxnRequest {
        compare: vec![TxnCompare::key("leader-key", CompareResult::Equal, CompareTarget::CreateRevision(0))],
        success: vec![TxnOp::put("leader-key", "follower"), TxnOp::delete("warmup")],
        failure: vec![],
    };
    let done = eventually(Duration::from_secs(10), || follower.txn(&claim)).await;
    assert!(done.succeeded);
    let again = follower.txn(&claim).await.expect("txn");
    assert!(!again.succeeded, "the key exists now: a second claim fails");
    let leader_client = cluster.node(leader).client();
    assert_eq!(value(&leader_client, "leader-key").await.as_deref(), Some("follower"));
    assert_eq!(value(&leader_client, "warmup").await, None);
}
