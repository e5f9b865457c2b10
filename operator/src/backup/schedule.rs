//! Backups on a schedule: a cluster whose spec has `backup.schedule` gets a `MetaStoreBackup`
//! each time the schedule comes round, as a CronJob gets a Job. Only the latest occurrence
//! missed while the operator was away is made up for, never a burst of them.

use chrono::{DateTime, Utc};
use croner::errors::CronError;
use croner::Cron;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::{BackupPhase, MetaStoreBackup, MetaStoreBackupSpec, Retention, S3Destination};
use crate::crd::{BackupRecord, BackupsStatus, MetaStoreCluster};

/// Scheduled backups of a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// When, as a cron expression in UTC: `0 3 * * *` is daily at 03:00, `*/30 * * * *` every
    /// half hour.
    pub schedule: String,
    /// Where the backups go.
    pub s3: S3Destination,
    /// Which backups under the cluster's prefix are kept; everything, when unset.
    #[serde(default)]
    pub retention: Retention,
}

impl BackupSchedule {
    /// The schedule, parsed.
    pub fn cron(&self) -> Result<Cron, CronError> {
        self.schedule.parse()
    }
}

/// When a backup is due at `now`: the latest occurrence of `cron` after `since` (the last one
/// made, else when the cluster was created) and no later than `now`, if there is one; and the
/// next occurrence after `now`, to wake up for.
pub fn due(
    cron: &Cron,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>), CronError> {
    let latest = cron.find_previous_occurrence(&now, true)?;
    let next = cron.find_next_occurrence(&now, false)?;
    Ok(((latest > since).then_some(latest), next))
}

/// The name of the backup made for the occurrence at `at`: the same for the same occurrence,
/// so that two passes (or two operator replicas) cannot make it twice.
pub fn backup_name(cluster: &str, at: DateTime<Utc>) -> String {
    format!("{cluster}-{}", at.format("%Y%m%d-%H%M%S"))
}

/// Labels of a scheduled backup: its cluster, and that the schedule made it.
pub const CLUSTER_LABEL: &str = "metastore.io/cluster";
pub const SCHEDULED_LABEL: &str = "metastore.io/scheduled";
/// Whether the schedule made `backup`.
pub fn is_scheduled(backup: &MetaStoreBackup) -> bool {
    backup.labels().get(SCHEDULED_LABEL).is_some_and(|v| v == "true")
}

/// Finished scheduled `MetaStoreBackup`s kept as a record (their objects are retention's).
pub const HISTORY: usize = 10;

/// One pass of the scheduler for `cluster`: makes the backup that is due, if one is, forgets
/// finished scheduled backups past [`HISTORY`], and reports the cluster's last backups; also
/// when to look again. Its failures are the caller's to report: they never hold up the
/// cluster's own reconcile.
pub async fn reconcile(
    client: &kube::Client,
    cluster: &MetaStoreCluster,
    now: DateTime<Utc>,
) -> Result<(BackupsStatus, Option<std::time::Duration>), ScheduleError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let backups = Api::<MetaStoreBackup>::namespaced(client.clone(), &namespace);
    let previous = cluster.status.as_ref().and_then(|s| s.backups.clone()).unwrap_or_default();
    let mut status =
        BackupsStatus { last_schedule_time: previous.last_schedule_time.clone(), ..Default::default() };
    let mut wake = None;
    if let Some(schedule) = &cluster.spec.backup {
        let cron =
            schedule.cron().map_err(|e| ScheduleError::Invalid(schedule.schedule.clone(), e.to_string()))?;
        let since = previous
            .last_schedule_time
            .as_ref()
            .or(cluster.metadata.creation_timestamp.as_ref())
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
            .unwrap_or(now);
        let (due_now, next) = due(&cron, since, now)
            .map_err(|e| ScheduleError::Invalid(schedule.schedule.clone(), e.to_string()))?;
        if let Some(at) = due_now {
            let backup = scheduled_backup(cluster, schedule, at)?;
            match backups.create(&PostParams::default(), &backup).await {
                Ok(_) => {
                    tracing::info!(cluster = %name, backup = %backup.name_any(), "scheduled backup made")
                }
                // Made already, by an earlier pass that could not record it.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(ScheduleError::Kube(e)),
            }
            status.last_schedule_time =
                Some(Time(k8s_openapi::jiff::Timestamp::from_second(at.timestamp()).unwrap_or_default()));
        }
        wake = (next - now).to_std().ok();
    }

    let mine: Vec<MetaStoreBackup> = backups
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.cluster_name == name)
        .collect();
    let finished = |b: &&MetaStoreBackup| {
        b.status.as_ref().and_then(|s| s.completed_at.as_ref().map(|t| (t.clone(), s.phase)))
    };
    let latest = |phase: BackupPhase| {
        mine.iter()
            .filter_map(|b| finished(&b).filter(|(_, p)| *p == Some(phase)).map(|(t, _)| (t, b)))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(t, b)| BackupRecord {
                name: b.name_any(),
                completed_at: Some(t),
                detail: b.status.as_ref().and_then(|s| {
                    if phase == BackupPhase::Succeeded {
                        s.location.clone()
                    } else {
                        s.message.clone()
                    }
                }),
            })
    };
    status.last_success = latest(BackupPhase::Succeeded);
    status.last_failure = latest(BackupPhase::Failed);

    let mut done: Vec<&MetaStoreBackup> =
        mine.iter().filter(|b| is_scheduled(b) && finished(b).is_some()).collect();
    done.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone()));
    for old in done.into_iter().skip(HISTORY) {
        backups.delete(&old.name_any(), &DeleteParams::default()).await?;
    }
    Ok((status, wake))
}

/// The `MetaStoreBackup` made for the occurrence at `at`, owned by its cluster.
fn scheduled_backup(
    cluster: &MetaStoreCluster,
    schedule: &BackupSchedule,
    at: DateTime<Utc>,
) -> Result<MetaStoreBackup, ScheduleError> {
    let name = cluster.name_any();
    let owner = cluster.controller_owner_ref(&()).ok_or(ScheduleError::NoUid)?;
    let mut backup = MetaStoreBackup::new(
        &backup_name(&name, at),
        MetaStoreBackupSpec { cluster_name: name.clone(), s3: schedule.s3.clone() },
    );
    backup.metadata.namespace = cluster.namespace();
    backup.metadata.owner_references = Some(vec![owner]);
    backup.metadata.labels =
        Some([(CLUSTER_LABEL.to_string(), name), (SCHEDULED_LABEL.to_string(), "true".to_string())].into());
    Ok(backup)
}

/// Why scheduled backups could not be looked after.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("backup.schedule {0:?} is not a cron expression: {1}")]
    Invalid(String, String),
    #[error("the MetaStoreCluster has no uid yet")]
    NoUid,
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn the_latest_missed_occurrence_is_due_once_and_the_next_is_named() {
        let daily: Cron = "0 3 * * *".parse().expect("cron");
        let now = at("2026-12-07T13:00:00Z");
        let (due_now, next) = due(&daily, at("2026-12-01T00:00:00Z"), now).expect("due");
        assert_eq!(due_now, Some(at("2026-12-07T03:00:00Z")), "six were missed: only the latest");
        assert_eq!(next, at("2026-12-08T03:00:00Z"));
        let (again, _) = due(&daily, at("2026-12-07T03:00:00Z"), now).expect("due");
        assert_eq!(again, None, "made already");
        let (new_cluster, _) = due(&daily, at("2026-12-07T12:00:00Z"), now).expect("due");
        assert_eq!(new_cluster, None, "nothing before the cluster existed");
    }

    #[test]
    fn an_occurrence_names_one_backup() {
        assert_eq!(backup_name("demo", at("2026-12-07T03:00:00Z")), "demo-20261207-030000");
        let invalid = BackupSchedule {
            schedule: "every day".into(),
            s3: serde_json::from_value(serde_json::json!({"bucket": "b"})).expect("s3"),
            retention: Retention::default(),
        };
        assert!(invalid.cron().is_err());
    }
}
