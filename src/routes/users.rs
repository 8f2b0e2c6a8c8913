//! Accounts: registration and the caller's profile.
use actix_web::{web, HttpRequest, HttpResponse};

use serde::Deserialize;

use super::{caller, client, resource};
use crate::{
    app::{
        accounts::{self, NewAccount},
        step_up,
    },
    auth::AuthenticatedSession,
    domain::{DisplayName, Email, Password},
    error::ApiError,
    state::AppState,
    throttle::Scope,
    users,
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
        (status = 201, description = "Account created; a verification link is mailed to its address", body = users::User),
        (status = 202, description = "REQUIRE_EMAIL_VERIFICATION: one answer whether the account was created or the address is taken (its owner is mailed a notice then)", body = super::respond::Accepted),
        (status = 409, description = "An account with this email exists (`email_taken`; not with REQUIRE_EMAIL_VERIFICATION)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many registrations from this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "register", skip_all)]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let client = client(&req, &state);
    // Counted before the body is judged: malformed attempts spend the limit too.
    state.app.limit_client(Scope::RegisterIp, &client).await?;
    let RegisterBody {
        email,
        password,
        name,
    } = body.into_inner();
    let account = NewAccount {
        email: Email::parse(&email).map_err(ApiError::InvalidRequest)?,
        password: Password::parse(password).map_err(ApiError::InvalidRequest)?,
        name: DisplayName::parse(name).map_err(ApiError::InvalidRequest)?,
        roles: Vec::new(),
    };
    match accounts::register(&state.app, &client, account).await? {
        accounts::Registered::Created(user) => Ok(HttpResponse::Created().json(user)),
        accounts::Registered::Pending => Ok(super::respond::accepted(
            "check the mailbox of this address to finish registering",
        )),
    }
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
    let user = accounts::profile(&state.app, session.user_id, &session.access).await?;
    Ok(HttpResponse::Ok().json(user))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// Required, except for an account without a password within five minutes of a sign-in
    /// through an identity provider (from the session it opened).
    #[serde(default)]
    current_password: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

/// Changes the password and ends every other session of the user. Sessions are revoked before
/// the new hash is stored: if the second step fails, the old password still works and the call
/// can simply be retried.
#[utoipa::path(put, path = "/profile/password", tag = "users", security(("bearer" = [])), request_body = PasswordBody,
    responses(
        (status = 204, description = "Password changed; every other session of the user is revoked"),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`: POST /reauthenticate, then try again; an account without a password may set one without `current_password` while its provider sign-in is that recent), or the current password is wrong (`forbidden`); nothing changed", body = crate::error::ErrorBody),
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
    let new_password =
        Password::parse(new_password).map_err(|m| ApiError::invalid(format!("new_{m}")))?;
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    accounts::change_password(&state.app, &caller, current_password, new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}
