//! The metaStore Kubernetes operator: the `MetaStoreCluster` resource, the Kubernetes objects
//! built from it, the planning of raft membership changes, and the reconciler that runs them.

pub mod backup;
pub mod controller;
pub mod crd;
pub mod executor;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod rbac;
pub mod resources;
pub mod rollout;
pub mod status;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the cluster's objects: {0}")]
    Build(#[from] resources::BuildError),
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Membership(#[from] executor::ExecError),
    #[error("cannot read the peer token from Secret {name}: {reason}")]
    PeerToken { name: String, reason: String },
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Build(_) => "build",
            Error::Apply { .. } => "apply",
            Error::Kube(_) => "kube",
            Error::Membership(_) => "membership",
            Error::PeerToken { .. } => "peer_token",
        }
    }
}
