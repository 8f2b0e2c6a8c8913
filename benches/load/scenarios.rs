//! The load scenarios, in the order they run, and what each one records.
use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sessiond::{
    auth::JwtKeys,
    config::Argon2Config,
    redis::Redis,
    session::{now_unix, Lifetimes, RedisStore, RefreshToken, SessionRecord, SessionStore},
    users::password::{PasswordHasher, Priority},
};
use uuid::Uuid;

use crate::{
    baseline,
    client::{closed_loop, micros, open_loop, request, Conn, Load, Outcome},
    harness::{machine_busy_ticks, ticks, wait_for_quiet_machine, TICKS_PER_SECOND},
    on_client,
    report::{Cpu, Report, Row, SweepPoint},
    ServerEnv, Settings, EMAIL, PASSWORD,
};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(path: &str, auth: Option<(&str, &str)>) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = auth.into_iter().collect();
    request("GET", path, &headers, None)
}

async fn redis_cpu_seconds(url: Option<&str>) -> Option<f64> {
    let mut conn = redis::Client::open(url?)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

async fn redis_version(url: &str) -> Option<String> {
    let mut conn = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

/// Runs one phase on the client thread and records the CPU it cost on each side, in cores.
async fn phase<T, Fut>(
    redis_url: Option<String>,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> (T, Cpu)
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    on_client(move || async move {
        wait_for_quiet_machine("load", 120).await;
        let redis0 = redis_cpu_seconds(redis_url.as_deref()).await;
        let machine0 = machine_busy_ticks();
        let (proc0, thread0, wall0) = (
            ticks("/proc/self/stat"),
            ticks("/proc/thread-self/stat"),
            Instant::now(),
        );
        let out = f().await;
        let wall = wall0.elapsed().as_secs_f64();
        let client = (ticks("/proc/thread-self/stat") - thread0) as f64 / TICKS_PER_SECOND;
        let process = (ticks("/proc/self/stat") - proc0) as f64 / TICKS_PER_SECOND;
        let redis = match (redis0, redis_cpu_seconds(redis_url.as_deref()).await) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let busy = (machine_busy_ticks() - machine0) as f64 / TICKS_PER_SECOND / wall;
        let server = ((process - client) / wall).max(0.0);
        let cpu = Cpu {
            server,
            client: client / wall,
            redis,
            rest: (busy - server - client / wall - redis.unwrap_or(0.0)).max(0.0),
        };
        (out, cpu)
    })
    .await
}

/// The value of one sample line of sessiond's Prometheus exposition.
async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    // A fresh connection: a kept one would have hit the server's keep-alive timeout by now.
    let mut conn = Conn::new(addr);
    let response = conn
        .send(&get("/metrics", None))
        .await
        .expect("GET /metrics");
    String::from_utf8_lossy(response.body)
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

const HITS: &str = "sessiond_token_checks_total{outcome=\"cache_hit\"} ";
const MISSES: &str = "sessiond_token_checks_total{outcome=\"cache_miss\"} ";

/// With Redis a pod trusts (and fills) its cache only once it listens for invalidations.
async fn wait_until_subscribed(addr: SocketAddr) {
    on_client(move || async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(addr, "sessiond_session_cache_flushes_total ").await < 1.0 {
            assert!(Instant::now() < deadline, "sessiond never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Status and JSON body; status 0 when the exchange itself failed (counted as an error).
async fn post_json(conn: &mut Conn, path: &str, body: &Value) -> (u16, Value) {
    let req = request("POST", path, &[], Some(&body.to_string()));
    match conn.send(&req).await {
        Ok(r) => (
            r.status,
            serde_json::from_slice(r.body).unwrap_or(Value::Null),
        ),
        Err(e) => {
            eprintln!("[load] POST {path}: {e}");
            (0, Value::Null)
        }
    }
}

fn credentials() -> Value {
    json!({"email": EMAIL, "password": PASSWORD})
}

/// Registers the suite's account and logs in once: the token of the hot session.
async fn prepare_account(addr: SocketAddr) -> String {
    let mut conn = Conn::new(addr);
    let (status, _) = post_json(&mut conn, "/register", &credentials()).await;
    assert!(status == 201 || status == 409, "POST /register: {status}");
    let (status, body) = post_json(&mut conn, "/login", &credentials()).await;
    assert_eq!(status, 200, "POST /login");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// One argon2id verify with the configured parameters, through the same pool logins use: the
/// median of a few, measured with nothing else running.
async fn argon2_verify_time(cfg: Argon2Config) -> Duration {
    let hasher = PasswordHasher::new(&cfg, 0, sessiond::metrics::Metrics::new())
        .await
        .expect("argon2 parameters");
    let hash = hasher.hash(PASSWORD.into()).await.expect("hash");
    let mut times = Vec::new();
    for _ in 0..9 {
        let start = Instant::now();
        let ok = hasher
            .verify(PASSWORD.into(), Some(hash.clone()), Priority::Login)
            .await
            .expect("verify");
        assert!(ok);
        times.push(start.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

pub struct Suite {
    settings: Arc<Settings>,
    report: Report,
}

impl Suite {
    fn redis(&self) -> Option<String> {
        self.settings.redis_url.clone()
    }

    async fn closed(
        &mut self,
        scenario: &str,
        server: &str,
        load: Load,
        connections: usize,
        note: String,
    ) -> f64 {
        let (warmup, measure) = (self.settings.warmup, self.settings.measure);
        let (out, cpu) = phase(self.redis(), move || async move {
            closed_loop(&load, connections, warmup, measure).await
        })
        .await;
        let label = format!("closed loop, {connections} conns");
        let rps = out.rps();
        self.report
            .push(Row::new(scenario, server, &label, &out, cpu, note));
        rps
    }
}

pub async fn run_all(settings: Arc<Settings>, env: ServerEnv, prefix: String) -> Report {
    let mode = if settings.redis_url.is_some() {
        if settings.database_admin_url.is_some() {
            "PostgreSQL + Redis"
        } else {
            "SQLite + Redis"
        }
    } else {
        "embedded (SQLite, in-process sessions)"
    };
    let config = env.config();
    let mut suite = Suite {
        report: Report::new(&settings, mode, &config),
        settings: settings.clone(),
    };
    let s = settings.clone();
    let redis = s.redis_url.clone();
    let (conns, oconns) = (s.connections, s.open_connections);
    let started = Instant::now();
    if let Some(url) = &redis {
        suite.report.machine.redis = redis_version(url).await;
    }

    eprintln!("[load] mode: {mode}");
    eprintln!("[load] sessiond: /health, /session, /profile");
    let pod_a = env.start().await;
    if redis.is_some() {
        wait_until_subscribed(pod_a.addr()).await;
    }
    let a = pod_a.addr();
    let token = on_client(move || prepare_account(a)).await;
    let auth = bearer(&token);
    let one = |req: Vec<u8>, expect: u16| Load {
        addr: a,
        requests: Arc::new(vec![req]),
        expect,
    };
    let health = one(get("/health", None), 200);
    suite
        .closed("GET /health", "sessiond", health, conns, String::new())
        .await;
    let hot = one(get("/session", Some(("Authorization", &auth))), 200);
    let hot_rps = suite
        .closed(
            "GET /session, one hot session",
            "sessiond",
            hot.clone(),
            conns,
            String::new(),
        )
        .await;
    let profile = one(get("/profile", Some(("Authorization", &auth))), 200);
    suite
        .closed("GET /profile", "sessiond", profile, conns, String::new())
        .await;

    eprintln!("[load] sessiond: POST /login");
    // The bound is measured right before the logins, under the same conditions.
    let argon = config.argon2.clone();
    let (verify, _) = phase(None, move || argon2_verify_time(argon)).await;
    suite.report.set_argon2(verify, &config);
    let login_conns = 2 * config.argon2.max_concurrency;
    let login = one(
        request("POST", "/login", &[], Some(&credentials().to_string())),
        200,
    );
    let login_rps = suite
        .closed("POST /login", "sessiond", login, login_conns, String::new())
        .await;
    suite.report.login_rps = Some(login_rps);

    eprintln!("[load] sessiond: mixed flows");
    let (users, calls, measure) = (s.mixed_users, s.mixed_calls, s.mixed_measure);
    let ((steps, flows), cpu) = phase(redis.clone(), move || mixed(a, users, calls, measure)).await;
    let label = format!("closed loop, {users} users");
    for (step, out) in steps {
        let note = format!(
            "{:.1} flows/s: login, {calls} calls (/session, /profile alternating), refresh, 1 call, logout",
            flows as f64 / measure.as_secs_f64()
        );
        suite.report.push(Row::new(
            &format!("mixed: {step}"),
            "sessiond",
            &label,
            &out,
            cpu,
            note,
        ));
    }

    let mut base_hot = None;
    let baseline_server = match &redis {
        Some(url) => {
            eprintln!("[load] baseline (actix-session + Redis): /health, /session");
            let b = baseline::start(url, &prefix).await;
            let addr = b.addr();
            let cookie = on_client(move || baseline_login(addr)).await;
            let load = |req: Vec<u8>| Load {
                addr,
                requests: Arc::new(vec![req]),
                expect: 200,
            };
            suite
                .closed(
                    "GET /health",
                    "baseline",
                    load(get("/health", None)),
                    conns,
                    String::new(),
                )
                .await;
            let req = get("/session", Some(("Cookie", &cookie)));
            suite
                .closed(
                    "GET /session, one hot session",
                    "baseline",
                    load(req.clone()),
                    conns,
                    String::new(),
                )
                .await;
            base_hot = Some(load(req));
            Some(b)
        }
        None => None,
    };

    eprintln!("[load] open-loop sweep of the hot path");
    for fraction in &s.sweep_fractions {
        let rate = (hot_rps * fraction).round().max(100.0);
        let mut targets = vec![("sessiond", hot.clone())];
        if let Some(b) = &base_hot {
            targets.push(("baseline", b.clone()));
        }
        for (server, load) in targets {
            let (warmup, measure) = (s.warmup, s.sweep_measure);
            let (out, cpu) = phase(redis.clone(), move || async move {
                open_loop(&load, rate, oconns, warmup, measure).await
            })
            .await;
            let point = SweepPoint::new(server, rate, &out, cpu);
            eprintln!(
                "[load]   {server} open loop {rate:.0} rps: achieved {:.0}, p50 {} us, p99 {} us, max {} us, errors {}",
                point.achieved_rps, point.p50_us, point.p99_us, point.max_us, point.errors
            );
            suite.report.sweep.push(point);
        }
    }
    if let Some(b) = baseline_server {
        b.stop().await;
    }

    let mut pod_a = Some(pod_a);
    if let Some(url) = &redis {
        eprintln!("[load] logout propagation across two pods");
        let pod_b = env.start().await;
        wait_until_subscribed(pod_b.addr()).await;
        let (b, samples) = (pod_b.addr(), s.propagation_samples);
        let (url2, prefix2, cfg) = (url.clone(), prefix.clone(), env.config());
        let (out, cpu) = phase(redis.clone(), move || {
            propagation(a, b, url2, prefix2, cfg, samples)
        })
        .await;
        suite.report.push(Row::new(
            "logout on pod A → first 401 on pod B",
            "sessiond",
            "sequential, 1 session at a time",
            &out,
            cpu,
            format!("{samples} sessions; errors = still accepted after 10 s"),
        ));
        pod_b.stop().await;

        eprintln!("[load] seeding {} sessions in Redis", s.distinct_sessions);
        let (url2, prefix2, cfg, n) = (
            url.clone(),
            prefix.clone(),
            env.config(),
            s.distinct_sessions,
        );
        let requests = on_client(move || seed_sessions(url2, prefix2, cfg, n)).await;
        let rate = s.distinct_sessions as f64 / s.per_user_interval.as_secs_f64();
        let mut current_ttl = config.session_cache_ttl.as_secs();
        for ttl in &s.cache_ttls {
            let current = pod_a.take().expect("pod A runs");
            let pod = if current_ttl == *ttl {
                current
            } else {
                current_ttl = *ttl;
                current.stop().await;
                let pod = env.with("SESSION_CACHE_TTL", ttl.to_string()).start().await;
                wait_until_subscribed(pod.addr()).await;
                pod
            };
            eprintln!(
                "[load] {} distinct sessions, SESSION_CACHE_TTL={ttl}s",
                s.distinct_sessions
            );
            let load = Load {
                addr: pod.addr(),
                requests: requests.clone(),
                expect: 200,
            };
            // Steady state needs every cached entry to have lived through one TTL.
            let warm = Duration::from_secs(*ttl + 5).min(if s.quick {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(600)
            });
            let (measure, addr) = (s.distinct_measure, pod.addr());
            let l2 = load.clone();
            let ((out, hit_rate), cpu) = phase(redis.clone(), move || async move {
                open_loop(&l2, rate, oconns, Duration::ZERO, warm).await;
                let (h0, m0) = (metric(addr, HITS).await, metric(addr, MISSES).await);
                let out = open_loop(&l2, rate, oconns, Duration::ZERO, measure).await;
                let (h1, m1) = (metric(addr, HITS).await, metric(addr, MISSES).await);
                (out, (h1 - h0) / ((h1 - h0) + (m1 - m0)).max(1.0))
            })
            .await;
            let per_user = s.per_user_interval.as_secs_f64();
            let label = format!("open loop, {rate:.0} rps offered");
            let note = format!(
                "cache hit rate {:.1}% (after {}s warm-up; each user every {per_user:.0}s on average)",
                hit_rate * 100.0,
                warm.as_secs()
            );
            let scenario = format!("GET /session, {} sessions, TTL {ttl}s", s.distinct_sessions);
            suite
                .report
                .push(Row::new(&scenario, "sessiond", &label, &out, cpu, note));
            suite.report.hit_rates.push((*ttl, hit_rate, out.rps()));

            let (warmup, measure) = (s.warmup, s.measure);
            let ((out, hit_rate), cpu) = phase(redis.clone(), move || async move {
                let (h0, m0) = (metric(addr, HITS).await, metric(addr, MISSES).await);
                let out = closed_loop(&load, conns, warmup, measure).await;
                let (h1, m1) = (metric(addr, HITS).await, metric(addr, MISSES).await);
                (out, (h1 - h0) / ((h1 - h0) + (m1 - m0)).max(1.0))
            })
            .await;
            let note = format!(
                "cache hit rate {:.1}% (users picked at random)",
                hit_rate * 100.0
            );
            let label = format!("closed loop, {conns} conns");
            suite
                .report
                .push(Row::new(&scenario, "sessiond", &label, &out, cpu, note));
            pod_a = Some(pod);
        }
    } else {
        suite.report.skipped.push(
            "baseline, logout propagation and the distinct-sessions scenario need Redis \
             (set BENCH_REDIS_URL)"
                .into(),
        );
    }
    if let Some(pod) = pod_a {
        pod.stop().await;
    }
    suite.report.elapsed = started.elapsed();
    suite.report.finish();
    suite.report
}

async fn baseline_login(addr: SocketAddr) -> String {
    let mut conn = Conn::new(addr);
    let response = conn
        .send(&request("POST", "/login", &[], Some("{}")))
        .await
        .expect("baseline POST /login");
    assert_eq!(response.status, 200, "baseline POST /login");
    let set_cookie = response
        .header("set-cookie")
        .expect("baseline session cookie");
    set_cookie
        .split(';')
        .next()
        .expect("cookie pair")
        .to_string()
}

/// Login, `calls` authenticated calls, refresh, one call with the new token, logout; per step.
async fn mixed(
    addr: SocketAddr,
    users: usize,
    calls: usize,
    measure: Duration,
) -> (BTreeMap<&'static str, Outcome>, u64) {
    let until = Instant::now() + measure;
    let tasks: Vec<_> = (0..users)
        .map(|_| {
            tokio::task::spawn_local(async move {
                let mut steps: BTreeMap<&'static str, Outcome> = BTreeMap::new();
                let mut flows = 0u64;
                let mut conn = Conn::new(addr);
                let mut step = |name: &'static str, start: Instant, ok: Result<(), String>| {
                    let out = steps.entry(name).or_insert_with(Outcome::empty);
                    out.latency.saturating_record(micros(start.elapsed()));
                    match ok {
                        Ok(()) => out.ok += 1,
                        Err(e) => out.record_error(e),
                    }
                };
                let check = |status: u16, want: u16| {
                    if status == want {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                };
                while Instant::now() < until {
                    let t = Instant::now();
                    let (status, body) = post_json(&mut conn, "/login", &credentials()).await;
                    step("1 POST /login", t, check(status, 200));
                    let (Some(access), Some(refresh)) = (
                        body["access_token"].as_str(),
                        body["refresh_token"].as_str(),
                    ) else {
                        continue;
                    };
                    let auth = bearer(access);
                    for i in 0..calls {
                        let (name, path) = if i % 2 == 0 {
                            ("2 GET /session", "/session")
                        } else {
                            ("3 GET /profile", "/profile")
                        };
                        let t = Instant::now();
                        let r = conn.send(&get(path, Some(("Authorization", &auth)))).await;
                        step(name, t, r.and_then(|r| check(r.status, 200)));
                    }
                    let t = Instant::now();
                    let body = json!({ "refresh_token": refresh });
                    let (status, body) = post_json(&mut conn, "/token/refresh", &body).await;
                    step("4 POST /token/refresh", t, check(status, 200));
                    let Some(access) = body["access_token"].as_str() else {
                        continue;
                    };
                    let auth = bearer(access);
                    let t = Instant::now();
                    let r = conn
                        .send(&get("/session", Some(("Authorization", &auth))))
                        .await;
                    step("2 GET /session", t, r.and_then(|r| check(r.status, 200)));
                    let t = Instant::now();
                    let logout = request("POST", "/logout", &[("Authorization", &auth)], None);
                    let r = conn.send(&logout).await;
                    step("5 POST /logout", t, r.and_then(|r| check(r.status, 204)));
                    flows += 1;
                }
                (steps, flows)
            })
        })
        .collect();
    let mut all: BTreeMap<&'static str, Outcome> = BTreeMap::new();
    let mut flows = 0;
    for t in tasks {
        let (steps, n) = t.await.expect("mixed task panicked");
        flows += n;
        for (name, out) in steps {
            all.entry(name).or_insert_with(Outcome::empty).merge(out);
        }
    }
    for out in all.values_mut() {
        out.elapsed = measure;
    }
    (all, flows)
}

fn session_store_lifetimes() -> Lifetimes {
    Lifetimes::new(None, Duration::from_secs(10))
}

/// A session written the way sessiond's login writes it, and a token for it, without paying
/// argon2 per session.
fn new_session(keys: &JwtKeys, lifetime: Duration) -> (SessionRecord, String) {
    let (uid, sid, now) = (Uuid::new_v4(), Uuid::new_v4(), now_unix());
    let expires_at = now + lifetime.as_secs() as i64;
    let access = std::sync::Arc::new(sessiond::auth::Access::new(vec!["user".into()], vec![]));
    let record = SessionRecord {
        session_id: sid,
        user_id: uid,
        created_at: now,
        last_seen_at: now,
        expires_at,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("load-suite".into()),
        access: access.clone(),
        refresh_hash: RefreshToken::generate(uid, sid).hash(),
        auth: std::sync::Arc::new(sessiond::session::AuthContext::password(now)),
    };
    let (token, _) = keys
        .issue(uid, sid, &access, expires_at, now, Uuid::new_v4())
        .expect("signing");
    (record, token)
}

/// Sealed with the server's key (from `config`), as the server's own writes are.
async fn connect_store(url: &str, prefix: &str, config: &sessiond::config::Config) -> SessionStore {
    let metrics = sessiond::metrics::Metrics::new();
    let settings = sessiond::config::redis::RedisSettings::single(url, Duration::from_secs(2));
    let redis = Redis::connect(&settings, prefix, metrics.redis.clone())
        .await
        .expect("connecting to Redis");
    SessionStore::Redis(RedisStore::new(
        redis,
        session_store_lifetimes(),
        sessiond::session::seal::SealKeys::from_config(config),
        metrics.seal_failures.clone(),
    ))
}

async fn seed_sessions(
    url: String,
    prefix: String,
    config: sessiond::config::Config,
    n: usize,
) -> Arc<Vec<Vec<u8>>> {
    let store = connect_store(&url, &prefix, &config).await;
    let keys = JwtKeys::new(&config);
    let sessions: Vec<_> = (0..n)
        .map(|_| new_session(&keys, config.session_lifetime))
        .collect();
    let store = &store;
    futures_util::stream::iter(sessions.iter())
        .map(|(rec, _)| async move { store.create(rec).await })
        .buffer_unordered(256)
        .for_each(|r| async move {
            r.expect("seeding a session");
        })
        .await;
    let requests = sessions
        .iter()
        .map(|(_, token)| get("/session", Some(("Authorization", &bearer(token)))))
        .collect();
    Arc::new(requests)
}

/// Log out on pod A, then poll pod B until it refuses the token (the same approach as
/// benches/propagation.rs, with sessions written straight to Redis).
async fn propagation(
    a: SocketAddr,
    b: SocketAddr,
    url: String,
    prefix: String,
    config: sessiond::config::Config,
    samples: usize,
) -> Outcome {
    let store = connect_store(&url, &prefix, &config).await;
    let keys = JwtKeys::new(&config);
    let (mut on_a, mut on_b) = (Conn::new(a), Conn::new(b));
    let mut out = Outcome::empty();
    let started = Instant::now();
    for _ in 0..samples {
        let (record, token) = new_session(&keys, config.session_lifetime);
        store.create(&record).await.expect("creating a session");
        let auth = bearer(&token);
        let probe = get("/session", Some(("Authorization", &auth)));
        for _ in 0..2 {
            let r = on_b.send(&probe).await.expect("GET /session on B");
            assert_eq!(r.status, 200, "warming pod B");
        }
        let logout = request("POST", "/logout", &[("Authorization", &auth)], None);
        let r = on_a.send(&logout).await.expect("POST /logout on A");
        assert_eq!(r.status, 204, "POST /logout on A");
        let start = Instant::now();
        loop {
            let status = on_b.send(&probe).await.map(|r| r.status);
            if status == Ok(401) {
                out.latency.saturating_record(micros(start.elapsed()));
                out.ok += 1;
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                out.record_error("still accepted 10 s after logout".into());
                break;
            }
        }
    }
    out.elapsed = started.elapsed();
    out
}
