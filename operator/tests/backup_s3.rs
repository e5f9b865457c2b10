//! Backups against a real S3 protocol server (s3s-fs, in this process, on the local disk) and
//! real `metastore` members: what is kept is a whole snapshot a new cluster starts from; a
//! snapshot cut short or damaged on its way leaves no object; old backups are pruned.

use std::path::Path as FsPath;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use metastore_client::{Client, Consistency};
use metastore_operator::backup::restore::{self, Fetched, RestoreError, RestoreSource};
use metastore_operator::backup::{
    object_path, prune, upload, BackupError, Credentials, Retention, S3Destination,
};
use metastore_testkit::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use metastore_testkit::{free_port, workspace_binary, Process};
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// An S3 server for one bucket, `backups`, on a temporary directory; its endpoint URL.
async fn s3_server(root: &FsPath) -> String {
    S3Server::start(root, &["backups"]).await.expect("an S3 server").endpoint
}

fn destination(endpoint: &str) -> S3Destination {
    serde_json::from_value(serde_json::json!({
        "bucket": "backups",
        "prefix": "nightly",
        "endpoint": endpoint,
        "forcePathStyle": true,
        "credentialsSecret": "s3-credentials",
    }))
    .expect("a destination")
}

fn credentials() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    }
}

/// A member of a cluster of one, on fresh ports; its process and client URL.
fn member(dir: &FsPath, name: &str, extra: &[String]) -> (Process, String) {
    let (peer, port) = (free_port(), free_port());
    let mut command = Command::new(workspace_binary("metastore").unwrap_or_else(|e| panic!("{e}")));
    command
        .args(["--cluster", &format!("http://127.0.0.1:{peer}"), "--port", &port.to_string()])
        .args(["--peer-token", TOKEN, "--data-dir"])
        .arg(dir.join(name))
        .args(extra)
        .env_remove("RUST_LOG");
    let process = Process::spawn("metastore", command, &dir.join(format!("{name}.log"))).expect("spawn");
    (process, format!("http://127.0.0.1:{port}"))
}

async fn until_writable(client: &Client) {
    for _ in 0..200 {
        if client.put("ready", "yes", None).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the member never took a write");
}

/// A proxy to `upstream` that relays requests whole and answers with `cut(answer)`: the
/// answer's first bytes, or the answer with a byte changed. Its URL.
async fn proxy(upstream: String, cut: fn(Vec<u8>) -> Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let upstream = upstream.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let n = client.read(&mut request).await.unwrap_or(0);
                let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                // One request per connection: the answer ends when the member closes it.
                let request = String::from_utf8_lossy(&request[..n])
                    .replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
                if server.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer).await;
                let _ = client.write_all(&cut(answer)).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_a_whole_snapshot_in_the_bucket_that_a_new_cluster_starts_from() {
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = s3_server(&dir.path().join("s3")).await;
    let (_member, url) = member(dir.path(), "source", &[]);
    let client = Client::new(&url).with_token(TOKEN);
    until_writable(&client).await;
    // Over 8 MiB: the snapshot goes up in more than one part.
    let value = vec![b'x'; 96 * 1024];
    for n in 0..120 {
        client.put(format!("big/{n:03}"), value.clone(), None).await.expect("put");
    }
    let written = client.put("last", "write", None).await.expect("put").revision;

    let destination = destination(&endpoint);
    let store = destination.store(Some(&credentials())).expect("a client for the bucket");
    let at = Utc::now();
    let uploaded = upload(&client, &store, |revision| object_path(&destination, "db", "meta", at, revision))
        .await
        .expect("a backup");
    assert!(uploaded.revision >= written, "holds every write acknowledged before it");
    assert!(uploaded.bytes > 8 * 1024 * 1024, "{} bytes", uploaded.bytes);
    assert!(uploaded.path.as_ref().starts_with("nightly/db/meta/"), "{}", uploaded.path);
    let object = store.get(&uploaded.path).await.expect("the object").bytes().await.expect("its bytes");
    assert_eq!(object.len() as u64, uploaded.bytes);
    assert!(metastore_client::seal::is_sealed(&object), "the object is the sealed snapshot");

    // Checked whole where it lies, then fetched as the first pod of a restored cluster does.
    let mut source =
        RestoreSource { s3: destination.clone(), object: uploaded.path.to_string(), sha256: None };
    let verified = restore::verify(&source, Some(&credentials())).await.expect("whole");
    assert_eq!((verified.bytes, verified.sha256.as_str()), (uploaded.bytes, uploaded.sha256.as_str()));
    source.sha256 = Some(verified.sha256.clone());
    let json = serde_json::to_string(&source).expect("json");
    let data_dir = dir.path().join("restored");
    let fetched = restore::fetch(1, Some(&json), Some(&credentials()), &data_dir).await.expect("fetched");
    assert_eq!(fetched, Fetched::Fetched(verified));
    let again = restore::fetch(1, Some(&json), Some(&credentials()), &data_dir).await.expect("fine");
    assert_eq!(again, Fetched::AlreadyThere, "a restarted init container leaves it for the member");

    // The object starts a new cluster holding what the old one held.
    let file = data_dir.join(restore::SEED_FILE);
    assert_eq!(std::fs::read(&file).expect("the seed file"), object);
    let (_restored, restored_url) =
        member(dir.path(), "restored", &["--restore-from".into(), file.display().to_string()]);
    let restored = Client::new(&restored_url);
    until_writable(&restored).await;
    let last = restored.get("last", Consistency::Linearizable).await.expect("get").expect("the last write");
    assert_eq!(last.mod_revision, written);
    let big = restored.get("big/119", Consistency::Linearizable).await.expect("get").expect("a large value");
    assert_eq!(big.value, value);

    // A damaged object is refused where it lies, and fetching it leaves nothing behind.
    let mut damaged = object.to_vec();
    damaged[object.len() / 2] ^= 0x40;
    let path = object_store::path::Path::from("nightly/db/meta/damaged.snapshot");
    store.put(&path, damaged.into()).await.expect("put the damaged object");
    let source = RestoreSource { s3: destination.clone(), object: path.to_string(), sha256: None };
    let refused = restore::verify(&source, Some(&credentials())).await.expect_err("damaged");
    assert!(matches!(refused, RestoreError::NotWhole { .. }), "{refused}");
    assert!(refused.to_string().contains("s3://backups/nightly/db/meta/damaged.snapshot"), "{refused}");
    let empty = dir.path().join("never-restored");
    let json = serde_json::to_string(&source).expect("json");
    let refused = restore::fetch(1, Some(&json), Some(&credentials()), &empty).await.expect_err("damaged");
    assert!(matches!(refused, RestoreError::NotWhole { .. }), "{refused}");
    let left: Vec<_> = std::fs::read_dir(&empty).expect("the data dir").collect();
    assert!(left.is_empty(), "nothing half-fetched is left: {left:?}");

    // A whole snapshot, but not the one the operator checked: refused too.
    let swapped = RestoreSource { sha256: Some("00".repeat(32)), ..source_of(&destination, &uploaded) };
    let json = serde_json::to_string(&swapped).expect("json");
    let refused = restore::fetch(1, Some(&json), Some(&credentials()), &empty).await.expect_err("another");
    assert!(matches!(refused, RestoreError::Changed { .. }), "{refused}");
    assert!(!empty.join(restore::SEED_FILE).exists());
}

fn source_of(destination: &S3Destination, uploaded: &metastore_operator::backup::Uploaded) -> RestoreSource {
    RestoreSource { s3: destination.clone(), object: uploaded.path.to_string(), sha256: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_cut_short_or_damaged_on_its_way_leaves_no_object() {
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = s3_server(&dir.path().join("s3")).await;
    let (_member, url) = member(dir.path(), "source", &[]);
    until_writable(&Client::new(&url)).await;
    let value = vec![b'y'; 64 * 1024];
    for n in 0..200 {
        Client::new(&url).put(format!("k/{n:03}"), value.clone(), None).await.expect("put");
    }
    let destination = destination(&endpoint);
    let store = destination.store(Some(&credentials())).expect("a client for the bucket");

    let cut_short: fn(Vec<u8>) -> Vec<u8> = |mut answer| {
        answer.truncate(answer.len() / 2);
        answer
    };
    let damaged: fn(Vec<u8>) -> Vec<u8> = |mut answer| {
        let middle = answer.len() / 2;
        answer[middle] ^= 0x20;
        answer
    };
    for (how, cut) in [("cut short", cut_short), ("damaged", damaged)] {
        let client = Client::new(proxy(url.clone(), cut).await).with_token(TOKEN);
        let at = Utc::now();
        let failed =
            upload(&client, &store, |revision| object_path(&destination, "db", "meta", at, revision)).await;
        match failed {
            Err(BackupError::NotWhole(_) | BackupError::Snapshot(_)) => {}
            other => panic!("a snapshot {how} was not refused: {other:?}"),
        }
        let prefix = destination.cluster_prefix("db", "meta");
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.expect("list");
        assert!(objects.is_empty(), "a snapshot {how} left {objects:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_keeps_the_newest_backups_and_nothing_else_is_touched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = s3_server(&dir.path().join("s3")).await;
    let (_member, url) = member(dir.path(), "source", &[]);
    let client = Client::new(&url).with_token(TOKEN);
    until_writable(&client).await;
    let destination = destination(&endpoint);
    let store = destination.store(Some(&credentials())).expect("a client for the bucket");
    let start = Utc::now();
    let mut paths = Vec::new();
    for n in 0..4 {
        client.put("n", n.to_string(), None).await.expect("put");
        let at = start + chrono::Duration::minutes(n);
        let uploaded =
            upload(&client, &store, |revision| object_path(&destination, "db", "meta", at, revision))
                .await
                .expect("a backup");
        paths.push(uploaded.path);
    }
    let prefix = destination.cluster_prefix("db", "meta");
    let notes = prefix.clone().into_iter().chain(["README".into()]).collect();
    store.put(&notes, "not a backup".into()).await.expect("put a stray object");

    let retention = Retention { max_count: Some(2), max_age_hours: None };
    let deleted = prune(&store, &prefix, &retention, Utc::now()).await.expect("prune");
    assert_eq!(deleted, paths[..2].iter().rev().cloned().collect::<Vec<_>>(), "the two oldest");
    let mut left: Vec<String> =
        store.list(Some(&prefix)).map_ok(|o| o.location.to_string()).try_collect().await.expect("list");
    left.sort();
    let mut expected: Vec<String> = paths[2..].iter().map(|p| p.to_string()).collect();
    expected.push(notes.to_string());
    expected.sort();
    assert_eq!(left, expected);
}
