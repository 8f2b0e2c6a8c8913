//! Accounts: registration and the caller's profile.
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::resource;
use crate::{
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
    users::{self, CreateUser, FindByEmail, FindById},
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/register").route(web::post().to(register)))
        .service(resource("/profile").route(web::get().to(profile)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
}

#[tracing::instrument(name = "register", skip_all)]
async fn register(
    state: web::Data<AppState>,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let RegisterBody {
        email,
        password,
        name,
    } = body.into_inner();
    let email = users::normalize_email(&email).map_err(ApiError::InvalidRequest)?;
    users::validate_password(&password).map_err(ApiError::InvalidRequest)?;
    let name = users::validate_name(name).map_err(ApiError::InvalidRequest)?;
    // Spares an argon2 hash for the common duplicate; the unique index settles races.
    if state
        .users
        .send(FindByEmail(email.clone()))
        .await??
        .is_some()
    {
        return Err(ApiError::EmailTaken);
    }
    let password_hash = state.hasher.hash(password).await?;
    let user = state
        .users
        .send(CreateUser {
            email,
            name,
            password_hash,
        })
        .await??;
    state.metrics.registrations.inc();
    tracing::info!(user_id = %user.id, "registered");
    Ok(HttpResponse::Created().json(user))
}

async fn profile(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let user = state.users.send(FindById(session.user_id)).await??;
    Ok(HttpResponse::Ok().json(user))
}
