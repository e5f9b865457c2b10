//! `GET /v1/snapshot`: this member's store as of now, as a sealed snapshot file — what
//! `metastore --restore-from` starts a new cluster from. Taken without stopping writes, and
//! holding every write acknowledged before it was asked. Only for holders of the cluster's peer
//! token, where it has one: it is the whole store.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use metastore_client::{SNAPSHOT_CLUSTER_ID_HEADER, SNAPSHOT_REVISION_HEADER};
use warp::http::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::admin::{admission, guarded};
use super::error::ApiError;
use super::query::{params, Query};
use crate::network::PeerToken;
use crate::service::Service;
use crate::storage::{SnapshotPieces, StoreError};

/// Bytes per body chunk.
const BODY_CHUNK_BYTES: usize = 1024 * 1024;

pub fn routes(
    service: Service,
    token: Option<PeerToken>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path!("v1" / "snapshot"))
        .and(admission(token, "taking a snapshot"))
        .and(params(&[]))
        .and(warp::any().map(move || service.clone()))
        .then(|admitted, q: Result<Query, ApiError>, s: Service| {
            let handler = {
                let s = s.clone();
                async move {
                    q?;
                    snapshot(s).await
                }
            };
            guarded(admitted, s, handler)
        })
}

#[tracing::instrument(skip_all, fields(member = service.id()))]
async fn snapshot(service: Service) -> Result<Response, ApiError> {
    let (pieces, revision) = service.sealed_snapshot(BODY_CHUNK_BYTES).await?;
    let mut response = warp::reply::stream(Body { pieces, done: false }).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let name = format!("attachment; filename=\"metastore-{revision}.snapshot\"");
    for (name, value) in [
        (CONTENT_DISPOSITION.as_str(), name),
        (SNAPSHOT_REVISION_HEADER, revision.to_string()),
        (SNAPSHOT_CLUSTER_ID_HEADER, format!("{:016x}", service.reader().cluster_id())),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// The snapshot's pieces as a response body. One that fails part way ends the body with an
/// error, so the connection is cut short (never ended as if whole); the file is sealed, so a
/// restore refuses what a client kept of it anyway.
struct Body {
    pieces: SnapshotPieces,
    done: bool,
}

impl futures::Stream for Body {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.pieces.poll_recv(cx).map(|piece| {
            let piece = piece.unwrap_or_else(|| Err(StoreError::Task("the snapshot ended early".into())));
            self.done = piece.as_ref().map_or(true, |piece| piece.last);
            Some(piece.map(|piece| Bytes::from(piece.data)))
        })
    }
}
