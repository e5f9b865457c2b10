//! Access control on keys, as etcd's clients use it: users, roles and key-range permissions
//! managed with real etcdctl, enforced on every member over gRPC and HTTP, tokens that any
//! member accepts until users or roles change, and a client certificate's common name as the
//! user.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, Cluster};
use metastore_testkit::tls::Authority;
use serde_json::Value;

/// Long enough for any answer on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(20);

/// etcdctl's exit status and output (standard output, then standard error).
fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout=15s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs etcdctl and insists it succeeds, printing `expected`.
fn ok(endpoint: &str, args: &[&str], expected: &str) -> String {
    let (success, out) = etcdctl(endpoint, args);
    assert!(success && out.contains(expected), "etcdctl {args:?} should print {expected:?}:\n{out}");
    out
}

/// Runs etcdctl and insists it fails with `reason`.
fn refused(endpoint: &str, args: &[&str], reason: &str) {
    let (success, out) = etcdctl(endpoint, args);
    assert!(!success && out.contains(reason), "etcdctl {args:?} should fail with {reason:?}:\n{out}");
}

fn etcdctl_here() -> bool {
    let here = Command::new("etcdctl").arg("version").output().is_ok_and(|o| o.status.success());
    if !here {
        eprintln!("SKIPPED: etcdctl is not installed (apt-get install etcd-client)");
    }
    here
}

/// root (root role) and alice (role `app`: read-write on every key under `app/`), made and
/// auth enabled through etcdctl at `endpoint` (connecting with `connect`), as an
/// administrator would.
fn set_up_users(endpoint: &str, connect: &[&str]) {
    let steps: [(&[&str], &str); 7] = [
        (&["user", "add", "root", "--new-user-password=rootpw"], "User root created"),
        (&["user", "grant-role", "root", "root"], "Role root is granted to user root"),
        (&["user", "add", "alice", "--new-user-password=alicepw"], "User alice created"),
        (&["role", "add", "app"], "Role app created"),
        (&["role", "grant-permission", "app", "readwrite", "--prefix", "app/"], "Role app updated"),
        (&["user", "grant-role", "alice", "app"], "Role app is granted to user alice"),
        (&["auth", "enable"], "Authentication Enabled"),
    ];
    for (args, expected) in steps {
        ok(endpoint, &[connect, args].concat(), expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_manages_users_and_roles_and_every_member_holds_requests_to_them() {
    if !etcdctl_here() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(PROMPTLY).await;
    let [one, two, three] = [1, 2, 3].map(|id| cluster.node(id).client_url());
    set_up_users(&one, &[]);
    let alice = ["--user", "alice:alicepw"];
    let root = ["--user", "root:rootpw"];

    // Every member: a user is needed, and held to its role.
    refused(&two, &["put", "other", "x"], "etcdserver: user name is empty");
    ok(&two, &[&alice[..], &["put", "app/one", "1"]].concat(), "OK");
    ok(&three, &[&alice[..], &["get", "--prefix", "app/"]].concat(), "app/one\n1");
    refused(&three, &[&alice[..], &["put", "other", "x"]].concat(), "etcdserver: permission denied");
    refused(&one, &[&alice[..], &["get", "", "--from-key"]].concat(), "etcdserver: permission denied");
    refused(&two, &[&alice[..], &["del", "--prefix", "app"]].concat(), "etcdserver: permission denied");
    refused(&one, &["--user", "alice:wrong", "get", "app/one"], "authentication failed");
    ok(&two, &[&root[..], &["put", "other", "x"]].concat(), "OK");

    // What users may see of auth: their own record, not others'.
    ok(&one, &[&alice[..], &["user", "get", "alice"]].concat(), "Roles: app");
    refused(&one, &[&alice[..], &["user", "list"]].concat(), "etcdserver: permission denied");
    ok(&one, &[&root[..], &["role", "list"]].concat(), "app");
    ok(&two, &[&root[..], &["role", "get", "app"]].concat(), "[app/, app0) (prefix app/)");
    ok(&three, &[&root[..], &["user", "list"]].concat(), "alice");
    refused(&one, &[&root[..], &["user", "delete", "root"]].concat(), "etcdserver: invalid auth management");
    refused(&one, &[&alice[..], &["auth", "disable"]].concat(), "etcdserver: permission denied");

    // A revoke holds on every member at once: alice authenticates again and is refused.
    ok(&one, &[&root[..], &["role", "revoke-permission", "app", "--prefix", "app/"]].concat(), "revoked");
    refused(&two, &[&alice[..], &["get", "app/one"]].concat(), "etcdserver: permission denied");
    refused(&three, &[&alice[..], &["put", "app/two", "2"]].concat(), "etcdserver: permission denied");

    ok(&three, &[&root[..], &["auth", "disable"]].concat(), "Authentication Disabled");
    ok(&two, &["put", "other", "y"], "OK");
}

/// A JSON request to the HTTP API with an optional token; the status and the body.
async fn http(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = metastore_client::tls::default_http();
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("Token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the member answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn authenticate(base: &str, name: &str, password: &str) -> (u16, Value) {
    let body = serde_json::json!({ "name": name, "password": password });
    http(reqwest::Method::POST, format!("{base}/v1/auth/authenticate"), None, Some(body)).await
}

async fn token(base: &str, name: &str, password: &str) -> String {
    let (status, answer) = authenticate(base, name, password).await;
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_requests_carry_a_token_any_member_accepts_until_users_or_roles_change() {
    if !etcdctl_here() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(PROMPTLY).await;
    let [one, two, three] = [1, 2, 3].map(|id| cluster.node(id).client_url());
    use reqwest::Method;

    let (status, answer) = authenticate(&one, "alice", "alicepw").await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("auth_not_enabled")), "{answer}");
    set_up_users(&one, &[]);

    let alice = token(&one, "alice", "alicepw").await;
    let (status, answer) = authenticate(&two, "alice", "nope").await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("authentication_failed")), "{answer}");

    // Issued by member 1, taken by member 2.
    let put = |base: &str, key: &str| format!("{base}/v1/kv/{key}");
    let (status, answer) = http(Method::PUT, put(&two, "app/x"), Some(&alice), None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = http(Method::PUT, put(&two, "secret"), Some(&alice), None).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("permission_denied")), "{answer}");
    let (status, answer) = http(Method::GET, put(&three, "app/x"), None, None).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("unauthorized")), "{answer}");
    let (status, answer) = http(Method::GET, put(&three, "app/x"), Some("forged.token"), None).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_token")), "{answer}");
    // The seed's raw API is held to the same rules.
    let (status, _) = http(Method::GET, format!("{three}/app/x"), Some(&alice), None).await;
    assert_eq!(status, 200);
    let (status, _) = http(Method::PUT, format!("{three}/secret"), None, None).await;
    assert_eq!(status, 401);
    let range = format!("{one}/v1/kv?prefix=app/");
    let (status, answer) = http(Method::GET, range, Some(&alice), None).await;
    assert_eq!((status, answer["kvs"].as_array().map(Vec::len)), (200, Some(1)), "{answer}");
    let (status, _) = http(Method::GET, format!("{one}/v1/kv?prefix=a"), Some(&alice), None).await;
    assert_eq!(status, 403, "the prefix a reaches past app/");
    let (status, _) = http(Method::GET, format!("{two}/v1/watch?prefix=secret"), Some(&alice), None).await;
    assert_eq!(status, 403);
    // A lease is taken and given back only by a user, even one that carries no keys.
    let grant = serde_json::json!({ "ttl": 60 });
    let (status, answer) = http(Method::POST, format!("{one}/v1/lease"), Some(&alice), Some(grant)).await;
    assert_eq!(status, 200, "{answer}");
    let lease = answer["id"].as_i64().expect("a lease id");
    let (status, _) = http(Method::DELETE, format!("{two}/v1/lease/{lease}"), None, None).await;
    assert_eq!(status, 401);
    let (status, answer) = http(Method::DELETE, format!("{two}/v1/lease/{lease}"), Some(&alice), None).await;
    assert_eq!(status, 200, "{answer}");

    // Any change to users or roles: the token is old everywhere; a new one works.
    ok(&three, &["--user", "root:rootpw", "role", "add", "unrelated"], "Role unrelated created");
    for base in [&one, &two, &three] {
        let answer = eventually(PROMPTLY, || async {
            let (status, answer) = http(Method::GET, put(base, "app/x"), Some(&alice), None).await;
            if status == 401 {
                Ok(answer)
            } else {
                Err(status)
            }
        })
        .await;
        assert_eq!(answer["error"].as_str(), Some("auth_revision_old"), "{answer}");
    }
    let alice = token(&three, "alice", "alicepw").await;

    // Users and roles survive a restart, and so do tokens (the key that signs them is stored).
    cluster.stop(1);
    cluster.restart(1);
    cluster.wait_for_leader(PROMPTLY).await;
    let answer = eventually(PROMPTLY, || async {
        let (status, answer) = http(Method::GET, put(&one, "app/x"), Some(&alice), None).await;
        if status == 200 {
            Ok(answer)
        } else {
            Err((status, answer))
        }
    })
    .await;
    assert_eq!(answer["key"].as_str().map(str::len), Some(8), "base64 of app/x: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_names_the_user_where_no_token_does() {
    if !etcdctl_here() {
        return;
    }
    let ca = Authority::new("client CA");
    let mut cluster = Cluster::empty();
    let pki = cluster.dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let path = |name: &str| pki.join(name).to_string_lossy().into_owned();
    metastore_testkit::tls::replace(&pki.join("ca.crt"), ca.pem());
    ca.issue("member", &["127.0.0.1", "localhost"]).write(&pki, "member");
    for user in ["root", "alice", "mallory"] {
        ca.issue(user, &[]).write(&pki, user);
    }
    let (peer, client) = (free_port(), free_port());
    let args: Vec<String> = [
        "--member-id",
        "1",
        "--cluster",
        &format!("http://127.0.0.1:{peer}"),
        "--port",
        &client.to_string(),
        "--cert-file",
        &path("member.crt"),
        "--key-file",
        &path("member.key"),
        "--trusted-ca-file",
        &path("ca.crt"),
        "--client-cert-auth",
    ]
    .map(String::from)
    .to_vec();
    let tls = metastore_client::tls::ClientTls {
        ca: Some(pki.join("ca.crt")),
        identity: Some(metastore_client::tls::Identity {
            cert: pki.join("root.crt"),
            key: pki.join("root.key"),
        }),
    };
    cluster.add_tls(1, (peer, client), args, Some(tls), false);
    cluster.wait_for_leader(PROMPTLY).await;
    let endpoint = format!("https://127.0.0.1:{client}");
    let cert = |user: &str| {
        [
            "--cacert".to_string(),
            path("ca.crt"),
            "--cert".into(),
            path(&format!("{user}.crt")),
            "--key".into(),
            path(&format!("{user}.key")),
        ]
    };
    let with = |user: &str, args: &[&str]| -> Vec<String> {
        cert(user).into_iter().chain(args.iter().map(|a| a.to_string())).collect()
    };
    let run = |args: Vec<String>| etcdctl(&endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // Auth off: certificates only open the connection.
    let root = cert("root");
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    set_up_users(&endpoint, &root);
    let (done, out) = run(with("root", &["auth", "enable"]));
    assert!(done, "enabling again is a no-op: {out}");

    // Auth on: the certificate's name is the user.
    let (done, out) = run(with("alice", &["put", "app/x", "1"]));
    assert!(done, "{out}");
    let (done, out) = run(with("alice", &["put", "secret", "1"]));
    assert!(!done && out.contains("etcdserver: permission denied"), "{out}");
    let (done, out) = run(with("mallory", &["get", "app/x"]));
    assert!(!done && out.contains("etcdserver: permission denied"), "mallory is no user: {out}");
    let (done, out) = run(with("root", &["put", "secret", "1"]));
    assert!(done, "{out}");
    // A token wins over the certificate.
    let (done, out) = run(with("alice", &["--user", "root:rootpw", "put", "secret", "2"]));
    assert!(done, "{out}");
    let (done, out) = run(with("root", &["--user", "alice:alicepw", "put", "secret", "3"]));
    assert!(!done && out.contains("etcdserver: permission denied"), "{out}");
}
