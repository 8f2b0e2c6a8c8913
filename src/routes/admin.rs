//! The admin API: accounts, their roles and sessions, roles, and the audit trail. Every handler
//! takes an [`Authorized<P>`], so the permission check is part of its signature; path ids, query
//! strings and bodies are read only after it passed (actix polls extractors together), so a
//! caller without the permission learns nothing but 403.
//!
//! On top of the permission, every change obeys the escalation rule (in the spirit of Kubernetes
//! RBAC escalation prevention): a caller grants, removes or creates only roles whose every
//! permission it holds, never changes its own roles, and does not disable, enable, delete,
//! change the roles of or revoke the sessions of an account holding anything it does not hold
//! ([`Access::holds`]; the `admin` role is the root). Refusals are 403 `forbidden`, audited as
//! denied events of the operation's kind with `detail.reason` and what was missing.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

use super::resource;
use crate::actor::Ask;
use crate::{
    audit::{AuditEvent, AuditEventView},
    auth::{
        access::{
            validate_permission, validate_role_name, AuditRead, SessionsRevoke, Shortfall,
            UsersRead, UsersWrite,
        },
        Access, AuthenticatedSession, Authorized,
    },
    error::ApiError,
    routes::session::SessionList,
    session::{CutOff, IsCutOff, ListSessions, Restore, RevokeAll, SetAccess},
    state::AppState,
    users::{
        AdminUser, CheckRemovable, CreateRole, DeleteUser, FindAccess, GetUser, ListAudit,
        ListRoles, ListUsers, PageRequest, RoleChange, RoleView, SetDisabled, SetRoles,
        UserStoreError,
    },
};

/// One scope, so that requests outside /admin skip these patterns after a single prefix check
/// (most of them are dynamic, and the hot path should not try them one by one).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .service(resource("/users", "GET").route(web::get().to(list_users)))
            .service(
                resource("/users/{id}", "GET, DELETE")
                    .route(web::get().to(get_user))
                    .route(web::delete().to(delete_user)),
            )
            .service(resource("/users/{id}/roles", "PUT").route(web::put().to(set_roles)))
            .service(resource("/users/{id}/disable", "POST").route(web::post().to(disable_user)))
            .service(resource("/users/{id}/enable", "POST").route(web::post().to(enable_user)))
            .service(
                resource("/users/{id}/sessions", "GET, DELETE")
                    .route(web::get().to(list_user_sessions))
                    .route(web::delete().to(revoke_user_sessions)),
            )
            .service(
                resource("/roles", "GET, POST")
                    .route(web::get().to(list_roles))
                    .route(web::post().to(create_role)),
            )
            .service(resource("/audit", "GET").route(web::get().to(list_audit))),
    );
}

pub const DEFAULT_PER_PAGE: u64 = 50;
pub const MAX_PER_PAGE: u64 = 200;

fn page_request(page: Option<u64>, per_page: Option<u64>) -> Result<PageRequest, ApiError> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=1_000_000).contains(&page) {
        return Err(ApiError::invalid("page must be between 1 and 1000000"));
    }
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::invalid(format!(
            "per_page must be between 1 and {MAX_PER_PAGE}"
        )));
    }
    Ok(PageRequest { page, per_page })
}

fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("id must be a UUID"))
}

/// The audit records of one admin call: the admin is the actor, the account acted on the subject.
struct AdminAudit<'a> {
    state: &'a AppState,
    actor: Uuid,
    subject: Option<Uuid>,
    ip: Option<String>,
}

impl<'a> AdminAudit<'a> {
    fn new(state: &'a AppState, req: &HttpRequest, admin: Uuid, subject: Option<Uuid>) -> Self {
        Self {
            state,
            actor: admin,
            subject,
            ip: state.client_ip(req),
        }
    }

    fn record(&self, event: AuditEvent) {
        self.state.audit.record(
            event
                .actor(self.actor)
                .subject(self.subject)
                .ip(self.ip.clone()),
        );
    }

    /// A change refused by the escalation rule: recorded as a denied `kind` (aggregated, since a
    /// caller can repeat it in a loop) and answered 403.
    fn escalation(
        &self,
        kind: &'static str,
        reason: &'static str,
        shortfall: &Shortfall,
        extra: serde_json::Value,
    ) -> ApiError {
        let mut detail = serde_json::json!({
            "reason": reason,
            "missing_permissions": shortfall.permissions,
            "admin_role_required": shortfall.admin_role,
        });
        if let (Some(d), serde_json::Value::Object(extra)) = (detail.as_object_mut(), extra) {
            d.extend(extra);
        }
        let subject = self.subject.map(|s| s.to_string()).unwrap_or_default();
        self.state.audit.record_denial(
            format!("{reason} {subject}"),
            AuditEvent::denied(kind)
                .actor(self.actor)
                .subject(self.subject)
                .ip(self.ip.clone())
                .detail(detail),
        );
        ApiError::Forbidden
    }

    /// The escalation rule for acting on the account: the caller must hold everything it holds.
    /// An account that no longer exists holds nothing; what the operation does then is its own
    /// business (e.g. 404).
    async fn ensure_outranks(
        &self,
        caller: &AuthenticatedSession,
        kind: &'static str,
        target: Uuid,
    ) -> Result<(), ApiError> {
        let Some(account) = self.state.users.ask(FindAccess(target)).await? else {
            return Ok(());
        };
        let shortfall = caller.access.shortfall_to(&account.access);
        if shortfall.is_empty() {
            return Ok(());
        }
        Err(self.escalation(kind, "escalation", &shortfall, serde_json::json!({})))
    }

    /// A change refused by the last-admin rule is recorded as denied (with `detail`) and
    /// answered 409; other results pass through.
    fn refused<T>(
        &self,
        kind: &'static str,
        detail: impl FnOnce() -> serde_json::Value,
        result: Result<T, UserStoreError>,
    ) -> Result<T, ApiError> {
        if let Err(UserStoreError::Conflict(_)) = &result {
            self.record(AuditEvent::denied(kind).detail(detail()));
        }
        result.map_err(ApiError::from)
    }
}

/// Reads the query string after authorization, with the app's QueryConfig (error shape).
async fn query<T: DeserializeOwned + 'static>(req: &HttpRequest) -> Result<T, actix_web::Error> {
    use actix_web::FromRequest;
    Ok(web::Query::<T>::extract(req).await?.into_inner())
}

/// Reads a JSON body after authorization, with the app's JsonConfig (limits, 415, error shape).
async fn json_body<T: DeserializeOwned + 'static>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, actix_web::Error> {
    use actix_web::FromRequest;
    let mut payload = payload.into_inner();
    Ok(web::Json::<T>::from_request(req, &mut payload)
        .await?
        .into_inner())
}

/// Brings every live session of the user in line with the roles in the database, on every pod.
/// Re-reads after writing so that concurrent role changes converge on the last one committed.
/// Returns the account's access, or `None` if it no longer exists.
pub(crate) async fn sync_session_access(
    state: &AppState,
    user_id: Uuid,
) -> Result<Option<Access>, ApiError> {
    let mut current = state.users.ask(FindAccess(user_id)).await?;
    for _ in 0..3 {
        let Some(account) = current else {
            return Ok(None);
        };
        state
            .sessions
            .ask(SetAccess {
                user_id,
                access: Arc::new(account.access.clone()),
            })
            .await?;
        current = state.users.ask(FindAccess(user_id)).await?;
        if current.as_ref().map(|c| &c.access) == Some(&account.access) {
            return Ok(Some(account.access));
        }
    }
    Ok(current.map(|c| c.access))
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
    let (items, total) = state
        .users
        .ask(ListUsers { email_prefix, page })
        .await
        .map_err(ApiError::from)?;
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
    let user = state.users.ask(GetUser(path_id(&id)?)).await?;
    Ok(HttpResponse::Ok().json(user))
}

// Schema-only types: what `validate_role_name` and `validate_permission` accept, for clients.
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
    if body.roles.len() > crate::users::MAX_ACCOUNT_ROLES {
        return Err(ApiError::invalid(format!(
            "an account holds at most {} roles",
            crate::users::MAX_ACCOUNT_ROLES
        ))
        .into());
    }
    for r in &body.roles {
        validate_role_name(r).map_err(ApiError::InvalidRequest)?;
    }
    let audit = AdminAudit::new(&state, &req, admin.user_id, Some(user_id));
    let requested = crate::users::normalize_roles(body.roles);
    if user_id == admin.user_id {
        // Even an admin: a role change is always someone else's decision, and the last-admin
        // rule then needs no special case for stepping down.
        return Err(audit
            .escalation(
                "role_change",
                "own_roles",
                &Shortfall::default(),
                serde_json::json!({"roles": requested, "previous": admin.access.roles}),
            )
            .into());
    }
    // Nothing changes when the change is refused, so the roles now are the ones it would replace.
    let current = state
        .users
        .ask(GetUser(user_id))
        .await
        .map_err(ApiError::from)?;
    let result = state
        .users
        .ask(SetRoles {
            user_id,
            roles: requested.clone(),
            by: Some(Access::clone(&admin.access)),
        })
        .await;
    let change = audit.refused(
        "role_change",
        || serde_json::json!({"roles": requested, "previous": current.roles}),
        result,
    )?;
    let (user, previous) = match change {
        RoleChange::Done { user, previous } => (user, previous),
        RoleChange::Refused {
            shortfall,
            previous,
        } => {
            return Err(audit
                .escalation(
                    "role_change",
                    "escalation",
                    &shortfall,
                    serde_json::json!({"roles": requested, "previous": previous}),
                )
                .into())
        }
    };
    if user.roles != previous {
        audit.record(
            AuditEvent::success("role_change")
                .detail(serde_json::json!({"roles": user.roles, "previous": previous})),
        );
    }
    // Also when nothing changed: a retry after a failed session update completes it.
    sync_session_access(&state, user_id).await?;
    Ok(HttpResponse::Ok().json(user))
}

async fn set_disabled(
    admin: &Authorized<UsersWrite>,
    req: &HttpRequest,
    state: &AppState,
    raw_id: &str,
    disabled: bool,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_id(raw_id)?;
    let kind = if disabled {
        "user_disable"
    } else {
        "user_enable"
    };
    let audit = AdminAudit::new(state, req, admin.user_id, Some(user_id));
    audit.ensure_outranks(admin, kind, user_id).await?;
    if !disabled {
        // Database first, then the marker: if the second step fails the account stays cut off
        // (fail closed) and a retry completes it.
        let result = state.users.ask(SetDisabled { user_id, disabled }).await;
        if audit.refused(kind, || serde_json::json!({}), result)? {
            audit.record(AuditEvent::success(kind));
        }
        state.sessions.ask(Restore(user_id)).await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    let what = "disabling this account";
    let change = || state.users.ask(SetDisabled { user_id, disabled });
    let changed = cut_off_then(state, &audit, kind, user_id, what, change).await?;
    if changed {
        audit.record(AuditEvent::success(kind));
        // An enable racing with this disable may have lifted the marker between the two steps
        // (and a login slipped in): now that the database says disabled, cut off once more.
        state.sessions.ask(CutOff(user_id)).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Disabling and deleting: the account's sessions are revoked and it is marked cut off (no
/// session is created or refreshed) in one atomic step BEFORE the database changes, so whatever
/// the answer (a 503 included), a disabled or deleted account has no usable session. If the
/// database step fails, the account stays cut off (fail closed) and a retry completes it; if it
/// is refused by the last-admin rule (a race the read-only check before missed), the mark is
/// lifted again. Also when the account was disabled already, so a retry completes everything.
/// `change` is a closure because actix enqueues a message when `ask` is called, not when the
/// returned future is first polled.
async fn cut_off_then<T, F>(
    state: &AppState,
    audit: &AdminAudit<'_>,
    kind: &'static str,
    user_id: Uuid,
    what: &'static str,
    change: impl FnOnce() -> F,
) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, UserStoreError>>,
{
    let check = state.users.ask(CheckRemovable { user_id, what }).await;
    audit.refused(kind, || serde_json::json!({}), check)?;
    state.sessions.ask(CutOff(user_id)).await?;
    let result = change().await;
    if let Err(UserStoreError::Conflict(_)) = &result {
        state.sessions.ask(Restore(user_id)).await?;
    }
    audit.refused(kind, || serde_json::json!({}), result)
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
    set_disabled(&admin, &req, &state, &id, true).await
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
    set_disabled(&admin, &req, &state, &id, false).await
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
    let audit = AdminAudit::new(&state, &req, admin.user_id, Some(user_id));
    audit
        .ensure_outranks(&admin, "user_delete", user_id)
        .await?;
    let change = || state.users.ask(DeleteUser(user_id));
    let deleted = cut_off_then(
        &state,
        &audit,
        "user_delete",
        user_id,
        "deleting this account",
        change,
    )
    .await;
    if let Err(ApiError::NotFound(_)) = &deleted {
        // Gone already, perhaps by an earlier attempt whose answer was lost, or by a version
        // that deleted before revoking: end whatever sessions are left before saying 404.
        state
            .sessions
            .ask(RevokeAll {
                user_id,
                except: None,
            })
            .await?;
    }
    deleted?;
    audit.record(AuditEvent::success("user_delete"));
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
    let user_id = path_id(&id)?;
    state.users.ask(GetUser(user_id)).await?;
    let records = state.sessions.ask(ListSessions(user_id)).await?;
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
    AdminAudit::new(&state, &req, admin.user_id, Some(user_id))
        .ensure_outranks(&admin, "sessions_revoke", user_id)
        .await?;
    let exists = match state.users.ask(GetUser(user_id)).await {
        Ok(_) => true,
        Err(UserStoreError::NotFound) => false,
        Err(e) => return Err(e.into()),
    };
    let revoked = state
        .sessions
        .ask(RevokeAll {
            user_id,
            except: None,
        })
        .await?;
    // A deleted account's id (still marked cut off, or with sessions left) is not unknown:
    // revoking what is left of it succeeds. An id that never had anything stays 404.
    if !exists && revoked == 0 && !state.sessions.ask(IsCutOff(user_id)).await? {
        return Err(ApiError::NotFound("user"));
    }
    AdminAudit::new(&state, &req, admin.user_id, Some(user_id)).record(
        AuditEvent::success("sessions_revoke").detail(serde_json::json!({ "revoked": revoked })),
    );
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
    let items = state.users.ask(ListRoles).await?;
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
    validate_role_name(&body.name).map_err(ApiError::InvalidRequest)?;
    if body.permissions.len() > 64 {
        return Err(ApiError::invalid("at most 64 permissions per role").into());
    }
    for p in &body.permissions {
        validate_permission(p).map_err(ApiError::InvalidRequest)?;
    }
    let audit = AdminAudit::new(&state, &req, admin.user_id, None);
    let shortfall = admin
        .access
        .shortfall(body.permissions.iter().map(String::as_str), false);
    if !shortfall.is_empty() {
        return Err(audit
            .escalation(
                "role_create",
                "escalation",
                &shortfall,
                serde_json::json!({"name": body.name, "permissions": body.permissions}),
            )
            .into());
    }
    let role = state
        .users
        .ask(CreateRole {
            name: body.name,
            permissions: body.permissions,
        })
        .await
        .map_err(ApiError::from)?;
    audit.record(
        AuditEvent::success("role_create")
            .detail(serde_json::json!({"name": role.name, "permissions": role.permissions})),
    );
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
    let (items, total) = state
        .users
        .ask(ListAudit {
            user_id: q.user_id,
            event_type: q.event_type,
            page,
        })
        .await
        .map_err(ApiError::from)?;
    Ok(HttpResponse::Ok().json(AuditPage {
        items,
        page: page.page,
        per_page: page.per_page,
        total,
    }))
}
