//! The Lease service: grant, revoke, keep-alive (a stream), time to live, list. The leader
//! keeps every lease's time; a keep-alive or time-to-live on a follower is forwarded to it.

use metastore_etcd_proto::etcdserverpb::lease_server::Lease;
use metastore_etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::errors::{status, LEASE_TTL_TOO_LARGE};
use super::Etcd;
use crate::engine::{WriteError, MAX_LEASE_TTL};
use crate::service::ServiceError;

type KeepAliveAnswer = Result<LeaseKeepAliveResponse, Status>;

#[tonic::async_trait]
impl Lease for Etcd {
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(LEASE_TTL_TOO_LARGE));
        }
        let (id, ttl, revision) =
            self.service.lease_grant(caller.as_ref(), r.id, r.ttl).await.map_err(status)?;
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.header(revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.caller(&request)?;
        let revision =
            self.service.lease_revoke(caller.as_ref(), request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(LeaseRevokeResponse { header: Some(self.header(revision)) }))
    }

    type LeaseKeepAliveStream = ReceiverStream<KeepAliveAnswer>;

    /// Each request renews its lease and is answered in turn; a lease that does not exist is
    /// answered with a TTL of 0, as etcd answers it.
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = self.caller(&request)?;
        let mut requests = request.into_inner();
        let (answers, stream) = mpsc::channel(4);
        let etcd = self.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.next() => match request {
                        Some(Ok(request)) => request,
                        Some(Err(_)) | None => return,
                    },
                    stopped = etcd.stopped() => {
                        let _ = answers.send(Err(stopped)).await;
                        return;
                    }
                };
                let ttl = match etcd.service.lease_keep_alive(caller.as_ref(), request.id).await {
                    Ok(ttl) => ttl,
                    Err(ServiceError::Write(WriteError::LeaseNotFound(_))) => 0,
                    Err(e) => {
                        let _ = answers.send(Err(status(e))).await;
                        return;
                    }
                };
                let answer = LeaseKeepAliveResponse {
                    header: Some(etcd.header(etcd.current_revision())),
                    id: request.id,
                    ttl,
                };
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    /// A lease that does not exist is answered with a TTL of -1, as etcd answers it.
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let answer = match self.service.lease_time_to_live(caller.as_ref(), r.id, r.keys).await {
            Ok(lease) => LeaseTimeToLiveResponse {
                header: None,
                id: lease.id,
                ttl: lease.ttl,
                granted_ttl: lease.granted_ttl,
                keys: lease.keys,
            },
            Err(ServiceError::Write(WriteError::LeaseNotFound(_))) => {
                LeaseTimeToLiveResponse { id: r.id, ttl: -1, ..Default::default() }
            }
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: Some(self.header(self.current_revision())),
            ..answer
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let caller = self.caller(&request)?;
        let leases = self.service.leases(caller.as_ref()).await.map_err(status)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.header(self.current_revision())),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        }))
    }
}
