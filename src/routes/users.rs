//! Accounts: registration and the caller's profile.
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

use serde::Deserialize;

use super::{auth::count_failure, client_group, limit_client, resource};
use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    auth::{
        access::{ADMIN_ROLE, USER_ROLE},
        AuthenticatedSession,
    },
    error::ApiError,
    session::{now_unix, RevokeAll},
    state::AppState,
    throttle::{account_key, Scope, Throttled},
    users::{
        self, password::Priority, CreateUser, FindAccount, FindByEmail, FindById, SetPassword,
    },
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/register", "POST").route(web::post().to(register)))
        .service(resource("/profile", "GET").route(web::get().to(profile)))
        .service(resource("/profile/password", "PUT").route(web::put().to(change_password)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Trimmed, NFKC-normalized and lower-cased before use; one account per normalized address.
    #[schema(max_length = 254, format = Email, example = "ada@example.com")]
    email: String,
    /// 8 to 128 characters (Unicode scalar values); never trimmed or truncated.
    #[schema(min_length = 8, max_length = 128, example = "correct horse battery")]
    password: String,
    /// Optional display name, at most 100 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 100, pattern = r"^[^\x00-\x1f\x7f]*$", example = "Ada")]
    name: Option<String>,
}

/// Create an account.
#[utoipa::path(post, path = "/register", tag = "users", request_body = RegisterBody,
    responses(
        (status = 201, description = "Account created", body = users::User),
        (status = 409, description = "An account with this email exists (`email_taken`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many registrations from this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "register", skip_all)]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let ip = limit_client(&req, &state, Scope::RegisterIp).await?;
    let RegisterBody {
        email,
        password,
        name,
    } = body.into_inner();
    let email = users::normalize_email(&email).map_err(ApiError::InvalidRequest)?;
    users::validate_password(&password).map_err(ApiError::InvalidRequest)?;
    let name = users::validate_name(name).map_err(ApiError::InvalidRequest)?;
    // Spares an argon2 hash for the common duplicate; the unique index settles races.
    if state.users.ask(FindByEmail(email.clone())).await?.is_some() {
        return Err(ApiError::EmailTaken);
    }
    let password_hash = state
        .hasher
        .hash_new(password, users::password_context(&email, name.as_deref()))
        .await?;
    let mut roles = vec![USER_ROLE.to_string()];
    if state.config.admin_emails.contains(&email) {
        roles.push(ADMIN_ROLE.to_string());
    }
    let user = state
        .users
        .ask(CreateUser {
            email,
            name,
            password_hash,
            roles,
        })
        .await?;
    state.metrics.registrations.inc();
    state.audit.record(
        AuditEvent::success("register")
            .by(user.id)
            .ip(ip)
            .detail(serde_json::json!({ "roles": user.roles })),
    );
    tracing::info!(user_id = %user.id, "registered");
    Ok(HttpResponse::Created().json(user))
}

/// The caller's account.
#[utoipa::path(get, path = "/profile", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = users::User),
        (status = 404, description = "The account no longer exists (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn profile(
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    // Profiles change rarely; a copy at most SESSION_CACHE_TTL old spares a database round trip
    // per call, and concurrent misses for one user share one query.
    let users = state.users.clone();
    let user = state
        .profiles
        .try_get_with(session.user_id, async move {
            let found = users.ask(FindById(session.user_id)).await;
            found.map(Arc::new).map_err(ApiError::from)
        })
        .await
        .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|e| e.clone_public()))?;
    // Roles as the session knows them: current on every pod, while the cached profile may
    // predate a role change.
    let user = users::User {
        roles: session.access.roles.clone(),
        ..(*user).clone()
    };
    Ok(HttpResponse::Ok().json(user))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    current_password: String,
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

/// Changes the password and ends every other session of the user. Sessions are revoked before
/// the new hash is stored: if the second step fails, the old password still works and the call
/// can simply be retried.
#[utoipa::path(put, path = "/profile/password", tag = "users", security(("bearer" = [])), request_body = PasswordBody,
    responses(
        (status = 204, description = "Password changed; every other session of the user is revoked"),
        (status = 403, description = "The current password is wrong; nothing changed (`forbidden`)", body = crate::error::ErrorBody),
        (status = 400, description = "The new password does not meet the registration policy (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "The account no longer exists (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts for this session or account, or the account is locked after repeated wrong passwords (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "change_password", skip_all)]
pub async fn change_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    body: web::Json<PasswordBody>,
) -> Result<HttpResponse, ApiError> {
    let PasswordBody {
        current_password,
        new_password,
    } = body.into_inner();
    users::validate_password(&new_password).map_err(|m| ApiError::invalid(format!("new_{m}")))?;
    let account = state
        .users
        .ask(FindAccount(session.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let now = now_unix();
    let ip = state.client_ip(&req);
    let client = client_group(ip.as_deref());
    let event = |e: AuditEvent| e.by(session.user_id).ip(ip.clone());
    let throttled = |reason: &str, t: Throttled| {
        state.audit.record(
            event(AuditEvent::denied("password_change"))
                .detail(serde_json::json!({ "reason": reason })),
        );
        ApiError::from(t)
    };
    // A stolen access token must not guess the current password faster than a login could:
    // limited per session and per account, and wrong guesses count toward the same lockout as
    // logins (the stored email is normalized, so the key is the login's).
    let session_key = session.session_id.to_string();
    if let Err(t) = state
        .throttle
        .hit(Scope::PasswordChangeSession, &session_key)
        .await?
    {
        return Err(throttled("rate_limited", t));
    }
    let bucket = state
        .throttle
        .bucket(&account_key(&account.email), &client)
        .await?;
    if let Err(t) = state
        .throttle
        .hit(Scope::PasswordChangeAccount, bucket.id())
        .await?
    {
        return Err(throttled("rate_limited", t));
    }
    if let Err(t) = state.throttle.check_lock(bucket.id(), now).await? {
        return Err(throttled("locked", t));
    }
    if !state
        .hasher
        .verify(
            current_password,
            Some(account.password_hash),
            Priority::Other,
        )
        .await?
    {
        count_failure(&state, &bucket, now, Some(session.user_id), ip.clone()).await?;
        state
            .audit
            .record(event(AuditEvent::failure("password_change")));
        return Err(ApiError::Forbidden);
    }
    state.throttle.record_success(bucket.id()).await?;
    // Exactly the registration policy, with the same context words.
    let password_hash = state
        .hasher
        .hash_new(
            new_password,
            users::password_context(&account.email, account.name.as_deref()),
        )
        .await?;
    let revoked = state
        .sessions
        .ask(RevokeAll {
            user_id: session.user_id,
            except: Some(session.session_id),
        })
        .await?;
    state
        .users
        .ask(SetPassword {
            user_id: session.user_id,
            password_hash,
        })
        .await?;
    state.audit.record(
        event(AuditEvent::success("password_change"))
            .detail(serde_json::json!({ "other_sessions_revoked": revoked })),
    );
    tracing::info!(user_id = %session.user_id, other_sessions_revoked = revoked, "password changed");
    Ok(HttpResponse::NoContent().finish())
}
