//! Sign-in with an identity provider (OpenID Connect, GitHub) and the caller's linked
//! identities.
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{caller, client, resource, respond::token_response};
use crate::{
    app::{
        federation::{self, CallbackParams},
        step_up,
    },
    auth::AuthenticatedSession,
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/oauth/providers", "GET").route(web::get().to(providers)))
        .service(resource("/oauth/token", "POST").route(web::post().to(token)))
        .service(resource("/oauth/{provider}/start", "GET").route(web::get().to(start)))
        .service(resource("/oauth/{provider}/callback", "GET").route(web::get().to(callback)))
        .service(resource("/profile/identities", "GET").route(web::get().to(list_identities)))
        .service(
            resource("/profile/identities/{provider}/start", "POST")
                .route(web::post().to(link_start)),
        )
        .service(
            resource("/profile/identities/{provider}/confirm", "POST")
                .route(web::post().to(link_confirm)),
        )
        .service(
            resource("/profile/identities/{provider}", "DELETE").route(web::delete().to(unlink)),
        );
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Provider {
    #[schema(example = "corp")]
    name: String,
    #[schema(example = "Corporate SSO")]
    display_name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    items: Vec<Provider>,
}

/// The identity providers a client may offer.
#[utoipa::path(get, path = "/oauth/providers", tag = "identity providers",
    responses((status = 200, description = "The configured providers", body = ProviderList)))]
pub async fn providers(state: web::Data<AppState>) -> HttpResponse {
    let items = federation::providers(&state.app)
        .into_iter()
        .map(|(name, display_name)| Provider { name, display_name })
        .collect();
    HttpResponse::Ok().json(ProviderList { items })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartQuery {
    /// Where the browser returns (an exact URL of OAUTH_RETURN_URLS), with `?code=` or `?error=`.
    return_to: String,
    /// The client's PKCE S256 challenge: base64url(SHA-256(code_verifier)), 43 characters.
    code_challenge: String,
}

fn redirect(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .finish()
}

/// Starts a sign-in: redirects the browser to the provider.
#[utoipa::path(get, path = "/oauth/{provider}/start", tag = "identity providers",
    params(("provider" = String, Path, description = "A name of GET /oauth/providers"), StartQuery),
    responses(
        (status = 302, description = "To the provider's authorization page", headers(("Location" = String))),
        (status = 400, description = "`return_to` not allowed, or a malformed `code_challenge` (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such provider (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many sign-in steps from this address (`rate_limited`)", body = crate::error::ErrorBody),
    ))]
pub async fn start(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StartQuery>,
) -> Result<HttpResponse, ApiError> {
    let url = federation::start(
        &state.app,
        &client(&req, &state),
        &path,
        &query.return_to,
        &query.code_challenge,
        None,
    )
    .await?;
    Ok(redirect(&url))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

/// The provider's redirect back: validates and redirects the browser to `return_to` with a
/// one-time `code` (or `linked=<provider>` when linking), or with an `error`: access_denied,
/// account_exists, email_not_verified or provider_error.
#[utoipa::path(get, path = "/oauth/{provider}/callback", tag = "identity providers",
    params(("provider" = String, Path), CallbackQuery),
    responses(
        (status = 302, description = "To `return_to?code=...` or `return_to?error=...`", headers(("Location" = String))),
        (status = 400, description = "Unknown, used, expired or foreign state (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such provider (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many sign-in steps from this address (`rate_limited`)", body = crate::error::ErrorBody),
    ))]
pub async fn callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    let CallbackQuery {
        state: flow_state,
        code,
        error,
    } = query.into_inner();
    let location = federation::callback(
        &state.app,
        &client(&req, &state),
        &path,
        CallbackParams {
            state: flow_state,
            code,
            error,
        },
    )
    .await?;
    Ok(redirect(&location))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The one-time code from the callback's redirect.
    code: String,
    /// The PKCE verifier whose S256 challenge was given at the start.
    code_verifier: String,
}

/// Trades the one-time code for a session: the token pair of POST /login; the access token
/// carries `amr: ["fed"]` and `idp` (the provider).
#[utoipa::path(post, path = "/oauth/token", tag = "identity providers", request_body = TokenBody,
    responses(
        (status = 200, description = "Session created", body = crate::routes::respond::TokenPair,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "Unknown, used or expired code, or a verifier that does not match (`invalid_grant`)", body = crate::error::ErrorBody),
        (status = 403, description = "The account has a second factor (`mfa_required`): the body also carries `mfa_token` and `methods`; finish at POST /login/mfa (the code is spent)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many sign-in steps from this address (`rate_limited`)", body = crate::error::ErrorBody),
    ))]
pub async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<TokenBody>,
) -> Result<HttpResponse, ApiError> {
    let (grant, _provider) = federation::redeem(
        &state.app,
        &client(&req, &state),
        &body.code,
        &body.code_verifier,
    )
    .await?;
    token_response(&state.jwt, grant).await
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Identity {
    #[schema(example = "corp")]
    provider: String,
    subject: String,
    email: Option<String>,
    linked_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IdentityList {
    items: Vec<Identity>,
}

/// The caller's identities at providers.
#[utoipa::path(get, path = "/profile/identities", tag = "identity providers", security(("bearer" = [])),
    responses((status = 200, description = "Linked identities", body = IdentityList)))]
pub async fn list_identities(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
) -> Result<HttpResponse, ApiError> {
    let items = federation::identities(&state.app, &caller(&req, &state, &session))
        .await?
        .into_iter()
        .map(|i| Identity {
            provider: i.provider,
            subject: i.subject,
            email: i.email,
            linked_at: i.linked_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(IdentityList { items }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// Where the browser returns (an exact URL of OAUTH_RETURN_URLS), with `?linked=<provider>`
    /// (with OAUTH_LINK_CONFIRM: `?link_code=`, for POST /profile/identities/{provider}/confirm)
    /// or `?error=`.
    return_to: String,
    /// A PKCE S256 challenge, as for a sign-in (the flow is the same).
    code_challenge: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuthorizeUrl {
    authorize_url: String,
}

/// Starts linking an identity at a provider to the caller's account: open `authorize_url` in
/// the browser; the callback links it.
#[utoipa::path(post, path = "/profile/identities/{provider}/start", tag = "identity providers", security(("bearer" = [])),
    params(("provider" = String, Path)), request_body = LinkBody,
    responses(
        (status = 200, description = "The provider's authorization URL", body = AuthorizeUrl),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 404, description = "No such provider (`not_found`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many sign-in steps from this address (`rate_limited`)", body = crate::error::ErrorBody),
    ))]
pub async fn link_start(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    path: web::Path<String>,
    body: web::Json<LinkBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    let authorize_url = federation::start(
        &state.app,
        &client(&req, &state),
        &path,
        &body.return_to,
        &body.code_challenge,
        Some(&caller),
    )
    .await?;
    Ok(HttpResponse::Ok().json(AuthorizeUrl { authorize_url }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkConfirmBody {
    /// The `link_code` the callback added to `return_to`.
    link_code: String,
    /// The PKCE verifier of the `code_challenge` given at POST /profile/identities/{provider}/start.
    code_verifier: String,
}

/// With OAUTH_LINK_CONFIRM: links the identity the callback left under `link_code`, for the
/// session that started the flow only (a browser handed someone else's flow cannot link its
/// owner's identity to that account).
#[utoipa::path(post, path = "/profile/identities/{provider}/confirm", tag = "identity providers", security(("bearer" = [])),
    params(("provider" = String, Path)), request_body = LinkConfirmBody,
    responses(
        (status = 204, description = "Linked"),
        (status = 400, description = "Unknown, used or expired `link_code`, one of a flow another session started, or a wrong `code_verifier` (`invalid_grant`); the code is spent either way", body = crate::error::ErrorBody),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`)", body = crate::error::ErrorBody),
        (status = 404, description = "No such provider, or OAUTH_LINK_CONFIRM is off (`not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "The identity, or one at the same provider, is linked already (`conflict`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many sign-in steps from this address (`rate_limited`)", body = crate::error::ErrorBody),
    ))]
pub async fn link_confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    path: web::Path<String>,
    body: web::Json<LinkConfirmBody>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    federation::confirm_link(
        &state.app,
        &client(&req, &state),
        &caller,
        &path,
        &body.link_code,
        &body.code_verifier,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Unlinks the caller's identity at a provider.
#[utoipa::path(delete, path = "/profile/identities/{provider}", tag = "identity providers", security(("bearer" = [])),
    params(("provider" = String, Path)),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 403, description = "The session's authentication is older than STEP_UP_MAX_AGE (`reauthentication_required`): POST /reauthenticate, then try again", body = crate::error::ErrorBody),
        (status = 404, description = "No identity at this provider (`not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "It is the account's last way to sign in (`conflict`)", body = crate::error::ErrorBody),
    ))]
pub async fn unlink(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: AuthenticatedSession,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &state, &session);
    step_up::require_recent(&state.app, &caller).await?;
    federation::unlink(&state.app, &caller, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
