//! The end-to-end scenarios on a kind cluster, run by `e2e/kind/run.sh` after it built and
//! loaded the image and installed the chart. Skipped, with the reason, anywhere else.

#[test]
fn scenarios_on_kind() {
    metastore_e2e::kind::run_suite();
}
