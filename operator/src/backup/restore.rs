//! Starting a new cluster from a backup.
//!
//! The operator checks the object whole before it creates anything (a damaged one fails the
//! restore visibly, and no pod ever starts from it), then hands the first pod what it needs to
//! fetch the object through a Secret of the cluster's own: the pod's init container
//! (`metastore-operator fetch-backup`) downloads and checks it again into the member's empty
//! volume, and the member restores from it at start (`metastore --join --restore-from`), alone.
//! The others join it as they join any new cluster. Once member 1 leads, the Secret is deleted,
//! so that a pod that later loses its volume joins the cluster instead of restoring again.

use std::path::Path as FsPath;

use futures::StreamExt;
use metastore_client::seal::{SealCheck, SealError};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{BackupPhase, Credentials, CredentialsError, MetaStoreBackup, S3Destination};

/// How long a read of the object may wait for its next bytes: a stalled connection must not
/// hold a reconcile, or the first pod's start, for ever.
const CHUNK_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the first member's init container leaves the snapshot, in the member's data
/// directory; the member consumes it (`METASTORE_RESTORE_FROM`).
pub const SEED_FILE: &str = "restore.snapshot";

/// What a new cluster starts from: a `MetaStoreBackup` that succeeded, or an object in a
/// bucket. Read once, when the cluster is created; changing it later changes nothing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// A `MetaStoreBackup` in this namespace whose phase is `Succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Or a bucket, as backups name theirs (the prefix is not used) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// ... and the object's key in it, as a backup's `status.location` shows after the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// The object a restore reads, and the bucket it is in.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    pub s3: S3Destination,
    pub object: String,
    /// The snapshot's SHA-256 when the operator checked it: the pod fetches that snapshot, not
    /// another put in its place since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl RestoreSource {
    /// `s3://bucket/key`, as backups report their location.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket, self.object)
    }
}

/// A snapshot object read whole, its seal holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub bytes: u64,
    /// The seal's SHA-256, in hexadecimal.
    pub sha256: String,
}

/// Why a cluster cannot start from its `spec.restore`.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("spec.restore must name either a backup, or an s3 bucket and an object in it")]
    NoSource,
    #[error("there is no MetaStoreBackup {0} in this namespace")]
    NoBackup(String),
    #[error("MetaStoreBackup {name} has not succeeded ({phase}): there is nothing to restore from")]
    BackupNotSucceeded { name: String, phase: String },
    #[error("MetaStoreBackup {name} reports no location in its bucket {bucket}")]
    NoLocation { name: String, bucket: String },
    #[error(
        "the volume claim {claim} of an earlier cluster of this name still exists: delete it to \
         restore under this name, or restore under another"
    )]
    VolumeExists { claim: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot use the bucket: {0}")]
    Destination(#[from] super::BackupError),
    #[error("cannot read {location}: {source}")]
    Read {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{location} is not a whole metaStore snapshot: {source}")]
    NotWhole {
        location: String,
        #[source]
        source: SealError,
    },
    #[error("{location} changed since it was checked: its SHA-256 is {found}, not {expected}")]
    Changed { location: String, expected: String, found: String },
    #[error("reading {location} stalled: nothing arrived for {} s", CHUNK_WITHIN.as_secs())]
    Stalled { location: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the restore source handed to this pod is unreadable: {0}")]
    BadSource(#[source] serde_json::Error),
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

/// The object `spec` names, as `backups` (this namespace's) know it.
pub async fn resolve(
    spec: &RestoreSpec,
    backups: &kube::Api<MetaStoreBackup>,
) -> Result<RestoreSource, RestoreError> {
    match (&spec.backup, &spec.s3, &spec.object) {
        (Some(name), None, None) => {
            let backup = backups.get_opt(name).await?.ok_or_else(|| RestoreError::NoBackup(name.clone()))?;
            source_of_backup(&backup)
        }
        (None, Some(s3), Some(object)) if !object.is_empty() => Ok(RestoreSource {
            s3: s3.clone(),
            object: object.trim_start_matches('/').to_string(),
            sha256: None,
        }),
        _ => Err(RestoreError::NoSource),
    }
}

/// The object a backup that succeeded became.
fn source_of_backup(backup: &MetaStoreBackup) -> Result<RestoreSource, RestoreError> {
    let name = kube::ResourceExt::name_any(backup);
    let status = backup.status.clone().unwrap_or_default();
    if status.phase != Some(BackupPhase::Succeeded) {
        let phase = status.phase.map_or_else(|| "not started".to_string(), |p| format!("{p:?}"));
        return Err(RestoreError::BackupNotSucceeded { name, phase });
    }
    let bucket = &backup.spec.s3.bucket;
    let object = status
        .location
        .as_deref()
        .and_then(|l| l.strip_prefix("s3://"))
        .and_then(|l| l.strip_prefix(bucket.as_str()))
        .and_then(|l| l.strip_prefix('/'))
        .filter(|key| !key.is_empty());
    let object = object.ok_or_else(|| RestoreError::NoLocation { name, bucket: bucket.clone() })?;
    Ok(RestoreSource { s3: backup.spec.s3.clone(), object: object.to_string(), sha256: None })
}

/// A snapshot object being read, every chunk through its seal: it is whole only if
/// [`Reading::finish`] says so.
struct Reading {
    location: String,
    chunks: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    check: SealCheck,
}

impl Reading {
    async fn open(source: &RestoreSource, credentials: Option<&Credentials>) -> Result<Self, RestoreError> {
        let location = source.location();
        let store = source.s3.store(credentials)?;
        match store.get(&Path::from(source.object.as_str())).await {
            Ok(object) => Ok(Self { location, chunks: object.into_stream(), check: SealCheck::default() }),
            Err(source) => Err(RestoreError::Read { location, source }),
        }
    }

    async fn next(&mut self) -> Result<Option<bytes::Bytes>, RestoreError> {
        let next = tokio::time::timeout(CHUNK_WITHIN, self.chunks.next()).await;
        let next = next.map_err(|_| RestoreError::Stalled { location: self.location.clone() })?;
        match next.transpose() {
            Ok(chunk) => {
                if let Some(chunk) = &chunk {
                    self.check.add(chunk);
                }
                Ok(chunk)
            }
            Err(source) => Err(RestoreError::Read { location: self.location.clone(), source }),
        }
    }

    fn finish(self) -> Result<Verified, RestoreError> {
        let bytes = self.check.length();
        let sealed = self
            .check
            .finish()
            .map_err(|source| RestoreError::NotWhole { location: self.location, source })?;
        Ok(Verified { bytes, sha256: sealed.checksum.iter().map(|b| format!("{b:02x}")).collect() })
    }
}

/// Checks that the object is a whole snapshot, reading it once (nothing is kept).
#[tracing::instrument(skip_all, fields(location = %source.location()))]
pub async fn verify(
    source: &RestoreSource,
    credentials: Option<&Credentials>,
) -> Result<Verified, RestoreError> {
    let mut reading = Reading::open(source, credentials).await?;
    while reading.next().await?.is_some() {}
    reading.finish()
}

/// What the first pod's init container found to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Only the first member restores; the others join it.
    NotFirstMember,
    /// The cluster is no longer being restored (its restore Secret is gone).
    NothingPending,
    /// The volume already holds a store: it is never restored over.
    StoreExists,
    /// Fetched by an earlier run of the pod, not yet consumed by the member.
    AlreadyThere,
    Fetched(Verified),
}

/// Whether `data_dir` holds anything of a store: whatever is in it but a file system's
/// `lost+found` and this module's own (partial) seed file.
fn holds_a_store(data_dir: &FsPath) -> Result<bool, std::io::Error> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name != "lost+found" && !name.starts_with(SEED_FILE) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The init container's work: for member `id`, with the restore `source` its Secret holds
/// (JSON; none once the restore is over) and the `credentials` it copied, fetches the object
/// into `data_dir`'s seed file. The file appears only once whole and checked (written beside
/// it, synced, then renamed).
pub async fn fetch(
    id: u64,
    source: Option<&str>,
    credentials: Option<&Credentials>,
    data_dir: &FsPath,
) -> Result<Fetched, RestoreError> {
    if id != 1 {
        return Ok(Fetched::NotFirstMember);
    }
    let Some(source) = source.filter(|s| !s.trim().is_empty()) else { return Ok(Fetched::NothingPending) };
    let source: RestoreSource = serde_json::from_str(source).map_err(RestoreError::BadSource)?;
    let seed = data_dir.join(SEED_FILE);
    let write_error = |path: &FsPath| {
        let path = path.display().to_string();
        move |source| RestoreError::Write { path, source }
    };
    if seed.exists() {
        return Ok(Fetched::AlreadyThere);
    }
    if holds_a_store(data_dir).map_err(write_error(data_dir))? {
        return Ok(Fetched::StoreExists);
    }
    tokio::fs::create_dir_all(data_dir).await.map_err(write_error(data_dir))?;
    let partial = data_dir.join(format!("{SEED_FILE}.partial"));
    let file = tokio::fs::File::create(&partial).await.map_err(write_error(&partial))?;
    let mut file = tokio::io::BufWriter::new(file);
    let fetched: Result<Verified, RestoreError> = async {
        let mut reading = Reading::open(&source, credentials).await?;
        while let Some(chunk) = reading.next().await? {
            file.write_all(&chunk).await.map_err(write_error(&partial))?;
        }
        let verified = reading.finish()?;
        match &source.sha256 {
            Some(expected) if *expected != verified.sha256 => Err(RestoreError::Changed {
                location: source.location(),
                expected: expected.clone(),
                found: verified.sha256,
            }),
            _ => Ok(verified),
        }
    }
    .await;
    let verified = match fetched {
        Ok(verified) => verified,
        Err(e) => {
            // Nothing half-written is left for the member to find, nor to fill the volume.
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    file.flush().await.map_err(write_error(&partial))?;
    let file = file.into_inner();
    file.sync_all().await.map_err(write_error(&partial))?;
    drop(file);
    tokio::fs::rename(&partial, &seed).await.map_err(write_error(&seed))?;
    // The rename is durable only once the directory is.
    std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(write_error(data_dir))?;
    Ok(Fetched::Fetched(verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(phase: Option<BackupPhase>, location: Option<&str>) -> MetaStoreBackup {
        let mut backup = MetaStoreBackup::new(
            "nightly",
            serde_json::from_value(serde_json::json!({"clusterName": "demo", "s3": {"bucket": "b"}}))
                .expect("spec"),
        );
        backup.status = Some(super::super::MetaStoreBackupStatus {
            phase,
            location: location.map(str::to_string),
            ..Default::default()
        });
        backup
    }

    #[test]
    fn a_backup_that_succeeded_names_its_object_in_its_bucket() {
        let source =
            source_of_backup(&backup(Some(BackupPhase::Succeeded), Some("s3://b/p/ns/demo/x.snapshot")))
                .expect("resolves");
        assert_eq!((source.s3.bucket.as_str(), source.object.as_str()), ("b", "p/ns/demo/x.snapshot"));
        assert_eq!(source.location(), "s3://b/p/ns/demo/x.snapshot");
    }

    #[test]
    fn a_backup_that_failed_or_runs_or_lost_its_location_is_nothing_to_restore_from() {
        for (phase, location) in
            [(Some(BackupPhase::Failed), None), (Some(BackupPhase::Running), None), (None, None)]
        {
            let refused = source_of_backup(&backup(phase, location)).expect_err("refused");
            assert!(matches!(refused, RestoreError::BackupNotSucceeded { .. }), "{refused}");
        }
        let elsewhere = source_of_backup(&backup(Some(BackupPhase::Succeeded), Some("s3://other/x")));
        assert!(matches!(elsewhere, Err(RestoreError::NoLocation { .. })));
    }

    #[test]
    fn only_an_empty_volume_is_restored_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!holds_a_store(&dir.path().join("missing")).expect("reads"));
        std::fs::create_dir(dir.path().join("lost+found")).expect("mkdir");
        std::fs::write(dir.path().join(format!("{SEED_FILE}.partial")), b"half").expect("write");
        assert!(!holds_a_store(dir.path()).expect("reads"), "a file system's own and a partial fetch");
        std::fs::create_dir(dir.path().join("db")).expect("mkdir");
        assert!(holds_a_store(dir.path()).expect("reads"));
    }

    #[tokio::test]
    async fn only_the_first_member_fetches_and_only_while_a_restore_is_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(fetch(2, Some("{}"), None, dir.path()).await.expect("fine"), Fetched::NotFirstMember);
        assert_eq!(fetch(1, None, None, dir.path()).await.expect("fine"), Fetched::NothingPending);
        let bad = fetch(1, Some("not json"), None, dir.path()).await;
        assert!(matches!(bad, Err(RestoreError::BadSource(_))));
    }
}
