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

use std::time::Duration;

use super::errors::{status, MEMBER_NOT_FOUND};
use super::Etcd;
use crate::service::{MemberView, Need, Role, Service, ServiceError, PEER_URL_EXISTS};
use crate::types::MembershipChange;

/// A member as etcd lists it. One that has not started yet (added, but never recorded its
/// client URL) has no name, which is how etcdctl tells it is "unstarted".
fn member(view: MemberView) -> Member {
    let started = !view.member.client_url.is_empty();
    Member {
        id: view.id,
        name: if started { format!("member-{}", view.id) } else { String::new() },
        peer_ur_ls: vec![view.member.peer_url],
        client_ur_ls: if view.member.client_url.is_empty() { vec![] } else { vec![view.member.client_url] },
        is_learner: view.role == Role::Learner,
    }
}

impl Etcd {
    fn members(&self) -> Vec<Member> {
        self.service.members().into_iter().map(member).collect()
    }

    /// Refuses a membership change that does not present the cluster's peer token, where it
    /// has one, or (while auth is on) does not come from a user with the root role.
    async fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let Some(token) = &self.token {
            let presented = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
            if !token.admits(presented) {
                return Err(Status::permission_denied(
                    "changing the membership needs the cluster's peer token as `authorization: Bearer <token>`",
                ));
            }
        }
        self.authorize(request, Need::Admin).await.map(drop)
    }

    async fn change(&self, change: MembershipChange) -> Result<Vec<Member>, Status> {
        let id = match &change {
            MembershipChange::Promote { id } | MembershipChange::Remove { id } => *id,
            _ => 0,
        };
        self.known(id).await?;
        let index = self.service.change_membership(change).await.map_err(status)?;
        self.sees_membership_of(index).await;
        Ok(self.members())
    }

    /// Member `id` as the membership has it; a member this one has not heard of yet may have
    /// been added through another, so it asks the leader before it says "not found".
    async fn known(&self, id: u64) -> Result<MemberView, Status> {
        let find = || self.service.members().into_iter().find(|m| m.id == id);
        if let Some(member) = find() {
            return Ok(member);
        }
        self.fresh().await?;
        find().ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))
    }

    /// Waits until this member has applied everything committed when asked, membership
    /// changes made through other members included.
    async fn fresh(&self) -> Result<(), Status> {
        self.service.await_freshness(crate::service::ReadConsistency::Linearizable).await.map_err(status)
    }

    /// Waits (briefly) until this member's own view of the membership holds the change the
    /// leader committed at `index`, so that an answer lists the membership as changed.
    async fn sees_membership_of(&self, index: u64) {
        let seen = self
            .service
            .raft()
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.membership_config.log_id().map_or(0, |l| l.index) >= index,
                "membership change seen",
            )
            .await;
        if seen.is_err() {
            tracing::debug!(index, "answering before this member saw the membership change");
        }
    }
}

#[tonic::async_trait]
impl Cluster for Etcd {
    /// etcd's order: the member is added first, then started (`metastore --join --member-id
    /// <ID>`, the id this answers with). A learner stays one until promoted; a voter is added as
    /// a learner too and promoted once it has started and caught up, so that a member that never
    /// starts cannot cost the cluster its quorum as it would cost etcd's.
    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admit(&request).await?;
        let r = request.into_inner();
        let [peer_url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument("a metaStore member has exactly one peer URL"));
        };
        crate::config::check_peer_scheme(peer_url, &self.service.own_member().peer_url)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer_url = peer_url.trim_end_matches('/').to_string();
        // The id comes from the membership as the leader has it, not as this member last saw it.
        self.fresh().await?;
        let known = self.service.members();
        if known.iter().any(|m| m.member.peer_url == peer_url) {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        // Ids are small and never reused while the member they named is known.
        let id = known.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let member = crate::types::Member {
            peer_url: peer_url.clone(),
            client_url: String::new(),
            incarnation: String::new(),
        };
        let added = self.service.change_membership(MembershipChange::AddLearnerToStart { id, member }).await;
        let index = match added {
            // The leader's words carry which member has the URL; etcd's clients match etcd's.
            Err(ServiceError::Conflict(m)) if m.starts_with(PEER_URL_EXISTS) => {
                return Err(Status::failed_precondition(PEER_URL_EXISTS))
            }
            added => added.map_err(status)?,
        };
        self.sees_membership_of(index).await;
        if !r.is_learner {
            tokio::spawn(promote_when_ready(self.service.clone(), id, peer_url));
        }
        let members = self.members();
        // Listed once this member has seen the change; as it was added, in any case.
        let added = members.iter().find(|m| m.id == id).cloned().or(Some(Member {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: true,
        }));
        Ok(Response::new(MemberAddResponse {
            header: Some(self.header(self.current_revision())),
            member: added,
            members,
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admit(&request).await?;
        let members = self.change(MembershipChange::Remove { id: request.into_inner().id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.header(self.current_revision())),
            members,
        }))
    }

    /// A member's peer URL never changes in metaStore (a member reachable at two addresses
    /// could count twice towards a quorum): an update to the URL it has is answered, any other
    /// refused.
    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admit(&request).await?;
        let r = request.into_inner();
        let current = self.known(r.id).await?;
        let asked: Vec<&str> = r.peer_ur_ls.iter().map(|u| u.trim_end_matches('/')).collect();
        if asked != [current.member.peer_url.as_str()] {
            return Err(Status::failed_precondition(format!(
                "member {:x} stays at {}: a member's peer URL never changes in metaStore; \
                 remove it and add it anew at the new URL",
                r.id, current.member.peer_url
            )));
        }
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.header(self.current_revision())),
            members: self.members(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.authorize(&request, Need::User).await?;
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
        self.admit(&request).await?;
        let members = self.change(MembershipChange::Promote { id: request.into_inner().id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.header(self.current_revision())),
            members,
        }))
    }
}

/// How long a member added as a voter may take to start and catch up before it is left a
/// learner (`etcdctl member promote` then finishes the job, as it does if the member that took
/// the request restarts meanwhile).
const PROMOTE_WITHIN: Duration = Duration::from_secs(30 * 60);

/// Promotes learner `id`, added at `peer_url`, once the leader finds it caught up; gives up
/// when it is removed (or replaced by another member under its id), or after
/// [`PROMOTE_WITHIN`].
async fn promote_when_ready(service: Service, id: u64, peer_url: String) {
    let deadline = tokio::time::Instant::now() + PROMOTE_WITHIN;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Ids are reused once their member is gone: this is still the member added only while
        // its id names a learner at its URL (a promote of anything else is never sent).
        let still_ours = service.members().into_iter().find(|m| m.id == id);
        match still_ours {
            Some(m) if m.member.peer_url == peer_url && m.role == Role::Learner => {}
            Some(m) if m.member.peer_url == peer_url => return,
            _ => {
                tracing::info!(member = id, "added member removed before it was promoted");
                return;
            }
        }
        match service.change_membership(MembershipChange::Promote { id }).await {
            Ok(_) => {
                tracing::info!(member = id, "added member caught up: now a voter");
                return;
            }
            // Not a learner any more: removed meanwhile.
            Err(ServiceError::Invalid(reason)) => {
                tracing::info!(member = id, %reason, "added member not promoted");
                return;
            }
            // Not caught up yet (or not started), no leader, another change in progress.
            Err(_) => {}
        }
    }
    tracing::warn!(member = id, "added member did not catch up in time: left a learner");
}
