//! Redis Cluster against a single node, in one run: the hot path (`GET /session`, token cached),
//! refresh throughput (`POST /token/refresh`, each connection its own session chain), logins
//! interleaved with the logouts of their sessions (do logins queue behind the WAITs?) and logout
//! propagation between two pods, on
//! - one redis-server (no replica, so no `WAIT`),
//! - a cluster of three masters and three replicas with the default `REDIS_WAIT_REPLICAS` (1:
//!   revocations and rotations wait for a replica),
//! - the same cluster with `REDIS_WAIT_REPLICAS=0`, like for like with the single node.
//!
//! The bench starts both deployments itself (`deployments.rs`) and two pods (two
//! `Application`s in this process, one HTTP worker each) per configuration, all on one database.
//! Rounds alternate the order of the configurations, so the machine's noise hits all of them;
//! each phase first waits for the machine to go quiet and records the CPU it cost.
//!
//! `BENCH_DATABASE_URL=postgres://… cargo bench --bench topology` (SQLite without it;
//! BENCH_QUICK=1 for a short run). Prints a Markdown report and writes it to
//! target/bench-report/topology.md; server logs go to target/bench-report/topology-server.log.
#[allow(dead_code)] // the load suite's client; this bench uses part of it
#[path = "../load/client.rs"]
mod client;
mod deployments;
#[path = "../load/harness.rs"]
mod harness;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::dev::ServerHandle;
use client::{closed_loop, micros, request, Conn, Load, Outcome};
use deployments::RedisProcesses;
use harness::{machine_busy_ticks, on_client, ticks, wait_for_quiet_machine, Db, TICKS_PER_SECOND};
use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};

const JWT_SECRET: &str = "topology-bench-secret-0123456789abcdef-01234";
const PASSWORD: &str = "topology-bench-password-1";
/// Users the propagation samples log in as, in turn: their `{u:<id>}` slots spread the
/// revocations over the cluster's masters.
const PROPAGATION_USERS: usize = 8;
/// Connections of the login phase: fewer than the logins a pod admits at once (2 hashing and 8
/// waiting on 2 cores: ARGON2_MAX_CONCURRENCY and ARGON2_MAX_QUEUE), so none is refused 503.
const LOGIN_CONNECTIONS: usize = 8;
/// A revoked token still accepted this long after its logout counts as a failure.
const GIVE_UP: Duration = Duration::from_secs(10);

struct Settings {
    quick: bool,
    database_admin_url: Option<String>,
    rounds: usize,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    samples: usize,
    log_filter: String,
    out_dir: PathBuf,
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
        let pick = |full: f64, q: f64| Duration::from_secs_f64(if quick { q } else { full });
        Self {
            quick,
            database_admin_url: std::env::var("BENCH_DATABASE_URL")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            rounds: env_number("BENCH_ROUNDS", if quick { 2 } else { 4 }),
            connections: env_number("BENCH_CONNECTIONS", 32),
            warmup: pick(1.0, 0.5),
            measure: pick(5.0, 2.0),
            samples: env_number("BENCH_PROPAGATION_SAMPLES", if quick { 50 } else { 200 }),
            log_filter: std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            out_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-report")),
        }
    }
}

/// The Redis configurations compared; the order of the report's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Topology {
    Single,
    Cluster,
    ClusterNoWait,
}

const TOPOLOGIES: [Topology; 3] = [Topology::Single, Topology::Cluster, Topology::ClusterNoWait];

impl Topology {
    fn label(self) -> &'static str {
        match self {
            Topology::Single => "single node",
            Topology::Cluster => "cluster, WAIT 1 (default)",
            Topology::ClusterNoWait => "cluster, WAIT 0",
        }
    }

    fn prefix(self) -> &'static str {
        // Both cluster configurations share the cluster: their own keys and channel.
        match self {
            Topology::Single => "topo-single:",
            Topology::Cluster => "topo-wait1:",
            Topology::ClusterNoWait => "topo-wait0:",
        }
    }
}

/// Cores used during a phase by this process's server side, the client thread, every Redis
/// process (both deployments) and the rest of the machine.
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: f64,
    client: f64,
    redis: f64,
    rest: f64,
}

/// Runs one phase on the client thread, after waiting for a quiet machine, and records the CPU
/// it cost on each side.
async fn phase<T, Fut>(
    redis_pids: Arc<Vec<u32>>,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> (T, Cpu)
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    on_client(move || async move {
        wait_for_quiet_machine("topology", 20).await;
        let redis0 = deployments::cpu_seconds(&redis_pids);
        let machine0 = machine_busy_ticks();
        let (proc0, thread0) = (ticks("/proc/self/stat"), ticks("/proc/thread-self/stat"));
        let wall0 = Instant::now();
        let out = f().await;
        let wall = wall0.elapsed().as_secs_f64();
        let seconds = |t: u64| t as f64 / TICKS_PER_SECOND / wall;
        let client = seconds(ticks("/proc/thread-self/stat") - thread0);
        let server = (seconds(ticks("/proc/self/stat") - proc0) - client).max(0.0);
        let redis = (deployments::cpu_seconds(&redis_pids) - redis0) / wall;
        let busy = seconds(machine_busy_ticks() - machine0);
        let rest = (busy - server - client - redis).max(0.0);
        let cpu = Cpu {
            server,
            client,
            redis,
            rest,
        };
        (out, cpu)
    })
    .await
}

/// A pod started by the bench.
struct Pod {
    addr: SocketAddr,
    handle: ServerHandle,
    task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Pod {
    async fn start(vars: &HashMap<&'static str, String>) -> Self {
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("the bench's Config");
        let app = Application::build(config).await.expect("starting sessiond");
        let addr = ([127, 0, 0, 1], app.port()).into();
        let handle = app.handle();
        let task = actix_web::rt::spawn(app.run_until_stopped());
        let pod = Self { addr, handle, task };
        // With Redis a pod trusts (and fills) its cache only once it listens for invalidations.
        on_client(move || async move {
            let start = Instant::now();
            while metric(addr, "sessiond_session_cache_flushes_total ").await < 1.0 {
                assert!(start.elapsed() < GIVE_UP, "sessiond never subscribed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        pod
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// The value of one sample line of a pod's Prometheus exposition (0 when absent).
async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    // A fresh connection: a kept one may have hit the server's keep-alive timeout.
    let mut conn = Conn::new(addr);
    let Ok(response) = conn.send(&request("GET", "/metrics", &[], None)).await else {
        return 0.0;
    };
    String::from_utf8_lossy(response.body)
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn credentials(email: &str) -> Value {
    json!({"email": email, "password": PASSWORD})
}

async fn post_json(conn: &mut Conn, path: &str, body: &Value) -> (u16, Value) {
    let req = request("POST", path, &[], Some(&body.to_string()));
    let r = conn
        .send(&req)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (
        r.status,
        serde_json::from_slice(r.body).unwrap_or(Value::Null),
    )
}

/// Logs `email` in; its access and refresh tokens.
async fn login(conn: &mut Conn, email: &str) -> (String, String) {
    let (status, body) = post_json(conn, "/login", &credentials(email)).await;
    assert_eq!(status, 200, "POST /login as {email}: {body}");
    let token = |k: &str| {
        body[k]
            .as_str()
            .expect("token in the login answer")
            .to_string()
    };
    (token("access_token"), token("refresh_token"))
}

fn session_probe(access: &str) -> Vec<u8> {
    let auth = format!("Bearer {access}");
    request("GET", "/session", &[("Authorization", &auth)], None)
}

/// Closed loop of refreshes: one connection per chain, each presenting the refresh token the
/// previous answer gave it. Returns what was measured and where each chain ended.
async fn refresh_loop(
    addr: SocketAddr,
    chains: Vec<String>,
    warmup: Duration,
    measure: Duration,
) -> (Outcome, Vec<String>) {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = chains
        .into_iter()
        .map(|mut token| {
            tokio::task::spawn_local(async move {
                let mut conn = Conn::new(addr);
                let mut out = Outcome::empty();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let body = json!({ "refresh_token": token }).to_string();
                    let req = request("POST", "/token/refresh", &[], Some(&body));
                    let result = conn.send(&req).await.and_then(|r| {
                        let body: Value = serde_json::from_slice(r.body).unwrap_or(Value::Null);
                        match (r.status, body["refresh_token"].as_str()) {
                            (200, Some(next)) => Ok(next.to_string()),
                            (status, _) => Err(format!("status {status}")),
                        }
                    });
                    // A failed rotation keeps the token: a retry within the grace window gets
                    // the same successor.
                    if let Ok(next) = &result {
                        token.clone_from(next);
                    }
                    if sent < from {
                        continue;
                    }
                    out.latency.saturating_record(micros(sent.elapsed()));
                    match result {
                        Ok(_) => out.ok += 1,
                        Err(e) => out.record_error(e),
                    }
                }
                (out, token)
            })
        })
        .collect();
    let mut total = Outcome::empty();
    let mut ends = Vec::new();
    for t in tasks {
        let (out, token) = t.await.expect("refresh task panicked");
        total.merge(out);
        ends.push(token);
    }
    total.elapsed = measure;
    (total, ends)
}

/// Closed loop of logins, each followed on its connection by the logout of the session it made
/// (with `WAIT`, a logout waits for a replica): do logins queue behind the revocations' WAITs?
/// Returns the logins and the logouts measured.
async fn login_logout_loop(
    addr: SocketAddr,
    users: Vec<String>,
    warmup: Duration,
    measure: Duration,
) -> (Outcome, Outcome) {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = users
        .into_iter()
        .map(|email| {
            tokio::task::spawn_local(async move {
                let mut conn = Conn::new(addr);
                let (mut logins, mut logouts) = (Outcome::empty(), Outcome::empty());
                let body = credentials(&email).to_string();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let login = request("POST", "/login", &[], Some(&body));
                    let access = conn.send(&login).await.and_then(|r| {
                        let body: Value = serde_json::from_slice(r.body).unwrap_or(Value::Null);
                        match (r.status, body["access_token"].as_str()) {
                            (200, Some(access)) => Ok(access.to_string()),
                            (status, _) => Err(format!("login: status {status}")),
                        }
                    });
                    if sent >= from {
                        logins.latency.saturating_record(micros(sent.elapsed()));
                        match &access {
                            Ok(_) => logins.ok += 1,
                            Err(e) => logins.record_error(e.clone()),
                        }
                    }
                    let Ok(access) = access else { continue };
                    let auth = format!("Bearer {access}");
                    let logout = request("POST", "/logout", &[("Authorization", &auth)], None);
                    let sent = Instant::now();
                    let result = conn.send(&logout).await.and_then(|r| match r.status {
                        204 => Ok(()),
                        status => Err(format!("logout: status {status}")),
                    });
                    if sent >= from && sent < until {
                        logouts.latency.saturating_record(micros(sent.elapsed()));
                        match result {
                            Ok(()) => logouts.ok += 1,
                            Err(e) => logouts.record_error(e),
                        }
                    }
                }
                (logins, logouts)
            })
        })
        .collect();
    let (mut logins, mut logouts) = (Outcome::empty(), Outcome::empty());
    for t in tasks {
        let (i, o) = t.await.expect("login task panicked");
        logins.merge(i);
        logouts.merge(o);
    }
    logins.elapsed = measure;
    logouts.elapsed = measure;
    (logins, logouts)
}

const DELIVERY_SUM: &str = "sessiond_revocation_propagation_seconds_sum ";
const DELIVERY_COUNT: &str = "sessiond_revocation_propagation_seconds_count ";

/// One round of logout propagation samples.
struct Propagation {
    /// POST /logout on A, from send to its 204.
    logout: Outcome,
    /// From A's 204 to B's first 401.
    first_401: Outcome,
    /// B's `sessiond_revocation_propagation_seconds`: publish (Redis clock) to receipt.
    delivery_sum: f64,
    delivery_count: f64,
    max_polls: u64,
}

/// Log in on A, warm the token on B, log out on A, poll B until it answers 401.
async fn propagation(
    a: SocketAddr,
    b: SocketAddr,
    users: Vec<String>,
    samples: usize,
) -> Propagation {
    let (mut on_a, mut on_b) = (Conn::new(a), Conn::new(b));
    let (sum0, count0) = (
        metric(b, DELIVERY_SUM).await,
        metric(b, DELIVERY_COUNT).await,
    );
    let mut p = Propagation {
        logout: Outcome::empty(),
        first_401: Outcome::empty(),
        delivery_sum: 0.0,
        delivery_count: 0.0,
        max_polls: 0,
    };
    let started = Instant::now();
    for i in 0..samples {
        let (access, _) = login(&mut on_a, &users[i % users.len()]).await;
        let probe = session_probe(&access);
        for _ in 0..2 {
            let r = on_b.send(&probe).await.expect("GET /session on B");
            assert_eq!(r.status, 200, "warming the token on pod B");
        }
        let auth = format!("Bearer {access}");
        let logout = request("POST", "/logout", &[("Authorization", &auth)], None);
        let sent = Instant::now();
        match on_a.send(&logout).await.map(|r| r.status) {
            Ok(204) => {
                p.logout.latency.saturating_record(micros(sent.elapsed()));
                p.logout.ok += 1;
            }
            Ok(s) => {
                p.logout.record_error(format!("POST /logout: status {s}"));
                continue;
            }
            Err(e) => {
                p.logout.record_error(e);
                continue;
            }
        }
        let (start, mut polls) = (Instant::now(), 0);
        loop {
            polls += 1;
            if on_b.send(&probe).await.map(|r| r.status) == Ok(401) {
                p.first_401
                    .latency
                    .saturating_record(micros(start.elapsed()));
                p.first_401.ok += 1;
                break;
            }
            if start.elapsed() > GIVE_UP {
                p.first_401
                    .record_error("still accepted 10 s after the logout".into());
                break;
            }
        }
        p.max_polls = p.max_polls.max(polls);
    }
    let elapsed = started.elapsed();
    p.logout.elapsed = elapsed;
    p.first_401.elapsed = elapsed;
    p.delivery_sum = metric(b, DELIVERY_SUM).await - sum0;
    p.delivery_count = metric(b, DELIVERY_COUNT).await - count0;
    p
}

/// What one measurement gathered over all rounds, for one topology.
#[derive(Default)]
struct Series {
    out: Option<Outcome>,
    /// Per round: the rate achieved.
    rates: Vec<f64>,
    cpu: Vec<Cpu>,
    note: String,
}

impl Series {
    fn add(&mut self, out: Outcome, cpu: Cpu) {
        self.rates.push(out.rps());
        self.cpu.push(cpu);
        match &mut self.out {
            Some(all) => {
                let elapsed = all.elapsed + out.elapsed;
                all.merge(out);
                all.elapsed = elapsed;
            }
            None => self.out = Some(out),
        }
    }

    fn out(&self) -> &Outcome {
        self.out.as_ref().expect("measured at least once")
    }

    /// Requests per second over every round (total answered over total measuring time).
    fn rate(&self) -> f64 {
        self.out().rps()
    }

    fn quantile_us(&self, q: f64) -> u64 {
        self.out().latency.value_at_quantile(q)
    }

    fn cpu(&self) -> Cpu {
        let n = self.cpu.len().max(1) as f64;
        let sum = |f: fn(&Cpu) -> f64| self.cpu.iter().map(f).sum::<f64>() / n;
        Cpu {
            server: sum(|c| c.server),
            client: sum(|c| c.client),
            redis: sum(|c| c.redis),
            rest: sum(|c| c.rest),
        }
    }
}

/// Measurements, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    Hot,
    Refresh,
    Login,
    LogoutBetweenLogins,
    Logout,
    Propagation,
}

impl Metric {
    fn describe(self, connections: usize) -> (String, String) {
        match self {
            Metric::Hot => (
                "GET /session, token cached (hot path)".into(),
                format!("closed loop, {connections} conns"),
            ),
            Metric::Refresh => (
                "POST /token/refresh (rotation)".into(),
                format!("closed loop, {connections} conns, one session chain each"),
            ),
            Metric::Login => (
                "POST /login, each session then logged out".into(),
                format!("closed loop, {LOGIN_CONNECTIONS} conns, login + logout each"),
            ),
            Metric::LogoutBetweenLogins => (
                "POST /logout, between those logins".into(),
                format!("closed loop, {LOGIN_CONNECTIONS} conns, login + logout each"),
            ),
            Metric::Logout => (
                "POST /logout on pod A".into(),
                "sequential, 1 session at a time".into(),
            ),
            Metric::Propagation => (
                "logout on A → first 401 on pod B".into(),
                "sequential, 1 session at a time".into(),
            ),
        }
    }
}

struct Deployment {
    a: Pod,
    b: Pod,
    hot_token: String,
    chains: Vec<String>,
}

fn main() {
    let settings = Settings::from_env();
    std::fs::create_dir_all(&settings.out_dir).expect("creating target/bench-report");
    let log = std::fs::File::create(settings.out_dir.join("topology-server.log"))
        .expect("creating target/bench-report/topology-server.log");
    // Production's JSON lines at RUST_LOG=info, into a file: their cost is part of what is
    // measured, as in the load suite.
    sessiond::telemetry::json_subscriber(&settings.log_filter, Mutex::new(log)).init();
    let report = actix_web::rt::System::new().block_on(run(&settings));
    print!("{report}");
    let path = settings.out_dir.join("topology.md");
    std::fs::write(&path, &report).expect("writing target/bench-report/topology.md");
    eprintln!("[topology] written to {}", path.display());
}

async fn run(s: &Settings) -> String {
    let started = Instant::now();
    eprintln!("[topology] starting one redis-server and a 3 + 3 cluster");
    // Dropped (killed) on every way out of this function, a panic included.
    let single = RedisProcesses::single().await;
    let cluster = RedisProcesses::cluster().await;
    let redis_pids: Arc<Vec<u32>> = Arc::new([single.pids(), cluster.pids()].concat());
    let redis_version = single.version().await;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let (db, db_url) = Db::create(s.database_admin_url.as_deref(), &run_id).await;
    let mut base = harness::server_vars(JWT_SECRET, db_url, &s.log_filter);
    base.extend([
        ("SESSION_CACHE_TTL", "5".to_string()),
        // Logins only set the measurements up (none is measured): cheap hashes keep that short.
        ("ARGON2_MEMORY_KIB", "8192".into()),
        ("ARGON2_ITERATIONS", "1".into()),
        // One client address refreshing and logging in over and over: the abuse limits would
        // measure the limiter (they are tested in tests/api/).
        ("RATE_LIMIT_LOGIN_PER_IP", "0".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0".into()),
        ("RATE_LIMIT_REFRESH_PER_IP", "0".into()),
        ("RATE_LIMIT_REGISTER_PER_IP", "0".into()),
        ("LOCKOUT_THRESHOLD", "0".into()),
        ("MAX_SESSIONS_PER_USER", "0".into()),
    ]);
    let cluster_urls = cluster.urls().join(",");

    let hot_user = "hot@example.com".to_string();
    let chain_users: Vec<String> = (0..s.connections)
        .map(|i| format!("chain-{i}@example.com"))
        .collect();
    let prop_users: Vec<String> = (0..PROPAGATION_USERS)
        .map(|i| format!("propagation-{i}@example.com"))
        .collect();

    let mut deployments: BTreeMap<Topology, Deployment> = BTreeMap::new();
    for t in TOPOLOGIES {
        let mut vars = base.clone();
        vars.insert("REDIS_PREFIX", t.prefix().into());
        match t {
            Topology::Single => vars.insert("REDIS_URL", single.urls()[0].clone()),
            Topology::Cluster => vars.insert("REDIS_CLUSTER_URLS", cluster_urls.clone()),
            Topology::ClusterNoWait => {
                vars.insert("REDIS_WAIT_REPLICAS", "0".into());
                vars.insert("REDIS_CLUSTER_URLS", cluster_urls.clone())
            }
        };
        eprintln!("[topology] pods A and B on the {}", t.label());
        let (a, b) = (Pod::start(&vars).await, Pod::start(&vars).await);
        let (addr, first) = (a.addr, deployments.is_empty());
        let (hot, chain_users, prop_users) =
            (hot_user.clone(), chain_users.clone(), prop_users.clone());
        let (hot_token, chains) = on_client(move || async move {
            let mut conn = Conn::new(addr);
            if first {
                for email in chain_users.iter().chain(&prop_users).chain([&hot]) {
                    let (status, _) = post_json(&mut conn, "/register", &credentials(email)).await;
                    assert_eq!(status, 201, "POST /register {email}");
                }
            }
            let mut chains = Vec::new();
            for email in &chain_users {
                chains.push(login(&mut conn, email).await.1);
            }
            (login(&mut conn, &hot).await.0, chains)
        })
        .await;
        let d = Deployment {
            a,
            b,
            hot_token,
            chains,
        };
        deployments.insert(t, d);
    }

    let mut series: BTreeMap<(Metric, Topology), Series> = BTreeMap::new();
    let mut max_polls: BTreeMap<Topology, u64> = BTreeMap::new();
    let mut delivery: BTreeMap<Topology, (f64, f64)> = BTreeMap::new();
    for round in 0..s.rounds {
        // Alternate the order so drift over the run does not favour one configuration.
        let mut order = TOPOLOGIES.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        eprintln!(
            "[topology] round {} of {}: {:?}",
            round + 1,
            s.rounds,
            order
        );
        // The hot path revokes nothing, so WAIT cannot matter: one cluster row.
        for &t in order.iter().filter(|t| **t != Topology::ClusterNoWait) {
            let d = &deployments[&t];
            let load = Load {
                addr: d.a.addr,
                requests: Arc::new(vec![session_probe(&d.hot_token)]),
                expect: 200,
            };
            let (conns, warmup, measure) = (s.connections, s.warmup, s.measure);
            let (out, cpu) = phase(redis_pids.clone(), move || async move {
                closed_loop(&load, conns, warmup, measure).await
            })
            .await;
            eprintln!("[topology]   hot path, {}: {:.0} rps", t.label(), out.rps());
            series.entry((Metric::Hot, t)).or_default().add(out, cpu);
        }
        for &t in &order {
            let d = deployments.get_mut(&t).expect("deployment");
            let (addr, chains) = (d.a.addr, std::mem::take(&mut d.chains));
            let (warmup, measure) = (s.warmup, s.measure);
            let ((out, ends), cpu) = phase(redis_pids.clone(), move || {
                refresh_loop(addr, chains, warmup, measure)
            })
            .await;
            d.chains = ends;
            eprintln!("[topology]   refresh, {}: {:.0} rps", t.label(), out.rps());
            series
                .entry((Metric::Refresh, t))
                .or_default()
                .add(out, cpu);
        }
        for &t in &order {
            let addr = deployments[&t].a.addr;
            let users = chain_users[..LOGIN_CONNECTIONS.min(chain_users.len())].to_vec();
            let (warmup, measure) = (s.warmup, s.measure);
            let ((logins, logouts), cpu) = phase(redis_pids.clone(), move || {
                login_logout_loop(addr, users, warmup, measure)
            })
            .await;
            eprintln!(
                "[topology]   login + logout, {}: {:.0} logins/s, login p99 {} us",
                t.label(),
                logins.rps(),
                logins.latency.value_at_quantile(0.99)
            );
            series
                .entry((Metric::Login, t))
                .or_default()
                .add(logins, cpu);
            series
                .entry((Metric::LogoutBetweenLogins, t))
                .or_default()
                .add(logouts, cpu);
        }
        for &t in &order {
            let d = &deployments[&t];
            let (a, b, users, n) = (d.a.addr, d.b.addr, prop_users.clone(), s.samples);
            let (p, cpu) = phase(redis_pids.clone(), move || propagation(a, b, users, n)).await;
            eprintln!(
                "[topology]   propagation, {}: p50 {} us, p99 {} us",
                t.label(),
                p.first_401.latency.value_at_quantile(0.5),
                p.first_401.latency.value_at_quantile(0.99)
            );
            let polls = max_polls.entry(t).or_default();
            *polls = (*polls).max(p.max_polls);
            let d = delivery.entry(t).or_default();
            (d.0, d.1) = (d.0 + p.delivery_sum, d.1 + p.delivery_count);
            series
                .entry((Metric::Logout, t))
                .or_default()
                .add(p.logout, cpu);
            series
                .entry((Metric::Propagation, t))
                .or_default()
                .add(p.first_401, cpu);
        }
    }
    for ((metric, t), serie) in &mut series {
        if *metric == Metric::Propagation {
            let (sum, count) = delivery[t];
            serie.note = format!(
                "most polls: {}; B's revocation_propagation_seconds mean {:.0} µs ({} messages)",
                max_polls[t],
                sum / count.max(1.0) * 1e6,
                count
            );
        }
    }

    for (_, d) in deployments {
        d.a.stop().await;
        d.b.stop().await;
    }
    db.drop().await;
    drop((single, cluster));
    let database = if s.database_admin_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    render(s, &series, &redis_version, database, started.elapsed())
}

fn ms(us: u64) -> String {
    if us < 10_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?", |(_, v)| v.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({model})")
}

/// One number taken from a series, for the ratio table.
type Stat = fn(&Series) -> f64;

/// A row of the WAIT 1 / WAIT 0 table: its name, what it measures, and how its values show.
type WaitRow = (&'static str, Metric, Stat, fn(f64) -> String);

fn render(
    s: &Settings,
    series: &BTreeMap<(Metric, Topology), Series>,
    redis_version: &str,
    database: &str,
    elapsed: Duration,
) -> String {
    let mut md = String::new();
    let quick = if s.quick { "BENCH_QUICK=1 " } else { "" };
    let db = if database == "PostgreSQL" {
        "BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres "
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "`{quick}{db}cargo bench --bench topology` ({database}, {:.0} s; {}; Redis {redis_version}). \
         {} rounds, alternating the order of the configurations; throughput phases {:.0} s each after \
         {:.0} s of warm-up, {} propagation samples per configuration and round. Each pod: \
         HTTP_WORKERS=1, SESSION_CACHE_TTL=5, JSON logs at {} to a file. CPU: cores used by the \
         server side (all pods) / the load generator / every Redis process / the rest of the machine, \
         averaged over the rounds.\n",
        elapsed.as_secs_f64(),
        machine(),
        s.rounds,
        s.measure.as_secs_f64(),
        s.warmup.as_secs_f64(),
        s.samples,
        s.log_filter,
    );
    let _ = writeln!(
        md,
        "| measurement | Redis | load | rate | p50 | p90 | p99 | max | errors | rate per round | CPU srv / cli / redis / rest |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|");
    let mut notes = Vec::new();
    for ((metric, t), serie) in series {
        if !serie.note.is_empty() {
            let name = metric.describe(0).0;
            notes.push(format!("- {name}, {}: {}", t.label(), serie.note));
        }
        let (name, load) = metric.describe(s.connections);
        let out = serie.out();
        let per_round: Vec<String> = serie.rates.iter().map(|r| thousands(*r)).collect();
        let cpu = serie.cpu();
        let rate = match metric {
            Metric::Hot | Metric::Refresh | Metric::Login | Metric::LogoutBetweenLogins => {
                format!("{} /s", thousands(serie.rate()))
            }
            Metric::Logout | Metric::Propagation => format!("{} samples", out.ok + out.errors),
        };
        let per_round = match metric {
            Metric::Hot | Metric::Refresh | Metric::Login | Metric::LogoutBetweenLogins => {
                per_round.join(", ")
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {load} | {rate} | {} | {} | {} | {} | {} | {per_round} | {:.2} / {:.2} / {:.2} / {:.2} |",
            t.label(),
            ms(serie.quantile_us(0.5)),
            ms(serie.quantile_us(0.9)),
            ms(serie.quantile_us(0.99)),
            ms(out.latency.max()),
            out.errors,
            cpu.server,
            cpu.client,
            cpu.redis,
            cpu.rest,
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "\n{}", notes.join("\n"));
    }

    let get = |m: Metric, t: Topology| series.get(&(m, t));
    let ratio = |m: Metric, t: Topology, f: Stat| -> String {
        match (get(m, t), get(m, Topology::Single)) {
            (Some(c), Some(single)) => format!("{:.3} x", f(c) / f(single).max(1e-9)),
            _ => "-".into(),
        }
    };
    let rate: Stat = |x| x.rate();
    let p50: Stat = |x| x.quantile_us(0.5) as f64;
    let p99: Stat = |x| x.quantile_us(0.99) as f64;
    let _ = writeln!(
        md,
        "\n| cluster / single node | WAIT 1 (default) | WAIT 0 |"
    );
    let _ = writeln!(md, "|---|---:|---:|");
    let rows: [(&str, Metric, Stat); 12] = [
        ("hot path rate", Metric::Hot, rate),
        ("hot path p99", Metric::Hot, p99),
        ("refresh rate", Metric::Refresh, rate),
        ("refresh p99", Metric::Refresh, p99),
        ("login rate (with logouts)", Metric::Login, rate),
        ("login p99 (with logouts)", Metric::Login, p99),
        (
            "logout between logins, rate",
            Metric::LogoutBetweenLogins,
            rate,
        ),
        (
            "logout between logins, p99",
            Metric::LogoutBetweenLogins,
            p99,
        ),
        ("logout p50", Metric::Logout, p50),
        ("logout p99", Metric::Logout, p99),
        ("propagation p50", Metric::Propagation, p50),
        ("propagation p99", Metric::Propagation, p99),
    ];
    for (name, m, f) in rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            ratio(m, Topology::Cluster, f),
            if m == Metric::Hot {
                "- (no revocation on this path: WAIT does not apply)".to_string()
            } else {
                ratio(m, Topology::ClusterNoWait, f)
            }
        );
    }

    // WAIT's own cost, on the same cluster: the default against REDIS_WAIT_REPLICAS=0.
    let _ = writeln!(
        md,
        "\n| cluster, WAIT 1 (default) / WAIT 0 | ratio | WAIT 1 | WAIT 0 |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let waits: [WaitRow; 6] = [
        ("login rate (with logouts)", Metric::Login, rate, |v| {
            format!("{} /s", thousands(v))
        }),
        ("login p50 (with logouts)", Metric::Login, p50, |v| {
            ms(v as u64)
        }),
        ("login p99 (with logouts)", Metric::Login, p99, |v| {
            ms(v as u64)
        }),
        (
            "logout between logins, p99",
            Metric::LogoutBetweenLogins,
            p99,
            |v| ms(v as u64),
        ),
        ("refresh rate", Metric::Refresh, rate, |v| {
            format!("{} /s", thousands(v))
        }),
        (
            "propagation p99",
            Metric::Propagation,
            p99,
            |v| ms(v as u64),
        ),
    ];
    for (name, m, f, show) in waits {
        if let (Some(w1), Some(w0)) = (get(m, Topology::Cluster), get(m, Topology::ClusterNoWait)) {
            let _ = writeln!(
                md,
                "| {name} | {:.3} x | {} | {} |",
                f(w1) / f(w0).max(1e-9),
                show(f(w1)),
                show(f(w0))
            );
        }
    }

    // Targets: the hot path within 5 % of the single node's; propagation p99 under 2 ms.
    let _ = writeln!(md, "\n| target | measured | required | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    if let (Some(c), Some(single)) = (
        get(Metric::Hot, Topology::Cluster),
        get(Metric::Hot, Topology::Single),
    ) {
        let r = c.rate() / single.rate();
        let per_round: Vec<String> = c
            .rates
            .iter()
            .zip(&single.rates)
            .map(|(c, s)| format!("{:.3}", c / s))
            .collect();
        let _ = writeln!(
            md,
            "| hot path, cluster vs single node | {r:.3} x ({} / {} rps; per round {}) | >= 0.95 x | {} |",
            thousands(c.rate()),
            thousands(single.rate()),
            per_round.join(", "),
            yes(r >= 0.95)
        );
    }
    for t in [Topology::Cluster, Topology::ClusterNoWait] {
        if let Some(p) = get(Metric::Propagation, t) {
            let p99 = p.quantile_us(0.99);
            let _ = writeln!(
                md,
                "| propagation p99, {} | {} ({} samples, {} not seen within 10 s) | < 2 ms | {} |",
                t.label(),
                ms(p99),
                p.out().ok,
                p.out().errors,
                yes(p99 < 2000 && p.out().errors == 0)
            );
        }
    }
    md
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}
