//! The metaStore Kubernetes operator: the `MetaStoreCluster` resource, the Kubernetes objects
//! built from it, and the planning of raft membership changes.

pub mod crd;
pub mod executor;
pub mod membership;
pub mod resources;
pub mod status;
