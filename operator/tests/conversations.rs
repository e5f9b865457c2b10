//! The reconciler's conversations with Kubernetes, stated request by request against a mocked
//! API server (tower-test): what it reads, what it applies, what it reports. Where a
//! conversation involves members, they are real `metastore` processes.

mod support;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use metastore_operator::controller::{reconcile, Context, BUSY_REQUEUE};
use metastore_operator::crd::MetaStoreCluster;
use metastore_operator::resources::fixtures::cluster;
use metastore_operator::{rbac, resources, Error};
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

/// Expects the next request to be `method path`, answers it with `answer(request body)`,
/// and returns the request body.
async fn expect_answered(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    answer: impl FnOnce(&str) -> (StatusCode, String),
) -> String {
    let (request, send) = server.next_request().await.expect("the reconciler made a request");
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    let uri = request.uri();
    assert!(
        rbac::grants(request.method(), uri.path(), uri.query()),
        "the chart's RBAC (rbac::REQUIRED) does not allow {method} {uri}"
    );
    let body = request.into_body().collect_bytes().await.expect("request body");
    let body = String::from_utf8(body.to_vec()).expect("utf-8 body");
    let (status, reply) = answer(&body);
    let response = Response::builder().status(status).body(Body::from(reply.into_bytes()));
    send.send_response(response.expect("response"));
    body
}

/// Expects `method path`; answers with `answer`, or when `None` echoes the body back, as an
/// apply does.
async fn expect(
    server: &mut ApiServer,
    method: Method,
    path: &str,
    answer: Option<(StatusCode, String)>,
) -> String {
    expect_answered(server, method, path, |body| answer.unwrap_or_else(|| (StatusCode::OK, body.to_string())))
        .await
}

/// The API server's answer to a status patch: the whole object, with the patched status.
fn object_with_status(cluster: &MetaStoreCluster, patch: &str) -> (StatusCode, String) {
    let patch: serde_json::Value = serde_json::from_str(patch).expect("json patch");
    let mut object = serde_json::to_value(cluster).expect("json object");
    object["status"] = patch["status"].clone();
    (StatusCode::OK, object.to_string())
}

/// Expects the status patch, answers it as the API server does, and returns the patch.
async fn expect_status(server: &mut ApiServer, cluster: &MetaStoreCluster) -> serde_json::Value {
    let path = "/apis/metastore.io/v1alpha1/namespaces/ns/metastoreclusters/demo/status";
    let patch = expect_answered(server, Method::PATCH, path, |body| object_with_status(cluster, body)).await;
    serde_json::from_str(&patch).expect("json")
}

/// Expects a server-side apply to `path`, answers it, and returns the applied object.
async fn expect_applied(server: &mut ApiServer, path: &str) -> serde_json::Value {
    let body = expect(server, Method::PATCH, path, None).await;
    serde_json::from_str(&body).expect("json")
}

/// Starts a reconcile of `cluster` against a mocked API server; its first requests apply the
/// two Services.
async fn reconcile_against_mock(
    cluster: &MetaStoreCluster,
) -> (ApiServer, tokio::task::JoinHandle<Result<Action, Error>>) {
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(service, "default")));
    let reconciling = tokio::spawn(reconcile(Arc::new(cluster.clone()), ctx));
    expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo-peer", None).await;
    expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo", None).await;
    (server, reconciling)
}

/// Expects the peer-token Secret to be created; answers that it was, or with `conflict` that it
/// already exists. Returns the Secret sent.
async fn expect_peer_token(server: &mut ApiServer, conflict: bool) -> serde_json::Value {
    let body = expect_answered(server, Method::POST, "/api/v1/namespaces/ns/secrets", |body| {
        if conflict {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "AlreadyExists", "code": 409, "message": "already exists"
            });
            (StatusCode::CONFLICT, status.to_string())
        } else {
            (StatusCode::CREATED, body.to_string())
        }
    })
    .await;
    serde_json::from_str(&body).expect("json")
}

fn not_found() -> (StatusCode, String) {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"
    });
    (StatusCode::NOT_FOUND, status.to_string())
}

#[tokio::test]
async fn a_new_cluster_gets_its_services_budget_and_statefulset_then_a_bootstrapping_status() {
    let demo = cluster(3);
    let (mut server, reconciling) = reconcile_against_mock(&demo).await;
    expect(&mut server, Method::GET, "/apis/apps/v1/namespaces/ns/statefulsets/demo", Some(not_found()))
        .await;
    let secret = expect_peer_token(&mut server, false).await;
    let token = secret["stringData"]["token"].as_str().expect("a token");
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "256 random bits: {token}");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], "demo", "deleted with the cluster");
    let pdb = expect_applied(&mut server, "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo").await;
    assert_eq!(pdb["spec"]["minAvailable"], 2, "a majority of three");
    let sts = expect_applied(&mut server, "/apis/apps/v1/namespaces/ns/statefulsets/demo").await;
    assert_eq!(sts["spec"]["replicas"], 3, "the StatefulSet is created at the desired size");
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    let token_env = env.iter().find(|e| e["name"] == "METASTORE_PEER_TOKEN").expect("members get the token");
    assert_eq!(token_env["valueFrom"]["secretKeyRef"]["name"], "demo-peer-token");
    let status = expect_status(&mut server, &demo).await;
    assert_eq!(status["status"]["phase"], "Bootstrapping");
    let available = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Available");
    assert_eq!(available.expect("Available")["status"], "False");

    let action = reconciling.await.expect("reconcile task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(BUSY_REQUEUE));
}

#[tokio::test]
async fn an_old_api_server_without_policy_v1_still_gets_a_cluster() {
    let demo = cluster(1);
    let (mut server, reconciling) = reconcile_against_mock(&demo).await;
    expect(&mut server, Method::GET, "/apis/apps/v1/namespaces/ns/statefulsets/demo", Some(not_found()))
        .await;
    expect_peer_token(&mut server, false).await;
    expect(
        &mut server,
        Method::PATCH,
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo",
        Some(not_found()),
    )
    .await;
    let warning =
        expect_answered(&mut server, Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", |b| {
            (StatusCode::CREATED, b.to_string())
        })
        .await;
    assert!(warning.contains("DisruptionBudgetUnavailable"), "the missing budget is reported: {warning}");
    expect(&mut server, Method::PATCH, "/apis/apps/v1/namespaces/ns/statefulsets/demo", None).await;
    expect_status(&mut server, &demo).await;
    reconciling.await.expect("reconcile task").expect("reconcile succeeds without a budget");
}

#[tokio::test]
async fn a_missing_budget_api_is_reported_once_and_not_tried_again() {
    let demo = cluster(1);
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(service, "default")));
    for pass in 0..2 {
        let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx.clone()));
        expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo-peer", None).await;
        expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo", None).await;
        let sts = "/apis/apps/v1/namespaces/ns/statefulsets/demo";
        expect(&mut server, Method::GET, sts, Some(not_found())).await;
        expect_peer_token(&mut server, pass > 0).await;
        if pass == 0 {
            let pdb = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo";
            expect(&mut server, Method::PATCH, pdb, Some(not_found())).await;
            let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
            expect_answered(&mut server, Method::POST, events, |b| (StatusCode::CREATED, b.to_string()))
                .await;
        }
        // The second pass goes straight from the StatefulSet read to its apply.
        expect(&mut server, Method::PATCH, sts, None).await;
        expect_status(&mut server, &demo).await;
        reconciling.await.expect("reconcile task").expect("reconcile succeeds");
    }
}

#[tokio::test]
async fn while_shrinking_the_budget_guards_the_larger_membership_and_each_member_volume_grows() {
    let mut demo = cluster(3);
    demo.spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".into());
    let (mut server, reconciling) = reconcile_against_mock(&demo).await;

    // The StatefulSet still has five pods, with the 1Gi volumes it was created with.
    let live = resources::stateful_set(&cluster(3), 5, true).expect("live StatefulSet");
    let live = serde_json::to_string(&live).expect("json");
    expect(
        &mut server,
        Method::GET,
        "/apis/apps/v1/namespaces/ns/statefulsets/demo",
        Some((StatusCode::OK, live)),
    )
    .await;
    expect_peer_token(&mut server, true).await;
    let pdb = expect_applied(&mut server, "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo").await;
    assert_eq!(pdb["spec"]["minAvailable"], 3, "a majority of the five members still there");
    let sts = expect_applied(&mut server, "/apis/apps/v1/namespaces/ns/statefulsets/demo").await;
    assert_eq!(sts["spec"]["replicas"], 5, "pods go only after their members left raft");
    let size = &sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"];
    assert_eq!(size, "1Gi", "claim templates cannot change; the live ones are kept");

    // Each member's claim is asked for 5Gi instead: one already has it, one's storage class
    // cannot expand, one claim is gone (its pod is being replaced).
    for ordinal in 0..5 {
        let path = format!("/api/v1/namespaces/ns/persistentvolumeclaims/data-demo-{ordinal}");
        let size = if ordinal == 1 { "5Gi" } else { "1Gi" };
        let claim = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("data-demo-{ordinal}"), "namespace": "ns"},
            "spec": {"resources": {"requests": {"storage": size}}},
        });
        let answer = if ordinal == 4 { not_found() } else { (StatusCode::OK, claim.to_string()) };
        expect(&mut server, Method::GET, &path, Some(answer)).await;
        if ordinal == 1 || ordinal == 4 {
            continue;
        }
        let patch = expect_answered(&mut server, Method::PATCH, &path, |body| {
            if ordinal == 3 {
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "Forbidden", "code": 403,
                    "message": "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
                });
                (StatusCode::FORBIDDEN, status.to_string())
            } else {
                (StatusCode::OK, body.to_string())
            }
        })
        .await;
        let patch: serde_json::Value = serde_json::from_str(&patch).expect("json");
        assert_eq!(patch["spec"]["resources"]["requests"]["storage"], "5Gi");
    }
    let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
    let expanding =
        expect_answered(&mut server, Method::POST, events, |b| (StatusCode::CREATED, b.to_string())).await;
    assert!(
        expanding.contains("VolumeExpanding") && expanding.contains("data-demo-0, data-demo-2"),
        "{expanding}"
    );
    let refused =
        expect_answered(&mut server, Method::POST, events, |b| (StatusCode::CREATED, b.to_string())).await;
    assert!(
        refused.contains("VolumeExpansionRefused") && refused.contains("data-demo-3: only dynamically"),
        "{refused}"
    );
    expect_status(&mut server, &demo).await;
    reconciling.await.expect("reconcile task").expect("reconcile succeeds");
}

/// Expects the two Service applies every reconcile starts with.
async fn expect_services(server: &mut ApiServer) {
    expect(server, Method::PATCH, "/api/v1/namespaces/ns/services/demo-peer", None).await;
    expect(server, Method::PATCH, "/api/v1/namespaces/ns/services/demo", None).await;
}

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    let conditions = status["status"]["conditions"].as_array().expect("conditions");
    conditions.iter().find(|c| c["type"] == kind).expect("condition")
}

const STATEFUL_SET: &str = "/apis/apps/v1/namespaces/ns/statefulsets/demo";
const BUDGET: &str = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo";

async fn three_running_members(mut members: support::LocalStatefulSet) -> support::LocalStatefulSet {
    members.converge(3).await;
    members
}

/// A bootstrapped cluster whose spec went from three members to two, and a reconciler that
/// reaches `members` and a mocked API server.
fn shrinking_to_two(members: &support::LocalStatefulSet) -> (MetaStoreCluster, ApiServer, Arc<Context>) {
    let mut demo = cluster(2);
    demo.status =
        Some(metastore_operator::crd::MetaStoreClusterStatus { bootstrapped: true, ..Default::default() });
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(Client::new(service, "default")).with_directory(Arc::new(members.directory()));
    (demo, server, Arc::new(ctx))
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_down_takes_the_highest_member_out_of_raft_before_the_statefulset_shrinks() {
    let members = three_running_members(support::LocalStatefulSet::new()).await;
    let (demo, mut server, ctx) = shrinking_to_two(&members);
    let (sts, pdb) = (STATEFUL_SET, BUDGET);
    // Created without peer authentication: a bootstrapped cluster stays as it was started.
    let live =
        serde_json::to_string(&resources::stateful_set(&cluster(3), 3, false).expect("sts")).expect("json");

    // First pass: member 3 leaves raft while its pod stays.
    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx.clone()));
    expect_services(&mut server).await;
    expect(&mut server, Method::GET, sts, Some((StatusCode::OK, live.clone()))).await;
    assert_eq!(expect_applied(&mut server, pdb).await["spec"]["minAvailable"], 2, "a majority of three");
    let applied = expect_applied(&mut server, sts).await;
    assert_eq!(applied["spec"]["replicas"], 3, "the pod stays for now");
    let env = applied["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("METASTORE_PEER_TOKEN"), "no token forced on running members");
    let event =
        expect_answered(&mut server, Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", |b| {
            (StatusCode::CREATED, b.to_string())
        })
        .await;
    let event: serde_json::Value = serde_json::from_str(&event).expect("json");
    assert_eq!(
        (event["reason"].as_str(), event["related"]["name"].as_str()),
        (Some("MemberRemoved"), Some("demo-2"))
    );
    let status = expect_status(&mut server, &demo).await;
    assert_eq!(status["status"]["phase"], "Scaling");
    assert_eq!(condition(&status, "Progressing")["reason"], "RemovingMember");
    let action = reconciling.await.expect("reconcile task").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(BUSY_REQUEUE));
    assert_eq!(members.voters().await, [1, 2], "member 3 left raft");

    // Second pass: only now does the StatefulSet shrink.
    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx.clone()));
    expect_services(&mut server).await;
    expect(&mut server, Method::GET, sts, Some((StatusCode::OK, live))).await;
    assert_eq!(expect_applied(&mut server, pdb).await["spec"]["minAvailable"], 2, "three pods still run");
    assert_eq!(expect_applied(&mut server, sts).await["spec"]["replicas"], 2, "now the pod goes");
    let status = expect_status(&mut server, &demo).await;
    assert_eq!(condition(&status, "Progressing")["reason"], "ScalingStatefulSet");
    reconciling.await.expect("reconcile task").expect("reconcile succeeds");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_membership_change_presents_the_token_read_from_the_clusters_secret() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let members = three_running_members(support::LocalStatefulSet::with_peer_token(TOKEN)).await;
    let (demo, mut server, ctx) = shrinking_to_two(&members);
    let (sts, pdb) = (STATEFUL_SET, BUDGET);
    let secret = "/api/v1/namespaces/ns/secrets/demo-peer-token";
    let live =
        serde_json::to_string(&resources::stateful_set(&cluster(3), 3, true).expect("sts")).expect("json");

    // The Secret is gone (deleted by hand): the reconcile fails, saying so, and changes nothing.
    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx.clone()));
    expect_services(&mut server).await;
    expect(&mut server, Method::GET, sts, Some((StatusCode::OK, live.clone()))).await;
    expect_applied(&mut server, pdb).await;
    expect_applied(&mut server, sts).await;
    expect(&mut server, Method::GET, secret, Some(not_found())).await;
    let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
    let warning =
        expect_answered(&mut server, Method::POST, events, |b| (StatusCode::CREATED, b.to_string())).await;
    assert!(
        warning.contains("PeerTokenUnavailable"),
        "the missing Secret is reported on the cluster: {warning}"
    );
    let failed = reconciling.await.expect("reconcile task").expect_err("no token, no membership change");
    assert!(matches!(failed, Error::PeerToken { .. }), "{failed}");
    assert_eq!(members.voters().await, [1, 2, 3]);

    // With the Secret, the member leaves raft: the members took the token.
    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx.clone()));
    expect_services(&mut server).await;
    expect(&mut server, Method::GET, sts, Some((StatusCode::OK, live))).await;
    expect_applied(&mut server, pdb).await;
    expect_applied(&mut server, sts).await;
    let stored = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "demo-peer-token", "namespace": "ns" },
        "data": { "token": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" }
    });
    expect(&mut server, Method::GET, secret, Some((StatusCode::OK, stored.to_string()))).await;
    let event =
        expect_answered(&mut server, Method::POST, events, |b| (StatusCode::CREATED, b.to_string())).await;
    assert!(event.contains("MemberRemoved"), "{event}");
    expect_status(&mut server, &demo).await;
    reconciling.await.expect("reconcile task").expect("reconcile succeeds");
    assert_eq!(members.voters().await, [1, 2]);
}

#[tokio::test]
async fn a_scheduled_backup_that_is_due_is_made_for_its_occurrence_before_anything_else() {
    let mut demo = cluster(3);
    let daily = serde_json::json!({"schedule": "0 3 * * *", "s3": {"bucket": "backups"}});
    demo.spec.backup = Some(serde_json::from_value(daily).expect("schedule"));
    let two_days_ago =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(48);
    let previous = serde_json::json!({"backups": {"schedule": "0 3 * * *", "lastScheduleTime": two_days_ago.to_string()}});
    demo.status = Some(serde_json::from_value(previous).expect("status"));
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(Client::new(service, "default")));
    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx));

    let backups = "/apis/metastore.io/v1alpha1/namespaces/ns/metastorebackups";
    let empty = serde_json::json!({"apiVersion": "metastore.io/v1alpha1", "kind": "MetaStoreBackupList", "metadata": {}, "items": []});
    expect(&mut server, Method::GET, backups, Some((StatusCode::OK, empty.to_string()))).await;
    // Made already by a pass that could not record it: a conflict, not a second backup.
    let made = expect_answered(&mut server, Method::POST, backups, |_| {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "already exists"
        });
        (StatusCode::CONFLICT, status.to_string())
    })
    .await;
    let made: serde_json::Value = serde_json::from_str(&made).expect("json");
    let name = made["metadata"]["name"].as_str().expect("a name");
    assert!(name.starts_with("demo-") && name.ends_with("-030000"), "named for the 03:00 occurrence: {name}");
    assert_eq!(made["metadata"]["labels"]["metastore.io/scheduled"], "true");
    assert_eq!(made["metadata"]["ownerReferences"][0]["name"], "demo", "collected with its cluster");
    assert_eq!(made["spec"]["clusterName"], "demo");

    expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo-peer", None).await;
    expect(&mut server, Method::PATCH, "/api/v1/namespaces/ns/services/demo", None).await;
    expect(&mut server, Method::GET, "/apis/apps/v1/namespaces/ns/statefulsets/demo", Some(not_found()))
        .await;
    expect_peer_token(&mut server, false).await;
    expect_applied(&mut server, "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo").await;
    expect_applied(&mut server, "/apis/apps/v1/namespaces/ns/statefulsets/demo").await;
    let status = expect_status(&mut server, &demo).await;
    let recorded = &status["status"]["backups"];
    assert_eq!(recorded["schedule"], "0 3 * * *");
    let occurrence = recorded["lastScheduleTime"].as_str().expect("the occurrence is recorded");
    assert!(occurrence.ends_with("T03:00:00Z"), "{occurrence}");
    reconciling.await.expect("reconcile task").expect("reconcile succeeds");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_made_by_an_earlier_operator_stops_rolling_by_itself_before_it_is_applied() {
    let members = three_running_members(support::LocalStatefulSet::new()).await;
    let mut demo = cluster(3);
    demo.status =
        Some(metastore_operator::crd::MetaStoreClusterStatus { bootstrapped: true, ..Default::default() });
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx =
        Arc::new(Context::new(Client::new(service, "default")).with_directory(Arc::new(members.directory())));
    // As the API server keeps one made without an update strategy: RollingUpdate, defaulted.
    let mut earlier = resources::stateful_set(&cluster(3), 3, false).expect("sts");
    let spec = earlier.spec.as_mut().expect("spec");
    spec.update_strategy = serde_json::from_value(
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    )
    .expect("strategy");
    let live = serde_json::to_string(&earlier).expect("json");

    let reconciling = tokio::spawn(reconcile(Arc::new(demo.clone()), ctx));
    expect_services(&mut server).await;
    expect(&mut server, Method::GET, STATEFUL_SET, Some((StatusCode::OK, live))).await;
    expect_applied(&mut server, BUDGET).await;
    // Server-side apply of OnDelete alone would keep the defaulted `rollingUpdate`, which the
    // API server refuses beside OnDelete: one merge patch sets both first.
    let patch = expect(&mut server, Method::PATCH, STATEFUL_SET, None).await;
    let patch: serde_json::Value = serde_json::from_str(&patch).expect("json");
    assert_eq!(
        patch,
        serde_json::json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}})
    );
    let applied = expect_applied(&mut server, STATEFUL_SET).await;
    assert_eq!(applied["spec"]["updateStrategy"]["type"], "OnDelete");
    let status = expect_status(&mut server, &demo).await;
    assert_eq!(condition(&status, "Updated")["status"], "True");
    reconciling.await.expect("reconcile task").expect("reconcile succeeds");
}
