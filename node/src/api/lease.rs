//! `/v1/lease`: granting, revoking, keeping alive and inspecting leases
//! (`metastore_client::lease`).

use bytes::Bytes;
use metastore_client::{self as wire, ErrorCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::auth::{caller, credentials};
use super::error::{respond, ApiError};
use super::input::{body, flag, parse_json};
use super::query::{params, Query};
use crate::engine::MAX_LEASE_TTL;
use crate::service::{Credentials, Service};

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone()).and(credentials());
    let grant =
        warp::post().and(warp::path!("v1" / "lease")).and(params(&[])).and(body()).and(svc.clone()).then(
            |q: Result<Query, ApiError>, body: Result<Bytes, ApiError>, s, c| async move {
                respond(grant(q, body, s, c).await)
            },
        );
    let list = warp::get()
        .and(warp::path!("v1" / "lease"))
        .and(params(&[]))
        .and(svc.clone())
        .then(|q, s, c| async move { respond(list(q, s, c).await) });
    let revoke = warp::delete()
        .and(warp::path!("v1" / "lease" / String))
        .and(params(&[]))
        .and(svc.clone())
        .then(|id: String, q, s, c| async move { respond(revoke(&id, q, s, c).await) });
    let keep_alive = warp::post()
        .and(warp::path!("v1" / "lease" / String / "keepalive"))
        .and(params(&[]))
        .and(svc.clone())
        .then(|id: String, q, s, c| async move { respond(keep_alive(&id, q, s, c).await) });
    let time_to_live = warp::get()
        .and(warp::path!("v1" / "lease" / String))
        .and(params(&["keys"]))
        .and(svc)
        .then(|id: String, q, s, c| async move { respond(time_to_live(&id, q, s, c).await) });
    grant.or(list).unify().or(revoke).unify().or(keep_alive).unify().or(time_to_live).unify()
}

fn lease_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidLease, format!("a lease id is a positive number, not {text:?}"))
    })
}

async fn grant(
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    service: Service,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    q?;
    let caller = caller(&service, &credentials)?;
    let request: wire::LeaseGrantRequest = parse_json(&body?)?;
    if request.id < 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidLease,
            format!("a lease id is positive, not {}", request.id),
        ));
    }
    if request.ttl > MAX_LEASE_TTL {
        let message = format!("too large lease TTL: {} s, the most is {MAX_LEASE_TTL}", request.ttl);
        return Err(ApiError::new(ErrorCode::InvalidLease, message));
    }
    let (id, ttl, revision) = service.lease_grant(caller.as_ref(), request.id, request.ttl).await?;
    Ok(warp::reply::json(&wire::LeaseGrantResponse { id, ttl, revision }).into_response())
}

async fn list(
    q: Result<Query, ApiError>,
    service: Service,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    q?;
    let caller = caller(&service, &credentials)?;
    let leases =
        service.leases(caller.as_ref()).await?.into_iter().map(|(id, _)| wire::LeaseListed { id }).collect();
    Ok(warp::reply::json(&wire::LeaseListResponse { leases }).into_response())
}

async fn revoke(
    id: &str,
    q: Result<Query, ApiError>,
    service: Service,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    q?;
    let caller = caller(&service, &credentials)?;
    let revision = service.lease_revoke(caller.as_ref(), lease_id(id)?).await?;
    Ok(warp::reply::json(&wire::LeaseRevokeResponse { revision }).into_response())
}

async fn keep_alive(
    id: &str,
    q: Result<Query, ApiError>,
    service: Service,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    q?;
    let id = lease_id(id)?;
    let caller = caller(&service, &credentials)?;
    let ttl = service.lease_keep_alive(caller.as_ref(), id).await?;
    Ok(warp::reply::json(&wire::LeaseKeepAliveResponse { id, ttl }).into_response())
}

async fn time_to_live(
    id: &str,
    q: Result<Query, ApiError>,
    service: Service,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    let keys = flag(&q?, "keys")?;
    let caller = caller(&service, &credentials)?;
    let status = service.lease_time_to_live(caller.as_ref(), lease_id(id)?, keys).await?;
    let answer = wire::LeaseTimeToLiveResponse {
        id: status.id,
        ttl: status.ttl,
        granted_ttl: status.granted_ttl,
        keys: status.keys,
    };
    Ok(warp::reply::json(&answer).into_response())
}
