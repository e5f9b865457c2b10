//! Making a cluster: initializing raft on a member, at start from its configuration or later
//! through the API. A member initializes only on an empty store, and never twice.

use std::collections::BTreeMap;

use openraft::error::{InitializeError, RaftError};

use super::{Service, ServiceError};
use crate::config::Bootstrap;
use crate::types::{Member, NodeId};

impl Service {
    /// What a member does at start with its `bootstrap` configuration, given whether its store
    /// is `pristine` (no raft state at all). Must run before the member serves peer traffic,
    /// so that no leader's append can reach it between the pristine check and its own
    /// initialization.
    pub async fn bootstrap(&self, bootstrap: &Bootstrap, pristine: bool) -> Result<(), ServiceError> {
        let id = self.id();
        match (bootstrap, pristine) {
            (Bootstrap::Static(members), true) => {
                tracing::info!(member = id, members = members.len(), "empty store: initializing the cluster");
                match self.initialize(members.clone()).await {
                    Ok(()) => {}
                    // openraft found raft state the pristine check did not: the cluster exists.
                    Err(ServiceError::Conflict(_)) => {
                        tracing::info!(member = id, "already initialized by the leader")
                    }
                    Err(e) => return Err(e),
                }
            }
            (Bootstrap::Join { .. }, true) => {
                tracing::info!(member = id, "empty store: waiting to be added by a leader")
            }
            // Seeded before raft started (`server::run`): it has raft state now.
            (Bootstrap::Restore { .. }, true) => {
                return Err(ServiceError::Unavailable("the store was not restored before start".into()))
            }
            (_, false) => tracing::info!(member = id, "store has raft state: resuming"),
        }
        Ok(())
    }

    /// Initializes raft on this member alone, as the membership knows it or as it advertises
    /// itself: a cluster of one, to grow by adding members.
    pub async fn initialize_alone(&self) -> Result<(), ServiceError> {
        let own = self.metrics().membership_config.membership().get_node(&self.id()).cloned();
        let own = own.unwrap_or_else(|| self.own_member().clone());
        self.initialize(BTreeMap::from([(self.id(), own)])).await
    }

    /// Initializes raft on this member with `members`, which must include it.
    #[tracing::instrument(skip_all, fields(member = self.id(), members = members.len()))]
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), ServiceError> {
        match self.raft().initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(ServiceError::Conflict(
                "this member is already initialized; it never re-initializes".into(),
            )),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ServiceError::Invalid(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ServiceError::Unavailable(e.to_string())),
        }
    }
}
