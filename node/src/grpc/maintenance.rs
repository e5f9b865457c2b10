//! The Maintenance service: status, alarms, defragmentation, checksums, snapshots, leadership
//! transfer.

use metastore_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use metastore_etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{signed, unsigned};
use super::errors::{status, BAD_LEADER_TRANSFEREE, TIMED_OUT};
use super::Etcd;
use crate::service::{Need, Role, ServiceError, TransferError};

/// The etcd release whose API metaStore serves, as `Status` reports it: clients parse it to
/// decide what the server can do (Kubernetes does, to turn features on).
pub const ETCD_VERSION: &str = "3.4.31";

/// Snapshot bytes per message: well under the 4 MiB that gRPC clients accept by default.
const SNAPSHOT_PIECE_BYTES: usize = 256 * 1024;

fn storage(e: crate::storage::StoreError) -> Status {
    status(ServiceError::from(e))
}

#[tonic::async_trait]
impl Maintenance for Etcd {
    /// No alarms: metaStore sets no space quota yet, so none is ever raised.
    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(AlarmResponse {
            header: Some(self.header(self.current_revision())),
            alarms: vec![],
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.service.metrics();
        let size = signed(self.service.reader().stored_size());
        let learner =
            self.service.members().iter().any(|v| v.id == self.service.id() && v.role == Role::Learner);
        Ok(Response::new(StatusResponse {
            header: Some(self.header(self.current_revision())),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |id| id.index),
            errors: vec![],
            db_size_in_use: size,
            is_learner: learner,
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.authorize(&request, Need::Admin).await?;
        self.service.reader().compact_files().await.map_err(storage)?;
        Ok(Response::new(DefragmentResponse { header: Some(self.header(self.current_revision())) }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.authorize(&request, Need::Admin).await?;
        let (hash, revision, _) = self.service.reader().hash(None).await.map_err(storage)?;
        Ok(Response::new(HashResponse { header: Some(self.header(revision)), hash }))
    }

    /// A checksum of the keys as of the revision: equal on every member at one revision.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.authorize(&request, Need::Admin).await?;
        let at = Some(unsigned(request.into_inner().revision)).filter(|at| *at > 0);
        let (hash, hashed_at, compacted) = self.service.reader().hash(at).await.map_err(storage)?;
        Ok(Response::new(HashKvResponse {
            // The revision hashed at, as etcd reports it: hashes compare at one revision.
            header: Some(self.header(hashed_at)),
            hash,
            compact_revision: signed(compacted),
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    /// This member's store as of now, streamed in metaStore's snapshot format and sealed as a
    /// file (`metastore_client::seal`): what `etcdctl snapshot save` writes (not etcd's bolt database),
    /// and what `metastore --restore-from` starts a new cluster from.
    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // A snapshot holds every key.
        self.authorize(&request, Need::Admin).await?;
        let (mut pieces, revision) =
            self.service.sealed_snapshot(SNAPSHOT_PIECE_BYTES).await.map_err(status)?;
        let header = self.header(revision);
        let (answers, stream) = mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(piece) = pieces.recv().await {
                let (answer, last) = match piece {
                    // The total is known only at the end: until then, at least one more piece.
                    Ok(piece) => {
                        let remaining = if piece.last { 0 } else { SNAPSHOT_PIECE_BYTES as u64 };
                        let answer = SnapshotResponse {
                            header: Some(header),
                            remaining_bytes: remaining,
                            blob: piece.data,
                        };
                        (Ok(answer), piece.last)
                    }
                    Err(e) => (Err(storage(e)), true),
                };
                // A client that went away wants no more.
                if answers.send(answer).await.is_err() || last {
                    return;
                }
            }
            // The pieces stopped without a last one: the stream must not end as if whole.
            let _ = answers.send(Err(Status::internal("the snapshot ended early"))).await;
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    /// Hands leadership to `target_id`; asked of the leader, as etcd asks it.
    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.authorize(&request, Need::Admin).await?;
        let target = request.into_inner().target_id;
        self.service.transfer_leadership(target).await.map_err(|e| match e {
            TransferError::NotLeader { .. } => Status::failed_precondition("etcdserver: not leader"),
            TransferError::BadTransferee(_) => Status::failed_precondition(BAD_LEADER_TRANSFEREE),
            TransferError::TimedOut { .. } => Status::unavailable(TIMED_OUT),
            TransferError::Raft(e) => Status::unavailable(e),
        })?;
        Ok(Response::new(MoveLeaderResponse { header: Some(self.header(self.current_revision())) }))
    }
}
