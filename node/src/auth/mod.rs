//! Authentication and authorization as etcd defines them: users with passwords, roles holding
//! read and write permissions on keys and key ranges, a `root` role that may do anything, and
//! a switch that turns checking on (free of raft, RocksDB and HTTP, like [`crate::engine`]).
//!
//! The state ([`AuthState`]) is replicated: every change is a raft entry
//! ([`crate::types::Command::Auth`]) applied alike on every member, and raises the auth
//! revision. A request's caller ([`Caller`]) is checked against the state at that revision: a
//! caller who authenticated before the last change is refused with
//! [`AuthError::OldRevision`] and authenticates again, so a revoked permission is never used
//! after the revoke.

mod password;
mod permission;
mod state;
mod token;
mod writes;

pub use password::{hash as hash_password, matches as password_matches};
pub use permission::{covers, Access, Permission, PermissionKind};
pub use state::{AuthChange, AuthError, AuthState, Role, User, ROOT};
pub use token::{check as check_token, issue as issue_token, Claims};

use serde::{Deserialize, Serialize};

/// Who a request comes from, as its member established it: a user, by a token or a client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    /// The auth revision the user's token was issued at: a token from before the last change
    /// to users or roles is refused. [`ANY_REVISION`] for a client certificate, which stays
    /// good across changes (its holder cannot authenticate again).
    pub revision: u64,
}

/// The revision of a caller whose credentials do not age: a client certificate.
pub const ANY_REVISION: u64 = u64::MAX;
