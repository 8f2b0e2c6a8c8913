//! `AuthenticatedSession`: a handler that takes one cannot run without a valid, unrevoked session.
//!
//! The hot path is: verify the JWT (HMAC, in memory), then look the session id up in the local
//! cache. Only a miss (or an untrusted cache) sends a message to the SessionRegistry.
use std::{future::Future, pin::Pin};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpMessage, HttpRequest};
use uuid::Uuid;

use actix::Addr;

use super::{JwtKeys, SharedAccess};
use crate::actor::Ask;
use crate::{
    error::ApiError,
    metrics::TokenChecks,
    session::{
        now_unix, CacheLookup, SessionCache, SessionRegistry, SessionState, Touch, Validate,
    },
};

/// What the token check reads, and nothing more: registered as its own app data
/// (`web::Data<SessionCheck>`), so the extractor does not depend on the whole application state.
/// One lookup and one reference-count bump per request, as before.
#[derive(Clone)]
pub struct SessionCheck {
    /// Verifies the bearer token (a clone shares the verified-token cache).
    pub jwt: JwtKeys,
    /// The pod's local copy of sessions: the hit path.
    pub cache: SessionCache,
    /// Asked on a miss, and told when a hit should be written back (`Touch`).
    pub sessions: Addr<SessionRegistry>,
    pub checks: TokenChecks,
}

#[derive(Debug, Clone)]
pub struct AuthenticatedSession {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The session's current roles and permissions, from the session registry (not the token,
    /// which may predate a role change).
    pub access: SharedAccess,
    /// Absolute end of the session (unix seconds).
    pub session_expires_at: i64,
}

/// The user a request authenticated as, left in the request's extensions by the extractor, for
/// the line that ends the request (`user.id` in ECS logs).
#[derive(Debug, Clone, Copy)]
pub struct RequestUser(pub Uuid);

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
/// Tokens in query strings or cookies are never looked at.
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl FromRequest for AuthenticatedSession {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<SessionCheck>>().cloned();
        let claims = state
            .as_ref()
            .and_then(|s| bearer_token(req).and_then(|t| s.jwt.verify(t)));
        let req = req.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("SessionCheck missing".into()))?;
            let checks = &state.checks;
            let Some(claims) = claims else {
                checks.rejected.inc();
                return Err(ApiError::Unauthorized);
            };
            let found: Option<SessionState> = match state.cache.lookup(claims.sid).await {
                CacheLookup::Hit {
                    state: found,
                    touch,
                } => {
                    checks.cache_hit.inc();
                    if touch {
                        state.sessions.tell(Touch {
                            user_id: claims.sub,
                            session_id: claims.sid,
                        });
                    }
                    found
                }
                CacheLookup::Miss { fresh } => {
                    checks.cache_miss.inc();
                    let asked = state
                        .sessions
                        .ask(Validate {
                            user_id: claims.sub,
                            session_id: claims.sid,
                            fresh,
                        })
                        .await;
                    match asked.map_err(ApiError::from) {
                        Ok(found) => found,
                        Err(e) => {
                            // Never accept a token that could not be checked.
                            checks.unavailable.inc();
                            return Err(e);
                        }
                    }
                }
            };
            match found {
                // Idleness was judged by the cache or the store; the absolute end is final.
                Some(s) if s.user_id == claims.sub && now_unix() < s.expires_at => {
                    req.extensions_mut().insert(RequestUser(claims.sub));
                    Ok(AuthenticatedSession {
                        user_id: claims.sub,
                        session_id: claims.sid,
                        access: s.access,
                        session_expires_at: s.expires_at,
                    })
                }
                _ => {
                    checks.rejected.inc();
                    Err(ApiError::Unauthorized)
                }
            }
        })
    }
}
