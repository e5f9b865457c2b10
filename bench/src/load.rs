//! Generating load and measuring it: closed loop (C clients, each sending its next request when
//! the last one is answered) or open loop (requests at a fixed rate, latency measured from when
//! each was due, so a stall is not hidden by requests that were never sent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use serde::Serialize;

use crate::target::{Endpoint, Protocol, System};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Workload {
    Put,
    /// Linearizable reads.
    Get,
    /// Reads served from the member's own state.
    StaleGet,
    /// Half linearizable reads, half writes.
    Mixed,
    /// Read, then compare-and-swap on the revision read.
    Cas,
    /// Puts of keys never written before: the store grows with every request.
    Create,
    /// Transactions of two compares and two puts, on two random keys.
    Txn,
    /// Reads of random keys as of one past revision (a preloaded key's), from the history.
    PastGet,
    /// `--clients` watchers of one prefix while `--rate` writes a second go in: latencies are
    /// each change's delivery to each watcher.
    WatchFanout,
}

/// How requests choose among the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Distribution {
    /// Every key equally often.
    Uniform,
    /// A few hot keys and a long tail: key k (from 1) is chosen in proportion to 1/k^s.
    Zipf,
}

/// The keys a load touches, and how often each.
#[derive(Debug, Clone, Copy)]
pub struct KeySpace {
    count: usize,
    /// `None`: uniform.
    zipf: Option<Zipf<f64>>,
}

impl KeySpace {
    /// `count` keys (at least one); `exponent` is the Zipf distribution's s.
    pub fn new(count: usize, distribution: Distribution, exponent: f64) -> anyhow::Result<Self> {
        let count = count.max(1);
        let zipf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipf => {
                // rand_distr takes an infinite exponent, then never returns a sample.
                anyhow::ensure!(exponent.is_finite(), "the Zipf exponent must be finite, not {exponent}");
                Some(
                    Zipf::new(count as f64, exponent)
                        .map_err(|e| anyhow::anyhow!("no Zipf distribution with exponent {exponent}: {e}"))?,
                )
            }
        };
        Ok(Self { count, zipf })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn distribution(&self) -> Distribution {
        if self.zipf.is_some() {
            Distribution::Zipf
        } else {
            Distribution::Uniform
        }
    }

    fn pick(&self, rng: &mut StdRng) -> String {
        let key = match self.zipf {
            // Samples are whole numbers in [1, count].
            Some(zipf) => (rng.sample(zipf) as usize).clamp(1, self.count) - 1,
            None => rng.random_range(0..self.count),
        };
        key_name(key)
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub system: System,
    pub protocol: Protocol,
    pub workload: Workload,
    pub clients: usize,
    pub keys: KeySpace,
    pub value_size: usize,
    pub duration: Duration,
    /// Requests per second in all (open loop); `None` for closed loop.
    pub rate: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub system: System,
    pub protocol: Protocol,
    pub workload: Workload,
    pub clients: usize,
    /// Where the load went.
    pub endpoints: Vec<String>,
    pub keys: usize,
    pub distribution: Distribution,
    pub operations: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// CPU the generator itself used, in cores (1.0 = one core busy): if it nears the
    /// machine's core count, the generator is the bottleneck.
    pub generator_cores: f64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Writes keys `first..first + keys` once, 64 writes at a time: so that reads find values, or
/// to grow the store by `keys` new keys.
pub async fn preload(endpoints: &[Endpoint], first: usize, keys: usize, value: &[u8]) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(first..first + keys)
        .map(|key| async move { endpoints[key % endpoints.len()].put(&key_name(key), value).await })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn key_name(key: usize) -> String {
    format!("bench/{key:08}")
}

/// One operation of `workload` on a random key; errors are counted, not fatal.
async fn operate(
    endpoint: &Endpoint,
    workload: Workload,
    rng: &mut StdRng,
    keys: KeySpace,
    value: &[u8],
    past: u64,
) -> bool {
    let key = match workload {
        // From the thread's own generator, seeded anew by each process: a key no run wrote.
        Workload::Create => format!("bench-new/{:032x}", rand::random::<u128>()),
        _ => keys.pick(rng),
    };
    let result = match workload {
        Workload::Create => endpoint.put(&key, value).await,
        Workload::Put => endpoint.put(&key, value).await,
        Workload::Get => endpoint.get(&key, false).await.map(|_| ()),
        Workload::StaleGet => endpoint.get(&key, true).await.map(|_| ()),
        Workload::Mixed if rng.random_bool(0.5) => endpoint.put(&key, value).await,
        Workload::Mixed => endpoint.get(&key, false).await.map(|_| ()),
        Workload::Cas => match endpoint.get(&key, false).await {
            Ok(revision) => endpoint.cas(&key, revision, value).await.map(|_| ()),
            Err(e) => Err(e),
        },
        Workload::Txn => {
            // Two different keys: one key written twice in a transaction is refused.
            let other =
                (0..8).map(|_| keys.pick(rng)).find(|k| *k != key).unwrap_or_else(|| format!("{key}/2"));
            endpoint.txn(&key, &other, value).await
        }
        Workload::PastGet => endpoint.get_at(&key, past).await,
        // Run by `fanout::run`, never request by request.
        Workload::WatchFanout => Err(anyhow::anyhow!("watch-fanout is not a request workload")),
    };
    result.is_ok()
}

/// CPU time this process used so far (user + system), from /proc.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every Linux architecture that matters here.
    Some(Duration::from_millis(ticks * 10))
}

pub async fn run(plan: &Plan, endpoints: &[Endpoint]) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    let value: Arc<[u8]> = vec![b'v'; plan.value_size].into();
    // The past revision: the one the middle preloaded key was last written at.
    let past = match plan.workload {
        Workload::PastGet => endpoints[0].get(&key_name(plan.keys.count() / 2), false).await?.unwrap_or(1),
        _ => 0,
    };
    let started = Instant::now();
    let cpu_before = cpu_time();
    let deadline = started + plan.duration;
    let mut tasks = Vec::new();
    match plan.rate {
        None => {
            for client in 0..plan.clients {
                let endpoint = endpoints[client % endpoints.len()].clone();
                let (workload, keys, value) = (plan.workload, plan.keys, value.clone());
                tasks.push(tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(client as u64);
                    let (mut latencies, mut errors) = (histogram(), 0u64);
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        if !operate(&endpoint, workload, &mut rng, keys, &value, past).await {
                            errors += 1;
                        }
                        latencies.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                    }
                    (latencies, errors)
                }));
            }
        }
        Some(rate) => {
            // Each of C senders owns every C-th slot of the schedule, and waits for no answer
            // before its next slot: a request answered late is measured from when it was due.
            let interval = Duration::from_secs_f64(plan.clients as f64 / rate.max(1) as f64);
            for client in 0..plan.clients {
                let endpoint = endpoints[client % endpoints.len()].clone();
                let (workload, keys, value) = (plan.workload, plan.keys, value.clone());
                let offset = interval.mul_f64(client as f64 / plan.clients as f64);
                tasks.push(tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(client as u64);
                    let mut in_flight = Vec::new();
                    let mut due = started + offset;
                    while due < deadline {
                        tokio::time::sleep_until(due.into()).await;
                        let (endpoint, value) = (endpoint.clone(), value.clone());
                        let mut request_rng = StdRng::seed_from_u64(rng.random());
                        let scheduled = due;
                        in_flight.push(tokio::spawn(async move {
                            let ok = operate(&endpoint, workload, &mut request_rng, keys, &value, past).await;
                            (ok, scheduled.elapsed())
                        }));
                        due += interval;
                    }
                    let (mut latencies, mut errors) = (histogram(), 0u64);
                    for request in in_flight {
                        match request.await {
                            Ok((ok, latency)) => {
                                errors += u64::from(!ok);
                                latencies.saturating_record(latency.as_micros().max(1) as u64);
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (latencies, errors)
                }));
            }
        }
    }
    let (mut latencies, mut errors) = (histogram(), 0u64);
    for task in tasks {
        let (client_latencies, client_errors) = task.await?;
        latencies.add(&client_latencies).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        errors += client_errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let generator_cores = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64() / seconds,
        _ => f64::NAN,
    };
    Ok(Outcome::from_latencies(plan, endpoints, &latencies, errors, seconds, generator_cores))
}

impl Outcome {
    /// The outcome of `plan`: `latencies` of every operation, `errors` of them failed.
    pub fn from_latencies(
        plan: &Plan,
        endpoints: &[Endpoint],
        latencies: &Histogram<u64>,
        errors: u64,
        seconds: f64,
        generator_cores: f64,
    ) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let operations = latencies.len();
        Outcome {
            system: plan.system,
            protocol: plan.protocol,
            workload: plan.workload,
            clients: plan.clients,
            endpoints: endpoints.iter().map(Endpoint::url).collect(),
            keys: plan.keys.count,
            distribution: plan.keys.distribution(),
            operations,
            errors,
            seconds,
            throughput: operations.saturating_sub(errors) as f64 / seconds,
            p50_ms: ms(latencies.value_at_quantile(0.5)),
            p99_ms: ms(latencies.value_at_quantile(0.99)),
            p999_ms: ms(latencies.value_at_quantile(0.999)),
            max_ms: ms(latencies.max()),
            generator_cores,
        }
    }

    pub const HEADER: &'static str =
        "system     protocol workload   clients    ops/s    p50 ms   p99 ms  p99.9 ms   max ms  errors  gen cores";

    pub fn row(&self) -> String {
        format!(
            "{:<10} {:<8} {:<10} {:>7} {:>8.0} {:>9.2} {:>8.2} {:>9.2} {:>8.2} {:>7} {:>10.2}",
            format!("{:?}", self.system).to_lowercase(),
            format!("{:?}", self.protocol).to_lowercase(),
            format!("{:?}", self.workload).to_lowercase(),
            self.clients,
            self.throughput,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.errors,
            self.generator_cores
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(keys: &KeySpace, n: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0; keys.count()];
        for _ in 0..n {
            let key = keys.pick(&mut rng);
            let index: usize = key.trim_start_matches("bench/").parse().expect("a bench key");
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn uniform_keys_are_all_touched_about_equally() {
        let counts = picks(&KeySpace::new(100, Distribution::Uniform, 0.99).expect("valid"), 100_000);
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");
    }

    #[test]
    fn zipf_keys_have_a_hot_head_and_a_long_tail() {
        let counts = picks(&KeySpace::new(1_000, Distribution::Zipf, 0.99).expect("valid"), 100_000);
        // With s = 0.99 key 1 is chosen about 500 times as often as key 500.
        assert!(counts[0] > 50 * counts[499].max(1), "head {} vs middle {}", counts[0], counts[499]);
        assert!(counts[999] > 0, "the last key is chosen too");
    }

    #[test]
    fn a_zipf_exponent_that_is_no_distribution_is_refused() {
        assert!(KeySpace::new(10, Distribution::Zipf, -1.0).is_err());
        assert!(KeySpace::new(10, Distribution::Zipf, f64::INFINITY).is_err());
        assert!(KeySpace::new(10, Distribution::Zipf, f64::NAN).is_err());
        assert!(KeySpace::new(10, Distribution::Uniform, -1.0).is_ok(), "uniform ignores it");
    }

    #[test]
    fn an_empty_key_space_still_has_one_key() {
        let keys = KeySpace::new(0, Distribution::Zipf, 0.99).expect("valid");
        assert_eq!(picks(&keys, 10), vec![10]);
    }
}
