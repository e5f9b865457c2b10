//! Watch fan-out: W watchers of one prefix, spread over the members, while writes go in at a
//! fixed rate; each write's value is the time it was sent, so every watcher measures how long
//! each change took to reach it. The same for either system and either protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::load::{cpu_time, histogram, Outcome, Plan};
use crate::target::Endpoint;

const PREFIX: &str = "fan/";
/// Keys the writes cycle through.
const KEYS: u64 = 100;

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// One watcher: counts what it is sent until told to stop, recording each change's delivery
/// time; `delivered` counts for every watcher.
async fn watch(
    endpoint: Endpoint,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<()>,
    delivered_all: Arc<AtomicU64>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut watching = endpoint.watch(PREFIX).await?;
    let (mut latencies, mut delivered) = (histogram(), 0u64);
    let mut created = false;
    loop {
        let values = tokio::select! {
            values = watching.next() => match values? {
                Some(values) => values,
                None => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        if !created {
            created = true;
            let _ = ready.send(()).await;
        }
        let arrived = now_nanos();
        for value in values {
            let Some(sent) = std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u128>().ok()) else {
                continue;
            };
            let micros = (arrived.saturating_sub(sent) / 1_000).max(1);
            latencies.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            delivered += 1;
            delivered_all.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok((latencies, delivered))
}

/// Runs `plan.clients` watchers while writes go in at `plan.rate` per second for
/// `plan.duration`. The outcome's operations are deliveries, its latencies delivery times, its
/// errors the deliveries missing (every acknowledged write, to every watcher).
pub async fn run(plan: &Plan, endpoints: &[Endpoint]) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    let rate =
        plan.rate.ok_or_else(|| anyhow::anyhow!("watch-fanout needs --rate, the writes per second"))?;
    let watchers = plan.clients;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let delivered_all = Arc::new(AtomicU64::new(0));
    let (ready, mut created) = tokio::sync::mpsc::channel(watchers.max(1));
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let endpoint = endpoints[w % endpoints.len()].clone();
        tasks.push(tokio::spawn(watch(endpoint, stopping.clone(), ready.clone(), delivered_all.clone())));
    }
    drop(ready);
    for _ in 0..watchers {
        anyhow::ensure!(created.recv().await.is_some(), "a watcher failed to start");
    }
    let cpu_before = cpu_time();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut writes = Vec::new();
    let mut due = started;
    let mut n = 0u64;
    while due < started + plan.duration {
        tokio::time::sleep_until(due.into()).await;
        let endpoint = endpoints[(n as usize) % endpoints.len()].clone();
        let key = format!("{PREFIX}{:03}", n % KEYS);
        writes.push(tokio::spawn(async move {
            endpoint.put(&key, now_nanos().to_string().as_bytes()).await.is_ok()
        }));
        n += 1;
        due += interval;
    }
    let mut acknowledged = 0u64;
    for write in writes {
        acknowledged += u64::from(write.await.unwrap_or(false));
    }
    let writing = started.elapsed().as_secs_f64();
    let expected = acknowledged * watchers as u64;
    // The last deliveries: wait for all of them, or for 10 s more.
    let last = Instant::now() + Duration::from_secs(10);
    while delivered_all.load(Ordering::Relaxed) < expected && Instant::now() < last {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let (mut latencies, mut delivered) = (histogram(), 0u64);
    for task in tasks {
        let (watcher_latencies, count) = task.await??;
        latencies.add(&watcher_latencies).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        delivered += count;
    }
    let generator_cores = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64() / started.elapsed().as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Outcome::from_latencies(
        plan,
        endpoints,
        &latencies,
        expected.saturating_sub(delivered),
        writing,
        generator_cores,
    ))
}
