//! Login, refresh, logout and logout-everywhere.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{
    caller, client, resource,
    respond::{token_response, TokenPair},
};
use crate::{
    app::{
        accounts::{self, Credentials},
        sessions,
    },
    auth::AuthenticatedSession,
    error::ApiError,
    session::RefreshToken,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/login", "POST").route(web::post().to(login)))
        .service(resource("/token/refresh", "POST").route(web::post().to(refresh)))
        .service(resource("/logout", "POST").route(web::post().to(logout)))
        .service(resource("/logout/all", "POST").route(web::post().to(logout_all)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "correct horse battery")]
    password: String,
}

/// Log in: creates a session.
#[utoipa::path(post, path = "/login", tag = "sessions", request_body = LoginBody,
    responses(
        (status = 200, description = "Session created", body = TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "Unknown email or wrong password, indistinguishable (`invalid_credentials`)", body = crate::error::ErrorBody),
        (status = 403, description = "Right password, and either the account has a second factor (`mfa_required`: the body also carries `mfa_token` and `methods` (`totp`, `recovery_code`, `webauthn`), and with `webauthn` the request options for `navigator.credentials.get` in `webauthn`; finish at POST /login/mfa), or REQUIRE_EMAIL_VERIFICATION is on and the account's address is not verified (`email_not_verified`; a new link is mailed to it)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account, or the account is locked after repeated failures (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "login", skip_all)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { email, password } = body.into_inner();
    let credentials = Credentials { email, password };
    let grant = accounts::login(&state.app, &client(&req, &state), credentials).await?;
    // Counted like any failure of the login itself.
    token_response(&state.jwt, grant).await.inspect_err(|_| {
        accounts::Way::Password.count(&state.app, "error");
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// Rotates the refresh token. Within the grace window the just-rotated token gets the same
/// successor pair (parallel tabs); after it, presenting it again revokes the whole session.
#[utoipa::path(post, path = "/token/refresh", tag = "sessions", request_body = RefreshBody,
    responses(
        (status = 200, description = "New token pair", body = TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token (`unauthorized`); reuse revokes the session", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 429, description = "Too many refreshes from this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "refresh", skip_all)]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let presented = RefreshToken::parse(&body.refresh_token);
    let grant = sessions::refresh(&state.app, &client(&req, &state), presented).await?;
    token_response(&state.jwt, grant).await
}

/// 204 once Redis has acknowledged the revocation; 503 (and the session not reported as ended)
/// if it could not be reached, or if its webhook event (with WEBHOOK_URLS) could not be stored
/// first; 401 if a racing logout ended it first.
#[utoipa::path(post, path = "/logout", tag = "sessions", security(("bearer" = [])),
    responses((status = 204, description = "The session is revoked on every pod")))]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    sessions::logout(&state.app, &caller(&req, &state, &session)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogoutAllQuery {
    /// Keep the calling session.
    #[serde(default)]
    keep_current: bool,
}

/// Ends every session of the caller on every pod (`?keep_current=true`: all but this one).
#[utoipa::path(post, path = "/logout/all", tag = "sessions", security(("bearer" = [])), params(LogoutAllQuery),
    responses(
        (status = 204, description = "Every session of the caller is revoked on every pod"),
        (status = 400, description = "Invalid query parameter (`invalid_request`)", body = crate::error::ErrorBody),
    ))]
pub async fn logout_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    query: web::Query<LogoutAllQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    sessions::logout_all(&state.app, &caller, query.keep_current).await?;
    Ok(HttpResponse::NoContent().finish())
}
