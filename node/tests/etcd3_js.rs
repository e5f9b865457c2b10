//! A third client stack against etcd's API on metaStore: the npm `etcd3` client, on grpc-js
//! (HTTP/2 written in JavaScript, beside grpc-go in etcdctl and h2 in the Rust client). Its
//! session (`etcd3-js/session.js`) runs against a 3-member cluster: KV, transactions, watches,
//! leases, locks, elections, maintenance, and etcd's error texts as that client matches them.
//!
//! The client is installed with npm from `etcd3-js/package-lock.json`; `.ci/run` does it into a
//! cache outside the clone and names the `node_modules` in `METASTORE_ETCD3_JS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{start_etcd, Cluster};

/// The directory holding the `etcd3` module, if it is installed.
fn etcd3_modules() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/etcd3-js/node_modules");
    let modules = std::env::var_os("METASTORE_ETCD3_JS").map(PathBuf::from).unwrap_or(here);
    modules.join("etcd3/package.json").exists().then_some(modules)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_npm_etcd3_client_works_against_a_cluster() {
    if !metastore_testkit::available(Path::new("node"), "--version") {
        eprintln!("SKIPPED: node is not installed (apt-get install nodejs npm)");
        return;
    }
    let Some(modules) = etcd3_modules() else {
        // `.ci/run` installs the client and names it: missing there is a failure, not a skip.
        if let Some(named) = std::env::var_os("METASTORE_ETCD3_JS") {
            panic!("METASTORE_ETCD3_JS names {named:?}, which holds no etcd3 module");
        }
        eprintln!(
            "SKIPPED: the npm etcd3 client is not installed (npm ci in node/tests/etcd3-js, \
             or METASTORE_ETCD3_JS naming its node_modules; .ci/run does it)"
        );
        return;
    };
    // The session first against a real etcd where there is one: a step etcd fails is the
    // script's mistake, not metaStore's.
    if metastore_testkit::available(Path::new("etcd"), "--version") {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_etcd, url) = start_etcd(dir.path()).await;
        let out = session(&modules, vec![url]).await;
        assert!(passed(&out), "the session fails against etcd itself:\n{}", text(&out));
    } else {
        eprintln!(
            "etcd is not installed (apt-get install etcd-server): the session runs against metaStore only"
        );
    }
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let out = session(&modules, cluster.nodes.iter().map(|n| n.client_url()).collect()).await;
    assert!(passed(&out), "the etcd3 session failed:\n{}\n{}", text(&out), cluster.logs());
}

/// Runs the session against `endpoints`; gives up on it after two minutes.
async fn session(modules: &Path, endpoints: Vec<String>) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/etcd3-js/session.js");
    let mut command = tokio::process::Command::new("timeout");
    command.arg("120").arg("node").arg(script).arg(endpoints.join(",")).env("NODE_PATH", modules);
    command.output().await.expect("node runs")
}

fn passed(out: &Output) -> bool {
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.lines().count() >= 13 && stdout.lines().all(|l| l.starts_with("ok "))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
