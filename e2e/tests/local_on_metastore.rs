//! The end-to-end scenarios on a control plane that keeps its own state in a 3-member metaStore
//! cluster: the operator manages MetaStoreClusters through a kube-apiserver and
//! kube-controller-manager whose every object lives in metaStore. A test binary of its own, so
//! it never runs beside the etcd-backed suite on a 2-core machine.

use metastore_e2e::store::StoreKind;

#[test]
fn scenarios_on_a_control_plane_stored_in_metastore() {
    metastore_e2e::local::run_suite("scenarios_on_a_control_plane_stored_in_metastore", StoreKind::MetaStore);
}
