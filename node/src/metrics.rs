//! Prometheus metrics. Each group sits beside the code it measures; this module owns the
//! registry and renders it for `GET /metrics`.
//!
//! The registry is process-wide (like Prometheus' own default registry): storage threads,
//! request handlers and raft all record into it without threading a handle through openraft.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::types::RaftMetrics;

/// Latency buckets from 50µs to about 26s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

pub struct StorageMetrics {
    log_sync_seconds: Histogram,
    log_sync_batch: Histogram,
    apply_seconds: Histogram,
    applied_entries: Counter,
    snapshot_build_seconds: Histogram,
}

impl StorageMetrics {
    pub fn observe_log_sync(&self, took: Duration, callbacks: usize) {
        self.log_sync_seconds.observe(took.as_secs_f64());
        self.log_sync_batch.observe(callbacks as f64);
    }

    pub fn observe_apply(&self, took: Duration, entries: usize) {
        self.apply_seconds.observe(took.as_secs_f64());
        self.applied_entries.inc_by(entries as u64);
    }

    pub fn observe_snapshot_build(&self, took: Duration) {
        self.snapshot_build_seconds.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    forwarded: Family<RouteLabels, Counter>,
    batch_writes: Histogram,
    read_index_reads: Histogram,
    leadership_confirmations: Family<ConfirmationLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfirmationLabels {
    pub by: &'static str,
}

impl ApiMetrics {
    pub fn observe(&self, labels: RequestLabels, took: Duration) {
        self.request_seconds.get_or_create(&RouteLabels { route: labels.route }).observe(took.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// A request this member passed on to the leader.
    pub fn forwarded(&self, route: &'static str) {
        self.forwarded.get_or_create(&RouteLabels { route }).inc();
    }

    /// A raft entry proposed with `writes` client writes in it (group commit).
    pub fn proposed(&self, writes: usize) {
        self.batch_writes.observe(writes as f64);
    }

    /// One read index obtained for `reads` linearizable reads.
    pub fn read_index_shared(&self, reads: usize) {
        self.read_index_reads.observe(reads as f64);
    }

    /// The leader named a read index, its leadership confirmed `by` its lease (openraft falls back
    /// to a quorum round when the lease ran out) or a quorum round each time.
    pub fn leadership_confirmed(&self, by: &'static str) {
        self.leadership_confirmations.get_or_create(&ConfirmationLabels { by }).inc();
    }
}

struct RaftGauges {
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    voters: Gauge,
    learners: Gauge,
    disk_bytes: Gauge,
}

struct Metrics {
    registry: Registry,
    storage: StorageMetrics,
    api: ApiMetrics,
    raft: RaftGauges,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("metastore");
        let storage = StorageMetrics {
            log_sync_seconds: latency_histogram(),
            log_sync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_seconds: latency_histogram(),
            applied_entries: Counter::default(),
            snapshot_build_seconds: latency_histogram(),
        };
        registry.register("log_sync_seconds", "Time to fsync the raft log", storage.log_sync_seconds.clone());
        registry.register(
            "log_sync_batch_appends",
            "Log appends completed by one fsync (group commit)",
            storage.log_sync_batch.clone(),
        );
        registry.register("apply_seconds", "Time to apply a batch of entries", storage.apply_seconds.clone());
        registry.register("applied_entries", "Log entries applied", storage.applied_entries.clone());
        registry.register(
            "snapshot_build_seconds",
            "Time to build a snapshot",
            storage.snapshot_build_seconds.clone(),
        );
        let api = ApiMetrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            forwarded: Family::default(),
            batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            read_index_reads: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            leadership_confirmations: Family::default(),
        };
        registry.register("http_requests", "Client API requests", api.requests.clone());
        registry.register("http_request_seconds", "Client API request latency", api.request_seconds.clone());
        registry.register("forwarded_requests", "Requests passed on to the leader", api.forwarded.clone());
        registry.register(
            "proposal_writes",
            "Client writes proposed in one raft entry (group commit)",
            api.batch_writes.clone(),
        );
        registry.register(
            "read_index_reads",
            "Linearizable reads answered by one read index (one leadership confirmation)",
            api.read_index_reads.clone(),
        );
        registry.register(
            "leadership_confirmations",
            "Read indexes the leader named, by read policy: its lease (a quorum round when it ran out) or a quorum round each",
            api.leadership_confirmations.clone(),
        );
        let raft = RaftGauges {
            term: Gauge::default(),
            leader: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            voters: Gauge::default(),
            learners: Gauge::default(),
            disk_bytes: Gauge::default(),
        };
        registry.register("raft_term", "Current raft term", raft.term.clone());
        registry.register("raft_leader_id", "Member id of the known leader (0 if none)", raft.leader.clone());
        registry.register("raft_is_leader", "1 if this member is the leader", raft.is_leader.clone());
        registry.register("raft_last_log_index", "Last index in the raft log", raft.last_log_index.clone());
        registry.register("raft_commit_index", "Last committed log index", raft.commit_index.clone());
        registry.register("raft_applied_index", "Last applied log index", raft.applied_index.clone());
        registry.register("raft_voters", "Voting members", raft.voters.clone());
        registry.register("raft_learners", "Learners", raft.learners.clone());
        registry.register(
            "rocksdb_sst_bytes",
            "On-disk size of RocksDB table files, every column family's",
            raft.disk_bytes.clone(),
        );
        Metrics { registry, storage, api, raft }
    })
}

pub fn storage() -> &'static StorageMetrics {
    &metrics().storage
}

pub fn api() -> &'static ApiMetrics {
    &metrics().api
}

fn gauge_value(v: Option<u64>) -> i64 {
    v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Renders every metric in the Prometheus text format, refreshing the raft gauges first.
pub fn render(raft: &RaftMetrics, committed: Option<u64>, disk_bytes: u64) -> String {
    let m = metrics();
    m.raft.term.set(gauge_value(Some(raft.current_term)));
    m.raft.leader.set(gauge_value(raft.current_leader).max(0));
    m.raft.is_leader.set(i64::from(raft.current_leader == Some(raft.id)));
    m.raft.last_log_index.set(gauge_value(raft.last_log_index));
    m.raft.commit_index.set(gauge_value(committed));
    m.raft.applied_index.set(gauge_value(raft.last_applied.map(|id| id.index)));
    let membership = raft.membership_config.membership();
    m.raft.voters.set(membership.voter_ids().count() as i64);
    m.raft.learners.set(membership.learner_ids().count() as i64);
    m.raft.disk_bytes.set(gauge_value(Some(disk_bytes)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &m.registry);
    out
}
