//! The client HTTP API (the `--port` listener), as described in `docs/openapi.yaml`.
//!
//! Every handler answers with a response of its own: bad input becomes a JSON error with the
//! right status, never a panic and never a fall-through to another route.

mod admin;
mod auth;
mod cluster;
mod error;
mod health;
mod input;
mod kv;
mod lease;
mod query;
mod raw;
mod snapshot;
mod txn;
mod watch;

use metastore_client::ErrorCode;
use std::convert::Infallible;

use warp::reply::Response;
use warp::{Filter, Rejection};

pub use error::ApiError;

use crate::metrics::{self, RequestLabels};
use crate::network::PeerToken;
use crate::service::Service;

/// With a peer `token`, membership changes and snapshots must present it (see [`admin`]).
///
/// Each group of routes is boxed: a request's future would otherwise be the largest of every
/// route's, some 12 KiB, copied several times per request on its way to being polled (a tenth
/// of a busy leader's CPU went to those copies).
pub fn routes(
    service: Service,
    token: Option<PeerToken>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    health::routes(service.clone())
        .boxed()
        .or(cluster::routes(service.clone(), token.clone()).boxed())
        .unify()
        .or(snapshot::routes(service.clone(), token).boxed())
        .unify()
        .or(kv::routes(service.clone()).boxed())
        .unify()
        .or(txn::routes(service.clone()).boxed())
        .unify()
        .or(watch::routes(service.clone()).boxed())
        .unify()
        .or(lease::routes(service.clone()).boxed())
        .unify()
        .or(auth::routes(service.clone()).boxed())
        .unify()
        .or(raw::routes(service).boxed())
        .unify()
        .recover(rejection)
        .unify()
        .with(warp::log::custom(observe))
}

/// What is left after every route declined: a wrong method or path.
async fn rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::new(ErrorCode::NotFound, "no such endpoint")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::new(ErrorCode::InvalidQuery, "the query string is malformed")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed here")
    } else {
        ApiError::new(ErrorCode::BadRequest, format!("{rejection:?}"))
    };
    Ok(error.into_response())
}

/// A bounded label for a request path: keys never become label values.
fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/v1/kv" => "range",
        "/v1/compact" => "compact",
        "/v1/txn" => "txn",
        "/v1/watch" => "watch",
        p if p.starts_with("/v1/kv/") => "kv",
        p if p.starts_with("/v1/lease") => "lease",
        p if p.starts_with("/v1/cluster") => "cluster",
        "/v1/snapshot" => "snapshot",
        p if p.starts_with("/v1/auth") => "auth",
        _ => "raw",
    }
}

fn observe(info: warp::log::Info<'_>) {
    let method = match info.method().as_str() {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    let labels = RequestLabels { route: route_label(info.path()), method, status: info.status().as_u16() };
    metrics::api().observe(labels, info.elapsed());
}
