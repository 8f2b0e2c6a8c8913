//! Second factors: TOTP enrolment and removal, and finishing a login with a factor.
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{caller, client, resource, respond::token_response};
use crate::{
    app::{
        accounts,
        mfa::{self, SecondFactor},
        step_up,
    },
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/mfa/totp", "POST, DELETE")
            .route(web::post().to(start_totp))
            .route(web::delete().to(remove_totp)),
    )
    .service(resource("/mfa/totp/confirm", "POST").route(web::post().to(confirm_totp)))
    .service(resource("/login/mfa", "POST").route(web::post().to(login_mfa)));
}

/// A pending TOTP enrolment: what the authenticator app needs. Shown once; served with
/// `Cache-Control: no-store`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// The shared secret, base32 (to type it in).
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    secret: String,
    /// `otpauth://totp/...` (SHA1, 6 digits, 30 s).
    otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    qr_svg: String,
}

/// Starts a TOTP enrolment: a new secret, pending until POST /mfa/totp/confirm (a pending one
/// is replaced).
#[utoipa::path(post, path = "/mfa/totp", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, description = "The new secret, pending until confirmed", body = TotpEnrolment,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 409, description = "A confirmed authenticator exists: remove it first (`conflict`)", body = crate::error::ErrorBody),
    ))]
pub async fn start_totp(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    let enrolment = mfa::start_totp(&state.app, &caller).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TotpEnrolment {
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
            qr_svg: enrolment.qr_svg,
        }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotpBody {
    /// The authenticator's current 6-digit code.
    #[schema(example = "123456")]
    code: String,
}

/// The recovery codes, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes, each accepted once instead of a TOTP code.
    recovery_codes: Vec<String>,
}

/// Confirms the pending enrolment with a current code: from now on logins need a second factor.
/// The enrolment stays pending 10 minutes; wrong codes count toward the account's lockout.
#[utoipa::path(post, path = "/mfa/totp/confirm", tag = "mfa", security(("bearer" = [])), request_body = ConfirmTotpBody,
    responses(
        (status = 200, description = "Enrolled; the recovery codes, shown once", body = RecoveryCodes,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Wrong or used code (`invalid_grant`); each counts toward the account's lockout", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 409, description = "No pending enrolment, or it was started more than 10 minutes ago (`conflict`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts, or the account is locked after repeated failures (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn confirm_totp(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    body: web::Json<ConfirmTotpBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    let recovery_codes = mfa::confirm_totp(&state.app, &caller, &body.code).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(RecoveryCodes { recovery_codes }))
}

/// Removes the TOTP authenticator and the recovery codes.
#[utoipa::path(delete, path = "/mfa/totp", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed; logins need the password only"),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 404, description = "No authenticator (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn remove_totp(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    mfa::remove_totp(&state.app, &caller).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The `mfa_token` of a `403 mfa_required` answer, and one factor.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginMfaBody {
    mfa_token: String,
    /// The authenticator's current 6-digit code.
    #[serde(default)]
    #[schema(example = "123456")]
    totp: Option<String>,
    /// One of the recovery codes (each works once).
    #[serde(default)]
    recovery_code: Option<String>,
    /// A passkey's answer to the `webauthn` options of the `403 mfa_required` body: the
    /// `PublicKeyCredential` `navigator.credentials.get` returned, as JSON (binary values
    /// base64url).
    #[serde(default)]
    #[schema(value_type = Option<super::passkey_json::PasskeyAssertion>)]
    webauthn: Option<Box<webauthn_rs::prelude::PublicKeyCredential>>,
}

/// Finishes a login with its second factor. The `mfa_token` lives 5 minutes, allows 5 attempts
/// and ends with the first success.
#[utoipa::path(post, path = "/login/mfa", tag = "sessions", request_body = LoginMfaBody,
    responses(
        (status = 200, description = "Session created", body = super::respond::TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Unknown, expired or used-up `mfa_token`, a wrong or used code, or a passkey answer not accepted (another account's or unknown credential, another origin or challenge) (`invalid_grant`); not exactly one of `totp`, `recovery_code` and `webauthn` (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts, or the account is locked after repeated failures (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "login_mfa", skip_all)]
pub async fn login_mfa(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginMfaBody>,
) -> Result<HttpResponse, ApiError> {
    let LoginMfaBody {
        mfa_token,
        totp,
        recovery_code,
        webauthn,
    } = body.into_inner();
    let factor = match (totp, recovery_code, webauthn) {
        (Some(code), None, None) => SecondFactor::Totp(code),
        (None, Some(code), None) => SecondFactor::RecoveryCode(code),
        (None, None, Some(assertion)) => SecondFactor::Webauthn {
            mfa_token: mfa_token.clone(),
            assertion,
        },
        _ => {
            return Err(ApiError::invalid(
                "exactly one of totp, recovery_code and webauthn is required",
            ))
        }
    };
    let client = client(&req, &state);
    let grant = accounts::login_second_factor(&state.app, &client, &mfa_token, factor).await?;
    token_response(&state.jwt, grant).await.inspect_err(|_| {
        accounts::Way::SecondFactor.count(&state.app, "error");
    })
}
