//! The Redis backend, shared by every pod. Key layout, one per deployment:
//! - `{prefix}{u:<uid>}:session:<sid>`: hash of the [`SessionRecord`] plus refresh-rotation
//!   state; EXPIREAT = absolute end, or earlier with an idle timeout;
//! - `{prefix}{u:<uid>}:session:<sid>:used`: set of the hashes of rotated refresh tokens;
//! - `{prefix}{u:<uid>}:sessions`: sorted set of the user's sids scored by absolute expiry;
//! - `{prefix}{u:<uid>}:disabled`: the account is cut off (disabled or deleted, or being so):
//!   no session of the user is created or refreshed. Set together with the revocation of all
//!   the user's sessions, before the database change; lives longer than any session could.
//!
//! The hash carries MACs over what it grants (see [`crate::session::seal`]); a record whose MAC
//! does not verify is treated as revoked: refused, deleted, logged and counted.
//!
//! All keys of one user share the `{u:<uid>}` hash tag, so each script or MULTI touches one
//! Redis Cluster slot. Every call is bounded by the Redis timeout: a slow Redis gives 503, not a
//! pile-up.
use std::sync::Arc;

use prometheus::IntCounter;
use redis::AsyncCommands;
use uuid::Uuid;

use crate::{
    domain::{Access, SharedAccess},
    redis::{Redis, ScriptCall},
    session::{
        now_unix,
        seal::{AuthFields, Grant, RotationState, SealKeys},
        AuthContext, Created, Invalidation, Lifetimes, RefreshToken, Rotation, SessionError,
        SessionRecord, SessionState, SharedAuth,
    },
};

use super::scripts::{
    CREATE_GUARD, CUT_OFF, READ_GRANTS, REAUTHENTICATE, REVOKE, REVOKE_ALL, ROTATE, SET_ACCESS,
    TOUCH,
};

fn grant<'a>(roles: &'a str, permissions: &'a str, expires_at: i64) -> Grant<'a> {
    Grant {
        roles,
        permissions,
        expires_at,
    }
}

/// Role names and permissions never contain commas (see `domain::role`), so a comma-joined
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

/// The stored form of an authentication: amr comma-joined (RFC 8176 values have no commas),
/// no provider as the empty string.
fn auth_fields(auth: &AuthContext) -> (String, String) {
    (auth.amr.join(","), auth.idp.clone().unwrap_or_default())
}

const RECORD_FIELDS: [&str; 14] = [
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
    "amr",
    "auth_time",
    "idp",
    "auth_mac",
];

#[derive(Clone)]
pub struct RedisStore {
    redis: Redis,
    channel: Arc<str>,
    pub(super) lifetimes: Lifetimes,
    /// Shared: the keyed HMAC states are large, and every clone of the store would copy them.
    seal: Arc<SealKeys>,
    seal_failures: IntCounter,
}

impl RedisStore {
    /// `seal`: the keys of the record MACs; `seal_failures` counts records that failed them.
    pub fn new(
        redis: Redis,
        lifetimes: Lifetimes,
        seal: SealKeys,
        seal_failures: IntCounter,
    ) -> Self {
        Self {
            channel: Arc::from(format!("{}invalidate", redis.prefix())),
            redis,
            lifetimes,
            seal: Arc::new(seal),
            seal_failures,
        }
    }

    /// The connection, for the registry's dedicated pub/sub connection.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Where every change is announced to every pod: `{prefix}invalidate`.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// `{prefix}{u:<uid>}:session:` — the session keys of one user start with this.
    fn session_prefix(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:session:", self.redis.prefix())
    }

    fn session_key(&self, uid: Uuid, sid: Uuid) -> String {
        format!("{}{sid}", self.session_prefix(uid))
    }

    fn used_key(&self, uid: Uuid, sid: Uuid) -> String {
        format!("{}{sid}:used", self.session_prefix(uid))
    }

    fn index_key(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:sessions", self.redis.prefix())
    }

    fn cut_off_key(&self, uid: Uuid) -> String {
        format!("{}{{u:{uid}}}:disabled", self.redis.prefix())
    }

    fn idle_secs(&self) -> u64 {
        self.lifetimes.idle_timeout.map_or(0, |d| d.as_secs())
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionError> {
        Ok(self.redis.bounded(op, fut).await?)
    }

    pub(super) async fn create(&self, rec: &SessionRecord) -> Result<Created, SessionError> {
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
        self.auth_args(&mut hset, rec.user_id, rec.session_id, &rec.auth);
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
            .arg(&*CREATE_GUARD)
            .arg(2)
            .arg(&index)
            .arg(self.cut_off_key(rec.user_id))
            .arg(self.session_prefix(rec.user_id))
            .arg(rec.session_id.to_string())
            .arg(self.lifetimes.max_sessions)
            .arg(&*self.channel);
        // Ending the oldest sessions is a revocation: durable like a logout before the new
        // session is handed out. If the replicas fall short, the new session is deleted again.
        let mut undo = ScriptCall::new(&REVOKE);
        undo.key(&key)
            .key(self.used_key(rec.user_id, rec.session_id))
            .key(&index)
            .arg(rec.session_id.to_string())
            .arg(&*self.channel);
        let (reply,): (Vec<String>,) = self
            .redis
            .sometimes_revoking(
                "create",
                &index,
                &pipe,
                |(reply,): &(Vec<String>,)| reply.len() > 1,
                &undo,
            )
            .await?;
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

    pub(super) async fn cut_off(&self, uid: Uuid) -> Result<Vec<Uuid>, SessionError> {
        let mut call = ScriptCall::new(&CUT_OFF);
        call.key(self.index_key(uid))
            .key(self.cut_off_key(uid))
            .arg(self.session_prefix(uid))
            .arg(self.lifetimes.cut_off_ttl().as_secs())
            .arg(&*self.channel)
            .arg(Invalidation::User(uid).encode());
        let revoked: Vec<String> = self.redis.revoking("cut_off", &call).await?;
        Ok(revoked
            .iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect())
    }

    pub(super) async fn restore(&self, uid: Uuid) -> Result<(), SessionError> {
        let mut conn = self.redis.conn();
        let key = self.cut_off_key(uid);
        self.bounded("restore", conn.del::<_, ()>(&key)).await
    }

    pub(super) async fn is_cut_off(&self, uid: Uuid) -> Result<bool, SessionError> {
        let mut conn = self.redis.conn();
        let key = self.cut_off_key(uid);
        self.bounded("is_cut_off", conn.exists::<_, bool>(&key))
            .await
    }

    pub(super) async fn load(
        &self,
        uid: Uuid,
        sid: Uuid,
    ) -> Result<Option<SessionState>, SessionError> {
        let key = self.session_key(uid, sid);
        let mut conn = self.redis.conn();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ),
        );
        let fields: Vec<Option<String>> = self
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
                        "amr",
                        "auth_time",
                        "idp",
                        "auth_mac",
                    ],
                ),
            )
            .await?;
        let mut fields = fields.into_iter();
        let mut next = || fields.next().flatten();
        let (user_id, expires_at, last_seen_at, roles, permissions, mac, auth): Fields = (
            next(),
            next(),
            next().and_then(|v| v.parse().ok()),
            next(),
            next(),
            next(),
            (next(), next(), next(), next()),
        );
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
        let Some(auth) = self.verified_auth(uid, sid, &auth) else {
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
            auth,
        }))
    }

    /// The authentication fields (and their MAC) of a record to be written.
    fn auth_args(&self, cmd: &mut redis::Cmd, uid: Uuid, sid: Uuid, auth: &AuthContext) {
        let (amr, idp) = auth_fields(auth);
        let mac = self.seal.seal_auth(
            uid,
            sid,
            &AuthFields {
                amr: &amr,
                auth_time: auth.auth_time,
                idp: &idp,
            },
        );
        cmd.arg("amr")
            .arg(amr)
            .arg("auth_time")
            .arg(auth.auth_time)
            .arg("idp")
            .arg(idp)
            .arg("auth_mac")
            .arg(mac);
    }

    /// How the user authenticated (`amr`, `auth_time`, `idp`, `auth_mac`, as stored) if its MAC
    /// verifies. A record with none of these (written before sessiond stored them) is an
    /// unknown authentication, never recent and without a second factor: stripping the fields
    /// gains nothing. `None`: the record must not be believed.
    fn verified_auth(
        &self,
        uid: Uuid,
        sid: Uuid,
        (amr, auth_time, idp, mac): &(
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ),
    ) -> Option<SharedAuth> {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let (amr, auth_time, idp, mac) = (text(amr), text(auth_time), text(idp), text(mac));
        if mac.is_empty() {
            return (amr.is_empty() && auth_time.is_empty() && idp.is_empty())
                .then(|| Arc::new(AuthContext::default()));
        }
        let auth_time: i64 = auth_time.parse().ok()?;
        let fields = AuthFields {
            amr: &amr,
            auth_time,
            idp: &idp,
        };
        self.seal.verify_auth(uid, sid, &fields, &mac).then(|| {
            Arc::new(AuthContext {
                amr: parse_list(&amr),
                auth_time,
                idp: (!idp.is_empty()).then_some(idp),
            })
        })
    }

    pub(super) async fn reauthenticate(
        &self,
        uid: Uuid,
        sid: Uuid,
        auth: &AuthContext,
    ) -> Result<bool, SessionError> {
        let (amr, idp) = auth_fields(auth);
        let mac = self.seal.seal_auth(
            uid,
            sid,
            &AuthFields {
                amr: &amr,
                auth_time: auth.auth_time,
                idp: &idp,
            },
        );
        let mut conn = self.redis.conn();
        let mut call = REAUTHENTICATE.key(self.session_key(uid, sid));
        call.arg(amr)
            .arg(auth.auth_time)
            .arg(idp)
            .arg(mac)
            .arg(&*self.channel)
            .arg(Invalidation::Access(uid).encode());
        let updated: i64 = self
            .bounded("reauthenticate", call.invoke_async(&mut conn))
            .await?;
        Ok(updated == 1)
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

    pub(super) async fn touch(&self, uid: Uuid, sid: Uuid, now: i64) -> Result<bool, SessionError> {
        let mut conn = self.redis.conn();
        let mut call = TOUCH.key(self.session_key(uid, sid));
        call.arg(now).arg(self.idle_secs());
        let alive: i64 = self.bounded("touch", call.invoke_async(&mut conn)).await?;
        Ok(alive == 1)
    }

    pub(super) async fn revoke(&self, uid: Uuid, sid: Uuid) -> Result<bool, SessionError> {
        let mut call = ScriptCall::new(&REVOKE);
        call.key(self.session_key(uid, sid))
            .key(self.used_key(uid, sid))
            .key(self.index_key(uid))
            .arg(sid.to_string())
            .arg(&*self.channel);
        let deleted: i64 = self.redis.revoking("revoke", &call).await?;
        Ok(deleted == 1)
    }

    pub(super) async fn revoke_all(
        &self,
        uid: Uuid,
        except: Option<Uuid>,
    ) -> Result<Vec<Uuid>, SessionError> {
        let mut call = ScriptCall::new(&REVOKE_ALL);
        call.key(self.index_key(uid))
            .arg(self.session_prefix(uid))
            .arg(except.map(|s| s.to_string()).unwrap_or_default())
            .arg(&*self.channel);
        let revoked: Vec<String> = self.redis.revoking("revoke_all", &call).await?;
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
    pub(super) async fn set_access(
        &self,
        uid: Uuid,
        access: &Access,
    ) -> Result<usize, SessionError> {
        let mut conn = self.redis.conn();
        let mut read = READ_GRANTS.key(self.index_key(uid));
        read.arg(self.session_prefix(uid));
        let rows: Vec<String> = self
            .bounded("set_access_read", read.invoke_async(&mut conn))
            .await?;
        let (roles, permissions) = (list_field(&access.roles), list_field(&access.permissions));
        let mut write = ScriptCall::new(&SET_ACCESS);
        write
            .key(self.index_key(uid))
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
        // Durable like a revocation: a lost downgrade would hand the old roles back.
        Ok(self.redis.revoking("set_access", &write).await?)
    }

    pub(super) async fn list(&self, uid: Uuid) -> Result<Vec<SessionRecord>, SessionError> {
        let index = self.index_key(uid);
        let mut conn = self.redis.conn();
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
        let rows: Vec<Vec<Option<String>>> =
            self.bounded("list", pipe.query_async(&mut conn)).await?;
        let (mut live, mut gone, mut unsealed) = (Vec::new(), Vec::new(), Vec::new());
        let now = now_unix();
        for (sid, row) in sids.iter().zip(rows) {
            let Ok(session_id) = Uuid::parse_str(sid) else {
                continue;
            };
            // In RECORD_FIELDS order.
            let mut row = row.into_iter();
            let mut next = || row.next().flatten();
            let (user, created_at, last_seen_at, expires_at, ip, user_agent) = (
                next(),
                next().and_then(|v| v.parse::<i64>().ok()),
                next().and_then(|v| v.parse::<i64>().ok()),
                next(),
                next(),
                next(),
            );
            let (roles, hash, permissions, mac) = (
                next().unwrap_or_default(),
                next(),
                next().unwrap_or_default(),
                next(),
            );
            let auth = (next(), next(), next(), next());
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
            let Some(auth) = self.verified_auth(uid, session_id, &auth) else {
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
                        auth,
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

    pub(super) async fn rotate(
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
        let mut call = ScriptCall::new(&ROTATE);
        call.key(self.session_key(uid, sid))
            .key(self.index_key(uid))
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
        // A rotation revokes the presented token (and reuse, the session): durable too.
        let reply: Vec<String> = self.redis.revoking("rotate", &call).await?;
        let text = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
        // The grant's expiry if its MAC verifies (fields at these positions of the reply).
        let grant_at = |exp: usize, roles: usize, permissions: usize, mac: usize| {
            let (exp, mac) = (Some(text(exp)), Some(text(mac)));
            self.verified_expiry(uid, sid, None, exp, text(roles), text(permissions), mac)
        };
        // The authentication from position `at` on (four fields), if its MAC verifies.
        let auth_at = |at: usize| {
            let field = |i: usize| reply.get(at + i).cloned();
            self.verified_auth(uid, sid, &(field(0), field(1), field(2), field(3)))
        };
        let outcome = match text(0) {
            "rotated" => match (grant_at(1, 2, 3, 4), auth_at(5)) {
                (Some(expires_at), Some(auth)) if now < expires_at => Rotation::Rotated {
                    expires_at,
                    access: parse_access(text(2), text(3)),
                    auth,
                },
                (Some(_), Some(_)) => Rotation::Invalid,
                _ => self.unsealed_rotation(uid, sid, true).await,
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
                match (grant_at(1, 2, 6, 7), rotation, auth_at(9)) {
                    (Some(expires_at), Some((rotated_at, jti)), Some(auth)) if now < expires_at => {
                        Rotation::Replayed {
                            expires_at,
                            access: parse_access(text(2), text(6)),
                            auth,
                            rotated_at,
                            sealed_successor: text(4).to_string(),
                            jti,
                        }
                    }
                    (Some(_), Some(_), Some(_)) => Rotation::Invalid,
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
        let mut conn = self.redis.conn();
        self.bounded("ping", redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}
/// Against a real Redis (TEST_REDIS_URL; skipped without it unless REQUIRE_SERVICES=1): every
/// script that publishes, read back by the subscriber's parser.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use rand::Rng;

    use super::*;
    use crate::{metrics::Metrics, session::invalidation::Received};

    fn redis_url() -> Option<String> {
        let url = std::env::var("TEST_REDIS_URL").ok();
        if url.is_none() && std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_SERVICES=1 but TEST_REDIS_URL is not set");
        }
        url
    }

    fn record(uid: Uuid, created_at: i64) -> SessionRecord {
        SessionRecord {
            session_id: Uuid::now_v7(),
            user_id: uid,
            created_at,
            last_seen_at: created_at,
            expires_at: created_at + 3600,
            ip: None,
            user_agent: None,
            access: Arc::new(Access::new(vec!["user".into()], vec![])),
            refresh_hash: String::new(),
            auth: Arc::new(AuthContext::password(created_at)),
        }
    }

    /// Without Redis: every call each store operation sends (scripts, MULTI pipelines, plain
    /// commands) names keys of one hash slot only, counting the keys scripts build from the
    /// session prefix they receive, so each runs on a Redis Cluster.
    #[actix_web::test]
    async fn every_call_touches_one_slot() {
        use ::redis::Value;

        let prefix = "sessiond:";
        let secret: [u8; 32] = rand::rng().random();
        let (uid, sid, now) = (Uuid::new_v4(), Uuid::now_v7(), now_unix());
        let exp = now + 3600;
        // READ_GRANTS answers one properly sealed session, so SET_ACCESS is sent too; ZRANGE
        // answers it as the index's content, so `list` reads it.
        let mac = SealKeys::new(&secret, None).seal_grant(uid, sid, &grant("user", "", exp));
        let read_grants = READ_GRANTS.get_hash().to_string();
        let respond = move |cmd: &redis::Cmd| {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(b) => Some(b.to_vec()),
                    _ => None,
                })
                .collect();
            let text = |v: &str| Value::BulkString(v.as_bytes().to_vec());
            match (args[0].as_slice(), args.get(1).map(Vec::as_slice)) {
                (b"EVALSHA", Some(h)) if h == read_grants.as_bytes() => Value::Array(vec![
                    text(&sid.to_string()),
                    text("user"),
                    text(""),
                    text(&exp.to_string()),
                    text(&mac),
                ]),
                (b"ZRANGE", _) => Value::Array(vec![text(&sid.to_string())]),
                _ => Value::Nil,
            }
        };
        let (redis, recorder) = crate::redis::recording::redis(prefix, Arc::new(respond));
        let metrics = Metrics::new();
        let lifetimes = Lifetimes::new(Some(Duration::from_secs(600)), Duration::from_secs(10))
            .with_session_limits(Duration::from_secs(3600), 2);
        let store = RedisStore::new(
            redis,
            lifetimes,
            SealKeys::new(&secret, None),
            metrics.seal_failures.clone(),
        );
        let mut rec = record(uid, now);
        rec.session_id = sid;
        let (first, second) = (
            RefreshToken::generate(uid, sid),
            RefreshToken::generate(uid, sid),
        );
        let admin = Access::new(vec!["admin".into()], vec![]);
        // Results do not matter (the answers are canned); what was sent does.
        let _ = store.create(&rec).await;
        let _ = store.load(uid, sid).await;
        let _ = store.touch(uid, sid, now).await;
        let _ = store
            .reauthenticate(uid, sid, &AuthContext::password(now))
            .await;
        let _ = store.set_access(uid, &admin).await;
        let _ = store.list(uid).await;
        let _ = store.rotate(&first, &second, Uuid::new_v4(), now).await;
        let _ = store.revoke(uid, sid).await;
        let _ = store.revoke_all(uid, Some(sid)).await;
        let _ = store.cut_off(uid).await;
        let _ = store.is_cut_off(uid).await;
        let _ = store.restore(uid).await;
        let checked = crate::redis::recording::assert_one_slot_per_call(
            &recorder,
            prefix,
            &[store.channel()],
        );
        // create (MULTI), load, touch, reauthenticate, read_grants, set_access, list_index (two commands),
        // list (pipeline), rotate, revoke, revoke_all, cut_off, is_cut_off, restore.
        assert!(checked >= 15, "only {checked} calls named keys");
    }

    #[actix_web::test]
    async fn every_published_invalidation_parses_back() {
        let Some(url) = redis_url() else { return };
        // A prefix (so a channel) of this test run alone.
        let prefix = format!("test-{}:", Uuid::new_v4().simple());
        let metrics = Metrics::new();
        let settings = crate::config::redis::RedisSettings::single(&url, Duration::from_secs(2));
        let redis = Redis::connect(&settings, &prefix, metrics.redis.clone())
            .await
            .expect("connecting to Redis");
        let secret: [u8; 32] = rand::rng().random();
        let lifetimes = Lifetimes::new(None, Duration::from_secs(10))
            .with_session_limits(Duration::from_secs(3600), 2);
        let store = RedisStore::new(
            redis.clone(),
            lifetimes,
            SealKeys::new(&secret, None),
            metrics.seal_failures.clone(),
        );
        let mut pubsub = redis.pubsub().await.expect("pub/sub");
        pubsub
            .subscribe(store.channel())
            .await
            .expect("subscribing");
        let mut messages = pubsub.into_on_message();
        let mut next = async || {
            let msg = tokio::time::timeout(Duration::from_secs(2), messages.next())
                .await
                .expect("a message within 2 s")
                .expect("the subscription is open");
            let got = Received::decode(msg.get_payload_bytes())
                .unwrap_or_else(|| panic!("unparsable: {:?}", msg.get_payload::<String>()));
            // Revocations carry the Redis clock's publish time (same machine: near ours);
            // `u:` and `a:` carry none.
            match (&got.invalidation, got.published_at_micros) {
                (Invalidation::Sessions(_), Some(at)) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock after 1970")
                        .as_micros() as u64;
                    let margin = 60_000_000;
                    assert!(
                        at + margin > now && at < now + margin,
                        "stamp {at}, now {now}"
                    );
                }
                (Invalidation::Sessions(_), None) => panic!("unstamped revocation {got:?}"),
                (_, stamp) => assert_eq!(stamp, None),
            }
            got.invalidation
        };

        // CREATE_GUARD: beyond MAX_SESSIONS_PER_USER (2), the oldest session ends.
        let (uid, now) = (Uuid::new_v4(), now_unix());
        let (oldest, mut rotating, newest) = (
            record(uid, now - 30),
            record(uid, now - 20),
            record(uid, now - 10),
        );
        let first = RefreshToken::generate(uid, rotating.session_id);
        rotating.refresh_hash = first.hash();
        for rec in [&oldest, &rotating, &newest] {
            store.create(rec).await.expect("create");
        }
        assert_eq!(next().await, Invalidation::session(oldest.session_id));

        // SET_ACCESS (its message is encoded in Rust and passed in).
        let admin = Access::new(vec!["admin".into()], vec!["users:read".into()]);
        assert_eq!(store.set_access(uid, &admin).await.expect("set_access"), 2);
        assert_eq!(next().await, Invalidation::Access(uid));

        // ROTATE: a rotated token presented after the grace ends the session.
        let second = RefreshToken::generate(uid, rotating.session_id);
        let rotated = store.rotate(&first, &second, Uuid::new_v4(), now).await;
        assert!(matches!(rotated, Ok(Rotation::Rotated { .. })));
        let reused = store
            .rotate(&first, &second, Uuid::new_v4(), now + 60)
            .await;
        assert_eq!(reused.expect("rotate"), Rotation::Reused);
        assert_eq!(next().await, Invalidation::session(rotating.session_id));

        // REVOKE (message encoded in Rust).
        assert!(store.revoke(uid, newest.session_id).await.expect("revoke"));
        assert_eq!(next().await, Invalidation::session(newest.session_id));

        // REVOKE_ALL: several ids in one message, built by the script.
        let other = Uuid::new_v4();
        for _ in 0..2 {
            store.create(&record(other, now)).await.expect("create");
        }
        let revoked = store.revoke_all(other, None).await.expect("revoke_all");
        assert_eq!(revoked.len(), 2);
        assert_eq!(next().await, Invalidation::Sessions(revoked));

        // CUT_OFF: the revoked sessions, then the user.
        let last = record(uid, now);
        store.create(&last).await.expect("create");
        let revoked = store.cut_off(uid).await.expect("cut_off");
        assert_eq!(revoked, vec![last.session_id]);
        assert_eq!(next().await, Invalidation::Sessions(revoked));
        assert_eq!(next().await, Invalidation::User(uid));

        let mut conn = redis.conn();
        let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.expect("KEYS");
        if !keys.is_empty() {
            let _: () = conn.del(keys).await.expect("cleaning up");
        }
    }
}
