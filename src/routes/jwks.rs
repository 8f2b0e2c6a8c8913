//! GET /.well-known/jwks.json: the public keys other services verify access tokens with.
use actix_web::{http::header, web, HttpResponse};

use super::resource;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/.well-known/jwks.json", "GET").route(web::get().to(jwks)));
}

/// The published signing keys (RFC 7517): public halves only, each with `kid`, `alg` and
/// `use: sig`; a key is listed before it signs and until every token it signed has expired.
/// Empty with HS256, whose key is never published.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "The JWK Set: `{\"keys\": [...]}`", content_type = "application/json",
        headers(("Cache-Control" = String, description = "public, max-age=JWKS_MAX_AGE")))))]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={}", state.config.jwks_max_age.as_secs()),
        ))
        .body(state.jwt.jwks())
}
