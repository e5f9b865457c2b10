//! The replicated auth state and etcd's rules for changing it and for checking a caller.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::permission::{covers, Access, Permission};
use super::Caller;

/// The role that may do anything; auth can only be enabled while user `root` holds it.
pub const ROOT: &str = "root";

/// Users, roles and whether requests are checked, as of an auth revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Raised by one by every change; etcd's `authRevision`.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Signs tokens ([`super::token`]); chosen anew each time auth is enabled, so tokens from
    /// an earlier period of auth are void.
    #[serde(with = "serde_bytes")]
    pub token_key: Vec<u8>,
}

/// A store that never had users: auth off, at etcd's first auth revision (0 would read as "no
/// caller" in a check).
impl Default for AuthState {
    fn default() -> Self {
        Self {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            token_key: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The Argon2 PHC string of the password; none for a user who may only present a client
    /// certificate (etcd's `--no-password`).
    pub password: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Ordered by key, then range end; one per key and range end.
    pub permissions: Vec<Permission>,
}

/// A change to the auth state: the payload of an auth raft entry. Passwords arrive hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    Enable {
        #[serde(with = "serde_bytes")]
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

impl AuthChange {
    /// The name the change is about, for logs (never a password).
    pub fn describe(&self) -> String {
        match self {
            AuthChange::Enable { .. } => "enable auth".into(),
            AuthChange::Disable => "disable auth".into(),
            AuthChange::UserAdd { name, .. } => format!("add user {name}"),
            AuthChange::UserDelete { name } => format!("delete user {name}"),
            AuthChange::UserChangePassword { name, .. } => format!("change the password of {name}"),
            AuthChange::UserGrantRole { user, role } => format!("grant role {role} to {user}"),
            AuthChange::UserRevokeRole { user, role } => format!("revoke role {role} from {user}"),
            AuthChange::RoleAdd { name } => format!("add role {name}"),
            AuthChange::RoleDelete { name } => format!("delete role {name}"),
            AuthChange::RoleGrantPermission { role, .. } => format!("grant a permission to {role}"),
            AuthChange::RoleRevokePermission { role, .. } => format!("revoke a permission of {role}"),
        }
    }
}

/// Why an auth change or a check failed. Each is one of etcd's errors; the messages are its
/// own, which clients match (the gRPC front end adds etcd's `etcdserver: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExists,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    NotEnabled,
    #[error("invalid auth token")]
    InvalidToken,
    #[error("invalid auth management")]
    InvalidManagement,
    #[error("revision of auth store is old")]
    OldRevision,
    #[error("authentication failed, password was given for no password user")]
    NoPasswordUser,
}

impl AuthState {
    /// Applies `change` and raises the revision, or refuses it whole.
    pub fn apply(&mut self, change: AuthChange) -> Result<(), AuthError> {
        match change {
            AuthChange::Enable { token_key } => {
                if self.enabled {
                    // Already on: nothing changes, and tokens stay valid.
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                self.token_key = token_key;
            }
            AuthChange::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            AuthChange::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserAlreadyExists);
                }
                self.users.insert(name, User { password, roles: BTreeSet::new() });
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.users.remove(&name).ok_or(AuthError::UserNotFound)?;
            }
            AuthChange::UserChangePassword { name, password } => {
                self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?.password = password;
            }
            AuthChange::UserGrantRole { user, role } => {
                // `root` is granted without being added as a role first, as in etcd.
                if role != ROOT && !self.roles.contains_key(&role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                if !user.roles.insert(role) {
                    // Granted already: nothing changes, and tokens stay valid.
                    return Ok(());
                }
            }
            AuthChange::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                let user = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                if !user.roles.remove(&role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(AuthError::RoleAlreadyExists);
                }
                self.roles.insert(name, Role::default());
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.roles.remove(&name).ok_or(AuthError::RoleNotFound)?;
                // A deleted role leaves no user holding it.
                for user in self.users.values_mut() {
                    user.roles.remove(&name);
                }
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                let backwards = !matches!(permission.range_end.as_slice(), [] | [0])
                    && permission.range_end <= permission.key;
                if permission.key.is_empty() || backwards {
                    return Err(AuthError::InvalidManagement);
                }
                let role = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let same = |p: &Permission| p.key == permission.key && p.range_end == permission.range_end;
                match role.permissions.iter_mut().find(|p| same(p)) {
                    // Granting the same keys again replaces what is allowed on them.
                    Some(existing) => existing.kind = permission.kind,
                    None => {
                        role.permissions.push(permission);
                        role.permissions.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                    }
                }
            }
            AuthChange::RoleRevokePermission { role, key, range_end } => {
                let role = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions.retain(|p| !(p.key == key && p.range_end == range_end));
                if role.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// The user `caller` names, if requests are checked at all (`Ok(None)`: they are not): an
    /// absent caller, one checked before the last change, or a user since deleted is refused.
    fn user_of<'a>(&'a self, caller: Option<&'a Caller>) -> Result<Option<(&'a str, &'a User)>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        let caller = caller.ok_or(AuthError::UserEmpty)?;
        if caller.revision < self.revision {
            return Err(AuthError::OldRevision);
        }
        let user = self.users.get(&caller.user).ok_or(AuthError::PermissionDenied)?;
        Ok(Some((caller.user.as_str(), user)))
    }

    /// Whether `caller` may read or write (`access`) every key `key` and `range_end` name.
    pub fn check(
        &self,
        caller: Option<&Caller>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let Some((_, user)) = self.user_of(caller)? else { return Ok(()) };
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        let grants = user
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| &role.permissions)
            .filter(|p| p.kind.allows(access))
            .map(|p| (p.key.as_slice(), p.range_end.as_slice()));
        if covers(grants, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `caller` is a user at all: what taking a lease or listing members asks.
    pub fn check_user(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        self.user_of(caller).map(drop)
    }

    /// Whether `caller` holds the root role (needed to manage auth, membership and the store).
    /// As in etcd, the revision a caller was checked at does not matter here.
    pub fn check_admin(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let caller = caller.ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(&caller.user).ok_or(AuthError::UserNotFound)?;
        if user.roles.contains(ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `caller` is `user` itself, or may manage auth: a user may read its own record.
    pub fn check_self_or_admin(&self, caller: Option<&Caller>, user: &str) -> Result<(), AuthError> {
        match self.user_of(caller)? {
            Some((name, _)) if name == user => Ok(()),
            _ => self.check_admin(caller),
        }
    }

    /// Whether `caller` holds `role`, or may manage auth: a user may read its own roles.
    pub fn check_role_or_admin(&self, caller: Option<&Caller>, role: &str) -> Result<(), AuthError> {
        match self.user_of(caller)? {
            Some((_, user)) if user.roles.contains(role) => Ok(()),
            _ => self.check_admin(caller),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PermissionKind;

    fn caller(user: &str, revision: u64) -> Caller {
        Caller { user: user.into(), revision }
    }

    fn perm(kind: PermissionKind, key: &[u8], range_end: &[u8]) -> Permission {
        Permission { kind, key: key.to_vec(), range_end: range_end.to_vec() }
    }

    /// root (with the root role) and alice (role `app`: read-write on `app/`, read on `shared`).
    fn with_users() -> AuthState {
        let mut state = AuthState::default();
        let changes = [
            AuthChange::UserAdd { name: ROOT.into(), password: None },
            AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() },
            AuthChange::UserAdd { name: "alice".into(), password: None },
            AuthChange::RoleAdd { name: "app".into() },
            AuthChange::RoleGrantPermission {
                role: "app".into(),
                permission: perm(PermissionKind::ReadWrite, b"app/", b"app0"),
            },
            AuthChange::RoleGrantPermission {
                role: "app".into(),
                permission: perm(PermissionKind::Read, b"shared", b""),
            },
            AuthChange::UserGrantRole { user: "alice".into(), role: "app".into() },
        ];
        for change in changes {
            state.apply(change).expect("applies");
        }
        state
    }

    fn enabled() -> AuthState {
        let mut state = with_users();
        state.apply(AuthChange::Enable { token_key: b"key".to_vec() }).expect("enabled");
        state
    }

    #[test]
    fn auth_is_enabled_only_while_root_holds_the_root_role() {
        let mut state = AuthState::default();
        let enable = || AuthChange::Enable { token_key: vec![1] };
        assert_eq!(state.apply(enable()), Err(AuthError::RootUserNotExist));
        state.apply(AuthChange::UserAdd { name: ROOT.into(), password: None }).expect("added");
        assert_eq!(state.apply(enable()), Err(AuthError::RootRoleNotExist));
        state.apply(AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() }).expect("granted");
        state.apply(enable()).expect("enabled");
        assert!(state.enabled);
        // While on, root keeps what makes it root.
        assert_eq!(
            state.apply(AuthChange::UserDelete { name: ROOT.into() }),
            Err(AuthError::InvalidManagement)
        );
        let revoke = AuthChange::UserRevokeRole { user: ROOT.into(), role: ROOT.into() };
        assert_eq!(state.apply(revoke.clone()), Err(AuthError::InvalidManagement));
        state.apply(AuthChange::Disable).expect("disabled");
        state.apply(revoke).expect("allowed with auth off");
    }

    #[test]
    fn every_change_raises_the_revision_and_a_refused_or_empty_one_does_not() {
        let mut state = with_users();
        let before = state.revision;
        assert_eq!(
            state.apply(AuthChange::RoleAdd { name: "app".into() }),
            Err(AuthError::RoleAlreadyExists)
        );
        assert_eq!(
            state.apply(AuthChange::UserGrantRole { user: "alice".into(), role: "none".into() }),
            Err(AuthError::RoleNotFound)
        );
        state.apply(AuthChange::UserGrantRole { user: "alice".into(), role: "app".into() }).expect("no-op");
        assert_eq!(state.revision, before);
        state.apply(AuthChange::RoleAdd { name: "ops".into() }).expect("added");
        assert_eq!(state.revision, before + 1);
    }

    #[test]
    fn names_and_permissions_are_checked_as_etcd_checks_them() {
        let mut state = with_users();
        assert_eq!(
            state.apply(AuthChange::UserAdd { name: String::new(), password: None }),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(state.apply(AuthChange::RoleAdd { name: String::new() }), Err(AuthError::RoleEmpty));
        let backwards = perm(PermissionKind::Read, b"b", b"a");
        let grant = AuthChange::RoleGrantPermission { role: "app".into(), permission: backwards };
        assert_eq!(state.apply(grant), Err(AuthError::InvalidManagement));
        let revoke =
            AuthChange::RoleRevokePermission { role: "app".into(), key: b"x".to_vec(), range_end: vec![] };
        assert_eq!(state.apply(revoke), Err(AuthError::PermissionNotGranted));
        // Granting the same keys again changes what is allowed, not how many grants there are.
        let again = perm(PermissionKind::Read, b"app/", b"app0");
        state
            .apply(AuthChange::RoleGrantPermission { role: "app".into(), permission: again.clone() })
            .expect("ok");
        assert_eq!(state.roles["app"].permissions.iter().filter(|p| p.key == b"app/").count(), 1);
        assert!(state.roles["app"].permissions.contains(&again));
    }

    #[test]
    fn a_caller_is_held_to_its_roles_while_auth_is_on() {
        let state = enabled();
        let alice = caller("alice", state.revision);
        assert_eq!(state.check(Some(&alice), Access::Write, b"app/x", b""), Ok(()));
        assert_eq!(state.check(Some(&alice), Access::Read, b"app/", b"app0"), Ok(()));
        assert_eq!(state.check(Some(&alice), Access::Read, b"shared", b""), Ok(()));
        assert_eq!(
            state.check(Some(&alice), Access::Write, b"shared", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(state.check(Some(&alice), Access::Read, b"app/", b"\0"), Err(AuthError::PermissionDenied));
        assert_eq!(state.check(None, Access::Read, b"app/x", b""), Err(AuthError::UserEmpty));
        let root = caller(ROOT, state.revision);
        assert_eq!(state.check(Some(&root), Access::Write, b"", b"\0"), Ok(()));
        assert_eq!(state.check_admin(Some(&alice)), Err(AuthError::PermissionDenied));
        assert_eq!(state.check_admin(Some(&caller("ghost", state.revision))), Err(AuthError::UserNotFound));
        assert_eq!(
            state.check(Some(&caller("ghost", state.revision)), Access::Read, b"a", b""),
            Err(AuthError::PermissionDenied)
        );
        // A user may read its own record and the roles it holds, no one else's.
        assert_eq!(state.check_self_or_admin(Some(&alice), "alice"), Ok(()));
        assert_eq!(state.check_self_or_admin(Some(&alice), ROOT), Err(AuthError::PermissionDenied));
        assert_eq!(state.check_role_or_admin(Some(&alice), "app"), Ok(()));
        assert_eq!(state.check_role_or_admin(Some(&alice), ROOT), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn a_caller_checked_before_the_last_change_must_authenticate_again() {
        let mut state = enabled();
        let alice = caller("alice", state.revision);
        state.apply(AuthChange::RoleAdd { name: "unrelated".into() }).expect("added");
        assert_eq!(state.check(Some(&alice), Access::Read, b"app/x", b""), Err(AuthError::OldRevision));
        let fresh = caller("alice", state.revision);
        assert_eq!(state.check(Some(&fresh), Access::Read, b"app/x", b""), Ok(()));
    }

    #[test]
    fn with_auth_off_everything_is_allowed() {
        let state = with_users();
        assert_eq!(state.check(None, Access::Write, b"", b"\0"), Ok(()));
        assert_eq!(state.check_admin(None), Ok(()));
        assert_eq!(state.check_user(None), Ok(()));
    }

    #[test]
    fn deleting_a_role_takes_it_from_every_user() {
        let mut state = enabled();
        state.apply(AuthChange::RoleDelete { name: "app".into() }).expect("deleted");
        assert!(state.users["alice"].roles.is_empty());
        let alice = caller("alice", state.revision);
        assert_eq!(state.check(Some(&alice), Access::Read, b"app/x", b""), Err(AuthError::PermissionDenied));
    }
}
