//! Error answers: JSON `{"error": code, "message": ...}` with the status that fits.

use metastore_client::{ErrorBody, ErrorCode};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::auth::AuthError;
use crate::engine::{TxnError, WriteError};
use crate::service::ServiceError;
use crate::storage::RevisionError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// An error answer: its code decides its status (see [`ErrorCode::status`]).
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The store revision the refusal was decided at, where one was (a missing key, a failed
    /// compare): sent in the `x-metastore-revision` header.
    pub revision: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), revision: None }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn at_revision(self, revision: u64) -> Self {
        Self { revision: Some(revision), ..self }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody { error: self.code, message: self.message };
        let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
        let headers = response.headers_mut();
        // No retry invitation for a write that may have applied: resending could apply it twice.
        if status == StatusCode::SERVICE_UNAVAILABLE && body.error != ErrorCode::OutcomeUnknown {
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
        let code = match e {
            ServiceError::NoLeader => ErrorCode::NoLeader,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Invalid(_) => ErrorCode::InvalidRequest,
            ServiceError::Conflict(_) => ErrorCode::Conflict,
            ServiceError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            ServiceError::Txn(TxnError::DuplicateKey) => ErrorCode::DuplicateKey,
            ServiceError::Txn(TxnError::TooManyOps) => ErrorCode::TooManyOperations,
            ServiceError::Txn(TxnError::EmptyKey) => ErrorCode::InvalidKey,
            ServiceError::Txn(TxnError::TooDeep) => ErrorCode::TxnTooDeep,
            ServiceError::Write(WriteError::LeaseNotFound(_)) => ErrorCode::LeaseNotFound,
            ServiceError::Write(WriteError::LeaseExists(_)) => ErrorCode::LeaseExists,
            ServiceError::Revision(RevisionError::Future { .. }) => ErrorCode::FutureRevision,
            ServiceError::Revision(RevisionError::Compacted { .. }) => ErrorCode::Compacted,
            ServiceError::TooLarge(_) => ErrorCode::InvalidRequest,
            ServiceError::Storage(_) => ErrorCode::Internal,
            ServiceError::Auth(e) | ServiceError::Write(WriteError::Denied(e)) => auth_code(&e),
        };
        Self::new(code, message)
    }
}

fn auth_code(e: &AuthError) -> ErrorCode {
    match e {
        AuthError::UserEmpty => ErrorCode::Unauthorized,
        AuthError::InvalidToken => ErrorCode::InvalidToken,
        AuthError::OldRevision => ErrorCode::AuthRevisionOld,
        AuthError::AuthFailed | AuthError::NoPasswordUser => ErrorCode::AuthenticationFailed,
        AuthError::PermissionDenied => ErrorCode::PermissionDenied,
        AuthError::NotEnabled => ErrorCode::AuthNotEnabled,
        AuthError::UserAlreadyExists | AuthError::RoleAlreadyExists => ErrorCode::Conflict,
        AuthError::UserNotFound | AuthError::RoleNotFound => ErrorCode::NotFound,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::RoleEmpty
        | AuthError::PermissionNotGiven
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::InvalidManagement => ErrorCode::InvalidRequest,
    }
}

/// Turns a handler's result into the answer.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}
