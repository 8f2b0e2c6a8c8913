//! Cross-pod propagation: two `Application`s ("pod A", "pod B") in one process, sharing a
//! database and a Redis prefix.
//! - Logout: log in on A, warm the token into B's cache, log out on A, then poll `GET /session`
//!   on B until it answers 401.
//! - Role change: with one session warm in B's cache, an admin changes the user's roles on A;
//!   poll `GET /session` on B until it shows the new roles.
//!
//! Run with `cargo bench --bench propagation`.
use std::{
    collections::HashMap,
    fmt::Display,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};

const GIVE_UP: Duration = Duration::from_secs(10);
const ADMIN: &str = "bench-admin@example.com";
const TARGET_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target");

/// Unwraps, or panics naming what failed and why.
fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn main() {
    println!("`cargo bench --bench propagation`\n");
    println!(
        "env: BENCH_SESSIONS (default 500), BENCH_REDIS_URL (default redis://127.0.0.1:6379), \
         BENCH_DATABASE_URL (postgres admin URL; default: a temp SQLite file), \
         RUST_LOG (server logs, to stderr)\n"
    );
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let failures = actix_web::rt::System::new().block_on(run());
    if failures > 0 {
        eprintln!(
            "FAILED: {failures} sample(s) not seen by pod B {GIVE_UP:?} after the logout or role change"
        );
        std::process::exit(1);
    }
}

/// Runs one statement on the admin database of `BENCH_DATABASE_URL`.
async fn admin_exec(admin_url: &str, sql: &str) {
    let what = "BENCH_DATABASE_URL: connecting to the admin database";
    let admin = ok(Database::connect(admin_url).await, what);
    ok(admin.execute_unprepared(sql).await, sql);
    let _ = admin.close().await;
}

/// `postgres://user@host:port/admin?opts` → the same URL naming database `name`.
fn with_database(admin_url: &str, name: &str) -> String {
    let query = admin_url.find('?').map_or("", |i| &admin_url[i..]);
    let base = &admin_url[..admin_url.len() - query.len()];
    let host = base.find("://").map_or(0, |i| i + 3);
    let path = base[host..].find('/').map_or(base.len(), |i| host + i);
    format!("{}/{name}{query}", &base[..path])
}

struct Stats {
    propagation: Histogram<u64>,
    round_trip: Histogram<u64>,
    /// From the role change's 200 on A to B showing the new roles.
    role_change: Histogram<u64>,
    max_polls: u64,
    max_role_polls: u64,
    failures: u64,
    role_failures: u64,
    other_statuses: u64,
}

async fn run() -> u64 {
    let sessions: u64 = std::env::var("BENCH_SESSIONS").map_or(500, |v| {
        ok(v.parse(), "BENCH_SESSIONS must be a whole number")
    });
    let redis_url =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{run_id}:");
    let postgres = std::env::var("BENCH_DATABASE_URL").ok();
    let sqlite_file = std::env::temp_dir().join(format!("bench-{run_id}.db"));
    let db_name = format!("sessiond_bench_{run_id}");
    let db_url = match &postgres {
        Some(admin) => {
            admin_exec(admin, &format!("CREATE DATABASE \"{db_name}\"")).await;
            with_database(admin, &db_name)
        }
        None => format!("sqlite://{}?mode=rwc", sqlite_file.display()),
    };
    let vars: HashMap<&str, String> = HashMap::from([
        ("JWT_SECRET", "propagation-bench-secret-0123456789ab".into()),
        ("REDIS_URL", redis_url.clone()),
        ("REDIS_PREFIX", prefix.clone()),
        ("DB_URL", db_url),
        ("MIGRATE_ON_START", "true".into()),
        ("HOST", "127.0.0.1".into()),
        ("PORT", "0".into()),
        ("HTTP_WORKERS", "1".into()),
        ("SESSION_CACHE_TTL", "5".into()),
        ("ARGON2_MEMORY_KIB", "8192".into()),
        ("ARGON2_ITERATIONS", "1".into()),
        // 0 disables a limit: one account logs in N times from one address.
        ("RATE_LIMIT_LOGIN_PER_IP", "0".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0".into()),
        ("ADMIN_EMAILS", ADMIN.into()),
    ]);
    let mut pods = Vec::new();
    for name in ["pod A", "pod B"] {
        let config = Config::from_lookup(|k| vars.get(k).cloned());
        let config = ok(config, "bench Config");
        let app = ok(Application::build(config).await, name);
        let (port, handle) = (app.port(), app.handle());
        pods.push((port, handle, actix_web::rt::spawn(app.run_until_stopped())));
    }
    let (a, b) = (pods[0].0, pods[1].0);

    // The client gets its own thread and runtime: the pods' actors run on this one.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let _ = tx.send(ok(rt, "client tokio runtime").block_on(drive(a, b, sessions)));
    });
    let stats = rx.await;

    for (_, handle, task) in pods {
        handle.stop(true).await;
        let _ = task.await;
    }
    if let Err(e) = clear_redis(&redis_url, &prefix).await {
        eprintln!("warning: could not delete the {prefix}* keys from Redis: {e}");
    }
    match &postgres {
        Some(admin) => {
            admin_exec(admin, &format!("DROP DATABASE \"{db_name}\" WITH (FORCE)")).await
        }
        None => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_file.display()));
            }
        }
    }
    let stats = stats.expect("the benchmark client panicked (message above)");
    report(&stats);
    stats.failures + stats.role_failures
}

async fn clear_redis(url: &str, prefix: &str) -> redis::RedisResult<()> {
    use redis::AsyncCommands;
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let iter = conn.scan_match(format!("{prefix}*")).await?;
    let keys: Vec<String> = futures_util::TryStreamExt::try_collect(iter).await?;
    if !keys.is_empty() {
        let () = conn.del(keys).await?;
    }
    Ok(())
}

/// Sends `request`, panicking unless it answers `expected`.
async fn expect(request: reqwest::RequestBuilder, expected: u16, what: &str) -> reqwest::Response {
    let response = ok(request.send().await, what);
    assert_eq!(response.status().as_u16(), expected, "{what}");
    response
}

/// Status of `GET /session`, after reading the body so the connection is reused.
async fn get_session(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    session_roles(client, base, token).await.0
}

/// Status and `roles` of `GET /session`.
async fn session_roles(client: &reqwest::Client, base: &str, token: &str) -> (u16, Value) {
    let request = client.get(format!("{base}/session")).bearer_auth(token);
    let response = ok(request.send().await, "GET /session on pod B");
    let status = response.status().as_u16();
    let body = ok(response.bytes().await, "GET /session on pod B: body");
    let roles = serde_json::from_slice::<Value>(&body).map_or(Value::Null, |v| v["roles"].clone());
    (status, roles)
}

/// Logs in on `base`; the access token.
async fn login(client: &reqwest::Client, base: &str, creds: &Value) -> String {
    let login = expect(
        client.post(format!("{base}/login")).json(creds),
        200,
        "login",
    )
    .await;
    let body: Value = ok(login.json().await, "POST /login: JSON body");
    let token = body["access_token"]
        .as_str()
        .expect("login: no access_token");
    token.to_string()
}

async fn b_metrics(client: &reqwest::Client, b: &str) -> String {
    let response = client.get(format!("{b}/metrics")).send().await;
    let response = ok(response, "GET /metrics on pod B");
    ok(response.text().await, "GET /metrics on pod B: body")
}

/// Whether B has subscribed to invalidations (it trusts and fills its cache only from then on).
fn subscribed(metrics: &str) -> bool {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("sessiond_session_cache_flushes_total "))
        .any(|v| v.trim().parse::<f64>().is_ok_and(|n| n >= 1.0))
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).map_or(u64::MAX, |us| us.max(1))
}

async fn drive(a: u16, b: u16, sessions: u64) -> Stats {
    let [a, b] = [a, b].map(|port| format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::new();
    let hist = || ok(Histogram::new_with_bounds(1, 60_000_000, 3), "histogram");
    let (propagation, round_trip, role_change) = (hist(), hist(), hist());
    let mut s = Stats {
        propagation,
        round_trip,
        role_change,
        max_polls: 0,
        max_role_polls: 0,
        failures: 0,
        role_failures: 0,
        other_statuses: 0,
    };

    let deadline = Instant::now() + GIVE_UP;
    while !subscribed(&b_metrics(&client, &b).await) {
        assert!(Instant::now() < deadline, "pod B never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let creds = json!({"email": "bench@example.com", "password": "bench-password-1"});
    let register = client.post(format!("{a}/register")).json(&creds);
    expect(register, 201, "POST /register on pod A").await;

    for _ in 0..sessions {
        let token = &login(&client, &a, &creds).await;
        let status = get_session(&client, &b, token).await;
        assert_eq!(status, 200, "warm-up GET /session on pod B");
        let start = Instant::now();
        let status = get_session(&client, &b, token).await;
        ok(s.round_trip.record(micros(start)), "histogram");
        assert_eq!(status, 200, "warm GET /session on pod B");

        let logout = client.post(format!("{a}/logout")).bearer_auth(token);
        expect(logout, 204, "POST /logout on pod A").await;
        let (start, mut polls) = (Instant::now(), 0);
        loop {
            polls += 1;
            match get_session(&client, &b, token).await {
                401 => break ok(s.propagation.record(micros(start)), "histogram"),
                200 => {}
                _ => s.other_statuses += 1,
            }
            if start.elapsed() > GIVE_UP {
                break s.failures += 1;
            }
        }
        s.max_polls = s.max_polls.max(polls);
    }
    role_changes(&client, &a, &b, &creds, sessions, &mut s).await;
    let metrics = b_metrics(&client, &b).await;
    eprintln!("pod B counters at the end:");
    for line in metrics.lines() {
        if line.starts_with("sessiond_token_checks") || line.starts_with("sessiond_invalid") {
            eprintln!("  {line}");
        }
    }
    s
}

/// An admin on A flips the user's roles between `["user"]` and `["bench", "user"]`, `samples`
/// times, while the user's session is warm in B's cache; each time, B is polled until
/// `GET /session` shows the new roles.
async fn role_changes(
    client: &reqwest::Client,
    a: &str,
    b: &str,
    user: &Value,
    samples: u64,
    s: &mut Stats,
) {
    let admin_creds = json!({"email": ADMIN, "password": "bench-admin-password-1"});
    let register = client.post(format!("{a}/register")).json(&admin_creds);
    expect(register, 201, "POST /register (admin) on pod A").await;
    let admin = login(client, a, &admin_creds).await;
    let role = json!({"name": "bench", "permissions": ["bench:read"]});
    let create = client
        .post(format!("{a}/admin/roles"))
        .bearer_auth(&admin)
        .json(&role);
    expect(create, 201, "POST /admin/roles on pod A").await;
    let token = login(client, a, user).await;
    let list = client
        .get(format!("{a}/admin/users?email_prefix=bench@"))
        .bearer_auth(&admin);
    let list: Value = ok(
        expect(list, 200, "GET /admin/users").await.json().await,
        "users JSON",
    );
    let user_id = list["items"][0]["id"]
        .as_str()
        .expect("user id")
        .to_string();
    let roles_path = format!("{a}/admin/users/{user_id}/roles");
    for i in 0..samples {
        let roles = if i % 2 == 0 {
            json!(["bench", "user"])
        } else {
            json!(["user"])
        };
        // Warm: B answers from its cache with the current roles.
        let (status, _) = session_roles(client, b, &token).await;
        assert_eq!(status, 200, "warm GET /session on pod B");
        let put = client
            .put(&roles_path)
            .bearer_auth(&admin)
            .json(&json!({"roles": roles}));
        expect(put, 200, "PUT /admin/users/{id}/roles on pod A").await;
        let (start, mut polls) = (Instant::now(), 0);
        loop {
            polls += 1;
            let (status, seen) = session_roles(client, b, &token).await;
            if status == 200 && seen == roles {
                break ok(s.role_change.record(micros(start)), "histogram");
            }
            if start.elapsed() > GIVE_UP {
                break s.role_failures += 1;
            }
        }
        s.max_role_polls = s.max_role_polls.max(polls);
    }
}

const ROWS: [&str; 3] = [
    "logout → first 401 on B",
    "role change → new roles on B",
    "GET /session round trip (poll resolution)",
];

fn report(s: &Stats) {
    let quantiles = |h: &Histogram<u64>| [0.5, 0.9, 0.99].map(|p| h.value_at_quantile(p));
    println!("| measurement | samples | p50 | p90 | p99 | max | failures |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let failures = [
        s.failures.to_string(),
        s.role_failures.to_string(),
        "-".into(),
    ];
    let hists = [&s.propagation, &s.role_change, &s.round_trip];
    for ((name, h), failures) in ROWS.iter().zip(hists).zip(failures) {
        let ([p50, p90, p99], n, max) = (quantiles(h), h.len(), h.max());
        println!("| {name} | {n} | {p50} µs | {p90} µs | {p99} µs | {max} µs | {failures} |");
    }
    let median = |h: &Histogram<u64>| h.value_at_quantile(0.5).max(1) as f64;
    let ratio = median(&s.propagation) / median(&s.round_trip);
    println!(
        "\nmedian propagation = {ratio:.1}× the median poll round trip; most polls needed: {} \
         (logout), {} (role change); other statuses while polling: {}",
        s.max_polls, s.max_role_polls, s.other_statuses
    );
    let row = |h: &Histogram<u64>| {
        let [p50, p90, p99] = quantiles(h);
        json!({"samples": h.len(), "p50_us": p50, "p90_us": p90, "p99_us": p99, "max_us": h.max()})
    };
    let out = json!({
        "command": "cargo bench --bench propagation",
        "logout_to_first_401_on_b": row(&s.propagation),
        "role_change_to_new_roles_on_b": row(&s.role_change),
        "get_session_round_trip": row(&s.round_trip),
        "failures": s.failures,
        "role_change_failures": s.role_failures,
        "max_polls_until_new_roles": s.max_role_polls,
        "max_polls_until_401": s.max_polls,
        "other_statuses_while_polling": s.other_statuses,
    });
    let path = format!("{TARGET_DIR}/bench-propagation.json");
    ok(std::fs::create_dir_all(TARGET_DIR), TARGET_DIR);
    ok(std::fs::write(&path, format!("{out:#}\n")), &path);
    println!("\nJSON written to {path}");
}
