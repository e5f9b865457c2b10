//! The Auth service: users, roles and permissions, and the tokens requests carry (see
//! [`crate::auth`]). Every call but `Authenticate` needs the root role once auth is on; a user
//! may read its own record and the roles it holds, as in etcd.

use metastore_etcd_proto::authpb::{permission, Permission as WirePermission};
use metastore_etcd_proto::etcdserverpb::auth_server::Auth;
use metastore_etcd_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::errors::{auth as auth_status, invalid, status};
use super::Etcd;
use crate::auth::{AuthChange, AuthError, Caller, Permission, PermissionKind, ROOT};
use crate::service::{hash_password, token_key, Need};

fn kind(wire: i32) -> Result<PermissionKind, Status> {
    match permission::Type::try_from(wire) {
        Ok(permission::Type::Read) => Ok(PermissionKind::Read),
        Ok(permission::Type::Write) => Ok(PermissionKind::Write),
        Ok(permission::Type::Readwrite) => Ok(PermissionKind::ReadWrite),
        Err(_) => Err(invalid("etcdserver: invalid permission type")),
    }
}

fn wire(permission: &Permission) -> WirePermission {
    let kind = match permission.kind {
        PermissionKind::Read => permission::Type::Read,
        PermissionKind::Write => permission::Type::Write,
        PermissionKind::ReadWrite => permission::Type::Readwrite,
    };
    WirePermission {
        perm_type: kind.into(),
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

/// The password to store: hashed here, or none for a user who may not have one.
async fn password(plain: String, hashed: &str, no_password: bool) -> Result<Option<String>, Status> {
    if !hashed.is_empty() {
        // A bcrypt hash made by the client: metaStore keeps Argon2 hashes it made itself.
        return Err(invalid("etcdserver: metaStore hashes passwords itself; send the password, not a hash"));
    }
    if no_password {
        return Ok(None);
    }
    hash_password(plain).await.map(Some).map_err(status)
}

impl Etcd {
    /// Proposes `change` for the request's caller and answers etcd's empty response.
    async fn change_auth<T, R>(
        &self,
        request: &Request<T>,
        change: AuthChange,
        respond: impl FnOnce(ResponseHeader) -> R,
    ) -> Result<Response<R>, Status> {
        let caller = self.caller(request)?;
        self.service.change_auth(caller.as_ref(), change).await.map_err(status)?;
        Ok(Response::new(respond(self.header(self.current_revision()))))
    }

    async fn read_auth<T>(
        &self,
        request: &Request<T>,
        need: Need<'_>,
    ) -> Result<(Option<Caller>, std::sync::Arc<crate::auth::AuthState>), Status> {
        let caller = self.caller(request)?;
        let state = self.service.auth_state(caller.as_ref(), need).await.map_err(status)?;
        Ok((caller, state))
    }
}

#[tonic::async_trait]
impl Auth for Etcd {
    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let change = AuthChange::Enable { token_key: token_key() };
        self.change_auth(&request, change, |header| AuthEnableResponse { header: Some(header) }).await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change_auth(&request, AuthChange::Disable, |header| AuthDisableResponse { header: Some(header) })
            .await
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let (_, state) = self.read_auth(&request, Need::Admin).await?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.header(self.current_revision())),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let token = self.service.authenticate(&r.name, &r.password).await.map_err(status)?;
        Ok(Response::new(AuthenticateResponse { header: Some(self.header(self.current_revision())), token }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let r = request.get_ref().clone();
        let no_password = r.options.is_some_and(|o| o.no_password);
        // Checked before the slow hash; the entry checks again as it applies.
        self.authorize(&request, Need::Admin).await?;
        let password = password(r.password, &r.hashed_password, no_password).await?;
        let change = AuthChange::UserAdd { name: r.name, password };
        self.change_auth(&request, change, |header| AuthUserAddResponse { header: Some(header) }).await
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        let (_, state) = self.read_auth(&request, Need::SelfOrAdmin(&name)).await?;
        let user = state.users.get(&name).ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.header(self.current_revision())),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let (_, state) = self.read_auth(&request, Need::Admin).await?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.header(self.current_revision())),
            users: state.users.keys().cloned().collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let change = AuthChange::UserDelete { name: request.get_ref().name.clone() };
        self.change_auth(&request, change, |header| AuthUserDeleteResponse { header: Some(header) }).await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let r = request.get_ref().clone();
        self.authorize(&request, Need::Admin).await?;
        let password = password(r.password, &r.hashed_password, false).await?;
        let change = AuthChange::UserChangePassword { name: r.name, password };
        self.change_auth(&request, change, |header| AuthUserChangePasswordResponse { header: Some(header) })
            .await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref().clone();
        let change = AuthChange::UserGrantRole { user: r.user, role: r.role };
        self.change_auth(&request, change, |header| AuthUserGrantRoleResponse { header: Some(header) }).await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref().clone();
        let change = AuthChange::UserRevokeRole { user: r.name, role: r.role };
        self.change_auth(&request, change, |header| AuthUserRevokeRoleResponse { header: Some(header) }).await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let change = AuthChange::RoleAdd { name: request.get_ref().name.clone() };
        self.change_auth(&request, change, |header| AuthRoleAddResponse { header: Some(header) }).await
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone();
        let (_, state) = self.read_auth(&request, Need::RoleOrAdmin(&name)).await?;
        let role = state.roles.get(&name).ok_or_else(|| auth_status(AuthError::RoleNotFound))?;
        let perm = if name == ROOT {
            // The root role may do anything, whatever it was granted: etcd lists it so.
            let everything =
                Permission { kind: PermissionKind::ReadWrite, key: Vec::new(), range_end: vec![0] };
            vec![wire(&everything)]
        } else {
            role.permissions.iter().map(wire).collect()
        };
        Ok(Response::new(AuthRoleGetResponse { header: Some(self.header(self.current_revision())), perm }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let (_, state) = self.read_auth(&request, Need::Admin).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.header(self.current_revision())),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let change = AuthChange::RoleDelete { name: request.get_ref().role.clone() };
        self.change_auth(&request, change, |header| AuthRoleDeleteResponse { header: Some(header) }).await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref().clone();
        let given = r.perm.ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
        let permission =
            Permission { kind: kind(given.perm_type)?, key: given.key, range_end: given.range_end };
        let change = AuthChange::RoleGrantPermission { role: r.name, permission };
        self.change_auth(&request, change, |header| AuthRoleGrantPermissionResponse { header: Some(header) })
            .await
    }

    #[tracing::instrument(skip_all, fields(member = self.service.id()))]
    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref().clone();
        let change = AuthChange::RoleRevokePermission { role: r.role, key: r.key, range_end: r.range_end };
        self.change_auth(&request, change, |header| AuthRoleRevokePermissionResponse { header: Some(header) })
            .await
    }
}
