use crate::types::ErrorBody;
use crate::ErrorCode;

/// An error answer from a metaStore node.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {}: {}", body.error, body.message)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn code(&self) -> &ErrorCode {
        &self.body.error
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The node could not be reached, or the connection broke.
    #[error("request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with something that is not the API's JSON.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

impl ClientError {
    /// The HTTP status of an API error, if the node answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// True when the request certainly had no effect and may be sent again as it is: the
    /// node could not be connected to, or answered 503 for no leader or not ready. A write
    /// answered `outcome_unknown`, or whose answer was lost, may have applied.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(e) => e.status == 503 && *e.code() != ErrorCode::OutcomeUnknown,
            ClientError::Transport { source, .. } => source.is_connect(),
            ClientError::Protocol { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, code: &str) -> ClientError {
        ClientError::Api(ApiError {
            status,
            body: ErrorBody { error: code.to_string().into(), message: String::new() },
        })
    }

    #[test]
    fn only_answers_that_guarantee_nothing_happened_are_retryable() {
        assert!(answered(503, "no_leader").is_retryable());
        assert!(answered(503, "not_ready").is_retryable());
        assert!(!answered(503, "outcome_unknown").is_retryable(), "the write may have applied");
        assert!(!answered(409, "compare_failed").is_retryable());
    }
}
