//! Requests for the cluster's operators alone: on a member that has a peer token, they must
//! present it (`Authorization: Bearer <token>`), and while auth is on they must come from a
//! user with the root role (a `Token` header, or a client certificate). Changing the
//! membership makes the leader send the new member the log and the token; a snapshot is the
//! whole store.

use warp::http::header::{HeaderMap, AUTHORIZATION};
use warp::reply::Response;
use warp::Filter;

use metastore_client::ErrorCode;

use super::auth::{caller, credentials};
use super::error::{respond, ApiError};
use crate::network::PeerToken;
use crate::service::{Credentials, Need, Service};

/// Whether the request presented the peer token (where one is needed), and who sends it.
pub(super) struct Admission {
    token: Result<(), ApiError>,
    credentials: Credentials,
}

/// Whether the request may go ahead: always without a token; with one, only if the request
/// presents it. `what` names what is refused ("changing the membership").
pub(super) fn admission(
    token: Option<PeerToken>,
    what: &'static str,
) -> impl Filter<Extract = (Admission,), Error = std::convert::Infallible> + Clone {
    // Any header at all (even one that is not text) reaches `admit`: a bad one must be refused
    // here, not passed on to another route.
    warp::header::headers_cloned().and(credentials()).map(move |headers: HeaderMap, credentials| Admission {
        token: admit(token.as_ref(), headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()), what),
        credentials,
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

impl Admission {
    /// The same request, refused for `reason` whatever it presented.
    pub(super) fn refused(self, reason: ApiError) -> Self {
        Self { token: self.token.and(Err(reason)), ..self }
    }
}

/// Runs `handler` only for a request that was admitted, and (while auth is on) comes from a
/// user with the root role.
pub(super) async fn guarded(
    admitted: Admission,
    service: Service,
    handler: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let admin = async {
        admitted.token?;
        let caller = caller(&service, &admitted.credentials)?;
        service.authorize(caller.as_ref(), Need::Admin).await.map_err(ApiError::from)
    };
    match admin.await {
        Ok(()) => respond(handler.await),
        Err(refused) => refused.into_response(),
    }
}
