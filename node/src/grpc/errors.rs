//! Errors as etcd's clients know them: etcd's gRPC code and its exact message, which the Go
//! client matches by text (a wrong word turns a compacted revision into a failure Kubernetes
//! cannot recover from, where etcd's text becomes 410 Gone).

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::engine::{RevisionError, TxnError, WriteError};
use crate::service::ServiceError;

pub const NO_LEADER: &str = "etcdserver: no leader";
pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const TIMED_OUT: &str = "etcdserver: request timed out";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// The gRPC status for a service error.
pub fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::NoLeader => Status::unavailable(NO_LEADER),
        ServiceError::Unavailable(message) => Status::unavailable(message),
        ServiceError::Invalid(message) => Status::invalid_argument(message),
        ServiceError::Conflict(message) => Status::failed_precondition(message),
        // etcd's answer to a proposal whose outcome it lost track of.
        ServiceError::OutcomeUnknown(_) => Status::unavailable(TIMED_OUT),
        ServiceError::Txn(TxnError::EmptyKey) => Status::invalid_argument(KEY_NOT_PROVIDED),
        ServiceError::Txn(e) => Status::invalid_argument(format!("etcdserver: {e}")),
        ServiceError::Write(WriteError::LeaseNotFound(_)) => Status::not_found(LEASE_NOT_FOUND),
        ServiceError::Write(WriteError::LeaseExists(_)) => Status::failed_precondition(LEASE_EXISTS),
        ServiceError::Revision(RevisionError::Compacted { .. }) => Status::out_of_range(COMPACTED),
        ServiceError::Revision(RevisionError::Future { .. }) => Status::out_of_range(FUTURE_REVISION),
        ServiceError::TooLarge(e) => Status::resource_exhausted(e.to_string()),
        ServiceError::Auth(e) | ServiceError::Write(WriteError::Denied(e)) => auth(e),
        ServiceError::Storage(e) => Status::internal(e.to_string()),
    }
}

/// An auth error with etcd's code and text. The one etcd leaves out of its gRPC table arrives
/// as `Unknown` with its internal `auth: ` prefix, as etcd sends it.
pub fn auth(e: AuthError) -> Status {
    let code = match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::PermissionNotGiven
        | AuthError::InvalidManagement
        | AuthError::OldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidToken => Code::Unauthenticated,
        AuthError::NoPasswordUser => return Status::unknown(format!("auth: {e}")),
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExists
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExists
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::NotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// `InvalidArgument` with etcd's text.
pub fn invalid(message: &str) -> Status {
    Status::new(Code::InvalidArgument, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errors_kubernetes_matches_carry_etcds_code_and_text() {
        let compacted =
            status(ServiceError::Revision(RevisionError::Compacted { requested: 1, compacted: 5 }));
        assert_eq!((compacted.code(), compacted.message()), (Code::OutOfRange, COMPACTED));
        let future = status(ServiceError::Revision(RevisionError::Future { requested: 9, current: 5 }));
        assert_eq!((future.code(), future.message()), (Code::OutOfRange, FUTURE_REVISION));
        let no_leader = status(ServiceError::NoLeader);
        assert_eq!((no_leader.code(), no_leader.message()), (Code::Unavailable, NO_LEADER));
        let lease = status(ServiceError::Write(WriteError::LeaseNotFound(7)));
        assert_eq!((lease.code(), lease.message()), (Code::NotFound, LEASE_NOT_FOUND));
        let duplicate = status(ServiceError::Txn(TxnError::DuplicateKey));
        assert_eq!(duplicate.message(), "etcdserver: duplicate key given in txn request");
        let many = status(ServiceError::Txn(TxnError::TooManyOps));
        assert_eq!(many.message(), "etcdserver: too many operations in txn request");
    }

    /// The Go client refreshes its token on exactly these two, matched by text.
    #[test]
    fn auth_errors_carry_etcds_code_and_text() {
        let cases = [
            (AuthError::InvalidToken, Code::Unauthenticated, "etcdserver: invalid auth token"),
            (AuthError::OldRevision, Code::InvalidArgument, "etcdserver: revision of auth store is old"),
            (AuthError::PermissionDenied, Code::PermissionDenied, "etcdserver: permission denied"),
            (AuthError::UserEmpty, Code::InvalidArgument, "etcdserver: user name is empty"),
            (
                AuthError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                AuthError::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (AuthError::NotEnabled, Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
        ];
        for (error, code, message) in cases {
            let answered = status(ServiceError::Auth(error));
            assert_eq!((answered.code(), answered.message()), (code, message));
        }
        let denied = status(ServiceError::Write(WriteError::Denied(AuthError::PermissionDenied)));
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
}
