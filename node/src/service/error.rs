//! Why the service could not do what a front end asked.

use crate::auth::AuthError;
use crate::engine::{TooLarge, TxnError, WriteError};
use crate::network::wire::ForwardError;
use crate::storage::{self, RevisionError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no leader is known: the cluster is electing one, or has lost quorum")]
    NoLeader,
    /// Nothing was done, and trying again later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request can never succeed as it is.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the cluster's current state.
    #[error("{0}")]
    Conflict(String),
    /// A write was handed to raft and its answer lost: it may or may not apply, so it must not
    /// be sent again blindly.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A transaction refused before it was proposed (etcd's rules).
    #[error(transparent)]
    Txn(TxnError),
    /// A write applied without effect: it named a lease that does not exist, say.
    #[error(transparent)]
    Write(WriteError),
    /// A read asked for a revision this member cannot serve.
    #[error(transparent)]
    Revision(RevisionError),
    /// A read whose answer would be larger than an answer may be.
    #[error(transparent)]
    TooLarge(TooLarge),
    /// The caller may not do this, or is not who it says (etcd's auth errors).
    #[error(transparent)]
    Auth(AuthError),
    #[error("local storage failed: {0}")]
    Storage(storage::StoreError),
}

impl From<storage::StoreError> for ServiceError {
    fn from(e: storage::StoreError) -> Self {
        match e {
            storage::StoreError::Revision(e) => ServiceError::Revision(e),
            storage::StoreError::TooLarge(e) => ServiceError::TooLarge(e),
            e => ServiceError::Storage(e),
        }
    }
}

impl From<ForwardError> for ServiceError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::NotLeader { .. } => ServiceError::NoLeader,
            ForwardError::Unavailable(m) => ServiceError::Unavailable(m),
            ForwardError::Rejected(m) => ServiceError::Invalid(m),
            ForwardError::Conflict(m) => ServiceError::Conflict(m),
            ForwardError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m),
            ForwardError::Write(WriteError::Denied(e)) => ServiceError::Auth(e),
            ForwardError::Write(e) => ServiceError::Write(e),
        }
    }
}

impl ServiceError {
    /// The same error for another waiter; a storage error travels as its message.
    pub(super) fn shared(&self) -> ServiceError {
        match self {
            ServiceError::NoLeader => ServiceError::NoLeader,
            ServiceError::Unavailable(m) => ServiceError::Unavailable(m.clone()),
            ServiceError::Invalid(m) => ServiceError::Invalid(m.clone()),
            ServiceError::Conflict(m) => ServiceError::Conflict(m.clone()),
            ServiceError::OutcomeUnknown(m) => ServiceError::OutcomeUnknown(m.clone()),
            ServiceError::Txn(e) => ServiceError::Txn(e.clone()),
            ServiceError::Write(e) => ServiceError::Write(e.clone()),
            ServiceError::Revision(e) => ServiceError::Revision(e.clone()),
            ServiceError::TooLarge(e) => ServiceError::TooLarge(*e),
            ServiceError::Auth(e) => ServiceError::Auth(e.clone()),
            ServiceError::Storage(e) => ServiceError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_the_leader_lost_track_of_stays_unknown_for_the_client() {
        let unknown = ServiceError::from(ForwardError::OutcomeUnknown("leadership moved".into()));
        assert!(matches!(unknown, ServiceError::OutcomeUnknown(_)));
    }
}
