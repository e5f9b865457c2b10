//! The systems under test, behind one set of operations, in either of two protocols: HTTP/1.1
//! (metaStore's `/v1/kv` API; etcd's v3 JSON gateway, `/v3/kv/...` with keys and values in
//! base64) or etcd's v3 gRPC API, which both serve ([`crate::grpc`]).
//!
//! Requests go out on hyper's connection-level client, a connection per request in flight,
//! kept for the next request. A general-purpose client (URL parsing, a shared pool, redirect
//! and timeout machinery per request) cost the generator as much CPU per read as all three
//! metaStore members together, on a machine they share (docs/performance.md).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use metastore_client::{ClusterStatus, KeyValue};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::grpc::{self, Grpc};
use tonic::transport::ClientTlsConfig;

/// A request not answered in this long counts as an error, and its connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum System {
    Metastore,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// Each system's HTTP/1.1 JSON API.
    Http,
    /// etcd's v3 gRPC API, the same for both.
    Grpc,
}

/// One member, and the connections to it that are idle (HTTP), or its HTTP/2 connections
/// (gRPC). Cheap to clone; clones share them.
#[derive(Clone)]
pub struct Endpoint {
    system: System,
    /// `host:port`, to connect to and to name in the `Host` header.
    authority: String,
    /// Whether it speaks TLS (then only through `grpc`).
    secure: bool,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
    /// Set when requests go over gRPC.
    grpc: Option<Grpc>,
}

/// What a read returned: the value's revision, for a compare-and-swap that follows.
pub type Revision = Option<u64>;

/// What a member is in its cluster, by its own account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// A candidate, a learner, or anything else that neither leads nor follows.
    Other,
}

impl Endpoint {
    /// `url` is a member's client URL: `http://host:port`; gRPC spreads requests over
    /// `connections` connections.
    /// An endpoint at `url`: `http://host:port`, or `https://host:port` with `tls` (over
    /// gRPC only: the HTTP client here is plain HTTP/1.1).
    pub fn new(
        system: System,
        protocol: Protocol,
        url: &str,
        connections: usize,
        tls: Option<&ClientTlsConfig>,
    ) -> anyhow::Result<Self> {
        let url = url.trim_end_matches('/');
        let (authority, secure) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(authority), _) => (authority, false),
            (_, Some(authority)) => (authority, true),
            _ => ("", false),
        };
        anyhow::ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "endpoint {url:?} is not http://host:port or https://host:port"
        );
        let grpc = match (protocol, secure, tls) {
            (Protocol::Http, false, _) => None,
            (Protocol::Http, true, _) => {
                anyhow::bail!("over TLS the load generator speaks gRPC only (--protocol grpc)")
            }
            (Protocol::Grpc, true, None) => anyhow::bail!("endpoint {url:?} is https://: give --cacert"),
            (Protocol::Grpc, _, tls) => Some(Grpc::new(url, connections, tls.filter(|_| secure))?),
        };
        Ok(Self { system, authority: authority.to_string(), secure, idle: Arc::default(), grpc })
    }

    pub fn url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        if let Some(grpc) = &self.grpc {
            return grpc.put(key, value).await;
        }
        match self.system {
            System::Metastore => {
                let (status, body) = self.send(Method::PUT, metastore_path(key), value.to_vec()).await?;
                expect_success(status, &body)
            }
            System::Etcd => {
                self.etcd("/v3/kv/put", json!({"key": B64.encode(key), "value": B64.encode(value)})).await?;
                Ok(())
            }
        }
    }

    /// A read, linearizable or (`stale`) served from the member's own state.
    pub async fn get(&self, key: &str, stale: bool) -> anyhow::Result<Revision> {
        if let Some(grpc) = &self.grpc {
            return grpc.get(key, stale).await;
        }
        match self.system {
            System::Metastore => {
                let consistency = if stale { "stale" } else { "linearizable" };
                let path = format!("{}?consistency={consistency}", metastore_path(key));
                let (status, body) = self.send(Method::GET, path, Vec::new()).await?;
                if status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                expect_success(status, &body)?;
                Ok(Some(serde_json::from_slice::<KeyValue>(&body)?.mod_revision))
            }
            System::Etcd => {
                let answer =
                    self.etcd("/v3/kv/range", json!({"key": B64.encode(key), "serializable": stale})).await?;
                let revision = answer["kvs"][0]["mod_revision"].as_str().and_then(|r| r.parse().ok());
                Ok(revision)
            }
        }
    }

    /// Writes `value` if the key is still at `revision` (absent when `None`); whether it did.
    pub async fn cas(&self, key: &str, revision: Revision, value: &[u8]) -> anyhow::Result<bool> {
        if let Some(grpc) = &self.grpc {
            return grpc.cas(key, revision, value).await;
        }
        match self.system {
            System::Metastore => {
                let condition = match revision {
                    Some(r) => format!("if_mod_revision={r}"),
                    None => "if_absent=true".to_string(),
                };
                let path = format!("{}?{condition}", metastore_path(key));
                let (status, body) = self.send(Method::PUT, path, value.to_vec()).await?;
                if status == StatusCode::CONFLICT {
                    return Ok(false);
                }
                expect_success(status, &body)?;
                Ok(true)
            }
            System::Etcd => {
                let compare =
                    json!({"key": B64.encode(key), "target": "MOD", "mod_revision": revision.unwrap_or(0)});
                let put = json!({"request_put": {"key": B64.encode(key), "value": B64.encode(value)}});
                let answer = self.etcd("/v3/kv/txn", json!({"compare": [compare], "success": [put]})).await?;
                Ok(answer["succeeded"].as_bool().unwrap_or(false))
            }
        }
    }

    /// A read of `key` as of the past revision `at` (absent then is no error).
    pub async fn get_at(&self, key: &str, at: u64) -> anyhow::Result<()> {
        if let Some(grpc) = &self.grpc {
            return grpc.get_at(key, at).await;
        }
        match self.system {
            System::Metastore => {
                let path = format!("{}?revision={at}", metastore_path(key));
                let (status, body) = self.send(Method::GET, path, Vec::new()).await?;
                if status == StatusCode::NOT_FOUND {
                    return Ok(());
                }
                expect_success(status, &body)
            }
            System::Etcd => {
                self.etcd("/v3/kv/range", json!({"key": B64.encode(key), "revision": at})).await?;
                Ok(())
            }
        }
    }

    /// A transaction of two compares that hold (each key created before revision 2^62) and
    /// two puts, the shape of a small multi-key update.
    pub async fn txn(&self, a: &str, b: &str, value: &[u8]) -> anyhow::Result<()> {
        const ALWAYS: u64 = 1 << 62;
        if let Some(grpc) = &self.grpc {
            anyhow::ensure!(grpc.txn(a, b, value, ALWAYS).await?, "the transaction's compares failed");
            return Ok(());
        }
        let answer = match self.system {
            System::Metastore => {
                let compare =
                    |k: &str| json!({"key": B64.encode(k), "result": "less", "create_revision": ALWAYS});
                let put = |k: &str| json!({"put": {"key": B64.encode(k), "value": B64.encode(value)}});
                let txn = json!({"compare": [compare(a), compare(b)], "success": [put(a), put(b)]});
                let (status, body) =
                    self.send(Method::POST, "/v1/txn".to_string(), serde_json::to_vec(&txn)?).await?;
                expect_success(status, &body)?;
                serde_json::from_slice::<Value>(&body)?
            }
            System::Etcd => {
                let compare = |k: &str| json!({"key": B64.encode(k), "target": "CREATE", "result": "LESS", "create_revision": ALWAYS});
                let put =
                    |k: &str| json!({"request_put": {"key": B64.encode(k), "value": B64.encode(value)}});
                let txn = json!({"compare": [compare(a), compare(b)], "success": [put(a), put(b)]});
                self.etcd("/v3/kv/txn", txn).await?
            }
        };
        anyhow::ensure!(
            answer["succeeded"].as_bool() == Some(true),
            "the transaction's compares failed: {answer}"
        );
        Ok(())
    }

    /// Opens a watch of every key under `prefix`, from now: over HTTP on a connection of its
    /// own, over gRPC on a stream of its own.
    pub async fn watch(&self, prefix: &str) -> anyhow::Result<Watching> {
        if let Some(grpc) = &self.grpc {
            return Ok(Watching::Grpc(grpc.watch(prefix).await?));
        }
        let (method, path, body) = match self.system {
            System::Metastore => {
                let path = format!("/v1/watch?prefix={}", utf8_percent_encode(prefix, NON_ALPHANUMERIC));
                (Method::GET, path, Vec::new())
            }
            System::Etcd => {
                let mut end = prefix.as_bytes().to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let create =
                    json!({"create_request": {"key": B64.encode(prefix), "range_end": B64.encode(&end)}});
                (Method::POST, "/v3/watch".to_string(), serde_json::to_vec(&create)?)
            }
        };
        let request = self.request(method, path, body)?;
        let mut connection = self.connect().await?;
        connection.ready().await?;
        let answer = connection.send_request(request).await?;
        anyhow::ensure!(answer.status().is_success(), "watch refused: {}", answer.status());
        Ok(Watching::Http {
            system: self.system,
            _connection: connection,
            body: answer.into_body(),
            buffer: Vec::new(),
        })
    }

    /// This member's role in its cluster.
    pub async fn role(&self) -> anyhow::Result<Role> {
        if let Some(grpc) = &self.grpc {
            return grpc.role().await;
        }
        match self.system {
            System::Metastore => {
                let (status, body) = self.send(Method::GET, "/v1/cluster".to_string(), Vec::new()).await?;
                expect_success(status, &body)?;
                let status: ClusterStatus = serde_json::from_slice(&body)?;
                Ok(match status.state.as_str() {
                    "leader" => Role::Leader,
                    "follower" => Role::Follower,
                    _ => Role::Other,
                })
            }
            System::Etcd => {
                // 64-bit ids come as strings from the gateway; false fields may be left out.
                let status = self.etcd("/v3/maintenance/status", json!({})).await?;
                let own = &status["header"]["member_id"];
                Ok(if own.is_string() && *own == status["leader"] {
                    Role::Leader
                } else if status["isLearner"].as_bool().unwrap_or(false) {
                    Role::Other
                } else {
                    Role::Follower
                })
            }
        }
    }

    async fn etcd(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = self.send(Method::POST, path.to_string(), serde_json::to_vec(&body)?).await?;
        expect_success(status, &answer)?;
        Ok(serde_json::from_slice(&answer)?)
    }

    /// Sends one request on an idle connection, or a new one, and reads the whole answer; all
    /// within [`REQUEST_TIMEOUT`], connecting included (a member cut off drops the SYN).
    async fn send(&self, method: Method, path: String, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = self.request(method, path, body)?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {} within {REQUEST_TIMEOUT:?}", self.authority))?
    }

    fn request(&self, method: Method, path: String, body: Vec<u8>) -> anyhow::Result<Request<Full<Bytes>>> {
        Ok(Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?)
    }

    async fn exchange(&self, mut request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        let (mut connection, mut fresh) = match self.take_idle() {
            Some(connection) => (connection, false),
            None => (self.connect().await?, true),
        };
        loop {
            let (unsent, error) = match connection.ready().await {
                Err(e) => (request, e),
                Ok(()) => match connection.try_send_request(request).await {
                    Ok(answer) => {
                        let status = answer.status();
                        let body = answer.into_body().collect().await?.to_bytes();
                        // Read to the end, so the connection may serve again; a connection that
                        // failed went with its error above.
                        if let Ok(mut idle) = self.idle.lock() {
                            idle.push(connection);
                        }
                        return Ok((status, body));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => (unsent, e.into_error()),
                        None => return Err(e.into_error().into()),
                    },
                },
            };
            // A kept connection the member closed (it closes idle ones) fails before the
            // request is written: send it once more, on a new connection.
            if fresh {
                return Err(error.into());
            }
            request = unsent;
            connection = self.connect().await?;
            fresh = true;
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(connection) = idle.pop() {
            if !connection.is_closed() {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the member closes the connection, or the sender is dropped.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// An open watch: over HTTP its streamed body (one JSON object per line, either system) and
/// the connection it keeps open; over gRPC its stream of answers.
pub enum Watching {
    Http {
        system: System,
        _connection: SendRequest<Full<Bytes>>,
        body: hyper::body::Incoming,
        buffer: Vec<u8>,
    },
    Grpc(tonic::Streaming<metastore_etcd_proto::etcdserverpb::WatchResponse>),
}

impl Watching {
    /// The values of the puts in the next answer (none in the first, which says the watch was
    /// created); `None` once the watch has ended.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        match self {
            Watching::Grpc(answers) => Ok(answers.message().await?.map(grpc::put_values)),
            Watching::Http { system, body, buffer, .. } => loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = serde_json::from_slice::<Value>(&line)?;
                    return Ok(Some(put_values(*system, &line)));
                }
                match body.frame().await {
                    Some(frame) => {
                        if let Ok(data) = frame?.into_data() {
                            buffer.extend_from_slice(&data);
                        }
                    }
                    None => return Ok(None),
                }
            },
        }
    }
}

/// The values of the put events in one line of either system's HTTP watch stream.
fn put_values(system: System, line: &Value) -> Vec<Vec<u8>> {
    let events = match system {
        System::Metastore => &line["events"],
        System::Etcd => &line["result"]["events"],
    };
    let Some(events) = events.as_array() else { return Vec::new() };
    events
        .iter()
        // etcd leaves a put's type out (it is the default); a delete says so.
        .filter(|e| e["type"].as_str().is_none_or(|t| t.eq_ignore_ascii_case("put")))
        .filter_map(|e| e["kv"]["value"].as_str().and_then(|v| B64.decode(v).ok()))
        .collect()
}

fn metastore_path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, NON_ALPHANUMERIC))
}

fn expect_success(status: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(status.is_success(), "answered {status}: {}", String::from_utf8_lossy(body));
    Ok(())
}
