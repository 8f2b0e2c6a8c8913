//! POST /reauthenticate: renews the session's authentication for the changes that need a recent
//! one (step-up, see [`crate::app::step_up`]).
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{caller, resource};
use crate::{
    app::{
        mfa::SecondFactor,
        step_up::{self, Proof},
    },
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/reauthenticate", "POST").route(web::post().to(reauthenticate)));
}

/// The password again, and, for an account with a second factor, one of `totp` or
/// `recovery_code`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReauthenticateBody {
    #[schema(example = "correct horse battery")]
    password: String,
    /// The authenticator's current 6-digit code (each time step is accepted once).
    #[serde(default)]
    #[schema(example = "123456")]
    totp: Option<String>,
    /// One of the recovery codes (each works once).
    #[serde(default)]
    recovery_code: Option<String>,
}

/// Renews the calling session's `auth_time` (and `amr`) on every pod, without a new session:
/// the same access token may then make the changes that need a recent authentication
/// (STEP_UP_MAX_AGE). Failures count toward the account's lockout like failed logins.
#[utoipa::path(post, path = "/reauthenticate", tag = "sessions", security(("bearer" = [])), request_body = ReauthenticateBody,
    responses(
        (status = 204, description = "The session's authentication is renewed; tokens refreshed from now on carry the new `auth_time` and `amr`"),
        (status = 400, description = "The account has a second factor and neither `totp` nor `recovery_code` was sent, or both were (`invalid_request`); a wrong or used code (`invalid_grant`)", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong password (`invalid_credentials`), or no valid access token (`unauthorized`)", body = crate::error::ErrorBody),
        (status = 403, description = "The account has no password (made by a provider sign-in): only a new sign-in through its provider is a fresh authentication (`reauthentication_required`)", body = crate::error::ErrorBody),
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
    } = body.into_inner();
    let factor = match (totp, recovery_code) {
        (Some(code), None) => Some(SecondFactor::Totp(code)),
        (None, Some(code)) => Some(SecondFactor::RecoveryCode(code)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "send at most one of totp and recovery_code",
            ))
        }
    };
    let caller = caller(&req, &state, &session);
    step_up::reauthenticate(&state.app, &caller, Proof { password, factor }).await?;
    Ok(HttpResponse::NoContent().finish())
}
