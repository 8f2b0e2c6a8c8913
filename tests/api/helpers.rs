//! Spawning sessiond in-process on port 0, against a fresh database and Redis prefix per test.
//!
//! Backends: `Embedded` (SQLite file + in-process sessions) always; `Services` (PostgreSQL +
//! Redis) when TEST_DATABASE_URL and TEST_REDIS_URL are set. REQUIRE_SERVICES=1 turns a missing
//! or unreachable service into a failure instead of a skip.
//!
//! Every helper the test modules share lives here (accounts, admin calls, audit reads, the Redis
//! proxy), so no test module imports another.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{header::HeaderMap, Method, Response, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
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
    vars: HashMap<String, String>,
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

pub struct TestApp {
    /// The database of an in-process app (`None` for a server started as a process).
    pub database_url: Option<String>,
    pub address: String,
    pub client: reqwest::Client,
    pub handle: Option<actix_web::dev::ServerHandle>,
}

/// A response read whole: status, headers and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn read(res: Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// Asserts the contract's error shape and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.error(), error, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body has a message: {}",
            self.body
        );
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

impl TestApp {
    /// A client for a server this test did not start in-process (the real binary).
    pub fn external(address: &str) -> Self {
        TestApp {
            database_url: None,
            address: address.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            handle: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let res = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    pub async fn post_auth(&self, path: &str, token: &str) -> Reply {
        let res = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.post_json("/register", &json!({"email": email, "password": password}))
            .await
    }

    pub async fn login_reply(&self, email: &str, password: &str) -> Reply {
        self.post_json("/login", &json!({"email": email, "password": password}))
            .await
    }

    /// A login that a trusted proxy forwards for `client` (needs TRUSTED_PROXIES=127.0.0.1/32).
    pub async fn login_from(&self, client: &str, email: &str, password: &str) -> Reply {
        let res = self
            .client
            .post(self.url("/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Tokens {
        let r = self.login_reply(email, password).await;
        assert_eq!(r.status, StatusCode::OK, "login failed: {}", r.body);
        Tokens {
            access: r.body["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            refresh: r.body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_string(),
            session_id: r.body["session_id"]
                .as_str()
                .expect("session_id")
                .to_string(),
        }
    }

    /// Registers a fresh account and logs it in.
    pub async fn user(&self) -> (String, Tokens) {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let r = self.register(&email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::CREATED, "register failed: {}", r.body);
        let tokens = self.login(&email, PASSWORD).await;
        (email, tokens)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    /// This pod's /metrics, as Prometheus scrapes it.
    pub async fn scrape(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits until this pod is subscribed to invalidations (Redis backend), so what is
    /// published from now on reaches it.
    pub async fn subscribed(&self) {
        let up = eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || self.metric("sessiond_invalidation_link_up").await == 1.0,
        )
        .await;
        assert!(up, "the pod never subscribed to invalidations");
    }

    /// The value of an unlabelled metric on this pod's /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.scrape()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn stop(&self) {
        if let Some(h) = &self.handle {
            h.stop(true).await;
        }
    }
}

/// Polls `check` every `every` until it returns true or `deadline` passes.
pub async fn eventually(
    deadline: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        actix_web::rt::time::sleep(every).await;
    }
}

/// Declares `<name>::embedded` and `<name>::services` tests that run `async fn name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_web::test]
            async fn embedded() {
                super::$name($crate::helpers::Backend::Embedded).await
            }
            #[actix_web::test]
            async fn services() {
                if $crate::helpers::services_available() {
                    super::$name($crate::helpers::Backend::Services).await
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
                if $crate::helpers::services_available() {
                    super::$name().await
                }
            }
        }
    )*};
}

// Accounts, admin calls and JWT claims.

/// What the built-in `admin` role grants, sorted: every permission sessiond defines.
pub const ADMIN_PERMISSIONS: &[&str] = sessiond::auth::access::BUILTIN_PERMISSIONS;

/// A registered, logged-in account.
pub struct Account {
    pub id: String,
    pub email: String,
    pub tokens: Tokens,
}

pub fn unique_email(kind: &str) -> String {
    format!("{kind}-{}@example.com", Uuid::new_v4().simple())
}

/// Registers `email` and logs it in, asserting the roles it then holds. `admin` (from
/// ADMIN_EMAILS) comes only with a proven address: registration answers without it, and the
/// address is marked verified ([`verify_address`]) so that the login grants it.
pub async fn account(app: &TestApp, email: &str, roles: &[&str]) -> Account {
    let r = app.register(email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "register: {}", r.body);
    let unproven: Vec<&str> = roles.iter().copied().filter(|r| *r != "admin").collect();
    assert_eq!(r.body["roles"], json!(unproven), "{}", r.body);
    if roles.contains(&"admin") {
        verify_address(app, email).await;
    }
    let tokens = app.login(email, PASSWORD).await;
    if roles.contains(&"admin") {
        let session = app.get("/session", Some(&tokens.access)).await;
        assert_eq!(session.body["roles"], json!(roles), "{}", session.body);
    }
    Account {
        id: r.body["id"].as_str().expect("id").to_string(),
        email: email.to_string(),
        tokens,
    }
}

/// Marks the address of `email`'s account as proven, as its owner's use of a mailed link
/// would: a fixture for tests of what a verified account may do (the mailed links themselves
/// are tested in mail.rs and takeover.rs).
pub async fn verify_address(app: &TestApp, email: &str) {
    let url = app.database_url.as_deref().expect("an in-process app");
    verify_address_in(url, email).await;
}

/// [`verify_address`] on the database at `url` (a server started as a process).
pub async fn verify_address_in(url: &str, email: &str) {
    let db = Database::connect(url).await.expect("database");
    let done = db
        .execute_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "UPDATE users SET email_verified = true WHERE email = '{}'",
                email.replace('\'', "''")
            ),
        ))
        .await
        .expect("verify the address");
    assert_eq!(done.rows_affected(), 1, "no account holds {email}");
    let _ = db.close().await;
}

/// A plain account (roles ["user"]).
pub async fn plain(app: &TestApp) -> Account {
    account(app, &unique_email("user"), &["user"]).await
}

/// A deployment whose ADMIN_EMAILS lists `admins` fresh addresses; returns them.
pub async fn with_admins(backend: Backend, admins: usize) -> (Deployment, Vec<String>) {
    let mut dep = Deployment::new(backend).await;
    let emails: Vec<String> = (0..admins).map(|_| unique_email("admin")).collect();
    dep.set("ADMIN_EMAILS", emails.join(","));
    (dep, emails)
}

pub async fn admin(app: &TestApp, email: &str) -> Account {
    account(app, email, &["admin", "user"]).await
}

/// Any method, with or without a token, with an optional JSON body.
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// DELETE `path` with `token`.
pub async fn delete_as(app: &TestApp, token: &str, path: &str) -> Reply {
    call(app, Method::DELETE, path, Some(token), None).await
}

pub async fn set_roles(app: &TestApp, token: &str, user_id: &str, roles: &[&str]) -> Reply {
    let path = format!("/admin/users/{user_id}/roles");
    call(
        app,
        Method::PUT,
        &path,
        Some(token),
        Some(&json!({ "roles": roles })),
    )
    .await
}

pub async fn create_role(app: &TestApp, token: &str, name: &str, permissions: &[&str]) -> Reply {
    let body = json!({"name": name, "permissions": permissions});
    call(app, Method::POST, "/admin/roles", Some(token), Some(&body)).await
}

/// The JWT's payload, decoded without verifying it.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// POST /token/refresh with `token`.
pub async fn refresh(app: &TestApp, token: &str) -> Reply {
    app.post_json("/token/refresh", &json!({"refresh_token": token}))
        .await
}

// The audit trail, read back through GET /admin/audit.

/// How long an asynchronous audit write may take to show up.
pub const AUDIT_ARRIVAL: Duration = Duration::from_secs(10);
/// How long to keep watching for a late duplicate once the expected count is reached.
pub const AUDIT_SETTLE: Duration = Duration::from_millis(300);

/// The events GET /admin/audit?`query` returns once there are `expected` of them, after making
/// sure no further one arrives; newest first.
pub async fn settled(app: &TestApp, token: &str, query: &str, expected: usize) -> Vec<Value> {
    let path = format!("/admin/audit?{query}&per_page=200");
    let mut last = Value::Null;
    let reached = eventually(AUDIT_ARRIVAL, Duration::from_millis(50), async || {
        let r = app.get(&path, Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        last = r.body;
        last["total"].as_u64().is_some_and(|n| n >= expected as u64)
    })
    .await;
    assert!(reached, "{expected} events for {query}; last page: {last}");
    actix_web::rt::time::sleep(AUDIT_SETTLE).await;
    let r = app.get(&path, Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["total"], expected,
        "exactly {expected} events for {query}: {}",
        r.body
    );
    let items = r.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), expected, "{}", r.body);
    for item in &items {
        if let Some(kind) = query.split('&').find_map(|kv| kv.strip_prefix("type=")) {
            assert_eq!(item["type"], kind, "{item}");
        }
    }
    items
}

/// Asserts the event object's shape and its type, actor, subject and outcome.
#[track_caller]
pub fn assert_event(
    event: &Value,
    kind: &str,
    actor: Option<&str>,
    subject: Option<&str>,
    outcome: &str,
) {
    let id = event["id"].as_str().unwrap_or_default();
    assert!(Uuid::parse_str(id).is_ok(), "id is a UUID: {event}");
    let at = event["occurred_at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "occurred_at is RFC 3339: {event}"
    );
    assert!(
        event["ip"].is_null() || event["ip"].is_string(),
        "ip is a string or null: {event}"
    );
    assert!(event["detail"].is_object(), "detail is an object: {event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["actor_id"], json!(actor), "actor of {event}");
    assert_eq!(event["subject_id"], json!(subject), "subject of {event}");
    assert_eq!(event["outcome"], outcome, "{event}");
}

// Redis: its address, and a proxy in front of it that a test can cut.

/// The `host:port` of TEST_REDIS_URL.
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_string();
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:6379")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())
        .expect("TEST_REDIS_URL resolves")
}

// A TCP proxy in front of Redis that a test can cut: `set_down(true)` closes every connection
// and refuses new ones (Redis unreachable), `refuse_new(true)` refuses new ones only,
// `freeze_pubsub()` silently stops forwarding to the subscriber connections (a dead link that
// sends no FIN), `hold_replies()` keeps Redis's answers on the other connections open at that
// moment back (commands still reach Redis and run: reads in flight; new connections go on), and `pubsub_upstream_addrs()` names the
// subscriber connections as Redis sees them, for `CLIENT KILL ADDR`.
struct Conn {
    upstream_local: SocketAddr,
    pubsub: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
}

pub struct RedisProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    /// Bumped to close every open connection.
    epoch: watch::Sender<u64>,
    conns: Arc<Mutex<Vec<Conn>>>,
    next_epoch: AtomicU64,
}

impl RedisProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let (epoch, _) = watch::channel(0u64);
        let proxy = Self {
            addr,
            down: Arc::new(AtomicBool::new(false)),
            refusing: Arc::new(AtomicBool::new(false)),
            frozen: Arc::new(AtomicBool::new(false)),
            epoch,
            conns: Arc::new(Mutex::new(Vec::new())),
            next_epoch: AtomicU64::new(1),
        };
        let (down, refusing, frozen, conns, epoch) = (
            proxy.down.clone(),
            proxy.refusing.clone(),
            proxy.frozen.clone(),
            proxy.conns.clone(),
            proxy.epoch.clone(),
        );
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) || refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let Ok(upstream_local) = server.local_addr() else {
                    continue;
                };
                let links = Links {
                    pubsub: Arc::new(AtomicBool::new(false)),
                    frozen: frozen.clone(),
                    held: Arc::new(AtomicBool::new(false)),
                };
                if let Ok(mut list) = conns.lock() {
                    list.push(Conn {
                        upstream_local,
                        pubsub: links.pubsub.clone(),
                        held: links.held.clone(),
                    });
                }
                let closed = epoch.subscribe();
                actix_web::rt::spawn(pipe(client, server, links, closed));
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self
                .epoch
                .send(self.next_epoch.fetch_add(1, Ordering::SeqCst));
        }
    }

    /// New connections are refused; open ones go on.
    pub fn refuse_new(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Subscriber connections stop receiving anything, without being closed.
    pub fn freeze_pubsub(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Answers on the open non-subscriber connections are held back until released (in order,
    /// nothing lost); connections opened later are not held.
    pub fn hold_replies(&self, held: bool) {
        if let Ok(list) = self.conns.lock() {
            for c in list.iter() {
                let hold = held && !c.pubsub.load(Ordering::SeqCst);
                c.held.store(hold, Ordering::SeqCst);
            }
        }
    }

    pub fn pubsub_upstream_addrs(&self) -> Vec<SocketAddr> {
        self.conns
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|c| c.pubsub.load(Ordering::SeqCst))
                    .map(|c| c.upstream_local)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One connection's switches: whether it subscribed, the proxy's freeze, its own hold.
struct Links {
    pubsub: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
}

async fn pipe(
    mut client: TcpStream,
    mut server: TcpStream,
    links: Links,
    mut closed: watch::Receiver<u64>,
) {
    let pubsub = links.pubsub.clone();
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = closed.changed() => return,
            n = cr.read(&mut up) => {
                let Ok(n) = n else { return };
                if n == 0 { return }
                if !pubsub.load(Ordering::Relaxed)
                    && String::from_utf8_lossy(&up[..n]).to_ascii_uppercase().contains("SUBSCRIBE")
                {
                    pubsub.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&up[..n]).await.is_err() { return }
            }
            n = sr.read(&mut down) => {
                let Ok(n) = n else { return };
                if n == 0 { return }
                if pubsub.load(Ordering::Relaxed) {
                    if links.frozen.load(Ordering::SeqCst) {
                        continue; // swallowed: a silent, half-dead link
                    }
                } else {
                    while links.held.load(Ordering::SeqCst) {
                        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if cw.write_all(&down[..n]).await.is_err() { return }
            }
        }
    }
}

// A Redis Cluster of this test's own: three masters and three replicas started from Debian's
// redis-server on free 127.0.0.1 ports, joined with `redis-cli --cluster create`. Every process
// is killed (and its directory removed) on drop.

/// How long a cluster node waits before calling a silent peer failed: small, so a failover
/// takes a couple of seconds.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Mutex<Vec<(u16, std::process::Child)>>,
    ports: Vec<u16>,
    tls: Option<ClusterTls>,
}

/// A TLS-only cluster (`tls-cluster yes`: clients, replication and the cluster bus): PEM files
/// made by the test. The nodes present `cert` to clients and `client_cert` to each other (the
/// cluster bus always checks the peer's certificate); clients need only trust `ca`.
#[derive(Clone)]
pub struct ClusterTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A port whose cluster-bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if port <= 55_535
            && !taken.contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// A client of one node: plain, or TLS trusting the PEM CA file `ca`.
pub fn node_client(port: u16, ca: Option<&str>) -> redis::RedisResult<redis::Client> {
    let Some(ca) = ca else {
        return redis::Client::open(format!("redis://127.0.0.1:{port}"));
    };
    // The redis crate builds its rustls configuration with the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = std::fs::read(ca).map_err(redis::RedisError::from)?;
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
}

async fn node_conn(
    port: u16,
    ca: Option<&str>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = node_client(port, ca)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One node's answer to a text command (`CLUSTER INFO`, `CLUSTER NODES`, `INFO replication`).
async fn node_text(port: u16, ca: Option<&str>, command: &[&str]) -> Option<String> {
    let mut con = node_conn(port, ca).await.ok()?;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut con).await.ok()
}

/// Closes one client connection server-side (`CLIENT KILL ADDR`, as Redis sees its address);
/// returns how many were killed.
pub async fn kill_redis_client(addr: SocketAddr) -> i64 {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ADDR")
        .arg(addr.to_string())
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut con)
        .await
        .expect("CLIENT KILL")
}

/// One cluster node; its `nodes-<port>.conf` in `dir` keeps its identity across a restart.
fn spawn_cluster_node(
    dir: &std::path::Path,
    port: u16,
    tls: Option<&ClusterTls>,
) -> std::process::Child {
    let port = port.to_string();
    let listen: Vec<&str> = match tls {
        None => vec!["--port", &port],
        Some(t) => vec![
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            &t.cert,
            "--tls-key-file",
            &t.key,
            "--tls-client-cert-file",
            &t.client_cert,
            "--tls-client-key-file",
            &t.client_key,
            "--tls-ca-cert-file",
            &t.ca,
            "--tls-auth-clients",
            "no",
        ],
    };
    std::process::Command::new("redis-server")
        .args(listen)
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args([
            "--cluster-node-timeout",
            &CLUSTER_NODE_TIMEOUT_MS.to_string(),
        ])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(["--logfile", &format!("{port}.log")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)")
}

impl RedisCluster {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same cluster, speaking only TLS.
    pub async fn start_tls(tls: ClusterTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    fn ca(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca.as_str())
    }

    async fn node_conn(&self, port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        node_conn(port, self.ca()).await
    }

    async fn node_text(&self, port: u16, command: &[&str]) -> Option<String> {
        node_text(port, self.ca(), command).await
    }

    async fn start_with(tls: Option<ClusterTls>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sessiond-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_cluster_port(&ports));
        }
        let mut nodes = Vec::new();
        for &port in &ports {
            let child = spawn_cluster_node(&dir, port, tls.as_ref());
            nodes.push((port, child));
        }
        let cluster = Self {
            dir,
            nodes: Mutex::new(nodes),
            ports,
            tls,
        };
        for &port in &cluster.ports {
            let up = eventually(
                Duration::from_secs(10),
                Duration::from_millis(20),
                async || cluster.node_text(port, &["PING"]).await.is_some(),
            )
            .await;
            assert!(up, "redis-server on {port} answers");
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let tls_args = match &cluster.tls {
            Some(t) => vec!["--tls", "--cacert", t.ca.as_str()],
            None => vec![],
        };
        let out = tokio::process::Command::new("redis-cli")
            .args(tls_args)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            cluster.settled(Duration::from_secs(30)).await,
            "the cluster reached cluster_state:ok with every replica in sync"
        );
        cluster
    }

    /// The URLs of every node, in start order (seeds for REDIS_CLUSTER_URLS).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| match self.tls {
                Some(_) => format!("rediss://127.0.0.1:{p}"),
                None => format!("redis://127.0.0.1:{p}"),
            })
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        let nodes = self.nodes.lock().unwrap();
        nodes.iter().map(|(p, _)| *p).collect()
    }

    /// Every live node says `cluster_state:ok`, sees no failing peer among the live ones, and
    /// every replica's link to its master is up.
    pub async fn settled(&self, deadline: Duration) -> bool {
        let live = self.live_ports();
        eventually(deadline, Duration::from_millis(50), async || {
            for &port in &live {
                let Some(info) = self.node_text(port, &["CLUSTER", "INFO"]).await else {
                    return false;
                };
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Some(repl) = self.node_text(port, &["INFO", "replication"]).await else {
                    return false;
                };
                if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// The live masters as the first live node sees them: port and slot ranges
    /// (`CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> ... <slot ranges>`).
    async fn master_slots(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(&port) = self.live_ports().first() else {
            return Vec::new();
        };
        let nodes = self
            .node_text(port, &["CLUSTER", "NODES"])
            .await
            .unwrap_or_default();
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let ranges = fields[8..]
                    .iter()
                    .filter_map(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        Some((lo.parse().ok()?, hi.parse().ok()?))
                    })
                    .collect();
                let addr = fields[1].split(['@', ',']).next()?;
                Some((addr.rsplit_once(':')?.1.parse().ok()?, ranges))
            })
            .collect()
    }

    /// The port of the live master serving `key`'s slot, as the live nodes see it.
    pub async fn master_of(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        let mut con = self.node_conn(port).await.ok()?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await
            .ok()?;
        self.master_slots()
            .await
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// The ports of the live masters.
    pub async fn masters(&self) -> Vec<u16> {
        self.master_slots()
            .await
            .into_iter()
            .map(|(port, _)| port)
            .collect()
    }

    /// Moves `key`'s slot, with its keys, to the master on `to`, the way a resharding does:
    /// IMPORTING/MIGRATING, MIGRATE of every key in the slot, then the new owner told to every
    /// master. Clients meet ASK during the move and MOVED after it.
    pub async fn move_slot(&self, key: &str, to: u16) {
        let from = self.master_of(key).await.expect("the slot has a master");
        assert_ne!(from, to, "the slot is already there");
        let (mut src, mut dst) = (
            self.node_conn(from).await.expect("source"),
            self.node_conn(to).await.expect("target"),
        );
        let id = async |con: &mut redis::aio::MultiplexedConnection| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(con)
                .await
                .expect("CLUSTER MYID")
        };
        let (src_id, dst_id) = (id(&mut src).await, id(&mut dst).await);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut src)
            .await
            .expect("CLUSTER KEYSLOT");
        let setslot = |state: &str, node: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node)
                .to_owned()
        };
        let _: () = setslot("IMPORTING", &src_id)
            .query_async(&mut dst)
            .await
            .expect("IMPORTING");
        let _: () = setslot("MIGRATING", &dst_id)
            .query_async(&mut src)
            .await
            .expect("MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut src)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .expect("MIGRATE");
        }
        let mut owners = vec![to, from];
        owners.extend(
            self.masters()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in owners {
            let mut con = self.node_conn(port).await.expect("master");
            let _: () = setslot("NODE", &dst_id)
                .query_async(&mut con)
                .await
                .expect("SETSLOT NODE");
        }
    }

    /// Starts a killed node again: it rejoins the cluster, as a replica of whoever took over.
    pub fn restart(&self, port: u16) {
        let child = spawn_cluster_node(&self.dir, port, self.tls.as_ref());
        self.nodes.lock().unwrap().push((port, child));
    }

    /// Whether the node on `port` has `replicas` replicas online (INFO replication).
    pub async fn has_replicas(&self, port: u16, replicas: usize) -> bool {
        self.node_text(port, &["INFO", "replication"])
            .await
            .is_some_and(|info| {
                info.lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count()
                    >= replicas
            })
    }

    /// Kills `victim`, the master of `key`'s slot, and waits for a replica to take the slot
    /// over and the cluster to settle; then starts the killed node again, as an operator would,
    /// until it is the new master's replica (revocations on that shard WAIT for one).
    pub async fn fail_over(&self, victim: u16, key: &str) -> FailoverTimes {
        let killed_at = std::time::Instant::now();
        self.kill(victim);
        let over = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.master_of(key).await.is_some_and(|p| p != victim),
        )
        .await;
        assert!(over, "a replica took over the slot");
        assert!(
            self.settled(Duration::from_secs(30)).await,
            "cluster_state:ok again"
        );
        let failed_over_at = std::time::Instant::now();
        let new_master = self.master_of(key).await.expect("a new master");
        self.restart(victim);
        let replicated = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.has_replicas(new_master, 1).await,
        )
        .await;
        assert!(replicated, "the old master came back as a replica");
        FailoverTimes {
            killed_at,
            failed_over_at,
            recovered_at: std::time::Instant::now(),
        }
    }

    /// A manual failover of `key`'s slot (`CLUSTER FAILOVER` on its master's replica): the
    /// replica takes over with the master's agreement, and the old master stays up as its
    /// replica. Returns the old master's port once the cluster has settled.
    pub async fn manual_failover(&self, key: &str) -> u16 {
        let old = self.master_of(key).await.expect("the slot has a master");
        let nodes = self
            .node_text(old, &["CLUSTER", "NODES"])
            .await
            .expect("CLUSTER NODES");
        let line_of = |port: u16| {
            nodes
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| a.starts_with(&format!("127.0.0.1:{port}@")))
                })
                .map(str::to_string)
        };
        let old_id = line_of(old)
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .expect("the master's id");
        let replica = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == old_id)
            .and_then(|f| {
                f[1].split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse::<u16>()
                    .ok()
            })
            .expect("the master has a replica");
        let mut con = self.node_conn(replica).await.expect("replica");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut con)
            .await
            .expect("CLUSTER FAILOVER");
        let over = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || self.master_of(key).await == Some(replica),
        )
        .await;
        assert!(over, "the replica took over the slot");
        assert!(
            self.settled(Duration::from_secs(30)).await,
            "cluster_state:ok again"
        );
        old
    }

    /// SIGKILL: no goodbye to the cluster or the clients.
    pub fn kill(&self, port: u16) {
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(i) = nodes.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = nodes.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When a master was killed, when the topology had failed over, and when it had a replica
/// again.
pub struct FailoverTimes {
    pub killed_at: std::time::Instant,
    pub failed_over_at: std::time::Instant,
    pub recovered_at: std::time::Instant,
}

/// The key of the index of the sessions of the user `access` belongs to: its slot is the user's.
pub fn sessions_key(dep: &Deployment, access: &str) -> String {
    let uid = claims_of(access)["sub"].as_str().expect("sub").to_string();
    format!("{}{{u:{uid}}}:sessions", dep.prefix)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Ok(mut nodes) = self.nodes.lock() {
            for (_, child) in nodes.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Deployment {
    /// A deployment (fresh database) whose pods keep sessions in `cluster`.
    pub async fn on_cluster(cluster: &RedisCluster) -> Self {
        Self::on_cluster_seeds(&cluster.urls()).await
    }

    /// A deployment whose pods are given these REDIS_CLUSTER_URLS (and no REDIS_URL).
    pub async fn on_cluster_seeds(seeds: &[String]) -> Self {
        let mut dep = Deployment::new(Backend::Services).await;
        dep.vars.remove("REDIS_URL");
        dep.set("REDIS_CLUSTER_URLS", seeds.join(","));
        dep
    }
}

/// Polls `pod` until it refuses `token`; returns how long that took after `since`.
pub async fn rejected_within(
    pod: &TestApp,
    token: &str,
    since: std::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut last = StatusCode::OK;
    let ok = eventually(limit, Duration::from_millis(10), async || {
        last = pod.get("/session", Some(token)).await.status;
        assert!(
            last == StatusCode::OK || last == StatusCode::UNAUTHORIZED,
            "unexpected {last}"
        );
        last == StatusCode::UNAUTHORIZED
    })
    .await;
    ok.then(|| since.elapsed())
}
