//! etcd's v3 gRPC API, a front end over the service layer beside the HTTP API (`crate::api`):
//! etcdctl, Kubernetes and etcd's client libraries talk to metaStore unchanged.
//!
//! Both front ends share the client port, as etcd serves its gRPC and JSON APIs on one:
//! [`Dispatch`] sends gRPC requests (HTTP/2, `content-type: application/grpc`) here and every
//! other request to the HTTP routes. This module translates between etcd's messages and the
//! engine's; what a request does is the service layer's, the same for both front ends.

mod auth;
mod cluster;
mod convert;
mod errors;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use metastore_etcd_proto::etcdserverpb::auth_server::AuthServer;
use metastore_etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use metastore_etcd_proto::etcdserverpb::kv_server::KvServer;
use metastore_etcd_proto::etcdserverpb::lease_server::LeaseServer;
use metastore_etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use metastore_etcd_proto::etcdserverpb::watch_server::WatchServer;
use metastore_etcd_proto::etcdserverpb::ResponseHeader;
use tonic::service::Routes;
use tonic::Status;

use crate::auth::Caller;
use crate::network::PeerToken;
use crate::service::{Credentials, Service};
use crate::tls::ClientName;

pub use errors::status;

/// The largest request etcd accepts (its `--max-request-bytes` default); a larger put or
/// transaction is refused with etcd's "request is too large".
pub const MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;

/// How large a message may arrive at all: the request limit and room for gRPC's framing, as
/// etcd allows. Anything larger is refused before it is decoded.
const MAX_DECODING_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;

/// How large an answer may be. etcd sets no bound short of 2 GiB; one this large in memory is
/// already more than a member should hold for one client, and a client can always page.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// What every service of the API shares: the service layer, and how headers are made.
#[derive(Clone)]
pub struct Etcd {
    service: Service,
    /// Membership changes must present it, where the cluster has one.
    token: Option<PeerToken>,
    /// How often a watch that asked for progress notifications gets one.
    progress_every: std::time::Duration,
}

impl Etcd {
    /// Every response's header: who answered, at which store revision and raft term.
    fn header(&self, revision: u64) -> ResponseHeader {
        let metrics = self.service.metrics();
        ResponseHeader {
            cluster_id: self.service.reader().cluster_id(),
            member_id: self.service.id(),
            revision: convert::signed(revision),
            raft_term: metrics.current_term,
        }
    }

    /// Resolves once this member stops, ending a long-lived stream with etcd's answer.
    async fn stopped(&self) -> Status {
        let _ = self.service.stopping().wait_for(|stopping| *stopping).await;
        Status::unavailable(errors::STOPPED)
    }

    /// Who sent `request`: the user its token names (etcd's `token` metadata, or an
    /// `authorization` that is not the peer token's `Bearer`), else the common name of the
    /// connection's client certificate; none while auth is off.
    fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Option<Caller>, Status> {
        let metadata = request.metadata();
        let token = metadata
            .get("token")
            .or_else(|| metadata.get("authorization").filter(|v| !v.as_bytes().starts_with(b"Bearer ")));
        let credentials = match (token, request.extensions().get::<ClientName>()) {
            // Not text: no token this cluster issued.
            (Some(token), _) => Credentials::Token(token.to_str().unwrap_or_default().to_owned()),
            (None, Some(name)) => Credentials::Certificate(name.0.clone()),
            (None, None) => Credentials::None,
        };
        self.service.caller(&credentials).map_err(status)
    }

    /// The caller of `request`, once found allowed what `need` says.
    async fn authorize<T>(
        &self,
        request: &tonic::Request<T>,
        need: crate::service::Need<'_>,
    ) -> Result<Option<Caller>, Status> {
        let caller = self.caller(request)?;
        self.service.authorize(caller.as_ref(), need).await.map_err(status)?;
        Ok(caller)
    }

    /// The store's revision as this member last applied it.
    fn current_revision(&self) -> u64 {
        *self.service.reader().applied().borrow()
    }
}

/// The etcd v3 services, ready to be served.
pub fn routes(service: Service, token: Option<PeerToken>, progress_every: std::time::Duration) -> Routes {
    let etcd = Etcd { service, token, progress_every };
    Routes::new(
        KvServer::new(etcd.clone())
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES),
    )
    .add_service(
        WatchServer::new(etcd.clone())
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES),
    )
    .add_service(LeaseServer::new(etcd.clone()).max_decoding_message_size(MAX_DECODING_BYTES))
    .add_service(ClusterServer::new(etcd.clone()).max_decoding_message_size(MAX_DECODING_BYTES))
    .add_service(MaintenanceServer::new(etcd.clone()).max_decoding_message_size(MAX_DECODING_BYTES))
    .add_service(AuthServer::new(etcd).max_decoding_message_size(MAX_DECODING_BYTES))
    // grpc.health.v1: serving while the member runs, as etcd reports it.
    .add_service(tonic_health::server::health_reporter().1)
    .prepare()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One client port for both APIs: gRPC requests go to `grpc`, all others to `http`.
#[derive(Clone)]
pub struct Dispatch<H> {
    pub http: H,
    pub grpc: Routes,
}

fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

impl<H, HB> tower_service::Service<http::Request<hyper::body::Incoming>> for Dispatch<H>
where
    H: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<HB>>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    HB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    HB::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call readies a clone of its route.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if is_grpc(&request) {
            let mut grpc = self.grpc.clone();
            Box::pin(async move {
                futures::future::poll_fn(|cx| {
                    tower_service::Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut grpc, cx)
                })
                .await?;
                Ok(grpc.call(request).await?)
            })
        } else {
            let mut http = self.http.clone();
            Box::pin(async move {
                futures::future::poll_fn(|cx| http.poll_ready(cx)).await.map_err(Into::into)?;
                let response = http.call(request).await.map_err(Into::into)?;
                Ok(response.map(tonic::body::Body::new))
            })
        }
    }
}
