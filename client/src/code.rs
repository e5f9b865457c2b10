//! The machine-readable codes of error answers, and the HTTP status each is sent with. The node
//! answers with these and clients match on them, so both sides name them from this one list.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $status:literal;)*) => {
        /// Why a request was refused. Unknown codes (from a newer node) are kept as [`Other`].
        ///
        /// [`Other`]: ErrorCode::Other
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this client does not know.
            Other(String),
        }

        impl ErrorCode {
            /// The code as it travels: `key_not_found`, `no_leader`, ...
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Other(code) => code,
                }
            }

            /// The HTTP status the node answers this code with (500 for unknown codes).
            pub fn status(&self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Other(_) => 500,
                }
            }
        }

        impl From<String> for ErrorCode {
            fn from(code: String) -> Self {
                match code.as_str() {
                    $($text => ErrorCode::$variant,)*
                    _ => ErrorCode::Other(code),
                }
            }
        }
    };
}

error_codes! {
    /// The request's body could not be read.
    BadBody = "bad_body", 400;
    /// The request is malformed in a way no other code names.
    BadRequest = "bad_request", 400;
    BodyTooLarge = "body_too_large", 413;
    /// A read asked for a revision below the compaction revision: that history is gone.
    Compacted = "compacted", 410;
    /// A write's precondition did not hold; nothing was written.
    CompareFailed = "compare_failed", 409;
    /// The request conflicts with the cluster's state (a membership change in progress, ...).
    Conflict = "conflict", 409;
    /// A transaction writes one key twice on one path through it (etcd's rule).
    DuplicateKey = "duplicate_key", 400;
    DuplicateParameter = "duplicate_parameter", 400;
    /// A read asked for a revision beyond the store's.
    FutureRevision = "future_revision", 400;
    Internal = "internal", 500;
    InvalidConsistency = "invalid_consistency", 400;
    InvalidJson = "invalid_json", 400;
    InvalidKey = "invalid_key", 400;
    /// A lease id that is not a positive number, or a TTL out of range.
    InvalidLease = "invalid_lease", 400;
    InvalidLimit = "invalid_limit", 400;
    InvalidMember = "invalid_member", 400;
    InvalidPrecondition = "invalid_precondition", 400;
    InvalidQuery = "invalid_query", 400;
    InvalidRange = "invalid_range", 400;
    InvalidRevision = "invalid_revision", 400;
    /// The service refused the request as it is (e.g. a membership change raft does not allow).
    InvalidRequest = "invalid_request", 400;
    KeyNotFound = "key_not_found", 404;
    KeyTooLarge = "key_too_large", 413;
    /// A grant named a lease id already in use.
    LeaseExists = "lease_exists", 409;
    /// A write named a lease that does not exist (or has expired).
    LeaseNotFound = "lease_not_found", 404;
    MethodNotAllowed = "method_not_allowed", 405;
    /// No leader is known; nothing was done, so the request may be sent again.
    NoLeader = "no_leader", 503;
    NotFound = "not_found", 404;
    NotReady = "not_ready", 503;
    /// A write was handed to raft and its answer lost: it may or may not apply. Sending it
    /// again blindly could apply it twice.
    OutcomeUnknown = "outcome_unknown", 503;
    Unauthorized = "unauthorized", 401;
    /// The token presented was not issued by this cluster, or has expired: authenticate again.
    InvalidToken = "invalid_token", 401;
    /// Users, roles or permissions changed since the token was issued: authenticate again.
    AuthRevisionOld = "auth_revision_old", 401;
    /// A wrong user name or password.
    AuthenticationFailed = "authentication_failed", 401;
    /// The caller's roles do not allow the request.
    PermissionDenied = "permission_denied", 403;
    /// Authentication asked of a cluster with auth off.
    AuthNotEnabled = "auth_not_enabled", 400;
    /// A transaction holds more compares, or more operations in one list, than the limit.
    TooManyOperations = "too_many_operations", 400;
    /// A transaction nests transactions deeper than the limit.
    TxnTooDeep = "txn_too_deep", 400;
    /// Nothing was done, and trying again later may succeed.
    Unavailable = "unavailable", 503;
    UnknownParameter = "unknown_parameter", 400;
    ValueTooLarge = "value_too_large", 413;
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Other(code) => code,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_their_names_and_come_back_the_same() {
        for code in [ErrorCode::KeyNotFound, ErrorCode::OutcomeUnknown, ErrorCode::Other("new_code".into())] {
            let json = serde_json::to_string(&code).expect("encode");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).expect("decode"), code);
        }
        assert_eq!(ErrorCode::from("compare_failed".to_string()), ErrorCode::CompareFailed);
    }

    #[test]
    fn each_code_has_the_status_it_is_sent_with() {
        assert_eq!(ErrorCode::KeyNotFound.status(), 404);
        assert_eq!(ErrorCode::CompareFailed.status(), 409);
        assert_eq!(ErrorCode::NoLeader.status(), 503);
        assert_eq!(ErrorCode::KeyTooLarge.status(), 413);
    }
}
