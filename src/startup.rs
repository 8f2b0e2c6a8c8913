//! Builds the application: database, migrations, session store, actors, HTTP server on its own
//! listener (port 0 in tests), and a handle with the bound port.
use std::{net::TcpListener, time::Duration};

use actix::{Actor, Addr};
use actix_cors::Cors;
use actix_web::{
    dev::Server,
    dev::ServerHandle,
    http::header,
    middleware::{from_fn, Condition, DefaultHeaders},
    web, App, HttpServer,
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::actor::Ask;
use crate::{
    app::{self, mfa::MfaTokens, Settings},
    audit::{AuditLog, AuditWriter},
    auth::JwtKeys,
    config::Config,
    federation::{
        pending::{Pending, RecordSeal},
        Providers,
    },
    mail::{MailWorker, Mailer},
    metrics::Metrics,
    redis::Redis,
    routes,
    session::{
        self, seal::SealKeys, Lifetimes, MemoryStore, RedisStore, SessionCache, SessionRegistry,
        SessionStore,
    },
    state::AppState,
    throttle::Throttle,
    users::{self, password::PasswordHasher, UserStore},
    webhooks::{DeliveryWorker, RetryPolicy, Webhooks},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DB_URL: cannot connect to the database: {0}")]
    Database(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The message names the variable (REDIS_URL, REDIS_SENTINEL_URLS …) and the cause.
    #[error("{0}")]
    Redis(String),
    #[error("argon2 settings rejected: {0}")]
    Argon2(String),
    #[error("ADMIN_EMAILS: cannot grant the admin role: {0}")]
    AdminGrant(String),
    /// The message names the variable (JWT_KEY_ENCRYPTION_KEY, JWT_PRIVATE_KEY_FILE) when one is at fault.
    #[error("signing keys: {0}")]
    Keys(String),
    /// Names the provider (OIDC_PROVIDERS) and the cause.
    #[error("identity providers: {0}")]
    Providers(String),
    /// The message names the variable (MAIL_TEMPLATES_DIR, MAIL_FROM, SMTP_CA_FILE) at fault.
    #[error("mail: {0}")]
    Mail(String),
    /// Names the variable (WEBAUTHN_RP_ID, WEBAUTHN_ORIGINS) at fault.
    #[error("WebAuthn: {0}")]
    Webauthn(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Database calls longer than this give 503.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn connect_database(config: &Config) -> Result<DatabaseConnection, StartupError> {
    if config.database_url.is_none() {
        private_sqlite_file(&config.sqlite_path)?;
    }
    let mut options = ConnectOptions::new(config.effective_database_url());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(3))
        .max_connections(if config.is_embedded_db() { 1 } else { 16 });
    Database::connect(options)
        .await
        .map_err(|e| StartupError::Database(e.to_string()))
}

/// The embedded database holds password hashes: its file is created readable by the owner only
/// (SQLite gives its -wal and -shm files the same mode), and a file readable by others is
/// narrowed to the owner, with a warning.
fn private_sqlite_file(path: &str) -> Result<(), StartupError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| StartupError::Database(format!("SQLITE_PATH {path}: {e}"));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path).map_err(fail)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path,
                    mode = format!("{:o}", mode & 0o777),
                    "the SQLite file was readable by others; narrowed to the owner (0600)"
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(fail)?;
            }
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// Applies pending migrations, then gives the `admin` role any permission added to
/// sessiond's definition since (see [`users::sync_admin_role`]).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), StartupError> {
    Migrator::up(db, None)
        .await
        .map_err(|e| StartupError::Migration(e.to_string()))?;
    sync_admin_role(db).await
}

async fn sync_admin_role(db: &DatabaseConnection) -> Result<(), StartupError> {
    let added = users::sync_admin_role(db)
        .await
        .map_err(|e| StartupError::Migration(format!("admin role: {e}")))?;
    if added > 0 {
        tracing::info!(
            added,
            "the admin role gained the permissions added to sessiond"
        );
    }
    Ok(())
}

/// Browser access for the listed origins only; bearer tokens, so no credentials mode.
fn cors(origins: &[String]) -> Cors {
    origins
        .iter()
        .fold(Cors::default(), |c, o| c.allowed_origin(o))
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(600)
}

pub struct Application {
    port: u16,
    metrics_port: Option<u16>,
    /// The METRICS_PORT server (already running), stopped after the main one.
    metrics_server: Option<ServerHandle>,
    server: Server,
    users: Addr<UserStore>,
    sessions: Addr<SessionRegistry>,
    audit: AuditWriter,
    /// The signing-key poll loop, stopped with the server.
    key_refresh: tokio::task::JoinHandle<()>,
    /// This pod's webhook delivery worker, with WEBHOOK_URLS.
    webhooks: Option<DeliveryWorker>,
    /// This pod's mail delivery worker.
    mail: MailWorker,
}

impl Application {
    /// Must run inside an actix system (`#[actix_web::main]`, `#[actix_web::test]`).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let db = connect_database(&config).await?;
        if config.migrate_on_start {
            migrate(&db).await?;
        } else if let Err(e) = sync_admin_role(&db).await {
            // Not fatal: the schema may be behind (then /ready says so) until a migration Job
            // runs, which syncs the role itself.
            tracing::warn!(cause = %e, "could not bring the admin role up to date");
        }
        let schema_behind = log_schema_status(&db).await;
        let metrics = Metrics::new();
        let hasher =
            PasswordHasher::new(&config.argon2, config.password_min_score, metrics.clone())
                .await
                .map_err(|e| StartupError::Argon2(e.to_string()))?;

        let lifetimes = Lifetimes::new(config.session_idle_timeout, config.refresh_reuse_grace)
            .with_session_limits(config.session_lifetime, config.max_sessions_per_user);
        // One-time records are sealed with the session records' keys.
        let seal = SealKeys::from_config(&config);
        let record_seal = RecordSeal::new(seal.clone(), metrics.record_seal_failures.clone());
        // With Redis the cache is trusted only once the invalidation subscription is up.
        let (store, trusted, throttle, pending, mfa_tokens) = match &config.redis {
            Some(settings) => {
                let redis = Redis::connect(settings, &config.redis_prefix, metrics.redis.clone())
                    .await
                    .map_err(|e| StartupError::Redis(e.to_string()))?;
                tracing::info!(
                    redis = %settings.topology.describe(),
                    wait_replicas = redis.wait_replicas(),
                    "connected to Redis"
                );
                let throttle = Throttle::redis(config.throttle.clone(), redis.clone());
                let pending = Pending::redis(redis.clone(), record_seal.clone());
                let mfa_tokens =
                    MfaTokens::redis(redis.clone(), config.pending_ttls.mfa_token, record_seal);
                let store = RedisStore::new(redis, lifetimes, seal, metrics.seal_failures.clone());
                (
                    SessionStore::Redis(store),
                    false,
                    throttle,
                    pending,
                    mfa_tokens,
                )
            }
            None => (
                SessionStore::Memory(MemoryStore::new(lifetimes)),
                true,
                Throttle::memory(config.throttle.clone()),
                Pending::memory(record_seal.clone()),
                MfaTokens::memory(config.pending_ttls.mfa_token, record_seal),
            ),
        };
        // Every OpenID Provider's discovery document is read now: a misconfigured or
        // unreachable issuer stops the start with its name.
        let federation = if config.federation.providers.is_empty() {
            None
        } else {
            let providers = Providers::start(&config.federation)
                .await
                .map_err(StartupError::Providers)?;
            Some(app::federation::Federation {
                providers,
                pending: pending.clone(),
                state_ttl: config.pending_ttls.federation_state,
            })
        };
        let webauthn = config
            .webauthn
            .as_ref()
            .map(|w| app::webauthn::Passkeys::new(w, pending))
            .transpose()
            .map_err(StartupError::Webauthn)?;
        let cache = SessionCache::new(
            config.session_cache_ttl,
            config.redis_timeout,
            trusted,
            lifetimes,
        );
        let sessions = SessionRegistry::new(
            store,
            cache.clone(),
            metrics.clone(),
            config.pubsub_ping_interval,
        )
        .start();
        let jwt = JwtKeys::new(&config);
        let key_refresh = crate::auth::keys::start(db.clone(), &config, jwt.clone())
            .await
            .map_err(|e| StartupError::Keys(e.to_string()))?;
        let (webhooks, webhook_worker) = Webhooks::start(
            db.clone(),
            &config,
            metrics.clone(),
            RetryPolicy {
                give_up_after: config.webhook_give_up,
                ..RetryPolicy::default()
            },
        );
        let mailer = Mailer::new(&config.mail)
            .map_err(|e| StartupError::Mail(format!("MAIL_TEMPLATES_DIR: {e}")))?;
        // Without SMTP_URL the mails go to the log; with their text (and so their links) only
        // in the embedded single-node mode, for development.
        let mail_worker = MailWorker::start(
            db.clone(),
            &config.mail,
            &mailer,
            metrics.clone(),
            RetryPolicy::default(),
            config.is_embedded_db(),
        )
        .map_err(StartupError::Mail)?;
        if config.mail.smtp.as_ref().is_some_and(|s| s.allow_plaintext) {
            tracing::warn!(
                "SMTP_URL is smtp+plaintext://: when the SMTP server offers no STARTTLS (or someone on the way strips the offer), the SMTP password and the mails, reset and verification links included, are sent in clear"
            );
        }
        if config.mail.smtp.is_none() {
            tracing::warn!(
                "SMTP_URL is not set: mails (password resets, verification links, notices) are written to the log, not sent"
            );
        }
        let users = UserStore::new(db, DB_TIMEOUT, metrics.db.clone()).start();
        let (audit, audit_writer) =
            AuditLog::start(users.clone(), metrics.clone(), config.audit_denied_window);

        let addr = format!("{}:{}", config.host, config.port);
        let tls = config.tls.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| StartupError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let bind_err = |source| StartupError::Bind {
            addr: addr.clone(),
            source,
        };
        let port = listener.local_addr().map_err(bind_err)?.port();
        let metrics_listener = match config.metrics_port {
            Some(p) => {
                let addr = format!("{}:{p}", config.host);
                Some(
                    TcpListener::bind(&addr).map_err(|source| StartupError::Bind {
                        addr: addr.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        tracing::info!(
            port,
            https = tls.is_some(),
            database = if config.is_embedded_db() {
                "sqlite (embedded)"
            } else {
                "postgresql"
            },
            sessions = if config.redis.is_some() {
                "redis"
            } else {
                "in-process"
            },
            "sessiond starting"
        );
        if config.redis.is_none() {
            tracing::warn!(
                "sessions are kept in this process: single-node mode, sessions end when it stops"
            );
        }
        if config.jwt_secret_generated {
            tracing::warn!("JWT_SECRET is not set: using a random per-process secret, tokens die with the process");
        }

        let (workers, grace, body_limit) =
            (config.workers, config.shutdown_grace, config.body_limit);
        let profiles = moka::future::Cache::builder()
            .time_to_live(config.session_cache_ttl.max(Duration::from_millis(1)))
            .max_capacity(if config.session_cache_ttl.is_zero() {
                0
            } else {
                100_000
            })
            .build();
        let settings = Settings {
            session_lifetime: config.session_lifetime,
            admin_emails: config.admin_emails.clone(),
            require_verification: config.mail.require_verification,
            notify_new_login: config.mail.notify_new_login,
            mfa_issuer: config.jwt_issuer.clone(),
            mfa_key: config.jwt_key_encryption_key.clone(),
            step_up_max_age: config.step_up_max_age,
            totp_enrolment_ttl: config.pending_ttls.totp_enrolment,
            recovery_keys: app::mfa::RecoveryKeys::from_config(&config),
        };
        let state = web::Data::new(AppState {
            app: app::App {
                users: users.clone(),
                sessions: sessions.clone(),
                hasher,
                throttle,
                audit,
                metrics,
                webhooks,
                mailer,
                profiles,
                client_secrets: app::clients::client_secrets(config.session_cache_ttl),
                federation,
                mfa_tokens,
                webauthn,
                settings,
            },
            jwt,
            config,
            cache,
        });
        if schema_behind {
            // The accounts are not there to grant yet: once the migration job has run.
            defer_admin_emails(state.clone());
        } else {
            grant_admin_emails(&state).await?;
        }
        // The extractors' own app data: each reads only what it needs.
        let session_check = web::Data::new(state.session_check());
        let denial_audit = web::Data::new(state.denial_audit());
        let origins = state.config.cors_allowed_origins.clone();
        let public_metrics = metrics_listener.is_none();
        // Browsers that reached us over TLS keep to HTTPS for max-age (HSTS_MAX_AGE, 0: not sent).
        let hsts = (tls.is_some() && state.config.hsts_max_age > 0)
            .then(|| format!("max-age={}", state.config.hsts_max_age));
        let metrics_server = match metrics_listener {
            Some(listener) => {
                let state = state.clone();
                let metrics_port = listener.local_addr().map_err(bind_err)?.port();
                tracing::info!(port = metrics_port, "metrics served on their own port");
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .configure(routes::health::configure_metrics)
                        .default_service(web::to(routes::not_found))
                })
                .listen(listener)
                .map_err(bind_err)?
                .workers(1)
                .shutdown_timeout(grace.as_secs())
                .disable_signals()
                .run();
                Some((metrics_port, server))
            }
            None => None,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(session_check.clone())
                .app_data(denial_audit.clone())
                .wrap(Condition::new(
                    hsts.is_some(),
                    DefaultHeaders::new().add((
                        header::STRICT_TRANSPORT_SECURITY,
                        hsts.clone().unwrap_or_default(),
                    )),
                ))
                // Outermost of the two, so preflights and CORS errors get request ids too.
                .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
                .wrap(from_fn(routes::request_context))
                .configure(routes::configure(body_limit, public_metrics))
                .default_service(web::to(routes::not_found))
        });
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls.server_config()),
            None => server.listen(listener),
        }
        .map_err(bind_err)?
        .workers(workers)
        .shutdown_timeout(grace.as_secs())
        // Signals are handled by the binary, which asks for a graceful stop on SIGTERM and SIGINT.
        .disable_signals()
        .run();
        let (metrics_port, metrics_server) = match metrics_server {
            Some((p, server)) => {
                let handle = server.handle();
                actix_web::rt::spawn(server);
                (Some(p), Some(handle))
            }
            None => (None, None),
        };
        Ok(Self {
            port,
            metrics_port,
            metrics_server,
            server,
            users,
            sessions,
            audit: audit_writer,
            key_refresh,
            webhooks: webhook_worker,
            mail: mail_worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The METRICS_PORT listener's bound port, when /metrics has its own.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (gracefully: in-flight requests finish), then closes
    /// the subscription and the database pool.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Some(metrics) = self.metrics_server {
            metrics.stop(true).await;
        }
        self.audit.stop().await;
        self.key_refresh.abort();
        // Every event of a finished request is in the outbox: what is not delivered yet waits
        // there for the next pod.
        if let Some(worker) = self.webhooks {
            worker.stop().await;
        }
        // Likewise every mail of a finished request is in the outbox.
        self.mail.stop().await;
        let _ = self.sessions.send(session::Stop).await;
        let _ = self.users.send(users::Stop).await;
        result
    }
}

/// Says at start when the schema does not match this binary; the pod still starts (its /ready
/// answers 503 while migrations are pending, so it gets no traffic) and serves once the
/// migration job has run, without a restart. Returns whether migrations are pending.
async fn log_schema_status(db: &DatabaseConnection) -> bool {
    match migration::schema_status(db).await {
        Ok(s) if !s.pending.is_empty() => {
            tracing::warn!(
                pending = ?s.pending,
                "the database schema is behind this binary: /ready answers 503 until `sessiond migrate` has run"
            );
            true
        }
        Ok(s) if !s.unknown.is_empty() => {
            tracing::warn!(
                unknown = ?s.unknown,
                "the database schema is ahead of this binary (migrated by a newer release)"
            );
            false
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the schema's migrations; /ready will tell");
            false
        }
    }
}

/// ADMIN_EMAILS for a pod that started before the migrations: granted once they have run.
fn defer_admin_emails(state: web::Data<AppState>) {
    if state.app.settings.admin_emails.is_empty() {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Ok(s) = state.app.users.ask(users::CheckSchema).await {
                if s.pending.is_empty() {
                    break;
                }
            }
        }
        if let Err(e) = grant_admin_emails(&state).await {
            tracing::error!(error = %e, "ADMIN_EMAILS not applied");
        }
    });
}

async fn grant_admin_emails(state: &AppState) -> Result<(), StartupError> {
    app::admin::grant_admin_emails(&state.app)
        .await
        .map_err(|e| StartupError::AdminGrant(e.log_message()))
}
