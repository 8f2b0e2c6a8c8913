//! Introspection throughput: POST /introspect in a closed loop over keep-alive connections (the
//! client's credentials and the token cached, as for a service that checks the same token
//! repeatedly), next to GET /session in the same run and under the same conditions: sessiond in
//! this process with one HTTP worker, the load generator (benches/load/client.rs) on its own
//! thread, as the load suite runs them.
//!
//! `cargo bench --bench introspection`; with BENCH_DATABASE_URL and BENCH_REDIS_URL it runs on
//! PostgreSQL + Redis, otherwise on the embedded default. BENCH_CONNECTIONS (32), BENCH_ROUNDS (3)
//! and BENCH_SECONDS (5) change the shape; each round measures both endpoints, and the table
//! shows the median round.
#[allow(dead_code)]
#[path = "load/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "load/harness.rs"]
mod harness;
#[path = "support.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use client::{closed_loop, request, Conn, Load};
use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};

const ADMIN: &str = "bench-admin@example.com";
const PASSWORD: &str = "introspection-bench-password-1";

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
        })
        .unwrap_or(default)
}

async fn call(conn: &mut Conn, req: Vec<u8>) -> (u16, Value) {
    let r = conn.send(&req).await.expect("request");
    (
        r.status,
        serde_json::from_slice(r.body).unwrap_or(Value::Null),
    )
}

/// A form-encoded POST (the token is base64url and dots: nothing to escape).
fn introspect_request(basic: &str, token: &str) -> Vec<u8> {
    let body = format!("token={token}");
    format!(
        "POST /introspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The admin's access token, and a new client's `Authorization: Basic` value.
async fn prepare(addr: SocketAddr) -> (String, String) {
    let mut conn = Conn::new(addr);
    let creds = json!({"email": ADMIN, "password": PASSWORD}).to_string();
    let (status, _) = call(&mut conn, request("POST", "/register", &[], Some(&creds))).await;
    assert_eq!(status, 201, "POST /register");
    let (status, body) = call(&mut conn, request("POST", "/login", &[], Some(&creds))).await;
    assert_eq!(status, 200, "POST /login");
    let token = body["access_token"].as_str().expect("token").to_string();
    let bearer = format!("Bearer {token}");
    let (status, body) = call(
        &mut conn,
        request(
            "POST",
            "/admin/clients",
            &[("Authorization", &bearer)],
            Some(r#"{"name":"bench"}"#),
        ),
    )
    .await;
    assert_eq!(status, 201, "POST /admin/clients: {body}");
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!(
            "{}:{}",
            body["client_id"].as_str().expect("client_id"),
            body["client_secret"].as_str().expect("client_secret")
        ))
    );
    let (status, body) = call(&mut conn, introspect_request(&basic, &token)).await;
    assert_eq!((status, &body["active"]), (200, &json!(true)), "{body}");
    (token, basic)
}

fn main() {
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-introspect-{run_id}:");
    let redis_url = std::env::var("BENCH_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let pg_admin = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let (db, db_url) = harness::Db::create(pg_admin.as_deref(), &run_id).await;
    let mut vars = harness::server_vars(
        "introspection-bench-secret-0123456789abcdef",
        db_url,
        "warn",
    );
    vars.insert("ADMIN_EMAILS", ADMIN.into());
    if let Some(url) = &redis_url {
        vars.insert("REDIS_URL", url.clone());
        vars.insert("REDIS_PREFIX", prefix.clone());
    }
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("valid config");
    let app = Application::build(config).await.expect("sessiond starts");
    let addr: SocketAddr = ([127, 0, 0, 1], app.port()).into();
    let handle = app.handle();
    let task = actix_web::rt::spawn(app.run_until_stopped());
    // With Redis the pod trusts its cache once subscribed; the first second settles that.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;

    let connections = env_number("BENCH_CONNECTIONS", 32usize);
    let rounds = env_number("BENCH_ROUNDS", 3usize);
    let measure = Duration::from_secs(env_number("BENCH_SECONDS", 5u64));
    let mode = match (&pg_admin, &redis_url) {
        (Some(_), Some(_)) => "PostgreSQL + Redis",
        (None, Some(_)) => "SQLite + Redis",
        _ => "embedded (SQLite, in-process sessions)",
    };
    let started = Instant::now();
    let (session_rps, introspect_rps) = harness::on_client(move || async move {
        let (token, basic) = prepare(addr).await;
        let load = |req: Vec<u8>| Load {
            addr,
            requests: Arc::new(vec![req]),
            expect: 200,
        };
        let bearer = format!("Bearer {token}");
        let session = load(request(
            "GET",
            "/session",
            &[("Authorization", &bearer)],
            None,
        ));
        let introspect = load(introspect_request(&basic, &token));
        let (mut s, mut i) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            for (name, load, out) in [
                ("GET /session", &session, &mut s),
                ("POST /introspect", &introspect, &mut i),
            ] {
                let o = closed_loop(load, connections, Duration::from_secs(1), measure).await;
                assert_eq!(o.errors, 0, "{name}: {:?}", o.error_samples);
                eprintln!("[introspection] round {round}: {name} {:.0}/s", o.rps());
                out.push(o.rps());
            }
        }
        (s, i)
    })
    .await;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, i) = (median(session_rps), median(introspect_rps));
    println!("Introspection throughput ({mode}; 1 HTTP worker, {connections} keep-alive connections, closed loop, median of {rounds} rounds of {} s; {:.0} s in all)\n", measure.as_secs(), started.elapsed().as_secs_f64());
    println!("| endpoint | requests/s | vs GET /session |");
    println!("|---|---:|---:|");
    println!("| GET /session | {s:.0} | 1.00 x |");
    println!("| POST /introspect | {i:.0} | {:.2} x |", i / s);
    println!(
        "\ntarget: at least 20,000 introspections/s: {}",
        if i >= 20_000.0 { "met" } else { "MISSED" }
    );

    handle.stop(true).await;
    let _ = task.await;
    if let Some(url) = &redis_url {
        let _ = support::clear_redis(url, &prefix).await;
    }
    db.drop().await;
}
