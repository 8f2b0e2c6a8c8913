//! Recovery and verification by email: forgotten password, reset, address verification, email
//! change.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{
    caller, client, resource,
    respond::{accepted, Accepted},
};
use crate::{
    app::{email, step_up},
    auth::AuthenticatedSession,
    domain::{Email, Password},
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/password/forgot", "POST").route(web::post().to(forgot_password)))
        .service(resource("/password/reset", "POST").route(web::post().to(reset_password)))
        .service(resource("/email/verify", "POST").route(web::post().to(verify_email)))
        .service(
            resource("/email/verify/resend", "POST").route(web::post().to(resend_verification)),
        )
        .service(resource("/profile/email", "PUT").route(web::put().to(change_email)));
}

fn parse_email(field: &str, raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw).map_err(|m| ApiError::invalid(format!("{field}: {m}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    #[schema(max_length = 254, format = Email, example = "ada@example.com")]
    email: String,
}

/// Mails a password-reset link (valid 30 minutes, single use; a newer one or any password
/// change voids it) if the address has an account. The answer, its body and its headers are the
/// same whether or not it does.
#[utoipa::path(post, path = "/password/forgot", tag = "users", request_body = ForgotBody,
    responses(
        (status = 202, description = "Accepted: if the address has an account, a link was mailed to it", body = Accepted),
        (status = 400, description = "Not an email address, or one with control characters (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many requests from this client or for this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "forgot_password", skip_all)]
pub async fn forgot_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ForgotBody>,
) -> Result<HttpResponse, ApiError> {
    let email = parse_email("email", &body.email)?;
    email::forgot_password(&state.app, &client(&req, &state), email).await?;
    Ok(accepted(
        "if an account has this address, a link to reset its password has been mailed to it",
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// From the mailed link (`APP_URL/reset-password#token=...`).
    token: String,
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

/// Sets a new password through a mailed link, and ends every session of the account on every
/// pod; the owner is mailed a notice.
#[utoipa::path(post, path = "/password/reset", tag = "users", request_body = ResetBody,
    responses(
        (status = 204, description = "Password set; every session of the account is revoked"),
        (status = 400, description = "The token is bad, used, expired or superseded (`invalid_token`), or the new password does not meet the registration policy (`invalid_request`)", body = crate::error::ErrorBody),
    ))]
#[tracing::instrument(name = "reset_password", skip_all)]
pub async fn reset_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResetBody>,
) -> Result<HttpResponse, ApiError> {
    let ResetBody {
        token,
        new_password,
    } = body.into_inner();
    let new_password =
        Password::parse(new_password).map_err(|m| ApiError::invalid(format!("new_{m}")))?;
    email::reset_password(&state.app, &client(&req, &state), &token, new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// From the mailed link (`APP_URL/verify-email#token=...`).
    token: String,
}

/// Verifies the account's address, or, with the link mailed by an email change, makes the new
/// address the account's (the old one is told).
#[utoipa::path(post, path = "/email/verify", tag = "users", request_body = VerifyBody,
    responses(
        (status = 204, description = "Verified, or the email change done"),
        (status = 400, description = "The token is bad, used, expired or superseded (`invalid_token`)", body = crate::error::ErrorBody),
        (status = 409, description = "The new address got an account meanwhile (`email_taken`)", body = crate::error::ErrorBody),
    ))]
#[tracing::instrument(name = "verify_email", skip_all)]
pub async fn verify_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    email::verify_email(&state.app, &client(&req, &state), &body.token).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mails a new verification link to the caller's address (unless it is verified already); it
/// voids the older links.
#[utoipa::path(post, path = "/email/verify/resend", tag = "users", security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 429, description = "Too many requests from this client or for this account (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn resend_verification(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    email::resend_verification(&state.app, &caller(&req, &state, &session)).await?;
    Ok(accepted(
        "unless the address is verified already, a new link has been mailed to it",
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeBody {
    #[schema(max_length = 254, format = Email, example = "ada@example.org")]
    new_email: String,
    current_password: String,
}

/// Asks to change the caller's address: a link is mailed to the new address, and the change
/// takes effect when it is used (POST /email/verify); the old address is told then. The answer
/// is the same whether or not the new address has an account.
#[utoipa::path(put, path = "/profile/email", tag = "users", security(("bearer" = [])), request_body = EmailChangeBody,
    responses(
        (status = 202, description = "Accepted: a link was mailed to the new address", body = Accepted),
        (status = 400, description = "`new_email` is not an address, has control characters, or is the current one (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`: POST /reauthenticate, then try again), or the current password is wrong (`forbidden`); nothing changed", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts for this session or account, or the account is locked (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "change_email", skip_all)]
pub async fn change_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    body: web::Json<EmailChangeBody>,
) -> Result<HttpResponse, ApiError> {
    let EmailChangeBody {
        new_email,
        current_password,
    } = body.into_inner();
    let new_email = parse_email("new_email", &new_email)?;
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    email::change_email(&state.app, &caller, new_email, current_password).await?;
    Ok(accepted(
        "a link has been mailed to the new address; the change takes effect when it is used",
    ))
}
