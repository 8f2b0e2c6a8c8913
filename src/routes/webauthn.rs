//! Passkeys (WebAuthn): registering and managing the caller's credentials, and the
//! passwordless sign-in. The second-factor use is POST /login/mfa (`routes::mfa`).
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{
    caller, client,
    passkey_json::{CreationOptions, PasskeyAssertion, PasskeyAttestation, RequestOptions},
    resource,
    respond::{json_body, token_response},
};
use crate::{
    app::{passkey_sign_in, step_up, webauthn},
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/mfa/webauthn/register/start", "POST").route(web::post().to(start_registration)),
    )
    .service(
        resource("/mfa/webauthn/register/finish", "POST")
            .route(web::post().to(finish_registration)),
    )
    .service(resource("/mfa/webauthn/credentials", "GET").route(web::get().to(list_credentials)))
    .service(
        resource("/mfa/webauthn/credentials/{id}", "DELETE")
            .route(web::delete().to(delete_credential)),
    )
    .service(resource("/login/passkey/start", "POST").route(web::post().to(start_sign_in)))
    .service(resource("/login/passkey/finish", "POST").route(web::post().to(finish_sign_in)));
}

/// A passkey of the caller's account.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Credential {
    id: Uuid,
    /// Chosen at registration.
    #[schema(example = "Laptop")]
    name: String,
    created_at: DateTime<Utc>,
    /// The last sign-in or second factor it answered; `null` if never used.
    last_used_at: Option<DateTime<Utc>>,
}

impl From<entities::webauthn_credential::Model> for Credential {
    fn from(c: entities::webauthn_credential::Model) -> Self {
        Credential {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
            last_used_at: c.last_used_at,
        }
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationStartBody {
    /// A name to tell the passkey apart (1 to 64 characters, no control characters, trimmed:
    /// white space alone is refused); `Passkey` when absent.
    #[schema(
        example = "Laptop",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: Option<String>,
}

/// The `PublicKeyCredential` `navigator.credentials.create` returned, as JSON (its `toJSON()`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = PasskeyAttestation)]
pub struct RegistrationAnswer(RegisterPublicKeyCredential);

/// Starts registering a passkey for the caller: the options for `navigator.credentials.create`,
/// asking for a discoverable credential with user verification. The challenge is kept on the
/// server for 5 minutes, for this session, single-use (a new start replaces it).
#[utoipa::path(post, path = "/mfa/webauthn/register/start", tag = "mfa", security(("bearer" = [])),
    request_body(content = Option<RegistrationStartBody>, description = "Optional"),
    responses(
        (status = 200, description = "The creation options", body = CreationOptions,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "A body that is not such JSON, or a name that breaks its rules (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 404, description = "WebAuthn is not configured (WEBAUTHN_RP_ID) (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn start_registration(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    // The body is optional: none at all, or JSON `null`, means no name.
    let has_body = req.headers().contains_key(header::CONTENT_TYPE)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l.as_bytes() != b"0");
    let body: RegistrationStartBody = if has_body {
        json_body::<Option<RegistrationStartBody>>(&req, payload)
            .await?
            .unwrap_or_default()
    } else {
        RegistrationStartBody::default()
    };
    let options = webauthn::start_registration(&state.app, &caller, body.name.as_deref()).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(webauthn::options_json(&options)?))
}

/// Finishes the registration with the authenticator's answer: the new passkey. It then serves as
/// a second factor at POST /login/mfa and for passwordless sign-in.
#[utoipa::path(post, path = "/mfa/webauthn/register/finish", tag = "mfa", security(("bearer" = [])),
    request_body = RegistrationAnswer,
    responses(
        (status = 201, description = "Registered", body = Credential),
        (status = 400, description = "No registration in progress for this session (expired, finished or never started), or an answer that does not match it: another origin, challenge or relying party, no user verification (`invalid_grant`); a body that is not a credential (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then finish the same registration", body = crate::error::ErrorBody),
        (status = 404, description = "WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "The authenticator's credential is registered already, or the account holds 20 (`conflict`)", body = crate::error::ErrorBody),
    ))]
pub async fn finish_registration(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    body: web::Json<RegistrationAnswer>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    // Checked before the ceremony is taken: once reauthenticated, the same answer finishes.
    step_up::require_recent(&state.app, &caller).await?;
    let credential =
        webauthn::finish_registration(&state.app, &caller, &body.into_inner().0).await?;
    Ok(HttpResponse::Created().json(Credential::from(credential)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CredentialList {
    /// Oldest first.
    items: Vec<Credential>,
}

/// The caller's passkeys.
#[utoipa::path(get, path = "/mfa/webauthn/credentials", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's passkeys", body = CredentialList),
        (status = 404, description = "WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn list_credentials(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    let items = webauthn::credentials(&state.app, &caller).await?;
    Ok(HttpResponse::Ok().json(CredentialList {
        items: items.into_iter().map(Credential::from).collect(),
    }))
}

/// Deletes one of the caller's passkeys: it no longer signs in nor serves as a second factor.
#[utoipa::path(delete, path = "/mfa/webauthn/credentials/{id}", tag = "mfa", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "A passkey id from GET /mfa/webauthn/credentials")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`id` is not a UUID (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 404, description = "No such passkey of the caller, another account's included, or WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn delete_credential(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    webauthn::delete_credential(&state.app, &caller, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A started passwordless sign-in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PasskeySignIn {
    /// Opaque, single-use, 5 minutes: give it back to POST /login/passkey/finish.
    passkey_token: String,
    /// For `navigator.credentials.get`; `mediation` is `conditional` (the browser offers the
    /// passkeys in the username field's autofill); drop it for a modal prompt instead.
    options: RequestOptions,
}

/// Starts a passwordless sign-in with a discoverable credential (no email asked): the request
/// options and the `passkey_token` to finish with. Limited per client address like POST /login.
#[utoipa::path(post, path = "/login/passkey/start", tag = "sessions",
    responses(
        (status = 200, description = "The request options and the passkey_token", body = PasskeySignIn,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 404, description = "WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts from this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn start_sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = client(&req, &state);
    let (passkey_token, options) = passkey_sign_in::start_sign_in(&state.app, &client).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(PasskeySignIn {
            passkey_token,
            options: RequestOptions(webauthn::options_json(&options)?),
        }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyFinishBody {
    /// From POST /login/passkey/start (single-use).
    passkey_token: String,
    /// The `PublicKeyCredential` `navigator.credentials.get` returned, as JSON (its `toJSON()`).
    #[schema(value_type = PasskeyAssertion)]
    credential: PublicKeyCredential,
}

/// Finishes a passwordless sign-in: the same session and token pair as POST /login. A passkey
/// verifies its user (PIN or biometrics), so no second factor is asked.
#[utoipa::path(post, path = "/login/passkey/finish", tag = "sessions", request_body = PasskeyFinishBody,
    responses(
        (status = 200, description = "Session created", body = super::respond::TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Unknown, used or expired `passkey_token`, or an assertion not accepted: unknown or deleted passkey, another origin or challenge, a bad signature (`invalid_grant`)", body = crate::error::ErrorBody),
        (status = 401, description = "The account is disabled (`invalid_credentials`)", body = crate::error::ErrorBody),
        (status = 403, description = "REQUIRE_EMAIL_VERIFICATION is on and the account's address is not verified (`email_not_verified`; a new link is mailed)", body = crate::error::ErrorBody),
        (status = 404, description = "WebAuthn is not configured (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many attempts from this address (`rate_limited`)", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
#[tracing::instrument(name = "login_passkey", skip_all)]
pub async fn finish_sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<PasskeyFinishBody>,
) -> Result<HttpResponse, ApiError> {
    let client = client(&req, &state);
    let PasskeyFinishBody {
        passkey_token,
        credential,
    } = body.into_inner();
    // `_amr` (hwk, or swk for a synced passkey) is in the grant's authentication already.
    let (grant, _amr) =
        passkey_sign_in::finish_sign_in(&state.app, &client, &passkey_token, &credential).await?;
    token_response(&state.jwt, grant).await
}
