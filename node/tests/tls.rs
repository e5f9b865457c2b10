//! TLS on both ports: members that speak only TLS to clients and to each other; what is not
//! trusted refused at once, with the reason in the member's log; certificates renewed in place
//! taken up by new connections without a restart, while the connections already open go on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, free_port, Cluster};
use metastore_client::tls::{ClientTls, Identity};
use metastore_client::{Client, ClientError, Consistency};
use metastore_testkit::tls::{replace, Authority, Leaf};

/// The names every member's certificates carry.
const LOCAL: &[&str] = &["127.0.0.1", "localhost"];

/// Long enough for any answer on a loaded machine; a hang is far longer.
const PROMPTLY: Duration = Duration::from_secs(10);

/// One test's certificates, as files in a directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(root: &Path) -> Self {
        let dir = root.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// Writes `ca`'s certificate (or several CAs', as one bundle) as `name`.
    fn trust(&self, name: &str, cas: &[&Authority]) {
        let bundle: String = cas.iter().map(|ca| ca.pem()).collect();
        replace(&self.path(name), &bundle);
    }

    /// Writes `leaf` as `<name>.crt` and `<name>.key`.
    fn write(&self, name: &str, leaf: &Leaf) {
        leaf.write(&self.dir, name);
    }

    /// A client trusting `ca` (a file written by [`Pki::trust`]) and presenting `identity`.
    fn client(&self, ca: &str, identity: Option<&str>) -> ClientTls {
        ClientTls {
            ca: Some(self.path(ca)),
            identity: identity.map(|name| Identity {
                cert: self.path(&format!("{name}.crt")),
                key: self.path(&format!("{name}.key")),
            }),
        }
    }

    /// Member `id`'s flags for a TLS peer port, with `member-<id>-peer` and `peer-ca.crt`.
    fn peer_flags(&self, id: u64) -> Vec<String> {
        [
            "--peer-cert-file",
            &self.path_str(&format!("member-{id}-peer.crt")),
            "--peer-key-file",
            &self.path_str(&format!("member-{id}-peer.key")),
            "--peer-trusted-ca-file",
            &self.path_str("peer-ca.crt"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Member `id`'s flags for a TLS client port that demands client certificates, with
    /// `member-<id>-client` and `client-ca.crt`.
    fn client_flags(&self, id: u64) -> Vec<String> {
        [
            "--cert-file",
            &self.path_str(&format!("member-{id}-client.crt")),
            "--key-file",
            &self.path_str(&format!("member-{id}-client.key")),
            "--trusted-ca-file",
            &self.path_str("client-ca.crt"),
            "--client-cert-auth",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Starts `n` members whose peer ports speak TLS, and whose client ports do too when
/// `client_tls`; the test reaches them as `app` (a certificate from the client CA).
fn start(
    cluster: &mut Cluster,
    pki: &Pki,
    n: u64,
    client_tls: bool,
    peer_ca: &Authority,
    client_ca: &Authority,
) {
    pki.trust("peer-ca.crt", &[peer_ca]);
    pki.trust("client-ca.crt", &[client_ca]);
    pki.write("app", &client_ca.issue("app", &[]));
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let urls: Vec<String> = ports.iter().map(|(peer, _)| format!("https://127.0.0.1:{peer}")).collect();
    for (id, ports) in (1..=n).zip(ports) {
        pki.write(&format!("member-{id}-peer"), &peer_ca.issue(&format!("member-{id}"), LOCAL));
        let mut args: Vec<String> =
            ["--member-id", &id.to_string(), "--cluster", &urls.join(","), "--port", &ports.1.to_string()]
                .map(String::from)
                .to_vec();
        args.extend(pki.peer_flags(id));
        if client_tls {
            pki.write(&format!("member-{id}-client"), &client_ca.issue(&format!("member-{id}"), LOCAL));
            args.extend(pki.client_flags(id));
        }
        let tls = client_tls.then(|| pki.client("client-ca.crt", Some("app")));
        cluster.add_tls(id, ports, args, tls, true);
    }
}

/// Every reason in an error's chain, for matching on what rustls said.
fn reasons(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A read through `client` that must fail, promptly; what it failed with.
async fn refused(client: &Client) -> String {
    let answer = tokio::time::timeout(PROMPTLY, client.get("k", Consistency::Stale)).await;
    match answer.expect("an answer or a refusal, not a hang") {
        Ok(kv) => panic!("read succeeded: {kv:?}"),
        Err(e) => reasons(&e),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_speak_only_tls_to_clients_and_to_each_other() {
    let mut cluster = Cluster::empty();
    let pki = Pki::new(cluster.path());
    let (peer_ca, client_ca) = (Authority::new("peer CA"), Authority::new("client CA"));
    start(&mut cluster, &pki, 3, true, &peer_ca, &client_ca);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;

    // A write through a follower crosses the peer TLS to the leader; reads on every member.
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    cluster.node(follower).client().put("k", "v", None).await.expect("put through a follower");
    for node in &cluster.nodes {
        let kv = node.client().get("k", Consistency::Linearizable).await.expect("read").expect("the key");
        assert_eq!(kv.value, b"v");
    }
    // Each member publishes its client URL once it runs.
    let leader_client = cluster.node(leader).client();
    eventually(PROMPTLY, || async {
        let status = leader_client.cluster().await.map_err(|e| e.to_string())?;
        let urls: Vec<_> =
            status.members.iter().map(|m| (m.peer_url.clone(), m.client_url.clone())).collect();
        let all_https =
            urls.iter().all(|(peer, client)| peer.starts_with("https://") && client.starts_with("https://"));
        all_https.then_some(()).ok_or(format!("{urls:?}"))
    })
    .await;

    // etcd's own client (grpc-go, which demands ALPN h2 over TLS) on the same port.
    if !metastore_testkit::available(Path::new("etcdctl"), "version") {
        eprintln!("SKIPPED (etcdctl part): etcdctl is not installed (apt-get install etcd-client)");
        return;
    }
    let endpoint = cluster.node(follower).client_url();
    let out = Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "--cacert", &pki.path_str("client-ca.crt")])
        .args(["--cert", &pki.path_str("app.crt"), "--key", &pki.path_str("app.key"), "get", "k"])
        .output()
        .expect("etcdctl runs");
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\nv\n");
    let plain = Command::new("etcdctl")
        .args(["--endpoints", &endpoint.replace("https://", "http://"), "--dial-timeout", "3s", "get", "k"])
        .output()
        .expect("etcdctl runs");
    assert!(!plain.status.success(), "plain gRPC to a TLS port must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_trusted_is_refused_at_once_with_the_reason_in_the_log() {
    let mut cluster = Cluster::empty();
    let pki = Pki::new(cluster.path());
    let (peer_ca, client_ca, stranger) =
        (Authority::new("peer CA"), Authority::new("client CA"), Authority::new("someone else's CA"));
    start(&mut cluster, &pki, 1, true, &peer_ca, &client_ca);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let url = cluster.node(1).client_url();
    let log = || cluster.log_of(1);

    // Plain HTTP to the TLS port: told why, not left hanging.
    let plain = tokio::time::timeout(
        PROMPTLY,
        metastore_client::tls::default_http().get(url.replace("https://", "http://") + "/v1/kv/k").send(),
    )
    .await
    .expect("an answer, not a hang")
    .expect("an HTTP answer");
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.expect("body").contains("HTTP request to an HTTPS server"));
    eventually(PROMPTLY, || async { log().contains("not TLS").then_some(()).ok_or("no log line") }).await;

    // No client certificate, where one is demanded.
    let anonymous = Client::with_tls(&url, &pki.client("client-ca.crt", None)).expect("client");
    refused(&anonymous).await;
    eventually(PROMPTLY, || async {
        log().contains("sent no certificates").then_some(()).ok_or("no log line")
    })
    .await;

    // A certificate from a CA the member does not trust.
    pki.write("stranger", &stranger.issue("stranger", &[]));
    let stranger_client =
        Client::with_tls(&url, &pki.client("client-ca.crt", Some("stranger"))).expect("client");
    refused(&stranger_client).await;
    eventually(PROMPTLY, || async { log().contains("UnknownIssuer").then_some(()).ok_or("no log line") })
        .await;

    // An expired certificate from the right CA.
    pki.write("expired", &client_ca.issue_expired("expired", &[]));
    let expired_client =
        Client::with_tls(&url, &pki.client("client-ca.crt", Some("expired"))).expect("client");
    refused(&expired_client).await;
    eventually(PROMPTLY, || async {
        log()
            .lines()
            .any(|l| l.contains("TLS handshake failed") && l.to_lowercase().contains("expired"))
            .then_some(())
            .ok_or("no log line")
    })
    .await;

    // The client's side: a member whose certificate it cannot trust, or that expired.
    pki.trust("stranger-ca.crt", &[&stranger]);
    let distrustful = Client::with_tls(&url, &pki.client("stranger-ca.crt", Some("app"))).expect("client");
    assert!(refused(&distrustful).await.contains("UnknownIssuer"));
    let mut stale = Cluster::empty();
    let stale_pki = Pki::new(stale.path());
    start(&mut stale, &stale_pki, 1, true, &peer_ca, &client_ca);
    stale_pki.write("member-1-client", &client_ca.issue_expired("member-1", LOCAL));
    stale.kill(1);
    stale.restart(1);
    let stale_url = stale.node(1).client_url();
    let to_stale =
        Client::with_tls(&stale_url, &stale_pki.client("client-ca.crt", Some("app"))).expect("client");
    let reason = eventually(Duration::from_secs(30), || async {
        let reason = refused(&to_stale).await;
        reason.to_lowercase().contains("expired").then_some(reason.clone()).ok_or(reason)
    })
    .await;
    assert!(reason.contains(&stale_url) || reason.contains("127.0.0.1"), "{reason}");

    // Trusted all along, and never disturbed by the others.
    let app = cluster.node(1).client();
    app.put("k", "v", None).await.expect("the trusted client writes");
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_client_port_certificates_are_used_without_a_restart() {
    let mut cluster = Cluster::empty();
    let pki = Pki::new(cluster.path());
    let (peer_ca, old_ca, new_ca) =
        (Authority::new("peer CA"), Authority::new("old CA"), Authority::new("new CA"));
    start(&mut cluster, &pki, 1, true, &peer_ca, &old_ca);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let url = cluster.node(1).client_url();
    let pid = cluster.node(1).pid();

    // A client of the old CA that keeps one connection busy throughout: what is open goes on.
    let old = cluster.node(1).client();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let busy = tokio::spawn({
        let (old, stop, failures) = (old.clone(), stop.clone(), failures.clone());
        async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match old.put("busy", written.to_string(), None).await {
                    Ok(_) => written += 1,
                    Err(e) => failures.lock().expect("lock").push(reasons(&e)),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            written
        }
    });

    // A client of the new CA is refused both ways until the files change.
    pki.write("renewed-app", &new_ca.issue("app", &[]));
    pki.trust("new-ca.crt", &[&new_ca]);
    let renewed = Client::with_tls(&url, &pki.client("new-ca.crt", Some("renewed-app"))).expect("client");
    assert!(refused(&renewed).await.contains("UnknownIssuer"));

    // The renewal, as an operator rolls one: the member trusts both CAs, then presents a
    // certificate of the new one (its certificate and key replaced one after the other, as
    // files on a disk are), then trusts the new CA alone.
    pki.trust("client-ca.crt", &[&old_ca, &new_ca]);
    pki.write("member-1-client", &new_ca.issue("member-1", LOCAL));
    eventually(PROMPTLY, || renewed.get("k", Consistency::Stale)).await;
    let fresh_old = Client::with_tls(&url, &pki.client("client-ca.crt", Some("app"))).expect("client");
    pki.trust("old-ca.crt", &[&old_ca]);
    let only_old = Client::with_tls(&url, &pki.client("old-ca.crt", Some("app"))).expect("client");
    assert!(refused(&only_old).await.contains("UnknownIssuer"), "new connections see the new certificate");
    fresh_old.get("k", Consistency::Stale).await.expect("a certificate of the old CA is still trusted");
    pki.trust("client-ca.crt", &[&new_ca]);
    eventually(PROMPTLY, || async {
        // A new client each time: a connection made before the change would still be served.
        let old_identity = Client::with_tls(&url, &pki.client("new-ca.crt", Some("app"))).expect("client");
        match old_identity.get("k", Consistency::Stale).await {
            Err(ClientError::Transport { .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    renewed.put("k", "renewed", None).await.expect("the new identity writes");

    stop.store(true, Ordering::Relaxed);
    let written = busy.await.expect("the busy client");
    let failures = failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "the open connection failed: {failures:?}");
    assert!(written > 10, "the busy client wrote throughout ({written})");
    assert_eq!(cluster.node(1).pid(), pid, "no restart");
    assert!(cluster.log_of(1).contains("TLS files changed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_peer_certificates_are_used_without_a_restart_while_writes_go_on() {
    let mut cluster = Cluster::empty();
    let pki = Pki::new(cluster.path());
    let (old_ca, new_ca, client_ca) =
        (Authority::new("old peer CA"), Authority::new("new peer CA"), Authority::new("client CA"));
    start(&mut cluster, &pki, 3, false, &old_ca, &client_ca);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let pids: Vec<_> = cluster.nodes.iter().map(|n| n.pid()).collect();

    // Writes through every member (followers forward theirs over the peer TLS) throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect();
    let writer = tokio::spawn({
        let (stop, failures) = (stop.clone(), failures.clone());
        async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let client = &clients[written as usize % clients.len()];
                match client.put(format!("w/{written}"), "x", None).await {
                    Ok(_) => written += 1,
                    Err(e) => {
                        failures.lock().expect("lock").push(reasons(&e));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            written
        }
    });

    // What the peer port presents and demands, probed from outside: a handshake with the
    // old CA's certificate, and one with the new CA's.
    pki.write("outsider-old", &old_ca.issue("outsider", &[]));
    pki.write("outsider-new", &new_ca.issue("outsider", &[]));
    pki.trust("old-peer-ca.crt", &[&old_ca]);
    pki.trust("new-peer-ca.crt", &[&new_ca]);
    let peer_urls: Vec<String> = cluster.nodes.iter().map(|n| n.peer_url()).collect();
    let handshakes = |ca: &'static str, identity: &'static str| {
        let tls = pki.client(ca, Some(identity));
        let urls = peer_urls.clone();
        async move {
            let http = metastore_client::tls::http(Some(&tls))
                .expect("tls")
                .timeout(PROMPTLY)
                .build()
                .expect("http");
            let mut accepted = Vec::new();
            for url in urls {
                // Any HTTP answer means the handshake succeeded both ways.
                accepted.push(http.get(format!("{url}/raft/probe")).send().await.is_ok());
            }
            accepted
        }
    };
    assert_eq!(handshakes("old-peer-ca.crt", "outsider-old").await, [true; 3]);
    assert_eq!(handshakes("new-peer-ca.crt", "outsider-new").await, [false; 3]);

    // The renewal: both CAs trusted, then new certificates, then the new CA alone; each step
    // once every member has taken up the last, as an operator waits.
    let until_every_member = |ca: &'static str, identity: &'static str, accepted: bool| {
        let handshakes = &handshakes;
        async move {
            eventually(PROMPTLY, || async {
                let seen = handshakes(ca, identity).await;
                (seen == [accepted; 3]).then_some(()).ok_or(seen)
            })
            .await
        }
    };
    pki.trust("peer-ca.crt", &[&old_ca, &new_ca]);
    until_every_member("old-peer-ca.crt", "outsider-new", true).await;
    for id in 1..=3 {
        pki.write(&format!("member-{id}-peer"), &new_ca.issue(&format!("member-{id}"), LOCAL));
    }
    until_every_member("new-peer-ca.crt", "outsider-new", true).await;
    pki.trust("peer-ca.crt", &[&new_ca]);
    until_every_member("new-peer-ca.crt", "outsider-old", false).await;
    assert_eq!(handshakes("old-peer-ca.crt", "outsider-old").await, [false; 3]);

    // New peer connections: member 3 killed and restarted, the others must call it with their
    // renewed certificates, and it must catch up and forward writes to the leader.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("the writer");
    let failures = failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "writes failed during the renewal: {failures:?}");
    assert!(written > 10, "writes went on throughout ({written})");
    let now: Vec<_> = cluster.nodes.iter().map(|n| n.pid()).collect();
    assert_eq!(now, pids, "no member restarted");
    cluster.kill(3);
    cluster.restart(3);
    let third = cluster.node(3).client();
    eventually(Duration::from_secs(30), || third.put("after", "restart", None)).await;
    let last = format!("w/{}", written - 1);
    let kv = eventually(Duration::from_secs(30), || third.get(&last, Consistency::Linearizable)).await;
    assert!(kv.is_some(), "member 3 holds every acknowledged write");
}

#[test]
fn a_url_that_does_not_match_the_port_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let ca = Authority::new("peer CA");
    pki.trust("peer-ca.crt", &[&ca]);
    pki.write("member-1-peer", &ca.issue("member-1", LOCAL));
    let peer = free_port();
    let run = |url: String, tls: bool| {
        let mut command = Command::new(common::BIN);
        command.current_dir(dir.path()).args(["--cluster", &url, "--port", &free_port().to_string()]);
        if tls {
            command.args(pki.peer_flags(1));
        }
        command.output().expect("metastore runs")
    };
    let https_without_certificates = run(format!("https://127.0.0.1:{peer}"), false);
    assert!(!https_without_certificates.status.success());
    let said = String::from_utf8_lossy(&https_without_certificates.stderr);
    assert!(said.contains("--peer-cert-file"), "{said}");
    let http_with_certificates = run(format!("http://127.0.0.1:{peer}"), true);
    assert!(!http_with_certificates.status.success());
    assert!(String::from_utf8_lossy(&http_with_certificates.stderr).contains("must be https://"));

    // A certificate whose key is another's never serves.
    let other = ca.issue("member-1", LOCAL);
    replace(&pki.path("member-1-peer.key"), &other.key);
    let mismatched = run(format!("https://127.0.0.1:{peer}"), true);
    assert!(!mismatched.status.success());
    assert!(String::from_utf8_lossy(&mismatched.stderr).contains("cannot sign with the certificate"));
}
