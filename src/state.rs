//! What every handler can reach: the application layer, and what only HTTP needs (the
//! configuration, the token keys, the session cache read by the hot path).
use crate::{app::App, auth::JwtKeys, config::Config, session::SessionCache};

pub struct AppState {
    pub app: App,
    pub config: Config,
    pub jwt: JwtKeys,
    pub cache: SessionCache,
}

impl AppState {
    /// The client's address as audit records and limits see it (see `routes::client_ip`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<String> {
        crate::routes::client_ip(req, &self.config.trusted_proxies)
    }
}
