//! The reconciler: one pass turns a `MetaStoreCluster` into its children, observes the members,
//! carries out at most one membership step, and records the status.
//!
//! apply children → observe members → plan one step → carry it out → write status → requeue

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backup::restoring::{self, Restore};
use crate::crd::{MetaStoreCluster, MetaStoreClusterStatus, Phase, RestorePhase, RestoreStatus};
use crate::executor::{self, MemberDirectory};
use crate::membership::{self, Removal, Step};
use crate::metrics::Metrics;
use crate::resources::{self, volumes, Names};
use crate::rollout::{self, PodState, Roll};
use crate::{backup, status, Error};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "metastore-operator";
/// Requeue soon while a change is in flight, rarely once converged.
pub const BUSY_REQUEUE: Duration = Duration::from_secs(2);
pub const IDLE_REQUEUE: Duration = Duration::from_secs(30);

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

    /// Members reached through `directory` instead of their pods' DNS names (tests).
    pub fn with_directory(mut self, directory: Arc<dyn MemberDirectory>) -> Self {
        self.directory = Some(directory);
        self
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

/// The most of a note an Event holds (Kubernetes refuses the whole Event beyond it).
const EVENT_NOTE_LIMIT: usize = 1024;

/// `note`, cut to what an Event holds.
pub(crate) fn event_note(mut note: String) -> String {
    if note.len() > EVENT_NOTE_LIMIT {
        let mut end = EVENT_NOTE_LIMIT - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
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
        note: Some(event_note(notice.note)),
        action: notice.action.to_string(),
        secondary: notice.member.map(pod),
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, reason = notice.reason, "cannot record an event");
    }
}

/// Asks each member's claim for the spec's storage size where the claims were made smaller
/// (no API call at all while the spec asks for what the claim templates say; once it asks for
/// more, one read per member per pass). A claim whose storage class cannot expand is refused
/// by Kubernetes: that is a Warning Event, not a failed reconcile.
async fn expand_volumes(
    ctx: &Context,
    cluster: &MetaStoreCluster,
    names: &Names,
    live: &StatefulSet,
    replicas: i32,
) -> Result<(), Error> {
    let wanted = &cluster.spec.storage.size;
    if !volumes::template_size(live).is_some_and(|made| volumes::grows(made, wanted)) {
        return Ok(());
    }
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &names.namespace);
    let (mut grown, mut refused) = (Vec::new(), Vec::new());
    for ordinal in 0..u64::try_from(replicas).unwrap_or(0) {
        let name = volumes::claim_name(names, ordinal);
        // The membership work must not wait on volumes: a claim that cannot be read is tried
        // again in the next pass.
        let claim = match claims.get_opt(&name).await {
            Ok(Some(claim)) => claim,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(cluster = %names.cluster, claim = %name, error = %e, "cannot read a volume claim");
                continue;
            }
        };
        if !volumes::claim_size(&claim).is_some_and(|size| volumes::grows(size, wanted)) {
            continue;
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": wanted}}}});
        match claims.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => grown.push(name),
            // What Kubernetes answers when the claim's storage class cannot grow (or the claim
            // is not bound yet).
            Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
                // The first line says why (a diff of the claim may follow), once the claim's
                // own name is out of it, alike for every claim refused for one reason.
                let first = status.message.lines().next().unwrap_or_default();
                let why = first.replace(&format!("PersistentVolumeClaim \"{name}\" "), "");
                refused.push((name, why))
            }
            Err(e) => {
                tracing::warn!(cluster = %names.cluster, claim = %name, error = %e, "cannot grow a volume claim")
            }
        }
    }
    if !grown.is_empty() {
        let note = format!("asked {} for {}", grown.join(", "), wanted.0);
        let notice = Notice {
            type_: EventType::Normal,
            reason: "VolumeExpanding",
            action: "ExpandVolume",
            note,
            member: None,
        };
        event(ctx, cluster, names, notice).await;
    }
    if !refused.is_empty() {
        // Claims refused alike are named together: three long answers would not fit an Event.
        let mut why: Vec<(String, Vec<String>)> = Vec::new();
        for (claim, message) in refused {
            match why.iter_mut().find(|(m, _)| *m == message) {
                Some((_, claims)) => claims.push(claim),
                None => why.push((message, vec![claim])),
            }
        }
        let why: Vec<String> =
            why.into_iter().map(|(m, claims)| format!("{}: {m}", claims.join(", "))).collect();
        let note = format!("cannot grow to {}: {}", wanted.0, why.join("; "));
        event(ctx, cluster, names, Notice::warning("VolumeExpansionRefused", "ExpandVolume", note)).await;
    }
    Ok(())
}

/// Creates a new cluster's peer-token Secret, once, before its first member starts; it is
/// never rewritten (an existing one answers 409).
async fn create_peer_token(
    secrets: &Api<Secret>,
    cluster: &MetaStoreCluster,
    names: &Names,
) -> Result<(), Error> {
    let secret = resources::peer_token_secret(cluster, new_token())?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Apply { kind: "Secret".into(), name: names.peer_token_secret(), source }),
    }
}

/// The cluster's peer token, which its members require on membership changes. Read only when
/// a change is about to be made, and only this cluster's own Secret.
pub(crate) async fn read_peer_token(secrets: &Api<Secret>, names: &Names) -> Result<String, Error> {
    let name = names.peer_token_secret();
    let failed = |reason: String| Error::PeerToken { name: name.clone(), reason };
    let secret = secrets.get_opt(&name).await.map_err(|e| failed(e.to_string()))?;
    let secret = secret
        .ok_or_else(|| failed("it does not exist: membership cannot change until it is restored".into()))?;
    let token = secret.data.as_ref().and_then(|d| d.get(resources::PEER_TOKEN_KEY));
    let token = token.ok_or_else(|| failed(format!("it has no `{}` key", resources::PEER_TOKEN_KEY)))?;
    String::from_utf8(token.0.clone()).map_err(|_| failed("the token is not UTF-8".into()))
}

/// Whether a cluster's members were started with a peer token. A cluster bootstrapped without
/// one keeps running without: turning authentication on needs every member restarted at once,
/// or the first to get the token is cut off from the others.
fn uses_peer_token(stateful_set: &StatefulSet) -> bool {
    let pod = stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    pod.iter()
        .flat_map(|p| &p.containers)
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| e.name == "METASTORE_PEER_TOKEN")
}

/// 256 random bits from the operating system, as hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The annotation that stops the operator from changing anything of one cluster (`"true"`):
/// for maintenance by hand. Removing it resumes reconciling at once.
pub const PAUSED_ANNOTATION: &str = "metastore.io/paused";

fn is_paused(cluster: &MetaStoreCluster) -> bool {
    cluster.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true")
}

/// Looks after `cluster`'s scheduled backups: its `status.backups` and when the next is due.
/// A failure is an Event (and the previous status is kept), never a failed reconcile.
async fn scheduled_backups(
    ctx: &Context,
    cluster: &MetaStoreCluster,
    names: &Names,
) -> (Option<crate::crd::BackupsStatus>, Option<Duration>) {
    let previous = cluster.status.as_ref().and_then(|s| s.backups.clone());
    match backup::schedule::reconcile(&ctx.client, cluster, chrono::Utc::now()).await {
        Ok(Some((backups, due_in))) => (Some(backups), due_in),
        Ok(None) => (previous, None),
        Err(e) => {
            tracing::warn!(cluster = %names.cluster, error = %e, "cannot look after scheduled backups");
            let notice = Notice::warning("BackupScheduleFailed", "ScheduleBackup", e.to_string());
            event(ctx, cluster, names, notice).await;
            (previous, Some(BUSY_REQUEUE * 15))
        }
    }
}

/// The Event of a restore's new phase.
fn restore_notice(restore: &RestoreStatus) -> Notice {
    let location = restore.location.as_deref().unwrap_or("the backup");
    let normal =
        |reason, note| Notice { type_: EventType::Normal, reason, action: "Restore", note, member: Some(1) };
    match restore.phase {
        RestorePhase::Restoring if restore.message.is_some() => Notice {
            member: Some(1),
            ..Notice::warning("RestoreStalled", "Restore", restore.message.clone().unwrap_or_default())
        },
        RestorePhase::Restoring => {
            let bytes = restore.size_bytes.unwrap_or(0);
            normal("Restoring", format!("{location} is whole ({bytes} bytes): member 1 restores it"))
        }
        RestorePhase::Restored => {
            normal("Restored", format!("member 1 leads the store restored from {location}"))
        }
        RestorePhase::Failed => Notice::warning(
            "RestoreFailed",
            "Restore",
            restore.message.clone().unwrap_or_else(|| "the restore failed".into()),
        ),
    }
}

/// Records a restore that cannot start: the cluster's only status (nothing of it exists), and
/// a Warning. Tried again after a while, or as soon as the spec changes.
async fn restore_failed(
    ctx: &Context,
    cluster: &MetaStoreCluster,
    names: &Names,
    failed: &RestoreStatus,
) -> Result<Action, Error> {
    event(ctx, cluster, names, restore_notice(failed)).await;
    let previous = cluster.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = cluster.metadata.generation;
    let status = MetaStoreClusterStatus {
        phase: Some(Phase::Failed),
        conditions: vec![status::restore_condition(failed, &previous, generation, &now)],
        observed_generation: generation,
        selector: Some(resources::selector_string(names)),
        restore: Some(failed.clone()),
        ..MetaStoreClusterStatus::default()
    };
    write_status(ctx, cluster, &status).await?;
    Ok(Action::requeue(restoring::RETRY_AFTER))
}

async fn write_status(
    ctx: &Context,
    cluster: &MetaStoreCluster,
    status: &MetaStoreClusterStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "metastore.io/v1alpha1",
        "kind": "MetaStoreCluster",
        "status": status,
    });
    let ns = cluster.namespace().unwrap_or_default();
    Api::<MetaStoreCluster>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&cluster.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(drop)
        .map_err(|source| Error::Apply {
            kind: "MetaStoreCluster/status".into(),
            name: cluster.name_any(),
            source,
        })
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
    if is_paused(&cluster) {
        tracing::info!(cluster = %names.cluster, "paused: changing nothing");
        let note =
            format!("the {PAUSED_ANNOTATION} annotation is set: nothing is changed until it is removed");
        let notice =
            Notice { type_: EventType::Normal, reason: "Paused", action: "Pause", note, member: None };
        event(&ctx, &cluster, &names, notice).await;
        return Ok(Action::await_change());
    }
    let bootstrapped = cluster.status.as_ref().is_some_and(|s| s.bootstrapped);
    // A restore that cannot start creates nothing: before any object of the cluster exists.
    let restore = restoring::reconcile(client, &cluster, &names, bootstrapped).await?;
    if let Restore::Failed(failed) = &restore {
        return restore_failed(&ctx, &cluster, &names, failed).await;
    }
    // Scheduled backups first: a cluster whose membership work fails needs them most.
    let (backups, backups_due_in) = scheduled_backups(&ctx, &cluster, &names).await;

    apply(&Api::<Service>::namespaced(client.clone(), ns), &resources::peer_service(&cluster)?).await?;
    apply(&Api::<Service>::namespaced(client.clone(), ns), &resources::client_service(&cluster)?).await?;

    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let current = sts_api.get_opt(&names.stateful_set()).await.map_err(Error::Kube)?;
    let peer_auth = if bootstrapped {
        current.as_ref().is_some_and(uses_peer_token)
    } else {
        create_peer_token(&Api::namespaced(client.clone(), ns), &cluster, &names).await?;
        true
    };
    let sts_replicas = current.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0);
    let pod_ids: Vec<u64> = (1..=sts_replicas.max(0) as u64).collect();

    let directory: &dyn MemberDirectory = match &ctx.directory {
        Some(d) => d.as_ref(),
        None => &names,
    };
    let mut observation = executor::observe(directory, &pod_ids, sts_replicas, bootstrapped).await;
    observation.observed.restoring = matches!(restore, Restore::Restoring(_));
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
    let mut desired = resources::stateful_set(&cluster, replicas, peer_auth)?;
    if restore.began() {
        resources::start_from_backup(&mut desired, &cluster)?;
    }
    if let (Some(live), Some(spec)) = (current.as_ref().and_then(|s| s.spec.as_ref()), desired.spec.as_mut())
    {
        // Kubernetes forbids changing a StatefulSet's volume claim templates: keep the live ones,
        // and grow each member's claim instead.
        spec.volume_claim_templates = live.volume_claim_templates.clone();
    }
    if current.as_ref().is_some_and(rolls_by_itself) {
        // A StatefulSet made by an earlier operator has `rollingUpdate` set (by the API
        // server's defaults, owned by nobody): applying `OnDelete` alone would be refused with
        // it, so both go in one patch first.
        let patch =
            serde_json::json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}});
        sts_api.patch(&names.stateful_set(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(
            |source| Error::Apply { kind: "StatefulSet".into(), name: names.stateful_set(), source },
        )?;
    }
    let applied = apply(&sts_api, &desired).await?;
    if let Some(live) = &current {
        expand_volumes(&ctx, &cluster, &names, live, replicas).await?;
    }

    let token = if peer_auth && step.changes_membership() {
        match read_peer_token(&Api::namespaced(client.clone(), ns), &names).await {
            Ok(token) => Some(token),
            Err(e) => {
                let note = e.to_string();
                event(
                    &ctx,
                    &cluster,
                    &names,
                    Notice::warning("PeerTokenUnavailable", "ChangeMembership", note),
                )
                .await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let outcome = executor::execute(directory, &observation, &step, token.as_deref()).await;
    if let Some(notice) = notice(&step, &outcome) {
        event(&ctx, &cluster, &names, notice).await;
    }
    // A changed template rolls through the members only while the membership is settled.
    let roll = match (&step, &outcome) {
        (Step::Done, Ok(())) => Some(roll(&ctx, &cluster, &names, &applied, directory, peer_auth).await?),
        _ => None,
    };

    let previous = cluster.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut new_status =
        status::build(&names, cluster.metadata.generation, &observation, &step, &previous, &now);
    if step == Step::Bootstrap && outcome.is_ok() {
        new_status.bootstrapped = true;
    }
    new_status.backups = backups;
    status::record_roll(&mut new_status, roll.as_ref(), &previous, &now);
    if let Some(restore) = restore.status().cloned() {
        let was = cluster.status.as_ref().and_then(|s| s.restore.as_ref());
        if was.map(|r| (r.phase, &r.message)) != Some((restore.phase, &restore.message)) {
            event(&ctx, &cluster, &names, restore_notice(&restore)).await;
        }
        let generation = cluster.metadata.generation;
        new_status.conditions.push(status::restore_condition(&restore, &previous, generation, &now));
        new_status.restore = Some(restore);
    }
    write_status(&ctx, &cluster, &new_status).await?;

    outcome?;
    let requeue = match (&step, &roll) {
        (Step::Done, Some(Roll::Done)) => IDLE_REQUEUE,
        _ => BUSY_REQUEUE,
    };
    // Woken for the next scheduled backup, if that comes first (never busier than every 2 s).
    Ok(Action::requeue(backups_due_in.map_or(requeue, |due| requeue.min(due.max(BUSY_REQUEUE)))))
}

/// One step of rolling the StatefulSet's current template through the members (see
/// [`rollout`]), given the StatefulSet as this pass applied it: what was done, or why not. No API
/// call while every pod runs the current template and is ready.
async fn roll(
    ctx: &Context,
    cluster: &MetaStoreCluster,
    names: &Names,
    applied: &StatefulSet,
    directory: &dyn MemberDirectory,
    peer_auth: bool,
) -> Result<Roll, Error> {
    let Some(status) = applied.status.as_ref() else { return Ok(Roll::Done) };
    if status.observed_generation < applied.metadata.generation {
        return Ok(Roll::Wait("the StatefulSet controller has yet to see the new template".into()));
    }
    let replicas = status.replicas;
    if status.updated_replicas.unwrap_or(0) >= replicas && status.ready_replicas.unwrap_or(0) >= replicas {
        return Ok(Roll::Done);
    }
    // The pods first, the members after: a member's answer is then never older than the pod
    // list (a pod deleted since shows as missing, one made again answers as itself).
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &names.namespace);
    let selector = resources::selector_string(names);
    let listed =
        pods_api.list(&kube::api::ListParams::default().labels(&selector)).await.map_err(Error::Kube)?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let pods: Vec<PodState> = listed.items.iter().filter_map(|p| PodState::of(p, names, now)).collect();
    let count = u64::try_from(replicas).unwrap_or(0);
    let ids: Vec<u64> = (1..=count).collect();
    let fresh = executor::observe(directory, &ids, replicas, true).await;
    let step = rollout::plan(status.update_revision.as_deref(), count, &pods, &fresh.observed);
    tracing::info!(cluster = %names.cluster, ?step, "rolling");
    let member_notice = |reason, note: String, id| Notice {
        type_: EventType::Normal,
        reason,
        action: "Roll",
        note,
        member: Some(id),
    };
    match &step {
        Roll::Restart { id } => {
            // An eviction, so that the disruption budget arbitrates between the roll and a
            // drain taking a member at the same time. The budget of a cluster of one or two
            // (a majority of all its members) allows none, by construction: their restarts
            // are deletions, and pause writes.
            let pod = names.pod(*id);
            let restarted = if count <= 2 {
                pods_api.delete(&pod, &kube::api::DeleteParams::default()).await.map(drop)
            } else {
                pods_api.evict(&pod, &kube::api::EvictParams::default()).await.map(drop)
            };
            match restarted {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    return Ok(Roll::Wait(format!(
                        "the disruption budget allows no restart of member {id} now"
                    )));
                }
                // Gone already: the StatefulSet makes it anew all the same.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    let note = format!("cannot restart member {id}: {e}");
                    let notice = Notice::warning("RollStepFailed", "Roll", note.clone());
                    event(ctx, cluster, names, Notice { member: Some(*id), ..notice }).await;
                    return Ok(Roll::Wait(note));
                }
            }
            let note = format!("restarting member {id} on the current template");
            event(ctx, cluster, names, member_notice("MemberRestarted", note, *id)).await;
        }
        Roll::TransferLeadership { from, to } => {
            let mut client = metastore_client::Client::new(directory.client_url(*from));
            if peer_auth {
                let secrets = Api::namespaced(ctx.client.clone(), &names.namespace);
                client = client.with_token(read_peer_token(&secrets, names).await?);
            }
            match client.transfer_leadership(*to).await {
                Ok(_) => {
                    let note = format!("member {from} handed leadership to member {to} before its restart");
                    event(ctx, cluster, names, member_notice("LeadershipTransferred", note, *to)).await;
                }
                // Tried again next pass, from what is observed then.
                Err(e) => {
                    let note = format!("member {from} could not hand leadership to member {to}: {e}");
                    let notice = Notice::warning("LeadershipTransferFailed", "Roll", note);
                    event(ctx, cluster, names, Notice { member: Some(*from), ..notice }).await;
                }
            }
        }
        Roll::Halt(why) => {
            event(ctx, cluster, names, Notice::warning("RollHalted", "Roll", why.clone())).await
        }
        Roll::Wait(_) | Roll::Done => {}
    }
    Ok(step)
}

/// Whether a StatefulSet still updates its pods by itself: one made by an earlier operator.
fn rolls_by_itself(stateful_set: &StatefulSet) -> bool {
    let strategy = stateful_set.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete")
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

    #[test]
    fn a_long_note_is_cut_to_what_an_event_holds() {
        assert_eq!(event_note("short".into()), "short");
        let long = event_note("é".repeat(EVENT_NOTE_LIMIT));
        assert!(long.len() <= EVENT_NOTE_LIMIT && long.ends_with('…'), "{} bytes", long.len());
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
}
