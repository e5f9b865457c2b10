//! A member as a client sees it, through either API its client port serves: metaStore's HTTP
//! API or etcd's v3 gRPC API. The clients, lease holders and watchers of a run are split
//! between the two, so every nemesis judges both the same way, against one history.

use std::time::Duration;

use futures::stream::{self, Stream, StreamExt as _};
use metastore_client::{
    Client, ClientError, Consistency, ErrorCode, EventKind, KeyValue, Precondition, TxnCompare, TxnOp,
    TxnOpResponse, TxnRange, WatchEvent, WatchResponse,
};
use metastore_etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore_etcd_proto::etcdserverpb::kv_client::KvClient;
use metastore_etcd_proto::etcdserverpb::lease_client::LeaseClient;
use metastore_etcd_proto::etcdserverpb::request_op::Request as Op;
use metastore_etcd_proto::etcdserverpb::watch_client::WatchClient;
use metastore_etcd_proto::etcdserverpb::watch_request::RequestUnion;
use metastore_etcd_proto::etcdserverpb::{
    self as pb, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest,
};
use metastore_etcd_proto::mvccpb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::Credentials;
use tonic::Status;

/// A request not answered in this long fails (its outcome unknown), and the client moves on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Why a request failed, as far as its effect goes.
#[derive(Debug)]
pub enum Failure {
    /// The precondition did not hold: the write had no effect.
    Refused,
    /// The member was never reached: no request, no effect.
    NeverSent,
    /// A keep-alive of a lease the cluster does not have.
    LeaseNotFound,
    /// Anything else: a write may or may not have taken effect.
    Other(String),
}

/// One member, spoken to in one protocol.
#[derive(Clone)]
pub enum Member {
    Http(Client),
    Grpc(Etcd),
}

impl Member {
    /// The member `client` reaches, spoken to through `protocol` (gRPC on the same URL).
    /// `credentials` are what gRPC presents and trusts when members speak TLS (`client` has
    /// its own).
    pub fn new(
        protocol: Protocol,
        client: Client,
        credentials: Option<&Credentials>,
    ) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::Http => Member::Http(client),
            Protocol::Grpc => Member::Grpc(Etcd::new(client.base_url(), credentials)?),
        })
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Member::Http(_) => Protocol::Http,
            Member::Grpc(_) => Protocol::Grpc,
        }
    }

    /// A linearizable read.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Failure> {
        match self {
            Member::Http(client) => client.get(key, Consistency::Linearizable).await.map_err(failure),
            Member::Grpc(etcd) => {
                let range = RangeRequest { key: key.into(), ..RangeRequest::default() };
                let answer = etcd.kv().range(range).await.map_err(grpc_failure)?.into_inner();
                Ok(answer.kvs.into_iter().next().map(key_value))
            }
        }
    }

    /// A write, attached to `lease` when not 0.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), Failure> {
        match self {
            Member::Http(client) if lease == 0 => {
                client.put(key, value, None).await.map(drop).map_err(failure)
            }
            Member::Http(client) => client.put_leased(key, value, lease).await.map(drop).map_err(failure),
            Member::Grpc(etcd) => {
                let put = PutRequest { key: key.into(), value, lease, ..PutRequest::default() };
                etcd.kv().put(put).await.map(drop).map_err(grpc_failure)
            }
        }
    }

    /// A write that holds only if the key is at `revision`, or absent when `None`.
    pub async fn cas(&self, key: &str, revision: Option<u64>, value: Vec<u8>) -> Result<(), Failure> {
        match self {
            Member::Http(client) => {
                let precondition = match revision {
                    Some(r) => Precondition::ModRevision(r),
                    None => Precondition::Absent,
                };
                client.put(key, value, Some(precondition)).await.map(drop).map_err(failure)
            }
            // A key that is absent has mod revision 0, as etcd compares it.
            Member::Grpc(_) => self.swap(&[(key.as_bytes(), revision.unwrap_or(0), value)]).await,
        }
    }

    /// Every key in `[key, range_end)`, read linearizably in one transaction, and the revision
    /// they were read at.
    pub async fn list(&self, key: &[u8], range_end: &[u8]) -> Result<(u64, Vec<KeyValue>), Failure> {
        match self {
            Member::Http(client) => {
                let range =
                    TxnRange { key: key.to_vec(), range_end: range_end.to_vec(), ..TxnRange::default() };
                let read =
                    metastore_client::TxnRequest { success: vec![TxnOp::Range(range)], ..Default::default() };
                let answer = client.txn(&read).await.map_err(failure)?;
                match answer.responses.into_iter().next() {
                    Some(TxnOpResponse::Range(range)) => Ok((answer.revision, range.kvs)),
                    _ => Err(Failure::Other("a read-only transaction answered no range".into())),
                }
            }
            Member::Grpc(etcd) => {
                let range = RangeRequest {
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                    ..RangeRequest::default()
                };
                let answer = etcd.kv().range(range).await.map_err(grpc_failure)?.into_inner();
                let revision = answer.header.map(|h| unsigned(h.revision)).unwrap_or(0);
                Ok((revision, answer.kvs.into_iter().map(key_value).collect()))
            }
        }
    }

    /// Writes every `(key, value)` in one transaction if each key is still at its mod
    /// revision, or none of them.
    pub async fn swap(&self, writes: &[(&[u8], u64, Vec<u8>)]) -> Result<(), Failure> {
        let succeeded = match self {
            Member::Http(client) => {
                let mut txn = metastore_client::TxnRequest::default();
                for (key, revision, value) in writes {
                    let target = metastore_client::CompareTarget::ModRevision(*revision);
                    txn.compare.push(TxnCompare::key(
                        key.to_vec(),
                        metastore_client::CompareResult::Equal,
                        target,
                    ));
                    txn.success.push(TxnOp::put(key.to_vec(), value.clone()));
                }
                client.txn(&txn).await.map_err(failure)?.succeeded
            }
            Member::Grpc(etcd) => {
                let mut txn = TxnRequest::default();
                for (key, revision, value) in writes {
                    let revision = i64::try_from(*revision).map_err(|e| Failure::Other(e.to_string()))?;
                    txn.compare.push(Compare {
                        result: CompareResult::Equal.into(),
                        target: CompareTarget::Mod.into(),
                        key: key.to_vec(),
                        target_union: Some(TargetUnion::ModRevision(revision)),
                        ..Compare::default()
                    });
                    let put = PutRequest { key: key.to_vec(), value: value.clone(), ..PutRequest::default() };
                    txn.success.push(RequestOp { request: Some(Op::RequestPut(put)) });
                }
                etcd.kv().txn(txn).await.map_err(grpc_failure)?.into_inner().succeeded
            }
        };
        if succeeded {
            Ok(())
        } else {
            Err(Failure::Refused)
        }
    }

    /// A new lease's id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, Failure> {
        match self {
            Member::Http(client) => client.lease_grant(ttl).await.map(|l| l.id).map_err(failure),
            Member::Grpc(etcd) => {
                let grant = LeaseGrantRequest { ttl, id: 0 };
                let answer = etcd.lease().lease_grant(grant).await.map_err(grpc_failure)?.into_inner();
                Ok(answer.id)
            }
        }
    }

    /// Renews a lease once.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<(), Failure> {
        match self {
            Member::Http(client) => client.lease_keep_alive(id).await.map(drop).map_err(failure),
            Member::Grpc(etcd) => {
                // One request on a stream kept open until its answer: a stream closed at once
                // may end before the member answers.
                let requests = open(LeaseKeepAliveRequest { id });
                let mut answers =
                    etcd.lease().lease_keep_alive(requests).await.map_err(grpc_failure)?.into_inner();
                // The channel's timeout covers the answer's headers only, which come at once.
                let answer =
                    tokio::time::timeout(REQUEST_TIMEOUT, answers.message()).await.map_err(|_| {
                        Failure::Other(format!("no keep-alive answer within {REQUEST_TIMEOUT:?}"))
                    })?;
                match answer.map_err(grpc_failure)? {
                    Some(answer) if answer.ttl > 0 => Ok(()),
                    // etcd answers a lease it does not have with a TTL of 0.
                    Some(_) => Err(Failure::LeaseNotFound),
                    None => Err(Failure::Other("the keep-alive stream ended unanswered".into())),
                }
            }
        }
    }
}

/// A member's gRPC channel: one HTTP/2 connection, connected on first use and again after it
/// breaks.
#[derive(Clone)]
pub struct Etcd {
    url: String,
    channel: Channel,
}

impl Etcd {
    /// A channel to `url`, over TLS with `credentials` when given.
    pub fn new(url: &str, credentials: Option<&Credentials>) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(credentials) = credentials {
            endpoint = endpoint.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&credentials.ca_pem))
                    .identity(Identity::from_pem(&credentials.cert_pem, &credentials.key_pem)),
            )?;
        }
        Ok(Self { url: url.to_string(), channel: endpoint.connect_lazy() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    /// A watch of every key from `start_revision`, with previous values: its answers, the
    /// first saying it was created.
    pub async fn watch_everything(
        &self,
        start_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchResponse>, Status> {
        let create = WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: i64::try_from(start_revision).unwrap_or(i64::MAX),
            prev_kv: true,
            ..WatchCreateRequest::default()
        };
        let request = pb::WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        // The request stream stays open: a watch stream whose client half closes may end.
        Ok(WatchClient::new(self.channel.clone()).watch(open(request)).await?.into_inner())
    }
}

/// A stream of one request that stays open after it.
fn open<T: Send + 'static>(request: T) -> impl Stream<Item = T> + Send + 'static {
    stream::once(async move { request }).chain(stream::pending())
}

fn failure(e: ClientError) -> Failure {
    match e {
        ClientError::Api(e) if e.status == 409 => Failure::Refused,
        ClientError::Api(e) if *e.code() == ErrorCode::LeaseNotFound => Failure::LeaseNotFound,
        ClientError::Transport { source, .. } if source.is_connect() => Failure::NeverSent,
        e => Failure::Other(e.to_string()),
    }
}

/// A refused connection is the one gRPC failure that proves the request was never sent; any
/// other (a timeout, a reset, an error from the member) may come after it took effect.
fn grpc_failure(status: Status) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Failure::NeverSent;
            }
        }
        source = e.source();
    }
    Failure::Other(format!("{:?}: {}", status.code(), status.message()))
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A gRPC key-value as the HTTP API shows it.
pub fn key_value(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: unsigned(kv.create_revision),
        mod_revision: unsigned(kv.mod_revision),
        version: unsigned(kv.version),
        lease: kv.lease,
    }
}

/// A gRPC watch answer as a line of the HTTP API's watch stream. An answer with events is
/// through its last event's revision (its header holds the store's revision, which may be
/// later); a progress answer is through its header's revision.
pub fn watch_line(answer: pb::WatchResponse) -> WatchResponse {
    let header = answer.header.map(|h| unsigned(h.revision)).unwrap_or(0);
    let events: Vec<WatchEvent> = answer
        .events
        .into_iter()
        .map(|e| WatchEvent {
            kind: if e.r#type == mvccpb::event::EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: e.kv.map(key_value).unwrap_or_else(empty),
            prev_kv: e.prev_kv.map(key_value),
        })
        .collect();
    let revision = events.last().map_or(header, |e| e.kv.mod_revision);
    let progress = events.is_empty() && !answer.created && !answer.canceled;
    WatchResponse {
        revision,
        created: answer.created,
        progress,
        canceled: answer.canceled,
        compact_revision: unsigned(answer.compact_revision),
        cancel_reason: Some(answer.cancel_reason).filter(|r| !r.is_empty()),
        events,
    }
}

fn empty() -> KeyValue {
    KeyValue { key: Vec::new(), value: Vec::new(), create_revision: 0, mod_revision: 0, version: 0, lease: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL nothing listens on.
    fn nowhere() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn a_write_to_a_member_that_is_down_was_never_sent_in_either_protocol() {
        let url = nowhere();
        for protocol in [Protocol::Http, Protocol::Grpc] {
            let member = Member::new(protocol, Client::new(url.clone()), None).expect("a member");
            let result = member.put("k", b"v".to_vec(), 0).await;
            assert!(matches!(result, Err(Failure::NeverSent)), "{protocol:?}: {result:?}");
        }
    }
}
