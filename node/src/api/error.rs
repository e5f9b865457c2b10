//! Error answers: JSON `{"error": code, "message": ...}` with the status that fits.

use metastore_client::ErrorBody;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::service::ServiceError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The store revision the refusal was decided at, where one was (a missing key, a failed
    /// compare): sent in the `x-metastore-revision` header.
    pub revision: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), revision: None }
    }

    pub fn at_revision(self, revision: u64) -> Self {
        Self { revision: Some(revision), ..self }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn into_response(self) -> Response {
        let body = ErrorBody { error: self.code.to_string(), message: self.message };
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        let headers = response.headers_mut();
        // No retry invitation for a write that may have applied: resending could apply it twice.
        if self.status == StatusCode::SERVICE_UNAVAILABLE && self.code != "outcome_unknown" {
            headers.insert("retry-after", HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        if let Some(revision) = self.revision {
            headers.insert(super::kv::REVISION_HEADER, HeaderValue::from(revision));
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::NoLeader => Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message),
            ServiceError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ServiceError::Invalid(_) => Self::bad_request("invalid_request", message),
            ServiceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            ServiceError::OutcomeUnknown(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", message)
            }
            ServiceError::Storage(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

/// Turns a handler's result into the answer.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}
