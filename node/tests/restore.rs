//! Backups and restores: a snapshot taken from a member under writes (`GET /v1/snapshot`)
//! starts a new cluster (`--restore-from`) holding every key, its history and the revisions as
//! they were, under a new cluster id; a damaged or truncated file is refused and leaves nothing;
//! a cluster that lost its majority starts over from a snapshot of the member left.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_member, eventually, free_port, Cluster, BIN};
use metastore_client::{Client, Consistency, KeyValue, RangeRequest};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Downloads a snapshot through `client` into `path`; the store's revision in it.
async fn save_snapshot(client: &Client, path: &Path) -> u64 {
    let mut download = client.snapshot().await.expect("a snapshot");
    let mut bytes = Vec::new();
    while let Some(chunk) = download.chunk().await.expect("the snapshot's bytes") {
        bytes.extend_from_slice(&chunk);
    }
    std::fs::write(path, &bytes).expect("save the snapshot");
    download.revision
}

/// Every key under `prefix` as of `revision` (the current one when `None`).
async fn keys(client: &Client, revision: Option<u64>) -> Vec<KeyValue> {
    let range = RangeRequest { prefix: Some(Vec::new()), revision, ..RangeRequest::default() };
    client.range(&range).await.expect("range").kvs
}

/// Starts one member of a new cluster of one, restored from `snapshot`; its index.
fn restored_member(cluster: &mut Cluster, snapshot: &Path) -> usize {
    let (peer, client) = (free_port(), free_port());
    let args = vec![
        "--cluster".to_string(),
        format!("http://127.0.0.1:{peer}"),
        "--port".to_string(),
        client.to_string(),
        "--peer-token".to_string(),
        TOKEN.to_string(),
        "--restore-from".to_string(),
        snapshot.display().to_string(),
    ];
    cluster.add(1, peer, client, args)
}

/// Writes `w/<n>` through `client` until stopped; the keys whose writes were acknowledged,
/// each with the instant its acknowledgement arrived.
async fn writer(client: Client, stop: Arc<AtomicBool>) -> Vec<(String, Instant)> {
    let mut acknowledged = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w/{n:06}");
        if client.put(&key, format!("v{n}"), None).await.is_ok() {
            acknowledged.push((key, Instant::now()));
        }
        n += 1;
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_taken_under_writes_starts_a_new_cluster_with_every_key_revision_and_history() {
    let old = Cluster::start(3, &["--peer-token", TOKEN]);
    old.wait_for_leader(Duration::from_secs(20)).await;
    let client = old.node(1).client();
    let first = client.put("config/a", "1", None).await.expect("put").revision;
    client.put("config/a", "2", None).await.expect("overwrite");
    client.put("config/gone", "x", None).await.expect("put");
    client.delete("config/gone", None).await.expect("delete");
    let lease = client.lease_grant(600).await.expect("lease").id;
    client.put_leased("config/leased", "held", lease).await.expect("leased put");

    // Refused without the token: a snapshot is the whole store.
    let refused = client.snapshot().await.expect_err("no token");
    assert_eq!(refused.status(), Some(401), "{refused}");

    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(old.node(2).client(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.snapshot");
    let asked = Instant::now();
    let revision = save_snapshot(&old.node(3).client().with_token(TOKEN), &file).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writing.await.expect("writer");
    let before: Vec<&String> = acknowledged.iter().filter(|(_, at)| *at < asked).map(|(k, _)| k).collect();
    assert!(!before.is_empty(), "writes were acknowledged before the snapshot was asked for");
    let old_status = old.status(1).await;
    let expected = keys(&client, Some(revision)).await;
    let history = client.get_at("config/a", Consistency::Linearizable, Some(first)).await.expect("history");

    let mut new = Cluster::empty();
    restored_member(&mut new, &file);
    new.wait_for_leader(Duration::from_secs(20)).await;
    let restored = new.node(1).client();
    let status = new.status(1).await;
    assert_ne!(status.cluster_id, old_status.cluster_id, "a restored cluster is a new cluster");
    assert_eq!(status.members.len(), 1, "the new membership, not the old one: {status:?}");

    // Every key as it was at the snapshot's revision, revisions and versions included, and
    // every write acknowledged before the snapshot was asked for.
    let now = keys(&restored, None).await;
    assert_eq!(now, expected, "the keys at revision {revision}");
    for key in &before {
        assert!(now.iter().any(|kv| kv.key == key.as_bytes()), "{key}, acknowledged before the snapshot");
    }
    let past = restored.get_at("config/a", Consistency::Linearizable, Some(first)).await.expect("history");
    assert_eq!(past, history, "history below the snapshot's revision came with it");
    assert!(now.iter().any(|kv| kv.key == b"config/leased" && kv.lease == lease), "leased key: {now:?}");
    let next = restored.put("after", "restore", None).await.expect("a write to the new cluster");
    assert_eq!(next.revision, revision + 1, "revisions go on from the snapshot's");
    restored.lease_revoke(lease).await.expect("the lease came with the snapshot");
    assert_eq!(restored.get("config/leased", Consistency::Linearizable).await.expect("get"), None);

    // The others join as usual and report the same new id.
    let admin = restored.clone().with_token(TOKEN);
    for id in [2, 3] {
        new.add_joining(id, &["--peer-token", TOKEN]);
        add_member(&admin, &new, id).await;
    }
    for id in [2, 3] {
        let member = new.node(id).client();
        let read = eventually(Duration::from_secs(20), || async {
            match member.get("after", Consistency::Stale).await {
                Ok(Some(kv)) => Ok(kv),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(read.mod_revision, revision + 1);
        assert_eq!(new.status(id).await.cluster_id, status.cluster_id, "one id on every member");
    }

    // A restart keeps the store: the snapshot is never restored over it.
    new.stop(1);
    new.restart(1);
    new.wait_for_leader(Duration::from_secs(20)).await;
    let read = new.node(1).client().get("after", Consistency::Linearizable).await.expect("get");
    assert!(read.is_some(), "written after the restore, kept across the restart");
    assert!(new.log_of(1).contains("not restoring over it"), "{}", new.log_of(1));
}

/// Runs a member that is expected to stop by itself; its exit status and what it logged.
fn run_to_exit(dir: &Path, args: &[String]) -> (std::process::ExitStatus, String) {
    let log = dir.join("refused.log");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn metastore");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "metastore kept running with a bad snapshot: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_truncated_snapshot_is_refused_and_leaves_the_data_dir_to_restore_into() {
    let old = Cluster::start(1, &[]);
    old.wait_for_leader(Duration::from_secs(20)).await;
    let client = old.node(1).client();
    for n in 0..50 {
        client.put(format!("k/{n}"), "v", None).await.expect("put");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.snapshot");
    let revision = save_snapshot(&client, &good).await;
    let bytes = std::fs::read(&good).expect("read");

    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0x40;
    let cases = [
        (write("damaged.snapshot", &damaged), "damaged"),
        (write("truncated.snapshot", &bytes[..bytes.len() - 700]), "truncated"),
        (write("empty.snapshot", b""), "truncated"),
        (dir.path().join("missing.snapshot"), "cannot open"),
    ];
    let data = dir.path().join("data");
    let args = |snapshot: &Path| {
        vec![
            "--cluster".to_string(),
            format!("http://127.0.0.1:{}", free_port()),
            "--port".to_string(),
            free_port().to_string(),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--restore-from".to_string(),
            snapshot.display().to_string(),
        ]
    };
    for (file, says) in &cases {
        let (status, log) = run_to_exit(dir.path(), &args(file));
        assert!(!status.success(), "{} was taken: {log}", file.display());
        assert!(log.contains(says), "refusing {} says {says:?}: {log}", file.display());
    }

    // Nothing was left half-restored: the same data dir takes the good file.
    let mut new = Cluster::empty();
    let (peer, port) = (free_port(), free_port());
    let mut good_args = args(&good);
    good_args[1] = format!("http://127.0.0.1:{peer}");
    good_args[3] = port.to_string();
    new.add(1, peer, port, good_args);
    new.wait_for_leader(Duration::from_secs(20)).await;
    let restored = keys(&new.node(1).client(), None).await;
    assert_eq!(restored, keys(&client, Some(revision)).await);

    // A data dir whose store was lost but whose snapshots were not is no place to restore
    // into: raft would install the old snapshot over the restored data at start.
    new.stop(1);
    std::fs::remove_dir_all(data.join("db")).expect("lose the store");
    let (status, log) = run_to_exit(dir.path(), &args(&good));
    assert!(!status.success() && log.contains("snapshots of an earlier store"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_that_lost_its_majority_starts_over_from_the_member_left() {
    let mut old = Cluster::start(3, &[]);
    old.wait_for_leader(Duration::from_secs(20)).await;
    let client = old.node(1).client();
    for n in 0..30 {
        client.put(format!("kept/{n:02}"), format!("v{n}"), None).await.expect("put");
    }
    let last = client.put("kept/last", "written", None).await.expect("put").revision;
    // The survivor has applied every acknowledged write before the others are lost.
    let survivor = old.node(1).client();
    eventually(Duration::from_secs(10), || async {
        match survivor.get("kept/last", Consistency::Stale).await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("survivor.snapshot");
    let export = |data_dir: &Path| {
        Command::new(BIN)
            .args(["export-snapshot", "--data-dir"])
            .arg(data_dir)
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .expect("run metastore export-snapshot")
    };
    let locked = export(&old.data_dir_of(1));
    assert!(!locked.status.success(), "a running member's store is not exported");
    assert!(!file.exists(), "nothing is left behind");

    old.kill(2);
    old.kill(3);
    old.stop(1);
    let exported = export(&old.data_dir_of(1));
    let said = String::from_utf8_lossy(&exported.stdout);
    assert!(exported.status.success(), "{said}{}", String::from_utf8_lossy(&exported.stderr));
    assert!(said.contains(&format!("revision {last}")), "{said}");

    let mut new = Cluster::empty();
    restored_member(&mut new, &file);
    new.wait_for_leader(Duration::from_secs(20)).await;
    let restored = new.node(1).client();
    let kept = keys(&restored, None).await;
    assert_eq!(kept.len(), 31, "every key the survivor held: {kept:?}");
    let read =
        restored.get("kept/last", Consistency::Linearizable).await.expect("get").expect("the last write");
    assert_eq!(read.mod_revision, last);
}

/// How the operator starts every pod of a restored cluster: alike, in join mode, each told to
/// restore from a seed file that only the first pod's init container fetched.
#[tokio::test(flavor = "multi_thread")]
async fn members_started_alike_restore_where_the_seed_file_is_and_join_elsewhere() {
    let old = Cluster::start(1, &["--peer-token", TOKEN]);
    old.wait_for_leader(Duration::from_secs(20)).await;
    let client = old.node(1).client();
    for n in 0..10 {
        client.put(format!("seeded/{n}"), format!("v{n}"), None).await.expect("put");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = |id: u64| dir.path().join(format!("seed-{id}.snapshot"));
    let revision = save_snapshot(&client.clone().with_token(TOKEN), &seed(1)).await;
    let expected = keys(&client, Some(revision)).await;
    let old_id = old.status(1).await.cluster_id;

    let mut new = Cluster::empty();
    let flags = |id: u64| {
        [
            "--peer-token".to_string(),
            TOKEN.to_string(),
            "--restore-from".to_string(),
            seed(id).display().to_string(),
        ]
    };
    let start = |new: &mut Cluster, id: u64| {
        let flags = flags(id);
        new.add_joining(id, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    };
    start(&mut new, 1);
    assert_eq!(new.wait_for_leader(Duration::from_secs(20)).await, 1, "member 1 restored alone and leads");
    assert!(!seed(1).exists(), "the seed file is consumed once restored");
    let status = new.status(1).await;
    assert_eq!(status.members.len(), 1, "{status:?}");
    assert_ne!(status.cluster_id, old_id, "a new cluster");
    let restored = new.node(1).client();
    assert_eq!(keys(&restored, None).await, expected);

    // Without a seed file, the same flags join.
    start(&mut new, 2);
    add_member(&restored.clone().with_token(TOKEN), &new, 2).await;
    let member = new.node(2).client();
    let read = eventually(Duration::from_secs(20), || async {
        match member.get("seeded/9", Consistency::Stale).await {
            Ok(Some(kv)) => Ok(kv),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(read.value, b"v9");
    assert_eq!(new.status(2).await.cluster_id, status.cluster_id);

    // Member 1 restarted with the same flags, and no file left: it resumes its store. A seed
    // file found beside a store (fetched again, or left by a crash before its removal) is
    // never restored, and goes: it must not found another cluster on a later empty start.
    new.stop(1);
    save_snapshot(&client.clone().with_token(TOKEN), &seed(1)).await;
    new.restart(1);
    new.wait_for_leader(Duration::from_secs(20)).await;
    let after = new.node(1).client().put("after", "restart", None).await.expect("a write").revision;
    assert_eq!(after, revision + 1, "nothing was restored again");
    assert!(!seed(1).exists(), "a seed file beside a store is removed");
    assert!(new.log_of(1).contains("not restoring over it"), "{}", new.log_of(1));
}
