//! What every handler can reach: actor addresses, the cache read handle, keys and settings.
use actix::Addr;

use crate::{
    audit::AuditLog,
    auth::{DenialAudit, JwtKeys, SessionCheck},
    config::Config,
    metrics::Metrics,
    session::{SessionCache, SessionRegistry},
    throttle::Throttle,
    users::{password::PasswordHasher, UserStore},
};

pub struct AppState {
    pub config: Config,
    pub jwt: JwtKeys,
    pub users: Addr<UserStore>,
    pub sessions: Addr<SessionRegistry>,
    pub cache: SessionCache,
    pub hasher: PasswordHasher,
    pub metrics: Metrics,
    pub throttle: Throttle,
    pub audit: AuditLog,
    /// Recently read profiles (GET /profile), kept at most SESSION_CACHE_TTL.
    pub profiles: moka::future::Cache<uuid::Uuid, std::sync::Arc<crate::users::User>>,
}

impl AppState {
    /// What the token-check extractor reads, sharing this state's keys, cache and registry; the
    /// server registers it as its own app data.
    pub fn session_check(&self) -> SessionCheck {
        SessionCheck {
            jwt: self.jwt.clone(),
            cache: self.cache.clone(),
            sessions: self.sessions.clone(),
            checks: self.metrics.token_checks.clone(),
        }
    }

    /// What `Authorized<P>` reads when it refuses; registered as its own app data.
    pub fn denial_audit(&self) -> DenialAudit {
        DenialAudit {
            audit: self.audit.clone(),
            trusted_proxies: self.config.trusted_proxies.clone(),
        }
    }

    /// The client's address as audit records and limits see it (see `routes::client_ip`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<String> {
        crate::routes::client_ip(req, &self.config.trusted_proxies)
    }
}
