//! Abuse protection: fixed-window rate limits and a progressive per-account lockout, counted
//! atomically in Redis so limits hold across pods (in-process in the embedded default).
//!
//! Accounts are keyed by a hash of the normalized email, whether or not the account exists, so
//! neither the limits nor the lockout tell an attacker which emails are registered.
//!
//! Per ASVS 6.1.1 an attacker who only knows an email must not lock its owner out: a client
//! address (an IPv6 client: its /64) that logged in to an account within [`KNOWN_ADDRESS_TTL`]
//! has its own per-account limit and lockout ([`Bucket`]); every other address shares one.
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use moka::future::Cache;
use redis::Script;
use sha2::{Digest, Sha256};

use crate::{
    config::ThrottleConfig,
    error::{ApiError, PublicError},
    redis::{script, Conn, Redis, RedisUnavailable},
};

/// The limiter could not count: its store (Redis) did not answer. Attempts are refused (503),
/// never let through uncounted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimiterError {
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

impl From<RedisUnavailable> for LimiterError {
    fn from(e: RedisUnavailable) -> Self {
        LimiterError::Unavailable(e.0)
    }
}

/// What a limit is about.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    LoginIp,
    LoginAccount,
    RegisterIp,
    RefreshIp,
    PasswordChangeAccount,
    PasswordChangeSession,
    /// Failed service-client authentications at POST /introspect, per client address.
    IntrospectFailureIp,
    /// Identity-provider sign-in steps (start, callback, code redemption) per client address;
    /// limited like logins (RATE_LIMIT_LOGIN_PER_IP).
    OAuthIp,
    /// Mails asked for (forgotten password, verification resend) per client address.
    MailIp,
    /// The same per address or account.
    MailAccount,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::LoginIp => "login-ip",
            Scope::LoginAccount => "login-acct",
            Scope::RegisterIp => "register-ip",
            Scope::RefreshIp => "refresh-ip",
            Scope::PasswordChangeAccount => "pwchange-acct",
            Scope::PasswordChangeSession => "pwchange-sess",
            Scope::IntrospectFailureIp => "introspect-fail-ip",
            Scope::OAuthIp => "oauth-ip",
            Scope::MailIp => "mail-ip",
            Scope::MailAccount => "mail-acct",
        }
    }
}

/// Over a limit, or locked: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: u64,
}

/// How long a successful login makes its client address "known" to the account (ASVS 6.1.1).
pub const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Whose attempts an attempt on an account is counted with: the client address's own when it
/// logged in to the account recently, otherwise the pool of every unknown address. Per-account
/// limits and the lockout are kept per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    id: String,
    known: bool,
}

impl Bucket {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the client logged in to the account from this address within the last 30 days.
    pub fn known(&self) -> bool {
        self.known
    }
}

/// The unit per-address limits count: an IPv4 address, or an IPv6 client's /64 (one subscriber
/// usually holds a whole /64, so counting single IPv6 addresses would not limit anyone).
pub fn client_group(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => ipnet::Ipv6Net::new(v6, 64)
                .map(|n| n.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => ip.to_string(),
    }
}

#[derive(Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    backend: Backend,
    /// Ids this pod refuses until the instant, per scope (see [`Throttle::count_failure`]).
    blocked: moka::sync::Cache<String, Instant>,
}

/// At most this many addresses blocked at once per pod (an entry is some 100 bytes).
const MAX_BLOCKED: u64 = 100_000;

fn blocked_cache(window: Duration) -> moka::sync::Cache<String, Instant> {
    moka::sync::Cache::builder()
        .time_to_live(window)
        .max_capacity(MAX_BLOCKED)
        .build()
}

#[derive(Clone)]
enum Backend {
    Redis(RedisLimits),
    Memory {
        windows: Cache<String, Arc<Window>>,
        lockouts: Cache<String, Arc<Mutex<Lock>>>,
        /// Boxed: a third cache inline would make this variant far larger than the other.
        known: Box<Cache<String, ()>>,
    },
}

#[derive(Clone)]
struct RedisLimits {
    redis: Redis,
}

impl RedisLimits {
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.redis.prefix())
    }

    async fn call<T>(
        &self,
        op: &'static str,
        run: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, LimiterError> {
        Ok(self.redis.call(op, run).await?)
    }
}

struct Window {
    count: AtomicU64,
    started: Instant,
}

#[derive(Default)]
struct Lock {
    failures: u64,
    locked_until: i64,
}

static HIT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    script(&[r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}"])
});

/// Records a failure: after `threshold` consecutive failures the bucket is locked for
/// base * 2^(failures - threshold) seconds, capped. The counter forgets after a day of quiet.
/// Returns the lock's length when this failure started a lock (none was running), else 0, so a
/// lock is reported once however many attempts race into it.
static FAIL: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    script(&[r"
local threshold, base, cap, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local previous = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0') or 0
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local started = 0
if failures >= threshold then
  local delay = math.min(cap, base * math.pow(2, math.min(failures - threshold, 30)))
  redis.call('HSET', KEYS[1], 'locked_until', now + delay)
  if previous <= now then started = delay end
end
redis.call('EXPIRE', KEYS[1], 86400)
return started"])
});

fn lock_delay(cfg: &ThrottleConfig, failures: u64) -> i64 {
    if cfg.lockout_threshold == 0 || failures < cfg.lockout_threshold {
        return 0;
    }
    let exp = (failures - cfg.lockout_threshold).min(30) as u32;
    (cfg.lockout_base
        .as_secs()
        .saturating_mul(2u64.saturating_pow(exp)))
    .min(cfg.lockout_max.as_secs()) as i64
}

/// A key part for an account that does not reveal the address.
pub fn account_key(normalized_email: &str) -> String {
    hex::encode(&Sha256::digest(normalized_email.as_bytes())[..16])
}

impl Throttle {
    pub fn memory(cfg: ThrottleConfig) -> Self {
        let window = cfg.window;
        Self {
            blocked: blocked_cache(window),
            cfg,
            backend: Backend::Memory {
                windows: Cache::builder().time_to_live(window).build(),
                lockouts: Cache::builder()
                    .time_to_idle(Duration::from_secs(86_400))
                    .build(),
                known: Box::new(
                    Cache::builder()
                        .time_to_live(KNOWN_ADDRESS_TTL)
                        .max_capacity(1_000_000)
                        .build(),
                ),
            },
        }
    }

    /// Counts in Redis, under the deployment's key prefix, so limits hold across pods.
    pub fn redis(cfg: ThrottleConfig, redis: Redis) -> Self {
        Self {
            blocked: blocked_cache(cfg.window),
            cfg,
            backend: Backend::Redis(RedisLimits { redis }),
        }
    }

    fn limit(&self, scope: Scope) -> u64 {
        match scope {
            Scope::LoginIp | Scope::OAuthIp => self.cfg.login_per_ip,
            Scope::LoginAccount => self.cfg.login_per_account,
            Scope::RegisterIp => self.cfg.register_per_ip,
            Scope::RefreshIp => self.cfg.refresh_per_ip,
            Scope::PasswordChangeAccount => self.cfg.password_change_per_account,
            Scope::PasswordChangeSession => self.cfg.password_change_per_session,
            Scope::IntrospectFailureIp => self.cfg.introspect_failures_per_ip,
            Scope::MailIp => self.cfg.mail_per_ip,
            Scope::MailAccount => self.cfg.mail_per_account,
        }
    }

    /// Counts one attempt; `Err(Throttled)` once the window's limit is exceeded.
    pub async fn hit(&self, scope: Scope, id: &str) -> Result<Result<(), Throttled>, LimiterError> {
        let limit = self.limit(scope);
        if limit == 0 {
            return Ok(Ok(()));
        }
        let window = self.cfg.window;
        let (count, remaining) = match &self.backend {
            Backend::Redis(r) => {
                let mut call = HIT.key(r.key("rl", &format!("{}:{id}", scope.name())));
                call.arg(window.as_millis() as u64);
                let (n, pttl): (u64, i64) = r
                    .call("rate_limit", async |c| call.invoke_async(c).await)
                    .await?;
                (n, Duration::from_millis(pttl.max(0) as u64))
            }
            Backend::Memory { windows, .. } => {
                let key = format!("{}:{id}", scope.name());
                let w = windows
                    .get_with(key, async {
                        Arc::new(Window {
                            count: AtomicU64::new(0),
                            started: Instant::now(),
                        })
                    })
                    .await;
                let n = w.count.fetch_add(1, Ordering::AcqRel) + 1;
                (n, window.saturating_sub(w.started.elapsed()))
            }
        };
        if count > limit {
            return Ok(Err(Throttled {
                retry_after: remaining.as_secs().max(1),
            }));
        }
        Ok(Ok(()))
    }

    /// `Err(Throttled)` while `id` is blocked for `scope` by [`Self::count_failure`]: a read
    /// of this pod's memory, no round trip, so the check costs the attempts that pass nothing.
    pub fn blocked(&self, scope: Scope, id: &str) -> Result<(), Throttled> {
        let key = format!("{}:{id}", scope.name());
        match self.blocked.get(&key) {
            Some(until) if until > Instant::now() => Err(Throttled {
                retry_after: until.duration_since(Instant::now()).as_secs().max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt for a limit on failures (counted across pods, as [`Self::hit`]).
    /// Once the window's limit is reached, this pod blocks `id` until the window ends
    /// ([`Self::blocked`]), before any check of the next attempt, so a correct one is refused
    /// too and the answers tell nothing more. Another pod blocks it at the first failure it
    /// sees from `id` in that window.
    pub async fn count_failure(&self, scope: Scope, id: &str) -> Result<(), LimiterError> {
        let limit = self.limit(scope);
        if limit == 0 {
            return Ok(());
        }
        // One more than allowed is the moment to block: `hit` counts it as over the limit.
        let over = self.hit(scope, id).await?;
        let (reached, retry_after) = match over {
            Err(t) => (true, t.retry_after),
            Ok(()) => (false, 0),
        };
        if reached {
            let until = Instant::now() + Duration::from_secs(retry_after);
            self.blocked.insert(format!("{}:{id}", scope.name()), until);
        }
        Ok(())
    }

    /// The bucket an attempt on `account` from `client` (see [`client_group`]) counts in.
    pub async fn bucket(&self, account: &str, client: &str) -> Result<Bucket, LimiterError> {
        let known_id = format!("{account}@{client}");
        let known = match &self.backend {
            Backend::Redis(r) => {
                let cmd = redis::cmd("EXISTS")
                    .arg(r.key("known", &known_id))
                    .to_owned();
                r.call("known_address", async |c| cmd.query_async::<bool>(c).await)
                    .await?
            }
            Backend::Memory { known, .. } => known.contains_key(&known_id),
        };
        Ok(if known {
            Bucket {
                id: known_id,
                known: true,
            }
        } else {
            // The pool of unknown addresses keeps the plain account key.
            Bucket {
                id: account.to_string(),
                known: false,
            }
        })
    }

    /// A successful login from `client`: the address is known to the account for 30 days.
    pub async fn remember(&self, account: &str, client: &str) -> Result<(), LimiterError> {
        let known_id = format!("{account}@{client}");
        match &self.backend {
            Backend::Redis(r) => {
                let cmd = redis::cmd("SET")
                    .arg(r.key("known", &known_id))
                    .arg(1)
                    .arg("EX")
                    .arg(KNOWN_ADDRESS_TTL.as_secs())
                    .to_owned();
                r.call("known_address_set", async |c| {
                    cmd.query_async::<()>(c).await
                })
                .await
            }
            Backend::Memory { known, .. } => {
                known.insert(known_id, ()).await;
                Ok(())
            }
        }
    }

    /// `Err(Throttled)` while the bucket is locked.
    pub async fn check_lock(
        &self,
        account: &str,
        now: i64,
    ) -> Result<Result<(), Throttled>, LimiterError> {
        if self.cfg.lockout_threshold == 0 {
            return Ok(Ok(()));
        }
        let until = match &self.backend {
            Backend::Redis(r) => {
                let cmd = redis::cmd("HGET")
                    .arg(r.key("lock", account))
                    .arg("locked_until")
                    .to_owned();
                let until: Option<i64> = r
                    .call("lockout_check", async |c| cmd.query_async(c).await)
                    .await?;
                until.unwrap_or(0)
            }
            Backend::Memory { lockouts, .. } => match lockouts.get(account).await {
                Some(l) => l.lock().map_or(0, |l| l.locked_until),
                None => 0,
            },
        };
        Ok(if until > now {
            Err(Throttled {
                retry_after: (until - now) as u64,
            })
        } else {
            Ok(())
        })
    }

    /// Records a failed attempt in the bucket; `Some(seconds)` when this failure started a lock.
    pub async fn record_failure(
        &self,
        account: &str,
        now: i64,
    ) -> Result<Option<u64>, LimiterError> {
        if self.cfg.lockout_threshold == 0 {
            return Ok(None);
        }
        match &self.backend {
            Backend::Redis(r) => {
                let mut call = FAIL.key(r.key("lock", account));
                call.arg(self.cfg.lockout_threshold)
                    .arg(self.cfg.lockout_base.as_secs())
                    .arg(self.cfg.lockout_max.as_secs())
                    .arg(now);
                let started = r
                    .call("lockout_fail", async |c| call.invoke_async::<i64>(c).await)
                    .await?;
                Ok((started > 0).then_some(started as u64))
            }
            Backend::Memory { lockouts, .. } => {
                let lock = lockouts
                    .get_with(account.to_string(), async { Arc::default() })
                    .await;
                let Ok(mut l) = lock.lock() else {
                    return Ok(None);
                };
                l.failures += 1;
                let delay = lock_delay(&self.cfg, l.failures);
                if delay == 0 {
                    return Ok(None);
                }
                let started = l.locked_until <= now;
                l.locked_until = now + delay;
                Ok(started.then_some(delay as u64))
            }
        }
    }

    /// A successful login clears the bucket's failures (a known address's success leaves the
    /// unknown addresses' lock alone).
    pub async fn record_success(&self, account: &str) -> Result<(), LimiterError> {
        if self.cfg.lockout_threshold == 0 {
            return Ok(());
        }
        match &self.backend {
            Backend::Redis(r) => {
                let cmd = redis::cmd("DEL").arg(r.key("lock", account)).to_owned();
                r.call("lockout_clear", async |c| cmd.query_async::<i64>(c).await)
                    .await
                    .map(|_| ())
            }
            Backend::Memory { lockouts, .. } => {
                lockouts.invalidate(account).await;
                Ok(())
            }
        }
    }
}

impl PublicError for LimiterError {
    fn into_api_error(self) -> ApiError {
        match self {
            LimiterError::Unavailable(detail) => ApiError::Unavailable {
                what: "rate limiter",
                detail,
            },
        }
    }
}

impl PublicError for Throttled {
    fn into_api_error(self) -> ApiError {
        ApiError::RateLimited {
            retry_after: self.retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            window: Duration::from_secs(60),
            login_per_ip: 3,
            login_per_account: 3,
            register_per_ip: 3,
            refresh_per_ip: 3,
            introspect_failures_per_ip: 2,
            password_change_per_account: 3,
            password_change_per_session: 3,
            mail_per_ip: 3,
            mail_per_account: 3,
            lockout_threshold: 5,
            lockout_base: Duration::from_secs(1),
            lockout_max: Duration::from_secs(900),
        }
    }

    /// Without Redis: each limiter call names one key (so one hash slot), whatever the scope.
    #[actix_web::test]
    async fn every_limiter_call_touches_one_slot() {
        let prefix = "sessiond:";
        let (redis, recorder) =
            crate::redis::recording::redis(prefix, Arc::new(|_: &redis::Cmd| redis::Value::Nil));
        let t = Throttle::redis(cfg(), redis);
        let _ = t.hit(Scope::LoginIp, "192.0.2.1").await;
        let _ = t.hit(Scope::LoginAccount, "acct").await;
        let _ = t.bucket("acct", "192.0.2.1").await;
        let _ = t.remember("acct", "192.0.2.1").await;
        let _ = t.check_lock("acct", 1_000).await;
        let _ = t.record_failure("acct", 1_000).await;
        let _ = t.record_success("acct").await;
        let checked = crate::redis::recording::assert_one_slot_per_call(&recorder, prefix, &[]);
        assert_eq!(checked, 7);
        for call in recorder.calls.lock().unwrap().iter() {
            let keys = call[0]
                .args_iter()
                .filter(|a| matches!(a, redis::Arg::Simple(b) if b.starts_with(prefix.as_bytes())))
                .count();
            assert_eq!(keys, 1, "one key per limiter call");
        }
    }

    #[test]
    fn lockout_delays_grow_and_are_capped() {
        let c = cfg();
        let delays: Vec<i64> = (1..=20).map(|f| lock_delay(&c, f)).collect();
        assert_eq!(&delays[..7], &[0, 0, 0, 0, 1, 2, 4]);
        assert_eq!(delays[19], 900);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[actix_web::test]
    async fn memory_limits_count_exactly() {
        let t = Throttle::memory(cfg());
        let mut results = Vec::new();
        for _ in 0..5 {
            results.push(t.hit(Scope::LoginIp, "1.2.3.4").await.unwrap().is_ok());
        }
        assert_eq!(results, [true, true, true, false, false]);
        assert!(t.hit(Scope::LoginIp, "5.6.7.8").await.unwrap().is_ok());
    }

    #[actix_web::test]
    async fn a_lock_is_reported_once_when_it_starts() {
        let t = Throttle::memory(cfg());
        let now = 1_000;
        let started: Vec<Option<u64>> =
            futures_util::future::join_all((0..7).map(|_| t.record_failure("acct", now)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        // The fifth failure locks for 1 s; the later ones extend the same lock.
        assert_eq!(started, [None, None, None, None, Some(1), None, None]);
        // Once it has run out, the next failure starts a new lock.
        assert_eq!(t.record_failure("acct", now + 60).await.unwrap(), Some(8));
    }

    #[actix_web::test]
    async fn known_addresses_get_their_own_bucket() {
        let t = Throttle::memory(cfg());
        let unknown = t.bucket("acct", "192.0.2.1").await.unwrap();
        assert!(!unknown.known());
        assert_eq!(unknown.id(), "acct");
        t.remember("acct", "192.0.2.1").await.unwrap();
        let known = t.bucket("acct", "192.0.2.1").await.unwrap();
        assert!(known.known());
        assert_ne!(known.id(), unknown.id());
        assert!(!t.bucket("other", "192.0.2.1").await.unwrap().known());
        assert!(!t.bucket("acct", "192.0.2.2").await.unwrap().known());
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        assert_eq!(client_group("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            client_group("2001:0db8:0001:0002:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_group("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(client_group("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(client_group("192.0.2.1"), "192.0.2.1");
        assert_eq!(client_group("unknown"), "unknown");
    }

    #[test]
    fn account_keys_hide_the_email() {
        let k = account_key("ada@example.com");
        assert_eq!(k.len(), 32);
        assert!(!k.contains("ada"));
    }
}
