//! Auth in the service layer: who a request comes from ([`Credentials`] to [`Caller`]), what
//! it may do ([`Need`], checked against the auth state this member applied, once it has caught
//! up with the caller's), changes to users and roles (raft entries made on the leader), and
//! `Authenticate`.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use super::forward::{unexpected, REQUEST_DEADLINE};
use super::{proposal, ReadConsistency, Service, ServiceError};
use crate::auth::{self, Access, AuthChange, AuthError, AuthState, Caller, Claims};
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};
use crate::types::{Applied, Command};

/// What a request presents to say who sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    None,
    /// A token from `Authenticate`.
    Token(String),
    /// The common name of the client certificate the connection was made with (only where
    /// the member demands client certificates, so a CA it trusts vouched for it).
    Certificate(String),
}

/// What a request needs of its caller.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// To read every key `key` and `range_end` name (etcd's key and range end).
    Read(&'a [u8], &'a [u8]),
    /// To write them.
    Write(&'a [u8], &'a [u8]),
    /// To be a user at all.
    User,
    /// The root role.
    Admin,
    /// To be this user, or hold the root role.
    SelfOrAdmin(&'a str),
    /// To hold this role, or the root role.
    RoleOrAdmin(&'a str),
}

/// How long a token stays valid: etcd's `--auth-token-ttl` default.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// Passwords hashed or checked at once, at most: each takes tens of milliseconds and 19 MiB by
/// design, so a flood of `Authenticate` calls queues here instead of exhausting the member.
static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(2)));

/// Runs `work` (a hash or a check) on a blocking thread, within [`HASHING`]. The turn goes
/// with the work, not with the request: a client that hangs up does not free it early.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
    let turn = HASHING
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ServiceError::Unavailable("this member is shutting down".into()))?;
    tokio::task::spawn_blocking(move || {
        let answer = work();
        drop(turn);
        answer
    })
    .await
    .map_err(|e| ServiceError::Unavailable(format!("hashing a password failed: {e}")))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Service {
    /// The caller `credentials` name, or none when auth is off or nothing was presented.
    /// A token that is not one this cluster issued, or has expired, is refused (clients then
    /// authenticate again); a token wins over a certificate, as in etcd.
    pub fn caller(&self, credentials: &Credentials) -> Result<Option<Caller>, ServiceError> {
        let state = self.reader().auth().get();
        if !state.enabled {
            return Ok(None);
        }
        match credentials {
            Credentials::None => Ok(None),
            Credentials::Token(token) => match auth::check_token(&state.token_key, token, now()) {
                Some(Claims { user, revision, .. }) => Ok(Some(Caller { user, revision })),
                None => Err(ServiceError::Auth(AuthError::InvalidToken)),
            },
            // Checked against whatever state holds when the request is served or applied: a
            // certificate cannot be renewed by authenticating again, as a token can.
            Credentials::Certificate(name) => {
                Ok(Some(Caller { user: name.clone(), revision: auth::ANY_REVISION }))
            }
        }
    }

    /// The auth state to check `caller` against: this member's, once it has applied at least
    /// the revision the caller was checked at (a token another member issued may be ahead).
    async fn auth_state_for(
        &self,
        caller: Option<&Caller>,
    ) -> Result<std::sync::Arc<AuthState>, ServiceError> {
        let cell = self.reader().auth();
        let wanted = match caller {
            // A certificate's caller has nothing to wait for.
            Some(c) if c.revision != auth::ANY_REVISION => c.revision,
            _ => 0,
        };
        let state = cell.get();
        if state.revision >= wanted {
            return Ok(state);
        }
        let mut changes = cell.subscribe();
        let caught_up = async { changes.wait_for(|state| state.revision >= wanted).await.map(|s| s.clone()) };
        match tokio::time::timeout(REQUEST_DEADLINE, caught_up).await {
            Ok(Ok(state)) => Ok(state),
            _ => Err(ServiceError::Unavailable(format!(
                "this member has not caught up with auth revision {wanted} yet"
            ))),
        }
    }

    /// Whether `caller` may do what `need` says, by the auth state as this member applied it.
    pub async fn authorize(&self, caller: Option<&Caller>, need: Need<'_>) -> Result<(), ServiceError> {
        if matches!(need, Need::Admin) && self.reader().auth().get().enabled {
            // A root role revoked before this request began has reached this member: what the
            // root role opens (snapshots, membership) is too much to hand out on stale state.
            self.await_freshness(ReadConsistency::Linearizable).await?;
        }
        let state = self.auth_state_for(caller).await?;
        let checked = match need {
            Need::Read(key, end) => state.check(caller, Access::Read, key, end),
            Need::Write(key, end) => state.check(caller, Access::Write, key, end),
            Need::User => state.check_user(caller),
            Need::Admin => state.check_admin(caller),
            Need::SelfOrAdmin(user) => state.check_self_or_admin(caller, user),
            Need::RoleOrAdmin(role) => state.check_role_or_admin(caller, role),
        };
        checked.map_err(ServiceError::Auth)
    }

    /// Whether `caller` may `access` every key lease `id` carries (etcd's rule for keeping a
    /// lease alive, and for seeing its keys).
    pub async fn authorize_lease(
        &self,
        caller: Option<&Caller>,
        id: i64,
        access: Access,
    ) -> Result<(), ServiceError> {
        let state = self.auth_state_for(caller).await?;
        if !state.enabled || state.check_admin(caller).is_ok() {
            return Ok(());
        }
        state.check_user(caller).map_err(ServiceError::Auth)?;
        for key in self.reader().lease_keys(id).await? {
            state.check(caller, access, &key, &[]).map_err(ServiceError::Auth)?;
        }
        Ok(())
    }

    /// The auth state for reading users and roles: as fresh as a linearizable read, after
    /// `caller` was found allowed to by `need`.
    pub async fn auth_state(
        &self,
        caller: Option<&Caller>,
        need: Need<'_>,
    ) -> Result<std::sync::Arc<AuthState>, ServiceError> {
        self.await_freshness(ReadConsistency::Linearizable).await?;
        self.authorize(caller, need).await?;
        Ok(self.reader().auth().get())
    }

    /// Changes users, roles or whether auth is on, through raft; the auth revision after it.
    /// Passwords arrive hashed ([`Service::hash_password`]).
    #[tracing::instrument(skip_all, fields(member = self.id(), change = %change.describe()))]
    pub async fn change_auth(
        &self,
        caller: Option<&Caller>,
        change: AuthChange,
    ) -> Result<u64, ServiceError> {
        let request = ForwardRequest::Auth { caller: caller.cloned(), change };
        match self.execute(request).await? {
            ForwardResponse::AuthChanged(outcome) => outcome.map_err(ServiceError::Auth),
            other => Err(unexpected(other)),
        }
    }

    /// Proposes an auth change here, as the leader.
    pub(super) async fn propose_auth(
        &self,
        caller: Option<Caller>,
        change: AuthChange,
    ) -> Result<ForwardResponse, ForwardError> {
        if !self.leads() {
            return Err(ForwardError::NotLeader { leader: None });
        }
        match self.raft().client_write(Command::Auth { caller, change }).await {
            Ok(response) => match response.data {
                Applied::Auth(outcome) => Ok(ForwardResponse::AuthChanged(outcome)),
                other => {
                    Err(ForwardError::OutcomeUnknown(format!("an auth change was answered with {other}")))
                }
            },
            Err(e) => Err(proposal::proposed_write_error(e)),
        }
    }

    /// A token for `user` if `password` is theirs, valid on every member for [`TOKEN_TTL`] or
    /// until users or roles next change. Checked against the state as of now (a linearizable
    /// read), on a blocking thread: the hash is slow by design.
    #[tracing::instrument(skip_all, fields(member = self.id(), user = %user))]
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<String, ServiceError> {
        self.await_freshness(ReadConsistency::Linearizable).await?;
        let state = self.reader().auth().get();
        if !state.enabled {
            return Err(ServiceError::Auth(AuthError::NotEnabled));
        }
        let Some(record) = state.users.get(user) else {
            // As slow as a wrong password, so a name's existence does not show in the timing.
            let _ = hash_password(password.to_owned()).await;
            return Err(ServiceError::Auth(AuthError::AuthFailed));
        };
        let Some(phc) = record.password.clone() else {
            return Err(ServiceError::Auth(AuthError::NoPasswordUser));
        };
        let given = password.to_owned();
        let matches = hashing(move || auth::password_matches(&given, &phc)).await?;
        if !matches {
            tracing::info!("authentication failed");
            return Err(ServiceError::Auth(AuthError::AuthFailed));
        }
        let claims =
            Claims { user: user.to_owned(), revision: state.revision, expires: now() + TOKEN_TTL.as_secs() };
        Ok(auth::issue_token(&state.token_key, &claims))
    }
}

/// The hash to store for `password`, on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, ServiceError> {
    hashing(move || auth::hash_password(&password))
        .await?
        .map_err(|e| ServiceError::Invalid(format!("the password cannot be hashed: {e}")))
}

/// A fresh key to sign tokens with, for enabling auth.
pub fn token_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0; 32];
    rand::rng().fill_bytes(&mut key);
    key
}
