//! The Cluster service: the membership as etcd's clients list and change it. metaStore's own
//! membership rules apply (quorum kept, learners caught up before they vote), and a change
//! needs the cluster's peer token (`authorization: Bearer <token>`) where one is set, as on the
//! HTTP API.

use metastore_etcd_proto::etcdserverpb::cluster_server::Cluster;
use metastore_etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::errors::{status, MEMBER_NOT_FOUND};
use super::Etcd;
use crate::service::{MemberView, Role};
use crate::types::MembershipChange;

fn member(view: MemberView) -> Member {
    Member {
        id: view.id,
        name: format!("member-{}", view.id),
        peer_ur_ls: vec![view.member.peer_url],
        client_ur_ls: if view.member.client_url.is_empty() { vec![] } else { vec![view.member.client_url] },
        is_learner: view.role == Role::Learner,
    }
}

impl Etcd {
    fn members(&self) -> Vec<Member> {
        self.service.members().into_iter().map(member).collect()
    }

    /// Refuses a membership change that does not present the cluster's peer token.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else { return Ok(()) };
        let presented = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if token.admits(presented) {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "changing the membership needs the cluster's peer token as `authorization: Bearer <token>`",
            ))
        }
    }

    async fn change(&self, change: MembershipChange) -> Result<Vec<Member>, Status> {
        let id = match &change {
            MembershipChange::Promote { id } | MembershipChange::Remove { id } => *id,
            _ => 0,
        };
        if !self.service.members().iter().any(|m| m.id == id) {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        self.service.change_membership(change).await.map_err(status)?;
        Ok(self.members())
    }
}

#[tonic::async_trait]
impl Cluster for Etcd {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admit(&request)?;
        Err(Status::unimplemented(
            "metaStore adds a member that is already running, under the id it was started with: \
             use POST /v1/cluster/members (docs/api.md)",
        ))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admit(&request)?;
        let members = self.change(MembershipChange::Remove { id: request.into_inner().id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.header(self.current_revision())),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admit(&request)?;
        Err(Status::unimplemented(
            "a member's peer URL never changes in metaStore: a member reachable at two addresses \
             could count twice towards a quorum; remove it and add it anew",
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.service
                .await_freshness(crate::service::ReadConsistency::Linearizable)
                .await
                .map_err(status)?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.header(self.current_revision())),
            members: self.members(),
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admit(&request)?;
        let members = self.change(MembershipChange::Promote { id: request.into_inner().id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.header(self.current_revision())),
            members,
        }))
    }
}
