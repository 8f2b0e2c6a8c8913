//! The OpenAPI 3.1 document served at GET /openapi.json, generated from the handlers'
//! annotations. Responses every operation shares (503, and 400/413/415 for JSON bodies, 401 for
//! bearer-protected ones, the X-Request-Id header) are added in one place by [`CommonResponses`],
//! so an annotation cannot forget them. docs/API.md is this document rendered by [`markdown`].
mod markdown;
use std::sync::LazyLock;

use utoipa::{
    openapi::{
        header::HeaderBuilder,
        path::Operation,
        response::{Response, ResponseBuilder},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, ObjectBuilder, Ref, RefOr, Type,
    },
    Modify, OpenApi,
};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "sessiond", license(name = "MIT")),
    paths(
        routes::users::register,
        routes::users::profile,
        routes::users::change_password,
        routes::email::forgot_password,
        routes::email::reset_password,
        routes::email::verify_email,
        routes::email::resend_verification,
        routes::email::change_email,
        routes::auth::login,
        routes::auth::refresh,
        routes::auth::logout,
        routes::auth::logout_all,
        routes::federation::providers,
        routes::federation::start,
        routes::federation::callback,
        routes::federation::token,
        routes::federation::list_identities,
        routes::federation::link_start,
        routes::federation::link_confirm,
        routes::federation::unlink,
        routes::mfa::login_mfa,
        routes::mfa::start_totp,
        routes::mfa::confirm_totp,
        routes::mfa::remove_totp,
        routes::webauthn::start_registration,
        routes::webauthn::finish_registration,
        routes::webauthn::list_credentials,
        routes::webauthn::delete_credential,
        routes::webauthn::start_sign_in,
        routes::webauthn::finish_sign_in,
        routes::step_up::reauthenticate,
        routes::step_up::start_passkey,
        routes::session::current_session,
        routes::session::list_sessions,
        routes::session::delete_session,
        routes::introspection::introspect,
        routes::admin::list_users,
        routes::admin::get_user,
        routes::admin::set_roles,
        routes::admin::disable_user,
        routes::admin::enable_user,
        routes::admin::delete_user,
        routes::admin::reset_mfa,
        routes::admin::list_user_sessions,
        routes::admin::revoke_user_sessions,
        routes::admin::list_roles,
        routes::admin::create_role,
        routes::admin::list_audit,
        routes::clients::list_clients,
        routes::clients::create_client,
        routes::clients::delete_client,
        routes::health::health,
        routes::health::ready,
        routes::health::metrics,
        routes::jwks::jwks,
        openapi_json,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&CommonResponses),
    tags(
        (name = "users", description = "Accounts"),
        (name = "sessions", description = "Logins, tokens and sessions"),
        (name = "identity providers", description = "Sign-in with OpenID Connect providers and GitHub, and the identities linked to an account"),
        (name = "mfa", description = "Second factors: TOTP authenticators, recovery codes and passkeys (WebAuthn)"),
        (name = "admin", description = "Accounts, roles, sessions, service clients and the audit trail, for callers holding the permission each operation names; without it: 403 `forbidden`"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
pub struct ApiDoc;

/// What holds for every operation; the document's description, first on docs/API.md.
const CONVENTIONS: &str = "\
Session-management server: accounts, logins, bearer access tokens, refresh rotation and \
revocation that reaches every pod.

- Bodies are JSON (`Content-Type: application/json`); another content type on a JSON endpoint \
gets `415`. Request bodies are capped (16 KiB by default): larger ones get `413`. Unknown, \
duplicate or missing fields get `400`.
- Authenticated endpoints take `Authorization: Bearer <access_token>`. A missing, malformed, \
expired, tampered or revoked token gets `401` with `WWW-Authenticate: Bearer` and no detail \
about which of those it was. Tokens in query strings or cookies are ignored. Responses to a \
request that carries credentials have `Cache-Control: no-store`.
- Every error has the body `{\"error\": code, \"message\": text}`: `error` is a stable code \
(see Error codes), `message` is for humans and never holds a stack trace, SQL, a secret or a \
parser's raw message. An unknown path gets `404` `not_found`, a known path with another \
method `405` `method_not_allowed` (with `Allow`), an unexpected failure `500` `internal_error`.
- Emails are trimmed and compared case-insensitively (stored lower-cased after Unicode NFKC): \
two spellings of one address are one account. Passwords are 8 to 128 characters (Unicode \
scalar values), never trimmed or truncated.
- Access tokens are JWTs (`typ: at+jwt`, RFC 9068; `kid` naming the key; `alg` HS256, or \
EdDSA, ES256 or RS256 with the public keys at `/.well-known/jwks.json`) with the claims `sub` (user \
id), `sid` (session id), `iat`, `nbf`, `exp`, `iss`, `aud`, `jti`, `roles` and `permissions`.
- Revocation: once a logout, `DELETE /sessions/{id}`, a password change, a detected refresh \
token reuse or an admin's revoke, disable or delete has answered, the pod that served it \
refuses the revoked access tokens at once and every other pod as soon as the invalidation \
message arrives; if that message is lost, no pod accepts them for longer than its session \
cache TTL (5 s by default). When Redis is unreachable and the local cache cannot answer, the \
answer is `503`: a token that cannot be checked is never accepted.";

/// The Markdown page docs/API.md holds: this document, rendered.
pub fn markdown() -> String {
    let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap_or_default();
    markdown::render(&doc)
}

/// Rendered once: the document does not change while the process runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_string())
});

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document of this API", content_type = "application/json")))]
pub async fn openapi_json() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(description))
        .build()
}

struct CommonResponses;

impl CommonResponses {
    fn apply(op: &mut Operation, path: &str) {
        let responses = &mut op.responses.responses;
        let mut add = |status: &str, response: Response| {
            responses
                .entry(status.to_string())
                .or_insert(RefOr::T(response));
        };
        if op.request_body.is_some() {
            add("400", error_response("Malformed JSON, missing, unknown or duplicate fields, or invalid values (`invalid_request`)"));
            add(
                "413",
                error_response("Body over the size cap (`payload_too_large`)"),
            );
            add(
                "415",
                error_response("Body is not `application/json` (`unsupported_media_type`)"),
            );
        }
        if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
            let mut unauthorized = error_response(
                "Missing, malformed, expired, tampered or revoked access token (`unauthorized`)",
            );
            unauthorized.headers.insert(
                "WWW-Authenticate".into(),
                RefOr::T(string_header("Always `Bearer`")),
            );
            add("401", unauthorized);
        }
        if path.starts_with("/admin/") {
            add(
                "403",
                error_response(
                    "The caller lacks the permission this operation needs, or the escalation rule refuses it: own roles, or a role or account holding a permission the caller lacks (`forbidden`)",
                ),
            );
        }
        // Every per-account admin operation reads the same `{id}` and looks the account up.
        if path.starts_with("/admin/users/{id}") {
            add(
                "400",
                error_response("`id` is not a UUID (`invalid_request`)"),
            );
            add("404", error_response("No such account (`not_found`)"));
        }
        let cheap = matches!(path, "/health" | "/metrics" | "/openapi.json" | "/ready");
        if !cheap {
            let mut unavailable = error_response(
                "A backing service (database, Redis, password hashing) is unavailable; nothing was half-done (`unavailable`)",
            );
            unavailable.headers.insert(
                "Retry-After".into(),
                RefOr::T(string_header("Seconds to wait before retrying")),
            );
            add("503", unavailable);
        }
        for response in op.responses.responses.values_mut() {
            if let RefOr::T(r) = response {
                r.headers.entry("X-Request-Id".into()).or_insert_with(|| {
                    RefOr::T(string_header(
                        "The request's id, echoed when the request sent a sane one",
                    ))
                });
            }
        }
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.description = Some(CONVENTIONS.to_string());
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("Access token from POST /login or POST /token/refresh"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A service client's `client_id:client_secret` (POST /admin/clients)",
                    ))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                Self::apply(op, path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_covers_every_route_and_the_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        for path in [
            "/register",
            "/login",
            "/logout",
            "/logout/all",
            "/profile",
            "/profile/password",
            "/session",
            "/sessions",
            "/sessions/{id}",
            "/token/refresh",
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
            "/admin/users",
            "/admin/users/{id}",
            "/admin/users/{id}/roles",
            "/admin/users/{id}/disable",
            "/admin/users/{id}/enable",
            "/admin/users/{id}/sessions",
            "/admin/users/{id}/mfa",
            "/admin/roles",
            "/admin/audit",
            "/admin/clients",
            "/admin/clients/{client_id}",
            "/introspect",
            "/mfa/totp",
            "/mfa/totp/confirm",
            "/login/mfa",
            "/mfa/webauthn/register/start",
            "/mfa/webauthn/register/finish",
            "/mfa/webauthn/credentials",
            "/mfa/webauthn/credentials/{id}",
            "/login/passkey/start",
            "/login/passkey/finish",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} documented");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let profile = &doc["paths"]["/profile"]["get"]["responses"];
        assert!(profile["401"]["headers"]["WWW-Authenticate"].is_object());
        assert!(doc["paths"]["/register"]["post"]["responses"]["415"].is_object());
        assert!(doc["paths"]["/admin/audit"]["get"]["responses"]["403"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["basic"]["scheme"],
            "basic"
        );
        let introspect = &doc["paths"]["/introspect"]["post"];
        assert!(
            introspect["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object()
        );
        assert!(introspect["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
        assert!(introspect["responses"]["401"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("invalid_client")));
    }
}
