//! The end-to-end scenarios, the same on every provider: what a user does to a metaStore
//! cluster on Kubernetes, and what must then hold.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use metastore_client::{Client, ClusterStatus, Consistency, MemberRole, RangeRequest};
use metastore_operator::backup::{
    BackupPhase, Credentials, MetaStoreBackup, MetaStoreBackupStatus, S3Destination,
};
use metastore_operator::crd::{MetaStoreCluster, RestorePhase};
use metastore_robustness::checker::{self, Verdict};
use metastore_robustness::member::{Member, Protocol};
use metastore_robustness::workload::{ClientTask, Recorder, Workload};
use metastore_testkit::s3::{self, S3Server};
use object_store::{ObjectStore, ObjectStoreExt};

/// A Kubernetes cluster with the operator installed, seen from the test.
// Used only generically inside this crate, so `Send` bounds on the futures do not matter.
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// A client with the rights of a cluster administrator.
    fn kube(&self) -> kube::Client;
    /// Where the scenarios create their MetaStoreClusters.
    fn namespace(&self) -> &str;
    /// A base URL that reaches the client Service `service` from the test.
    async fn service_url(&self, service: &str) -> anyhow::Result<String>;
    /// A base URL that reaches `port` of the pod `pod` from the test.
    async fn pod_url(&self, pod: &str, port: u16) -> anyhow::Result<String>;
    /// Stops the operator abruptly and starts it again.
    async fn restart_operator(&mut self) -> anyhow::Result<()>;
    /// Uninstalls the operator (helm uninstall).
    async fn uninstall(&mut self) -> anyhow::Result<()>;
    /// Fails if a part of the environment itself broke (not the system under test).
    fn check_environment(&self) -> anyhow::Result<()>;
    /// Whether the operator reaches a server the test listens for on 127.0.0.1 (the S3 server
    /// of the backup scenario); why not, if it does not.
    fn operator_reaches_test_loopback(&self) -> Result<(), &'static str>;
    /// Images of a later release ([`NEXT_IMAGE`]) and of a broken one ([`BROKEN_IMAGE`]) for
    /// the upgrade scenario, and member DNS names the test resolves; why not, if not.
    fn runs_other_releases(&self) -> Result<(), &'static str>;
}

/// The image of the member's next release: this build under another version string
/// (`metastore-next`, which reports [`NEXT_VERSION`]).
pub const NEXT_IMAGE: &str = "metastore:next";
pub const NEXT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-next");
/// The image of a release whose member exits as soon as it starts.
pub const BROKEN_IMAGE: &str = "metastore:broken";

const CLUSTER: &str = "demo";
/// Long enough for a membership step per member on a loaded 2-core machine; a bug shows up as
/// a timeout with the last observation in the message.
const CONVERGE: Duration = Duration::from_secs(180);

fn say(what: &str) {
    eprintln!("e2e: {what}");
}

/// Polls `check` until it returns `Ok`, for at most `limit`; the error names the last reason.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => {
                say(&format!("{what}: after {:.1} s", started.elapsed().as_secs_f64()));
                return Ok(value);
            }
            Err(e) if started.elapsed() > limit => bail!("{what}: not after {limit:?}: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Every key the scenarios wrote and its last acknowledged value.
#[derive(Default)]
struct Ledger {
    values: BTreeMap<String, String>,
}

impl Ledger {
    async fn write<P: Provider>(&mut self, p: &P, prefix: &str, count: usize) -> anyhow::Result<()> {
        let url = p.service_url(CLUSTER).await?;
        let client = Client::new(url);
        for i in 0..count {
            let (key, value) = (format!("e2e/{prefix}/{i:03}"), format!("{prefix}-value-{i}"));
            client.put(&key, value.as_bytes().to_vec(), None).await.with_context(|| format!("put {key}"))?;
            self.values.insert(key, value);
        }
        Ok(())
    }

    /// Every acknowledged write reads back, linearizably, through the client Service.
    async fn verify<P: Provider>(&self, p: &P) -> anyhow::Result<()> {
        let client = Client::new(p.service_url(CLUSTER).await?);
        for (key, value) in &self.values {
            let got =
                client.get(key, Consistency::Linearizable).await.with_context(|| format!("get {key}"))?;
            let got = got.with_context(|| format!("acknowledged key {key} is missing"))?;
            anyhow::ensure!(got.value == value.as_bytes(), "{key}: read {:?}, wrote {value:?}", got.value);
        }
        say(&format!("{} acknowledged keys read back", self.values.len()));
        Ok(())
    }
}

fn clusters(p: &impl Provider) -> Api<MetaStoreCluster> {
    Api::namespaced(p.kube(), p.namespace())
}

async fn raft_status<P: Provider>(p: &P) -> anyhow::Result<ClusterStatus> {
    raft_status_of(p, CLUSTER).await
}

async fn raft_status_of<P: Provider>(p: &P, name: &str) -> anyhow::Result<ClusterStatus> {
    let url = p.service_url(name).await?;
    Ok(tokio::time::timeout(Duration::from_secs(5), Client::new(url).cluster()).await??)
}

/// Waits until the cluster is Available with `size` healthy voters, no learners, `size` ready
/// pods, and the StatefulSet at `size`; returns the raft view.
async fn converged<P: Provider>(p: &P, size: usize) -> anyhow::Result<ClusterStatus> {
    converged_named(p, CLUSTER, size).await
}

async fn converged_named<P: Provider>(p: &P, name: &str, size: usize) -> anyhow::Result<ClusterStatus> {
    eventually(&format!("{name}: {size} voters, Available"), CONVERGE, || async {
        p.check_environment()?;
        let cluster = clusters(p).get(name).await?;
        let status = cluster.status.clone().unwrap_or_default();
        let available = status.conditions.iter().find(|c| c.type_ == "Available");
        let available = available.map(|c| (c.status.clone(), c.message.clone()));
        anyhow::ensure!(
            available.as_ref().is_some_and(|(s, _)| s == "True"),
            "Available: {available:?}, phase {:?}",
            status.phase
        );
        anyhow::ensure!(status.ready_replicas == size as i32, "{} ready replicas", status.ready_replicas);
        anyhow::ensure!(status.members.iter().all(|m| m.healthy), "unhealthy members: {:?}", status.members);
        let sets: Api<StatefulSet> = Api::namespaced(p.kube(), p.namespace());
        let replicas = sets.get(name).await?.spec.and_then(|s| s.replicas);
        anyhow::ensure!(replicas == Some(size as i32), "StatefulSet replicas {replicas:?}");
        let raft = raft_status_of(p, name).await?;
        let voters = raft.members.iter().filter(|m| m.role == MemberRole::Voter).count();
        anyhow::ensure!(
            voters == size && raft.members.len() == size,
            "raft members {:?}",
            raft.members.iter().map(|m| (m.id, m.role)).collect::<Vec<_>>()
        );
        Ok(raft)
    })
    .await
}

async fn scale<P: Provider>(p: &P, replicas: i32) -> anyhow::Result<()> {
    say(&format!("scaling to {replicas}"));
    // Through the scale subresource, as `kubectl scale msc/demo --replicas N` does.
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    clusters(p).patch_scale(CLUSTER, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn pod_name(id: u64) -> String {
    format!("{CLUSTER}-{}", id - 1)
}

/// The operator gave the cluster a peer token: members refuse peer requests, and membership
/// changes on the client port, without it.
async fn peer_traffic_needs_the_token<P: Provider>(p: &P) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(p.kube(), p.namespace());
    let secret = secrets.get(&format!("{CLUSTER}-peer-token")).await.context("the peer-token Secret")?;
    let token = secret.data.and_then(|d| d.get("token").cloned()).context("a token")?;
    anyhow::ensure!(token.0.len() >= 32, "a token of {} bytes", token.0.len());
    let url = format!("{}/raft/vote", p.pod_url(&pod_name(1), 12379).await?);
    let answer = metastore_client::tls::default_http().post(&url).body(vec![0u8; 4]).send().await?;
    anyhow::ensure!(answer.status() == 401, "a peer request without the token got {}", answer.status());
    let stray = metastore_client::AddMemberRequest {
        id: 9,
        peer_url: "http://127.0.0.1:9".into(),
        client_url: String::new(),
        incarnation: String::new(),
    };
    let client = Client::new(p.pod_url(&pod_name(1), 12380).await?);
    let refused = client.add_learner(&stray).await.err().and_then(|e| e.status());
    anyhow::ensure!(refused == Some(401), "adding a member without the token got {refused:?}");
    say("peer requests and membership changes without the cluster's token are refused");
    Ok(())
}

/// Waits until the pod `name` that had `old_uid` is replaced by a new, ready one.
async fn replaced(pods: &Api<Pod>, name: &str, old_uid: Option<String>) -> anyhow::Result<()> {
    eventually(&format!("{name} is replaced"), CONVERGE, || async {
        let pod = pods.get_opt(name).await?.context("no pod")?;
        anyhow::ensure!(pod.uid() != old_uid, "still the old pod");
        let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
        let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        anyhow::ensure!(ready, "not ready");
        Ok(())
    })
    .await
}

/// Waits for the operator's Event `reason` on the cluster, its note containing `note`.
async fn recorded<P: Provider>(p: &P, reason: &str, note: &str) -> anyhow::Result<()> {
    recorded_on(p, CLUSTER, reason, note).await
}

/// Waits until an Event `reason` whose note holds `note` is recorded on the object `name`.
async fn recorded_on<P: Provider>(p: &P, name: &str, reason: &str, note: &str) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(p.kube(), p.namespace());
    eventually(&format!("Event {reason}: {note}"), CONVERGE, || async {
        let all = events.list(&Default::default()).await?.items;
        let found = all.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.note.as_deref().is_some_and(|n| n.contains(note))
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        });
        anyhow::ensure!(found, "not among {} events", all.len());
        Ok(())
    })
    .await
}

/// Runs every scenario in order against `p`.
pub async fn run_all<P: Provider>(p: &mut P) -> anyhow::Result<()> {
    let mut ledger = Ledger::default();
    one_cluster_lifecycle(&*p, &mut ledger).await?;
    backups_to_object_storage(&*p, &ledger).await?;
    paused_cluster_is_left_alone(&*p, &ledger).await?;
    upgraded_one_member_at_a_time(&*p, &ledger).await?;
    volumes_asked_to_grow(&*p, &ledger).await?;
    operator_restarted_mid_scale(p, &mut ledger).await?;
    uninstall(p).await
}

async fn one_cluster_lifecycle<P: Provider>(p: &P, ledger: &mut Ledger) -> anyhow::Result<()> {
    say("apply a 3-member MetaStoreCluster");
    let demo: MetaStoreCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "metastore.io/v1alpha1",
        "kind": "MetaStoreCluster",
        "metadata": {"name": CLUSTER},
        "spec": {"replicas": 3, "storage": {"size": "1Gi"}},
    }))?;
    clusters(p).create(&PostParams::default(), &demo).await?;
    converged(p, 3).await?;
    recorded(p, "Bootstrapped", "initialized member 1").await?;
    peer_traffic_needs_the_token(p).await?;
    ledger.write(p, "initial", 20).await?;
    ledger.verify(p).await?;

    scale(p, 5).await?;
    converged(p, 5).await?;
    ledger.write(p, "at-five", 10).await?;
    ledger.verify(p).await?;
    scale(p, 3).await?;
    converged(p, 3).await?;
    ledger.verify(p).await?;

    leader_pod_deleted(p, ledger).await?;
    member_volume_lost(p, ledger).await
}

async fn leader_pod_deleted<P: Provider>(p: &P, ledger: &mut Ledger) -> anyhow::Result<()> {
    let before = raft_status(p).await?;
    let leader = before.leader_id.context("no leader")?;
    say(&format!("delete the leader's pod {} (term {})", pod_name(leader), before.term));
    let pods: Api<Pod> = Api::namespaced(p.kube(), p.namespace());
    let old = pods.get(&pod_name(leader)).await?.uid();
    pods.delete(&pod_name(leader), &DeleteParams::default()).await?;
    replaced(&pods, &pod_name(leader), old).await?;
    // A member back within the election timeout may resume as leader of the same term (its
    // vote is durable); otherwise the others elect one. Either way, writes must go through.
    eventually("a leader serves writes", CONVERGE, || async {
        let status = raft_status(p).await?;
        anyhow::ensure!(status.leader_id.is_some(), "no leader in term {}", status.term);
        let client = Client::new(p.service_url(CLUSTER).await?);
        client.put("e2e/failover-probe", b"ok".to_vec(), None).await?;
        Ok(())
    })
    .await?;
    ledger.write(p, "after-failover", 5).await?;
    converged(p, 3).await?;
    ledger.verify(p).await
}

/// A member's volume is deleted with its pod: the member comes back empty, and the operator
/// must remove it from raft and add it anew, never let it vote with a stale log.
async fn member_volume_lost<P: Provider>(p: &P, ledger: &mut Ledger) -> anyhow::Result<()> {
    let before = raft_status(p).await?;
    let leader = before.leader_id.context("no leader")?;
    let victim =
        before.members.iter().map(|m| m.id).filter(|id| *id != leader).max().context("no follower")?;
    let incarnation = before.members.iter().find(|m| m.id == victim).map(|m| m.incarnation.clone());
    let (pod, claim) = (pod_name(victim), format!("data-{}", pod_name(victim)));
    say(&format!("delete {pod} and its volume claim {claim}"));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(p.kube(), p.namespace());
    let pods: Api<Pod> = Api::namespaced(p.kube(), p.namespace());
    let old_claim = claims.get(&claim).await?.uid();
    let old_pod = pods.get(&pod).await?.uid();
    claims.delete(&claim, &DeleteParams::default()).await?;
    pods.delete(&pod, &DeleteParams::default()).await?;
    // The claim goes once no scheduled pod uses it. A pod the StatefulSet recreated before
    // that cannot start (its claim is being deleted, then missing) and the StatefulSet makes
    // no new claim for an existing pod: delete that pod once more, as an administrator does.
    eventually(&format!("{pod} has a new {claim}"), CONVERGE, || async {
        match claims.get_opt(&claim).await? {
            Some(c) if c.uid() != old_claim => return Ok(()),
            _ => {}
        }
        if let Some(stuck) = pods.get_opt(&pod).await? {
            let running = stuck.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if stuck.uid() != old_pod && !running {
                pods.delete(&pod, &DeleteParams::default()).await?;
            }
        }
        bail!("the old claim is still there or no new one yet")
    })
    .await?;
    replaced(&pods, &pod, old_pod).await?;
    eventually(&format!("member {victim} is back with new storage"), CONVERGE, || async {
        let status = raft_status(p).await?;
        let member = status.members.iter().find(|m| m.id == victim).context("not a member")?;
        anyhow::ensure!(
            !member.incarnation.is_empty() && Some(&member.incarnation) != incarnation.as_ref(),
            "incarnation still {:?}",
            member.incarnation
        );
        Ok(())
    })
    .await?;
    converged(p, 3).await?;
    recorded(p, "MemberStorageLost", &format!("member {victim} lost its storage")).await?;
    ledger.write(p, "after-replacement", 5).await?;
    ledger.verify(p).await
}

/// A `MetaStoreBackup` of the running cluster lands in an S3 bucket as a whole snapshot holding
/// every acknowledged write, which a new cluster starts from; one whose credentials are missing
/// fails visibly (status and Event) after its attempts, and leaves nothing in the bucket.
async fn backups_to_object_storage<P: Provider>(p: &P, ledger: &Ledger) -> anyhow::Result<()> {
    if let Err(why) = p.operator_reaches_test_loopback() {
        say(&format!("backups to object storage: SKIPPED: {why}"));
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(&dir.path().join("s3"), &["backups"]).await?;
    say(&format!("an S3 server at {}; back up {CLUSTER} to it", s3.endpoint));
    let secrets: Api<Secret> = Api::namespaced(p.kube(), p.namespace());
    let credentials: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3::ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3::SECRET_KEY},
    }))?;
    secrets.create(&PostParams::default(), &credentials).await?;
    let backups: Api<MetaStoreBackup> = Api::namespaced(p.kube(), p.namespace());
    let backup = |name: &str, secret: &str| -> anyhow::Result<MetaStoreBackup> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "metastore.io/v1alpha1",
            "kind": "MetaStoreBackup",
            "metadata": {"name": name},
            "spec": {"clusterName": CLUSTER, "s3": {
                "bucket": "backups", "prefix": "e2e", "endpoint": s3.endpoint,
                "forcePathStyle": true, "credentialsSecret": secret,
            }},
        }))?)
    };
    backups.create(&PostParams::default(), &backup("nightly", "s3-credentials")?).await?;
    let status = eventually("the backup succeeded", CONVERGE, || async {
        let status = backups.get("nightly").await?.status.unwrap_or_default();
        anyhow::ensure!(status.phase == Some(BackupPhase::Succeeded), "{status:?}");
        Ok(status)
    })
    .await?;
    recorded_on(p, "nightly", "BackupSucceeded", "kept at s3://backups/e2e/").await?;
    let key = backup_key(&status)?;
    let key = key.as_str();
    let destination: S3Destination = serde_json::from_value(serde_json::json!({
        "bucket": "backups", "endpoint": s3.endpoint, "forcePathStyle": true,
    }))?;
    let store = destination.store(Some(&Credentials {
        access_key_id: s3::ACCESS_KEY.into(),
        secret_access_key: s3::SECRET_KEY.into(),
        session_token: None,
    }))?;
    let object = store.get(&key.into()).await?.bytes().await?;
    anyhow::ensure!(metastore_client::seal::is_sealed(&object), "the object is not a whole snapshot");
    anyhow::ensure!(
        Some(object.len() as u64) == status.size_bytes,
        "size {} != {:?}",
        object.len(),
        status.size_bytes
    );

    restored_from_a_backup(p, ledger, &s3.endpoint, &store, &status).await?;

    say("a backup whose credentials Secret is missing fails visibly and keeps nothing");
    backups.create(&PostParams::default(), &backup("broken", "no-such-secret")?).await?;
    let failed = eventually("the broken backup failed", CONVERGE, || async {
        let status = backups.get("broken").await?.status.unwrap_or_default();
        anyhow::ensure!(status.phase == Some(BackupPhase::Failed), "{status:?}");
        Ok(status)
    })
    .await?;
    let message = failed.message.unwrap_or_default();
    anyhow::ensure!(message.contains("no-such-secret"), "the failure does not say why: {message}");
    recorded_on(p, "broken", "BackupFailed", "no-such-secret").await?;
    let kept: Vec<_> = store.list(Some(&"e2e".into())).try_collect().await?;
    anyhow::ensure!(kept.len() == 1, "only the good backup is in the bucket: {kept:?}");

    say("back up on a schedule, every 10 s, keeping one backup in the bucket");
    let schedule = serde_json::json!({"spec": {"backup": {
        "schedule": "*/10 * * * * *",
        "s3": {"bucket": "backups", "prefix": "e2e", "endpoint": s3.endpoint,
               "forcePathStyle": true, "credentialsSecret": "s3-credentials"},
        "retention": {"maxCount": 1},
    }}});
    clusters(p).patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&schedule)).await?;
    let success = eventually("a scheduled backup succeeded", CONVERGE, || async {
        let status = clusters(p).get(CLUSTER).await?.status.unwrap_or_default();
        let success = status.backups.and_then(|b| b.last_success).context("no success yet")?;
        anyhow::ensure!(success.name.starts_with("demo-"), "the last success is {}", success.name);
        Ok(success)
    })
    .await?;
    let scheduled = backups.get(&success.name).await?;
    anyhow::ensure!(
        scheduled.labels().get("metastore.io/scheduled").is_some_and(|v| v == "true"),
        "{} is not marked as scheduled",
        success.name
    );
    eventually("retention keeps one backup in the bucket", CONVERGE, || async {
        let kept: Vec<String> =
            store.list(Some(&"e2e".into())).map_ok(|o| o.location.to_string()).try_collect().await?;
        anyhow::ensure!(kept.len() == 1 && !kept.contains(&key.to_string()), "kept {kept:?}");
        Ok(())
    })
    .await?;
    let unschedule = serde_json::json!({"spec": {"backup": null}});
    clusters(p).patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&unschedule)).await?;
    Ok(())
}

/// A new MetaStoreCluster started from the backup `nightly` (whose status is `backup`) holds
/// every key, value and revision the backed-up cluster held then, every acknowledged write of
/// the `ledger` among them; a damaged object or a
/// volume left by an earlier cluster of the name fails the restore visibly, creating nothing.
async fn restored_from_a_backup<P: Provider>(
    p: &P,
    ledger: &Ledger,
    endpoint: &str,
    store: &impl ObjectStore,
    backup: &MetaStoreBackupStatus,
) -> anyhow::Result<()> {
    const RESTORED: &str = "restored";
    let revision = backup.revision.context("the backup has no revision")?;
    let cluster = |name: &str, restore: serde_json::Value| -> anyhow::Result<MetaStoreCluster> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "metastore.io/v1alpha1",
            "kind": "MetaStoreCluster",
            "metadata": {"name": name},
            "spec": {"replicas": 3, "restore": restore},
        }))?)
    };
    let from_backup = serde_json::json!({"backup": "nightly"});
    say("start a new 3-member cluster from the backup; every key and revision must be in it");
    clusters(p).create(&PostParams::default(), &cluster(RESTORED, from_backup.clone())?).await?;
    converged_named(p, RESTORED, 3).await?;
    recorded_on(p, RESTORED, "Restored", "member 1 leads the store restored from s3://backups/e2e/").await?;
    let status = clusters(p).get(RESTORED).await?.status.unwrap_or_default();
    let restore = status.restore.context("no restore in the status")?;
    anyhow::ensure!(restore.phase == RestorePhase::Restored, "{restore:?}");
    anyhow::ensure!(
        restore.sha256 == backup.sha256,
        "restored {:?}, backed up {:?}",
        restore.sha256,
        backup.sha256
    );
    let secrets: Api<Secret> = Api::namespaced(p.kube(), p.namespace());
    anyhow::ensure!(
        secrets.get_opt(&format!("{RESTORED}-restore")).await?.is_none(),
        "the restore Secret outlived the restore"
    );
    let original = Client::new(p.service_url(CLUSTER).await?);
    let restored = Client::new(p.service_url(RESTORED).await?);
    let everything = |revision| RangeRequest { prefix: Some(Vec::new()), revision, ..Default::default() };
    let then = original.range(&everything(Some(revision))).await?;
    let now = restored.range(&everything(None)).await?;
    anyhow::ensure!(
        now.revision == revision,
        "restored at revision {}, backed up at {revision}",
        now.revision
    );
    anyhow::ensure!(
        now.kvs == then.kvs,
        "the restored keys differ from the backed-up ones: {} keys against {}",
        now.kvs.len(),
        then.kvs.len()
    );
    for (key, value) in &ledger.values {
        let got = now.kvs.iter().find(|kv| kv.key == key.as_bytes());
        let got = got.with_context(|| format!("acknowledged key {key} is missing"))?;
        anyhow::ensure!(got.value == value.as_bytes(), "{key}: restored {:?}, wrote {value:?}", got.value);
    }
    let (old_id, new_id) = (raft_status(p).await?.cluster_id, raft_status_of(p, RESTORED).await?.cluster_id);
    anyhow::ensure!(old_id != new_id, "the restored cluster kept the old cluster id {old_id}");
    let written = restored.put("e2e/after-restore", b"yes".to_vec(), None).await?;
    anyhow::ensure!(
        written.revision == revision + 1,
        "revisions go on from the backup's: {}",
        written.revision
    );
    say(&format!("{} keys restored at revision {revision}, every revision as it was", now.kvs.len()));

    say("restore from a damaged object: it fails visibly and creates nothing");
    let mut damaged = store.get(&backup_key(backup)?.into()).await?.bytes().await?.to_vec();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    store.put(&"elsewhere/damaged.snapshot".into(), damaged.into()).await?;
    let from_damaged = serde_json::json!({"s3": {"bucket": "backups", "endpoint": endpoint,
        "forcePathStyle": true, "credentialsSecret": "s3-credentials"}, "object": "elsewhere/damaged.snapshot"});
    clusters(p).create(&PostParams::default(), &cluster("damaged", from_damaged)?).await?;
    restore_refused(p, "damaged", "is not a whole metaStore snapshot").await?;
    clusters(p).delete("damaged", &DeleteParams::default()).await?;

    say("delete the restored cluster and start it again under its name: its old volumes stand in the way");
    clusters(p).delete(RESTORED, &DeleteParams::default()).await?;
    let sets: Api<StatefulSet> = Api::namespaced(p.kube(), p.namespace());
    eventually("the restored cluster is gone", CONVERGE, || async {
        anyhow::ensure!(clusters(p).get_opt(RESTORED).await?.is_none(), "still there");
        anyhow::ensure!(sets.get_opt(RESTORED).await?.is_none(), "its StatefulSet is still there");
        Ok(())
    })
    .await?;
    clusters(p).create(&PostParams::default(), &cluster(RESTORED, from_backup.clone())?).await?;
    restore_refused(p, RESTORED, "volume claim data-restored-0 of an earlier cluster").await?;
    clusters(p).delete(RESTORED, &DeleteParams::default()).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(p.kube(), p.namespace());
    for ordinal in 0..3 {
        claims.delete(&format!("data-{RESTORED}-{ordinal}"), &DeleteParams::default()).await?;
    }
    eventually("the old cluster and its claims are gone", CONVERGE, || async {
        anyhow::ensure!(clusters(p).get_opt(RESTORED).await?.is_none(), "the cluster is still there");
        let left = claims.list(&Default::default()).await?.items;
        let left: Vec<String> = left.iter().map(|c| c.name_any()).filter(|n| n.contains(RESTORED)).collect();
        anyhow::ensure!(left.is_empty(), "claims left: {left:?}");
        Ok(())
    })
    .await?;
    say("with its volumes gone, the name is free to restore into again");
    clusters(p).create(&PostParams::default(), &cluster(RESTORED, from_backup)?).await?;
    converged_named(p, RESTORED, 3).await?;
    let again = Client::new(p.service_url(RESTORED).await?).range(&everything(None)).await?;
    anyhow::ensure!(again.revision == revision && again.kvs == then.kvs, "the second restore differs");
    clusters(p).delete(RESTORED, &DeleteParams::default()).await?;
    Ok(())
}

/// The key of a backup's object in its bucket.
fn backup_key(backup: &MetaStoreBackupStatus) -> anyhow::Result<String> {
    let location = backup.location.as_deref().context("no location")?;
    Ok(location.strip_prefix("s3://backups/").context("not in the bucket")?.to_string())
}

/// The restore of cluster `name` failed saying `why`, in its condition and an Event, and
/// nothing of the cluster was created.
async fn restore_refused<P: Provider>(p: &P, name: &str, why: &str) -> anyhow::Result<()> {
    eventually(&format!("{name}'s restore failed"), CONVERGE, || async {
        let status = clusters(p).get(name).await?.status.unwrap_or_default();
        let condition = status.conditions.iter().find(|c| c.type_ == "Restored");
        let condition = condition.map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()));
        anyhow::ensure!(
            matches!(condition, Some(("False", "RestoreFailed", message)) if message.contains(why)),
            "Restored: {condition:?}"
        );
        Ok(())
    })
    .await?;
    recorded_on(p, name, "RestoreFailed", why).await?;
    let sets: Api<StatefulSet> = Api::namespaced(p.kube(), p.namespace());
    let services: Api<Service> = Api::namespaced(p.kube(), p.namespace());
    let secrets: Api<Secret> = Api::namespaced(p.kube(), p.namespace());
    anyhow::ensure!(sets.get_opt(name).await?.is_none(), "a StatefulSet was created");
    anyhow::ensure!(services.get_opt(name).await?.is_none(), "a Service was created");
    anyhow::ensure!(
        secrets.get_opt(&format!("{name}-peer-token")).await?.is_none(),
        "a peer token was created"
    );
    Ok(())
}

/// A larger `storage.size` is asked of every member's claim. Whether a claim grows is its
/// storage class's to say: either way the API server's answer is an Event on the cluster, and
/// the members run on.
async fn volumes_asked_to_grow<P: Provider>(p: &P, ledger: &Ledger) -> anyhow::Result<()> {
    say("ask for 2Gi volumes: every member's claim is asked to grow");
    let patch = serde_json::json!({"spec": {"storage": {"size": "2Gi"}}});
    clusters(p).patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let events: Api<Event> = Api::namespaced(p.kube(), p.namespace());
    let answer = eventually("the API server's answer to growing the claims", CONVERGE, || async {
        let all = events.list(&Default::default()).await?.items;
        let answer = all.iter().find(|e| {
            matches!(e.reason.as_deref(), Some("VolumeExpanding" | "VolumeExpansionRefused"))
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CLUSTER)
        });
        let answer = answer.context("no answer yet")?;
        Ok((answer.reason.clone().unwrap_or_default(), answer.note.clone().unwrap_or_default()))
    })
    .await?;
    anyhow::ensure!(answer.1.contains("2Gi"), "the event does not name the size asked: {answer:?}");
    for ordinal in 0..3 {
        anyhow::ensure!(answer.1.contains(&format!("data-{CLUSTER}-{ordinal}")), "{answer:?} misses a claim");
    }
    say(&format!("{}: {}", answer.0, answer.1));
    converged(p, 3).await?;
    ledger.verify(p).await
}

/// A paused cluster is left as it is, whatever its spec asks, until it is resumed.
async fn paused_cluster_is_left_alone<P: Provider>(p: &P, ledger: &Ledger) -> anyhow::Result<()> {
    say("pause the cluster, then ask for 5 members: nothing may change until it is resumed");
    let annotate = |value: serde_json::Value| serde_json::json!({"metadata": {"annotations": {"metastore.io/paused": value}}});
    clusters(p).patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&annotate("true".into()))).await?;
    recorded(p, "Paused", "annotation is set").await?;
    scale(p, 5).await?;
    // Long enough for several passes of a reconciler that ignored the pause.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sets: Api<StatefulSet> = Api::namespaced(p.kube(), p.namespace());
    let replicas = sets.get(CLUSTER).await?.spec.and_then(|s| s.replicas);
    anyhow::ensure!(replicas == Some(3), "the paused cluster's StatefulSet went to {replicas:?}");
    let members = raft_status(p).await?.members.len();
    anyhow::ensure!(members == 3, "the paused cluster has {members} members");
    say("resume it: the scale-up goes ahead");
    clusters(p)
        .patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&annotate(serde_json::Value::Null)))
        .await?;
    converged(p, 5).await?;
    ledger.verify(p).await?;
    scale(p, 3).await?;
    converged(p, 3).await?;
    Ok(())
}

/// A new image rolls through the members one at a time under the operator's control while
/// clients read, write and compare-and-swap under the robustness checker: linearizable, no
/// acknowledged write lost, a majority of members ready throughout. A broken release halts the
/// roll after its first member; setting the previous image back rolls that member back.
async fn upgraded_one_member_at_a_time<P: Provider>(p: &P, ledger: &Ledger) -> anyhow::Result<()> {
    if let Err(why) = p.runs_other_releases() {
        say(&format!("upgrades: SKIPPED: {why}"));
        return Ok(());
    }
    let names =
        metastore_operator::resources::Names { cluster: CLUSTER.into(), namespace: p.namespace().into() };
    let leader_before = raft_status(p).await?.leader_id.context("no leader")?;
    let load = Load::start(&names)?;
    let watch = ReadyWatch::start(&names);
    say(&format!("roll {CLUSTER} onto {NEXT_IMAGE} under load (member {leader_before} leads)"));
    set_image(p, NEXT_IMAGE).await?;
    eventually(&format!("every member runs {NEXT_VERSION}"), CONVERGE, || async {
        p.check_environment()?;
        let status = clusters(p).get(CLUSTER).await?.status.unwrap_or_default();
        let versions: Vec<_> = status.members.iter().map(|m| m.version.clone().unwrap_or_default()).collect();
        anyhow::ensure!(
            versions.len() == 3 && versions.iter().all(|v| v == NEXT_VERSION),
            "versions {versions:?}"
        );
        let updated = status.conditions.iter().find(|c| c.type_ == "Updated").map(|c| c.status.clone());
        anyhow::ensure!(updated.as_deref() == Some("True"), "Updated: {updated:?}");
        Ok(())
    })
    .await?;
    converged(p, 3).await?;
    recorded(p, "LeadershipTransferred", &format!("member {leader_before} handed leadership")).await?;
    let restarted = restarts_in_order(p).await?;
    anyhow::ensure!(
        restarted.len() == 3 && restarted.last() == Some(&leader_before),
        "members restarted in the order {restarted:?}: the leader ({leader_before}) goes last"
    );
    let min_ready = watch.stop().await;
    anyhow::ensure!(min_ready >= 2, "at one point only {min_ready} of 3 members were ready");
    load.stop_and_check(&names).await?;
    ledger.verify(p).await?;
    say(&format!("rolled in the order {restarted:?}, at least {min_ready} of 3 members ready throughout"));

    say(&format!("roll onto {BROKEN_IMAGE}, a release whose member cannot start: the roll halts"));
    set_image(p, BROKEN_IMAGE).await?;
    recorded(p, "RollHalted", "the roll is halted").await?;
    eventually("the halt is in the status", CONVERGE, || async {
        let status = clusters(p).get(CLUSTER).await?.status.unwrap_or_default();
        let updated = status.conditions.iter().find(|c| c.type_ == "Updated");
        anyhow::ensure!(updated.is_some_and(|c| c.reason == "RollHalted"), "Updated: {updated:?}");
        Ok(())
    })
    .await?;
    let client = Client::new(p.service_url(CLUSTER).await?);
    client.put("e2e/while-halted", b"writable".to_vec(), None).await.context("a write while halted")?;
    let healthy = clusters(p).get(CLUSTER).await?.status.unwrap_or_default().members;
    anyhow::ensure!(
        healthy.iter().filter(|m| m.healthy).count() == 2,
        "only the first member rolled onto the broken release: {healthy:?}"
    );
    say(&format!("set {NEXT_IMAGE} back: the broken member rolls back"));
    set_image(p, NEXT_IMAGE).await?;
    converged(p, 3).await?;
    eventually("the roll back is done", CONVERGE, || async {
        let status = clusters(p).get(CLUSTER).await?.status.unwrap_or_default();
        let updated = status.conditions.iter().find(|c| c.type_ == "Updated").map(|c| c.status.clone());
        anyhow::ensure!(updated.as_deref() == Some("True"), "Updated: {updated:?}");
        Ok(())
    })
    .await?;
    ledger.verify(p).await
}

async fn set_image<P: Provider>(p: &P, image: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"image": image}});
    clusters(p).patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The members the operator restarted for the last roll, in order, from its Events: a member
/// restarted again shows once more (events of one member are one series, counted).
async fn restarts_in_order<P: Provider>(p: &P) -> anyhow::Result<Vec<u64>> {
    let events: Api<Event> = Api::namespaced(p.kube(), p.namespace());
    let mut restarts: Vec<(Option<k8s_openapi::jiff::Timestamp>, u64, i32)> = events
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MemberRestarted"))
        .filter_map(|e| {
            let note = e.note.as_deref()?;
            let id = note.strip_prefix("restarting member ")?.split(' ').next()?.parse().ok()?;
            let times = e.series.as_ref().map_or(1, |s| s.count.max(1));
            Some((e.event_time.as_ref().map(|t| t.0), id, times))
        })
        .collect();
    restarts.sort();
    Ok(restarts.into_iter().flat_map(|(_, id, times)| std::iter::repeat_n(id, times as usize)).collect())
}

/// Clients under the robustness checker, against every member by its DNS name, half over
/// HTTP and half over etcd's gRPC API.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    recorder: Recorder,
}

impl Load {
    fn start(names: &metastore_operator::resources::Names) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let recorder = Recorder::new();
        let mut tasks = Vec::new();
        for id in 0..4 {
            let protocol = if id % 2 == 0 { Protocol::Http } else { Protocol::Grpc };
            let members = (1..=3)
                .map(|m| Member::new(protocol, Client::new(names.client_url(m)), None))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let task = ClientTask {
                id,
                keys: 4,
                workload: Workload::Mixed,
                members,
                recorder: recorder.clone(),
                seed: 11,
            };
            tasks.push(tokio::spawn(task.run(stopped.clone())));
        }
        Ok(Self { stop, tasks, recorder })
    }

    /// Stops the clients, reads every key back and judges the history.
    async fn stop_and_check(self, names: &metastore_operator::resources::Names) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await?;
        }
        let history = self.recorder.history();
        let acknowledged = history.operations.iter().filter(|o| o.completed.is_some()).count();
        let keys: Vec<String> = history.by_key().keys().map(|k| k.to_string()).collect();
        let member = Client::new(names.client_url(1));
        let mut finals = BTreeMap::new();
        for key in keys {
            let value = eventually(&format!("final read of {key}"), CONVERGE, || async {
                Ok(self.recorder.read_final(&member, &key).await?)
            })
            .await?;
            finals.insert(key, value);
        }
        let history = self.recorder.history();
        let verdict = checker::check(&history);
        anyhow::ensure!(verdict == Verdict::Linearizable, "the history under the roll: {verdict:?}");
        let lost = checker::lost_writes(&history, &finals);
        anyhow::ensure!(lost.is_empty(), "acknowledged writes lost in the roll: {lost:?}");
        say(&format!(
            "{} operations ({acknowledged} answered) under the roll: linearizable, none lost",
            history.operations.len()
        ));
        Ok(())
    }
}

/// Counts the members answering ready, every 100 ms; the fewest seen. A member counts as down
/// once it has failed for 300 ms on end: a leadership handover (no member knows a leader for
/// a moment) is no member down, a restart is.
struct ReadyWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<usize>,
}

/// How long a member must fail `/readyz` on end to count as down.
const DOWN_AFTER: Duration = Duration::from_millis(300);

impl ReadyWatch {
    fn start(names: &metastore_operator::resources::Names) -> Self {
        let members: Vec<Client> = (1..=3).map(|m| Client::new(names.client_url(m))).collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut fewest = members.len();
            let mut failing_since: Vec<Option<Instant>> = vec![None; members.len()];
            loop {
                let probes =
                    members.iter().map(|m| tokio::time::timeout(Duration::from_millis(500), m.ready()));
                let answers = futures::future::join_all(probes).await;
                let now = Instant::now();
                for (since, answer) in failing_since.iter_mut().zip(&answers) {
                    *since = match answer {
                        Ok(Ok(true)) => None,
                        _ => Some(since.unwrap_or(now)),
                    };
                }
                let up = failing_since.iter().filter(|s| s.is_none_or(|s| now - s < DOWN_AFTER)).count();
                fewest = fewest.min(up);
                tokio::select! {
                    _ = &mut stopped => return fewest,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> usize {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

async fn operator_restarted_mid_scale<P: Provider>(p: &mut P, ledger: &mut Ledger) -> anyhow::Result<()> {
    scale(&*p, 5).await?;
    let watching = &*p;
    eventually("the scale-up is under way", CONVERGE, || async {
        let status = raft_status(watching).await?;
        anyhow::ensure!(status.members.len() > 3, "still {} members", status.members.len());
        Ok(())
    })
    .await?;
    say("restart the operator in the middle of the scale-up");
    p.restart_operator().await?;
    let p = &*p;
    converged(p, 5).await?;
    ledger.verify(p).await?;
    scale(p, 3).await?;
    converged(p, 3).await?;
    ledger.verify(p).await
}

async fn uninstall<P: Provider>(p: &mut P) -> anyhow::Result<()> {
    say("delete the MetaStoreCluster; its StatefulSet, Services and pods follow");
    clusters(&*p).delete(CLUSTER, &DeleteParams::default()).await?;
    let sets: Api<StatefulSet> = Api::namespaced(p.kube(), p.namespace());
    let pods: Api<Pod> = Api::namespaced(p.kube(), p.namespace());
    eventually("the cluster's objects are collected", CONVERGE, || async {
        anyhow::ensure!(sets.get_opt(CLUSTER).await?.is_none(), "StatefulSet still there");
        let left = pods.list(&Default::default()).await?.items.len();
        anyhow::ensure!(left == 0, "{left} pods left");
        Ok(())
    })
    .await?;
    say("uninstall the operator");
    p.uninstall().await
}
