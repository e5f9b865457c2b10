//! Backups of a cluster to S3-compatible object storage: a snapshot taken from a member
//! (`GET /v1/snapshot`) streamed into a multipart upload and checked as it passes, then old
//! backups pruned by count and age.
//!
//! A backup object exists only once it is whole: the upload is completed only after the
//! snapshot's seal (its SHA-256, `metastore_client::seal`) held over every byte uploaded, and is
//! aborted on any failure, so an interrupted backup never leaves an object a restore would take.

pub mod controller;
mod destination;
mod http;
pub mod resource;
pub mod restore;
pub mod restoring;
mod retention;
pub mod schedule;
mod upload;

pub use destination::{
    object_path, Credentials, CredentialsError, S3Destination, ACCESS_KEY_ID, BACKUP_SUFFIX,
    SECRET_ACCESS_KEY, SESSION_TOKEN,
};
pub use resource::{BackupPhase, MetaStoreBackup, MetaStoreBackupSpec, MetaStoreBackupStatus};
pub use retention::{expired, prune, Retention};
pub use schedule::BackupSchedule;
pub use upload::{upload, Uploaded};

/// Why a backup, or its pruning, failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot use the backup destination: {0}")]
    Destination(#[source] object_store::Error),
    #[error("cannot take a snapshot from the member: {0}")]
    Snapshot(#[from] metastore_client::ClientError),
    #[error("the snapshot received is not whole, so it was not kept: {0}")]
    NotWhole(#[from] metastore_client::seal::SealError),
    #[error("cannot write {path} to the object store: {source}")]
    Upload {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot list or delete old backups under {prefix}: {source}")]
    Prune {
        prefix: String,
        #[source]
        source: object_store::Error,
    },
}
