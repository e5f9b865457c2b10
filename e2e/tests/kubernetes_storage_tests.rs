//! Kubernetes' own tests of its storage layer, run against metaStore: the apiserver's etcd3
//! store, watcher and compaction tests, the watch cache's tests over etcd3, and the generic
//! registry's tests, from the same v1.20.2 source tree as the control plane. Built by
//! `e2e/k8s-storage/build.sh`, where etcd's embedded test cluster is replaced by one that starts
//! a real 3-member metaStore cluster for every test (kine runs its backends the same way).
//!
//! Every test in them must pass; none is skipped or expected to fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use metastore_testkit::workspace_binary;

/// Where `e2e/k8s-storage/build.sh` caches the test binaries unless told otherwise.
const DEFAULT_DIR: &str = "/var/cache/metastore/kubernetes/storage-tests";
/// The suites run one at a time: each starts a metaStore cluster per test, and they share two
/// cores with everything else.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the Go test binary `name` against metaStore; every test in it must pass.
fn kubernetes_suite_passes(name: &str) {
    let dir =
        std::env::var_os("METASTORE_K8S_STORAGE_TESTS").map(PathBuf::from).unwrap_or(DEFAULT_DIR.into());
    let binary = dir.join(format!("{name}.test"));
    if !binary.exists() {
        eprintln!("SKIPPED: {} not found (build it once with e2e/k8s-storage/build.sh)", binary.display());
        return;
    }
    let metastore = match workspace_binary("metastore") {
        Ok(path) => path,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let work = tempfile::tempdir().expect("temp dir");
    let output = Command::new(&binary)
        .arg("-test.v")
        .arg("-test.timeout=15m")
        .env("METASTORE_BIN", &metastore)
        .env("METASTORE_MEMBERS", "3")
        .env("TMPDIR", work.path())
        .current_dir(work.path())
        .output()
        .expect("run the Kubernetes test binary");
    let out = String::from_utf8_lossy(&output.stdout);
    let passed = out.lines().filter(|l| l.starts_with("--- PASS")).count();
    let failed: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("--- FAIL")).collect();
    eprintln!("kubernetes {name} tests on metaStore: {passed} passed, {} failed", failed.len());
    if !output.status.success() || !failed.is_empty() || passed == 0 {
        let tail: Vec<&str> = out.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "Kubernetes' {name} tests failed on metaStore ({}): {failed:?}\n{}\n{}",
            output.status,
            tail.join("\n"),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_apiservers_etcd3_store_watcher_and_compaction_tests_pass() {
    kubernetes_suite_passes("etcd3");
}

#[test]
fn the_watch_cache_tests_over_etcd3_pass() {
    kubernetes_suite_passes("cacher");
}

#[test]
fn the_generic_registry_tests_pass() {
    kubernetes_suite_passes("registry");
}
