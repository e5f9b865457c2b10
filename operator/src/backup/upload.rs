//! One backup: a member's snapshot streamed into a multipart upload, checked as it passes.

use metastore_client::seal::SealCheck;
use metastore_client::Client;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use super::BackupError;

/// Bytes per uploaded part: above S3's 5 MiB minimum for every part but the last.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once: bounds the memory a backup holds to a few parts.
const PARTS_IN_FLIGHT: usize = 2;

/// A backup that was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object it became.
    pub path: Path,
    /// The store's revision in it.
    pub revision: u64,
    /// The id of the cluster it was taken from.
    pub cluster_id: String,
    pub bytes: u64,
    /// Its SHA-256 (the seal's), in hexadecimal.
    pub sha256: String,
}

/// Takes a snapshot through `member` and uploads it to `store` as the object `location` names
/// for the snapshot's revision. The object appears only if every byte arrived and the seal
/// held; otherwise the upload is aborted and the error says why.
#[tracing::instrument(skip_all, fields(member = member.base_url()))]
pub async fn upload(
    member: &Client,
    store: &dyn ObjectStore,
    location: impl FnOnce(u64) -> Path,
) -> Result<Uploaded, BackupError> {
    let mut download = member.snapshot().await?;
    let path = location(download.revision);
    let failed = |source| BackupError::Upload { path: path.to_string(), source };
    let multipart = store.put_multipart(&path).await.map_err(failed)?;
    let mut writer = WriteMultipart::new_with_chunk_size(multipart, PART_BYTES);
    let mut check = SealCheck::default();
    let streamed: Result<(), BackupError> = async {
        while let Some(chunk) = download.chunk().await? {
            check.add(&chunk);
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(failed)?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    let bytes = check.length();
    let sealed = streamed.and_then(|()| check.finish().map_err(BackupError::from));
    match sealed {
        Ok(sealed) => {
            writer.finish().await.map_err(failed)?;
            let sha256 = sealed.checksum.iter().map(|b| format!("{b:02x}")).collect();
            tracing::info!(%path, revision = download.revision, bytes, "backup uploaded");
            Ok(Uploaded { path, revision: download.revision, cluster_id: download.cluster_id, bytes, sha256 })
        }
        Err(e) => {
            // Nothing was completed, so no object exists; aborting frees the parts stored.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%path, error = %abort, "could not abort the failed upload's parts");
            }
            Err(e)
        }
    }
}
