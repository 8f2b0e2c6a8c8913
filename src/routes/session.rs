//! The caller's sessions: "who am I" (from the token and the registry, no database), the
//! inventory, and revoking one of them.
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::resource;
use crate::{
    auth::AuthenticatedSession,
    error::ApiError,
    session::{ListSessions, Revoke},
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/session").route(web::get().to(current_session)))
        .service(resource("/sessions").route(web::get().to(list_sessions)))
        .service(resource("/sessions/{id}").route(web::delete().to(delete_session)));
}

fn timestamp(unix: i64) -> Result<DateTime<Utc>, ApiError> {
    DateTime::from_timestamp(unix, 0)
        .ok_or_else(|| ApiError::Internal("timestamp out of range".into()))
}

#[derive(Serialize)]
struct SessionInfo {
    user_id: Uuid,
    session_id: Uuid,
    roles: Vec<String>,
    expires_at: DateTime<Utc>,
}

async fn current_session(session: AuthenticatedSession) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SessionInfo {
        user_id: session.user_id,
        session_id: session.session_id,
        roles: session.roles,
        expires_at: timestamp(session.session_expires_at)?,
    }))
}

#[derive(Serialize)]
struct SessionItem {
    id: Uuid,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ip: Option<String>,
    user_agent: Option<String>,
    current: bool,
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

async fn list_sessions(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let records = state.sessions.send(ListSessions(session.user_id)).await??;
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
                current: r.session_id == session.session_id,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(HttpResponse::Ok().json(Items { items }))
}

/// Only the caller's own sessions can be named: anyone else's id is 404, like an unknown one.
async fn delete_session(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let revoked = state
        .sessions
        .send(Revoke {
            user_id: session.user_id,
            session_id: id.into_inner(),
        })
        .await??;
    if !revoked {
        return Err(ApiError::NotFound("session"));
    }
    Ok(HttpResponse::NoContent().finish())
}
