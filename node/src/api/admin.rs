//! Requests for the cluster's operators alone: on a member that has a peer token, they must
//! present it (`Authorization: Bearer <token>`). Changing the membership makes the leader send
//! the new member the log and the token; a snapshot is the whole store.

use warp::http::header::{HeaderMap, AUTHORIZATION};
use warp::reply::Response;
use warp::Filter;

use metastore_client::ErrorCode;

use super::error::{respond, ApiError};
use crate::network::PeerToken;

/// Whether the request may go ahead: always without a token; with one, only if the request
/// presents it. `what` names what is refused ("changing the membership").
pub(super) fn admission(
    token: Option<PeerToken>,
    what: &'static str,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = std::convert::Infallible> + Clone {
    // Any header at all (even one that is not text) reaches `admit`: a bad one must be refused
    // here, not passed on to another route.
    warp::header::headers_cloned().map(move |headers: HeaderMap| {
        admit(token.as_ref(), headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()), what)
    })
}

fn admit(token: Option<&PeerToken>, authorization: Option<&str>, what: &str) -> Result<(), ApiError> {
    match token {
        Some(token) if !token.admits(authorization) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("{what} needs the cluster's peer token as `Authorization: Bearer <token>`"),
        )),
        _ => Ok(()),
    }
}

/// Runs `handler` only for a request that was admitted.
pub(super) async fn guarded(
    admitted: Result<(), ApiError>,
    handler: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    match admitted {
        Ok(()) => respond(handler.await),
        Err(refused) => refused.into_response(),
    }
}
