//! The same kube-apiserver workload on a control plane that keeps its state in a 3-member etcd
//! cluster and on one that keeps it in a 3-member metaStore cluster, one after the other: ConfigMaps
//! created, listed in pages, patched and deleted by concurrent clients (each with a connection
//! of its own, as separate controllers have), while a watch started before the creates measures
//! how long each creation takes to reach a watcher. Prints a Markdown table of throughput and
//! latency per step, and metaStore's ratio to etcd. Run by `bench/kubernetes.sh`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use metastore_e2e::control_plane::{self, client_from_kubeconfig, ControlPlane, Options};
use metastore_e2e::store::StoreKind;

#[derive(Parser)]
#[command(about = "kube-apiserver on etcd and on metaStore, side by side")]
struct Args {
    /// ConfigMaps created, patched and deleted per run.
    #[arg(long, default_value_t = 5_000)]
    objects: usize,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Full paged lists (500 per page) per client.
    #[arg(long, default_value_t = 4)]
    lists_per_client: usize,
    /// Members of each store.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Runs per store, alternating which store goes first; the table shows the median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

const NAMESPACE: &str = "bench";
/// Selects the benchmark's own ConfigMaps (`config_map` labels them): the controller manager
/// adds kube-root-ca.crt.
const OURS: &str = "bench=true";

/// What one step measured.
#[derive(Debug, Clone)]
struct Step {
    name: &'static str,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn step(name: &'static str, count: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Step {
    latencies.sort();
    Step {
        name,
        per_second: count as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
    }
}

/// Runs `op(client, i)` for every `i` below `count`, spread over the clients; the latency of
/// each call and the wall time of the whole. Any failure fails the step: a benchmark with
/// errors measures something else.
async fn drive<F, Fut>(
    clients: &[kube::Client],
    count: usize,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(kube::Client, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, next, op) = (client.clone(), next.clone(), op.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let sent = Instant::now();
                    op(client.clone(), i).await.with_context(|| format!("operation {i}"))?;
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    Ok((started.elapsed(), latencies))
}

fn config_map(name: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "bench": "true" } },
        "data": { "value": format!("{name}-{}", "x".repeat(200)) },
    }))?)
}

fn name(i: usize) -> String {
    format!("cm-{i:06}")
}

/// CPU time (user and system) `pids` have used so far, from /proc.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // utime and stime are fields 14 and 15, counted after the parenthesised command name.
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
            Some(ticks(11)? + ticks(12)?)
        })
        .sum::<f64>()
        / TICKS_PER_SECOND
}

/// What one run measured: its steps, and the CPU the store and the apiserver used for them.
struct Run {
    steps: Vec<Step>,
    store_cpu: f64,
    apiserver_cpu: f64,
}

/// One run of the workload on a fresh control plane over `store`.
async fn run(bin: &std::path::Path, store: StoreKind, args: &Args) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new().prefix("apiserver-bench-").tempdir()?;
    let options = Options { store, store_members: Some(args.members), ..Options::default() };
    let mut plane = ControlPlane::start(bin, dir.path(), &options).await?;
    let store_pids = plane.store().pids();
    let apiserver_pids: Vec<u32> = plane.apiserver_pid().into_iter().collect();
    let admin = plane.admin_client().await?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NAMESPACE } }))?;
    namespaces.create(&PostParams::default(), &namespace).await?;
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(client_from_kubeconfig(&plane.admin_kubeconfig()).await?);
    }
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NAMESPACE);

    // The watcher: when each ConfigMap's ADDED event arrived.
    let from = maps
        .list(&ListParams::default().labels(OURS))
        .await?
        .metadata
        .resource_version
        .context("list version")?;
    let stream = maps.watch(&WatchParams::default().labels(OURS).timeout(1_800), &from).await?;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        let objects = args.objects;
        tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(event) = stream.next().await {
                if let Ok(WatchEvent::Added(map)) = event {
                    let mut seen = seen.lock().expect("watch ledger");
                    seen.insert(map.name_any(), Instant::now());
                    if seen.len() == objects {
                        break;
                    }
                }
            }
        })
    };

    let cpu_before = (cpu_seconds(&store_pids), cpu_seconds(&apiserver_pids));
    let mut steps = Vec::new();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (elapsed, latencies) = {
        let sent = sent.clone();
        drive(&clients, args.objects, move |client, i| {
            let sent = sent.clone();
            async move {
                let maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
                sent.lock().expect("ledger").insert(name(i), Instant::now());
                maps.create(&PostParams::default(), &config_map(&name(i))?).await?;
                Ok(())
            }
        })
        .await?
    };
    steps.push(step("create", args.objects, elapsed, latencies));

    tokio::time::timeout(Duration::from_secs(120), watcher).await.context("every creation watched")??;
    let delays: Vec<Duration> = {
        let (sent, seen) = (sent.lock().expect("ledger"), seen.lock().expect("watch ledger"));
        sent.iter()
            .filter_map(|(name, at)| seen.get(name).map(|s| s.saturating_duration_since(*at)))
            .collect()
    };
    if delays.len() != args.objects {
        bail!("the watch saw {} of {} creations", delays.len(), args.objects);
    }
    // Latency only: the watch's rate is the creates'.
    steps.push(Step {
        per_second: f64::NAN,
        ..step("create → watch event", 1, Duration::from_secs(1), delays)
    });

    let lists = args.clients * args.lists_per_client;
    let objects = args.objects;
    let (elapsed, latencies) = drive(&clients, lists, move |client, _| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        let mut params = ListParams::default().labels(OURS).limit(500);
        let mut listed = 0;
        loop {
            let page = maps.list(&params).await?;
            listed += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        anyhow::ensure!(listed == objects, "a list saw {listed} of {objects}");
        Ok(())
    })
    .await?;
    steps.push(step("list (paged, 500)", lists, elapsed, latencies));

    let (elapsed, latencies) = drive(&clients, args.objects, |client, i| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        let patch = serde_json::json!({ "data": { "value": "patched" } });
        maps.patch(&name(i), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    })
    .await?;
    steps.push(step("patch", args.objects, elapsed, latencies));

    let (elapsed, latencies) = drive(&clients, args.objects, |client, i| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        maps.delete(&name(i), &DeleteParams::default()).await?;
        Ok(())
    })
    .await?;
    steps.push(step("delete", args.objects, elapsed, latencies));
    let store_cpu = cpu_seconds(&store_pids) - cpu_before.0;
    let apiserver_cpu = cpu_seconds(&apiserver_pids) - cpu_before.1;
    drop(plane);
    Ok(Run { steps, store_cpu, apiserver_cpu })
}

/// The median of the rounds' `values`, sorted best first by `better`; of an even count, the
/// better of the two middle ones.
fn median<T: Copy>(mut values: Vec<T>, better: impl FnMut(&T, &T) -> std::cmp::Ordering) -> Option<T> {
    values.sort_by(better);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Higher throughput first.
fn faster(a: &f64, b: &f64) -> std::cmp::Ordering {
    b.total_cmp(a)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1_000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rounds > 0 && args.objects > 0 && args.clients > 0 && args.members > 0,
        "--rounds, --objects, --clients and --members must be at least 1"
    );
    let bin = control_plane::binaries().map_err(|why| anyhow::anyhow!(why))?;
    for store in [StoreKind::Etcd, StoreKind::MetaStore] {
        if let Some(missing) = store.missing() {
            bail!("{store:?} needs {missing}");
        }
    }
    let mut runs: HashMap<StoreKind, Vec<Vec<Step>>> = HashMap::new();
    let mut cpu: HashMap<StoreKind, Vec<(f64, f64)>> = HashMap::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [StoreKind::Etcd, StoreKind::MetaStore]
        } else {
            [StoreKind::MetaStore, StoreKind::Etcd]
        };
        for store in order {
            eprintln!("round {}: {store:?}", round + 1);
            let Run { steps, store_cpu, apiserver_cpu } =
                run(&bin, store, &args).await.with_context(|| format!("{store:?}, round {}", round + 1))?;
            eprintln!("  CPU over the workload: store {store_cpu:.1} s, kube-apiserver {apiserver_cpu:.1} s");
            cpu.entry(store).or_default().push((store_cpu, apiserver_cpu));
            for s in &steps {
                eprintln!(
                    "  {:<22} {:>9.0}/s  p50 {:>7} ms  p99 {:>7} ms",
                    s.name,
                    s.per_second,
                    ms(s.p50),
                    ms(s.p99)
                );
            }
            runs.entry(store).or_default().push(steps);
        }
    }

    println!(
        "\n{} ConfigMaps, {} clients, {} members each, {} round(s); median over rounds\n",
        args.objects, args.clients, args.members, args.rounds
    );
    println!("Ratio: metaStore's throughput over etcd's; for the watch, etcd's p99 over metaStore's. Above 1, metaStore is ahead.\n");
    println!("| step | etcd /s | metaStore /s | ratio | etcd p50 / p99 (ms) | metaStore p50 / p99 (ms) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (etcd, metastore) = (&runs[&StoreKind::Etcd], &runs[&StoreKind::MetaStore]);
    for (i, first) in etcd[0].iter().enumerate() {
        let summary = |runs: &Vec<Vec<Step>>| {
            (
                median(runs.iter().map(|r| r[i].per_second).collect(), faster).unwrap_or(f64::NAN),
                median(runs.iter().map(|r| r[i].p50).collect(), Duration::cmp).unwrap_or_default(),
                median(runs.iter().map(|r| r[i].p99).collect(), Duration::cmp).unwrap_or_default(),
            )
        };
        let (e_rate, e50, e99) = summary(etcd);
        let (m_rate, m50, m99) = summary(metastore);
        let rate = |r: f64| if r.is_nan() { "–".to_string() } else { format!("{r:.0}") };
        let ratio = if e_rate.is_nan() {
            format!("{:.2} (p99)", e99.as_secs_f64() / m99.as_secs_f64().max(1e-9))
        } else {
            format!("{:.2}", m_rate / e_rate)
        };
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} |",
            first.name,
            rate(e_rate),
            rate(m_rate),
            ratio,
            ms(e50),
            ms(e99),
            ms(m50),
            ms(m99)
        );
    }
    // CPU is a cost: of two rounds, the lower (as latencies).
    let cpu_row = |store: StoreKind| {
        let runs = &cpu[&store];
        let lower = |values: Vec<f64>| median(values, f64::total_cmp).unwrap_or(f64::NAN);
        (lower(runs.iter().map(|r| r.0).collect()), lower(runs.iter().map(|r| r.1).collect()))
    };
    let ((etcd_store, etcd_api), (ms_store, ms_api)) =
        (cpu_row(StoreKind::Etcd), cpu_row(StoreKind::MetaStore));
    println!(
        "\nCPU over the workload, all members together: etcd {etcd_store:.1} s (its kube-apiserver \
         {etcd_api:.1} s), metaStore {ms_store:.1} s (its kube-apiserver {ms_api:.1} s)"
    );
    Ok(())
}
