//! Backups on a schedule: a cluster whose spec has `backup.schedule` gets a `MetaStoreBackup`
//! each time the schedule comes round, as a CronJob gets a Job. Only the latest occurrence
//! missed while the operator was away is made up for, never a burst of them.

use chrono::{DateTime, Utc};
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
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
    /// The schedule, parsed: five fields, or six with seconds first; no years.
    pub fn cron(&self) -> Result<Cron, CronError> {
        CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build().parse(&self.schedule)
    }
}

/// When a backup is due at `now`: the latest occurrence of `cron` after `since` (the last one
/// made, else when the schedule was set) and no later than `now`, if there is one; and the next
/// occurrence after `now`, to wake up for, if there is one.
pub fn due(
    cron: &Cron,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let latest = cron.find_previous_occurrence(&now, true).ok();
    let next = cron.find_next_occurrence(&now, false).ok();
    (latest.filter(|latest| *latest > since), next)
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

/// One pass of the scheduler for a cluster whose spec has a schedule: makes the backup that is
/// due, if one is and the last scheduled one is not still running (as a CronJob that forbids
/// overlap); forgets finished scheduled backups past [`HISTORY`], never the last success or
/// failure; reports the cluster's last backups, and when to look again. `None` for a cluster
/// without a schedule: then it makes no API call at all. Its failures are the caller's to
/// report: they never hold up the cluster's own reconcile.
pub async fn reconcile(
    client: &kube::Client,
    cluster: &MetaStoreCluster,
    now: DateTime<Utc>,
) -> Result<Option<(BackupsStatus, Option<std::time::Duration>)>, ScheduleError> {
    let Some(schedule) = &cluster.spec.backup else { return Ok(None) };
    let invalid = |e: CronError| ScheduleError::Invalid(schedule.schedule.clone(), e.to_string());
    let cron = schedule.cron().map_err(invalid)?;
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let backups = Api::<MetaStoreBackup>::namespaced(client.clone(), &namespace);
    let previous = cluster.status.as_ref().and_then(|s| s.backups.clone()).unwrap_or_default();
    // A schedule just added or changed counts from now: it never fires for a time before it
    // was asked for.
    let unchanged = previous.schedule.as_deref() == Some(schedule.schedule.as_str());
    let set_now = || k8s_openapi::jiff::Timestamp::from_second(now.timestamp()).ok().map(Time);
    let last_schedule_time = if unchanged { previous.last_schedule_time } else { set_now() };
    let since = last_schedule_time
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
        .unwrap_or(now);
    let mut status =
        BackupsStatus { schedule: Some(schedule.schedule.clone()), last_schedule_time, ..Default::default() };
    let mine: Vec<MetaStoreBackup> = backups
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.cluster_name == name)
        .collect();
    let (due_now, next) = due(&cron, since, now);
    if let Some(at) = due_now {
        let running = mine.iter().find(|b| is_scheduled(b) && finished(b).is_none());
        match running {
            Some(running) => tracing::info!(
                cluster = %name,
                running = %running.name_any(),
                "a scheduled backup is still running: this occurrence is skipped"
            ),
            None => {
                let backup = scheduled_backup(cluster, schedule, at)?;
                match backups.create(&PostParams::default(), &backup).await {
                    Ok(_) => {
                        tracing::info!(cluster = %name, backup = %backup.name_any(), "scheduled backup made")
                    }
                    // Made already, by an earlier pass that could not record it.
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(e) => return Err(ScheduleError::Kube(e)),
                }
            }
        }
        status.last_schedule_time = k8s_openapi::jiff::Timestamp::from_second(at.timestamp()).ok().map(Time);
    }
    let wake = next.and_then(|next| (next - now).to_std().ok());

    status.last_success = latest(&mine, BackupPhase::Succeeded);
    status.last_failure = latest(&mine, BackupPhase::Failed);
    let last = |record: &Option<BackupRecord>| record.as_ref().map(|r| r.name.clone());
    let keep = [last(&status.last_success), last(&status.last_failure)];
    let mut done: Vec<&MetaStoreBackup> = mine
        .iter()
        .filter(|b| is_scheduled(b) && finished(b).is_some() && !keep.contains(&Some(b.name_any())))
        .collect();
    done.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone()));
    for old in done.into_iter().skip(HISTORY) {
        match backups.delete(&old.name_any(), &DeleteParams::default()).await {
            // Gone already (collected with its cluster, or deleted by hand).
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(ScheduleError::Kube(e)),
        }
    }
    Ok(Some((status, wake)))
}

/// When `backup` finished, and how; `None` while it runs.
fn finished(backup: &MetaStoreBackup) -> Option<(Time, Option<BackupPhase>)> {
    let status = backup.status.as_ref()?;
    Some((status.completed_at.clone()?, status.phase))
}

/// The backup among `backups` that most recently finished in `phase`.
fn latest(backups: &[MetaStoreBackup], phase: BackupPhase) -> Option<BackupRecord> {
    let (completed_at, backup) = backups
        .iter()
        .filter_map(|b| finished(b).filter(|(_, p)| *p == Some(phase)).map(|(t, _)| (t, b)))
        .max_by(|a, b| a.0.cmp(&b.0))?;
    let status = backup.status.as_ref()?;
    let detail =
        if phase == BackupPhase::Succeeded { status.location.clone() } else { status.message.clone() };
    Some(BackupRecord { name: backup.name_any(), completed_at: Some(completed_at), detail })
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
        let (due_now, next) = due(&daily, at("2026-12-01T00:00:00Z"), now);
        assert_eq!(due_now, Some(at("2026-12-07T03:00:00Z")), "six were missed: only the latest");
        assert_eq!(next, Some(at("2026-12-08T03:00:00Z")));
        let (again, _) = due(&daily, at("2026-12-07T03:00:00Z"), now);
        assert_eq!(again, None, "made already");
        let (new_schedule, _) = due(&daily, now, now);
        assert_eq!(new_schedule, None, "nothing before the schedule was set");
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
        let with_year = BackupSchedule { schedule: "0 0 3 * * * 2027".into(), ..invalid.clone() };
        assert!(with_year.cron().is_err(), "no years");
        let with_seconds = BackupSchedule { schedule: "*/10 * * * * *".into(), ..invalid };
        let cron = with_seconds.cron().expect("seconds first");
        let (_, next) = due(&cron, at("2026-12-07T13:00:00Z"), at("2026-12-07T13:00:01Z"));
        assert_eq!(next, Some(at("2026-12-07T13:00:10Z")));
    }
}
