//! The seed-compatible raw API: `PUT /{key}` with the value as the body, `GET /{key}` answering
//! the raw value (404 if absent), `DELETE /{key}`. Keys that start with a path the node uses
//! itself (`v1/`, `healthz`, `readyz`, `metrics`) are reachable only through `/v1/kv/`.

use bytes::Bytes;
use metastore_client::ErrorCode;
use warp::http::StatusCode;
use warp::path::Tail;
use warp::reply::Response;
use warp::Filter;

use super::auth::{caller, credentials};
use super::error::{respond, ApiError};
use super::input::{body, consistency, key_from_path};
use super::kv::{compare_failed, key_not_found, with_revision};
use super::query::{params, Query};
use crate::engine::Write;
use crate::service::{Credentials, Service};

const RESERVED: [&str; 4] = ["v1", "healthz", "readyz", "metrics"];

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone());
    let get = warp::get()
        .and(warp::path::tail())
        .and(params(&["consistency"]))
        .and(credentials())
        .and(svc.clone())
        .then(|tail: Tail, q, c, s| async move { respond(get(tail.as_str(), q, c, s).await) });
    let put = warp::put()
        .or(warp::post())
        .unify()
        .and(warp::path::tail())
        .and(params(&[]))
        .and(body())
        .and(credentials())
        .and(svc.clone())
        .then(|tail: Tail, q, body, c, s| async move { respond(put(tail.as_str(), q, body, c, s).await) });
    let delete = warp::delete()
        .and(warp::path::tail())
        .and(params(&[]))
        .and(credentials())
        .and(svc)
        .then(|tail: Tail, q, c, s| async move { respond(delete(tail.as_str(), q, c, s).await) });
    get.or(put).unify().or(delete).unify()
}

fn raw_key(tail: &str) -> Result<Vec<u8>, ApiError> {
    let first = tail.split('/').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no endpoint at /{tail}")));
    }
    key_from_path(tail)
}

async fn get(
    tail: &str,
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    let caller = caller(&service, &credentials)?;
    let read = service.get(caller.as_ref(), key.clone(), consistency(&q?)?, None).await?;
    match read.record {
        Some(record) => {
            let value = warp::reply::with_header(record.value, "content-type", "application/octet-stream");
            Ok(with_revision(value, read.revision))
        }
        None => Err(key_not_found(&key, read.revision)),
    }
}

async fn put(
    tail: &str,
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    q?;
    let value = body?.to_vec();
    let caller = caller(&service, &credentials)?;
    let result = service.write(caller.as_ref(), Write::Put { key, value, precondition: None }).await?;
    Ok(with_revision(StatusCode::NO_CONTENT, result.revision))
}

async fn delete(
    tail: &str,
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    q?;
    let caller = caller(&service, &credentials)?;
    let delete = Write::Delete { key: key.clone(), precondition: None };
    let result = service.write(caller.as_ref(), delete).await?;
    if !result.succeeded {
        return Err(compare_failed(&key, &result));
    }
    Ok(with_revision(StatusCode::NO_CONTENT, result.revision))
}
