//! Sessions: the [`SessionRegistry`] actor owns the store (Redis, or in-process when embedded), the
//! pub/sub subscription and the writes to the local cache; [`SessionCache`] is the cloneable
//! read handle that answers the hot path without a message round trip.
mod cache;
pub mod invalidation;
pub mod refresh;
mod registry;
pub mod seal;
mod store;

pub use cache::{CacheLookup, SessionCache};
pub use invalidation::Invalidation;
pub use refresh::RefreshToken;
pub use registry::{
    CreateSession, CutOff, IsCutOff, ListSessions, Ping, Reauthenticate, Refresh, Restore, Revoke,
    RevokeAll, SessionRegistry, SetAccess, Stop, Touch, Validate,
};
pub use store::{MemoryStore, RedisStore, SessionStore};

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use crate::domain::SharedAccess;
use crate::error::{ApiError, PublicError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// Redis could not answer in time; nothing was half-done.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store error: {0}")]
    Internal(String),
    #[error(transparent)]
    Unreachable(#[from] crate::actor::Unreachable),
}

impl From<crate::redis::RedisUnavailable> for SessionError {
    fn from(e: crate::redis::RedisUnavailable) -> Self {
        SessionError::Unavailable(e.0)
    }
}

/// Everything stored about one session (the Redis hash, or the in-process entry).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// Unix seconds.
    pub created_at: i64,
    pub last_seen_at: i64,
    /// Absolute end of the session (created_at + TOKEN_EXPIRATION); never extended.
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Roles and permissions, set at login and replaced by a role change (every session of the
    /// user, through the invalidation path); what authorization and refreshed tokens use.
    pub access: SharedAccess,
    /// SHA-256 (hex) of the current refresh token; the token itself is never stored.
    pub refresh_hash: String,
    /// How and when the user last authenticated in this session (login or POST
    /// /reauthenticate): what access tokens, refreshed ones too, and step-up checks use.
    pub auth: SharedAuth,
}

/// RFC 8176 `amr` values sessiond writes.
pub mod amr {
    pub const PASSWORD: &str = "pwd";
    /// A TOTP code or a recovery code.
    pub const OTP: &str = "otp";
    /// A sign-in through an identity provider.
    pub const FEDERATED: &str = "fed";
    /// WebAuthn with a hardware-bound or a software (synced passkey) key.
    pub const HARDWARE_KEY: &str = "hwk";
    pub const SOFTWARE_KEY: &str = "swk";
    /// More than one factor was used.
    pub const MULTI_FACTOR: &str = "mfa";
    /// The second factors: a session with one of these has proved more than a password.
    pub const SECOND_FACTORS: [&str; 3] = [OTP, HARDWARE_KEY, SOFTWARE_KEY];
}

/// How the session's user last authenticated: the methods (RFC 8176 `amr`), when (unix
/// seconds), and through which identity provider. Sealed in Redis like the grant, since it
/// decides what step-up checks allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthContext {
    pub amr: Vec<String>,
    /// 0: unknown (a record written before sessiond stored it), never recent.
    pub auth_time: i64,
    pub idp: Option<String>,
}

pub type SharedAuth = Arc<AuthContext>;

impl AuthContext {
    /// `methods` in order; `mfa` is added when two factors were used.
    pub fn new(methods: &[&str], auth_time: i64, idp: Option<String>) -> Self {
        let mut amr: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        let factors = methods.iter().filter(|m| **m != amr::MULTI_FACTOR).count();
        if factors >= 2 && !methods.contains(&amr::MULTI_FACTOR) {
            amr.push(amr::MULTI_FACTOR.to_string());
        }
        Self {
            amr,
            auth_time,
            idp,
        }
    }

    /// A password login.
    pub fn password(auth_time: i64) -> Self {
        Self::new(&[amr::PASSWORD], auth_time, None)
    }

    /// A sign-in through the identity provider `idp`.
    pub fn federated(idp: &str, auth_time: i64) -> Self {
        Self::new(&[amr::FEDERATED], auth_time, Some(idp.to_string()))
    }

    /// The same first step, completed by `second` (an `amr` value such as `otp`).
    pub fn with_second_factor(&self, second: &str) -> Self {
        let mut methods: Vec<&str> = self
            .amr
            .iter()
            .map(String::as_str)
            .filter(|m| *m != amr::MULTI_FACTOR && *m != second)
            .collect();
        methods.push(second);
        Self::new(&methods, self.auth_time, self.idp.clone())
    }

    pub fn has_second_factor(&self) -> bool {
        self.amr
            .iter()
            .any(|m| amr::SECOND_FACTORS.contains(&m.as_str()))
    }

    /// Whether the last authentication was at most `max_age` before `now`.
    pub fn is_recent(&self, now: i64, max_age: Duration) -> bool {
        self.auth_time > 0 && now - self.auth_time <= max_age.as_secs() as i64
    }
}

/// What a token check needs to know about a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub user_id: Uuid,
    pub expires_at: i64,
    pub last_seen_at: i64,
    pub access: SharedAccess,
    pub auth: SharedAuth,
}

/// Session lifetime rules shared by both stores.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Sessions unused for this long end.
    pub idle_timeout: Option<Duration>,
    /// How often use of a session is written back (last_seen_at), at most.
    pub touch_interval: Duration,
    pub reuse_grace: Duration,
    /// The longest a session lives (TOKEN_EXPIRATION): how long an account's cut-off marker
    /// must last to outlive every session that could have been created before it.
    pub session_lifetime: Duration,
    /// Live sessions per user; creating one more ends the oldest. 0: unlimited.
    pub max_sessions: usize,
}

impl Lifetimes {
    pub fn new(idle_timeout: Option<Duration>, reuse_grace: Duration) -> Self {
        // Often enough that a used session never looks idle, rare enough that the hot path does
        // not write to Redis on every request.
        let touch_interval = idle_timeout.map_or(Duration::from_secs(60), |idle| {
            (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        });
        Self {
            idle_timeout,
            touch_interval,
            reuse_grace,
            session_lifetime: Duration::from_secs(24 * 3600),
            max_sessions: 0,
        }
    }

    /// TOKEN_EXPIRATION and MAX_SESSIONS_PER_USER (defaults: 24 h, unlimited).
    pub fn with_session_limits(mut self, session_lifetime: Duration, max_sessions: usize) -> Self {
        self.session_lifetime = session_lifetime;
        self.max_sessions = max_sessions;
        self
    }

    /// How long a cut-off marker lasts: beyond the end of any session that existed, or was being
    /// created, when the account was cut off (a minute of margin for logins in flight).
    pub fn cut_off_ttl(&self) -> Duration {
        self.session_lifetime + Duration::from_secs(60)
    }

    /// When the session ends if it is not used again after `last_seen_at`.
    pub fn end_at(&self, expires_at: i64, last_seen_at: i64) -> i64 {
        match self.idle_timeout {
            Some(idle) => expires_at.min(last_seen_at + idle.as_secs() as i64),
            None => expires_at,
        }
    }

    pub fn is_live(&self, expires_at: i64, last_seen_at: i64, now: i64) -> bool {
        now < self.end_at(expires_at, last_seen_at)
    }
}

/// What storing a new session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Stored; these older sessions of the user were ended to respect MAX_SESSIONS_PER_USER.
    Stored { evicted: Vec<Uuid> },
    /// The account is cut off (disabled or deleted, or being so): nothing was stored.
    AccountCutOff,
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token was current: the successor is stored.
    Rotated {
        expires_at: i64,
        access: SharedAccess,
        auth: SharedAuth,
    },
    /// The presented token was rotated moments ago (within the grace window): here is what is
    /// needed to hand out the same successor again.
    Replayed {
        expires_at: i64,
        access: SharedAccess,
        auth: SharedAuth,
        rotated_at: i64,
        sealed_successor: String,
        jti: Uuid,
    },
    /// A rotated token came back after the grace window: the session was revoked.
    Reused,
    /// The session's record in Redis failed its seal (written by someone without the key): it
    /// was revoked, and the refresh is refused like an invalid token.
    Unsealed,
    /// Unknown, expired or revoked session, or a token that was never issued for it.
    Invalid,
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl PublicError for SessionError {
    fn into_api_error(self) -> ApiError {
        match self {
            SessionError::Unavailable(detail) => ApiError::Unavailable {
                what: "session store",
                detail,
            },
            SessionError::Internal(detail) => ApiError::Internal(detail),
            SessionError::Unreachable(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_end_early_but_never_after_their_absolute_end() {
        let l = Lifetimes::new(Some(Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(l.end_at(1_000, 500), 600);
        assert_eq!(l.end_at(1_000, 950), 1_000);
        assert_eq!(l.touch_interval, Duration::from_secs(25));
        let off = Lifetimes::new(None, Duration::from_secs(10));
        assert_eq!(off.end_at(1_000, 0), 1_000);
    }

    #[test]
    fn two_factors_add_mfa_once_and_only_second_factors_count() {
        let pwd = AuthContext::password(100);
        assert_eq!(pwd.amr, ["pwd"]);
        assert!(!pwd.has_second_factor());
        let both = pwd.with_second_factor(amr::OTP);
        assert_eq!(both.amr, ["pwd", "otp", "mfa"]);
        assert!(both.has_second_factor());
        assert_eq!(both.with_second_factor(amr::OTP).amr, ["pwd", "otp", "mfa"]);
        let fed = AuthContext::federated("github", 100).with_second_factor(amr::OTP);
        assert_eq!(fed.amr, ["fed", "otp", "mfa"]);
        assert_eq!(fed.idp.as_deref(), Some("github"));
        let max = Duration::from_secs(300);
        assert!(pwd.is_recent(400, max));
        assert!(!pwd.is_recent(401, max));
        assert!(!AuthContext::default().is_recent(1, max));
    }
}
