use crate::types::ErrorBody;

/// An error answer from a metaStore node.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {}: {}", body.error, body.message)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn code(&self) -> &str {
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

    /// True for errors worth retrying: unreachable node, no leader, not ready.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(e) => e.status == 503,
            ClientError::Transport { .. } => true,
            ClientError::Protocol { .. } => false,
        }
    }
}
