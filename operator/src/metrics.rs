//! The operator's own metrics, served with a health check on its metrics port.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use warp::Filter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

/// One cluster's backups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub cluster: String,
}

/// Reconcile counts, durations and errors; backups.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    errors: Family<ErrorLabels, Counter>,
    backup_last_success: Family<ClusterLabels, Gauge>,
    backup_failures: Family<ClusterLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("metastore_operator");
        let reconciles = Counter::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_seconds", "Time one reconcile took", reconcile_seconds.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by kind", errors.clone());
        let backup_last_success = Family::<ClusterLabels, Gauge>::default();
        let backup_failures = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the cluster's last backup was kept (Unix time)",
            backup_last_success.clone(),
        );
        registry.register("backup_failures", "Backup attempts that failed", backup_failures.clone());
        Self { registry, reconciles, reconcile_seconds, errors, backup_last_success, backup_failures }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// A backup of the cluster was kept at `unix_seconds`.
    pub fn backed_up(&self, cluster: ClusterLabels, unix_seconds: i64) {
        self.backup_last_success.get_or_create(&cluster).set(unix_seconds);
    }

    /// A backup of the cluster is being tried: its failure count exists from 0, so that the
    /// first failure is an increase an alert sees.
    pub fn backup_attempted(&self, cluster: &ClusterLabels) {
        let _ = self.backup_failures.get_or_create(cluster);
    }

    pub fn backup_failed(&self, cluster: ClusterLabels) {
        self.backup_failures.get_or_create(&cluster).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let metrics_route = warp::path!("metrics").map(move || {
        warp::reply::with_header(metrics.render(), "content-type", "text/plain; version=0.0.4; charset=utf-8")
    });
    let health = warp::path!("healthz").map(|| String::from("ok"));
    let routes = warp::get().and(metrics_route.or(health));
    warp::serve(routes).incoming(listener).graceful(shutdown).run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_errors_are_counted() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3));
        m.failed("apply");
        let text = m.render();
        assert!(text.contains("metastore_operator_reconciles_total 1"), "{text}");
        assert!(text.contains(r#"metastore_operator_reconcile_errors_total{kind="apply"} 1"#), "{text}");
        assert!(text.contains("metastore_operator_reconcile_seconds_count 1"), "{text}");
        let demo = ClusterLabels { namespace: "db".into(), cluster: "demo".into() };
        m.backed_up(demo.clone(), 1_700_000_000);
        m.backup_failed(demo);
        let text = m.render();
        let labels = r#"{namespace="db",cluster="demo"}"#;
        assert!(
            text.contains(&format!(
                "metastore_operator_backup_last_success_timestamp_seconds{labels} 1700000000"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("metastore_operator_backup_failures_total{labels} 1")), "{text}");
    }
}
