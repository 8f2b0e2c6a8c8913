//! Where sessions live, behind one front ([`SessionStore`]) the registry uses: Redis
//! ([`RedisStore`], production, shared by every pod) or this process ([`MemoryStore`], the
//! embedded single-node default). Both backends keep the same semantics; each file says how.
mod memory;
mod redis;
mod scripts;

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

use uuid::Uuid;

use crate::domain::Access;

use super::{
    AuthContext, Created, Lifetimes, RefreshToken, Rotation, SessionError, SessionRecord,
    SessionState,
};

#[derive(Clone)]
pub enum SessionStore {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// Dispatches to the backend; both implement the same semantics.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            SessionStore::Redis($s) => $call,
            SessionStore::Memory($s) => Ok($call),
        }
    };
}

impl SessionStore {
    pub fn lifetimes(&self) -> Lifetimes {
        match self {
            SessionStore::Redis(r) => r.lifetimes,
            SessionStore::Memory(m) => m.lifetimes,
        }
    }

    /// Stores the session unless the account is cut off; beyond MAX_SESSIONS_PER_USER the
    /// user's oldest sessions end in the same step (and, Redis, are announced to every pod).
    pub async fn create(&self, rec: &SessionRecord) -> Result<Created, SessionError> {
        dispatch!(self, s => s.create(rec).await)
    }

    /// Cuts the account off: marks it (no session is created or refreshed until
    /// [`restore`](Self::restore) or the marker's end) and revokes every session it has, in one
    /// atomic step, announced to every pod. Returns the revoked ids.
    pub async fn cut_off(&self, uid: Uuid) -> Result<Vec<Uuid>, SessionError> {
        dispatch!(self, s => s.cut_off(uid).await)
    }

    /// Lifts a cut-off (the account is enabled again, or its disabling was refused).
    pub async fn restore(&self, uid: Uuid) -> Result<(), SessionError> {
        dispatch!(self, s => s.restore(uid).await)
    }

    pub async fn is_cut_off(&self, uid: Uuid) -> Result<bool, SessionError> {
        dispatch!(self, s => s.is_cut_off(uid).await)
    }

    /// The session if it is live (not revoked, expired or idle).
    pub async fn load(&self, uid: Uuid, sid: Uuid) -> Result<Option<SessionState>, SessionError> {
        dispatch!(self, s => s.load(uid, sid).await)
    }

    /// Replaces how the session's user authenticated (POST /reauthenticate) and (Redis) has
    /// every pod read the session again. `Ok(false)`: it is gone.
    pub async fn reauthenticate(
        &self,
        uid: Uuid,
        sid: Uuid,
        auth: &AuthContext,
    ) -> Result<bool, SessionError> {
        dispatch!(self, s => s.reauthenticate(uid, sid, auth).await)
    }

    /// Records use of the session. `Ok(false)`: it is gone.
    pub async fn touch(&self, uid: Uuid, sid: Uuid, now: i64) -> Result<bool, SessionError> {
        dispatch!(self, s => s.touch(uid, sid, now).await)
    }

    /// Deletes the session and (Redis) publishes its invalidation in the same transaction.
    /// `Ok(false)`: it was already gone.
    pub async fn revoke(&self, uid: Uuid, sid: Uuid) -> Result<bool, SessionError> {
        dispatch!(self, s => s.revoke(uid, sid).await)
    }

    /// Revokes every session of the user but `except`; returns the revoked ids.
    pub async fn revoke_all(
        &self,
        uid: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>, SessionError> {
        dispatch!(self, s => s.revoke_all(uid, except).await)
    }

    /// Replaces the roles and permissions of every live session of the user and (Redis)
    /// announces the change to every pod. Returns how many sessions it touched.
    pub async fn set_access(&self, uid: Uuid, access: &Access) -> Result<usize, SessionError> {
        dispatch!(self, s => s.set_access(uid, access).await)
    }

    /// The user's live sessions, oldest first; prunes index entries of ended ones.
    pub async fn list(&self, uid: Uuid) -> Result<Vec<SessionRecord>, SessionError> {
        dispatch!(self, s => s.list(uid).await)
    }

    /// One atomic rotation step (see [`Rotation`]). `successor` is stored only if `presented` is
    /// the current token.
    pub async fn rotate(
        &self,
        presented: &RefreshToken,
        successor: &RefreshToken,
        jti: Uuid,
        now: i64,
    ) -> Result<Rotation, SessionError> {
        dispatch!(self, s => s.rotate(presented, successor, jti, now).await)
    }

    pub async fn ping(&self) -> Result<(), SessionError> {
        match self {
            SessionStore::Redis(r) => r.ping().await,
            SessionStore::Memory(_) => Ok(()),
        }
    }
}
