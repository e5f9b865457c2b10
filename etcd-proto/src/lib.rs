//! etcd's v3 wire protocol as metaStore speaks it: the messages and gRPC services of
//! `proto/`, for the node's etcd API and for the load generator that drives it.
//!
//! The `.proto` files are ours; their package, service and message names, field numbers and
//! types are the protocol that etcd's clients (etcdctl, Kubernetes, the client libraries)
//! were built against.

#![allow(clippy::all, clippy::unwrap_used)]

/// The stored record and watch events (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The services and their messages (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
