//! What every handler can reach: actor addresses, the cache read handle, keys and settings.
use actix::Addr;

use crate::{
    audit::AuditLog,
    auth::JwtKeys,
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
    /// The client's address as audit records and limits see it (see `routes::client_ip`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<String> {
        crate::routes::client_ip(req, &self.config.trusted_proxies)
    }
}
