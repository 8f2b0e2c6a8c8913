//! `AuthenticatedSession`: a handler that takes one cannot run without a valid, unrevoked session.
//!
//! The hot path is: verify the JWT (HMAC, in memory), then look the session id up in the local
//! cache. Only a miss (or an untrusted cache) sends a message to the SessionRegistry.
use std::{future::Future, pin::Pin, sync::Arc};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpMessage, HttpRequest};
use uuid::Uuid;

use actix::Addr;

use super::{Claims, JwtKeys, SharedAccess};
use crate::actor::Ask;
use crate::{
    error::ApiError,
    metrics::TokenChecks,
    session::{
        now_unix, CacheLookup, SessionCache, SessionRegistry, SessionState, SharedAuth, Touch,
        Validate,
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
    /// REQUIRE_MFA_FOR_ROLES.
    pub mfa_roles: Arc<[String]>,
}

/// What a session limited by REQUIRE_MFA_FOR_ROLES may still call: who it is, logging out,
/// reauthenticating, and enrolling a second factor (every /mfa/ route).
fn open_while_limited(method: &str, route: &str) -> bool {
    matches!(
        (method, route),
        ("GET", "/profile")
            | ("GET", "/session")
            | ("POST", "/logout")
            | ("POST", "/reauthenticate")
            | ("POST", "/reauthenticate/passkey/start")
    ) || route.starts_with("/mfa/")
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
    /// How the session's user authenticated, as this pod's view of the session has it (the
    /// step-up guard reads the store instead).
    pub auth: SharedAuth,
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

impl SessionCheck {
    /// Whether REQUIRE_MFA_FOR_ROLES limits the session: its account holds such a role and its
    /// authentication (as the session has it now) includes no second factor.
    pub fn needs_second_factor(&self, session: &AuthenticatedSession) -> bool {
        !self.mfa_roles.is_empty()
            && !session.auth.has_second_factor()
            && session
                .access
                .roles
                .iter()
                .any(|r| self.mfa_roles.contains(r))
    }

    /// The live session behind verified claims, checked exactly as every bearer request is (the
    /// pod's cache, the registry on a miss): `Ok(None)` for a session that is revoked, expired,
    /// unknown or not the token's user; an error (503) when it cannot be checked, since a token
    /// that could not be checked is never accepted. POST /introspect answers from this too.
    pub async fn live_session(
        &self,
        claims: &Claims,
    ) -> Result<Option<AuthenticatedSession>, ApiError> {
        let checks = &self.checks;
        let found: Option<SessionState> = match self.cache.lookup(claims.sid).await {
            CacheLookup::Hit {
                state: found,
                touch,
            } => {
                checks.cache_hit.inc();
                if touch {
                    self.sessions.tell(Touch {
                        user_id: claims.sub,
                        session_id: claims.sid,
                    });
                }
                found
            }
            CacheLookup::Miss { fresh } => {
                checks.cache_miss.inc();
                let asked = self
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
                        checks.unavailable.inc();
                        return Err(e);
                    }
                }
            }
        };
        match found {
            // Idleness was judged by the cache or the store; the absolute end is final.
            Some(s) if s.user_id == claims.sub && now_unix() < s.expires_at => {
                Ok(Some(AuthenticatedSession {
                    user_id: claims.sub,
                    session_id: claims.sid,
                    access: s.access,
                    session_expires_at: s.expires_at,
                    auth: s.auth,
                }))
            }
            _ => {
                checks.rejected.inc();
                Ok(None)
            }
        }
    }
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
            let Some(claims) = claims else {
                state.checks.rejected.inc();
                return Err(ApiError::Unauthorized);
            };
            match state.live_session(&claims).await? {
                Some(session) => {
                    req.extensions_mut().insert(RequestUser(claims.sub));
                    if state.needs_second_factor(&session)
                        && !open_while_limited(
                            req.method().as_str(),
                            req.match_pattern().as_deref().unwrap_or_default(),
                        )
                    {
                        return Err(ApiError::MfaEnrolmentRequired);
                    }
                    Ok(session)
                }
                None => Err(ApiError::Unauthorized),
            }
        })
    }
}
