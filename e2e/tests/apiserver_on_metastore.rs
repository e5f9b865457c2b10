//! What kube-apiserver relies on from its store, checked through the apiserver itself with its
//! state in a 3-member metaStore cluster: optimistic concurrency, paged lists and their
//! expiry, watches resumed from a resourceVersion and refused below the compaction, Events
//! expiring through leases, the lease endpoint reconciler, custom resources, the health checks,
//! and the control plane riding out a crash of the metaStore leader and a restart of every
//! member without losing an acknowledged object.
//!
//! The apiserver runs with its watch cache off, so every list and watch here reaches metaStore
//! (the end-to-end suite on metaStore runs with the cache on), compacts every few seconds and
//! lets Events live five seconds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::{Api, ResourceExt};
use metastore_e2e::control_plane::{self, ControlPlane, Options};
use metastore_e2e::scenarios::eventually;
use metastore_e2e::store::StoreKind;

/// Where the lease reconciler publishes the apiserver: any address outside the loopback range
/// (the reconciler refuses those); nothing here connects to it.
const ADVERTISED: &str = "192.0.2.1";
/// The ConfigMap kube-controller-manager puts in every namespace.
const ROOT_CA: &str = "kube-root-ca.crt";

#[test]
fn kube_apiserver_gets_from_metastore_what_it_relies_on() {
    let bin = match control_plane::binaries() {
        Ok(bin) => bin,
        Err(why) => return eprintln!("SKIPPED: the apiserver checks need {why}"),
    };
    if let Some(missing) = StoreKind::MetaStore.missing() {
        return eprintln!("SKIPPED: the apiserver checks need {missing}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::Builder::new().prefix("metastore-apiserver-").tempdir().expect("temp dir");
        let options = Options {
            store: StoreKind::MetaStore,
            store_members: None,
            apiserver_flags: [
                "--watch-cache=false",
                "--etcd-compaction-interval=3s",
                "--event-ttl=5s",
                "--endpoint-reconciler-type=lease",
                &format!("--advertise-address={ADVERTISED}"),
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut plane = ControlPlane::start(&bin, dir.path(), &options).await.expect("control plane");
        let outcome = checks(&mut plane).await;
        if let Err(e) = &outcome {
            eprintln!("{}", plane.diagnostics());
            eprintln!("apiserver checks FAILED: {e:#}");
            let dir = dir.keep();
            eprintln!("kept {} for inspection", dir.display());
        }
        outcome.expect("the apiserver on metaStore");
    });
}

async fn checks(plane: &mut ControlPlane) -> anyhow::Result<()> {
    let kube = plane.admin_client().await?;
    for namespace in ["objects", "pages", "watched", "events", "load"] {
        let namespaces: Api<Namespace> = Api::all(kube.clone());
        namespaces.create(&PostParams::default(), &named(namespace)?).await?;
        // The controller manager publishes its CA into every namespace; once it has, the
        // ConfigMaps a check lists are exactly the ones it made and this one.
        let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
        eventually(&format!("{ROOT_CA} in {namespace}"), Duration::from_secs(60), || async {
            maps.get_opt(ROOT_CA).await?.map(|_| ()).context("not yet")
        })
        .await?;
    }
    the_health_checks_pass(&kube).await?;
    a_stale_resource_version_is_a_conflict(&kube).await?;
    lists_page_and_a_compacted_continue_token_expires(&kube).await?;
    watches_resume_from_a_resource_version_and_expire_below_the_compaction(&kube).await?;
    events_expire_through_their_lease(&kube).await?;
    the_lease_reconciler_publishes_the_apiserver(&kube).await?;
    custom_resources_are_stored_and_served(&kube).await?;
    a_leader_crash_under_a_controller_workload_loses_nothing(plane, &kube).await?;
    plane.check_alive()
}

fn named<K: k8s_openapi::serde::de::DeserializeOwned>(name: &str) -> anyhow::Result<K> {
    Ok(serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?)
}

fn config_map(name: &str, value: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "data": { "value": value },
    }))?)
}

/// The HTTP status of a failed call, if the apiserver answered one.
fn status_of(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

async fn get_text(kube: &kube::Client, path: &str) -> anyhow::Result<String> {
    Ok(kube.request_text(http::Request::get(path).body(Vec::new())?).await?)
}

async fn the_health_checks_pass(kube: &kube::Client) -> anyhow::Result<()> {
    ensure!(get_text(kube, "/healthz/etcd").await?.trim() == "ok", "/healthz/etcd");
    ensure!(get_text(kube, "/readyz").await?.trim() == "ok", "/readyz");
    Ok(())
}

async fn a_stale_resource_version_is_a_conflict(kube: &kube::Client) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), "objects");
    let created = maps.create(&PostParams::default(), &config_map("a", "1")?).await?;
    let read = maps.get("a").await?;
    ensure!(read.resource_version() == created.resource_version(), "a get answers what the create made");

    let mut update = read.clone();
    update.data = config_map("a", "2")?.data;
    let updated = maps.replace("a", &PostParams::default(), &update).await?;
    ensure!(updated.resource_version() != read.resource_version(), "an update moves the resourceVersion");

    let mut stale = read;
    stale.data = config_map("a", "3")?.data;
    let refused = maps.replace("a", &PostParams::default(), &stale).await.expect_err("stale update");
    ensure!(status_of(&refused) == Some(409), "an update from a stale resourceVersion: {refused}");
    let kept = maps.get("a").await?;
    ensure!(kept.data == updated.data, "the refused update changed nothing");

    maps.delete("a", &DeleteParams::default()).await?;
    let gone = maps.get("a").await.expect_err("deleted");
    ensure!(status_of(&gone) == Some(404), "a deleted object is not found: {gone}");
    Ok(())
}

async fn lists_page_and_a_compacted_continue_token_expires(kube: &kube::Client) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), "pages");
    let names: BTreeSet<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    for name in &names {
        maps.create(&PostParams::default(), &config_map(name, name)?).await?;
    }
    let expected: Vec<String> =
        names.iter().cloned().chain([ROOT_CA.to_string()]).collect::<BTreeSet<_>>().into_iter().collect();
    let mut listed = Vec::new();
    let mut token = None;
    let mut first_token = None;
    loop {
        let mut params = ListParams::default().limit(10);
        params.continue_token = token.clone();
        let page = maps.list(&params).await?;
        ensure!(page.items.len() <= 10, "a page holds at most the limit");
        listed.extend(page.items.iter().map(|m| m.name_any()));
        let remaining = page.metadata.remaining_item_count;
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        match &token {
            Some(_) => {
                ensure!(
                    remaining == Some((expected.len() - listed.len()) as i64),
                    "remainingItemCount {remaining:?}"
                );
                first_token.get_or_insert(token.clone());
            }
            None => break,
        }
    }
    ensure!(listed == expected, "the pages, in order, are the whole list: {listed:?}");

    // The token names the revision of the first page; once the apiserver's compactor passes it,
    // continuing is refused with 410 Gone and a fresh list works.
    let token = first_token.flatten().context("a first page with a continue token")?;
    let expired =
        eventually("a continue token from before the compaction expires", Duration::from_secs(60), || {
            let (maps, token) = (maps.clone(), token.clone());
            async move {
                maps.create(&PostParams::default(), &config_map(&format!("churn-{}", rand_suffix()), "x")?)
                    .await?;
                let mut params = ListParams::default().limit(10);
                params.continue_token = Some(token);
                match maps.list(&params).await {
                    Err(e) if status_of(&e) == Some(410) => Ok(e),
                    Err(e) => bail!("unexpected: {e}"),
                    Ok(_) => bail!("still served"),
                }
            }
        })
        .await?;
    let said = expired.to_string();
    eprintln!(
        "apiserver: {}",
        said.split(':').nth(1).and_then(|m| m.split('.').next()).unwrap_or_default().trim()
    );
    let fresh = maps.list(&ListParams::default()).await?;
    ensure!(fresh.items.len() > names.len(), "a fresh list after the expiry");
    Ok(())
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// The type and object name of each event a watch sends until `count` arrived.
async fn watched(
    maps: &Api<ConfigMap>,
    from: &str,
    count: usize,
) -> anyhow::Result<Result<Vec<(String, String, u64)>, Box<kube::core::Status>>> {
    let stream = maps.watch(&WatchParams::default().timeout(30), from).await?;
    let mut stream = Box::pin(stream);
    let mut events = Vec::new();
    while events.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("a watch event in time")?
            .context("the watch ended early")??;
        let (kind, map) = match event {
            WatchEvent::Added(m) => ("ADDED", m),
            WatchEvent::Modified(m) => ("MODIFIED", m),
            WatchEvent::Deleted(m) => ("DELETED", m),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => return Ok(Err(e)),
        };
        let version = map.resource_version().context("an event's resourceVersion")?.parse()?;
        events.push((kind.to_string(), map.name_any(), version));
    }
    Ok(Ok(events))
}

async fn watches_resume_from_a_resource_version_and_expire_below_the_compaction(
    kube: &kube::Client,
) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), "watched");
    let start = maps.list(&ListParams::default()).await?.metadata.resource_version.context("list version")?;
    let created = maps.create(&PostParams::default(), &config_map("w", "1")?).await?;
    let mut changed = created.clone();
    changed.data = config_map("w", "2")?.data;
    maps.replace("w", &PostParams::default(), &changed).await?;
    maps.delete("w", &DeleteParams::default()).await?;

    let events = watched(&maps, &start, 3).await?.map_err(|e| anyhow::anyhow!("watch refused: {e:?}"))?;
    let kinds: Vec<(&str, &str)> = events.iter().map(|(k, n, _)| (k.as_str(), n.as_str())).collect();
    ensure!(kinds == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")], "resumed watch: {events:?}");
    ensure!(events.windows(2).all(|w| w[0].2 < w[1].2), "resourceVersions rise: {events:?}");

    // From the middle: only what came after.
    let after_add = events[0].2.to_string();
    let rest = watched(&maps, &after_add, 2).await?.map_err(|e| anyhow::anyhow!("watch refused: {e:?}"))?;
    ensure!(rest.iter().map(|e| e.0.as_str()).collect::<Vec<_>>() == ["MODIFIED", "DELETED"], "{rest:?}");

    let gone = eventually("a watch from before the compaction is refused", Duration::from_secs(60), || {
        let (maps, start) = (maps.clone(), start.clone());
        async move {
            maps.create(&PostParams::default(), &config_map(&format!("churn-{}", rand_suffix()), "x")?)
                .await?;
            match watched(&maps, &start, 1).await? {
                Err(e) if e.code == 410 => Ok(e),
                other => bail!("still served: {other:?}"),
            }
        }
    })
    .await?;
    eprintln!("apiserver: {}", gone.message);
    Ok(())
}

async fn events_expire_through_their_lease(kube: &kube::Client) -> anyhow::Result<()> {
    let events: Api<Event> = Api::namespaced(kube.clone(), "events");
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "short-lived" },
        "involvedObject": { "kind": "ConfigMap", "namespace": "events", "name": "any" },
        "reason": "Checked",
        "message": "an Event lives --event-ttl, then its lease expires",
        "type": "Normal",
    }))?;
    events.create(&PostParams::default(), &event).await?;
    ensure!(events.get_opt("short-lived").await?.is_some(), "the Event is there at first");
    eventually("the Event expires with its lease", Duration::from_secs(60), || async {
        match events.get_opt("short-lived").await? {
            None => Ok(()),
            Some(_) => bail!("still there"),
        }
    })
    .await
}

async fn the_lease_reconciler_publishes_the_apiserver(kube: &kube::Client) -> anyhow::Result<()> {
    let endpoints: Api<Endpoints> = Api::namespaced(kube.clone(), "default");
    eventually("the kubernetes Endpoints name the advertised address", Duration::from_secs(60), || async {
        let published = endpoints.get("kubernetes").await?;
        let addresses: Vec<String> = published
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
            .collect();
        ensure!(addresses == [ADVERTISED], "{addresses:?}");
        Ok(())
    })
    .await
}

async fn custom_resources_are_stored_and_served(kube: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "widgets.checks.metastore.io" },
        "spec": {
            "group": "checks.metastore.io",
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": { "type": "object", "properties": { "size": { "type": "integer" } } } },
                } },
            }],
        },
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    eventually("the CRD is established", Duration::from_secs(60), || async {
        let crd = crds.get("widgets.checks.metastore.io").await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        ensure!(established, "not yet");
        Ok(())
    })
    .await?;

    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("checks.metastore.io", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(kube.clone(), "objects", &resource);
    // Creating right after Established can still meet a discovery that has not caught up.
    let widget: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "checks.metastore.io/v1", "kind": "Widget",
        "metadata": { "name": "w1" }, "spec": { "size": 3 },
    }))?;
    eventually("a custom resource is created", Duration::from_secs(30), || async {
        Ok(widgets.create(&PostParams::default(), &widget).await?)
    })
    .await?;
    let read = widgets.get("w1").await?;
    ensure!(read.data["spec"]["size"] == 3, "the custom resource reads back: {:?}", read.data);
    ensure!(widgets.list(&ListParams::default()).await?.items.len() == 1, "and lists");
    widgets.delete("w1", &DeleteParams::default()).await?;
    ensure!(widgets.get_opt("w1").await?.is_none(), "and deletes");
    Ok(())
}

async fn a_leader_crash_under_a_controller_workload_loses_nothing(
    plane: &mut ControlPlane,
    kube: &kube::Client,
) -> anyhow::Result<()> {
    // The controllers' work: Deployments the deployment and replica-set controllers turn into
    // ReplicaSets and Pods (Pending: there is no scheduler), all through the store.
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), "load");
    const DEPLOYMENTS: usize = 4;
    const REPLICAS: usize = 2;
    const SCALED: usize = 4;
    for i in 0..DEPLOYMENTS {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("app-{i}") },
            "spec": {
                "replicas": REPLICAS,
                "selector": { "matchLabels": { "app": format!("app-{i}") } },
                "template": {
                    "metadata": { "labels": { "app": format!("app-{i}") } },
                    "spec": { "containers": [{ "name": "c", "image": "example.invalid/app" }] },
                },
            },
        }))?;
        deployments.create(&PostParams::default(), &deployment).await?;
    }

    // A writer whose every acknowledged ConfigMap must survive.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), "load");
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for i in 0.. {
                if stopped.try_recv().is_ok() {
                    break;
                }
                let name = format!("written-{i:05}");
                let Ok(map) = config_map(&name, "v") else { break };
                let params = PostParams::default();
                let create = tokio::time::timeout(Duration::from_secs(10), maps.create(&params, &map));
                match create.await {
                    Ok(Ok(_)) => acknowledged.lock().expect("ledger").push(name),
                    // Unknown outcome or refused: not acknowledged, so nothing to check.
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = plane.store().leader().await?;
    eprintln!("apiserver: kill -9 metaStore member {} (the leader) under load", leader + 1);
    plane.store().kill(leader);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let elected = loop {
        match plane.store().leader().await {
            Ok(now) if now != leader => break now,
            _ if std::time::Instant::now() > deadline => bail!("no new leader 60 s after the old one died"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    eprintln!("apiserver: member {} leads now", elected + 1);
    // Work the controllers must do across the failover: every Deployment scaled up while the
    // store elects a new leader.
    for i in 0..DEPLOYMENTS {
        let scale = serde_json::json!({ "spec": { "replicas": SCALED } });
        eventually(&format!("app-{i} scaled to {SCALED}"), Duration::from_secs(60), || async {
            let params = PatchParams::default();
            Ok(deployments.patch(&format!("app-{i}"), &params, &Patch::Merge(&scale)).await?)
        })
        .await?;
    }
    the_controllers_converge(kube, DEPLOYMENTS, SCALED).await?;
    plane.store().restart(leader)?;
    plane.store().wait_ready().await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("apiserver: kill -9 every metaStore member, then start them again");
    for member in 0..plane.store().members() {
        plane.store().kill(member);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for member in 0..plane.store().members() {
        plane.store().restart(member)?;
    }
    plane.store().wait_ready().await?;
    eventually("the apiserver serves again", Duration::from_secs(120), || the_health_checks_pass(kube))
        .await?;
    let writes_before = acknowledged.lock().expect("ledger").len();
    eventually("writes are acknowledged again", Duration::from_secs(60), || async {
        let now = acknowledged.lock().expect("ledger").len();
        ensure!(now > writes_before, "{now} acknowledged");
        Ok(())
    })
    .await?;
    let _ = stop.send(());
    writer.await?;

    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), "load");
    let stored: BTreeSet<String> =
        maps.list(&ListParams::default()).await?.items.iter().map(|m| m.name_any()).collect();
    let acknowledged = acknowledged.lock().expect("ledger").clone();
    let lost: Vec<&String> = acknowledged.iter().filter(|name| !stored.contains(*name)).collect();
    ensure!(lost.is_empty(), "acknowledged ConfigMaps lost: {lost:?}");
    eprintln!("apiserver: {} acknowledged ConfigMaps, all stored", acknowledged.len());
    the_controllers_converge(kube, DEPLOYMENTS, SCALED).await
}

async fn the_controllers_converge(
    kube: &kube::Client,
    deployments: usize,
    replicas: usize,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "load");
    eventually("every Deployment has its pods", Duration::from_secs(120), || async {
        for i in 0..deployments {
            let listed = pods.list(&ListParams::default().labels(&format!("app=app-{i}"))).await?;
            ensure!(listed.items.len() == replicas, "app-{i}: {} pods", listed.items.len());
        }
        Ok(())
    })
    .await
}
