//! The seed-compatible raw API: `PUT /{key}` with the value as the body, `GET /{key}` answering
//! the raw value (404 if absent), `DELETE /{key}`. Keys that start with a path the node uses
//! itself (`v1/`, `healthz`, `readyz`, `metrics`) are reachable only through `/v1/kv/`.

use std::collections::HashMap;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::path::Tail;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::error::{respond, ApiError};
use super::input::{body, consistency, key_from_path, query};
use super::kv::compare_failed;
use crate::service::Service;
use crate::types::Command;

const RESERVED: [&str; 4] = ["v1", "healthz", "readyz", "metrics"];

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone());
    let get = warp::get()
        .and(warp::path::tail())
        .and(query())
        .and(svc.clone())
        .then(|tail: Tail, q, s| async move { respond(get(tail.as_str(), q, s).await) });
    let put = warp::put()
        .or(warp::post())
        .unify()
        .and(warp::path::tail())
        .and(body())
        .and(svc.clone())
        .then(|tail: Tail, body, s| async move { respond(put(tail.as_str(), body, s).await) });
    let delete = warp::delete()
        .and(warp::path::tail())
        .and(svc)
        .then(|tail: Tail, s| async move { respond(delete(tail.as_str(), s).await) });
    get.or(put).unify().or(delete).unify()
}

fn raw_key(tail: &str) -> Result<String, ApiError> {
    let first = tail.split('/').next().unwrap_or_default();
    if RESERVED.contains(&first) {
        return Err(ApiError::not_found("not_found", format!("no endpoint at /{tail}")));
    }
    key_from_path(tail)
}

async fn get(tail: &str, q: HashMap<String, String>, service: Service) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    match service.get(key.clone(), consistency(&q)?).await? {
        Some(record) => {
            Ok(warp::reply::with_header(record.value, "content-type", "application/octet-stream")
                .into_response())
        }
        None => Err(ApiError::not_found("key_not_found", format!("key {key:?} does not exist"))),
    }
}

async fn put(tail: &str, body: Result<Bytes, ApiError>, service: Service) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    let value = body?.to_vec();
    service.write(Command::Put { key, value, precondition: None }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete(tail: &str, service: Service) -> Result<Response, ApiError> {
    let key = raw_key(tail)?;
    let result = service.write(Command::Delete { key: key.clone(), precondition: None }).await?;
    if !result.succeeded {
        return Err(compare_failed(&key, &result));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
