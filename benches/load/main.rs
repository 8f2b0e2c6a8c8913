//! The load suite: starts sessiond in this process (embedded default, or PostgreSQL + Redis when
//! BENCH_DATABASE_URL / BENCH_REDIS_URL are given) and the actix-session baseline on the same
//! Redis, then drives the scenarios of `scenarios.rs` over keep-alive connections, closed loop at
//! maximum rate and open loop at fixed rates, with latencies in HDR histograms.
//!
//! `cargo bench --bench load` (BENCH_QUICK=1 for a 1-2 minute run). Writes
//! target/bench-report/{report.md,report.json,hot-path.svg} and prints the Markdown.
//!
//! How the 2 cores are shared: each server gets one HTTP worker thread (plus actix's System thread,
//! where sessiond's actors run, and the acceptor); the load generator runs on one thread
//! ("load-client", a current-thread tokio runtime). sessiond and the baseline run the same way,
//! one at a time, so their ratios compare like with like. CPU used by the server side, the client
//! thread and Redis is recorded for every phase, so a client-bound phase shows.
mod baseline;
mod client;
mod harness;
mod report;
mod scenarios;
#[path = "../support.rs"]
mod support;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::dev::ServerHandle;
pub use harness::on_client;
use harness::Db;
use sessiond::{config::Config, startup::Application};

pub const JWT_SECRET: &str = "load-suite-secret-0123456789abcdef-0123456789";
pub const EMAIL: &str = "load@example.com";
pub const PASSWORD: &str = "load-suite-password-1";

/// A server started by the suite.
pub struct Running {
    pub port: u16,
    pub handle: ServerHandle,
    pub task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Knobs; the defaults are the full run, BENCH_QUICK=1 shortens everything.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub redis_url: Option<String>,
    pub database_admin_url: Option<String>,
    pub connections: usize,
    pub open_connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub sweep_fractions: Vec<f64>,
    pub sweep_measure: Duration,
    pub distinct_sessions: usize,
    pub per_user_interval: Duration,
    pub distinct_measure: Duration,
    pub cache_ttls: Vec<u64>,
    pub propagation_samples: usize,
    pub mixed_users: usize,
    pub mixed_calls: usize,
    pub mixed_measure: Duration,
    pub server_log_filter: String,
    pub out_dir: PathBuf,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
        let secs = Duration::from_secs_f64;
        let pick = |full: f64, q: f64| secs(if quick { q } else { full });
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            quick,
            redis_url: non_empty("BENCH_REDIS_URL"),
            database_admin_url: non_empty("BENCH_DATABASE_URL"),
            connections: env_number("BENCH_CONNECTIONS", 32),
            open_connections: env_number("BENCH_OPEN_CONNECTIONS", 64),
            warmup: pick(1.0, 0.5),
            measure: pick(5.0, 2.0),
            sweep_fractions: if quick {
                vec![0.2, 0.4, 0.6, 0.8]
            } else {
                vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
            },
            sweep_measure: pick(3.0, 2.0),
            distinct_sessions: env_number("BENCH_SESSIONS", if quick { 10_000 } else { 100_000 }),
            per_user_interval: pick(10.0, 5.0),
            distinct_measure: pick(20.0, 8.0),
            cache_ttls: vec![5, 60],
            propagation_samples: env_number(
                "BENCH_PROPAGATION_SAMPLES",
                if quick { 50 } else { 200 },
            ),
            mixed_users: 4,
            mixed_calls: 20,
            mixed_measure: pick(8.0, 4.0),
            server_log_filter: std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            out_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-report")),
        }
    }
}

/// The environment of one sessiond instance; `Config::from_lookup` reads it as it would the
/// process environment.
#[derive(Clone)]
pub struct ServerEnv(pub HashMap<&'static str, String>);

impl ServerEnv {
    pub fn with(&self, key: &'static str, value: impl Into<String>) -> Self {
        let mut vars = self.0.clone();
        vars.insert(key, value.into());
        Self(vars)
    }

    pub fn config(&self) -> Config {
        Config::from_lookup(|k| self.0.get(k).cloned()).expect("the suite's Config is valid")
    }

    pub async fn start(&self) -> Running {
        let app = Application::build(self.config())
            .await
            .expect("starting sessiond");
        let (port, handle) = (app.port(), app.handle());
        Running {
            port,
            handle,
            task: actix_web::rt::spawn(app.run_until_stopped()),
        }
    }
}

/// Server logs go where production sends them (JSON lines at RUST_LOG=info, as
/// `sessiond::telemetry::init` sets up), but into a file so the report stays readable: their cost
/// is part of what is measured.
fn init_server_logs(settings: &Settings) {
    std::fs::create_dir_all(&settings.out_dir).expect("creating target/bench-report");
    let file = std::fs::File::create(settings.out_dir.join("server.log"))
        .expect("creating target/bench-report/server.log");
    tracing_subscriber::EnvFilter::try_new(&settings.server_log_filter)
        .expect("BENCH_RUST_LOG is a valid filter");
    sessiond::telemetry::json_subscriber(&settings.server_log_filter, Mutex::new(file)).init();
}

fn main() {
    let settings = Settings::from_env();
    init_server_logs(&settings);
    let report = actix_web::rt::System::new().block_on(run(settings.clone()));
    report.write(&settings);
    if !report.all_targets_met() {
        eprintln!("note: some targets were missed; see the Targets table");
    }
}

async fn run(settings: Settings) -> report::Report {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("load-{run_id}:");
    let (db, db_url) = Db::create(settings.database_admin_url.as_deref(), &run_id).await;
    let mut vars = harness::server_vars(JWT_SECRET, db_url, &settings.server_log_filter);
    vars.extend([
        ("SESSION_CACHE_TTL", "5".to_string()),
        // The load generator is one client address hammering a few accounts: abuse limits
        // would measure the limiter, not the server (they are tested in tests/api/hardening.rs).
        ("RATE_LIMIT_LOGIN_PER_IP", "0".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0".into()),
        ("RATE_LIMIT_REFRESH_PER_IP", "0".into()),
        ("RATE_LIMIT_REGISTER_PER_IP", "0".into()),
        ("LOCKOUT_THRESHOLD", "0".into()),
        // Its logins would otherwise evict the hot-path scenarios' session (the per-account cap).
        ("MAX_SESSIONS_PER_USER", "0".into()),
    ]);
    if let Some(url) = &settings.redis_url {
        vars.insert("REDIS_URL", url.clone());
        vars.insert("REDIS_PREFIX", prefix.clone());
    }
    let env = ServerEnv(vars);
    let settings = Arc::new(settings);

    let report = scenarios::run_all(settings.clone(), env, prefix.clone()).await;

    if let Some(url) = &settings.redis_url {
        if let Err(e) = support::clear_redis(url, &prefix).await {
            eprintln!("warning: could not delete the {prefix}* keys from Redis: {e}");
        }
    }
    db.drop().await;
    report
}
