//! The reconciler: one pass turns a `MetaStoreCluster` into its children, observes the members,
//! carries out at most one membership step, and records the status.
//!
//! apply children → observe members → plan one step → carry it out → write status → requeue

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::MetaStoreCluster;
use crate::executor::{self, MemberDirectory};
use crate::membership::{self, Removal, Step};
use crate::metrics::Metrics;
use crate::resources::{self, Names};
use crate::{status, Error};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "metastore-operator";
/// Requeue soon while a change is in flight, rarely once converged.
const BUSY_REQUEUE: Duration = Duration::from_secs(2);
const IDLE_REQUEUE: Duration = Duration::from_secs(30);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// How members are reached; pod DNS names unless a test says otherwise.
    pub directory: Option<Arc<dyn MemberDirectory>>,
    pub metrics: Arc<Metrics>,
    /// Clusters told that this API server has no `policy/v1` PodDisruptionBudget (Kubernetes
    /// before 1.21): once is enough, and the budget is not tried again until a restart.
    budgets_unavailable: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
}

impl Context {
    pub fn new(client: Client) -> Self {
        let reporter = Reporter { controller: MANAGER.to_string(), instance: std::env::var("HOSTNAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            directory: None,
            metrics: Arc::default(),
            budgets_unavailable: std::sync::Mutex::default(),
        }
    }

    /// Whether the API server was found to lack PodDisruptionBudgets; if so, also whether
    /// `cluster` was already told.
    fn budgets(&self, cluster: &str) -> Budgets {
        let Ok(told) = self.budgets_unavailable.lock() else { return Budgets::Supported };
        match told.as_ref() {
            None => Budgets::Supported,
            Some(told) if told.contains(cluster) => Budgets::UnavailableAndReported,
            Some(_) => Budgets::Unavailable,
        }
    }

    fn budgets_unavailable(&self, cluster: &str) {
        if let Ok(mut told) = self.budgets_unavailable.lock() {
            told.get_or_insert_with(Default::default).insert(cluster.to_string());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budgets {
    Supported,
    Unavailable,
    UnavailableAndReported,
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Apply { source: kube::Error::Api(status), .. } if status.code == 404)
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(|source| Error::Apply { kind: K::kind(&()).to_string(), name, source })
}

/// An Event to record on a cluster. Kubernetes (and kube's recorder) treat events with the
/// same reason, action and related object as one event happening again, keeping the first
/// note: so each member's events name its pod as the related object, and a member replaced
/// for lost storage has its own reason, distinct from one removed by a scale-down.
struct Notice {
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
    member: Option<u64>,
}

impl Notice {
    fn warning(reason: &'static str, action: &'static str, note: String) -> Self {
        Self { type_: EventType::Warning, reason, action, note, member: None }
    }
}

/// What a membership step's outcome is worth telling the cluster's users.
fn notice(step: &Step, outcome: &Result<(), executor::ExecError>) -> Option<Notice> {
    let normal = |reason, action, note: String, member| Notice {
        type_: EventType::Normal,
        reason,
        action,
        note,
        member,
    };
    let member = match step {
        Step::AddLearner { id } | Step::Promote { id } | Step::Remove { id, .. } => Some(*id),
        _ => None,
    };
    Some(match (step, outcome) {
        (_, Err(e)) => {
            Notice { member, ..Notice::warning("MembershipStepFailed", "ChangeMembership", e.to_string()) }
        }
        (Step::Bootstrap, Ok(())) => {
            normal("Bootstrapped", "Initialize", "initialized member 1".into(), Some(1))
        }
        (Step::Promote { id }, Ok(())) => {
            normal("MemberAdded", "Promote", format!("member {id} is a voter"), member)
        }
        (Step::Remove { id, why: Removal::ScaleDown }, Ok(())) => {
            normal("MemberRemoved", "Remove", format!("member {id} left the cluster"), member)
        }
        (Step::Remove { id, why: Removal::StorageLost }, Ok(())) => normal(
            "MemberStorageLost",
            "Remove",
            format!("member {id} lost its storage; it will be added anew"),
            member,
        ),
        (Step::Refuse(why), Ok(())) => Notice::warning("QuorumAtRisk", "Refuse", why.clone()),
        _ => return None,
    })
}

async fn event(ctx: &Context, cluster: &MetaStoreCluster, names: &Names, notice: Notice) {
    let pod = |id: u64| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(names.pod(id)),
        namespace: Some(names.namespace.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: notice.type_,
        reason: notice.reason.to_string(),
        note: Some(notice.note),
        action: notice.action.to_string(),
        secondary: notice.member.map(pod),
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason = notice.reason, "cannot record an event");
    }
}

/// One reconcile of `cluster`, timed.
pub async fn reconcile(cluster: Arc<MetaStoreCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_once(cluster, ctx.clone()).await;
    ctx.metrics.reconciled(started.elapsed());
    result
}

async fn reconcile_once(cluster: Arc<MetaStoreCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let names = Names::of(&cluster)?;
    let ns = names.namespace.as_str();
    let client = &ctx.client;

    apply(&Api::<Service>::namespaced(client.clone(), ns), &resources::peer_service(&cluster)?).await?;
    apply(&Api::<Service>::namespaced(client.clone(), ns), &resources::client_service(&cluster)?).await?;

    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let current = sts_api.get_opt(&names.stateful_set()).await.map_err(Error::Kube)?;
    let sts_replicas = current.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0);
    let pod_ids: Vec<u64> = (1..=sts_replicas.max(0) as u64).collect();

    let directory: &dyn MemberDirectory = match &ctx.directory {
        Some(d) => d.as_ref(),
        None => &names,
    };
    let bootstrapped = cluster.status.as_ref().is_some_and(|s| s.bootstrapped);
    let observation = executor::observe(directory, &pod_ids, sts_replicas, bootstrapped).await;
    let step = membership::plan(cluster.spec.replicas, &observation.observed);
    tracing::info!(cluster = %names.cluster, ?step, "reconciling");

    // The budget protects the quorum of the larger of the membership being left and the one
    // being formed, so that a drain during a scale cannot take a majority of either.
    let voters =
        observation.observed.members.iter().filter(|m| m.role == crate::crd::MemberRole::Voter).count();
    let members = cluster.spec.replicas.max(sts_replicas).max(i32::try_from(voters).unwrap_or(i32::MAX));
    let pdb = resources::pod_disruption_budget(&cluster, members)?;
    let key = format!("{ns}/{}", names.cluster);
    let unavailable = match ctx.budgets(&key) {
        Budgets::Supported => {
            match apply(&Api::<PodDisruptionBudget>::namespaced(client.clone(), ns), &pdb).await {
                Ok(_) => None,
                Err(e) if is_not_found(&e) => Some(e.to_string()),
                // Membership must not wait on the budget: say so and go on; the next pass retries.
                Err(e) => {
                    tracing::warn!(cluster = %names.cluster, error = %e, "cannot apply the PodDisruptionBudget");
                    None
                }
            }
        }
        Budgets::Unavailable => Some("this API server has no policy/v1 PodDisruptionBudget".to_string()),
        Budgets::UnavailableAndReported => None,
    };
    if let Some(why) = unavailable {
        // Kubernetes before 1.21 has no policy/v1; the cluster works without a budget, but
        // voluntary disruptions are then not kept from taking a majority: say so, once.
        ctx.budgets_unavailable(&key);
        tracing::warn!(cluster = %names.cluster, error = %why, "no PodDisruptionBudget protects the quorum");
        let note = format!("no PodDisruptionBudget protects the quorum: {why}");
        event(&ctx, &cluster, &names, Notice::warning("DisruptionBudgetUnavailable", "ApplyBudget", note))
            .await;
    }

    // The StatefulSet is applied every time (its template follows the spec); only its replica
    // count waits for the membership plan.
    let replicas = match step {
        Step::ScaleStatefulSet(n) => n,
        _ => sts_replicas,
    };
    let mut desired = resources::stateful_set(&cluster, replicas)?;
    if let (Some(live), Some(spec)) = (current.as_ref().and_then(|s| s.spec.as_ref()), desired.spec.as_mut())
    {
        // Kubernetes forbids changing a StatefulSet's volume claim templates: keep the live ones
        // (a storage change in the spec applies to clusters created after it).
        spec.volume_claim_templates = live.volume_claim_templates.clone();
    }
    apply(&sts_api, &desired).await?;

    let outcome = executor::execute(directory, &observation, &step).await;
    if let Some(notice) = notice(&step, &outcome) {
        event(&ctx, &cluster, &names, notice).await;
    }

    let previous = cluster.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut new_status =
        status::build(&names, cluster.metadata.generation, &observation, &step, &previous, &now);
    if step == Step::Bootstrap && outcome.is_ok() {
        new_status.bootstrapped = true;
    }
    let patch = serde_json::json!({
        "apiVersion": "metastore.io/v1alpha1",
        "kind": "MetaStoreCluster",
        "status": new_status,
    });
    Api::<MetaStoreCluster>::namespaced(client.clone(), ns)
        .patch_status(&cluster.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Apply {
            kind: "MetaStoreCluster/status".into(),
            name: cluster.name_any(),
            source,
        })?;

    outcome?;
    Ok(match step {
        Step::Done => Action::requeue(IDLE_REQUEUE),
        _ => Action::requeue(BUSY_REQUEUE),
    })
}

/// Failed reconciles are retried after a pause; the next pass starts from what it observes.
pub fn error_policy(cluster: Arc<MetaStoreCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.metric_label());
    tracing::warn!(cluster = %cluster.name_any(), error = %error, kind = error.metric_label(), "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
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
            crate::rbac::grants(request.method(), uri.path(), uri.query()),
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
        expect_answered(server, method, path, |body| {
            answer.unwrap_or_else(|| (StatusCode::OK, body.to_string()))
        })
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
        let patch =
            expect_answered(server, Method::PATCH, path, |body| object_with_status(cluster, body)).await;
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
        let pdb =
            expect_applied(&mut server, "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo").await;
        assert_eq!(pdb["spec"]["minAvailable"], 2, "a majority of three");
        let sts = expect_applied(&mut server, "/apis/apps/v1/namespaces/ns/statefulsets/demo").await;
        assert_eq!(sts["spec"]["replicas"], 3, "the StatefulSet is created at the desired size");
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

    #[test]
    fn each_member_event_names_its_pod_and_a_replacement_is_not_a_scale_down() {
        let scale_down = notice(&Step::Remove { id: 5, why: Removal::ScaleDown }, &Ok(())).expect("event");
        let lost = notice(&Step::Remove { id: 3, why: Removal::StorageLost }, &Ok(())).expect("event");
        assert_eq!((scale_down.reason, scale_down.member), ("MemberRemoved", Some(5)));
        assert_eq!((lost.reason, lost.member), ("MemberStorageLost", Some(3)));
        assert!(lost.note.contains("lost its storage"));
        let added = notice(&Step::Promote { id: 4 }, &Ok(())).expect("event");
        assert_eq!((added.reason, added.member), ("MemberAdded", Some(4)));
        assert!(notice(&Step::Done, &Ok(())).is_none());
        assert!(notice(&Step::AddLearner { id: 2 }, &Ok(())).is_none(), "the promotion tells");
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
    async fn while_shrinking_the_budget_guards_the_larger_membership_and_volumes_stay_as_they_are() {
        let mut demo = cluster(3);
        demo.spec.storage.size = k8s_openapi::apimachinery::pkg::api::resource::Quantity("5Gi".into());
        let (mut server, reconciling) = reconcile_against_mock(&demo).await;

        // The StatefulSet still has five pods, with the 1Gi volumes it was created with.
        let live = resources::stateful_set(&cluster(3), 5).expect("live StatefulSet");
        let live = serde_json::to_string(&live).expect("json");
        expect(
            &mut server,
            Method::GET,
            "/apis/apps/v1/namespaces/ns/statefulsets/demo",
            Some((StatusCode::OK, live)),
        )
        .await;
        let pdb =
            expect_applied(&mut server, "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo").await;
        assert_eq!(pdb["spec"]["minAvailable"], 3, "a majority of the five members still there");
        let sts = expect_applied(&mut server, "/apis/apps/v1/namespaces/ns/statefulsets/demo").await;
        assert_eq!(sts["spec"]["replicas"], 5, "pods go only after their members left raft");
        let size = &sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"];
        assert_eq!(size, "1Gi", "claim templates cannot change; the live ones are kept");
        expect_status(&mut server, &demo).await;
        reconciling.await.expect("reconcile task").expect("reconcile succeeds");
    }
}
