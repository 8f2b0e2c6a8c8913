//! "Who am I": answered from the token and the session registry, without the database.
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::resource;
use crate::{auth::AuthenticatedSession, error::ApiError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/session").route(web::get().to(current_session)));
}

#[derive(Serialize)]
struct SessionInfo {
    user_id: Uuid,
    session_id: Uuid,
    roles: Vec<String>,
    expires_at: DateTime<Utc>,
}

async fn current_session(session: AuthenticatedSession) -> Result<HttpResponse, ApiError> {
    let expires_at = DateTime::from_timestamp(session.session_expires_at, 0)
        .ok_or_else(|| ApiError::Internal("session expiry out of range".into()))?;
    Ok(HttpResponse::Ok().json(SessionInfo {
        user_id: session.user_id,
        session_id: session.session_id,
        roles: session.roles,
        expires_at,
    }))
}
