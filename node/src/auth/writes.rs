//! What a client write needs of its caller's grants, checked as the write applies, against the
//! auth state and the leases of that very moment (etcd checks there too): a grant revoked in
//! between cannot be used, and the keys a lease carries are the ones it carries then.

use super::permission::Access;
use super::state::{AuthError, AuthState};
use super::Caller;
use crate::engine::{KeySpace, Op, Txn, Write};

impl AuthState {
    /// Whether `write` may apply now: the inner `Ok` is the write to apply (a write made for a
    /// caller unwrapped), the inner `Err` why it may not.
    pub fn admit<S: KeySpace>(
        &self,
        write: Write,
        keys: &mut S,
    ) -> Result<Result<Write, AuthError>, S::Error> {
        let (caller, write) = match write {
            Write::As { caller, write } => (Some(caller), *write),
            write => (None, write),
        };
        if !self.enabled {
            return Ok(Ok(write));
        }
        let allowed = Checker { state: self, caller: caller.as_ref(), keys }.write(&write)?;
        Ok(allowed.map(|()| write))
    }
}

struct Checker<'a, S> {
    state: &'a AuthState,
    caller: Option<&'a Caller>,
    keys: &'a mut S,
}

impl<S: KeySpace> Checker<'_, S> {
    fn may(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.state.check(self.caller, access, key, range_end)
    }

    /// Every key lease `id` carries must be writable by the caller: whoever attaches a key to
    /// a lease, or revokes it, decides when those keys go (etcd's rule).
    fn may_write_keys_of(&mut self, lease: i64) -> Result<Result<(), AuthError>, S::Error> {
        if lease == 0 {
            return Ok(Ok(()));
        }
        for key in self.keys.attached(lease)? {
            if let Err(e) = self.may(Access::Write, &key, &[]) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    fn write(&mut self, write: &Write) -> Result<Result<(), AuthError>, S::Error> {
        // Whatever the write touches, even nothing (an empty transaction, a lease without
        // keys), it comes from a user; only the leader's own expiries come from no one.
        if !matches!(write, Write::LeaseExpire { .. }) {
            if let Err(e) = self.state.check_user(self.caller) {
                return Ok(Err(e));
            }
        }
        Ok(match write {
            Write::Put { key, .. } | Write::Delete { key, .. } => self.may(Access::Write, key, &[]),
            Write::Txn(txn) => return self.txn(txn),
            Write::LeaseRevoke { id } => return self.may_write_keys_of(*id),
            // Any user may take a lease; expiry is the leader's own doing.
            Write::LeaseGrant { .. } | Write::LeaseExpire { .. } => Ok(()),
            // Members wrap a write once; one wrapped twice did not come from a member.
            Write::As { .. } => Err(AuthError::PermissionDenied),
        })
    }

    /// Both branches, whichever the compares choose, as etcd checks a transaction.
    fn txn(&mut self, txn: &Txn) -> Result<Result<(), AuthError>, S::Error> {
        for compare in &txn.compares {
            if let Err(e) = self.may(Access::Read, &compare.key, &compare.range_end) {
                return Ok(Err(e));
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            let allowed = match op {
                Op::Range { key, range_end, .. } => self.may(Access::Read, key, range_end),
                Op::Put { key, lease, prev_kv, .. } => {
                    let read = if *prev_kv { self.may(Access::Read, key, &[]) } else { Ok(()) };
                    match self.may(Access::Write, key, &[]).and(read) {
                        Ok(()) => self.may_write_keys_of(*lease)?,
                        denied => denied,
                    }
                }
                Op::DeleteRange { key, range_end, prev_kv } => {
                    let read = if *prev_kv { self.may(Access::Read, key, range_end) } else { Ok(()) };
                    self.may(Access::Write, key, range_end).and(read)
                }
                Op::Txn(inner) => self.txn(inner)?,
            };
            if allowed.is_err() {
                return Ok(allowed);
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthChange, Permission, PermissionKind, ROOT};
    use crate::engine::memory::Memory;
    use crate::engine::{Compare, CompareResult, CompareTarget, LeaseRecord};

    /// Auth on; alice may write under `app/` and read `app/r` alone.
    fn state() -> AuthState {
        let mut state = AuthState::default();
        let grant = |kind, key: &[u8], end: &[u8]| AuthChange::RoleGrantPermission {
            role: "app".into(),
            permission: Permission { kind, key: key.to_vec(), range_end: end.to_vec() },
        };
        for change in [
            AuthChange::UserAdd { name: ROOT.into(), password: None },
            AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() },
            AuthChange::UserAdd { name: "alice".into(), password: None },
            AuthChange::RoleAdd { name: "app".into() },
            grant(PermissionKind::Write, b"app/", b"app0"),
            grant(PermissionKind::Read, b"app/r", b""),
            AuthChange::UserGrantRole { user: "alice".into(), role: "app".into() },
            AuthChange::Enable { token_key: vec![1] },
        ] {
            state.apply(change).expect("applies");
        }
        state
    }

    fn as_alice(state: &AuthState, write: Write) -> Write {
        Write::As {
            caller: Caller { user: "alice".into(), revision: state.revision },
            write: Box::new(write),
        }
    }

    fn put(key: &[u8]) -> Write {
        Write::Put { key: key.to_vec(), value: b"v".to_vec(), precondition: None }
    }

    fn txn(compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Write {
        Write::Txn(Txn { compares, success, failure })
    }

    fn op_put(key: &[u8], lease: i64, prev_kv: bool) -> Op {
        Op::Put { key: key.to_vec(), value: b"v".to_vec(), lease, prev_kv }
    }

    fn admitted(state: &AuthState, keys: &mut Memory, write: Write) -> Result<(), AuthError> {
        state.admit(write, keys).expect("memory never fails").map(drop)
    }

    #[test]
    fn a_write_applies_only_within_its_callers_grants() {
        let state = state();
        let mut keys = Memory::default();
        assert_eq!(admitted(&state, &mut keys, as_alice(&state, put(b"app/x"))), Ok(()));
        assert_eq!(
            admitted(&state, &mut keys, as_alice(&state, put(b"other"))),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(admitted(&state, &mut keys, put(b"app/x")), Err(AuthError::UserEmpty), "no caller at all");
        let unwrapped =
            state.admit(as_alice(&state, put(b"app/x")), &mut keys).expect("memory").expect("allowed");
        assert_eq!(unwrapped, put(b"app/x"), "applied as the write itself");
    }

    #[test]
    fn a_transaction_needs_both_branches_and_its_compares_allowed() {
        let state = state();
        let mut keys = Memory::default();
        let compare = |key: &[u8]| Compare {
            key: key.to_vec(),
            range_end: Vec::new(),
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
        };
        let ok = txn(vec![compare(b"app/r")], vec![op_put(b"app/a", 0, false)], vec![]);
        assert_eq!(admitted(&state, &mut keys, as_alice(&state, ok)), Ok(()));
        // A compare reads: app/x is writable, not readable.
        let compare_unreadable = txn(vec![compare(b"app/x")], vec![], vec![]);
        assert_eq!(
            admitted(&state, &mut keys, as_alice(&state, compare_unreadable)),
            Err(AuthError::PermissionDenied)
        );
        // The failure branch counts even if the compares would choose success.
        let failure_outside = txn(vec![], vec![op_put(b"app/a", 0, false)], vec![op_put(b"other", 0, false)]);
        assert_eq!(
            admitted(&state, &mut keys, as_alice(&state, failure_outside)),
            Err(AuthError::PermissionDenied)
        );
        // Asking for the previous value reads it.
        let prev = txn(vec![], vec![op_put(b"app/x", 0, true)], vec![]);
        assert_eq!(admitted(&state, &mut keys, as_alice(&state, prev)), Err(AuthError::PermissionDenied));
        let nested = txn(
            vec![],
            vec![Op::Txn(Txn { compares: vec![], success: vec![op_put(b"zzz", 0, false)], failure: vec![] })],
            vec![],
        );
        assert_eq!(admitted(&state, &mut keys, as_alice(&state, nested)), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn a_lease_is_revoked_or_extended_with_keys_only_by_who_may_write_them_all() {
        let state = state();
        let mut keys = Memory::default();
        keys.leases.insert(7, LeaseRecord { ttl: 10, grant: 1 });
        keys.attached.insert((7, b"app/x".to_vec()));
        assert_eq!(admitted(&state, &mut keys, as_alice(&state, Write::LeaseRevoke { id: 7 })), Ok(()));
        assert_eq!(
            admitted(
                &state,
                &mut keys,
                as_alice(&state, txn(vec![], vec![op_put(b"app/y", 7, false)], vec![]))
            ),
            Ok(())
        );
        keys.attached.insert((7, b"secret".to_vec()));
        assert_eq!(
            admitted(&state, &mut keys, as_alice(&state, Write::LeaseRevoke { id: 7 })),
            Err(AuthError::PermissionDenied),
            "the lease carries a key alice may not delete"
        );
        assert_eq!(
            admitted(
                &state,
                &mut keys,
                as_alice(&state, txn(vec![], vec![op_put(b"app/y", 7, false)], vec![]))
            ),
            Err(AuthError::PermissionDenied),
            "attaching to it would let alice decide when secret goes"
        );
        assert_eq!(
            admitted(&state, &mut keys, Write::LeaseExpire { id: 7, grant: 1 }),
            Ok(()),
            "the leader's own"
        );
        keys.attached.clear();
        assert_eq!(
            admitted(&state, &mut keys, Write::LeaseRevoke { id: 7 }),
            Err(AuthError::UserEmpty),
            "a lease without keys is still revoked only by a user"
        );
        assert_eq!(admitted(&state, &mut keys, txn(vec![], vec![], vec![])), Err(AuthError::UserEmpty));
    }

    #[test]
    fn a_caller_from_before_a_change_is_refused_as_the_write_applies() {
        let mut state = state();
        let mut keys = Memory::default();
        let write = as_alice(&state, put(b"app/x"));
        state.apply(AuthChange::RoleAdd { name: "later".into() }).expect("added");
        assert_eq!(admitted(&state, &mut keys, write), Err(AuthError::OldRevision));
    }
}
