//! The application layer: each multi-step flow written once, called by the HTTP routes and the
//! command line alike. Callers parse their input into domain values and authorize first; these
//! functions do the work (throttle, store, sessions, audit, metrics) and return results or
//! [`ApiError`]s, never HTTP responses.
//!
//! - [`accounts`]: registration, `sessiond user create`, login, password change, the profile.
//! - [`sessions`]: refresh, the logouts, the caller's sessions, and bringing live sessions in
//!   line with an account's roles.
//! - [`admin`]: every admin operation, under the escalation rule, and ADMIN_EMAILS.
//! - [`clients`]: service clients (admin operations) and checking their credentials.
//! - [`mfa`]: second factors (TOTP and recovery codes) and the logins waiting for one.
//! - [`webauthn`]: passkeys: registration, second factor, passwordless sign-in.
pub mod accounts;
pub mod admin;
pub mod clients;
pub mod email;
pub mod federation;
pub(crate) mod limits;
pub mod mfa;
pub(crate) mod notices;
pub mod passkey_sign_in;
pub mod sessions;
pub mod step_up;
pub mod webauthn;

use std::{sync::Arc, time::Duration};

use actix::Addr;
use uuid::Uuid;

use crate::{
    audit::AuditLog,
    domain::Access,
    error::ApiError,
    mail::Mailer,
    metrics::Metrics,
    session::SessionRegistry,
    throttle::{Scope, Throttle},
    users::{password::PasswordHasher, User, UserStore},
    webhooks::Webhooks,
};

/// What the flows run on: the actors, the hasher, the limiter, the audit trail, the metrics.
pub struct App {
    pub users: Addr<UserStore>,
    pub sessions: Addr<SessionRegistry>,
    pub hasher: PasswordHasher,
    pub throttle: Throttle,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Revocation webhooks: every flow that ends sessions or changes an account emits here.
    pub webhooks: Webhooks,
    /// Renders mails (stored by the UserStore with the change that causes them) and wakes the
    /// delivery worker.
    pub mailer: Mailer,
    /// Recently read profiles (GET /profile), kept at most SESSION_CACHE_TTL.
    pub profiles: moka::future::Cache<Uuid, Arc<User>>,
    /// Service clients' secret hashes, kept at most SESSION_CACHE_TTL.
    pub client_secrets: clients::ClientSecrets,
    /// Sign-in with identity providers; `None` when none is configured.
    pub federation: Option<federation::Federation>,
    /// Logins waiting for their second factor (POST /login/mfa).
    pub mfa_tokens: mfa::MfaTokens,
    /// Passkeys and security keys; `None` when WEBAUTHN_RP_ID is not set.
    pub webauthn: Option<webauthn::Passkeys>,
    pub settings: Settings,
}

/// The configuration the flows read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a session lasts from login (refreshing never extends it).
    pub session_lifetime: Duration,
    /// Normalized; these accounts get `admin` at registration and at start-up.
    pub admin_emails: Vec<String>,
    /// REQUIRE_EMAIL_VERIFICATION.
    pub require_verification: bool,
    /// NOTIFY_NEW_LOGIN.
    pub notify_new_login: bool,
    /// The issuer shown by authenticator apps (JWT_ISSUER).
    pub mfa_issuer: String,
    /// Seals TOTP secrets at rest (JWT_KEY_ENCRYPTION_KEY); without it they are stored as is.
    pub mfa_key: Option<crate::config::Secret>,
    /// STEP_UP_MAX_AGE: how recent an authentication sensitive changes need.
    pub step_up_max_age: Duration,
    /// How long a TOTP enrolment may stay pending (`PendingTtls::totp_enrolment`).
    pub totp_enrolment_ttl: Duration,
    /// Keys the stored form of recovery codes.
    pub recovery_keys: mfa::RecoveryKeys,
}

impl Settings {
    pub fn mfa_key(&self) -> Option<&[u8]> {
        self.mfa_key.as_ref().map(crate::config::Secret::expose)
    }
}

/// Where an anonymous call comes from, as audit records and limits see it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client's address (behind trusted proxies, the one they report).
    pub ip: Option<String>,
    /// As sent; stored with a new session, shortened and without control characters.
    pub user_agent: Option<String>,
}

impl Client {
    /// The unit the client address is limited by: the address, or its /64 for IPv6.
    pub fn group(&self) -> String {
        client_group(self.ip.as_deref())
    }
}

/// An authenticated caller: its session, what it holds, and where it calls from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The session's current roles and permissions.
    pub access: Arc<Access>,
    pub ip: Option<String>,
}

/// The unit an address is limited by: the address, or its /64 for IPv6.
pub(crate) fn client_group(ip: Option<&str>) -> String {
    crate::throttle::client_group(ip.unwrap_or("unknown"))
}

impl App {
    /// Counts one attempt against the client address's limit for `scope` (429 over it).
    pub async fn limit_client(&self, scope: Scope, client: &Client) -> Result<(), ApiError> {
        self.throttle.hit(scope, &client.group()).await??;
        Ok(())
    }
}
