//! Backends and deployments: a database and a Redis prefix per test, the app instances
//! (pods) on them, and the macros that declare a test for each backend.
use std::{collections::HashMap, path::PathBuf, time::Duration};

use super::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use sessiond::{config::Config, startup::Application};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Services,
}

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const PASSWORD: &str = "correct horse battery";

fn required() -> bool {
    std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether the PostgreSQL + Redis half of a test should run.
pub fn services_available() -> bool {
    let ok = std::env::var("TEST_DATABASE_URL").is_ok() && std::env::var("TEST_REDIS_URL").is_ok();
    if !ok {
        assert!(
            !required(),
            "REQUIRE_SERVICES=1 but TEST_DATABASE_URL / TEST_REDIS_URL are not set"
        );
        eprintln!(
            "skipping the PostgreSQL + Redis variant: TEST_DATABASE_URL / TEST_REDIS_URL unset"
        );
    }
    ok
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL")
}

/// One deployment: a database and a Redis prefix that several app instances (pods, restarts)
/// share. Dropping it removes the database, the Redis keys and the SQLite file.
pub struct Deployment {
    pub(super) vars: HashMap<String, String>,
    admin_url: Option<String>,
    db_name: Option<String>,
    dir: Option<PathBuf>,
    pub prefix: String,
}

impl Deployment {
    pub async fn new(backend: Backend) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let prefix = format!("test-{id}:");
        let mut vars = HashMap::from([
            ("HOST".to_string(), "127.0.0.1".to_string()),
            ("PORT".to_string(), "0".to_string()),
            ("JWT_SECRET".to_string(), SECRET.to_string()),
            ("HTTP_WORKERS".to_string(), "2".to_string()),
            ("MIGRATE_ON_START".to_string(), "true".to_string()),
            ("SHUTDOWN_GRACE_SECONDS".to_string(), "2".to_string()),
            // Cheaper than production hashing; the parameters are covered by unit tests.
            ("ARGON2_MEMORY_KIB".to_string(), "8192".to_string()),
            ("ARGON2_ITERATIONS".to_string(), "1".to_string()),
            ("ARGON2_QUEUE_TIMEOUT_MS".to_string(), "20000".to_string()),
            // Races of many registrations queue for hashing rather than being shed.
            ("ARGON2_MAX_QUEUE".to_string(), "1000".to_string()),
            ("RUST_LOG".to_string(), "warn".to_string()),
            // Tests of other features make many attempts from one address; the throttling
            // tests set their own limits.
            ("RATE_LIMIT_LOGIN_PER_IP".to_string(), "1000000".to_string()),
            (
                "RATE_LIMIT_LOGIN_PER_ACCOUNT".to_string(),
                "1000000".to_string(),
            ),
            (
                "RATE_LIMIT_REGISTER_PER_IP".to_string(),
                "1000000".to_string(),
            ),
            (
                "RATE_LIMIT_REFRESH_PER_IP".to_string(),
                "1000000".to_string(),
            ),
            (
                "RATE_LIMIT_INTROSPECT_FAILURES_PER_IP".to_string(),
                "1000000".to_string(),
            ),
            (
                "RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT".to_string(),
                "1000000".to_string(),
            ),
            (
                "RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION".to_string(),
                "1000000".to_string(),
            ),
            ("RATE_LIMIT_MAIL_PER_IP".to_string(), "1000000".to_string()),
            (
                "RATE_LIMIT_MAIL_PER_ACCOUNT".to_string(),
                "1000000".to_string(),
            ),
        ]);
        let (mut admin_url, mut db_name, mut dir) = (None, None, None);
        match backend {
            Backend::Embedded => {
                let d = std::env::temp_dir().join(format!("sessiond-test-{id}"));
                std::fs::create_dir_all(&d).expect("create temp dir");
                vars.insert(
                    "SQLITE_PATH".into(),
                    d.join("sessiond.db").display().to_string(),
                );
                dir = Some(d);
            }
            Backend::Services => {
                let admin = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
                let name = format!("sessiond_test_{id}");
                let conn = Database::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}"));
                conn.execute_raw(Statement::from_string(
                    conn.get_database_backend(),
                    format!("CREATE DATABASE {name}"),
                ))
                .await
                .expect("create test database");
                let _ = conn.close().await;
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                vars.insert("DB_URL".into(), format!("{base}/{name}"));
                vars.insert("REDIS_URL".into(), redis_url());
                vars.insert("REDIS_PREFIX".into(), prefix.clone());
                admin_url = Some(admin);
                db_name = Some(name);
            }
        }
        Self {
            vars,
            admin_url,
            db_name,
            dir,
            prefix,
        }
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    pub fn config(&self) -> Config {
        Config::from_lookup(|k| self.vars.get(k).cloned()).expect("test configuration is valid")
    }

    /// The environment an instance of this deployment runs with.
    pub fn vars(&self) -> &HashMap<String, String> {
        &self.vars
    }

    pub fn database_url(&self) -> String {
        self.config().effective_database_url()
    }

    /// Starts one instance ("pod") of the deployment.
    pub async fn spawn(&self) -> TestApp {
        self.spawn_with(&[]).await
    }

    /// Starts an instance with some settings changed for it only (e.g. REDIS_URL via a proxy).
    pub async fn spawn_with(&self, overrides: &[(&str, String)]) -> TestApp {
        self.spawn_with_metrics(overrides).await.0
    }

    /// Like `spawn_with`, also returning the METRICS_PORT listener's address when there is one.
    pub async fn spawn_with_metrics(
        &self,
        overrides: &[(&str, String)],
    ) -> (TestApp, Option<String>) {
        let mut vars = self.vars.clone();
        for (k, v) in overrides {
            vars.insert(k.to_string(), v.clone());
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test config");
        Self::start(config).await
    }

    /// Starts an instance whose configuration is edited after it was read: for settings that
    /// are no environment variable (`pending_ttls`, shortened to watch records expire).
    pub async fn spawn_edited(&self, edit: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config();
        edit(&mut config);
        Self::start(config).await.0
    }

    async fn start(config: Config) -> (TestApp, Option<String>) {
        let app = Application::build(config.clone())
            .await
            .expect("application starts");
        let port = app.port();
        let metrics = app.metrics_port().map(|p| format!("http://127.0.0.1:{p}"));
        let handle = app.handle();
        actix_web::rt::spawn(app.run_until_stopped());
        let app = TestApp {
            database_url: Some(config.effective_database_url()),
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            handle: Some(handle),
        };
        (app, metrics)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (Some(admin), Some(name)) = (self.admin_url.clone(), self.db_name.clone()) else {
            return;
        };
        let prefix = self.prefix.clone();
        // Runs on its own thread and runtime: Drop is sync and may run while panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                if let Ok(conn) = Database::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = conn
                        .execute_raw(Statement::from_string(conn.get_database_backend(), sql))
                        .await;
                    let _ = conn.close().await;
                }
                if let Ok(client) = redis::Client::open(redis_url()) {
                    if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}*"))
                            .query_async(&mut con)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: redis::RedisResult<()> =
                                redis::cmd("DEL").arg(keys).query_async(&mut con).await;
                        }
                    }
                }
                Some(())
            })
        })
        .join();
    }
}

/// Declares `<name>::embedded` and `<name>::services` tests that run `async fn name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_web::test]
            async fn embedded() {
                super::$name($crate::support::Backend::Embedded).await
            }
            #[actix_web::test]
            async fn services() {
                if $crate::support::services_available() {
                    super::$name($crate::support::Backend::Services).await
                }
            }
        }
    )*};
}

/// Declares a test that needs Redis (multi-pod behaviour): skipped, or failed under
/// REQUIRE_SERVICES=1, when the services are not configured.
#[macro_export]
macro_rules! services_only {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_web::test]
            async fn services() {
                if $crate::support::services_available() {
                    super::$name().await
                }
            }
        }
    )*};
}
