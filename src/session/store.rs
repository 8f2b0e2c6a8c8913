//! Where sessions live: Redis (production, shared by every pod) or this process (embedded
//! default, single node). Key layout, one per deployment:
//! - `{prefix}{u:<uid>}:session:<sid>`: hash of the [`SessionRecord`], EXPIREAT = absolute end;
//! - `{prefix}{u:<uid>}:sessions`: sorted set of the user's sids scored by expiry.
//!
//! Both keys of one user share the `{u:<uid>}` hash tag so one MULTI can touch them on Redis
//! Cluster too. Every call is bounded by the Redis timeout: a slow Redis gives 503, not a pile-up.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, AsyncCommands};
use uuid::Uuid;

use super::{now_unix, Invalidation, SessionError, SessionRecord, SessionState};

#[derive(Clone)]
pub enum SessionStore {
    Redis(RedisStore),
    Memory(MemoryStore),
}

impl SessionStore {
    pub async fn create(&self, rec: &SessionRecord) -> Result<(), SessionError> {
        match self {
            SessionStore::Redis(r) => r.create(rec).await,
            SessionStore::Memory(m) => {
                m.create(rec).await;
                Ok(())
            }
        }
    }

    pub async fn load(&self, uid: Uuid, sid: Uuid) -> Result<Option<SessionState>, SessionError> {
        match self {
            SessionStore::Redis(r) => r.load(uid, sid).await,
            SessionStore::Memory(m) => Ok(m.load(uid, sid).await),
        }
    }

    /// Deletes the session and (Redis) publishes its invalidation in the same transaction.
    /// `Ok(false)`: it was already gone.
    pub async fn revoke(&self, uid: Uuid, sid: Uuid) -> Result<bool, SessionError> {
        match self {
            SessionStore::Redis(r) => r.revoke(uid, sid).await,
            SessionStore::Memory(m) => Ok(m.revoke(uid, sid).await),
        }
    }

    pub async fn ping(&self) -> Result<(), SessionError> {
        match self {
            SessionStore::Redis(r) => r.ping().await,
            SessionStore::Memory(_) => Ok(()),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    channel: Arc<str>,
    timeout: Duration,
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, SessionError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout * 4))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout * 8,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| SessionError::Unavailable("timed out connecting to Redis".into()))??;
        Ok(Self {
            client,
            conn,
            prefix: Arc::from(prefix),
            channel: Arc::from(format!("{prefix}invalidate")),
            timeout,
        })
    }

    /// For the registry's dedicated pub/sub connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn session_key(&self, uid: Uuid, sid: Uuid) -> String {
        format!("{}{{u:{uid}}}:session:{sid}", self.prefix)
    }

    pub fn index_key(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:sessions", self.prefix)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(SessionError::from),
            Err(_) => Err(SessionError::Unavailable("Redis call timed out".into())),
        }
    }

    async fn create(&self, rec: &SessionRecord) -> Result<(), SessionError> {
        let key = self.session_key(rec.user_id, rec.session_id);
        let index = self.index_key(rec.user_id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("user_id")
            .arg(rec.user_id.to_string())
            .arg("created_at")
            .arg(rec.created_at)
            .arg("last_seen_at")
            .arg(rec.last_seen_at)
            .arg("expires_at")
            .arg(rec.expires_at)
            .arg("refresh_hash")
            .arg(&rec.refresh_hash);
        if let Some(ip) = &rec.ip {
            hset.arg("ip").arg(ip);
        }
        if let Some(ua) = &rec.user_agent {
            hset.arg("user_agent").arg(ua);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(hset)
            .ignore()
            .expire_at(&key, rec.expires_at)
            .ignore()
            .zrembyscore(&index, "-inf", rec.created_at)
            .ignore()
            .zadd(&index, rec.session_id.to_string(), rec.expires_at)
            .ignore()
            // The index lives as long as its longest session: NX sets a first TTL, GT extends it.
            .cmd("EXPIREAT")
            .arg(&index)
            .arg(rec.expires_at)
            .arg("NX")
            .ignore()
            .cmd("EXPIREAT")
            .arg(&index)
            .arg(rec.expires_at)
            .arg("GT")
            .ignore();
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }

    async fn load(&self, uid: Uuid, sid: Uuid) -> Result<Option<SessionState>, SessionError> {
        let key = self.session_key(uid, sid);
        let mut conn = self.conn.clone();
        let (user_id, expires_at): (Option<String>, Option<i64>) = self
            .bounded(conn.hmget(&key, &["user_id", "expires_at"]))
            .await?;
        let state = match (user_id, expires_at) {
            (Some(u), Some(expires_at)) if u == uid.to_string() => Some(SessionState {
                user_id: uid,
                expires_at,
            }),
            _ => None,
        };
        Ok(state.filter(|s| s.is_live(now_unix())))
    }

    async fn revoke(&self, uid: Uuid, sid: Uuid) -> Result<bool, SessionError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.session_key(uid, sid))
            .zrem(self.index_key(uid), sid.to_string())
            .ignore()
            .publish(&*self.channel, Invalidation::Session(sid).encode())
            .ignore();
        let mut conn = self.conn.clone();
        let (deleted,): (u32,) = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(deleted > 0)
    }

    pub async fn ping(&self) -> Result<(), SessionError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}

/// Sessions in this process, for the embedded single-node default. Entries expire at the
/// session's absolute end.
#[derive(Clone)]
pub struct MemoryStore {
    sessions: Cache<Uuid, Arc<SessionRecord>>,
}

struct UntilSessionEnd;

impl Expiry<Uuid, Arc<SessionRecord>> for UntilSessionEnd {
    fn expire_after_create(
        &self,
        _: &Uuid,
        rec: &Arc<SessionRecord>,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            (rec.expires_at - now_unix()).max(0) as u64
        ))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            sessions: Cache::builder().expire_after(UntilSessionEnd).build(),
        }
    }
}

impl MemoryStore {
    async fn create(&self, rec: &SessionRecord) {
        self.sessions
            .insert(rec.session_id, Arc::new(rec.clone()))
            .await;
    }

    async fn load(&self, uid: Uuid, sid: Uuid) -> Option<SessionState> {
        let rec = self.sessions.get(&sid).await?;
        let state = SessionState {
            user_id: rec.user_id,
            expires_at: rec.expires_at,
        };
        (rec.user_id == uid && state.is_live(now_unix())).then_some(state)
    }

    async fn revoke(&self, uid: Uuid, sid: Uuid) -> bool {
        match self.sessions.get(&sid).await {
            Some(rec) if rec.user_id == uid => self.sessions.remove(&sid).await.is_some(),
            _ => false,
        }
    }
}
