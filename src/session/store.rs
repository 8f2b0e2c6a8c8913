//! Where sessions live: Redis (production, shared by every pod) or this process (embedded
//! default, single node). Key layout, one per deployment:
//! - `{prefix}{u:<uid>}:session:<sid>`: hash of the [`SessionRecord`] plus refresh-rotation
//!   state; EXPIREAT = absolute end, or earlier with an idle timeout;
//! - `{prefix}{u:<uid>}:session:<sid>:used`: set of the hashes of rotated refresh tokens;
//! - `{prefix}{u:<uid>}:sessions`: sorted set of the user's sids scored by absolute expiry;
//! - `{prefix}{u:<uid>}:disabled`: the account is cut off (disabled or deleted, or being so):
//!   no session of the user is created or refreshed. Set together with the revocation of all
//!   the user's sessions, before the database change; lives longer than any session could.
//!
//! The hash carries MACs over what it grants (see [`super::seal`]); a record whose MAC does not
//! verify is treated as revoked: refused, deleted, logged and counted.
//!
//! All keys of one user share the `{u:<uid>}` hash tag, so each script or MULTI touches one
//! Redis Cluster slot. Every call is bounded by the Redis timeout: a slow Redis gives 503, not a
//! pile-up.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};
use prometheus::IntCounter;
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, AsyncCommands, Script};
use uuid::Uuid;

use crate::{
    auth::{Access, SharedAccess},
    metrics::CallMetrics,
};

use super::{
    now_unix,
    seal::{Grant, RotationState, SealKeys},
    Created, Invalidation, Lifetimes, RefreshToken, Rotation, SessionError, SessionRecord,
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

fn grant<'a>(roles: &'a str, permissions: &'a str, expires_at: i64) -> Grant<'a> {
    Grant {
        roles,
        permissions,
        expires_at,
    }
}

/// Role names and permissions never contain commas (see `auth::access`), so a comma-joined
/// field is unambiguous.
fn list_field(items: &[String]) -> String {
    items.join(",")
}

fn parse_list(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_access(roles: &str, permissions: &str) -> SharedAccess {
    Arc::new(Access::new(parse_list(roles), parse_list(permissions)))
}

/// The sealed grant of every session of a user still in Redis: `sid, roles, permissions,
/// expires_at, grant_mac` per session, flat. Rust checks each seal before re-sealing.
static READ_GRANTS: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, sid in ipairs(sids) do
  local key = ARGV[1] .. sid
  if redis.call('EXISTS', key) == 1 then
    local f = redis.call('HMGET', key, 'roles', 'permissions', 'expires_at', 'grant_mac')
    table.insert(out, sid)
    for i = 1, 4 do table.insert(out, f[i] or '') end
  end
end
return out",
    )
});

/// Rewrites the roles, permissions and grant MAC (computed in Rust per session; ARGV[6..] are
/// sid, MAC pairs) of the sessions that still exist, and announces the change.
static SET_ACCESS: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for i = 6, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'roles', ARGV[2], 'permissions', ARGV[3], 'grant_mac', ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return n",
    )
});

static TOUCH: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local exp = redis.call('HGET', KEYS[1], 'expires_at')
if not exp then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_at', ARGV[1])
local idle = tonumber(ARGV[2])
if idle > 0 then
  redis.call('EXPIREAT', KEYS[1], math.min(tonumber(exp), tonumber(ARGV[1]) + idle))
end
return 1",
    )
});

/// Deletes one session; only a session that existed is announced, so naming someone else's
/// session id cannot evict it anywhere.
static REVOKE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1",
    )
});

static REVOKE_ALL: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local revoked = {}
for _, sid in ipairs(sids) do
  if sid ~= ARGV[2] then
    local n = redis.call('DEL', ARGV[1] .. sid)
    redis.call('DEL', ARGV[1] .. sid .. ':used')
    redis.call('ZREM', KEYS[1], sid)
    if n > 0 then table.insert(revoked, sid) end
  end
end
if #revoked > 0 then redis.call('PUBLISH', ARGV[3], 's:' .. table.concat(revoked, ',')) end
return revoked",
    )
});

/// One rotation step. The presented token is rotated only if it is the current one and the
/// record's token MAC is the one Rust computed for it (ARGV[10], or ARGV[11] under the previous
/// key): a refresh_hash written by someone else is deleted and announced instead ('unsealed'),
/// so a forged hash never turns into a properly sealed successor. The new token and rotation
/// MACs (ARGV[12], ARGV[13]) come from Rust, which knows the whole new state. The grant (and,
/// when replayed, the rotation state) comes back with its MAC for Rust to verify before
/// anything is handed out.
static ROTATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {'invalid'} end
local f = redis.call('HMGET', KEYS[1], 'refresh_hash', 'prev_hash', 'rotated_at', 'succ_sealed',
  'succ_jti', 'expires_at', 'roles', 'permissions', 'token_mac', 'grant_mac', 'rotation_mac')
if not f[1] then return {'invalid'} end
local now = tonumber(ARGV[3])
local function revoke()
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('PUBLISH', ARGV[7], 's:' .. ARGV[8])
end
if f[1] == ARGV[1] then
  local sealed = f[9] and (f[9] == ARGV[10] or (ARGV[11] ~= '' and f[9] == ARGV[11]))
  local exp = tonumber(f[6])
  if not sealed or not exp then
    revoke()
    return {'unsealed'}
  end
  redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'prev_hash', ARGV[1], 'rotated_at', ARGV[3],
    'succ_sealed', ARGV[5], 'succ_jti', ARGV[6], 'last_seen_at', ARGV[3],
    'token_mac', ARGV[12], 'rotation_mac', ARGV[13])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('EXPIREAT', KEYS[3], exp)
  local idle = tonumber(ARGV[9])
  if idle > 0 then redis.call('EXPIREAT', KEYS[1], math.min(exp, now + idle)) end
  return {'rotated', f[6], f[7] or '', f[8] or '', f[10] or ''}
end
local rotated_at = tonumber(f[3])
if f[2] == ARGV[1] and rotated_at and now - rotated_at <= tonumber(ARGV[4]) then
  return {'replayed', f[6] or '', f[7] or '', f[3], f[4] or '', f[5] or '', f[8] or '',
    f[10] or '', f[11] or ''}
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  revoke()
  return {'reused'}
end
return {'invalid'}",
    )
});

/// Sets the cut-off marker and revokes every session of the user, atomically; announces the
/// revoked sessions and the user (so in-flight reads of any of its sessions are not cached).
static CUT_OFF: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
local revoked = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('DEL', ARGV[1] .. sid) > 0 then table.insert(revoked, sid) end
  redis.call('DEL', ARGV[1] .. sid .. ':used')
end
redis.call('DEL', KEYS[1])
if #revoked > 0 then redis.call('PUBLISH', ARGV[3], 's:' .. table.concat(revoked, ',')) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return revoked",
    )
});

/// The last step of the create transaction (EVAL inside MULTI, so it is atomic with the HSET
/// before it; EVAL and not EVALSHA, since a NOSCRIPT inside MULTI would not undo the rest).
/// Undoes the creation if the account is cut off; otherwise ends the oldest sessions beyond
/// the cap (ARGV[3], 0 = none): oldest by created_at, then by id (v7 ids sort by creation).
const CREATE_GUARD: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', ARGV[1] .. ARGV[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
  return {'cut_off'}
end
local max = tonumber(ARGV[3])
if max == 0 then return {'stored'} end
local others = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if sid ~= ARGV[2] then
    local c = redis.call('HGET', ARGV[1] .. sid, 'created_at')
    if c then table.insert(others, {tonumber(c), sid}) else redis.call('ZREM', KEYS[1], sid) end
  end
end
local reply = {'stored'}
local excess = #others + 1 - max
if excess <= 0 then return reply end
table.sort(others, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
for i = 1, excess do
  local sid = others[i][2]
  redis.call('DEL', ARGV[1] .. sid, ARGV[1] .. sid .. ':used')
  redis.call('ZREM', KEYS[1], sid)
  table.insert(reply, sid)
end
redis.call('PUBLISH', ARGV[4], 's:' .. table.concat(reply, ',', 2))
return reply";

const RECORD_FIELDS: [&str; 10] = [
    "user_id",
    "created_at",
    "last_seen_at",
    "expires_at",
    "ip",
    "user_agent",
    "roles",
    "refresh_hash",
    "permissions",
    "grant_mac",
];

/// Every Redis call: bounded by the timeout (a slow Redis gives 503, not a pile-up), timed and
/// counted by operation.
pub(crate) async fn bounded_redis<T>(
    timeout: Duration,
    metrics: &CallMetrics,
    op: &'static str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SessionError> {
    let call = async {
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(SessionError::from),
            Err(_) => Err(SessionError::Unavailable("Redis call timed out".into())),
        }
    };
    metrics.observe(op, call).await
}

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    channel: Arc<str>,
    timeout: Duration,
    lifetimes: Lifetimes,
    metrics: CallMetrics,
    /// Shared: the keyed HMAC states are large, and every clone of the store would copy them.
    seal: Arc<SealKeys>,
    seal_failures: IntCounter,
}

impl RedisStore {
    /// `seal`: the keys of the record MACs; `seal_failures` counts records that failed them.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        lifetimes: Lifetimes,
        metrics: CallMetrics,
        seal: SealKeys,
        seal_failures: IntCounter,
    ) -> Result<Self, SessionError> {
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
            lifetimes,
            metrics,
            seal: Arc::new(seal),
            seal_failures,
        })
    }

    /// A clone of the shared multiplexed connection (rate limiting uses the same Redis).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
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

    /// `{prefix}{u:<uid>}:session:` — the session keys of one user start with this.
    fn session_prefix(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:session:", self.prefix)
    }

    pub fn session_key(&self, uid: Uuid, sid: Uuid) -> String {
        format!("{}{sid}", self.session_prefix(uid))
    }

    fn used_key(&self, uid: Uuid, sid: Uuid) -> String {
        format!("{}{sid}:used", self.session_prefix(uid))
    }

    pub fn index_key(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:sessions", self.prefix)
    }

    pub fn cut_off_key(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:disabled", self.prefix)
    }

    fn idle_secs(&self) -> u64 {
        self.lifetimes.idle_timeout.map_or(0, |d| d.as_secs())
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionError> {
        bounded_redis(self.timeout, &self.metrics, op, fut).await
    }

    async fn create(&self, rec: &SessionRecord) -> Result<Created, SessionError> {
        let key = self.session_key(rec.user_id, rec.session_id);
        let index = self.index_key(rec.user_id);
        let (roles, permissions) = (
            list_field(&rec.access.roles),
            list_field(&rec.access.permissions),
        );
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
            .arg("roles")
            .arg(&roles)
            .arg("permissions")
            .arg(&permissions)
            .arg("refresh_hash")
            .arg(&rec.refresh_hash)
            .arg("grant_mac")
            .arg(self.seal.seal_grant(
                rec.user_id,
                rec.session_id,
                &grant(&roles, &permissions, rec.expires_at),
            ))
            .arg("token_mac")
            .arg(
                self.seal
                    .seal_token(rec.user_id, rec.session_id, &rec.refresh_hash),
            );
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
            .expire_at(
                &key,
                self.lifetimes.end_at(rec.expires_at, rec.last_seen_at),
            )
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
            .ignore()
            .cmd("EVAL")
            .arg(CREATE_GUARD)
            .arg(2)
            .arg(&index)
            .arg(self.cut_off_key(rec.user_id))
            .arg(self.session_prefix(rec.user_id))
            .arg(rec.session_id.to_string())
            .arg(self.lifetimes.max_sessions)
            .arg(&*self.channel);
        let mut conn = self.conn.clone();
        let (reply,): (Vec<String>,) = self.bounded("create", pipe.query_async(&mut conn)).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("stored") => Created::Stored {
                evicted: reply[1..]
                    .iter()
                    .filter_map(|s| Uuid::parse_str(s).ok())
                    .collect(),
            },
            _ => Created::AccountCutOff,
        })
    }

    async fn cut_off(&self, uid: Uuid) -> Result<Vec<Uuid>, SessionError> {
        let mut conn = self.conn.clone();
        let mut call = CUT_OFF.key(self.index_key(uid));
        call.key(self.cut_off_key(uid))
            .arg(self.session_prefix(uid))
            .arg(self.lifetimes.cut_off_ttl().as_secs())
            .arg(&*self.channel)
            .arg(Invalidation::User(uid).encode());
        let revoked: Vec<String> = self
            .bounded("cut_off", call.invoke_async(&mut conn))
            .await?;
        Ok(revoked
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    async fn restore(&self, uid: Uuid) -> Result<(), SessionError> {
        let mut conn = self.conn.clone();
        let key = self.cut_off_key(uid);
        self.bounded("restore", conn.del::<_, ()>(&key)).await
    }

    async fn is_cut_off(&self, uid: Uuid) -> Result<bool, SessionError> {
        let mut conn = self.conn.clone();
        let key = self.cut_off_key(uid);
        self.bounded("is_cut_off", conn.exists::<_, bool>(&key))
            .await
    }

    async fn load(&self, uid: Uuid, sid: Uuid) -> Result<Option<SessionState>, SessionError> {
        let key = self.session_key(uid, sid);
        let mut conn = self.conn.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (user_id, expires_at, last_seen_at, roles, permissions, mac): Fields = self
            .bounded(
                "load",
                conn.hmget(
                    &key,
                    &[
                        "user_id",
                        "expires_at",
                        "last_seen_at",
                        "roles",
                        "permissions",
                        "grant_mac",
                    ],
                ),
            )
            .await?;
        if user_id.is_none() && expires_at.is_none() {
            return Ok(None);
        }
        let (roles, permissions) = (roles.unwrap_or_default(), permissions.unwrap_or_default());
        let Some(expires_at) = self.verified_expiry(
            uid,
            sid,
            user_id.as_deref(),
            expires_at.as_deref(),
            &roles,
            &permissions,
            mac.as_deref(),
        ) else {
            self.unsealed(uid, sid, "load").await;
            return Ok(None);
        };
        let last_seen_at = last_seen_at.unwrap_or(0);
        if !self.lifetimes.is_live(expires_at, last_seen_at, now_unix()) {
            return Ok(None);
        }
        Ok(Some(SessionState {
            user_id: uid,
            expires_at,
            last_seen_at,
            access: parse_access(&roles, &permissions),
        }))
    }

    /// The record's absolute expiry if its grant MAC verifies for this user and session (and a
    /// stored user id agrees with the key); `None`: the record must not be believed.
    #[allow(clippy::too_many_arguments)]
    fn verified_expiry(
        &self,
        uid: Uuid,
        sid: Uuid,
        user_id: Option<&str>,
        expires_at: Option<&str>,
        roles: &str,
        permissions: &str,
        mac: Option<&str>,
    ) -> Option<i64> {
        let expires_at: i64 = expires_at?.parse().ok()?;
        let mac = mac.filter(|m| !m.is_empty())?;
        let ok = user_id.is_none_or(|u| Uuid::parse_str(u).ok() == Some(uid))
            && self
                .seal
                .verify_grant(uid, sid, &grant(roles, permissions, expires_at), mac);
        ok.then_some(expires_at)
    }

    /// A record that failed its seal: counted, logged (ids only) and revoked on every pod, best
    /// effort (a record whose delete failed keeps failing its seal, so it stays unusable).
    async fn unsealed(&self, uid: Uuid, sid: Uuid, during: &'static str) {
        self.seal_failures.inc();
        tracing::warn!(user_id = %uid, session_id = %sid, during, "session record failed its seal; revoking it");
        if let Err(e) = self.revoke(uid, sid).await {
            tracing::warn!(user_id = %uid, session_id = %sid, error = %e, "could not revoke a session record that failed its seal");
        }
    }

    async fn touch(&self, uid: Uuid, sid: Uuid, now: i64) -> Result<bool, SessionError> {
        let mut conn = self.conn.clone();
        let mut call = TOUCH.key(self.session_key(uid, sid));
        call.arg(now).arg(self.idle_secs());
        let alive: i64 = self.bounded("touch", call.invoke_async(&mut conn)).await?;
        Ok(alive == 1)
    }

    async fn revoke(&self, uid: Uuid, sid: Uuid) -> Result<bool, SessionError> {
        let mut conn = self.conn.clone();
        let mut call = REVOKE.key(self.session_key(uid, sid));
        call.key(self.used_key(uid, sid))
            .key(self.index_key(uid))
            .arg(sid.to_string())
            .arg(&*self.channel)
            .arg(Invalidation::session(sid).encode());
        let deleted: i64 = self.bounded("revoke", call.invoke_async(&mut conn)).await?;
        Ok(deleted == 1)
    }

    async fn revoke_all(&self, uid: Uuid, except: Option<Uuid>) -> Result<Vec<Uuid>, SessionError> {
        let mut conn = self.conn.clone();
        let mut call = REVOKE_ALL.key(self.index_key(uid));
        call.arg(self.session_prefix(uid))
            .arg(except.map(|s| s.to_string()).unwrap_or_default())
            .arg(&*self.channel);
        let revoked: Vec<String> = self
            .bounded("revoke_all", call.invoke_async(&mut conn))
            .await?;
        Ok(revoked
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    /// Two steps, because each session's new grant MAC covers its expires_at, which only Redis
    /// has: read every session's sealed grant and check it (a record that fails is revoked, not
    /// re-sealed, or a role change would launder a forged expiry), then write the new roles
    /// with a MAC per session where the session still exists. A session created between the
    /// two steps is covered by its login's own re-check of the account.
    async fn set_access(&self, uid: Uuid, access: &Access) -> Result<usize, SessionError> {
        let mut conn = self.conn.clone();
        let mut read = READ_GRANTS.key(self.index_key(uid));
        read.arg(self.session_prefix(uid));
        let rows: Vec<String> = self
            .bounded("set_access_read", read.invoke_async(&mut conn))
            .await?;
        let (roles, permissions) = (list_field(&access.roles), list_field(&access.permissions));
        let mut write = SET_ACCESS.key(self.index_key(uid));
        write
            .arg(self.session_prefix(uid))
            .arg(&roles)
            .arg(&permissions)
            .arg(&*self.channel)
            .arg(Invalidation::Access(uid).encode());
        let (mut sealed, mut unsealed) = (0, Vec::new());
        for row in rows.chunks_exact(5) {
            let Ok(sid) = Uuid::parse_str(&row[0]) else {
                continue;
            };
            match self.verified_expiry(
                uid,
                sid,
                None,
                Some(&row[3]),
                &row[1],
                &row[2],
                Some(&row[4]),
            ) {
                Some(expires_at) => {
                    let mac =
                        self.seal
                            .seal_grant(uid, sid, &grant(&roles, &permissions, expires_at));
                    write.arg(sid.to_string()).arg(mac);
                    sealed += 1;
                }
                None => unsealed.push(sid),
            }
        }
        for sid in unsealed {
            self.unsealed(uid, sid, "set_access").await;
        }
        if sealed == 0 {
            return Ok(0);
        }
        self.bounded("set_access", write.invoke_async(&mut conn))
            .await
    }

    async fn list(&self, uid: Uuid) -> Result<Vec<SessionRecord>, SessionError> {
        let index = self.index_key(uid);
        let mut conn = self.conn.clone();
        let sids: Vec<String> = self
            .bounded("list_index", async {
                let _: () = conn.zrembyscore(&index, "-inf", now_unix()).await?;
                conn.zrange(&index, 0, -1).await
            })
            .await?;
        if sids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for sid in &sids {
            pipe.cmd("HMGET")
                .arg(format!("{}{sid}", self.session_prefix(uid)))
                .arg(&RECORD_FIELDS);
        }
        type Fields = (
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Fields> = self.bounded("list", pipe.query_async(&mut conn)).await?;
        let (mut live, mut gone, mut unsealed) = (Vec::new(), Vec::new(), Vec::new());
        let now = now_unix();
        for (sid, row) in sids.iter().zip(rows) {
            let Ok(session_id) = Uuid::parse_str(sid) else {
                continue;
            };
            let (user, created_at, last_seen_at, expires_at, ip, user_agent) =
                (row.0, row.1, row.2, row.3, row.4, row.5);
            let (roles, hash, permissions, mac) = (
                row.6.unwrap_or_default(),
                row.7,
                row.8.unwrap_or_default(),
                row.9,
            );
            if user.is_none() && expires_at.is_none() {
                gone.push(sid.clone());
                continue;
            }
            let Some(expires_at) = self.verified_expiry(
                uid,
                session_id,
                user.as_deref(),
                expires_at.as_deref(),
                &roles,
                &permissions,
                mac.as_deref(),
            ) else {
                unsealed.push(session_id);
                continue;
            };
            match (created_at, last_seen_at) {
                (Some(created_at), Some(last_seen_at))
                    if now < self.lifetimes.end_at(expires_at, last_seen_at) =>
                {
                    live.push(SessionRecord {
                        session_id,
                        user_id: uid,
                        created_at,
                        last_seen_at,
                        expires_at,
                        ip,
                        user_agent,
                        access: parse_access(&roles, &permissions),
                        refresh_hash: hash.unwrap_or_default(),
                    })
                }
                _ => gone.push(sid.clone()),
            }
        }
        for sid in unsealed {
            self.unsealed(uid, sid, "list").await;
        }
        if !gone.is_empty() {
            let _: () = self.bounded("list_prune", conn.zrem(&index, gone)).await?;
        }
        live.sort_by_key(|r| (r.created_at, r.session_id));
        Ok(live)
    }

    async fn rotate(
        &self,
        presented: &RefreshToken,
        successor: &RefreshToken,
        jti: Uuid,
        now: i64,
    ) -> Result<Rotation, SessionError> {
        let (uid, sid) = (presented.user_id, presented.session_id);
        let (presented_hash, successor_hash) = (presented.hash(), successor.hash());
        let sealed_successor = presented.seal(successor);
        let jti_text = jti.to_string();
        let (expected, expected_previous) =
            self.seal.expected_token_macs(uid, sid, &presented_hash);
        let rotation_mac = self.seal.seal_rotation(
            uid,
            sid,
            &RotationState {
                prev_hash: &presented_hash,
                rotated_at: now,
                succ_sealed: &sealed_successor,
                succ_jti: &jti_text,
            },
        );
        let mut conn = self.conn.clone();
        let mut call = ROTATE.key(self.session_key(uid, sid));
        call.key(self.index_key(uid))
            .key(self.used_key(uid, sid))
            .key(self.cut_off_key(uid))
            .arg(&presented_hash)
            .arg(&successor_hash)
            .arg(now)
            .arg(self.lifetimes.reuse_grace.as_secs())
            .arg(&sealed_successor)
            .arg(&jti_text)
            .arg(&*self.channel)
            .arg(sid.to_string())
            .arg(self.idle_secs())
            .arg(expected)
            .arg(expected_previous.unwrap_or_default())
            .arg(self.seal.seal_token(uid, sid, &successor_hash))
            .arg(rotation_mac);
        let reply: Vec<String> = self.bounded("rotate", call.invoke_async(&mut conn)).await?;
        let text = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
        // The grant's expiry if its MAC verifies (fields at these positions of the reply).
        let grant_at = |exp: usize, roles: usize, permissions: usize, mac: usize| {
            let (exp, mac) = (Some(text(exp)), Some(text(mac)));
            self.verified_expiry(uid, sid, None, exp, text(roles), text(permissions), mac)
        };
        let outcome = match text(0) {
            "rotated" => match grant_at(1, 2, 3, 4) {
                Some(expires_at) if now < expires_at => Rotation::Rotated {
                    expires_at,
                    access: parse_access(text(2), text(3)),
                },
                Some(_) => Rotation::Invalid,
                None => self.unsealed_rotation(uid, sid, true).await,
            },
            "replayed" => {
                let rotation = match (text(3).parse::<i64>(), Uuid::parse_str(text(5))) {
                    (Ok(rotated_at), Ok(jti)) => {
                        let state = RotationState {
                            prev_hash: &presented_hash,
                            rotated_at,
                            succ_sealed: text(4),
                            succ_jti: text(5),
                        };
                        self.seal
                            .verify_rotation(uid, sid, &state, text(8))
                            .then_some((rotated_at, jti))
                    }
                    _ => None,
                };
                match (grant_at(1, 2, 6, 7), rotation) {
                    (Some(expires_at), Some((rotated_at, jti))) if now < expires_at => {
                        Rotation::Replayed {
                            expires_at,
                            access: parse_access(text(2), text(6)),
                            rotated_at,
                            sealed_successor: text(4).to_string(),
                            jti,
                        }
                    }
                    (Some(_), Some(_)) => Rotation::Invalid,
                    _ => self.unsealed_rotation(uid, sid, true).await,
                }
            }
            // The script has already deleted and announced it.
            "unsealed" => self.unsealed_rotation(uid, sid, false).await,
            "reused" => Rotation::Reused,
            _ => Rotation::Invalid,
        };
        Ok(outcome)
    }

    /// A refresh met a record that failed its seal: counted, logged and revoked (unless the
    /// script already did that).
    async fn unsealed_rotation(&self, uid: Uuid, sid: Uuid, revoke: bool) -> Rotation {
        if revoke {
            self.unsealed(uid, sid, "refresh").await;
        } else {
            self.seal_failures.inc();
            tracing::warn!(user_id = %uid, session_id = %sid, during = "refresh", "session record failed its seal; revoked it");
        }
        Rotation::Unsealed
    }

    pub async fn ping(&self) -> Result<(), SessionError> {
        let mut conn = self.conn.clone();
        self.bounded("ping", redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}

/// One in-process session with its rotation state.
struct MemSession {
    rec: SessionRecord,
    prev_hash: Option<String>,
    rotated_at: i64,
    sealed_successor: String,
    jti: Uuid,
    used: HashSet<String>,
}

/// Sessions in this process, for the embedded single-node default. Entries expire at the
/// session's absolute end; idle ones are dropped when next looked at.
#[derive(Clone)]
pub struct MemoryStore {
    sessions: Cache<Uuid, Arc<Mutex<MemSession>>>,
    by_user: Arc<Mutex<HashMap<Uuid, HashSet<Uuid>>>>,
    /// Cut-off accounts and until when (unix seconds). Held across a create and across a
    /// cut-off, so the two are atomic with respect to each other (as the scripts are in Redis).
    cut_offs: Arc<tokio::sync::Mutex<HashMap<Uuid, i64>>>,
    lifetimes: Lifetimes,
}

struct UntilSessionEnd;

impl Expiry<Uuid, Arc<Mutex<MemSession>>> for UntilSessionEnd {
    fn expire_after_create(
        &self,
        _: &Uuid,
        s: &Arc<Mutex<MemSession>>,
        _: Instant,
    ) -> Option<Duration> {
        let expires_at = s.lock().map_or(0, |s| s.rec.expires_at);
        Some(Duration::from_secs((expires_at - now_unix()).max(0) as u64))
    }
}

impl MemoryStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            sessions: Cache::builder().expire_after(UntilSessionEnd).build(),
            by_user: Arc::default(),
            cut_offs: Arc::default(),
            lifetimes,
        }
    }

    fn marked(cut_offs: &HashMap<Uuid, i64>, uid: Uuid) -> bool {
        cut_offs.get(&uid).is_some_and(|until| *until > now_unix())
    }

    /// The user's live session, dropping it if it has ended.
    async fn live(&self, uid: Uuid, sid: Uuid) -> Option<Arc<Mutex<MemSession>>> {
        let entry = self.sessions.get(&sid).await?;
        let live = entry.lock().ok().is_some_and(|s| {
            s.rec.user_id == uid
                && self
                    .lifetimes
                    .is_live(s.rec.expires_at, s.rec.last_seen_at, now_unix())
        });
        if live {
            return Some(entry);
        }
        if entry.lock().is_ok_and(|s| s.rec.user_id == uid) {
            self.remove(uid, sid).await;
        }
        None
    }

    fn user_sids(&self, uid: Uuid) -> Vec<Uuid> {
        self.by_user
            .lock()
            .map(|idx| {
                idx.get(&uid)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    async fn remove(&self, uid: Uuid, sid: Uuid) -> bool {
        if let Ok(mut idx) = self.by_user.lock() {
            if let Some(set) = idx.get_mut(&uid) {
                set.remove(&sid);
                if set.is_empty() {
                    idx.remove(&uid);
                }
            }
        }
        self.sessions.remove(&sid).await.is_some()
    }

    async fn create(&self, rec: &SessionRecord) -> Created {
        let cut_offs = self.cut_offs.lock().await;
        if Self::marked(&cut_offs, rec.user_id) {
            return Created::AccountCutOff;
        }
        if let Ok(mut idx) = self.by_user.lock() {
            idx.entry(rec.user_id).or_default().insert(rec.session_id);
        }
        let session = MemSession {
            rec: rec.clone(),
            prev_hash: None,
            rotated_at: 0,
            sealed_successor: String::new(),
            jti: Uuid::nil(),
            used: HashSet::new(),
        };
        self.sessions
            .insert(rec.session_id, Arc::new(Mutex::new(session)))
            .await;
        let mut evicted = Vec::new();
        let max = self.lifetimes.max_sessions;
        if max > 0 {
            let mut others: Vec<(i64, Uuid)> = Vec::new();
            for sid in self.user_sids(rec.user_id) {
                if sid == rec.session_id {
                    continue;
                }
                match self.live(rec.user_id, sid).await {
                    Some(entry) => {
                        if let Ok(s) = entry.lock() {
                            others.push((s.rec.created_at, sid));
                        }
                    }
                    None => {
                        self.remove(rec.user_id, sid).await;
                    }
                }
            }
            // Oldest first: by creation second, then by id (v7 ids sort by creation).
            others.sort();
            let excess = (others.len() + 1).saturating_sub(max);
            for (_, sid) in others.into_iter().take(excess) {
                if self.remove(rec.user_id, sid).await {
                    evicted.push(sid);
                }
            }
        }
        drop(cut_offs);
        Created::Stored { evicted }
    }

    async fn cut_off(&self, uid: Uuid) -> Vec<Uuid> {
        let mut cut_offs = self.cut_offs.lock().await;
        let now = now_unix();
        cut_offs.retain(|_, until| *until > now);
        cut_offs.insert(uid, now + self.lifetimes.cut_off_ttl().as_secs() as i64);
        let revoked = self.revoke_all(uid, None).await;
        drop(cut_offs);
        revoked
    }

    async fn restore(&self, uid: Uuid) {
        self.cut_offs.lock().await.remove(&uid);
    }

    async fn is_cut_off(&self, uid: Uuid) -> bool {
        Self::marked(&*self.cut_offs.lock().await, uid)
    }

    async fn load(&self, uid: Uuid, sid: Uuid) -> Option<SessionState> {
        let entry = self.live(uid, sid).await?;
        let s = entry.lock().ok()?;
        Some(SessionState {
            user_id: uid,
            expires_at: s.rec.expires_at,
            last_seen_at: s.rec.last_seen_at,
            access: s.rec.access.clone(),
        })
    }

    async fn touch(&self, uid: Uuid, sid: Uuid, now: i64) -> bool {
        let Some(entry) = self.live(uid, sid).await else {
            return false;
        };
        let touched = match entry.lock() {
            Ok(mut s) => {
                s.rec.last_seen_at = s.rec.last_seen_at.max(now);
                true
            }
            Err(_) => false,
        };
        touched
    }

    async fn revoke(&self, uid: Uuid, sid: Uuid) -> bool {
        match self.sessions.get(&sid).await {
            Some(s) if s.lock().is_ok_and(|s| s.rec.user_id == uid) => self.remove(uid, sid).await,
            _ => false,
        }
    }

    async fn revoke_all(&self, uid: Uuid, except: Option<Uuid>) -> Vec<Uuid> {
        let sids = self.user_sids(uid);
        let mut revoked = Vec::new();
        for sid in sids.into_iter().filter(|s| Some(*s) != except) {
            if self.remove(uid, sid).await {
                revoked.push(sid);
            }
        }
        revoked
    }

    async fn set_access(&self, uid: Uuid, access: &Access) -> usize {
        let mut n = 0;
        for sid in self.user_sids(uid) {
            if let Some(entry) = self.live(uid, sid).await {
                if let Ok(mut s) = entry.lock() {
                    s.rec.access = Arc::new(access.clone());
                    n += 1;
                }
            }
        }
        n
    }

    async fn list(&self, uid: Uuid) -> Vec<SessionRecord> {
        let sids = self.user_sids(uid);
        let mut out = Vec::new();
        for sid in sids {
            if let Some(entry) = self.live(uid, sid).await {
                if let Ok(s) = entry.lock() {
                    out.push(s.rec.clone());
                }
            } else {
                self.remove(uid, sid).await;
            }
        }
        out.sort_by_key(|r| (r.created_at, r.session_id));
        out
    }

    async fn rotate(
        &self,
        presented: &RefreshToken,
        successor: &RefreshToken,
        jti: Uuid,
        now: i64,
    ) -> Rotation {
        let (uid, sid) = (presented.user_id, presented.session_id);
        if self.is_cut_off(uid).await {
            return Rotation::Invalid;
        }
        let Some(entry) = self.live(uid, sid).await else {
            return Rotation::Invalid;
        };
        let hash = presented.hash();
        let reused = {
            let Ok(mut s) = entry.lock() else {
                return Rotation::Invalid;
            };
            if s.rec.refresh_hash == hash {
                let previous = std::mem::replace(&mut s.rec.refresh_hash, successor.hash());
                s.used.insert(previous.clone());
                s.prev_hash = Some(previous);
                s.rotated_at = now;
                s.sealed_successor = presented.seal(successor);
                s.jti = jti;
                s.rec.last_seen_at = now;
                return Rotation::Rotated {
                    expires_at: s.rec.expires_at,
                    access: s.rec.access.clone(),
                };
            }
            if s.prev_hash.as_deref() == Some(hash.as_str())
                && now - s.rotated_at <= self.lifetimes.reuse_grace.as_secs() as i64
            {
                return Rotation::Replayed {
                    expires_at: s.rec.expires_at,
                    access: s.rec.access.clone(),
                    rotated_at: s.rotated_at,
                    sealed_successor: s.sealed_successor.clone(),
                    jti: s.jti,
                };
            }
            s.used.contains(&hash)
        };
        if reused {
            self.remove(uid, sid).await;
            Rotation::Reused
        } else {
            Rotation::Invalid
        }
    }
}
