//! Kubernetes' own tests of its storage layer, run against metaStore: the apiserver's etcd3
//! store, watcher and compaction tests, the watch cache's tests over etcd3, and the generic
//! registry's tests, from the same v1.20.2 source tree as the control plane. Built by
//! `e2e/k8s-storage/build.sh`, where etcd's embedded test cluster is replaced by one that starts
//! a real 3-member metaStore cluster for every test (kine runs its backends the same way).
//!
//! Every test in them must run and pass (40, 13 and 40 of them in v1.20.2); none is skipped or
//! expected to fail.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use metastore_testkit::workspace_binary;

/// Where `e2e/k8s-storage/build.sh` caches the test binaries unless told otherwise.
const DEFAULT_DIR: &str = "/var/cache/metastore/kubernetes/storage-tests";
/// The suites run one at a time: each starts a metaStore cluster per test, and they share two
/// cores with everything else.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the Go test binary `name` against metaStore: each of its `tests` top-level tests must
/// run and pass, none skipped.
fn kubernetes_suite_passes(name: &str, tests: usize) {
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
    // Top-level results start the line; subtests' are indented.
    let passed = out.lines().filter(|l| l.starts_with("--- PASS")).count();
    let failed: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("--- FAIL")).collect();
    let skipped: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("--- SKIP")).collect();
    eprintln!(
        "kubernetes {name} tests on metaStore: {passed} passed, {} failed, {} skipped",
        failed.len(),
        skipped.len()
    );
    if !output.status.success() || !failed.is_empty() || !skipped.is_empty() || passed != tests {
        // The members' logs of a failed test are in the work directory.
        let kept = work.keep();
        let tail: Vec<&str> = out.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "Kubernetes' {name} tests on metaStore ({}): {passed} of {tests} passed; failed {failed:?}, \
             skipped {skipped:?}; logs in {}\n{}\n{}",
            output.status,
            kept.display(),
            tail.join("\n"),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_apiservers_etcd3_store_watcher_and_compaction_tests_pass() {
    kubernetes_suite_passes("etcd3", 40);
}

#[test]
fn the_watch_cache_tests_over_etcd3_pass() {
    kubernetes_suite_passes("cacher", 13);
}

#[test]
fn the_generic_registry_tests_pass() {
    kubernetes_suite_passes("registry", 40);
}
