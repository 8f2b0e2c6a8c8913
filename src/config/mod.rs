//! Environment variables → a validated [`Config`]. Every error names the variable it came from.
pub mod federation;
pub mod mail;
pub mod redis;
pub mod tls;
pub mod webauthn;

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
    /// One Elastic Common Schema document per line.
    Ecs,
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
    /// Failed service-client authentications at POST /introspect per client address.
    pub introspect_failures_per_ip: u64,
    /// PUT /profile/password attempts per account (and client bucket, as logins) and per session.
    pub password_change_per_account: u64,
    pub password_change_per_session: u64,
    /// Mails asked for without a session (forgotten password) or with one (verification resend),
    /// per client address and per account.
    pub mail_per_ip: u64,
    pub mail_per_account: u64,
    /// Consecutive failed logins before the account is locked (0: never).
    pub lockout_threshold: u64,
    /// First lock's length; each further failure doubles it.
    pub lockout_base: Duration,
    pub lockout_max: Duration,
}

#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Serve /metrics on this port only (the public port answers 404 for it); `None`: on `port`.
    pub metrics_port: Option<u16>,
    /// `Strict-Transport-Security: max-age=…` on every response when serving TLS; 0: not sent.
    pub hsts_max_age: u64,
    /// HTTPS from TLS_CERT_FILE + TLS_KEY_FILE; `None`: plain HTTP (TLS ends at the load balancer).
    pub tls: Option<tls::Tls>,
    /// `None`: the embedded SQLite file at `sqlite_path`.
    pub database_url: Option<String>,
    pub sqlite_path: String,
    /// `None`: sessions live in this process (single node).
    pub redis: Option<redis::RedisSettings>,
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
    /// What signs access tokens: HS256 with JWT_SECRET, or an asymmetric key.
    pub jwt_algorithm: JwtAlgorithm,
    /// AES-256 key that encrypts the signing keys sessiond generates (asymmetric algorithms).
    pub jwt_key_encryption_key: Option<Secret>,
    /// JWT_PRIVATE_KEY_FILE: a PEM key given by the operator (no generation, no rotation).
    pub jwt_private_key: Option<PrivateKeyFile>,
    /// A generated signing key signs for this long before its successor takes over.
    pub jwt_key_rotation: Duration,
    /// `Cache-Control: max-age` of /.well-known/jwks.json.
    pub jwks_max_age: Duration,
    /// How often each pod reads the signing keys from the database.
    pub jwt_key_poll: Duration,
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
    /// How recent the session's authentication must be for sensitive changes (step-up).
    pub step_up_max_age: Duration,
    /// Peers whose X-Forwarded-For is believed (load balancers); empty: only the peer address counts.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub throttle: ThrottleConfig,
    /// Origins allowed to call the API from a browser; empty: CORS off.
    pub cors_allowed_origins: Vec<String>,
    /// zxcvbn score (0-4) a new password must reach; 2 rejects the common and the trivial.
    pub password_min_score: u8,
    /// Normalized emails whose accounts get the `admin` role at start-up and at registration.
    pub admin_emails: Vec<String>,
    /// Sessions of accounts holding one of these roles are limited to enrolling a second factor
    /// until their authentication includes one.
    pub require_mfa_for_roles: Vec<String>,
    /// Repeated denials of one kind by one actor within this window are written as one counted
    /// event at its end (the first at once), so a loop of 403s cannot flood the audit trail.
    pub audit_denied_window: Duration,
    /// Endpoints that receive the revocation webhooks (see `webhooks`); empty: none are sent.
    pub webhook_urls: Vec<String>,
    /// The Standard Webhooks signing key (decoded from `whsec_<base64>`); set with the URLs.
    pub webhook_secret: Option<Secret>,
    /// A webhook not delivered this long after its event is marked failed.
    pub webhook_give_up: Duration,
    /// Sign-in with identity providers (none configured: the feature is off).
    pub federation: federation::FederationConfig,
    /// SMTP, the sender, the links' base URL, the templates and the email flows' switches.
    pub mail: mail::MailSettings,
    /// Passkeys and security keys; `None` (WEBAUTHN_RP_ID unset): the feature is off.
    pub webauthn: Option<webauthn::WebauthnConfig>,
    /// How long the records of unfinished sign-ins live. Not read from the environment (these
    /// are security properties, not tuning): tests shorten them to watch them expire.
    pub pending_ttls: PendingTtls,
}

/// Lifetimes of the records that wait for a sign-in's next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingTtls {
    /// A login waiting for its second factor (the `mfa_token`).
    pub mfa_token: Duration,
    /// A provider sign-in between its start and the callback (the state).
    pub federation_state: Duration,
    /// A TOTP enrolment between POST /mfa/totp and its confirmation.
    pub totp_enrolment: Duration,
}

impl PendingTtls {
    /// What production runs with.
    pub const PRODUCTION: Self = Self {
        mfa_token: Duration::from_secs(300),
        federation_state: Duration::from_secs(600),
        totp_enrolment: Duration::from_secs(600),
    };
}

impl Default for PendingTtls {
    fn default() -> Self {
        Self::PRODUCTION
    }
}

/// JWT_ALGORITHM: the JWS `alg` of issued access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    Hs256,
    EdDsa,
    Es256,
    Rs256,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 4] = [Self::Hs256, Self::EdDsa, Self::Es256, Self::Rs256];

    /// The JWS name (`alg` header, JWKS `alg`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }

    /// Case-insensitive, as operators type it.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(raw.trim()))
    }

    pub fn is_asymmetric(self) -> bool {
        self != Self::Hs256
    }
}

/// JWT_PRIVATE_KEY_FILE, read at start.
#[derive(Clone)]
pub struct PrivateKeyFile {
    pub path: String,
    pub pem: Secret,
}

/// What leaving a variable unset means.
#[derive(Clone, Copy, Debug)]
pub enum VarDefault {
    /// This value, parsed exactly as a set one would be.
    Value(&'static str),
    /// Derived when the configuration is read (from the machine or from other variables).
    Computed(&'static str),
    /// Nothing: the feature is off or derived elsewhere, as described.
    Unset(&'static str),
}

/// One environment variable the server reads.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub name: &'static str,
    pub default: VarDefault,
    /// Never printed: `sessiond check-config` shows `********` when it is set.
    pub secret: bool,
    pub help: &'static str,
}

impl Var {
    const fn new(name: &'static str, default: VarDefault, help: &'static str) -> Self {
        Self {
            name,
            default,
            secret: false,
            help,
        }
    }

    const fn secret(name: &'static str, default: VarDefault, help: &'static str) -> Self {
        Self {
            name,
            default,
            secret: true,
            help,
        }
    }
}

use VarDefault::{Computed, Unset, Value};

/// Every environment variable the server reads, in `sessiond check-config` order. Parsing takes
/// its defaults from here and reads nothing else, check-config prints and masks from here, and
/// tests check that the README's Configuration table and ci/check-deployment.py agree with it.
pub const VARS: &[Var] = &[
    Var::new("HOST", Value("0.0.0.0"), "listen address"),
    Var::new("PORT", Value("8080"), "listen port (0: any free port)"),
    Var::new(
        "METRICS_PORT",
        Unset("/metrics on PORT"),
        "serve GET /metrics on this port only",
    ),
    Var::new(
        "HSTS_MAX_AGE",
        Value("31536000"),
        "Strict-Transport-Security max-age when serving TLS (0: not sent)",
    ),
    Var::new(
        "TLS_CERT_FILE",
        Unset("plain HTTP"),
        "PEM certificate chain",
    ),
    Var::new("TLS_KEY_FILE", Unset("plain HTTP"), "PEM private key"),
    Var::new(
        "DB_URL",
        Unset("embedded SQLite at SQLITE_PATH"),
        "postgres://, postgresql:// or sqlite: URL",
    ),
    Var::new(
        "SQLITE_PATH",
        Value("sessiond.db"),
        "the embedded database file",
    ),
    Var::new(
        "REDIS_URL",
        Unset("in-process sessions, single node"),
        "redis:// or rediss:// URL of one Redis (user and password in the URL for ACL users)",
    ),
    Var::new(
        "REDIS_SENTINEL_URLS",
        Unset("no Sentinel"),
        "comma-separated redis:// or rediss:// URLs of the sentinels (instead of REDIS_URL)",
    ),
    Var::new(
        "REDIS_SENTINEL_MASTER",
        Unset("required with REDIS_SENTINEL_URLS"),
        "the master's name in the sentinels' configuration",
    ),
    Var::new(
        "REDIS_CLUSTER_URLS",
        Unset("no Redis Cluster"),
        "comma-separated redis:// or rediss:// seed nodes of a Redis Cluster (instead of REDIS_URL)",
    ),
    Var::new(
        "REDIS_CA_FILE",
        Unset("the system's roots"),
        "PEM CA certificates that sign the Redis servers' certificates (rediss://)",
    ),
    Var::new(
        "REDIS_CLIENT_CERT_FILE",
        Unset("no client certificate"),
        "PEM client certificate chain for mutual TLS (with REDIS_CLIENT_KEY_FILE)",
    ),
    Var::new(
        "REDIS_CLIENT_KEY_FILE",
        Unset("no client certificate"),
        "PEM private key of REDIS_CLIENT_CERT_FILE",
    ),
    Var::new(
        "REDIS_WAIT_REPLICAS",
        Computed("1 if the master has replicas at start, else 0"),
        "replicas that must acknowledge a revocation (WAIT) before it is answered",
    ),
    Var::new(
        "REDIS_WAIT_TIMEOUT_MS",
        Value("500"),
        "how long a revocation waits for those replicas before 503",
    ),
    Var::secret(
        "JWT_SECRET",
        Unset("random per process"),
        "HMAC key of access tokens, at least 32 bytes; required with DB_URL or REDIS_URL",
    ),
    Var::secret(
        "JWT_SECRET_PREVIOUS",
        Unset("no key being rotated out"),
        "the key being rotated out: verifies, never signs",
    ),
    Var::secret(
        "SESSION_SECRET",
        Unset("derived from JWT_SECRET"),
        "key of the MACs that seal session records",
    ),
    Var::secret(
        "SESSION_SECRET_PREVIOUS",
        Unset("no key being rotated out"),
        "the session secret being rotated out: verifies seals, never seals",
    ),
    Var::new(
        "JWT_ALGORITHM",
        Value("HS256"),
        "HS256 (JWT_SECRET), EdDSA, ES256 or RS256 (keys in the database, published at /.well-known/jwks.json)",
    ),
    Var::secret(
        "JWT_KEY_ENCRYPTION_KEY",
        Unset("required with EdDSA, ES256, RS256"),
        "32 random bytes in base64 that encrypt the generated signing keys in the database",
    ),
    Var::new(
        "JWT_PRIVATE_KEY_FILE",
        Unset("sessiond generates and rotates its keys"),
        "PEM private key for JWT_ALGORITHM (from a KMS or a Kubernetes Secret; not rotated by sessiond)",
    ),
    Var::new(
        "JWT_KEY_ROTATION_DAYS",
        Value("30"),
        "days a generated signing key signs before its successor",
    ),
    Var::new(
        "JWKS_MAX_AGE",
        Value("300"),
        "seconds verifiers may cache /.well-known/jwks.json",
    ),
    Var::new(
        "JWT_KEY_POLL_SECONDS",
        Value("5"),
        "how often each pod reads the signing keys from the database",
    ),
    Var::new("JWT_ISSUER", Value("sessiond"), "`iss` of issued tokens"),
    Var::new("JWT_AUDIENCE", Value("sessiond"), "`aud` of issued tokens"),
    Var::new(
        "TOKEN_EXPIRATION",
        Value("24"),
        "absolute session lifetime in hours",
    ),
    Var::new(
        "ACCESS_TOKEN_TTL",
        Value("900"),
        "access-token lifetime in seconds",
    ),
    Var::new(
        "SESSION_CACHE_TTL",
        Value("5"),
        "seconds a pod trusts its cached copy of a session (0: no cache)",
    ),
    Var::new(
        "REDIS_PREFIX",
        Value("sessiond:"),
        "prefix of every Redis key and channel",
    ),
    Var::new(
        "REDIS_TIMEOUT_MS",
        Value("250"),
        "bound on every Redis call",
    ),
    Var::new(
        "PUBSUB_PING_INTERVAL_MS",
        Value("1000"),
        "how often the invalidation subscription is pinged",
    ),
    Var::new("ARGON2_MEMORY_KIB", Value("19456"), "argon2id memory cost"),
    Var::new("ARGON2_ITERATIONS", Value("2"), "argon2id iterations"),
    Var::new("ARGON2_PARALLELISM", Value("1"), "argon2id lanes"),
    Var::new(
        "ARGON2_MAX_CONCURRENCY",
        Computed("cores"),
        "hashes running at once",
    ),
    Var::new(
        "ARGON2_QUEUE_TIMEOUT_MS",
        Value("2000"),
        "how long a request waits for a hashing slot before 503",
    ),
    Var::new(
        "ARGON2_MAX_QUEUE",
        Computed("4 x cores"),
        "requests allowed to wait for a hashing slot",
    ),
    Var::new(
        "BODY_LIMIT_BYTES",
        Value("16384"),
        "request body cap (413 above)",
    ),
    Var::new("HTTP_WORKERS", Computed("cores"), "HTTP worker threads"),
    Var::new(
        "LOG_FORMAT",
        Value("pretty"),
        "json (one object per line), ecs (one Elastic Common Schema document per line) or pretty",
    ),
    Var::new("RUST_LOG", Value("info"), "log filter"),
    Var::new(
        "MIGRATE_ON_START",
        Computed("true for SQLite, false for PostgreSQL"),
        "apply migrations at start-up",
    ),
    Var::new(
        "SHUTDOWN_GRACE_SECONDS",
        Value("30"),
        "how long in-flight requests may take to finish at shutdown",
    ),
    Var::new(
        "REFRESH_REUSE_GRACE",
        Value("10"),
        "seconds a just-rotated refresh token returns the same successor",
    ),
    Var::new(
        "SESSION_IDLE_TIMEOUT",
        Value("0"),
        "seconds without use after which a session ends (0: off)",
    ),
    Var::new(
        "MAX_SESSIONS_PER_USER",
        Value("50"),
        "live sessions per account (0: unlimited)",
    ),
    Var::new(
        "STEP_UP_MAX_AGE",
        Value("300"),
        "seconds after a login or POST /reauthenticate during which sensitive changes (password, email, factors, linked identities) are allowed",
    ),
    Var::new(
        "TRUSTED_PROXIES",
        Unset("only the peer address counts"),
        "IPs or CIDR ranges whose X-Forwarded-For is believed",
    ),
    Var::new(
        "RATE_LIMIT_WINDOW_SECONDS",
        Value("60"),
        "window of the rate limits",
    ),
    Var::new(
        "RATE_LIMIT_LOGIN_PER_IP",
        Value("30"),
        "login attempts per window and client (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_LOGIN_PER_ACCOUNT",
        Value("10"),
        "login attempts per window and account (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_REGISTER_PER_IP",
        Value("10"),
        "registrations per window and client (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_REFRESH_PER_IP",
        Value("60"),
        "refreshes per window and client (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_INTROSPECT_FAILURES_PER_IP",
        Value("20"),
        "failed client authentications at POST /introspect per window and client (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT",
        Value("10"),
        "password changes per window and account (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION",
        Value("5"),
        "password changes per window and session (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_MAIL_PER_IP",
        Value("10"),
        "password-reset and verification mails asked for per window and client (0: off)",
    ),
    Var::new(
        "RATE_LIMIT_MAIL_PER_ACCOUNT",
        Value("3"),
        "password-reset and verification mails asked for per window and address (0: off)",
    ),
    Var::new(
        "LOCKOUT_THRESHOLD",
        Value("5"),
        "consecutive failures before an account is locked (0: never)",
    ),
    Var::new("LOCKOUT_BASE_SECONDS", Value("1"), "first lock's length"),
    Var::new("LOCKOUT_MAX_SECONDS", Value("900"), "longest lock"),
    Var::new(
        "CORS_ALLOWED_ORIGINS",
        Unset("CORS off"),
        "comma-separated origins allowed from browsers",
    ),
    Var::new(
        "PASSWORD_MIN_SCORE",
        Value("2"),
        "zxcvbn score (0-4) a new password must reach",
    ),
    Var::new(
        "ADMIN_EMAILS",
        Unset("no account is granted admin"),
        "comma-separated emails granted the admin role",
    ),
    Var::new(
        "REQUIRE_MFA_FOR_ROLES",
        Unset("no role requires a second factor"),
        "comma-separated roles whose accounts' sessions are limited to enrolling a second factor until they authenticate with one",
    ),
    Var::new(
        "AUDIT_DENIED_WINDOW_MS",
        Value("60000"),
        "repeated denials within this window are one counted audit event",
    ),
    Var::new(
        "WEBHOOK_URLS",
        Unset("no webhooks are sent"),
        "comma-separated http(s) URLs that receive the revocation webhooks",
    ),
    Var::secret(
        "WEBHOOK_SECRET",
        Unset("required with WEBHOOK_URLS"),
        "signing key of the webhooks, whsec_<base64 of 24 to 64 random bytes>",
    ),
    Var::new(
        "WEBHOOK_GIVE_UP_SECONDS",
        Value("86400"),
        "a webhook not delivered this long after its event is given up (counted as failed)",
    ),
    Var::new(
        "PUBLIC_URL",
        Unset("required with identity providers"),
        "sessiond's external base URL; provider callbacks are PUBLIC_URL/oauth/<name>/callback",
    ),
    Var::new(
        "OAUTH_RETURN_URLS",
        Unset("required with identity providers"),
        "comma-separated exact client URLs a provider sign-in may return to",
    ),
    Var::new(
        "OAUTH_LINK_VERIFIED_EMAILS",
        Value("false"),
        "a provider-verified email signs in to the existing account holding it",
    ),
    Var::new(
        "OAUTH_LINK_CONFIRM",
        Value("false"),
        "a linking flow's callback returns a link_code that only the session that started it can confirm",
    ),
    Var::new(
        "OAUTH_DISCOVERY_REFRESH_SECONDS",
        Value("3600"),
        "how long a provider's discovery document and keys are used before they are read again",
    ),
    Var::new(
        "OIDC_PROVIDERS",
        Unset("no OpenID Providers"),
        "comma-separated names of OpenID Providers, each configured by OIDC_<NAME>_* below",
    ),
    Var::new(
        "OIDC_<NAME>_ISSUER",
        Unset("required per provider"),
        "the provider's issuer URL (discovery at <issuer>/.well-known/openid-configuration)",
    ),
    Var::new(
        "OIDC_<NAME>_CLIENT_ID",
        Unset("required per provider"),
        "sessiond's client id at the provider",
    ),
    Var::secret(
        "OIDC_<NAME>_CLIENT_SECRET",
        Unset("required per provider"),
        "sessiond's client secret at the provider",
    ),
    Var::new(
        "OIDC_<NAME>_SCOPES",
        Value("openid email profile"),
        "space-separated scopes asked of the provider (openid required)",
    ),
    Var::new(
        "OIDC_<NAME>_DISPLAY_NAME",
        Computed("the provider's name"),
        "the name sign-in pages show",
    ),
    Var::new(
        "GITHUB_CLIENT_ID",
        Unset("no GitHub sign-in"),
        "client id of a GitHub OAuth app (the github provider)",
    ),
    Var::secret(
        "GITHUB_CLIENT_SECRET",
        Unset("required with GITHUB_CLIENT_ID"),
        "client secret of that GitHub OAuth app",
    ),
    Var::new(
        "GITHUB_WEB_URL",
        Value("https://github.com"),
        "GitHub's web base URL (GitHub Enterprise Server, or a stand-in in tests)",
    ),
    Var::new(
        "GITHUB_API_URL",
        Value("https://api.github.com"),
        "GitHub's API base URL (GitHub Enterprise Server: https://HOST/api/v3)",
    ),
    Var::new(
        "SMTP_URL",
        Unset("mails are written to the log, not sent"),
        "smtp:// (STARTTLS required), smtps:// or smtp+plaintext:// (in clear without STARTTLS: a trusted network only) URL of the mail server, user and password in the URL",
    ),
    Var::new(
        "SMTP_CA_FILE",
        Unset("the built-in roots"),
        "PEM CA certificates that sign the SMTP server's certificate",
    ),
    Var::new(
        "MAIL_FROM",
        Value("sessiond <no-reply@localhost>"),
        "From: of every mail (an address or Name <address>)",
    ),
    Var::new(
        "APP_URL",
        Value("http://localhost:3000"),
        "base URL of the client application that mailed links point to",
    ),
    Var::new(
        "MAIL_TEMPLATES_DIR",
        Unset("the templates built into the binary"),
        "directory whose <template>.txt / <template>.html replace the built-in ones",
    ),
    Var::new(
        "REQUIRE_EMAIL_VERIFICATION",
        Value("false"),
        "refuse logins of unverified accounts (403 email_not_verified); registration answers 202",
    ),
    Var::new(
        "NOTIFY_NEW_LOGIN",
        Value("true"),
        "mail the owner about a sign-in from an address and user agent not seen for 30 days",
    ),
    Var::new(
        "WEBAUTHN_RP_ID",
        Unset("passkeys and security keys are off"),
        "the domain passkeys are bound to (e.g. example.com); it cannot change once keys exist",
    ),
    Var::new(
        "WEBAUTHN_ORIGINS",
        Computed("https://<WEBAUTHN_RP_ID>"),
        "comma-separated exact origins of the pages that use passkeys, on WEBAUTHN_RP_ID or a subdomain",
    ),
    Var::new(
        "WEBAUTHN_RP_NAME",
        Computed("JWT_ISSUER"),
        "the name authenticators show next to the account",
    ),
];

/// The declaration of `name`; every variable the server reads is one of [`VARS`].
pub fn var(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
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
/// Defaults come from [`VARS`].
struct Env<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A set, non-blank value of a variable whose name is built (per identity provider).
    fn dynamic(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    /// A set, non-blank value.
    fn get(&self, var: &'static str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    /// The set value, or else the declared default value.
    fn value(&self, var: &'static str) -> Result<String, ConfigError> {
        if let Some(v) = self.get(var) {
            return Ok(v);
        }
        match self::var(var).map(|v| v.default) {
            Some(Value(default)) => Ok(default.to_string()),
            _ => Err(err(var, "has no default value in config::VARS")),
        }
    }

    fn string(&self, var: &'static str) -> Result<String, ConfigError> {
        self.value(var)
    }

    fn parse<T>(var: &'static str, raw: &str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
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

    fn number<T>(&self, var: &'static str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        Self::parse(var, &self.value(var)?, min, max)
    }

    /// For a variable whose default is [`VarDefault::Computed`]: `default` when unset.
    fn number_or<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.get(var)
            .map_or(Ok(default), |raw| Self::parse(var, &raw, min, max))
    }

    /// For a variable whose default is [`VarDefault::Unset`]: `None` when unset.
    fn optional_number<T>(
        &self,
        var: &'static str,
        min: T,
        max: T,
    ) -> Result<Option<T>, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.get(var)
            .map(|raw| Self::parse(var, &raw, min, max))
            .transpose()
    }

    /// A true/false variable with a declared default value.
    fn boolean(&self, var: &'static str) -> Result<bool, ConfigError> {
        let default = self.value(var)?.trim().eq_ignore_ascii_case("true");
        self.boolean_or(var, default)
    }

    /// For a variable whose default is [`VarDefault::Computed`]: `default` when unset.
    fn boolean_or(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
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
        let redis_topology = redis::topology(
            env.get("REDIS_URL"),
            env.get("REDIS_SENTINEL_URLS"),
            env.get("REDIS_SENTINEL_MASTER"),
            env.get("REDIS_CLUSTER_URLS"),
        )?;
        let redis_tls = redis::RedisTls::load(
            env.get("REDIS_CA_FILE"),
            env.get("REDIS_CLIENT_CERT_FILE"),
            env.get("REDIS_CLIENT_KEY_FILE"),
        )?;
        redis::check_tls_files(redis_topology.as_ref(), &redis_tls)?;
        let redis_timeout = Duration::from_millis(env.number("REDIS_TIMEOUT_MS", 10, 60_000)?);
        let redis_wait_replicas = env.optional_number("REDIS_WAIT_REPLICAS", 0u32, 64)?;
        let redis_wait_timeout =
            Duration::from_millis(env.number("REDIS_WAIT_TIMEOUT_MS", 1, 60_000)?);
        let redis = redis_topology.map(|topology| redis::RedisSettings {
            topology,
            tls: redis_tls,
            timeout: redis_timeout,
            wait_replicas: redis_wait_replicas,
            wait_timeout: redis_wait_timeout,
        });

        let (jwt_secret, jwt_secret_generated) = match env.get("JWT_SECRET") {
            Some(s) => (check_secret("JWT_SECRET", s)?, false),
            None if database_url.is_some() || redis.is_some() => {
                return Err(err(
                    "JWT_SECRET",
                    "required when DB_URL, REDIS_URL or REDIS_CLUSTER_URLS is set (tokens must survive restarts and be \
                     valid on every pod)",
                ));
            }
            None => {
                let mut bytes = vec![0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                (Secret::new(bytes), true)
            }
        };

        let jwt_secret_previous =
            optional_secret("JWT_SECRET_PREVIOUS", env.get("JWT_SECRET_PREVIOUS"))?;
        let jwt_algorithm = {
            let raw = env.string("JWT_ALGORITHM")?;
            JwtAlgorithm::parse(&raw).ok_or_else(|| {
                err(
                    "JWT_ALGORITHM",
                    format!("expected HS256, EdDSA, ES256 or RS256, got {raw:?}"),
                )
            })?
        };
        let jwt_private_key = match env.get("JWT_PRIVATE_KEY_FILE") {
            None => None,
            Some(_) if !jwt_algorithm.is_asymmetric() => {
                return Err(err(
                    "JWT_PRIVATE_KEY_FILE",
                    "needs JWT_ALGORITHM EdDSA, ES256 or RS256",
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path.trim()).map_err(|e| {
                    err(
                        "JWT_PRIVATE_KEY_FILE",
                        format!("cannot read {}: {e}", path.trim()),
                    )
                })?;
                Some(PrivateKeyFile {
                    path: path.trim().to_string(),
                    pem: Secret::new(pem),
                })
            }
        };
        let jwt_key_encryption_key = match env.get("JWT_KEY_ENCRYPTION_KEY") {
            Some(raw) => Some(check_encryption_key("JWT_KEY_ENCRYPTION_KEY", raw)?),
            None if jwt_algorithm.is_asymmetric() && jwt_private_key.is_none() => {
                return Err(err(
                    "JWT_KEY_ENCRYPTION_KEY",
                    format!(
                        "required with JWT_ALGORITHM={} (it encrypts the generated signing keys); \
                         generate one with `head -c 32 /dev/urandom | base64`",
                        jwt_algorithm.name()
                    ),
                ));
            }
            None => None,
        };
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
            let email = crate::domain::Email::parse(raw).map_err(|m| {
                err(
                    "ADMIN_EMAILS",
                    format!("expected comma-separated emails: {m}"),
                )
            })?;
            admin_emails.push(email.into_inner());
        }

        let mut require_mfa_for_roles = Vec::new();
        for raw in env
            .get("REQUIRE_MFA_FOR_ROLES")
            .unwrap_or_default()
            .split(',')
        {
            if raw.trim().is_empty() {
                continue;
            }
            let role = crate::domain::RoleName::parse(raw.trim().to_string()).map_err(|m| {
                err(
                    "REQUIRE_MFA_FOR_ROLES",
                    format!("expected comma-separated role names: {m}"),
                )
            })?;
            require_mfa_for_roles.push(role.into_inner());
        }

        let (webhook_urls, webhook_secret) =
            webhook_settings(env.get("WEBHOOK_URLS"), env.get("WEBHOOK_SECRET"))?;
        let smtp = match env.get("SMTP_URL") {
            Some(url) => Some(mail::parse_smtp_url(&url, env.get("SMTP_CA_FILE"))?),
            None if env.get("SMTP_CA_FILE").is_some() => {
                return Err(err("SMTP_CA_FILE", "needs SMTP_URL"))
            }
            None => None,
        };
        let mail = mail::MailSettings {
            smtp,
            from: mail::check_from(&env.string("MAIL_FROM")?)?,
            app_url: mail::check_app_url(&env.string("APP_URL")?)?,
            templates_dir: env.get("MAIL_TEMPLATES_DIR").map(|d| d.trim().to_string()),
            require_verification: env.boolean("REQUIRE_EMAIL_VERIFICATION")?,
            notify_new_login: env.boolean("NOTIFY_NEW_LOGIN")?,
        };

        let federation = federation::read(
            &|name| env.dynamic(name),
            |var| env.boolean_or(var, false),
            env.number("OAUTH_DISCOVERY_REFRESH_SECONDS", 1, 86_400)?,
        )?;

        let webauthn = webauthn::read(
            env.get("WEBAUTHN_RP_ID"),
            env.get("WEBAUTHN_ORIGINS"),
            env.get("WEBAUTHN_RP_NAME"),
            &env.string("JWT_ISSUER")?,
        )?;

        let is_sqlite = database_url
            .as_deref()
            .is_none_or(|u| u.starts_with("sqlite:"));

        let log_format = match env.string("LOG_FORMAT")?.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "ecs" => LogFormat::Ecs,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("expected json, ecs or pretty, got {other:?}"),
                ))
            }
        };

        let redis_prefix = env.string("REDIS_PREFIX")?;
        if redis_prefix.len() > 64
            || redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            // Braces would change the part of every key Redis Cluster hashes (the `{u:<uid>}`
            // tag), putting every user on one slot.
            return Err(err(
                "REDIS_PREFIX",
                "at most 64 characters, no spaces, control characters or braces",
            ));
        }

        let secs = |s: u64| Duration::from_secs(s);
        let millis = |ms: u64| Duration::from_millis(ms);
        Ok(Config {
            host: env.string("HOST")?,
            port: env.number("PORT", 0, u16::MAX)?,
            metrics_port: env.optional_number("METRICS_PORT", 0, u16::MAX)?,
            hsts_max_age: env.number("HSTS_MAX_AGE", 0, 2 * 31_536_000)?,
            tls: tls::Tls::from_env(env.get("TLS_CERT_FILE"), env.get("TLS_KEY_FILE"))?,
            database_url,
            sqlite_path: env.string("SQLITE_PATH")?,
            redis,
            jwt_secret,
            jwt_secret_previous,
            jwt_secret_generated,
            session_secret,
            session_secret_previous,
            jwt_issuer: env.string("JWT_ISSUER")?,
            jwt_audience: env.string("JWT_AUDIENCE")?,
            jwt_algorithm,
            jwt_key_encryption_key,
            jwt_private_key,
            jwt_key_rotation: secs(env.number("JWT_KEY_ROTATION_DAYS", 1u64, 3650)? * 86_400),
            jwks_max_age: secs(env.number("JWKS_MAX_AGE", 0, 86_400)?),
            jwt_key_poll: secs(env.number("JWT_KEY_POLL_SECONDS", 1, 300)?),
            session_lifetime: secs(env.number("TOKEN_EXPIRATION", 1u64, 24 * 365)? * 3600),
            access_token_ttl: secs(env.number("ACCESS_TOKEN_TTL", 10, 86_400)?),
            session_cache_ttl: secs(env.number("SESSION_CACHE_TTL", 0, 300)?),
            redis_prefix,
            redis_timeout,
            pubsub_ping_interval: millis(env.number("PUBSUB_PING_INTERVAL_MS", 50, 60_000)?),
            argon2: Argon2Config {
                memory_kib: env.number("ARGON2_MEMORY_KIB", 8 * 1024, 4 * 1024 * 1024)?,
                iterations: env.number("ARGON2_ITERATIONS", 1, 100)?,
                parallelism: env.number("ARGON2_PARALLELISM", 1, 64)?,
                max_concurrency: env.number_or("ARGON2_MAX_CONCURRENCY", cores, 1, 1024)?,
                queue_timeout: millis(env.number("ARGON2_QUEUE_TIMEOUT_MS", 1, 60_000)?),
                max_queue: env.number_or("ARGON2_MAX_QUEUE", 4 * cores, 0, 100_000)?,
            },
            body_limit: env.number("BODY_LIMIT_BYTES", 1024, 10 * 1024 * 1024)?,
            workers: env.number_or("HTTP_WORKERS", cores, 1, 1024)?,
            log_format,
            log_filter: env.string("RUST_LOG")?,
            migrate_on_start: env.boolean_or("MIGRATE_ON_START", is_sqlite)?,
            shutdown_grace: secs(env.number("SHUTDOWN_GRACE_SECONDS", 0, 3600)?),
            refresh_reuse_grace: secs(env.number("REFRESH_REUSE_GRACE", 0, 300)?),
            session_idle_timeout: match env.number("SESSION_IDLE_TIMEOUT", 0u64, 365 * 86_400)? {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            max_sessions_per_user: env.number("MAX_SESSIONS_PER_USER", 0, 100_000)?,
            step_up_max_age: secs(env.number("STEP_UP_MAX_AGE", 1, 86_400)?),
            trusted_proxies: parse_proxies(env.get("TRUSTED_PROXIES"))?,
            throttle: ThrottleConfig {
                window: secs(env.number("RATE_LIMIT_WINDOW_SECONDS", 1, 86_400)?),
                login_per_ip: env.number("RATE_LIMIT_LOGIN_PER_IP", 0, u64::MAX)?,
                login_per_account: env.number("RATE_LIMIT_LOGIN_PER_ACCOUNT", 0, u64::MAX)?,
                register_per_ip: env.number("RATE_LIMIT_REGISTER_PER_IP", 0, u64::MAX)?,
                refresh_per_ip: env.number("RATE_LIMIT_REFRESH_PER_IP", 0, u64::MAX)?,
                introspect_failures_per_ip: env.number(
                    "RATE_LIMIT_INTROSPECT_FAILURES_PER_IP",
                    0,
                    u64::MAX,
                )?,
                password_change_per_account: env.number(
                    "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT",
                    0,
                    u64::MAX,
                )?,
                password_change_per_session: env.number(
                    "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION",
                    0,
                    u64::MAX,
                )?,
                mail_per_ip: env.number("RATE_LIMIT_MAIL_PER_IP", 0, u64::MAX)?,
                mail_per_account: env.number("RATE_LIMIT_MAIL_PER_ACCOUNT", 0, u64::MAX)?,
                lockout_threshold: env.number("LOCKOUT_THRESHOLD", 0, 99)?,
                lockout_base: secs(env.number("LOCKOUT_BASE_SECONDS", 1, 3600)?),
                lockout_max: secs(env.number("LOCKOUT_MAX_SECONDS", 1, 86_400)?),
            },
            cors_allowed_origins,
            password_min_score: env.number("PASSWORD_MIN_SCORE", 0, 4)?,
            admin_emails,
            require_mfa_for_roles,
            audit_denied_window: millis(env.number("AUDIT_DENIED_WINDOW_MS", 10, 3_600_000)?),
            webhook_urls,
            webhook_secret,
            webhook_give_up: secs(env.number("WEBHOOK_GIVE_UP_SECONDS", 1, 30 * 86_400)?),
            federation,
            mail,
            webauthn,
            pending_ttls: PendingTtls::default(),
        })
    }

    pub fn is_embedded_db(&self) -> bool {
        self.database_url
            .as_deref()
            .is_none_or(|u| u.starts_with("sqlite:"))
    }

    /// The effective configuration as `NAME=value` lines, one per declared variable in [`VARS`]
    /// order: secrets show as `********` when set, URL passwords as `***`, unset variables say
    /// what that means.
    pub fn describe(&self) -> String {
        VARS.iter()
            .map(|var| {
                let shown = match self.effective(var.name) {
                    Effective::Unset => match var.default {
                        Unset(meaning) | Computed(meaning) => format!("(unset: {meaning})"),
                        Value(default) => default.to_string(),
                    },
                    Effective::Unknown => "(not shown)".to_string(),
                    // A secret's value is never read here; a declared secret is masked even if
                    // it were ever shown as text.
                    Effective::Secret => "********".to_string(),
                    Effective::Text(_) if var.secret => "********".to_string(),
                    Effective::Text(text) => mask_url_password(&text),
                };
                format!("{}={shown}", var.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value in effect for a declared variable, as `check-config` shows it.
    fn effective(&self, name: &str) -> Effective {
        use Effective::{Secret as Hidden, Text, Unset as Off};
        let opt = |v: Option<String>| v.map_or(Off, Text);
        let secret = |s: &Option<Secret>| if s.is_some() { Hidden } else { Off };
        let secs = |d: Duration| Text(d.as_secs().to_string());
        let millis = |d: Duration| Text(d.as_millis().to_string());
        let throttle = &self.throttle;
        match name {
            "HOST" => Text(self.host.clone()),
            "PORT" => Text(self.port.to_string()),
            "METRICS_PORT" => opt(self.metrics_port.map(|p| p.to_string())),
            "HSTS_MAX_AGE" => Text(self.hsts_max_age.to_string()),
            "TLS_CERT_FILE" => opt(self.tls.as_ref().map(|t| t.cert_file.clone())),
            "TLS_KEY_FILE" => opt(self.tls.as_ref().map(|t| t.key_file.clone())),
            "DB_URL" => opt(self.database_url.clone()),
            "SQLITE_PATH" => Text(self.sqlite_path.clone()),
            "REDIS_URL" | "REDIS_SENTINEL_URLS" | "REDIS_CLUSTER_URLS" => opt(self
                .redis
                .as_ref()
                .and_then(|r| (r.topology.var() == name).then(|| r.topology.urls().join(",")))),
            "REDIS_SENTINEL_MASTER" => opt(self.redis.as_ref().and_then(|r| match &r.topology {
                redis::RedisTopology::Sentinel { master, .. } => Some(master.clone()),
                _ => None,
            })),
            "REDIS_CA_FILE" => opt(self.redis.as_ref().and_then(|r| r.tls.ca_file.clone())),
            "REDIS_CLIENT_CERT_FILE" => opt(self
                .redis
                .as_ref()
                .and_then(|r| r.tls.client_cert_file.clone())),
            "REDIS_CLIENT_KEY_FILE" => opt(self
                .redis
                .as_ref()
                .and_then(|r| r.tls.client_key_file.clone())),
            "REDIS_WAIT_REPLICAS" => opt(self
                .redis
                .as_ref()
                .and_then(|r| r.wait_replicas.map(|n| n.to_string()))),
            // Without Redis there is nothing to wait for: the declared default is shown.
            "REDIS_WAIT_TIMEOUT_MS" => opt(self
                .redis
                .as_ref()
                .map(|r| r.wait_timeout.as_millis().to_string())),
            "JWT_SECRET" if self.jwt_secret_generated => Off,
            "JWT_SECRET" => Hidden,
            "JWT_SECRET_PREVIOUS" => secret(&self.jwt_secret_previous),
            "SESSION_SECRET" => secret(&self.session_secret),
            "SESSION_SECRET_PREVIOUS" => secret(&self.session_secret_previous),
            "JWT_ALGORITHM" => Text(self.jwt_algorithm.name().to_string()),
            "JWT_KEY_ENCRYPTION_KEY" => secret(&self.jwt_key_encryption_key),
            "JWT_PRIVATE_KEY_FILE" => opt(self.jwt_private_key.as_ref().map(|k| k.path.clone())),
            "JWT_KEY_ROTATION_DAYS" => Text((self.jwt_key_rotation.as_secs() / 86_400).to_string()),
            "JWKS_MAX_AGE" => secs(self.jwks_max_age),
            "JWT_KEY_POLL_SECONDS" => secs(self.jwt_key_poll),
            "JWT_ISSUER" => Text(self.jwt_issuer.clone()),
            "JWT_AUDIENCE" => Text(self.jwt_audience.clone()),
            "TOKEN_EXPIRATION" => Text((self.session_lifetime.as_secs() / 3600).to_string()),
            "ACCESS_TOKEN_TTL" => secs(self.access_token_ttl),
            "SESSION_CACHE_TTL" => secs(self.session_cache_ttl),
            "REDIS_PREFIX" => Text(self.redis_prefix.clone()),
            "REDIS_TIMEOUT_MS" => millis(self.redis_timeout),
            "PUBSUB_PING_INTERVAL_MS" => millis(self.pubsub_ping_interval),
            "ARGON2_MEMORY_KIB" => Text(self.argon2.memory_kib.to_string()),
            "ARGON2_ITERATIONS" => Text(self.argon2.iterations.to_string()),
            "ARGON2_PARALLELISM" => Text(self.argon2.parallelism.to_string()),
            "ARGON2_MAX_CONCURRENCY" => Text(self.argon2.max_concurrency.to_string()),
            "ARGON2_QUEUE_TIMEOUT_MS" => millis(self.argon2.queue_timeout),
            "ARGON2_MAX_QUEUE" => Text(self.argon2.max_queue.to_string()),
            "BODY_LIMIT_BYTES" => Text(self.body_limit.to_string()),
            "HTTP_WORKERS" => Text(self.workers.to_string()),
            "LOG_FORMAT" => Text(format!("{:?}", self.log_format).to_lowercase()),
            "RUST_LOG" => Text(self.log_filter.clone()),
            "MIGRATE_ON_START" => Text(self.migrate_on_start.to_string()),
            "SHUTDOWN_GRACE_SECONDS" => secs(self.shutdown_grace),
            "REFRESH_REUSE_GRACE" => secs(self.refresh_reuse_grace),
            "SESSION_IDLE_TIMEOUT" => Text(
                self.session_idle_timeout
                    .map_or("0 (off)".into(), |d| d.as_secs().to_string()),
            ),
            "MAX_SESSIONS_PER_USER" => Text(match self.max_sessions_per_user {
                0 => "0 (unlimited)".into(),
                n => n.to_string(),
            }),
            "STEP_UP_MAX_AGE" => secs(self.step_up_max_age),
            "TRUSTED_PROXIES" => list(self.trusted_proxies.iter().map(|n| n.to_string())),
            "RATE_LIMIT_WINDOW_SECONDS" => secs(throttle.window),
            "RATE_LIMIT_LOGIN_PER_IP" => Text(throttle.login_per_ip.to_string()),
            "RATE_LIMIT_LOGIN_PER_ACCOUNT" => Text(throttle.login_per_account.to_string()),
            "RATE_LIMIT_REGISTER_PER_IP" => Text(throttle.register_per_ip.to_string()),
            "RATE_LIMIT_REFRESH_PER_IP" => Text(throttle.refresh_per_ip.to_string()),
            "RATE_LIMIT_INTROSPECT_FAILURES_PER_IP" => {
                Text(throttle.introspect_failures_per_ip.to_string())
            }
            "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT" => {
                Text(throttle.password_change_per_account.to_string())
            }
            "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION" => {
                Text(throttle.password_change_per_session.to_string())
            }
            "RATE_LIMIT_MAIL_PER_IP" => Text(throttle.mail_per_ip.to_string()),
            "RATE_LIMIT_MAIL_PER_ACCOUNT" => Text(throttle.mail_per_account.to_string()),
            "LOCKOUT_THRESHOLD" => Text(throttle.lockout_threshold.to_string()),
            "LOCKOUT_BASE_SECONDS" => secs(throttle.lockout_base),
            "LOCKOUT_MAX_SECONDS" => secs(throttle.lockout_max),
            "CORS_ALLOWED_ORIGINS" => list(self.cors_allowed_origins.iter().cloned()),
            "PASSWORD_MIN_SCORE" => Text(self.password_min_score.to_string()),
            "ADMIN_EMAILS" => list(self.admin_emails.iter().cloned()),
            "REQUIRE_MFA_FOR_ROLES" => list(self.require_mfa_for_roles.iter().cloned()),
            "AUDIT_DENIED_WINDOW_MS" => millis(self.audit_denied_window),
            "WEBHOOK_URLS" => list(self.webhook_urls.iter().cloned()),
            "WEBHOOK_SECRET" => secret(&self.webhook_secret),
            "WEBHOOK_GIVE_UP_SECONDS" => secs(self.webhook_give_up),
            "WEBAUTHN_RP_ID" => opt(self.webauthn.as_ref().map(|w| w.rp_id.clone())),
            "WEBAUTHN_ORIGINS" => opt(self.webauthn.as_ref().map(|w| w.origins.join(","))),
            "WEBAUTHN_RP_NAME" => opt(self.webauthn.as_ref().map(|w| w.rp_name.clone())),
            "PUBLIC_URL" => opt(self.federation.public_url.clone()),
            "OAUTH_RETURN_URLS" => list(self.federation.return_urls.iter().cloned()),
            "OAUTH_LINK_VERIFIED_EMAILS" => Text(self.federation.link_verified_emails.to_string()),
            "OAUTH_LINK_CONFIRM" => Text(self.federation.link_confirm.to_string()),
            "OAUTH_DISCOVERY_REFRESH_SECONDS" => secs(self.federation.discovery_refresh),
            "OIDC_PROVIDERS" => list(self.oidc().map(|p| p.name.clone())),
            "OIDC_<NAME>_ISSUER" => list(self.oidc().map(|p| match &p.kind {
                federation::ProviderKind::Oidc { issuer } => format!("{}: {issuer}", p.name),
                federation::ProviderKind::Github { .. } => String::new(),
            })),
            "OIDC_<NAME>_CLIENT_ID" => {
                list(self.oidc().map(|p| format!("{}: {}", p.name, p.client_id)))
            }
            "OIDC_<NAME>_CLIENT_SECRET" if self.oidc().next().is_some() => Hidden,
            "OIDC_<NAME>_CLIENT_SECRET" => Off,
            "OIDC_<NAME>_SCOPES" => list(
                self.oidc()
                    .map(|p| format!("{}: {}", p.name, p.scopes.join(" "))),
            ),
            "OIDC_<NAME>_DISPLAY_NAME" => list(
                self.oidc()
                    .map(|p| format!("{}: {}", p.name, p.display_name)),
            ),
            "GITHUB_CLIENT_ID" => opt(self.github().map(|p| p.client_id.clone())),
            "GITHUB_CLIENT_SECRET" if self.github().is_some() => Hidden,
            "GITHUB_CLIENT_SECRET" => Off,
            "GITHUB_WEB_URL" | "GITHUB_API_URL" => opt(self.github().and_then(|p| match &p.kind {
                federation::ProviderKind::Github {
                    authorize_url,
                    api_url,
                    ..
                } => Some(if name == "GITHUB_API_URL" {
                    api_url.clone()
                } else {
                    authorize_url
                        .trim_end_matches("/login/oauth/authorize")
                        .to_string()
                }),
                federation::ProviderKind::Oidc { .. } => None,
            })),
            "SMTP_URL" => opt(self.mail.smtp.as_ref().map(|s| s.url.clone())),
            "SMTP_CA_FILE" => opt(self
                .mail
                .smtp
                .as_ref()
                .and_then(|s| s.ca_file.as_ref().map(|(path, _)| path.clone()))),
            "MAIL_FROM" => Text(self.mail.from.clone()),
            "APP_URL" => Text(self.mail.app_url.clone()),
            "MAIL_TEMPLATES_DIR" => opt(self.mail.templates_dir.clone()),
            "REQUIRE_EMAIL_VERIFICATION" => Text(self.mail.require_verification.to_string()),
            "NOTIFY_NEW_LOGIN" => Text(self.mail.notify_new_login.to_string()),
            // A declared variable without an arm here: the unit tests catch it.
            _ => Effective::Unknown,
        }
    }

    fn oidc(&self) -> impl Iterator<Item = &federation::ProviderConfig> {
        self.federation
            .providers
            .iter()
            .filter(|p| matches!(p.kind, federation::ProviderKind::Oidc { .. }))
    }

    fn github(&self) -> Option<&federation::ProviderConfig> {
        self.federation.provider(federation::GITHUB)
    }

    /// The URL sea-orm connects to.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.sqlite_path),
        }
    }
}

/// Shows what `check-config` shows, secrets and URL passwords masked: a configuration that
/// reaches a log line leaks nothing.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let described = self.describe();
        f.debug_map()
            .entries(described.lines().filter_map(|l| l.split_once('=')))
            .finish()
    }
}

/// A variable's value in a [`Config`], for `check-config`.
enum Effective {
    Unset,
    Text(String),
    /// Set, and never shown.
    Secret,
    /// Not known to [`Config::describe`] (a declaration without its arm).
    Unknown,
}

/// A comma-separated list; empty is unset.
fn list(items: impl Iterator<Item = String>) -> Effective {
    let joined = items.collect::<Vec<_>>().join(",");
    if joined.is_empty() {
        Effective::Unset
    } else {
        Effective::Text(joined)
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
        .any(|p| bytes.len().is_multiple_of(p) && bytes.chunks(p).all(|c| c == &bytes[..p]));
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

/// A 32-byte key given in base64: refused like JWT_SECRET when it is an example or too
/// predictable (checked on the text as given), and it must decode to exactly 32 bytes.
pub fn check_encryption_key(var: &'static str, value: String) -> Result<Secret, ConfigError> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let checked = check_secret(var, value.trim().to_string())?;
    let bytes = STANDARD.decode(checked.expose()).map_err(|_| {
        err(
            var,
            "expected 32 bytes in base64 (`head -c 32 /dev/urandom | base64`)",
        )
    })?;
    if bytes.len() != 32 {
        return Err(err(
            var,
            format!(
                "expected 32 bytes in base64, got {} bytes (`head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ),
        ));
    }
    // The decoded bytes too: base64 of a readable phrase passes the checks on the text.
    let lower = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    if PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m)) || entropy_bits(&bytes) < 120.0 {
        return Err(err(
            var,
            "is not 32 random bytes (an example or too little entropy); generate one with \
             `head -c 32 /dev/urandom | base64`",
        ));
    }
    Ok(Secret::new(bytes))
}

/// Decoded webhook keys shorter than this are refused (Standard Webhooks uses 24 to 64 bytes).
const MIN_WEBHOOK_SECRET_BYTES: usize = 24;

/// WEBHOOK_URLS and WEBHOOK_SECRET: http(s) URLs, and a `whsec_<base64>` key of random bytes
/// that is required with them.
fn webhook_settings(
    urls: Option<String>,
    secret: Option<String>,
) -> Result<(Vec<String>, Option<Secret>), ConfigError> {
    let urls: Vec<String> = urls
        .unwrap_or_default()
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    for url in &urls {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
        if host.is_none_or(|h| h.is_empty() || h.contains('@'))
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            // No userinfo: a password in the URL would reach logs and metrics labels.
            return Err(err(
                "WEBHOOK_URLS",
                "expected comma-separated http:// or https:// URLs with a host and no user or password",
            ));
        }
    }
    let secret =
        match secret {
            None if urls.is_empty() => None,
            None => return Err(err(
                "WEBHOOK_SECRET",
                "required when WEBHOOK_URLS is set (the receivers verify every webhook with it)",
            )),
            Some(s) => Some(check_webhook_secret(&s)?),
        };
    Ok((urls, secret))
}

/// `whsec_<base64>` as Standard Webhooks gives it: the decoded bytes key the HMAC. Refused when
/// short, an example value, or a pattern.
pub fn check_webhook_secret(value: &str) -> Result<Secret, ConfigError> {
    use base64::Engine;
    const VAR: &str = "WEBHOOK_SECRET";
    let generate = "generate one, e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`";
    let encoded = value.trim().strip_prefix("whsec_").ok_or_else(|| {
        err(
            VAR,
            format!("expected whsec_ followed by base64 of random bytes; {generate}"),
        )
    })?;
    let lower = encoded.to_ascii_lowercase();
    if PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m)) {
        return Err(err(
            VAR,
            format!("is an example value from documentation or configuration files; {generate}"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| {
            err(
                VAR,
                format!("the part after whsec_ is not base64; {generate}"),
            )
        })?;
    if bytes.len() < MIN_WEBHOOK_SECRET_BYTES {
        return Err(err(
            VAR,
            format!("must decode to at least {MIN_WEBHOOK_SECRET_BYTES} bytes; {generate}"),
        ));
    }
    let periodic = (1..=bytes.len() / 2)
        .any(|p| bytes.len() % p == 0 && bytes.chunks(p).all(|c| c == &bytes[..p]));
    // 24 random bytes estimate about 105 bits here (few repeats); patterns far less.
    if periodic || entropy_bits(&bytes) < 80.0 {
        return Err(err(
            VAR,
            format!(
                "has too little entropy (a repeated pattern or too few distinct bytes); {generate}"
            ),
        ));
    }
    Ok(Secret::new(bytes))
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

/// `scheme://user:***@host/...`: URLs may carry passwords, which must not be printed. The
/// password is everything between the user's `:` and the last `@`, so an unencoded `/`, `@` or
/// `,` in it is masked too; a comma-separated list of URLs is masked URL by URL.
pub fn mask_url_password(url: &str) -> String {
    // A list (REDIS_SENTINEL_URLS, REDIS_CLUSTER_URLS): each URL on its own.
    let pieces = redis::split_urls(url);
    if pieces.len() > 1 {
        return pieces
            .iter()
            .map(|p| mask_one_url_password(p))
            .collect::<Vec<_>>()
            .join(",");
    }
    mask_one_url_password(url)
}

fn mask_one_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
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
        assert!(c.is_embedded_db() && c.redis.is_none() && c.migrate_on_start);
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
        assert_eq!(
            mask_url_password("redis://u:a,b@n1:7000,rediss://:pw@n2:7001/0,redis://n3:7002"),
            "redis://u:***@n1:7000,rediss://:***@n2:7001/0,redis://n3:7002"
        );
        assert_eq!(
            mask_url_password("redis://:p,w@cache"),
            "redis://:***@cache"
        );
    }

    const JWT: (&str, &str) = ("JWT_SECRET", "jQ7w2Xr9Lm4Tz8Vb1Nc6Kd3Hs0Fg5YeAb3dE6gH9");

    #[test]
    fn exactly_one_redis_topology_is_accepted() {
        let single = ("REDIS_URL", "redis://127.0.0.1:6379");
        let sentinel = (
            "REDIS_SENTINEL_URLS",
            "redis://127.0.0.1:26379, redis://127.0.0.1:26380",
        );
        let master = ("REDIS_SENTINEL_MASTER", "mymaster");
        let cluster = (
            "REDIS_CLUSTER_URLS",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        );
        for combination in [
            vec![single, sentinel, master],
            vec![single, cluster],
            vec![sentinel, master, cluster],
            vec![single, sentinel, master, cluster],
        ] {
            let mut vars = combination.clone();
            vars.push(JWT);
            let e = config(&vars).unwrap_err();
            assert!(e.var.starts_with("REDIS_"), "{e}");
            assert!(e.to_string().contains("exactly one"), "{e}");
        }
        let topology = |vars: &[(&str, &str)]| {
            let mut vars = vars.to_vec();
            vars.push(JWT);
            config(&vars).unwrap().redis.unwrap().topology
        };
        assert_eq!(
            topology(&[single]),
            redis::RedisTopology::Single {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(
            topology(&[sentinel, master]),
            redis::RedisTopology::Sentinel {
                urls: vec![
                    "redis://127.0.0.1:26379".into(),
                    "redis://127.0.0.1:26380".into()
                ],
                master: "mymaster".into()
            }
        );
        assert!(matches!(
            topology(&[cluster]),
            redis::RedisTopology::Cluster { urls } if urls.len() == 2
        ));
        // None: in-process, and the Redis-only settings are shown as their defaults.
        assert!(config(&[]).unwrap().redis.is_none());

        let var_of = |vars: &[(&str, &str)]| {
            let mut vars = vars.to_vec();
            vars.push(JWT);
            config(&vars).unwrap_err().var
        };
        assert_eq!(var_of(&[sentinel]), "REDIS_SENTINEL_MASTER");
        assert_eq!(var_of(&[single, master]), "REDIS_SENTINEL_MASTER");
        assert_eq!(
            var_of(&[("REDIS_SENTINEL_URLS", "redis://a:1,rediss://b:2"), master]),
            "REDIS_SENTINEL_URLS"
        );
        assert_eq!(
            var_of(&[("REDIS_CLUSTER_URLS", "http://a:1")]),
            "REDIS_CLUSTER_URLS"
        );
        assert_eq!(
            var_of(&[("REDIS_CLUSTER_URLS", ", ,")]),
            "REDIS_CLUSTER_URLS"
        );
        assert_eq!(var_of(&[("REDIS_URL", "http://cache:6379")]), "REDIS_URL");
        assert_eq!(
            var_of(&[single, ("REDIS_WAIT_REPLICAS", "many")]),
            "REDIS_WAIT_REPLICAS"
        );
        assert_eq!(
            var_of(&[single, ("REDIS_WAIT_TIMEOUT_MS", "0")]),
            "REDIS_WAIT_TIMEOUT_MS"
        );
        // A Redis of any kind needs a shared JWT secret.
        for vars in [vec![sentinel, master], vec![cluster]] {
            assert_eq!(config(&vars).unwrap_err().var, "JWT_SECRET");
        }
        let c = config(&[single, JWT, ("REDIS_WAIT_REPLICAS", "2")]).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(
            (r.wait_replicas, r.wait_timeout),
            (Some(2), Duration::from_millis(500))
        );
        let c = config(&[single, JWT]).unwrap();
        assert_eq!(c.redis.unwrap().wait_replicas, None);
    }

    #[test]
    fn redis_tls_files_are_read_at_start_and_errors_name_the_variable() {
        let dir = std::env::temp_dir().join(format!(
            "sessiond-redis-tls-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (
            write("c.crt", &cert.pem()),
            write("c.key", &signing_key.serialize_pem()),
        );
        let garbage = write("garbage.pem", "not PEM at all");
        let missing = dir.join("missing.pem").display().to_string();
        let tls = ("REDIS_URL", "rediss://cache:6380");
        let var_of = |vars: &[(&str, &str)]| {
            let mut vars = vars.to_vec();
            vars.push(JWT);
            let e = config(&vars).unwrap_err();
            (e.var, e.to_string())
        };
        for (vars, var) in [
            (
                vec![tls, ("REDIS_CA_FILE", missing.as_str())],
                "REDIS_CA_FILE",
            ),
            (
                vec![tls, ("REDIS_CA_FILE", garbage.as_str())],
                "REDIS_CA_FILE",
            ),
            (vec![tls, ("REDIS_CA_FILE", key.as_str())], "REDIS_CA_FILE"),
            (
                vec![tls, ("REDIS_CLIENT_CERT_FILE", cert.as_str())],
                "REDIS_CLIENT_KEY_FILE",
            ),
            (
                vec![tls, ("REDIS_CLIENT_KEY_FILE", key.as_str())],
                "REDIS_CLIENT_CERT_FILE",
            ),
            (
                vec![
                    tls,
                    ("REDIS_CLIENT_CERT_FILE", garbage.as_str()),
                    ("REDIS_CLIENT_KEY_FILE", key.as_str()),
                ],
                "REDIS_CLIENT_CERT_FILE",
            ),
            (
                vec![
                    tls,
                    ("REDIS_CLIENT_CERT_FILE", cert.as_str()),
                    ("REDIS_CLIENT_KEY_FILE", cert.as_str()),
                ],
                "REDIS_CLIENT_KEY_FILE",
            ),
            // The files without rediss:// would be ignored: refused instead.
            (
                vec![
                    ("REDIS_URL", "redis://cache:6379"),
                    ("REDIS_CA_FILE", cert.as_str()),
                ],
                "REDIS_CA_FILE",
            ),
            (
                vec![
                    ("REDIS_CLIENT_CERT_FILE", cert.as_str()),
                    ("REDIS_CLIENT_KEY_FILE", key.as_str()),
                ],
                "REDIS_CLIENT_CERT_FILE",
            ),
        ] {
            assert_eq!(var_of(&vars).0, var, "{vars:?}: {}", var_of(&vars).1);
        }
        let c = config(&[
            tls,
            JWT,
            ("REDIS_CA_FILE", &cert),
            ("REDIS_CLIENT_CERT_FILE", &cert),
            ("REDIS_CLIENT_KEY_FILE", &key),
        ])
        .unwrap();
        let r = c.redis.as_ref().unwrap();
        assert!(r.tls.ca_pem.is_some() && r.tls.client_pem.is_some());
        let described = c.describe();
        assert!(
            described.contains(&format!("REDIS_CA_FILE={cert}")),
            "{described}"
        );
        assert!(described.contains(&format!("REDIS_CLIENT_KEY_FILE={key}")));
        // The key's contents never reach Debug output.
        let pem = std::fs::read_to_string(&key).unwrap();
        let body = pem.lines().nth(1).unwrap();
        assert!(!format!("{c:?}").contains(body) && !format!("{r:?}").contains(body));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_passwords_are_masked_and_users_shown() {
        let c = config(&[JWT, ("REDIS_URL", "rediss://alice:s3cr3t-pw@cache:6380/0")]).unwrap();
        let (described, debug) = (c.describe(), format!("{c:?}"));
        assert!(
            described.contains("REDIS_URL=rediss://alice:***@cache:6380/0"),
            "{described}"
        );
        assert!(!described.contains("s3cr3t-pw") && !debug.contains("s3cr3t-pw"));
        let c = config(&[
            JWT,
            (
                "REDIS_SENTINEL_URLS",
                "redis://bob:pw-one@s1:26379,redis://bob:pw-two@s2:26379",
            ),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        let described = c.describe();
        assert!(
            described
                .contains("REDIS_SENTINEL_URLS=redis://bob:***@s1:26379,redis://bob:***@s2:26379"),
            "{described}"
        );
        assert!(described.contains("REDIS_SENTINEL_MASTER=mymaster"));
        let topology = &c.redis.as_ref().unwrap().topology;
        for shown in [
            described.clone(),
            format!("{c:?}"),
            topology.describe(),
            format!("{topology:?}"),
        ] {
            assert!(
                !shown.contains("pw-one") && !shown.contains("pw-two"),
                "{shown}"
            );
        }
        // Unencoded separators inside a password are masked too.
        assert_eq!(
            mask_url_password("redis://carol:a/b@c:d@cache:6379"),
            "redis://carol:***@cache:6379"
        );
        assert_eq!(
            mask_url_password("redis://:p,w@cache"),
            "redis://:***@cache"
        );
    }

    /// Parsing reads exactly the declared variables: none is read without a declaration (its
    /// default and masking would be missing), none is declared and ignored.
    #[test]
    fn parsing_reads_exactly_the_declared_variables() {
        let read = std::cell::RefCell::new(Vec::new());
        // One OpenID Provider, so that its OIDC_<NAME>_* variables are read (as OIDC_CORP_*).
        let provider = [
            ("OIDC_PROVIDERS", "corp"),
            ("OIDC_CORP_ISSUER", "https://idp.example.com"),
            ("OIDC_CORP_CLIENT_ID", "sessiond"),
            ("OIDC_CORP_CLIENT_SECRET", "x"),
            ("PUBLIC_URL", "https://auth.example.com"),
            ("OAUTH_RETURN_URLS", "https://app.example.com/cb"),
        ];
        Config::from_lookup(|k| {
            read.borrow_mut()
                .push(k.replace("OIDC_CORP_", "OIDC_<NAME>_"));
            provider
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let mut read = read.into_inner();
        read.sort();
        read.dedup();
        let mut declared: Vec<String> = VARS.iter().map(|v| v.name.to_string()).collect();
        declared.sort();
        let before = declared.len();
        declared.dedup();
        assert_eq!(declared.len(), before, "a variable is declared twice");
        assert_eq!(read, declared);
    }

    /// The declared default values are the ones in effect: setting each explicitly changes
    /// nothing.
    #[test]
    fn declared_defaults_are_the_effective_ones() {
        let explicit: Vec<(&str, &str)> = VARS
            .iter()
            .filter_map(|v| match v.default {
                Value(d) => Some((v.name, d)),
                _ => None,
            })
            .collect();
        assert!(explicit.len() > 30);
        assert_eq!(
            config(&explicit).unwrap().describe(),
            config(&[]).unwrap().describe()
        );
    }

    #[test]
    fn check_config_shows_every_declared_variable_and_masks_the_secrets() {
        let secrets = [
            ("JWT_SECRET", "jQ7w2Xr9Lm4Tz8Vb1Nc6Kd3Hs0Fg5YeAb3dE6gH9"),
            (
                "JWT_SECRET_PREVIOUS",
                "k3Jx9QvT2mLp8RwZ0aYc5NbE7hUd1GsF4oVi6XtK",
            ),
            ("SESSION_SECRET", "cM5n8Bv2Xz7Lk4Jh1Gf9Ds6Aq3Wt0ErKm2pQ7sV4"),
            (
                "SESSION_SECRET_PREVIOUS",
                "pZ3x6Cv9Bn2Mq5Wl8Ek1Rj4Th7Yg0UfLn8rT1wX6",
            ),
            (
                "JWT_KEY_ENCRYPTION_KEY",
                "2MiqxEk/sR7gt+yd5hmggkmkd4JSUvPg27ufXK2flJc=",
            ),
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("OIDC_CORP_CLIENT_SECRET", "oidc-client-secret-4711"),
            ("GITHUB_CLIENT_SECRET", "github-client-secret-0815"),
        ];
        let mut vars = secrets.to_vec();
        vars.extend([
            ("OIDC_PROVIDERS", "corp"),
            ("OIDC_CORP_ISSUER", "https://idp.example.com"),
            ("OIDC_CORP_CLIENT_ID", "sessiond"),
            ("GITHUB_CLIENT_ID", "gh-client"),
            ("PUBLIC_URL", "https://auth.example.com"),
            ("OAUTH_RETURN_URLS", "https://app.example.com/cb"),
        ]);
        vars.push(("WEBHOOK_URLS", "https://hooks.example.com/sessiond"));
        vars.push(("DB_URL", "postgres://app:db-pass-123@db:5432/x"));
        vars.push(("TRUSTED_PROXIES", "10.0.0.0/8"));
        let c = config(&vars).unwrap();
        let described = c.describe();
        let debug = format!("{c:?}");
        let names: Vec<&str> = described
            .lines()
            .map(|l| l.split_once('=').expect("NAME=value").0)
            .collect();
        let declared: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(names, declared);
        assert!(!described.contains("(not shown)"), "{described}");
        for var in VARS.iter().filter(|v| v.secret) {
            assert!(
                described.contains(&format!("{}=********", var.name)),
                "{described}"
            );
        }
        for (_, value) in secrets {
            assert!(!described.contains(value) && !debug.contains(value));
        }
        assert!(described.contains("DB_URL=postgres://app:***@db:5432/x"));
        assert!(!described.contains("db-pass-123") && !debug.contains("db-pass-123"));
        assert!(debug.contains("\"JWT_SECRET\": \"********\""), "{debug}");
        assert!(described.contains("TRUSTED_PROXIES=10.0.0.0/8"));
    }

    /// The README's Configuration table lists exactly the declared variables, each once.
    #[test]
    fn readme_configuration_table_lists_exactly_the_declared_variables() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a Configuration section");
        let mut listed = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let first = row.split('|').nth(1).unwrap_or_default();
            listed.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
        }
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), listed.len(), "a variable is listed twice");
        let mut declared: Vec<String> = VARS.iter().map(|v| v.name.to_string()).collect();
        declared.sort();
        assert_eq!(
            sorted, declared,
            "README Configuration table vs config::VARS"
        );
    }

    #[test]
    fn webhook_settings_are_validated_naming_the_variable() {
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let c = config(&[
            (
                "WEBHOOK_URLS",
                "https://hooks.example.com/a, http://10.0.0.7:9000/b",
            ),
            ("WEBHOOK_SECRET", good),
        ])
        .unwrap();
        assert_eq!(c.webhook_urls.len(), 2);
        assert_eq!(c.webhook_secret.as_ref().unwrap().expose().len(), 24);
        assert!(c.describe().contains("WEBHOOK_SECRET=********"));
        assert!(config(&[]).unwrap().webhook_urls.is_empty());
        let refused = |vars: &[(&str, &str)]| config(vars).unwrap_err().var;
        assert_eq!(
            refused(&[("WEBHOOK_URLS", "https://h/x")]),
            "WEBHOOK_SECRET"
        );
        for url in [
            "ftp://h/x",
            "https://",
            "https://u:p@h/x",
            "h/x",
            "https://h/ x",
        ] {
            assert_eq!(
                refused(&[("WEBHOOK_URLS", url), ("WEBHOOK_SECRET", good)]),
                "WEBHOOK_URLS",
                "{url}"
            );
        }
        let aaaa = format!("whsec_{}", "QUFB".repeat(10));
        for secret in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",                   // no prefix
            "whsec_c2hvcnQ=",                                     // 5 bytes
            "whsec_not base64!",                                  //
            "whsec_cGxhY2Vob2xkZXJwbGFjZWhvbGRlcnBsYWNlaG9sZGVy", // a pattern
            aaaa.as_str(),
        ] {
            let e =
                config(&[("WEBHOOK_URLS", "https://h/x"), ("WEBHOOK_SECRET", secret)]).unwrap_err();
            assert_eq!(e.var, "WEBHOOK_SECRET", "{secret}");
            assert!(!e.message.contains(secret), "the value is not echoed");
        }
    }

    #[test]
    fn identity_provider_settings_are_validated_naming_the_variable() {
        let good = [
            ("OIDC_PROVIDERS", "Corp, google-2"),
            ("OIDC_CORP_ISSUER", "https://idp.example.com/"),
            ("OIDC_CORP_CLIENT_ID", "sessiond"),
            ("OIDC_CORP_CLIENT_SECRET", "s"),
            ("OIDC_GOOGLE_2_ISSUER", "https://accounts.google.com"),
            ("OIDC_GOOGLE_2_CLIENT_ID", "id"),
            ("OIDC_GOOGLE_2_CLIENT_SECRET", "s"),
            ("OIDC_GOOGLE_2_SCOPES", "openid email"),
            ("PUBLIC_URL", "https://auth.example.com/"),
            (
                "OAUTH_RETURN_URLS",
                "https://app.example.com/cb, com.example.app:/oauth",
            ),
        ];
        let c = config(&good).unwrap();
        let names: Vec<&str> = c
            .federation
            .providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["corp", "google-2"]);
        assert_eq!(
            c.federation.providers[0].scopes,
            ["openid", "email", "profile"]
        );
        assert_eq!(c.federation.providers[0].display_name, "corp");
        assert_eq!(
            c.federation.callback_url("corp"),
            "https://auth.example.com/oauth/corp/callback"
        );
        assert!(!c.federation.link_verified_emails);
        let refused = |change: &[(&'static str, &'static str)], skip: &str| {
            let mut vars: Vec<(&str, &str)> =
                good.iter().copied().filter(|(k, _)| *k != skip).collect();
            vars.extend_from_slice(change);
            config(&vars).unwrap_err()
        };
        let e = refused(&[], "OIDC_CORP_CLIENT_SECRET");
        assert_eq!(e.var, "OIDC_<NAME>_CLIENT_SECRET");
        assert!(e.message.contains("OIDC_CORP_CLIENT_SECRET"), "{e}");
        assert_eq!(refused(&[], "OIDC_CORP_ISSUER").var, "OIDC_<NAME>_ISSUER");
        assert_eq!(refused(&[], "PUBLIC_URL").var, "PUBLIC_URL");
        assert_eq!(refused(&[], "OAUTH_RETURN_URLS").var, "OAUTH_RETURN_URLS");
        for (var, value) in [
            ("OIDC_CORP_ISSUER", "http://idp.example.com"),
            ("OIDC_GOOGLE_2_SCOPES", "email profile"),
            ("PUBLIC_URL", "https://u:p@auth.example.com"),
            ("OAUTH_RETURN_URLS", "https://app.example.com/cb?x=1"),
            ("OAUTH_RETURN_URLS", "/relative"),
            ("OIDC_PROVIDERS", "github"),
            ("OIDC_PROVIDERS", "a b"),
        ] {
            let e = refused(&[(var, value)], var);
            assert!(
                e.var == var || e.var.starts_with("OIDC_<NAME>_"),
                "{var}={value}: {e}"
            );
        }
        assert_eq!(
            refused(&[("GITHUB_CLIENT_ID", "x")], "").var,
            "GITHUB_CLIENT_SECRET"
        );
        let github = config(&[
            ("GITHUB_CLIENT_ID", "gh"),
            ("GITHUB_CLIENT_SECRET", "s"),
            ("PUBLIC_URL", "https://auth.example.com"),
            ("OAUTH_RETURN_URLS", "https://app.example.com/cb"),
        ])
        .unwrap();
        assert_eq!(github.federation.providers[0].name, "github");
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

    #[test]
    fn asymmetric_algorithms_need_a_sound_encryption_key_or_a_key_file() {
        let kek = "2MiqxEk/sR7gt+yd5hmggkmkd4JSUvPg27ufXK2flJc=";
        let c = config(&[("JWT_ALGORITHM", "eddsa"), ("JWT_KEY_ENCRYPTION_KEY", kek)]).unwrap();
        assert_eq!(c.jwt_algorithm, JwtAlgorithm::EdDsa);
        assert_eq!(c.jwt_key_encryption_key.unwrap().expose().len(), 32);
        assert_eq!(config(&[]).unwrap().jwt_algorithm, JwtAlgorithm::Hs256);
        for alg in ["EdDSA", "ES256", "RS256"] {
            let e = config(&[("JWT_ALGORITHM", alg)]).unwrap_err();
            assert_eq!(e.var, "JWT_KEY_ENCRYPTION_KEY");
        }
        assert_eq!(
            config(&[("JWT_ALGORITHM", "HS512")]).unwrap_err().var,
            "JWT_ALGORITHM"
        );
        for bad in [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 32 zero bytes
            "YWJjYWJjYWJjYWJjYWJjYWJjYWJjYWJjYWJjYWJjYWI=", // "abc" repeated
            "cmVwbGFjZS1tZS1yZXBsYWNlLW1lLXJlcGxhY2UtbWU=", // a placeholder
            "2MiqxEk/sR7gt+yd5hmggkmkd4JSUvPg27ufXK2f",     // 30 bytes
            "not base64 at all, but long enough to pass the length check!",
        ] {
            let e =
                config(&[("JWT_ALGORITHM", "ES256"), ("JWT_KEY_ENCRYPTION_KEY", bad)]).unwrap_err();
            assert_eq!(e.var, "JWT_KEY_ENCRYPTION_KEY", "{bad}");
            assert!(
                !e.to_string().contains(bad),
                "the error must not echo the value"
            );
        }
        assert_eq!(
            config(&[("JWT_PRIVATE_KEY_FILE", "/nonexistent.pem")])
                .unwrap_err()
                .var,
            "JWT_PRIVATE_KEY_FILE"
        );
        assert_eq!(
            config(&[
                ("JWT_ALGORITHM", "RS256"),
                ("JWT_PRIVATE_KEY_FILE", "/nonexistent.pem")
            ])
            .unwrap_err()
            .var,
            "JWT_PRIVATE_KEY_FILE"
        );
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
