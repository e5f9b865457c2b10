//! The end-to-end scenarios against a real Kubernetes API server on this machine (see
//! `metastore_e2e::local`), its state in etcd. Skipped, with the reason, where the machine lacks
//! what it needs.

use metastore_e2e::store::StoreKind;

#[test]
fn scenarios_on_a_local_control_plane() {
    metastore_e2e::local::run_suite("scenarios_on_a_local_control_plane", StoreKind::Etcd);
}
