//! Login, refresh, logout and logout-everywhere.
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{admin::sync_session_access, client_group, limit_client, resource};
use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    auth::{Access, AuthenticatedSession},
    error::ApiError,
    session::{
        now_unix, CreateSession, Created, Refresh, RefreshToken, Revoke, RevokeAll, Rotation,
        SessionRecord,
    },
    state::AppState,
    throttle::{account_key, Bucket, Scope, Throttled},
    users::{self, password::Priority, FindAccess, FindByEmail, MAX_PASSWORD_CHARS},
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

/// A new session's (or a refresh's) tokens. Served with `Cache-Control: no-store`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// JWT (HS256) for `Authorization: Bearer`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// Opaque; present it to POST /token/refresh. Rotated on every use.
    refresh_token: String,
    /// Seconds until the session ends (refreshing never extends it).
    refresh_expires_in: i64,
    session_id: Uuid,
}

const MAX_USER_AGENT: usize = 256;

/// Signs the access token and answers with the pair; `iat` and `jti` are inputs so a replayed
/// refresh yields byte-identical tokens.
fn token_response(
    state: &AppState,
    refresh: &RefreshToken,
    access: &Access,
    expires_at: i64,
    iat: i64,
    jti: Uuid,
) -> Result<HttpResponse, ApiError> {
    let (uid, sid) = (refresh.user_id, refresh.session_id);
    let (access_token, expires_in) = state
        .jwt
        .issue(uid, sid, access, expires_at, iat, jti)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token: refresh.encode(),
            refresh_expires_in: expires_at - iat,
            session_id: sid,
        }))
}

/// Log in: creates a session.
#[utoipa::path(post, path = "/login", tag = "sessions", request_body = LoginBody,
    responses(
        (status = 200, description = "Session created", body = TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "Unknown email or wrong password, indistinguishable (`invalid_credentials`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account, or the account is locked after repeated failures (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "login", skip_all)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let result = attempt_login(&req, &state, body.into_inner()).await;
    if result.as_ref().is_err_and(|e| e.code().0.is_server_error()) {
        state.metrics.logins.with_label_values(&["error"]).inc();
    }
    result
}

/// Counts a wrong password (or a disabled account) toward the bucket's lockout. The failure that
/// starts a lock is audited once as `account_locked`, about the account when it exists (an
/// unknown email's locks are not recorded, so a spray of made-up addresses cannot flood the trail).
pub(crate) async fn count_failure(
    state: &AppState,
    bucket: &Bucket,
    now: i64,
    subject: Option<Uuid>,
    ip: Option<String>,
) -> Result<(), ApiError> {
    let started = state.throttle.record_failure(bucket.id(), now).await?;
    if let (Some(seconds), Some(subject)) = (started, subject) {
        let addresses = if bucket.known() { "known" } else { "unknown" };
        state.audit.record(
            AuditEvent::denied("account_locked")
                .subject(subject)
                .ip(ip)
                .detail(serde_json::json!({ "seconds": seconds, "addresses": addresses })),
        );
        tracing::info!(user_id = %subject, seconds, addresses, "account locked");
    }
    Ok(())
}

/// A throttled or locked login: audited about the account when the email names one (looked up
/// whether or not it exists, and never shown in the answer, which is the same for every email).
async fn refuse_throttled(
    state: &AppState,
    email: &Result<String, String>,
    ip: Option<String>,
    reason: &'static str,
    t: Throttled,
) -> ApiError {
    state.metrics.logins.with_label_values(&["throttled"]).inc();
    let subject = match email {
        Ok(email) => match state.users.ask(FindByEmail(email.clone())).await {
            Ok(account) => account.map(|a| a.id),
            _ => None,
        },
        Err(_) => None,
    };
    state.audit.record(
        AuditEvent::denied("login")
            .subject(subject)
            .ip(ip)
            .detail(serde_json::json!({ "reason": reason })),
    );
    ApiError::from(t)
}

async fn attempt_login(
    req: &HttpRequest,
    state: &AppState,
    body: LoginBody,
) -> Result<HttpResponse, ApiError> {
    let LoginBody { email, password } = body;
    let outcome = |o: &str| state.metrics.logins.with_label_values(&[o]).inc();
    let now = now_unix();
    let ip = state.client_ip(req);
    let client = client_group(ip.as_deref());
    let normalized = users::normalize_email(&email);
    if let Err(t) = state.throttle.hit(Scope::LoginIp, &client).await? {
        return Err(refuse_throttled(state, &normalized, ip, "rate_limited", t).await);
    }
    let refused = |subject: Option<Uuid>, reason: &str| {
        outcome("invalid_credentials");
        state.audit.record(
            AuditEvent::failure("login")
                .subject(subject)
                .ip(ip.clone())
                .detail(serde_json::json!({ "reason": reason })),
        );
        ApiError::InvalidCredentials
    };
    // The account key exists for any address, registered or not, so limits and lockouts say
    // nothing about which accounts exist. An address that logged in to the account recently is
    // judged by its own attempts only (ASVS 6.1.1); every other address shares one bucket.
    let account_key = account_key(normalized.as_deref().unwrap_or(email.trim()));
    let bucket = state.throttle.bucket(&account_key, &client).await?;
    if let Err(t) = state.throttle.hit(Scope::LoginAccount, bucket.id()).await? {
        return Err(refuse_throttled(state, &normalized, ip, "rate_limited", t).await);
    }
    // While locked, even the right password is refused, with the same answer as a wrong one.
    if let Err(t) = state.throttle.check_lock(bucket.id(), now).await? {
        return Err(refuse_throttled(state, &normalized, ip, "locked", t).await);
    }

    // A malformed email or an impossible password cannot match any account: same answer as a
    // wrong password, without spending a hash.
    let (Ok(email), true) = (
        normalized,
        (1..=MAX_PASSWORD_CHARS).contains(&password.chars().count()),
    ) else {
        count_failure(state, &bucket, now, None, ip.clone()).await?;
        return Err(refused(None, "invalid_credentials"));
    };
    let account = state.users.ask(FindByEmail(email)).await?;
    // Unknown accounts still pay one hash, so timing does not tell which emails exist.
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let verified = state
        .hasher
        .verify(password, stored, Priority::Login)
        .await?;
    let account = match account {
        Some(a) if verified => a,
        other => {
            let subject = other.map(|a| a.id);
            count_failure(state, &bucket, now, subject, ip.clone()).await?;
            return Err(refused(subject, "invalid_credentials"));
        }
    };
    // A disabled account gets the very answer a wrong password gets, and counts as a failure,
    // so neither the response nor the lockout tells that it exists.
    let access = match state.users.ask(FindAccess(account.id)).await? {
        Some(a) if !a.disabled => a.access,
        _ => {
            count_failure(state, &bucket, now, Some(account.id), ip.clone()).await?;
            return Err(refused(Some(account.id), "disabled"));
        }
    };
    state.throttle.record_success(bucket.id()).await?;
    // Without a peer address there is nothing to recognise the client by next time.
    if ip.is_some() {
        state.throttle.remember(&account_key, &client).await?;
    }

    let expires_at = now + state.config.session_lifetime.as_secs() as i64;
    // A v7 id sorts by creation time, which orders the sessions of one second when the oldest
    // must end (MAX_SESSIONS_PER_USER). The session id is no secret (GET /sessions lists it).
    let refresh = RefreshToken::generate(account.id, Uuid::now_v7());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| {
            ua.chars()
                .filter(|c| !c.is_control())
                .take(MAX_USER_AGENT)
                .collect()
        });
    let record = SessionRecord {
        session_id: refresh.session_id,
        user_id: account.id,
        created_at: now,
        last_seen_at: now,
        expires_at,
        ip: ip.clone(),
        user_agent,
        access: std::sync::Arc::new(access.clone()),
        refresh_hash: refresh.hash(),
    };
    let evicted = match state.sessions.ask(CreateSession(record)).await? {
        Created::Stored { evicted } => evicted,
        // Disabled or deleted while this login ran (the account was cut off first).
        Created::AccountCutOff => return Err(refused(Some(account.id), "disabled")),
    };
    for sid in evicted {
        state.audit.record(
            AuditEvent::success("session_revoke")
                .subject(account.id)
                .ip(ip.clone())
                .detail(serde_json::json!({ "session_id": sid, "reason": "max_sessions" })),
        );
        tracing::info!(user_id = %account.id, session_id = %sid, "oldest session ended: MAX_SESSIONS_PER_USER reached");
    }
    // An admin may have disabled the account or changed its roles while this login ran; their
    // session updates could not see the new session, so look again now that it exists.
    let access = match state.users.ask(FindAccess(account.id)).await? {
        Some(now_access) if !now_access.disabled && now_access.access == access => access,
        Some(a) if !a.disabled => match sync_session_access(state, account.id).await? {
            Some(synced) => synced,
            None => return Err(refused(Some(account.id), "disabled")),
        },
        _ => {
            state
                .sessions
                .ask(Revoke {
                    user_id: account.id,
                    session_id: refresh.session_id,
                })
                .await?;
            return Err(refused(Some(account.id), "disabled"));
        }
    };
    outcome("success");
    state.audit.record(
        AuditEvent::success("login")
            .by(account.id)
            .ip(ip.clone())
            .detail(serde_json::json!({ "session_id": refresh.session_id })),
    );
    tracing::info!(user_id = %account.id, session_id = %refresh.session_id, "logged in");
    token_response(state, &refresh, &access, expires_at, now, Uuid::new_v4())
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
    limit_client(&req, &state, Scope::RefreshIp).await?;
    let presented = RefreshToken::parse(&body.refresh_token).ok_or(ApiError::Unauthorized)?;
    let successor = RefreshToken::generate(presented.user_id, presented.session_id);
    let (jti, now) = (Uuid::new_v4(), now_unix());
    let outcome = state
        .sessions
        .ask(Refresh {
            presented: presented.clone(),
            successor: successor.clone(),
            jti,
            now,
        })
        .await?;
    match outcome {
        Rotation::Rotated { expires_at, access } => {
            token_response(&state, &successor, &access, expires_at, now, jti)
        }
        Rotation::Replayed {
            expires_at,
            access,
            rotated_at,
            sealed_successor,
            jti,
        } => {
            let successor = presented
                .unseal(&sealed_successor)
                .ok_or(ApiError::Unauthorized)?;
            token_response(&state, &successor, &access, expires_at, rotated_at, jti)
        }
        Rotation::Reused => {
            state.audit.record(
                AuditEvent::denied("refresh_reuse")
                    .subject(presented.user_id)
                    .ip(state.client_ip(&req))
                    .detail(serde_json::json!({ "session_id": presented.session_id })),
            );
            Err(ApiError::Unauthorized)
        }
        Rotation::Invalid | Rotation::Unsealed => Err(ApiError::Unauthorized),
    }
}

/// 204 once Redis has acknowledged the revocation; 503 (and the session not reported as ended)
/// if it could not be reached; 401 if a racing logout ended it first.
#[utoipa::path(post, path = "/logout", tag = "sessions", security(("bearer" = [])),
    responses((status = 204, description = "The session is revoked on every pod")))]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let revoked = state
        .sessions
        .ask(Revoke {
            user_id: session.user_id,
            session_id: session.session_id,
        })
        .await?;
    if !revoked {
        return Err(ApiError::Unauthorized);
    }
    state.audit.record(
        AuditEvent::success("logout")
            .by(session.user_id)
            .ip(state.client_ip(&req))
            .detail(serde_json::json!({ "session_id": session.session_id })),
    );
    tracing::info!(user_id = %session.user_id, session_id = %session.session_id, "logged out");
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
    let except = query.keep_current.then_some(session.session_id);
    let n = state
        .sessions
        .ask(RevokeAll {
            user_id: session.user_id,
            except,
        })
        .await?;
    state.audit.record(
        AuditEvent::success("logout_all")
            .by(session.user_id)
            .ip(state.client_ip(&req))
            .detail(serde_json::json!({ "revoked": n, "kept_current": query.keep_current })),
    );
    tracing::info!(user_id = %session.user_id, revoked = n, "logged out everywhere");
    Ok(HttpResponse::NoContent().finish())
}
