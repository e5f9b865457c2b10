//! `metastore-operator`: the Kubernetes operator for `MetaStoreCluster` resources.
//!
//! Not built yet: the reconciler is the subject of the operator issue. Until then the binary
//! says so and exits with an error, rather than pretending to manage anything.

fn main() -> std::process::ExitCode {
    eprintln!("metastore-operator: the operator is not implemented yet; run metastore nodes directly");
    std::process::ExitCode::FAILURE
}
