//! What several route files share: the token pair a sign-in answers with, and reading a JSON
//! body after authorization. Route files import this, never each other.
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::{app::sessions::Grant, auth::JwtKeys, error::ApiError};

/// A new session's (or a refresh's) tokens. Served with `Cache-Control: no-store`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// JWT (`typ: at+jwt`, signed with JWT_ALGORITHM) for `Authorization: Bearer`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// Opaque; present it to POST /token/refresh. Rotated on every use.
    refresh_token: String,
    /// Seconds until the session ends (refreshing never extends it).
    refresh_expires_in: i64,
    session_id: Uuid,
}

/// Signs the access token of a grant (saying how the session's user authenticated) and
/// answers with the pair.
pub(crate) async fn token_response(jwt: &JwtKeys, grant: Grant) -> Result<HttpResponse, ApiError> {
    let Grant {
        refresh,
        access,
        expires_at,
        issued_at,
        jti,
        auth,
    } = grant;
    let (uid, sid) = (refresh.user_id, refresh.session_id);
    let (access_token, expires_in) = jwt
        .issue_async(uid, sid, &access, expires_at, issued_at, jti, Some(&auth))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token: refresh.encode(),
            refresh_expires_in: expires_at - issued_at,
            session_id: sid,
        }))
}

/// Reads a JSON body after authorization, with the app's JsonConfig (limits, 415, error shape).
pub(crate) async fn json_body<T: DeserializeOwned + 'static>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, actix_web::Error> {
    use actix_web::FromRequest;
    let mut payload = payload.into_inner();
    Ok(web::Json::<T>::from_request(req, &mut payload)
        .await?
        .into_inner())
}

/// The fixed body of a `202`: the same whatever happened behind it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    #[schema(example = "accepted")]
    pub status: &'static str,
    pub message: &'static str,
}

pub(crate) fn accepted(message: &'static str) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(Accepted {
            status: "accepted",
            message,
        })
}
