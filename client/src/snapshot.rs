//! Downloading a snapshot of a member's store (`GET /v1/snapshot`): a sealed file, as
//! `metastore --restore-from` takes it.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, Response};

use crate::client::{decode_error, Client};
use crate::error::ClientError;

/// The response header naming the store's revision in the snapshot.
pub const SNAPSHOT_REVISION_HEADER: &str = "x-metastore-revision";
/// The response header naming the id of the cluster the snapshot was taken from.
pub const SNAPSHOT_CLUSTER_ID_HEADER: &str = "x-metastore-cluster-id";

/// How long a download may take in all: a snapshot is the whole store, so far longer than
/// any other request.
const DOWNLOAD_WITHIN: Duration = Duration::from_secs(6 * 60 * 60);

/// A snapshot on its way: what it holds, then its bytes as they arrive.
#[derive(Debug)]
pub struct SnapshotDownload {
    /// The store's revision in the snapshot.
    pub revision: u64,
    /// The id of the cluster it was taken from, in hexadecimal.
    pub cluster_id: String,
    url: String,
    response: Response,
}

impl SnapshotDownload {
    /// The next bytes of the file; `None` once it is whole. A download cut short is an error,
    /// never an early `None`.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.response.chunk().await.map_err(|source| ClientError::Transport { url: self.url.clone(), source })
    }
}

impl Client {
    /// Asks the member for a snapshot of its store, holding every write acknowledged before
    /// this call; presents the peer token (see [`Client::with_token`]), which a member that has
    /// one requires.
    pub async fn snapshot(&self) -> Result<SnapshotDownload, ClientError> {
        let url = format!("{}/v1/snapshot", self.base_url());
        let req = self.admin(Method::GET, &url).timeout(DOWNLOAD_WITHIN);
        let response =
            req.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|source| ClientError::Transport { url: url.clone(), source })?;
            return Err(ClientError::Api(decode_error(status, &body)));
        }
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_default()
        };
        let revision = header(SNAPSHOT_REVISION_HEADER).parse().map_err(|_| ClientError::Protocol {
            url: url.clone(),
            message: "the snapshot's revision header is missing".into(),
        })?;
        let cluster_id = header(SNAPSHOT_CLUSTER_ID_HEADER);
        Ok(SnapshotDownload { revision, cluster_id, url, response })
    }
}
