//! The auth state ([`crate::auth`]) in its column family: one record holding all of it (users
//! and roles are few; each change rewrites it in the apply batch of its entry), and the copy in
//! memory every request is checked against.

use std::sync::Arc;

use rocksdb::DB;
use tokio::sync::watch;

use super::codec::{decode, encode};
use super::{cf, StoreError, CF_AUTH};
use crate::auth::AuthState;

/// The key of the one record.
pub(crate) const STATE: &[u8] = b"state";

/// The stored state; a store that never had one has auth off.
pub(crate) fn read(db: &DB) -> Result<AuthState, StoreError> {
    match db.get_pinned_cf(cf(db, CF_AUTH)?, STATE)? {
        Some(bytes) => decode(&bytes),
        None => Ok(AuthState::default()),
    }
}

pub(crate) fn encode_state(state: &AuthState) -> Result<Vec<u8>, StoreError> {
    encode(state)
}

/// Refuses a record a snapshot brings that is not an auth state.
pub(crate) fn check(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if key != STATE {
        return Err(StoreError::Corrupt(format!("an auth record under an unknown key {key:?}")));
    }
    decode::<AuthState>(value).map(drop)
}

/// The auth state as the state machine last applied or installed it, shared by the state
/// machine (which sets it) and every request (which reads it, or waits for a revision).
#[derive(Clone)]
pub struct AuthCell(Arc<watch::Sender<Arc<AuthState>>>);

impl AuthCell {
    pub(crate) fn load(db: &DB) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(watch::channel(Arc::new(read(db)?)).0)))
    }

    /// A state that lets nobody in: auth on, no users. For a store whose state cannot be read.
    pub(crate) fn locked() -> Self {
        let state = AuthState { enabled: true, ..AuthState::default() };
        Self(Arc::new(watch::channel(Arc::new(state)).0))
    }

    /// The state now.
    pub fn get(&self) -> Arc<AuthState> {
        self.0.borrow().clone()
    }

    /// Changes as the state machine applies auth entries.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AuthState>> {
        self.0.subscribe()
    }

    pub(crate) fn set(&self, state: AuthState) {
        self.0.send_replace(Arc::new(state));
    }

    /// Reads the state from `db` again, after a snapshot replaced it.
    pub(crate) fn refresh(&self, db: &DB) -> Result<(), StoreError> {
        self.set(read(db)?);
        Ok(())
    }
}
