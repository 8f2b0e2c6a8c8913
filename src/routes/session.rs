//! The caller's sessions: "who am I" (from the token and the registry, no database), the
//! inventory, and revoking one of them.
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{caller, resource};
use crate::{
    app::sessions,
    auth::AuthenticatedSession,
    error::ApiError,
    session::{AuthContext, SessionRecord},
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/session", "GET").route(web::get().to(current_session)))
        .service(resource("/sessions", "GET").route(web::get().to(list_sessions)))
        .service(resource("/sessions/{id}", "DELETE").route(web::delete().to(delete_session)));
}

fn timestamp(unix: i64) -> Result<DateTime<Utc>, ApiError> {
    DateTime::from_timestamp(unix, 0)
        .ok_or_else(|| ApiError::Internal("timestamp out of range".into()))
}

/// Who the caller is, from the token and the session registry.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionInfo<'a> {
    user_id: Uuid,
    session_id: Uuid,
    /// The session's current roles (a role change shows here on the next request).
    #[schema(example = json!(["admin", "user"]))]
    roles: &'a [String],
    /// Union of the roles' permissions.
    #[schema(example = json!(["audit:read", "sessions:revoke", "users:read", "users:write"]))]
    permissions: &'a [String],
    expires_at: DateTime<Utc>,
    /// How the user last authenticated in this session (RFC 8176: `pwd`, `otp`, `fed`, `hwk`,
    /// `swk`, `mfa`); absent for sessions older than this field.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    #[schema(example = json!(["pwd", "otp", "mfa"]))]
    amr: &'a [String],
    /// When: the login, or the last POST /reauthenticate.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<DateTime<Utc>>,
    /// The identity provider of a provider sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
}

fn auth_time(auth: &AuthContext) -> Result<Option<DateTime<Utc>>, ApiError> {
    (auth.auth_time > 0)
        .then(|| timestamp(auth.auth_time))
        .transpose()
}

#[utoipa::path(get, path = "/session", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "The caller's session", body = SessionInfo)))]
pub async fn current_session(session: AuthenticatedSession) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SessionInfo {
        user_id: session.user_id,
        session_id: session.session_id,
        roles: &session.access.roles,
        permissions: &session.access.permissions,
        expires_at: timestamp(session.session_expires_at)?,
        amr: &session.auth.amr,
        auth_time: auth_time(&session.auth)?,
        idp: session.auth.idp.as_deref(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionItem {
    id: Uuid,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ip: Option<String>,
    user_agent: Option<String>,
    /// How the user last authenticated in this session, when (login or POST /reauthenticate),
    /// and through which identity provider (see GET /session).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    amr: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<String>,
    /// Whether this is the session making the call (only in the caller's own list).
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    items: Vec<SessionItem>,
}

impl SessionList {
    /// `caller`: the calling session, when these are the caller's own sessions.
    pub(crate) fn new(records: Vec<SessionRecord>, caller: Option<Uuid>) -> Result<Self, ApiError> {
        let items = records
            .into_iter()
            .map(|r| {
                Ok(SessionItem {
                    id: r.session_id,
                    created_at: timestamp(r.created_at)?,
                    last_seen_at: timestamp(r.last_seen_at)?,
                    expires_at: timestamp(r.expires_at)?,
                    ip: r.ip,
                    user_agent: r.user_agent,
                    amr: r.auth.amr.clone(),
                    auth_time: auth_time(&r.auth)?,
                    idp: r.auth.idp.clone(),
                    current: caller.map(|c| c == r.session_id),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Self { items })
    }
}

#[utoipa::path(get, path = "/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "The caller's live sessions", body = SessionList)))]
pub async fn list_sessions(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let records = sessions::list_own(&state.app, session.user_id).await?;
    Ok(HttpResponse::Ok().json(SessionList::new(records, Some(session.session_id))?))
}

/// Only the caller's own sessions can be named: anyone else's id is 404, like an unknown one.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A session id from GET /sessions")),
    responses(
        (status = 204, description = "The session is revoked on every pod"),
        (status = 400, description = "`id` is not a UUID (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such session of the caller (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn delete_session(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    sessions::revoke_own(&state.app, &caller, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
