//! Sessions: the [`SessionRegistry`] actor owns the store (Redis, or in-process when embedded), the
//! pub/sub subscription and the writes to the local cache; [`SessionCache`] is the cloneable
//! read handle that answers the hot path without a message round trip.
mod cache;
mod registry;
mod store;

pub use cache::{CacheLookup, SessionCache};
pub use registry::{CreateSession, Ping, Revoke, SessionRegistry, Stop, Validate};
pub use store::{MemoryStore, RedisStore, SessionStore};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// Redis could not answer in time; nothing was half-done.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store error: {0}")]
    Internal(String),
}

impl From<redis::RedisError> for SessionError {
    fn from(e: redis::RedisError) -> Self {
        // Refused, dropped, timed out, LOADING, READONLY during a failover: all mean "retry".
        SessionError::Unavailable(e.to_string())
    }
}

/// Everything stored about one session (the Redis hash, or the in-process entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// SHA-256 (hex) of the current refresh token; the token itself is never stored.
    pub refresh_hash: String,
}

/// What a token check needs to know about a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionState {
    pub user_id: Uuid,
    pub expires_at: i64,
}

impl SessionState {
    pub fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }
}

/// What travels on `{prefix}invalidate`: `s:<sid>` for one session, `u:<uid>` for all sessions of a
/// user. Plain text keeps the subscriber's parse trivial and the channel readable with redis-cli.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Session(Uuid),
    User(Uuid),
}

impl Invalidation {
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Session(sid) => format!("s:{sid}"),
            Invalidation::User(uid) => format!("u:{uid}"),
        }
    }

    pub fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, id) = text.split_once(':')?;
        let id = Uuid::parse_str(id).ok()?;
        match kind {
            "s" => Some(Invalidation::Session(id)),
            "u" => Some(Invalidation::User(id)),
            _ => None,
        }
    }
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip_and_garbage_is_ignored() {
        let id = Uuid::new_v4();
        for inv in [Invalidation::Session(id), Invalidation::User(id)] {
            assert_eq!(Invalidation::decode(inv.encode().as_bytes()), Some(inv));
        }
        assert_eq!(Invalidation::decode(b"x:1"), None);
        assert_eq!(Invalidation::decode(b"s:not-a-uuid"), None);
        assert_eq!(Invalidation::decode(&[0xff, 0xfe]), None);
    }
}
