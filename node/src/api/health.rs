//! `/healthz` (the process serves), `/readyz` (a leader is known and this member has applied
//! everything known committed) and `/metrics` (Prometheus text).

use metastore_client::ErrorCode;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::error::ApiError;
use super::query::{params, Query};
use crate::metrics;
use crate::service::Service;

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone());
    let healthz =
        warp::get().and(warp::path!("healthz")).and(params(&[])).map(|q: Result<Query, ApiError>| match q {
            Ok(_) => warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response(),
            Err(refused) => refused.into_response(),
        });
    let readyz = warp::get().and(warp::path!("readyz")).and(params(&[])).and(svc.clone()).then(
        |q: Result<Query, ApiError>, s: Service| async move {
            if let Err(refused) = q {
                refused.into_response()
            } else if s.is_ready().await {
                warp::reply::json(&serde_json::json!({ "ready": true })).into_response()
            } else {
                ApiError::new(
                    ErrorCode::NotReady,
                    "no leader is known, or this member has not applied everything committed",
                )
                .into_response()
            }
        },
    );
    let metrics = warp::get().and(warp::path!("metrics")).and(params(&[])).and(svc).then(
        |q: Result<Query, ApiError>, s: Service| async move {
            if let Err(refused) = q {
                return refused.into_response();
            }
            let committed = s.committed_index();
            let text = metrics::render(&s.metrics(), committed, s.reader().disk_size());
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4; charset=utf-8")
                .into_response()
        },
    );
    healthz.or(readyz).unify().or(metrics).unify()
}
