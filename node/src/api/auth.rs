//! Who an HTTP request comes from, and `POST /v1/auth/authenticate`.
//!
//! A request presents a token from `Authenticate` as `Token: <token>`, or as etcd's gateway
//! takes it, `Authorization: <token>` (an `Authorization: Bearer ...` is the cluster's peer
//! token, for membership changes, and not a user's). Without one, the common name of the
//! client's certificate names the user, where the listener verified one.

use bytes::Bytes;
use metastore_client::{AuthenticateRequest, AuthenticateResponse};
use warp::http::header::{HeaderMap, AUTHORIZATION};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::error::{respond, ApiError};
use super::input::{body, parse_json};
use super::query::{params, Query};
use crate::auth::{AuthError, Caller};
use crate::service::{Credentials, Need, Service, ServiceError};
use crate::tls::ClientName;

/// What the request presents to say who sends it.
pub(super) fn credentials() -> impl Filter<Extract = (Credentials,), Error = std::convert::Infallible> + Clone
{
    warp::header::headers_cloned().and(warp::ext::optional::<ClientName>()).map(
        |headers: HeaderMap, client: Option<ClientName>| {
            let authorization = headers.get(AUTHORIZATION).filter(|v| !v.as_bytes().starts_with(b"Bearer "));
            match (headers.get("token").or(authorization), client) {
                // Not text: no token this cluster issued.
                (Some(token), _) => Credentials::Token(token.to_str().unwrap_or_default().to_owned()),
                (None, Some(name)) => Credentials::Certificate(name.0),
                (None, None) => Credentials::None,
            }
        },
    )
}

/// The caller `credentials` name, as the service finds them.
pub(super) fn caller(service: &Service, credentials: &Credentials) -> Result<Option<Caller>, ApiError> {
    Ok(service.caller(credentials)?)
}

/// Whether `caller` may read `key`: an answer shows a key's previous state only then.
pub(super) async fn may_read(
    service: &Service,
    caller: Option<&Caller>,
    key: &[u8],
) -> Result<bool, ApiError> {
    match service.authorize(caller, Need::Read(key, &[])).await {
        Ok(()) => Ok(true),
        Err(ServiceError::Auth(AuthError::PermissionDenied)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::post().and(warp::path!("v1" / "auth" / "authenticate")).and(params(&[])).and(body()).then(
        move |q: Result<Query, ApiError>, body: Result<Bytes, ApiError>| {
            let service = service.clone();
            async move { respond(authenticate(q, body, service).await) }
        },
    )
}

async fn authenticate(
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    service: Service,
) -> Result<Response, ApiError> {
    q?;
    let request: AuthenticateRequest = parse_json(&body?)?;
    let token = service.authenticate(&request.name, &request.password).await?;
    Ok(warp::reply::json(&AuthenticateResponse { token }).into_response())
}
