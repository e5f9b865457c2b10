//! etcd's v3 gRPC API, which both systems serve on their client port: the protocol etcd's own
//! clients (etcdctl, Kubernetes, the client libraries) speak, so the same requests, encoded by
//! the same code, go to either system.
//!
//! A member is reached over a few HTTP/2 connections, requests taking them in turn, as etcd's
//! benchmark spreads its clients over `--conns` connections.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::stream::{self, StreamExt as _};
use metastore_etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore_etcd_proto::etcdserverpb::kv_client::KvClient;
use metastore_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore_etcd_proto::etcdserverpb::request_op::Request as Op;
use metastore_etcd_proto::etcdserverpb::watch_client::WatchClient;
use metastore_etcd_proto::etcdserverpb::watch_request::RequestUnion;
use metastore_etcd_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use metastore_etcd_proto::mvccpb::event::EventType;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Streaming;

use crate::target::{Revision, Role};

/// A request not answered in this long counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Each stream's flow-control window; a connection's is four times as large.
const WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// One member's connections. Cheap to clone; clones share them.
#[derive(Clone)]
pub struct Grpc {
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
}

impl Grpc {
    /// `connections` HTTP/2 connections to `url` (`http://host:port`, or `https://` with
    /// `tls`), opened on first use.
    pub fn new(url: &str, connections: usize, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Self> {
        // Windows as large as grpc-go's grow to: h2 closes a connection whose unread small
        // frames cost more than half its window, and a watch fan-out (a thousand streams of
        // small events, read by a generator that falls behind) reaches that with small ones.
        let endpoint = Endpoint::from_shared(url.to_string())?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .initial_connection_window_size(WINDOW_BYTES * 4)
            .initial_stream_window_size(WINDOW_BYTES)
            .tcp_nodelay(true);
        let endpoint = match tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        };
        let channels = (0..connections.max(1)).map(|_| endpoint.connect_lazy()).collect();
        Ok(Self { channels, next: Arc::default() })
    }

    fn channel(&self) -> Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.channels[turn % self.channels.len()].clone()
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel())
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.kv().put(put(key, value)).await?;
        Ok(())
    }

    /// A read, linearizable or (`stale`) serializable: the key's mod revision.
    pub async fn get(&self, key: &str, stale: bool) -> anyhow::Result<Revision> {
        let range = RangeRequest { key: key.into(), serializable: stale, ..RangeRequest::default() };
        let answer = self.kv().range(range).await?.into_inner();
        Ok(answer.kvs.first().and_then(|kv| u64::try_from(kv.mod_revision).ok()))
    }

    pub async fn get_at(&self, key: &str, at: u64) -> anyhow::Result<()> {
        let range = RangeRequest { key: key.into(), revision: i64::try_from(at)?, ..RangeRequest::default() };
        self.kv().range(range).await?;
        Ok(())
    }

    /// Writes `value` if the key is still at `revision` (absent when `None`); whether it did.
    pub async fn cas(&self, key: &str, revision: Revision, value: &[u8]) -> anyhow::Result<bool> {
        let revision = i64::try_from(revision.unwrap_or(0))?;
        let compare =
            compare(key, CompareTarget::Mod, CompareResult::Equal, TargetUnion::ModRevision(revision));
        let txn =
            TxnRequest { compare: vec![compare], success: vec![put_op(key, value)], failure: Vec::new() };
        Ok(self.kv().txn(txn).await?.into_inner().succeeded)
    }

    /// Two compares that hold and two puts (see [`crate::target::Endpoint::txn`]).
    pub async fn txn(&self, a: &str, b: &str, value: &[u8], always: u64) -> anyhow::Result<bool> {
        let always = TargetUnion::CreateRevision(i64::try_from(always)?);
        let created = |k| compare(k, CompareTarget::Create, CompareResult::Less, always.clone());
        let txn = TxnRequest {
            compare: vec![created(a), created(b)],
            success: vec![put_op(a, value), put_op(b, value)],
            failure: Vec::new(),
        };
        Ok(self.kv().txn(txn).await?.into_inner().succeeded)
    }

    /// A watch of every key under `prefix`, from now, on a stream of its own.
    pub async fn watch(&self, prefix: &str) -> anyhow::Result<Streaming<WatchResponse>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let create =
            WatchCreateRequest { key: prefix.into(), range_end: end, ..WatchCreateRequest::default() };
        let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        // The request stream stays open: a stream whose client half closes may be ended.
        let requests = stream::once(async move { request }).chain(stream::pending());
        Ok(WatchClient::new(self.channel()).watch(requests).await?.into_inner())
    }

    /// This member's role, from its status: it leads when the leader it names is itself.
    pub async fn role(&self) -> anyhow::Result<Role> {
        let status = MaintenanceClient::new(self.channel()).status(StatusRequest {}).await?.into_inner();
        let own = status.header.map(|h| h.member_id);
        Ok(if status.is_learner {
            Role::Other
        } else if own == Some(status.leader) {
            Role::Leader
        } else {
            Role::Follower
        })
    }
}

/// The values of the put events in one watch answer.
pub fn put_values(answer: WatchResponse) -> Vec<Vec<u8>> {
    answer
        .events
        .into_iter()
        .filter(|e| e.r#type == EventType::Put as i32)
        .filter_map(|e| e.kv.map(|kv| kv.value))
        .collect()
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest { key: key.into(), value: value.to_vec(), ..PutRequest::default() }
}

fn put_op(key: &str, value: &[u8]) -> RequestOp {
    RequestOp { request: Some(Op::RequestPut(put(key, value))) }
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, operand: TargetUnion) -> Compare {
    Compare {
        result: result.into(),
        target: target.into(),
        key: key.into(),
        target_union: Some(operand),
        ..Compare::default()
    }
}

/// TLS for every channel: trusting the CAs in `ca`, presenting `identity` (certificate, key)
/// when given; all PEM files.
pub fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> anyhow::Result<ClientTlsConfig> {
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}
