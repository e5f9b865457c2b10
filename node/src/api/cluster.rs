//! Cluster status, membership and leadership: `/v1/cluster`, `/v1/cluster/init`,
//! `/v1/cluster/members`, `/v1/cluster/leader`.
//!
//! Status is open to every client. Changing the membership is not, on a member that has a peer
//! token ([`super::admin`]).

use metastore_client::ErrorCode;
use std::collections::BTreeMap;

use bytes::Bytes;
use metastore_client::{
    AddMemberRequest, ClusterStatus, InitRequest, MemberRole, MemberStatus, MembershipResponse,
    ReplicationStatus, TransferLeaderRequest, TransferLeaderResponse,
};
use warp::reply::{Reply, Response};
use warp::Filter;

use super::admin::{admission, guarded, Admission};
use super::error::ApiError;
use super::input::{body, parse_json};
use super::query::{params, Query};
use crate::network::PeerToken;
use crate::service::{MemberView, Role, Service, TransferError};
use crate::types::{Member, MembershipChange, NodeId};

pub fn routes(
    service: Service,
    token: Option<PeerToken>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone());
    let admin = admission(token, "changing the membership");
    let status = warp::get().and(warp::path!("v1" / "cluster")).and(params(&[])).and(svc.clone()).then(
        |q: Result<Query, ApiError>, s: Service| async move {
            match q {
                Ok(_) => warp::reply::json(&status(&s)).into_response(),
                Err(refused) => refused.into_response(),
            }
        },
    );
    // Membership changes take no query parameters: one given is refused like a missing token.
    let admin = admin.and(params(&[])).map(|admitted: Admission, q: Result<Query, ApiError>| match q {
        Ok(_) => admitted,
        Err(e) => admitted.refused(e),
    });
    let init = warp::post()
        .and(warp::path!("v1" / "cluster" / "init"))
        .and(admin.clone())
        .and(body())
        .and(svc.clone())
        .then(|admitted, body, s: Service| guarded(admitted, s.clone(), init(body, s)));
    let add = warp::post()
        .and(warp::path!("v1" / "cluster" / "members"))
        .and(admin.clone())
        .and(body())
        .and(svc.clone())
        .then(|admitted, body, s: Service| guarded(admitted, s.clone(), add_member(body, s)));
    let promote = warp::post()
        .and(warp::path!("v1" / "cluster" / "members" / NodeId / "promote"))
        .and(admin.clone())
        .and(svc.clone())
        .then(|id, admitted, s: Service| {
            guarded(admitted, s.clone(), change(MembershipChange::Promote { id }, s))
        });
    let remove = warp::delete()
        .and(warp::path!("v1" / "cluster" / "members" / NodeId))
        .and(admin.clone())
        .and(svc.clone())
        .then(|id, admitted, s: Service| {
            guarded(admitted, s.clone(), change(MembershipChange::Remove { id }, s))
        });
    let leader = warp::post()
        .and(warp::path!("v1" / "cluster" / "leader"))
        .and(admin)
        .and(body())
        .and(svc)
        .then(|admitted, body, s: Service| guarded(admitted, s.clone(), transfer_leadership(body, s)));
    status.or(init).unify().or(add).unify().or(promote).unify().or(remove).unify().or(leader).unify()
}

fn member_status(view: MemberView) -> MemberStatus {
    MemberStatus {
        id: view.id,
        role: match view.role {
            Role::Voter => MemberRole::Voter,
            Role::Learner => MemberRole::Learner,
        },
        peer_url: view.member.peer_url,
        client_url: view.member.client_url,
        incarnation: view.member.incarnation,
    }
}

pub fn status(service: &Service) -> ClusterStatus {
    let view = service.cluster_view();
    ClusterStatus {
        cluster_id: format!("{:016x}", service.reader().cluster_id()),
        member_id: view.member_id,
        version: service.version().to_string(),
        incarnation: view.incarnation,
        leader_id: view.leader,
        term: view.term,
        state: view.state.as_str().to_string(),
        initialized: view.initialized,
        last_log_index: view.last_log_index,
        commit_index: view.committed_index,
        applied_index: view.applied_index,
        snapshot_index: view.snapshot_index,
        purged_index: view.purged_index,
        replication: view.replication.map(|r| {
            r.into_iter().map(|(id, matched_index)| ReplicationStatus { id, matched_index }).collect()
        }),
        members: view.members.into_iter().map(member_status).collect(),
    }
}

fn check_url(what: &str, url: &str) -> Result<(), ApiError> {
    crate::config::parse_url(url)
        .map(|_| ())
        .map_err(|e| ApiError::new(ErrorCode::InvalidMember, format!("{what}: {e}")))
}

/// The member `request` describes, to join a cluster whose peer URLs are like `own_peer_url`.
fn member_of(request: &AddMemberRequest, own_peer_url: &str) -> Result<(NodeId, Member), ApiError> {
    if request.id == 0 {
        return Err(ApiError::new(ErrorCode::InvalidMember, "member ids start at 1"));
    }
    check_url("peer_url", &request.peer_url)?;
    crate::config::check_peer_scheme(&request.peer_url, own_peer_url)
        .map_err(|e| ApiError::new(ErrorCode::InvalidMember, format!("peer_url: {e}")))?;
    if !request.client_url.is_empty() {
        check_url("client_url", &request.client_url)?;
    }
    let member = Member {
        peer_url: request.peer_url.trim_end_matches('/').to_string(),
        client_url: request.client_url.trim_end_matches('/').to_string(),
        incarnation: request.incarnation.clone(),
    };
    Ok((request.id, member))
}

async fn membership_response(service: &Service, revision: u64) -> Response {
    let members = service.members().into_iter().map(member_status).collect();
    warp::reply::json(&MembershipResponse { revision, members }).into_response()
}

async fn init(body: Result<Bytes, ApiError>, service: Service) -> Result<Response, ApiError> {
    let body = body?;
    let request: InitRequest =
        if body.iter().all(u8::is_ascii_whitespace) { InitRequest::default() } else { parse_json(&body)? };
    let mut members = BTreeMap::new();
    for m in &request.members {
        let (id, member) = member_of(m, &service.own_member().peer_url)?;
        members.insert(id, member);
    }
    if members.is_empty() {
        service.initialize_alone().await?;
    } else {
        service.initialize(members).await?;
    }
    Ok(membership_response(&service, 0).await)
}

async fn add_member(body: Result<Bytes, ApiError>, service: Service) -> Result<Response, ApiError> {
    let request: AddMemberRequest = parse_json(&body?)?;
    let (id, member) = member_of(&request, &service.own_member().peer_url)?;
    change(MembershipChange::AddLearner { id, member }, service).await
}

async fn transfer_leadership(body: Result<Bytes, ApiError>, service: Service) -> Result<Response, ApiError> {
    let request: TransferLeaderRequest = parse_json(&body?)?;
    service.transfer_leadership(request.id).await.map_err(|e| {
        let code = match e {
            TransferError::NotLeader { .. } => ErrorCode::Conflict,
            TransferError::BadTransferee(_) => ErrorCode::InvalidMember,
            TransferError::TimedOut { .. } | TransferError::Raft(_) => ErrorCode::Unavailable,
        };
        ApiError::new(code, e.to_string())
    })?;
    Ok(warp::reply::json(&TransferLeaderResponse { leader_id: request.id }).into_response())
}

async fn change(change: MembershipChange, service: Service) -> Result<Response, ApiError> {
    let revision = service.change_membership(change).await?;
    Ok(membership_response(&service, revision).await)
}
