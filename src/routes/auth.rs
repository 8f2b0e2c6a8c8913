//! Login and logout.
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::resource;
use crate::{
    auth::AuthenticatedSession,
    error::ApiError,
    session::{now_unix, CreateSession, Revoke, SessionRecord},
    state::AppState,
    users::{self, FindByEmail, MAX_PASSWORD_CHARS},
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/login").route(web::post().to(login)))
        .service(resource("/logout").route(web::post().to(logout)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct TokenPair {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    refresh_token: String,
    refresh_expires_in: i64,
    session_id: Uuid,
}

const MAX_USER_AGENT: usize = 256;

/// 256 random bits, base64url; only its SHA-256 is stored.
fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}

#[tracing::instrument(name = "login", skip_all)]
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { email, password } = body.into_inner();
    let outcome = |o: &str| state.metrics.logins.with_label_values(&[o]).inc();
    // A malformed email or an impossible password cannot match any account: same answer as a
    // wrong password, without spending a hash.
    let (Ok(email), true) = (
        users::normalize_email(&email),
        (1..=MAX_PASSWORD_CHARS).contains(&password.chars().count()),
    ) else {
        outcome("invalid_credentials");
        return Err(ApiError::InvalidCredentials);
    };
    let account = state.users.send(FindByEmail(email)).await??;
    // Unknown accounts still pay one hash, so timing does not tell which emails exist.
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let verified = state.hasher.verify(password, stored).await?;
    let Some(account) = account.filter(|_| verified) else {
        outcome("invalid_credentials");
        return Err(ApiError::InvalidCredentials);
    };

    let now = now_unix();
    let expires_at = now + state.config.session_lifetime.as_secs() as i64;
    let (refresh_token, refresh_hash) = new_refresh_token();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
    let record = SessionRecord {
        session_id: Uuid::new_v4(),
        user_id: account.id,
        created_at: now,
        last_seen_at: now,
        expires_at,
        ip: req.peer_addr().map(|a| a.ip().to_string()),
        user_agent,
        refresh_hash,
    };
    let session_id = record.session_id;
    state.sessions.send(CreateSession(record)).await??;
    let (access_token, expires_in) = state
        .jwt
        .issue(
            account.id,
            session_id,
            users::default_roles(),
            expires_at,
            now,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    outcome("success");
    tracing::info!(user_id = %account.id, %session_id, "logged in");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token,
            refresh_expires_in: expires_at - now,
            session_id,
        }))
}

/// 204 once Redis has acknowledged the revocation; 503 (and the session not reported as ended)
/// if it could not be reached; 401 if a racing logout ended it first.
async fn logout(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let revoked = state
        .sessions
        .send(Revoke {
            user_id: session.user_id,
            session_id: session.session_id,
        })
        .await??;
    if !revoked {
        return Err(ApiError::Unauthorized);
    }
    tracing::info!(user_id = %session.user_id, session_id = %session.session_id, "logged out");
    Ok(HttpResponse::NoContent().finish())
}
