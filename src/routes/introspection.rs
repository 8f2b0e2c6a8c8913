//! POST /introspect (RFC 7662): services that hold no signing key ask whether an access token
//! is active. The caller authenticates as a service client with HTTP Basic; the token is checked
//! exactly as a bearer request is (signature, time claims, then the live session through the
//! pod's cache and the registry), so a revoked session is inactive on every pod within the bound
//! GET /session has.
use actix_web::{dev::UrlEncoded, http::header, web, HttpRequest, HttpResponse};
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine,
};
use serde::Serialize;
use uuid::Uuid;

use super::resource;
use crate::{
    app::clients,
    auth::{jwt::MAX_TOKEN_BYTES, SessionCheck},
    error::ApiError,
    state::AppState,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/introspect", "POST").route(web::post().to(introspect)));
}

/// Standard base64, padded or not (RFC 7617 says padded; some clients leave it off).
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longer `Authorization: Basic` values are refused unread (a client id and a 43-character
/// secret take about 110).
const MAX_BASIC_LEN: usize = 1024;

/// `client_id:client_secret` of `Authorization: Basic ...`; the scheme is case-insensitive
/// (RFC 7235). Client ids are UUIDs and secrets base64url, so the form-encoding RFC 6749 2.3.1
/// asks clients to apply first leaves both unchanged.
fn basic_credentials(req: &HttpRequest) -> Option<(Uuid, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > MAX_BASIC_LEN {
        return None;
    }
    let decoded = String::from_utf8(BASIC.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((Uuid::parse_str(id).ok()?, secret.to_string()))
}

/// The form's `token`: present once and not empty. Other parameters (`token_type_hint`, and
/// any extension RFC 7662 allows) are ignored.
fn the_token(form: Vec<(String, String)>) -> Result<String, ApiError> {
    let mut tokens = form.into_iter().filter(|(k, _)| k == "token");
    let Some((_, token)) = tokens.next() else {
        return Err(ApiError::invalid("token is required"));
    };
    if tokens.next().is_some() {
        return Err(ApiError::invalid("token must be given once"));
    }
    if token.is_empty() {
        return Err(ApiError::invalid("token is required"));
    }
    Ok(token)
}

/// Form errors in the contract's shape: 415 not a form, 413 over the cap, 400 otherwise (never
/// the parser's raw message, which can quote the input).
fn form_error(e: actix_web::error::UrlencodedError, limit: usize) -> ApiError {
    use actix_web::error::UrlencodedError as E;
    match e {
        E::ContentType => ApiError::FormRequired,
        E::Overflow { .. } => ApiError::PayloadTooLarge(limit),
        E::Parse(_) | E::Encoding => ApiError::invalid("request body is not a valid form"),
        _ => ApiError::invalid("could not read the request body"),
    }
}

/// The form body of POST /introspect.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Schema only: the body is read as a list of pairs.
pub struct IntrospectionForm {
    /// The access token to check (a token longer than any sessiond issues, 10 KiB, is inactive).
    #[schema(min_length = 1)]
    token: String,
    /// Accepted and ignored: sessiond introspects access tokens only.
    #[schema(example = "access_token")]
    token_type_hint: Option<String>,
}

/// RFC 7662's answer. For a token that is not active (expired, revoked, of a deleted or
/// disabled account, malformed, not sessiond's), exactly `{"active": false}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Introspection<'a> {
    active: bool,
    /// The account (user id).
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<Uuid>,
    /// The session.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<Uuid>,
    /// The token's expiry (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    /// When the token was issued (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    /// Always `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "access_token")]
    token_type: Option<&'static str>,
    /// The session's current roles (a role change shows here at once, as on GET /session).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["user"]))]
    roles: Option<&'a [String]>,
    /// Union of the roles' permissions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!([]))]
    permissions: Option<&'a [String]>,
    /// How the session's user last authenticated (RFC 8176), as the session has it now (a
    /// POST /reauthenticate shows here at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["pwd"]))]
    amr: Option<&'a [String]>,
    /// When (unix seconds): the login, or the last POST /reauthenticate.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<i64>,
    /// The identity provider of a provider sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
}

/// Whether an access token is active (RFC 7662), for services that hold no signing key. The
/// caller authenticates as a service client (POST /admin/clients) with HTTP Basic
/// (`client_id:client_secret`); the token is checked as a bearer request's is, so a revoked
/// session is inactive on every pod as soon as GET /session refuses it there.
#[utoipa::path(post, path = "/introspect", tag = "sessions", security(("basic" = [])),
    request_body(content = IntrospectionForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token's state: active with its claims, or exactly `{\"active\": false}`", body = Introspection),
        (status = 400, description = "`token` missing, empty or repeated, or the body is not a valid form (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 401, description = "Missing, malformed or wrong client credentials, or a deleted client (`invalid_client`)", body = crate::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Always `Basic realm=\"sessiond\"`"))),
        (status = 413, description = "Body over the size cap (`payload_too_large`)", body = crate::error::ErrorBody),
        (status = 415, description = "Body is not `application/x-www-form-urlencoded` (`unsupported_media_type`)", body = crate::error::ErrorBody),
        (status = 429, description = "Too many failed client authentications from this address in the window, RATE_LIMIT_INTROSPECT_FAILURES_PER_IP (`rate_limited`); refused before the credentials are checked", body = crate::error::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait"))),
    ))]
pub async fn introspect(
    req: HttpRequest,
    state: web::Data<AppState>,
    check: web::Data<SessionCheck>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The client first: without valid credentials nothing about the body is told.
    let from = super::client(&req, &state);
    clients::authenticate_from(&state.app, &from, basic_credentials(&req)).await?;
    let limit = state.config.body_limit;
    let form: Vec<(String, String)> = UrlEncoded::new(&req, &mut payload.into_inner())
        .limit(limit)
        .await
        .map_err(|e| form_error(e, limit))?;
    let token = the_token(form)?;
    let inactive = || {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"active":false}"#)
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Ok(inactive());
    }
    let Some(claims) = check.jwt.verify(&token) else {
        return Ok(inactive());
    };
    let Some(session) = check.live_session(&claims).await? else {
        return Ok(inactive());
    };
    // Limited to enrolling a second factor here (REQUIRE_MFA_FOR_ROLES): good for nothing else.
    if check.needs_second_factor(&session) {
        return Ok(inactive());
    }
    Ok(HttpResponse::Ok().json(Introspection {
        active: true,
        sub: Some(claims.sub),
        sid: Some(claims.sid),
        exp: Some(claims.exp),
        iat: Some(claims.iat),
        nbf: Some(claims.nbf),
        jti: Some(claims.jti),
        iss: Some(&claims.iss),
        aud: Some(&claims.aud),
        token_type: Some("access_token"),
        roles: Some(&session.access.roles),
        permissions: Some(&session.access.permissions),
        amr: Some(session.auth.amr.as_slice()).filter(|a| !a.is_empty()),
        auth_time: Some(session.auth.auth_time).filter(|t| *t > 0),
        idp: session.auth.idp.as_deref(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn basic(value: &str) -> Option<(Uuid, String)> {
        basic_credentials(
            &TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request(),
        )
    }

    #[test]
    fn basic_credentials_are_read_padded_or_not_and_garbage_is_none() {
        let id = Uuid::new_v4();
        let raw = format!("{id}:s3cr:et");
        let padded = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(
            basic(&format!("Basic {padded}")),
            Some((id, "s3cr:et".into()))
        );
        assert_eq!(
            basic(&format!("basic {}", padded.trim_end_matches('='))),
            Some((id, "s3cr:et".into()))
        );
        for bad in [
            "Bearer abc".to_string(),
            "Basic".to_string(),
            "Basic !!!".to_string(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("nocolon")
            ),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("x:y")
            ),
            format!("Basic {}", "A".repeat(MAX_BASIC_LEN + 4)),
        ] {
            assert_eq!(basic(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_token_is_required_once_and_other_parameters_are_ignored() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            the_token(vec![pair("token_type_hint", "x"), pair("token", "t")]).unwrap(),
            "t"
        );
        assert!(the_token(vec![]).is_err());
        assert!(the_token(vec![pair("token", "")]).is_err());
        assert!(the_token(vec![pair("token", "a"), pair("token", "b")]).is_err());
    }
}
