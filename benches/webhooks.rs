//! Webhook delivery lag after a logout: one pod, a receiver on 127.0.0.1 in this process.
//! Per sample: log in, `POST /logout`, and time until the receiver has the `session.revoked`
//! webhook naming that session (from the request's start, and from its 204).
//!
//! Run with `cargo bench --bench webhooks`. Env: BENCH_SAMPLES (default 300), BENCH_DATABASE_URL
//! (postgres admin URL, then with BENCH_REDIS_URL, default redis://127.0.0.1:6379; default: a
//! temp SQLite file and in-process sessions).
use std::{
    collections::HashMap,
    fmt::Display,
    net::TcpListener,
    time::{Duration, Instant},
};

use actix_web::{web, HttpResponse, HttpServer};
use hdrhistogram::Histogram;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};
use tokio::sync::mpsc;

#[path = "support.rs"]
mod support;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GIVE_UP: Duration = Duration::from_secs(10);

fn ok<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn main() {
    println!("`cargo bench --bench webhooks`\n");
    let failures = actix_web::rt::System::new().block_on(run());
    if failures > 0 {
        eprintln!("FAILED: {failures} webhook(s) not received within {GIVE_UP:?}");
        std::process::exit(1);
    }
}

async fn admin_exec(admin_url: &str, sql: &str) {
    let admin = ok(Database::connect(admin_url).await, "BENCH_DATABASE_URL");
    ok(admin.execute_unprepared(sql).await, sql);
    let _ = admin.close().await;
}

fn with_database(admin_url: &str, name: &str) -> String {
    let query = admin_url.find('?').map_or("", |i| &admin_url[i..]);
    let base = &admin_url[..admin_url.len() - query.len()];
    let host = base.find("://").map_or(0, |i| i + 3);
    let path = base[host..].find('/').map_or(base.len(), |i| host + i);
    format!("{}/{name}{query}", &base[..path])
}

async fn run() -> u64 {
    let samples: u64 =
        std::env::var("BENCH_SAMPLES").map_or(300, |v| ok(v.parse(), "BENCH_SAMPLES"));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{run_id}:");
    let redis_url =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let postgres = std::env::var("BENCH_DATABASE_URL").ok();
    let sqlite_file = std::env::temp_dir().join(format!("bench-{run_id}.db"));
    let db_name = format!("sessiond_bench_{run_id}");

    // The receiver: hands (session_id, arrival) to the client, answers 204.
    let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let listener = ok(TcpListener::bind("127.0.0.1:0"), "receiver bind");
    let hook_url = format!(
        "http://{}/hooks",
        ok(listener.local_addr(), "receiver address")
    );
    let receiver = HttpServer::new(move || {
        let tx = tx.clone();
        actix_web::App::new().route(
            "/hooks",
            web::post().to(move |body: web::Bytes| {
                let tx = tx.clone();
                async move {
                    let at = Instant::now();
                    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Some(sid) = event["data"]["session_id"].as_str() {
                        let _ = tx.send((sid.to_string(), at));
                    }
                    HttpResponse::NoContent().finish()
                }
            }),
        )
    })
    .listen(listener)
    .map(|s| s.workers(1).disable_signals().run());
    let receiver = ok(receiver, "receiver");
    let receiver_handle = receiver.handle();
    actix_web::rt::spawn(receiver);

    let mut vars: HashMap<&str, String> = HashMap::from([
        (
            "JWT_SECRET",
            "webhook-bench-secret-0123456789abcdefgh".into(),
        ),
        ("MIGRATE_ON_START", "true".into()),
        ("HOST", "127.0.0.1".into()),
        ("PORT", "0".into()),
        ("HTTP_WORKERS", "1".into()),
        ("ARGON2_MEMORY_KIB", "8192".into()),
        ("ARGON2_ITERATIONS", "1".into()),
        ("RATE_LIMIT_LOGIN_PER_IP", "0".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0".into()),
        ("WEBHOOK_URLS", hook_url),
        ("WEBHOOK_SECRET", SECRET.into()),
    ]);
    match &postgres {
        Some(admin) => {
            admin_exec(admin, &format!("CREATE DATABASE \"{db_name}\"")).await;
            vars.insert("DB_URL", with_database(admin, &db_name));
            vars.insert("REDIS_URL", redis_url.clone());
            vars.insert("REDIS_PREFIX", prefix.clone());
        }
        None => {
            vars.insert("SQLITE_PATH", sqlite_file.display().to_string());
        }
    }
    let config = ok(
        Config::from_lookup(|k| vars.get(k).cloned()),
        "bench Config",
    );
    let app = ok(Application::build(config).await, "sessiond");
    let (port, handle) = (app.port(), app.handle());
    let task = actix_web::rt::spawn(app.run_until_stopped());

    // The client gets its own thread and runtime: the pod and the receiver run on this one.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let _ = done_tx.send(ok(rt, "client runtime").block_on(drive(port, samples, rx)));
    });
    let result = done_rx.await;

    handle.stop(true).await;
    let _ = task.await;
    receiver_handle.stop(true).await;
    match &postgres {
        Some(admin) => {
            let _ = support::clear_redis(&redis_url, &prefix).await;
            admin_exec(admin, &format!("DROP DATABASE \"{db_name}\" WITH (FORCE)")).await;
        }
        None => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_file.display()));
            }
        }
    }
    let (from_request, from_answer, failures) = result.expect("the bench client panicked");
    println!(
        "backend: {}",
        if postgres.is_some() {
            "PostgreSQL + Redis"
        } else {
            "SQLite + in-process sessions"
        }
    );
    for (name, h) in [
        ("logout request sent -> webhook received", &from_request),
        ("logout 204 -> webhook received", &from_answer),
    ] {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
            h.len(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
    failures
}

async fn drive(
    port: u16,
    samples: u64,
    mut rx: mpsc::UnboundedReceiver<(String, Instant)>,
) -> (Histogram<u64>, Histogram<u64>, u64) {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let creds =
        json!({"email": "webhook-bench@example.com", "password": "correct horse battery staple"});
    let r = ok(
        client
            .post(format!("{base}/register"))
            .json(&creds)
            .send()
            .await,
        "register",
    );
    assert_eq!(r.status().as_u16(), 201, "register");
    let mut from_request = Histogram::<u64>::new(3).expect("histogram");
    let mut from_answer = Histogram::<u64>::new(3).expect("histogram");
    let mut failures = 0;
    for _ in 0..samples {
        let login = ok(
            client
                .post(format!("{base}/login"))
                .json(&creds)
                .send()
                .await,
            "login",
        );
        assert_eq!(login.status().as_u16(), 200, "login");
        let body: Value = ok(login.json().await, "login body");
        let (token, sid) = (
            body["access_token"].as_str().unwrap_or("").to_string(),
            body["session_id"].as_str().unwrap_or("").to_string(),
        );
        let t0 = Instant::now();
        let r = ok(
            client
                .post(format!("{base}/logout"))
                .bearer_auth(&token)
                .send()
                .await,
            "logout",
        );
        let t1 = Instant::now();
        assert_eq!(r.status().as_u16(), 204, "logout");
        let deadline = tokio::time::Instant::now() + GIVE_UP;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((got, at))) if got == sid => {
                    let us = |d: Duration| d.as_micros().max(1) as u64;
                    let _ = from_request.record(us(at.duration_since(t0)));
                    let _ = from_answer.record(us(at.saturating_duration_since(t1)));
                    break;
                }
                Ok(Some(_)) => continue,
                _ => {
                    failures += 1;
                    break;
                }
            }
        }
    }
    (from_request, from_answer, failures)
}
