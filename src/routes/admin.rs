//! The admin API: accounts, their roles and sessions, roles, and the audit trail. Every handler
//! takes an [`Authorized<P>`], so the permission check is part of its signature; path ids, query
//! strings and bodies are read only after it passed (actix polls extractors together), so a
//! caller without the permission learns nothing but 403. The operations themselves, and the
//! escalation rule on top of the permission, are in [`crate::app::admin`].
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use super::{caller, respond::json_body, scoped_resource};
use crate::{
    app::admin as ops,
    audit::AuditEventView,
    auth::{
        access::{AuditRead, SessionsRevoke, UsersRead, UsersWrite},
        Authorized,
    },
    domain::{self, PageRequest},
    error::ApiError,
    routes::session::SessionList,
    state::AppState,
    users::{AdminUser, RoleView, MAX_ACCOUNT_ROLES},
};

/// One scope, so that requests outside /admin skip these patterns after a single prefix check
/// (most of them are dynamic, and the hot path should not try them one by one).
pub const SCOPE: &str = "/admin";

/// The admin scope; `more` adds the routes other files keep under it (the clients').
pub fn configure(cfg: &mut web::ServiceConfig, more: impl FnOnce(&mut web::ServiceConfig)) {
    cfg.service(
        web::scope(SCOPE)
            .service(scoped_resource(SCOPE, "/users", "GET").route(web::get().to(list_users)))
            .service(
                scoped_resource(SCOPE, "/users/{id}", "GET, DELETE")
                    .route(web::get().to(get_user))
                    .route(web::delete().to(delete_user)),
            )
            .service(
                scoped_resource(SCOPE, "/users/{id}/roles", "PUT").route(web::put().to(set_roles)),
            )
            .service(
                scoped_resource(SCOPE, "/users/{id}/disable", "POST")
                    .route(web::post().to(disable_user)),
            )
            .service(
                scoped_resource(SCOPE, "/users/{id}/enable", "POST")
                    .route(web::post().to(enable_user)),
            )
            .service(
                scoped_resource(SCOPE, "/users/{id}/mfa", "DELETE")
                    .route(web::delete().to(reset_mfa)),
            )
            .service(
                scoped_resource(SCOPE, "/users/{id}/sessions", "GET, DELETE")
                    .route(web::get().to(list_user_sessions))
                    .route(web::delete().to(revoke_user_sessions)),
            )
            .service(
                scoped_resource(SCOPE, "/roles", "GET, POST")
                    .route(web::get().to(list_roles))
                    .route(web::post().to(create_role)),
            )
            .service(scoped_resource(SCOPE, "/audit", "GET").route(web::get().to(list_audit)))
            .configure(more),
    );
}

fn page_request(page: Option<u64>, per_page: Option<u64>) -> Result<PageRequest, ApiError> {
    PageRequest::parse(page, per_page).map_err(ApiError::InvalidRequest)
}

fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("id must be a UUID"))
}

/// Reads the query string after authorization, with the app's QueryConfig (error shape).
/// Values with control characters are refused: no filter needs them, and PostgreSQL text
/// cannot hold a NUL (it would be a database error, not the client's 400).
async fn query<T: DeserializeOwned + 'static>(req: &HttpRequest) -> Result<T, actix_web::Error> {
    use actix_web::FromRequest;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    if pairs
        .iter()
        .any(|(k, v)| k.chars().chain(v.chars()).any(char::is_control))
    {
        return Err(
            ApiError::invalid("query parameters must not contain control characters").into(),
        );
    }
    Ok(web::Query::<T>::extract(req).await?.into_inner())
}

/// One page of accounts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserPage {
    items: Vec<AdminUser>,
    page: u64,
    per_page: u64,
    total: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// Accounts whose (normalized) email starts with this; `%` and `_` are literal.
    #[param(max_length = 254)]
    email_prefix: Option<String>,
    /// From 1.
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<u64>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    per_page: Option<u64>,
}

/// List accounts, ordered by email.
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = [])), params(UserListQuery),
    responses(
        (status = 200, description = "One page of accounts (permission `users:read`)", body = UserPage),
        (status = 400, description = "Invalid query parameter (`invalid_request`)", body = crate::error::ErrorBody),
    ))]
pub async fn list_users(
    _: Authorized<UsersRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let q: UserListQuery = query(&req).await?;
    let page = page_request(q.page, q.per_page)?;
    let email_prefix = q.email_prefix.map(|p| p.trim().to_lowercase());
    if email_prefix.as_ref().is_some_and(|p| p.len() > 254) {
        return Err(ApiError::invalid("email_prefix must be at most 254 bytes").into());
    }
    let (items, total) = ops::list_users(&state.app, email_prefix, page).await?;
    Ok(HttpResponse::Ok().json(UserPage {
        items,
        page: page.page,
        per_page: page.per_page,
        total,
    }))
}

/// One account, with `disabled`.
#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account (permission `users:read`)", body = AdminUser),
    ))]
pub async fn get_user(
    _: Authorized<UsersRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = ops::get_user(&state.app, path_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(user))
}

// Schema-only types: what `domain::RoleName` and `domain::Permission` accept, for clients.
/// A role name: a lower-case letter, then lower-case letters, digits, `_` or `-`; at most 64.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[a-z][a-z0-9_-]{0,63}$", example = "support")]
pub struct RoleName(pub String);

/// A permission: `resource:action`, e.g. `users:read` or `billing:*`; at most 64 characters.
#[derive(utoipa::ToSchema)]
#[schema(
    pattern = "^[a-z][a-z0-9_-]*:[a-z*][a-z0-9_*-]*$",
    max_length = 64,
    example = "users:read"
)]
pub struct PermissionName(pub String);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesBody {
    /// The account's roles from now on; `user` is always kept.
    #[schema(value_type = Vec<RoleName>, example = json!(["admin"]), max_items = 16)]
    roles: Vec<String>,
}

/// Replace an account's roles. Every live session of the account carries the new roles and
/// permissions from its next request on, on every pod. Refused (403) for the caller's own
/// account, for an account holding a permission the caller lacks, and for granting or removing
/// a role with such a permission.
#[utoipa::path(put, path = "/admin/users/{id}/roles", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")), request_body = RolesBody,
    responses(
        (status = 200, description = "The account after the change (permission `users:write`)", body = AdminUser),
        (status = 409, description = "The change would leave no enabled admin (`conflict`); nothing changed", body = crate::error::ErrorBody),
    ))]
pub async fn set_roles(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let user_id = path_id(&id)?;
    let body: RolesBody = json_body(&req, payload).await?;
    if body.roles.len() > MAX_ACCOUNT_ROLES {
        return Err(ApiError::invalid(format!(
            "an account holds at most {MAX_ACCOUNT_ROLES} roles"
        ))
        .into());
    }
    let roles = body
        .roles
        .into_iter()
        .map(domain::RoleName::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::InvalidRequest)?;
    let caller = caller(&req, &state, &admin);
    let user = ops::set_roles(&state.app, &caller, user_id, roles).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Disable an account: no logins, and every session ends on every pod. The sessions end first:
/// after any answer, a 503 included, the account has no session that works or refreshes; a 503
/// may leave it cut off without being marked disabled, until a retry completes it.
#[utoipa::path(post, path = "/admin/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 204, description = "Disabled (permission `users:write`); every session of the account is revoked"),
        (status = 409, description = "It is the last enabled admin (`conflict`); nothing changed", body = crate::error::ErrorBody),
    ))]
pub async fn disable_user(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(&id)?;
    ops::disable_user(&state.app, &caller(&req, &state, &admin), user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Enable a disabled account: it can log in again (after a 503, only once a retry succeeded).
#[utoipa::path(post, path = "/admin/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 204, description = "Enabled (permission `users:write`)"),
    ))]
pub async fn enable_user(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(&id)?;
    ops::enable_user(&state.app, &caller(&req, &state, &admin), user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Reset an account's second factors, for a user who lost them: its TOTP authenticator,
/// recovery codes and passkeys are removed in one transaction, so the password alone logs in
/// until it enrols again (a passkey-only account signs in through password reset or a linked
/// provider). Its sessions live on. The owner is mailed a notice and `user.mfa_reset` is sent
/// to the webhooks, both stored in the removal's transaction. An account without a factor also
/// answers 204 (nothing is removed, audited or mailed). Refused (403) for the caller's own
/// account (`DELETE /mfa/totp` and `DELETE /mfa/webauthn/credentials/{id}` are the owner's
/// way) and for an account holding a permission the caller lacks.
#[utoipa::path(delete, path = "/admin/users/{id}/mfa", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 204, description = "The account has no second factor now (permission `users:write`)"),
    ))]
pub async fn reset_mfa(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(&id)?;
    ops::reset_factors(&state.app, &caller(&req, &state, &admin), user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Delete an account: its sessions end on every pod (first, as when disabling); its audit
/// events stay.
#[utoipa::path(delete, path = "/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 204, description = "Deleted (permission `users:write`)"),
        (status = 409, description = "It is the last enabled admin (`conflict`); nothing changed", body = crate::error::ErrorBody),
    ))]
pub async fn delete_user(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(&id)?;
    ops::delete_user(&state.app, &caller(&req, &state, &admin), user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// An account's live sessions.
#[utoipa::path(get, path = "/admin/users/{id}/sessions", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account's live sessions, oldest first (permission `sessions:revoke`)", body = SessionList),
    ))]
pub async fn list_user_sessions(
    _: Authorized<SessionsRevoke>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let records = ops::list_user_sessions(&state.app, path_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(SessionList::new(records, None)?))
}

/// End every session of an account, on every pod; also of a deleted account (whatever may be
/// left of it). 404 only for an id that never had an account or a session.
#[utoipa::path(delete, path = "/admin/users/{id}/sessions", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Account id")),
    responses(
        (status = 204, description = "Every session of the account is revoked (permission `sessions:revoke`)"),
    ))]
pub async fn revoke_user_sessions(
    admin: Authorized<SessionsRevoke>,
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(&id)?;
    ops::revoke_user_sessions(&state.app, &caller(&req, &state, &admin), user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleList {
    items: Vec<RoleView>,
}

/// Roles and their permissions, ordered by name.
#[utoipa::path(get, path = "/admin/roles", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Every role (permission `users:write`)", body = RoleList)))]
pub async fn list_roles(
    _: Authorized<UsersWrite>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let items = ops::list_roles(&state.app).await?;
    Ok(HttpResponse::Ok().json(RoleList { items }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    #[schema(example = "support", pattern = "^[a-z][a-z0-9_-]{0,63}$")]
    name: String,
    /// `resource:action` strings; sessiond's own are users:read, users:write, sessions:revoke
    /// and audit:read, others are for the services behind it.
    #[schema(value_type = Vec<PermissionName>, example = json!(["users:read", "sessions:revoke"]), max_items = 64)]
    permissions: Vec<String>,
}

/// Create a role. Roles cannot be changed afterwards (create a new one and reassign), so the
/// permissions a session carries always match its roles. Refused (403) with a permission the
/// caller does not hold (holders of `admin` hold every permission).
#[utoipa::path(post, path = "/admin/roles", tag = "admin", security(("bearer" = [])), request_body = RoleBody,
    responses(
        (status = 201, description = "Role created (permission `users:write`)", body = RoleView),
        (status = 409, description = "A role with this name exists (`conflict`)", body = crate::error::ErrorBody),
    ))]
pub async fn create_role(
    admin: Authorized<UsersWrite>,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let body: RoleBody = json_body(&req, payload).await?;
    let name = domain::RoleName::parse(body.name).map_err(ApiError::InvalidRequest)?;
    if body.permissions.len() > 64 {
        return Err(ApiError::invalid("at most 64 permissions per role").into());
    }
    let permissions = body
        .permissions
        .into_iter()
        .map(domain::Permission::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::InvalidRequest)?;
    let caller = caller(&req, &state, &admin);
    let role = ops::create_role(&state.app, &caller, name, permissions).await?;
    Ok(HttpResponse::Created().json(role))
}

/// One page of audit events.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    items: Vec<AuditEventView>,
    page: u64,
    per_page: u64,
    total: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Events where this account is the actor or the subject.
    user_id: Option<Uuid>,
    /// One event type, e.g. `login`, `role_change`.
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 32)]
    event_type: Option<String>,
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<u64>,
    #[param(minimum = 1, maximum = 200)]
    per_page: Option<u64>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses(
        (status = 200, description = "One page of events (permission `audit:read`)", body = AuditPage),
        (status = 400, description = "Invalid query parameter (`invalid_request`)", body = crate::error::ErrorBody),
    ))]
pub async fn list_audit(
    _: Authorized<AuditRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let q: AuditQuery = query(&req).await?;
    let page = page_request(q.page, q.per_page)?;
    if q.event_type.as_ref().is_some_and(|t| t.len() > 32) {
        return Err(ApiError::invalid("type must be at most 32 characters").into());
    }
    let (items, total) = ops::list_audit(&state.app, q.user_id, q.event_type, page).await?;
    Ok(HttpResponse::Ok().json(AuditPage {
        items,
        page: page.page,
        per_page: page.per_page,
        total,
    }))
}
