//! Environment variables → a validated [`Config`]. Every error names the variable it came from.
use std::{fmt, time::Duration};

use rand::RngCore;

/// A value that must never reach a log line, an error body or `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes running at once; more wait in a queue.
    pub max_concurrency: usize,
    /// How long a request may wait for a hashing slot before it gets 503.
    pub queue_timeout: Duration,
    /// Requests allowed to wait at once; more get 503 at once (fail fast under a flood).
    pub max_queue: usize,
}

/// Rate limits (attempts per window; 0 disables one) and the per-account lockout.
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    pub window: Duration,
    pub login_per_ip: u64,
    pub login_per_account: u64,
    pub register_per_ip: u64,
    pub refresh_per_ip: u64,
    /// PUT /profile/password attempts per account (and client bucket, as logins) and per session.
    pub password_change_per_account: u64,
    pub password_change_per_session: u64,
    /// Consecutive failed logins before the account is locked (0: never).
    pub lockout_threshold: u64,
    /// First lock's length; each further failure doubles it.
    pub lockout_base: Duration,
    pub lockout_max: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Serve /metrics on this port only (the public port answers 404 for it); `None`: on `port`.
    pub metrics_port: Option<u16>,
    /// `Strict-Transport-Security: max-age=…` on every response when serving TLS; 0: not sent.
    pub hsts_max_age: u64,
    /// HTTPS from TLS_CERT_FILE + TLS_KEY_FILE; `None`: plain HTTP (TLS ends at the load balancer).
    pub tls: Option<crate::tls::Tls>,
    /// `None`: the embedded SQLite file at `sqlite_path`.
    pub database_url: Option<String>,
    pub sqlite_path: String,
    /// `None`: sessions live in this process (single node).
    pub redis_url: Option<String>,
    pub jwt_secret: Secret,
    /// The secret being rotated out: still accepted for verification, never used to sign.
    pub jwt_secret_previous: Option<Secret>,
    /// True when no JWT_SECRET was given and one was generated for this process.
    pub jwt_secret_generated: bool,
    /// Keys the seals on session records in Redis (see `session::seal`); `None`: derived from
    /// JWT_SECRET.
    pub session_secret: Option<Secret>,
    /// The session secret being rotated out: still verifies seals, never seals.
    pub session_secret_previous: Option<Secret>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Absolute session lifetime (TOKEN_EXPIRATION hours); also the Redis TTL of the session key.
    pub session_lifetime: Duration,
    pub access_token_ttl: Duration,
    /// Upper bound on how long a pod trusts its local copy of a session.
    pub session_cache_ttl: Duration,
    pub redis_prefix: String,
    pub redis_timeout: Duration,
    pub pubsub_ping_interval: Duration,
    pub argon2: Argon2Config,
    pub body_limit: usize,
    pub workers: usize,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Run pending migrations at start-up (default: on for SQLite, off for PostgreSQL where a
    /// Kubernetes Job runs `sessiond migrate` once).
    pub migrate_on_start: bool,
    pub shutdown_grace: Duration,
    /// A just-rotated refresh token presented again within this window returns the same successor
    /// pair (parallel tabs); after it, it is reuse and revokes the session.
    pub refresh_reuse_grace: Duration,
    /// Sessions unused for this long end; `None`: off.
    pub session_idle_timeout: Option<Duration>,
    /// Live sessions one account may hold (ASVS 7.1.2); a login beyond it ends the oldest.
    /// 0: unlimited.
    pub max_sessions_per_user: usize,
    /// Peers whose X-Forwarded-For is believed (load balancers); empty: only the peer address counts.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub throttle: ThrottleConfig,
    /// Origins allowed to call the API from a browser; empty: CORS off.
    pub cors_allowed_origins: Vec<String>,
    /// zxcvbn score (0-4) a new password must reach; 2 rejects the common and the trivial.
    pub password_min_score: u8,
    /// Normalized emails whose accounts get the `admin` role at start-up and at registration.
    pub admin_emails: Vec<String>,
    /// Repeated denials of one kind by one actor within this window are written as one counted
    /// event at its end (the first at once), so a loop of 403s cannot flood the audit trail.
    pub audit_denied_window: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Reads variables through `get` so tests can configure without touching the process environment.
struct Env<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A set, non-blank value.
    fn get(&self, var: &'static str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_string())
    }

    fn number<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        let value: T = raw
            .trim()
            .parse()
            .map_err(|_| err(var, format!("expected a whole number, got {raw:?}")))?;
        if value < min || value > max {
            return Err(err(
                var,
                format!("must be between {min} and {max}, got {value}"),
            ));
        }
        Ok(value)
    }

    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(err(var, format!("expected true or false, got {v:?}"))),
        }
    }
}

pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(get);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

        let database_url = env.get("DB_URL");
        if let Some(url) = &database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(err(
                    "DB_URL",
                    "expected a postgres://, postgresql:// or sqlite: URL",
                ));
            }
        }
        let redis_url = env.get("REDIS_URL");
        if let Some(url) = &redis_url {
            redis::Client::open(url.as_str())
                .map_err(|_| err("REDIS_URL", "not a valid redis:// or rediss:// URL"))?;
        }

        let (jwt_secret, jwt_secret_generated) = match env.get("JWT_SECRET") {
            Some(s) => (check_secret("JWT_SECRET", s)?, false),
            None if database_url.is_some() || redis_url.is_some() => {
                return Err(err(
                    "JWT_SECRET",
                    "required when DB_URL or REDIS_URL is set (tokens must survive restarts and be \
                     valid on every pod)",
                ));
            }
            None => {
                let mut bytes = vec![0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                (Secret::new(bytes), true)
            }
        };

        // Literal names at each env.get: ci/check-deployment.py collects them from the source.
        let jwt_secret_previous =
            optional_secret("JWT_SECRET_PREVIOUS", env.get("JWT_SECRET_PREVIOUS"))?;
        let session_secret = optional_secret("SESSION_SECRET", env.get("SESSION_SECRET"))?;
        let session_secret_previous = optional_secret(
            "SESSION_SECRET_PREVIOUS",
            env.get("SESSION_SECRET_PREVIOUS"),
        )?;
        if session_secret_previous.is_some() && session_secret.is_none() {
            return Err(err(
                "SESSION_SECRET_PREVIOUS",
                "needs SESSION_SECRET (without it, seals are keyed from JWT_SECRET and \
                 JWT_SECRET_PREVIOUS)",
            ));
        }
        let cors_allowed_origins: Vec<String> = env
            .get("CORS_ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = cors_allowed_origins
            .iter()
            .find(|o| !(o.starts_with("https://") || o.starts_with("http://")) || o.contains('*'))
        {
            return Err(err(
                "CORS_ALLOWED_ORIGINS",
                format!("expected comma-separated http(s) origins without wildcards, got {bad:?}"),
            ));
        }

        let mut admin_emails = Vec::new();
        for raw in env.get("ADMIN_EMAILS").unwrap_or_default().split(',') {
            if raw.trim().is_empty() {
                continue;
            }
            let email = crate::users::normalize_email(raw).map_err(|m| {
                err(
                    "ADMIN_EMAILS",
                    format!("expected comma-separated emails: {m}"),
                )
            })?;
            admin_emails.push(email);
        }

        let is_sqlite = database_url
            .as_deref()
            .is_none_or(|u| u.starts_with("sqlite:"));

        let log_format = match env
            .string("LOG_FORMAT", "pretty")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ))
            }
        };

        let redis_prefix = env.string("REDIS_PREFIX", "sessiond:");
        if redis_prefix.len() > 64
            || redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(err(
                "REDIS_PREFIX",
                "at most 64 characters, no spaces or control characters",
            ));
        }

        let secs = |s: u64| Duration::from_secs(s);
        let millis = |ms: u64| Duration::from_millis(ms);
        Ok(Config {
            host: env.string("HOST", "0.0.0.0"),
            port: env.number("PORT", 8080u16, 0, u16::MAX)?,
            metrics_port: env
                .get("METRICS_PORT")
                .map(|_| env.number("METRICS_PORT", 0u16, 0, u16::MAX))
                .transpose()?,
            hsts_max_age: env.number("HSTS_MAX_AGE", 31_536_000u64, 0, 2 * 31_536_000)?,
            tls: crate::tls::Tls::from_env(env.get("TLS_CERT_FILE"), env.get("TLS_KEY_FILE"))?,
            database_url,
            sqlite_path: env.string("SQLITE_PATH", "sessiond.db"),
            redis_url,
            jwt_secret,
            jwt_secret_previous,
            jwt_secret_generated,
            session_secret,
            session_secret_previous,
            jwt_issuer: env.string("JWT_ISSUER", "sessiond"),
            jwt_audience: env.string("JWT_AUDIENCE", "sessiond"),
            session_lifetime: secs(env.number("TOKEN_EXPIRATION", 24u64, 1, 24 * 365)? * 3600),
            access_token_ttl: secs(env.number("ACCESS_TOKEN_TTL", 900u64, 10, 86_400)?),
            session_cache_ttl: secs(env.number("SESSION_CACHE_TTL", 5u64, 0, 300)?),
            redis_prefix,
            redis_timeout: millis(env.number("REDIS_TIMEOUT_MS", 250u64, 10, 60_000)?),
            pubsub_ping_interval: millis(env.number(
                "PUBSUB_PING_INTERVAL_MS",
                1000u64,
                50,
                60_000,
            )?),
            argon2: Argon2Config {
                memory_kib: env.number(
                    "ARGON2_MEMORY_KIB",
                    19_456u32,
                    8 * 1024,
                    4 * 1024 * 1024,
                )?,
                iterations: env.number("ARGON2_ITERATIONS", 2u32, 1, 100)?,
                parallelism: env.number("ARGON2_PARALLELISM", 1u32, 1, 64)?,
                max_concurrency: env.number("ARGON2_MAX_CONCURRENCY", cores, 1, 1024)?,
                queue_timeout: millis(env.number("ARGON2_QUEUE_TIMEOUT_MS", 2000u64, 1, 60_000)?),
                max_queue: env.number("ARGON2_MAX_QUEUE", 4 * cores, 0, 100_000)?,
            },
            body_limit: env.number("BODY_LIMIT_BYTES", 16 * 1024usize, 1024, 10 * 1024 * 1024)?,
            workers: env.number("HTTP_WORKERS", cores, 1, 1024)?,
            log_format,
            log_filter: env.string("RUST_LOG", "info"),
            migrate_on_start: env.boolean("MIGRATE_ON_START", is_sqlite)?,
            shutdown_grace: secs(env.number("SHUTDOWN_GRACE_SECONDS", 30u64, 0, 3600)?),
            refresh_reuse_grace: secs(env.number("REFRESH_REUSE_GRACE", 10u64, 0, 300)?),
            session_idle_timeout: match env.number("SESSION_IDLE_TIMEOUT", 0u64, 0, 365 * 86_400)? {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            max_sessions_per_user: env.number("MAX_SESSIONS_PER_USER", 50usize, 0, 100_000)?,
            trusted_proxies: parse_proxies(env.get("TRUSTED_PROXIES"))?,
            throttle: ThrottleConfig {
                window: secs(env.number("RATE_LIMIT_WINDOW_SECONDS", 60u64, 1, 86_400)?),
                login_per_ip: env.number("RATE_LIMIT_LOGIN_PER_IP", 30u64, 0, u64::MAX)?,
                login_per_account: env.number(
                    "RATE_LIMIT_LOGIN_PER_ACCOUNT",
                    10u64,
                    0,
                    u64::MAX,
                )?,
                register_per_ip: env.number("RATE_LIMIT_REGISTER_PER_IP", 10u64, 0, u64::MAX)?,
                refresh_per_ip: env.number("RATE_LIMIT_REFRESH_PER_IP", 60u64, 0, u64::MAX)?,
                password_change_per_account: env.number(
                    "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT",
                    10u64,
                    0,
                    u64::MAX,
                )?,
                password_change_per_session: env.number(
                    "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION",
                    5u64,
                    0,
                    u64::MAX,
                )?,
                lockout_threshold: env.number("LOCKOUT_THRESHOLD", 5u64, 0, 99)?,
                lockout_base: secs(env.number("LOCKOUT_BASE_SECONDS", 1u64, 1, 3600)?),
                lockout_max: secs(env.number("LOCKOUT_MAX_SECONDS", 900u64, 1, 86_400)?),
            },
            cors_allowed_origins,
            password_min_score: env.number("PASSWORD_MIN_SCORE", 2u8, 0, 4)?,
            admin_emails,
            audit_denied_window: millis(env.number(
                "AUDIT_DENIED_WINDOW_MS",
                60_000u64,
                10,
                3_600_000,
            )?),
        })
    }

    pub fn is_embedded_db(&self) -> bool {
        self.database_url
            .as_deref()
            .is_none_or(|u| u.starts_with("sqlite:"))
    }

    /// The effective configuration as `NAME=value` lines, secrets and URL passwords masked.
    pub fn describe(&self) -> String {
        let url = |u: &Option<String>, unset: &str| {
            u.as_deref().map_or(unset.to_string(), mask_url_password)
        };
        let masked = |s: &Option<Secret>, unset: &str| {
            s.as_ref()
                .map_or_else(|| unset.to_string(), |_| "********".to_string())
        };
        let lines = [
            ("HOST", self.host.clone()),
            ("PORT", self.port.to_string()),
            (
                "METRICS_PORT",
                self.metrics_port
                    .map_or("(unset: /metrics on PORT)".into(), |p| p.to_string()),
            ),
            ("HSTS_MAX_AGE", self.hsts_max_age.to_string()),
            (
                "TLS_CERT_FILE",
                self.tls
                    .as_ref()
                    .map_or("(unset: plain HTTP)".into(), |t| t.cert_file.clone()),
            ),
            (
                "TLS_KEY_FILE",
                self.tls
                    .as_ref()
                    .map_or("(unset: plain HTTP)".into(), |t| t.key_file.clone()),
            ),
            (
                "DB_URL",
                url(
                    &self.database_url,
                    &format!("(unset: embedded SQLite at {})", self.sqlite_path),
                ),
            ),
            (
                "REDIS_URL",
                url(&self.redis_url, "(unset: in-process sessions, single node)"),
            ),
            (
                "JWT_SECRET",
                if self.jwt_secret_generated {
                    "(unset: random per process)".into()
                } else {
                    "********".into()
                },
            ),
            (
                "SESSION_SECRET",
                masked(&self.session_secret, "(unset: derived from JWT_SECRET)"),
            ),
            (
                "SESSION_SECRET_PREVIOUS",
                masked(&self.session_secret_previous, "(unset)"),
            ),
            ("JWT_ISSUER", self.jwt_issuer.clone()),
            ("JWT_AUDIENCE", self.jwt_audience.clone()),
            (
                "TOKEN_EXPIRATION",
                format!("{}", self.session_lifetime.as_secs() / 3600),
            ),
            (
                "ACCESS_TOKEN_TTL",
                self.access_token_ttl.as_secs().to_string(),
            ),
            (
                "SESSION_CACHE_TTL",
                self.session_cache_ttl.as_secs().to_string(),
            ),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            (
                "REDIS_TIMEOUT_MS",
                self.redis_timeout.as_millis().to_string(),
            ),
            (
                "PUBSUB_PING_INTERVAL_MS",
                self.pubsub_ping_interval.as_millis().to_string(),
            ),
            ("ARGON2_MEMORY_KIB", self.argon2.memory_kib.to_string()),
            ("ARGON2_ITERATIONS", self.argon2.iterations.to_string()),
            ("ARGON2_PARALLELISM", self.argon2.parallelism.to_string()),
            (
                "ARGON2_MAX_CONCURRENCY",
                self.argon2.max_concurrency.to_string(),
            ),
            (
                "ARGON2_QUEUE_TIMEOUT_MS",
                self.argon2.queue_timeout.as_millis().to_string(),
            ),
            ("BODY_LIMIT_BYTES", self.body_limit.to_string()),
            ("HTTP_WORKERS", self.workers.to_string()),
            (
                "LOG_FORMAT",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            ("RUST_LOG", self.log_filter.clone()),
            ("MIGRATE_ON_START", self.migrate_on_start.to_string()),
            (
                "SHUTDOWN_GRACE_SECONDS",
                self.shutdown_grace.as_secs().to_string(),
            ),
            (
                "REFRESH_REUSE_GRACE",
                self.refresh_reuse_grace.as_secs().to_string(),
            ),
            (
                "SESSION_IDLE_TIMEOUT",
                self.session_idle_timeout
                    .map_or("0 (off)".into(), |d| d.as_secs().to_string()),
            ),
            (
                "MAX_SESSIONS_PER_USER",
                match self.max_sessions_per_user {
                    0 => "0 (unlimited)".into(),
                    n => n.to_string(),
                },
            ),
            (
                "TRUSTED_PROXIES",
                self.trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "JWT_SECRET_PREVIOUS",
                if self.jwt_secret_previous.is_some() {
                    "********".into()
                } else {
                    "(unset)".into()
                },
            ),
            (
                "RATE_LIMIT_WINDOW_SECONDS",
                self.throttle.window.as_secs().to_string(),
            ),
            (
                "RATE_LIMIT_LOGIN_PER_IP",
                self.throttle.login_per_ip.to_string(),
            ),
            (
                "RATE_LIMIT_LOGIN_PER_ACCOUNT",
                self.throttle.login_per_account.to_string(),
            ),
            (
                "RATE_LIMIT_REGISTER_PER_IP",
                self.throttle.register_per_ip.to_string(),
            ),
            (
                "RATE_LIMIT_REFRESH_PER_IP",
                self.throttle.refresh_per_ip.to_string(),
            ),
            (
                "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT",
                self.throttle.password_change_per_account.to_string(),
            ),
            (
                "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION",
                self.throttle.password_change_per_session.to_string(),
            ),
            (
                "LOCKOUT_THRESHOLD",
                self.throttle.lockout_threshold.to_string(),
            ),
            (
                "LOCKOUT_BASE_SECONDS",
                self.throttle.lockout_base.as_secs().to_string(),
            ),
            (
                "LOCKOUT_MAX_SECONDS",
                self.throttle.lockout_max.as_secs().to_string(),
            ),
            ("CORS_ALLOWED_ORIGINS", self.cors_allowed_origins.join(",")),
            ("PASSWORD_MIN_SCORE", self.password_min_score.to_string()),
            ("ARGON2_MAX_QUEUE", self.argon2.max_queue.to_string()),
            ("ADMIN_EMAILS", self.admin_emails.join(",")),
            (
                "AUDIT_DENIED_WINDOW_MS",
                self.audit_denied_window.as_millis().to_string(),
            ),
        ];
        lines
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URL sea-orm connects to.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.sqlite_path),
        }
    }
}

/// Secret values that stand in this repository's files as examples (compose, manifests, docs,
/// tests): a deployment that copied one has a key that anyone who read them knows.
const KNOWN_PLACEHOLDERS: &[&str] = &[
    "dev-only-jwt-secret-do-not-use-in-production-0123456789",
    "REPLACE_ME_WITH_AT_LEAST_32_RANDOM_BYTES",
];

/// Words that mark a value as an example rather than a generated key.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "replace-me",
    "replace_me",
    "replaceme",
    "do-not-use",
    "placeholder",
    "your-secret",
    "your_secret",
];

/// Below this estimate (length × Shannon entropy of its characters) a value is too predictable to
/// key HMACs with; 32 random bytes in base64 or hex estimate well above 200 bits.
const MIN_SECRET_ENTROPY_BITS: f64 = 128.0;

/// A secret key from the environment: long enough, not an example from this repository, not a
/// short pattern repeated (`aaaa…`, `abcabc…`), and not made of a handful of characters.
pub fn check_secret(var: &'static str, value: String) -> Result<Secret, ConfigError> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(err(
            var,
            format!("must be at least {MIN_SECRET_BYTES} bytes long"),
        ));
    }
    let lower = value.to_ascii_lowercase();
    if KNOWN_PLACEHOLDERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(value.trim()))
        || PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m))
    {
        return Err(err(
            var,
            "is an example value from documentation or configuration files; generate one, \
             e.g. `head -c 48 /dev/urandom | base64`",
        ));
    }
    let bytes = value.as_bytes();
    let periodic = (1..=bytes.len() / 2)
        .any(|p| bytes.len() % p == 0 && bytes.chunks(p).all(|c| c == &bytes[..p]));
    if periodic || entropy_bits(bytes) < MIN_SECRET_ENTROPY_BITS {
        return Err(err(
            var,
            "has too little entropy (a repeated pattern or too few distinct characters); \
             generate one, e.g. `head -c 48 /dev/urandom | base64`",
        ));
    }
    Ok(Secret::new(value.into_bytes()))
}

/// Length times the Shannon entropy of the byte distribution: an upper estimate of the bits an
/// attacker must guess, which is enough to catch the trivial values.
fn entropy_bits(bytes: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for b in bytes {
        counts[*b as usize] += 1;
    }
    let n = bytes.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_byte * n
}

/// A secret that may be unset, but is checked like JWT_SECRET when set.
fn optional_secret(
    var: &'static str,
    value: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    value.map(|s| check_secret(var, s)).transpose()
}

/// `10.0.0.0/8, 192.168.1.7`: addresses or CIDR ranges, comma-separated.
fn parse_proxies(raw: Option<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    err(
                        "TRUSTED_PROXIES",
                        format!("not an IP address or CIDR range: {s:?}"),
                    )
                })
        })
        .collect()
}

/// `scheme://user:***@host/...`: URLs may carry passwords, which must not be printed.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert!(c.jwt_secret_generated);
        assert!(c.is_embedded_db() && c.redis_url.is_none() && c.migrate_on_start);
        assert_eq!(c.session_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(c.session_cache_ttl, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(config(&[("PORT", "http")]).unwrap_err().var, "PORT");
        assert_eq!(
            config(&[("TOKEN_EXPIRATION", "0")]).unwrap_err().var,
            "TOKEN_EXPIRATION"
        );
        assert_eq!(
            config(&[("JWT_SECRET", "short")]).unwrap_err().var,
            "JWT_SECRET"
        );
        assert_eq!(
            config(&[("LOG_FORMAT", "xml")]).unwrap_err().var,
            "LOG_FORMAT"
        );
        assert_eq!(
            config(&[("DB_URL", "mysql://x")]).unwrap_err().var,
            "DB_URL"
        );
        assert_eq!(
            config(&[("TRUSTED_PROXIES", "10.0.0.0/8, nope")])
                .unwrap_err()
                .var,
            "TRUSTED_PROXIES"
        );
        assert_eq!(
            config(&[("MAX_SESSIONS_PER_USER", "-1")]).unwrap_err().var,
            "MAX_SESSIONS_PER_USER"
        );
        assert_eq!(config(&[]).unwrap().max_sessions_per_user, 50);
        assert_eq!(
            config(&[("MAX_SESSIONS_PER_USER", "0")])
                .unwrap()
                .max_sessions_per_user,
            0
        );
        let c = config(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(
            config(&[("METRICS_PORT", "metrics")]).unwrap_err().var,
            "METRICS_PORT"
        );
        assert_eq!(
            config(&[("HSTS_MAX_AGE", "-1")]).unwrap_err().var,
            "HSTS_MAX_AGE"
        );
        let c = config(&[("METRICS_PORT", "9090")]).unwrap();
        assert_eq!((c.metrics_port, c.hsts_max_age), (Some(9090), 31_536_000));
    }

    #[test]
    fn services_require_a_secret_and_the_secret_is_never_printed() {
        let e = config(&[("REDIS_URL", "redis://127.0.0.1/")]).unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        let secret = "Zq8v1L0mXr3T9kPa7sWc2NdYh6GfUe4B";
        let c = config(&[("REDIS_URL", "redis://127.0.0.1/"), ("JWT_SECRET", secret)]).unwrap();
        assert!(!format!("{c:?}").contains(secret));
        assert!(!c.migrate_on_start || c.is_embedded_db());
        assert!(!c.describe().contains(secret));
    }

    #[test]
    fn session_secrets_are_validated_and_masked() {
        let jwt = "jQ7w2Xr9Lm4Tz8Vb1Nc6Kd3Hs0Fg5YeAb3dE6gH9".to_string();
        let (current, previous) = (
            "cM5n8Bv2Xz7Lk4Jh1Gf9Ds6Aq3Wt0ErKm2pQ7sV4".to_string(),
            "pZ3x6Cv9Bn2Mq5Wl8Ek1Rj4Th7Yg0UfLn8rT1wX6".to_string(),
        );
        for var in ["SESSION_SECRET", "SESSION_SECRET_PREVIOUS"] {
            let e = config(&[
                ("JWT_SECRET", &jwt),
                ("SESSION_SECRET", &current),
                (var, "short"),
            ])
            .unwrap_err();
            assert_eq!(e.var, var);
        }
        let e = config(&[("SESSION_SECRET_PREVIOUS", &previous)]).unwrap_err();
        assert_eq!(e.var, "SESSION_SECRET_PREVIOUS");
        let c = config(&[
            ("JWT_SECRET", &jwt),
            ("SESSION_SECRET", &current),
            ("SESSION_SECRET_PREVIOUS", &previous),
        ])
        .unwrap();
        let described = c.describe();
        assert!(described.contains("SESSION_SECRET=********"));
        assert!(described.contains("SESSION_SECRET_PREVIOUS=********"));
        for s in [&current, &previous] {
            assert!(!described.contains(s.as_str()) && !format!("{c:?}").contains(s.as_str()));
        }
        assert!(config(&[])
            .unwrap()
            .describe()
            .contains("SESSION_SECRET=(unset: derived from JWT_SECRET)"));
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            mask_url_password("redis://:pw@cache/0"),
            "redis://:***@cache/0"
        );
        assert_eq!(
            mask_url_password("redis://cache:6379"),
            "redis://cache:6379"
        );
    }

    #[test]
    fn placeholder_and_low_entropy_secrets_are_refused_naming_the_variable() {
        let generated = "k3Jx9QvT2mLp8RwZ0aYc5NbE7hUd1GsF4oVi6XtK"; // 40 random characters
        for var in ["JWT_SECRET", "JWT_SECRET_PREVIOUS"] {
            assert!(config(&[(var, generated)]).is_ok(), "{var}");
            for bad in [
                "s".repeat(40),
                "abc".repeat(12),
                "0123456789abcdef".repeat(2),
                "change-me-change-me-change-me-1234567890".to_string(),
                "my-super-secret-placeholder-value-for-jwt".to_string(),
                "aaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbbb".to_string(),
            ] {
                let e = config(&[(var, &bad)]).unwrap_err();
                assert_eq!(e.var, var, "{bad}");
                assert!(
                    !e.to_string().contains(&bad),
                    "the error must not echo the value"
                );
            }
        }
    }

    /// Every literal secret that a file of this repository shows as an example is refused, so
    /// copying one into production fails at start-up.
    #[test]
    fn every_example_secret_in_the_repository_is_refused() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![
            root.join("README.md"),
            root.join("docker/docker-compose.yml"),
        ];
        let mut dirs = vec![root.join("kubernetes"), root.join("docs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                // Written locally with random keys by ci/dev-secrets.sh, and git-ignored.
                let generated = path
                    .file_name()
                    .is_some_and(|n| n == "secrets.env" || n == ".env");
                if path.is_dir() {
                    dirs.push(path);
                } else if !generated {
                    files.push(path);
                }
            }
        }
        let mut found = 0;
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines() {
                let Some(at) = line.find("_SECRET") else {
                    continue;
                };
                let value = line[at + "_SECRET".len()..]
                    .trim_start_matches("_PREVIOUS")
                    .trim_start_matches(['=', ':', ' ', '"', '\''])
                    .trim_end_matches(['"', '\'', ' ']);
                // Only literal values: commands, references and variables are not examples.
                if value.len() < 8 || value.contains(['$', '(', '<', '`', ' ', '{', '…']) {
                    continue;
                }
                found += 1;
                assert!(
                    check_secret("JWT_SECRET", value.to_string()).is_err(),
                    "{} shows a secret that would be accepted: {value}",
                    file.display()
                );
            }
        }
        assert!(found > 0, "the scan found no example secret at all");
    }
}
