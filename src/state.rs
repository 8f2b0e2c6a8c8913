//! What every handler can reach: the application layer, and what only HTTP needs (the
//! configuration, the token keys, the session cache read by the hot path).
use crate::{
    app::App,
    auth::{DenialAudit, JwtKeys, SessionCheck},
    config::Config,
    session::SessionCache,
};

pub struct AppState {
    pub app: App,
    pub config: Config,
    pub jwt: JwtKeys,
    pub cache: SessionCache,
}

impl AppState {
    /// What the token-check extractor reads, sharing this state's keys, cache and registry; the
    /// server registers it as its own app data.
    pub fn session_check(&self) -> SessionCheck {
        SessionCheck {
            jwt: self.jwt.clone(),
            cache: self.cache.clone(),
            sessions: self.app.sessions.clone(),
            checks: self.app.metrics.token_checks.clone(),
            mfa_roles: self.config.require_mfa_for_roles.clone().into(),
        }
    }

    /// What `Authorized<P>` reads when it refuses; registered as its own app data.
    pub fn denial_audit(&self) -> DenialAudit {
        DenialAudit {
            audit: self.app.audit.clone(),
            trusted_proxies: self.config.trusted_proxies.clone(),
        }
    }

    /// The client's address as audit records and limits see it (see `auth::client_ip`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<String> {
        crate::auth::client_ip(req, &self.config.trusted_proxies)
    }
}
