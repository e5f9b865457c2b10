//! The end-to-end suite: the same scenarios (`scenarios`) on two cluster providers.
//!
//! - `local`: a real kube-apiserver and kube-controller-manager built from source and run on
//!   127.0.0.1 (their state in etcd, or in a 3-member metaStore cluster: `store`), the chart
//!   installed with helm, the operator as a process with the chart's RBAC
//!   identity, and a stand-in kubelet (`kubelet`) running the member pods as processes.
//!   `cargo test -p metastore-e2e --test local`; it runs in `.ci/run`.
//! - `kind`: a kind cluster with the image built and loaded (`e2e/kind/run.sh`).
//!
//! `e2e/run.sh local|kind` runs either.

pub mod control_plane;
pub mod kind;
pub mod kubelet;
pub mod local;
pub mod sandbox;
pub mod scenarios;
pub mod store;
