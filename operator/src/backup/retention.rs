//! Which backups to keep: the newest, by count and by age.

use chrono::{DateTime, Duration, Utc};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BackupError, BACKUP_SUFFIX};

/// How many backups, and how old, a schedule keeps. The newest backup is always kept, whatever
/// its age: pruning never leaves a cluster without one.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep at most this many (the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_count: Option<u32>,
    /// Delete backups older than this many hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age_hours: Option<u32>,
}

/// When a backup object was taken and the revision it holds, from its name
/// (`<UTC time>-r<revision>.snapshot`, as [`super::object_path`] makes it); `None` for any other
/// object.
fn backup_name(object: &ObjectMeta) -> Option<(&str, u64)> {
    let name = object.location.filename()?;
    let (stamp, revision) = name.strip_suffix(BACKUP_SUFFIX)?.split_once("-r")?;
    let stamp_shape = stamp.len() == 16
        && stamp.char_indices().all(|(i, c)| match i {
            8 => c == 'T',
            15 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    let revision = revision.parse().ok().filter(|_| revision.bytes().all(|b| b.is_ascii_digit()))?;
    stamp_shape.then_some((stamp, revision))
}

/// The backups among `objects` that `retention` no longer keeps at `now`. Only objects named
/// as backups are (`<UTC time>-r<revision>.snapshot`); anything else is never touched.
pub fn expired(objects: &[ObjectMeta], retention: &Retention, now: DateTime<Utc>) -> Vec<ObjectMeta> {
    let mut backups: Vec<((&str, u64), &ObjectMeta)> =
        objects.iter().filter_map(|o| backup_name(o).map(|name| (name, o))).collect();
    // Newest first, by the time in the name, then the revision: whatever the store's clock says.
    backups.sort_by(|a, b| b.0.cmp(&a.0));
    let backups: Vec<&ObjectMeta> = backups.into_iter().map(|(_, o)| o).collect();
    let keep = retention.max_count.map_or(usize::MAX, |n| (n as usize).max(1));
    let oldest = retention.max_age_hours.map(|hours| now - Duration::hours(i64::from(hours)));
    backups
        .into_iter()
        .enumerate()
        .filter(|(i, o)| *i > 0 && (*i >= keep || oldest.is_some_and(|oldest| o.last_modified < oldest)))
        .map(|(_, o)| o.clone())
        .collect()
}

/// Deletes the backups under `prefix` that `retention` no longer keeps at `now`; what it
/// deleted.
#[tracing::instrument(skip_all, fields(%prefix))]
pub async fn prune(
    store: &dyn ObjectStore,
    prefix: &Path,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Result<Vec<Path>, BackupError> {
    let failed = |source| BackupError::Prune { prefix: prefix.to_string(), source };
    // The prefix's own objects only: a backup of another cluster may sit below it.
    let objects = store.list_with_delimiter(Some(prefix)).await.map_err(failed)?.objects;
    let mut deleted = Vec::new();
    for object in expired(&objects, retention, now) {
        store.delete(&object.location).await.map_err(failed)?;
        tracing::info!(path = %object.location, "deleted a backup past its retention");
        deleted.push(object.location);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(name: &str, hours_ago: i64, now: DateTime<Utc>) -> ObjectMeta {
        ObjectMeta {
            location: name.into(),
            last_modified: now - Duration::hours(hours_ago),
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    fn names(objects: Vec<ObjectMeta>) -> Vec<String> {
        objects.into_iter().map(|o| o.location.to_string()).collect()
    }

    #[test]
    fn the_newest_are_kept_by_count_and_by_age_and_nothing_else_is_touched() {
        let now = Utc::now();
        let objects = vec![
            backup("ns/c/20261201T000000Z-r1.snapshot", 30, now),
            backup("ns/c/20261203T000000Z-r9.snapshot", 20, now),
            backup("ns/c/20261202T000000Z-r5.snapshot", 25, now),
            backup("ns/c/20261204T000000Z-r12.snapshot", 2, now),
            backup("ns/c/notes.txt", 100, now),
            backup("ns/c/manual.snapshot", 100, now),
            backup("ns/c/2026-r1.snapshot", 100, now),
        ];
        let by_count = Retention { max_count: Some(2), max_age_hours: None };
        assert_eq!(
            names(expired(&objects, &by_count, now)),
            ["ns/c/20261202T000000Z-r5.snapshot", "ns/c/20261201T000000Z-r1.snapshot"]
        );
        let by_age = Retention { max_count: None, max_age_hours: Some(24) };
        assert_eq!(
            names(expired(&objects, &by_age, now)),
            ["ns/c/20261202T000000Z-r5.snapshot", "ns/c/20261201T000000Z-r1.snapshot"]
        );
        assert!(expired(&objects, &Retention::default(), now).is_empty(), "no limits keep everything");
    }

    #[test]
    fn revisions_order_backups_taken_in_the_same_second() {
        let now = Utc::now();
        let objects = vec![
            backup("ns/c/20261201T000000Z-r9.snapshot", 1, now),
            backup("ns/c/20261201T000000Z-r10.snapshot", 1, now),
        ];
        let one = Retention { max_count: Some(1), max_age_hours: None };
        assert_eq!(names(expired(&objects, &one, now)), ["ns/c/20261201T000000Z-r9.snapshot"]);
    }

    #[test]
    fn the_newest_backup_is_kept_however_old() {
        let now = Utc::now();
        let objects = vec![backup("ns/c/20261201T000000Z-r1.snapshot", 1000, now)];
        let strict = Retention { max_count: Some(1), max_age_hours: Some(1) };
        assert!(expired(&objects, &strict, now).is_empty());
    }
}
