//! `GET /v1/watch`: a watch's messages streamed as JSON lines (`metastore_client::watch`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use metastore_client::{self as wire, ErrorCode, MAX_KEY_BYTES};
use tokio::sync::mpsc;
use warp::http::header::{HeaderValue, CONTENT_TYPE};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::auth::{caller, credentials};
use super::error::{respond, ApiError};
use super::input::{check_key, flag};
use super::kv::key_value;
use super::query::{params, Query};
use crate::engine::KeyRange;
use crate::service::{Credentials, Need, Service};
use crate::storage::Change;
use crate::watch::{WatchMessage, WatchRequest};

/// How often a watch that asked for progress notifications gets one.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

const PARAMETERS: &[&str] =
    &["key", "range_end", "prefix", "start_revision", "prev_kv", "no_put", "no_delete", "progress_notify"];

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path!("v1" / "watch"))
        .and(params(PARAMETERS))
        .and(credentials())
        .and(warp::any().map(move || service.clone()))
        .then(|q, c, s| async move { respond(watch(q, c, s).await) })
}

async fn watch(
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let request = request(&q?)?;
    let caller = caller(&service, &credentials)?;
    let keys = &request.keys;
    service.authorize(caller.as_ref(), Need::Read(&keys.key, &keys.range_end)).await?;
    let lines = Lines { messages: service.watch(request) };
    let mut response = warp::reply::stream(lines).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

fn request(q: &Query) -> Result<WatchRequest, ApiError> {
    let keys = match (q.bytes("prefix"), q.bytes("key")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(ErrorCode::InvalidRange, "give either prefix or key, not both"));
        }
        (Some(_), None) if q.bytes("range_end").is_some() => {
            return Err(ApiError::new(ErrorCode::InvalidRange, "give either prefix or range_end, not both"));
        }
        (Some(prefix), None) => KeyRange::prefix(prefix),
        (None, Some(key)) => {
            check_key(key)?;
            let range_end = q.bytes("range_end").unwrap_or_default().to_vec();
            if range_end.len() > MAX_KEY_BYTES {
                return Err(ApiError::new(
                    ErrorCode::KeyTooLarge,
                    "the range end is longer than a key may be",
                ));
            }
            KeyRange { key: key.to_vec(), range_end }
        }
        (None, None) => {
            return Err(ApiError::new(ErrorCode::InvalidKey, "name a key (key=) or a prefix (prefix=)"))
        }
    };
    let start_revision = match q.text("start_revision")? {
        None | Some("") => 0,
        Some(r) => r.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRevision,
                format!("start_revision must be a revision number, not {r:?}"),
            )
        })?,
    };
    Ok(WatchRequest {
        keys,
        start_revision,
        prev_kv: flag(q, "prev_kv")?,
        no_put: flag(q, "no_put")?,
        no_delete: flag(q, "no_delete")?,
        progress_every: flag(q, "progress_notify")?.then_some(PROGRESS_EVERY),
    })
}

/// The watcher's messages as lines of JSON; ends when the watcher does.
struct Lines {
    messages: mpsc::Receiver<WatchMessage>,
}

impl futures::Stream for Lines {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_recv(cx).map(|message| {
            message.map(|message| {
                let mut line = serde_json::to_vec(&wire_response(message)).unwrap_or_default();
                line.push(b'\n');
                Ok(Bytes::from(line))
            })
        })
    }
}

fn wire_response(message: WatchMessage) -> wire::WatchResponse {
    match message {
        WatchMessage::Created { revision } => {
            wire::WatchResponse { revision, created: true, ..Default::default() }
        }
        WatchMessage::Changes { changes, through } => wire::WatchResponse {
            revision: through,
            events: changes.into_iter().map(event).collect(),
            ..Default::default()
        },
        WatchMessage::Progress { revision } => {
            wire::WatchResponse { revision, progress: true, ..Default::default() }
        }
        WatchMessage::Canceled { compact_revision, reason } => wire::WatchResponse {
            canceled: true,
            compact_revision,
            cancel_reason: Some(reason),
            ..Default::default()
        },
    }
}

fn event(change: Change) -> wire::WatchEvent {
    let prev_kv = change.prev.map(|prev| key_value(change.key.clone(), prev));
    match change.record {
        Some(record) => {
            wire::WatchEvent { kind: wire::EventKind::Put, kv: key_value(change.key, record), prev_kv }
        }
        None => wire::WatchEvent {
            kind: wire::EventKind::Delete,
            kv: wire::KeyValue {
                key: change.key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: change.revision,
                version: 0,
                lease: 0,
            },
            prev_kv,
        },
    }
}
