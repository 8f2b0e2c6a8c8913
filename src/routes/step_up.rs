//! POST /reauthenticate: renews the session's authentication for the changes that need a recent
//! one (step-up, see [`crate::app::step_up`]).
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use webauthn_rs::prelude::PublicKeyCredential;

use super::{caller, passkey_json::RequestOptions, resource};
use crate::{
    app::{
        mfa::SecondFactor,
        step_up::{self, Proof},
        webauthn,
    },
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/reauthenticate", "POST").route(web::post().to(reauthenticate)))
        .service(
            resource("/reauthenticate/passkey/start", "POST").route(web::post().to(start_passkey)),
        );
}

/// The password again, and, for an account with a second factor, one of `totp`,
/// `recovery_code` or `webauthn`; or `webauthn` alone (a passkey verifies its user, so it is
/// two factors by itself).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReauthenticateBody {
    /// Required unless `webauthn` is sent.
    #[serde(default)]
    #[schema(example = "correct horse battery")]
    password: Option<String>,
    /// The authenticator's current 6-digit code (each time step is accepted once).
    #[serde(default)]
    #[schema(example = "123456")]
    totp: Option<String>,
    /// One of the recovery codes (each works once).
    #[serde(default)]
    recovery_code: Option<String>,
    /// The `PublicKeyCredential` `navigator.credentials.get` returned for the options of POST
    /// /reauthenticate/passkey/start (this session's challenge), as JSON (its `toJSON()`).
    #[serde(default)]
    #[schema(value_type = Option<super::passkey_json::PasskeyAssertion>)]
    webauthn: Option<Box<PublicKeyCredential>>,
}

/// Renews the calling session's `auth_time` (and `amr`) on every pod, without a new session:
/// the same access token may then make the changes that need a recent authentication
/// (STEP_UP_MAX_AGE). Failures count toward the account's lockout like failed logins.
#[utoipa::path(post, path = "/reauthenticate", tag = "sessions", security(("bearer" = [])), request_body = ReauthenticateBody,
    responses(
        (status = 204, description = "The session's authentication is renewed; tokens refreshed from now on carry the new `auth_time` and `amr`"),
        (status = 400, description = "No `password` and no `webauthn`; the account has a second factor and none of `totp`, `recovery_code` or `webauthn` was sent, or more than one was (`invalid_request`); a wrong or used code, or a passkey answer not accepted: no challenge started by this session, used already, another origin, a bad signature, another account's passkey (`invalid_grant`)", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong password (`invalid_credentials`), or no valid access token (`unauthorized`)", body = crate::error::ErrorBody),
        (status = 403, description = "A `password` was sent and the account has none (made by a provider sign-in): reauthenticate with a passkey alone, or sign in again through its provider (`reauthentication_required`)", body = crate::error::ErrorBody),
        (status = 404, description = "`webauthn` was sent and WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts for this session or account, or the account is locked after repeated failures (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "reauthenticate", skip_all)]
pub async fn reauthenticate(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    body: web::Json<ReauthenticateBody>,
) -> Result<HttpResponse, ApiError> {
    let ReauthenticateBody {
        password,
        totp,
        recovery_code,
        webauthn,
    } = body.into_inner();
    let sent = [totp.is_some(), recovery_code.is_some(), webauthn.is_some()];
    if sent.iter().filter(|s| **s).count() > 1 {
        return Err(ApiError::invalid(
            "send at most one of totp, recovery_code and webauthn",
        ));
    }
    let proof = match (password, webauthn) {
        (password, Some(assertion)) => Proof::Passkey {
            password,
            assertion,
        },
        (Some(password), None) => Proof::Password {
            password,
            factor: totp
                .map(SecondFactor::Totp)
                .or(recovery_code.map(SecondFactor::RecoveryCode)),
        },
        (None, None) => {
            return Err(ApiError::invalid(
                "send the password (with the second factor, when one is enrolled), or a passkey's answer in webauthn",
            ))
        }
    };
    let caller = caller(&req, &state, &session);
    step_up::reauthenticate(&state.app, &caller, proof).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts a step-up with a passkey: the request options for `navigator.credentials.get` over the
/// caller's own passkeys. Its challenge is kept on the server for 5 minutes, for this session
/// only, single-use (a new start replaces it): answer with POST /reauthenticate `{"webauthn"}`
/// (with or without `password`).
#[utoipa::path(post, path = "/reauthenticate/passkey/start", tag = "sessions", security(("bearer" = [])),
    responses(
        (status = 200, description = "The request options", body = RequestOptions,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "No valid access token (`unauthorized`)", body = crate::error::ErrorBody),
        (status = 404, description = "WebAuthn is not configured (WEBAUTHN_RP_ID) (`not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "The account has no passkey: reauthenticate with the password (`conflict`)", body = crate::error::ErrorBody),
    ))]
pub async fn start_passkey(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    let options = webauthn::start_reauthentication(&state.app, &caller).await?;
    let options = webauthn::options_json(&options)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(options))
}
