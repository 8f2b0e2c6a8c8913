//! Is "unknown email" distinguishable from "wrong password" by login latency, also for an
//! account with a TOTP authenticator? And is a registered address distinguishable from an
//! unknown one by POST /password/forgot latency?
//!
//! Starts sessiond in-process (production argon2 parameters), then sends interleaved requests of
//! both kinds over one keep-alive connection and compares the two latency samples: means,
//! medians, Welch's t statistic and the Mann-Whitney U test's z score. |t| and |z| well under 2
//! mean no detectable difference at this sample size.
//!
//! cargo bench --bench login_timing        (LOGIN_TIMING_SAMPLES, MFA_TIMING_SAMPLES,
//! FORGOT_TIMING_SAMPLES: N per kind, default 300; 0 skips that part; FORGOT_FOLLOW_UP_PAUSE_MS:
//! the pause between the follow-up pairs, default 50). The embedded default
//! (SQLite, in-process sessions); with BENCH_DATABASE_URL (a PostgreSQL URL whose user may
//! create databases) on a fresh PostgreSQL database and Redis (BENCH_REDIS_URL, default
//! redis://127.0.0.1:6379).
#[allow(dead_code)]
#[path = "load/harness.rs"]
mod harness;
#[path = "support.rs"]
mod support;

use std::time::Instant;

use serde_json::{json, Value};
use sessiond::{config::Config, startup::Application};
use totp_rs::{Algorithm, Builder, Secret};

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn variance(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    (mean(a) - mean(b)) / (variance(a) / a.len() as f64 + variance(b) / b.len() as f64).sqrt()
}

/// Mann-Whitney U, normal approximation (ties get average ranks).
fn mann_whitney_z(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|x| (*x, true))
        .chain(b.iter().map(|x| (*x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut ranks = vec![0.0; all.len()];
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        ranks[i..=j].iter_mut().for_each(|x| *x = r);
        i = j + 1;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let r1: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|(v, _)| v.1)
        .map(|(_, r)| r)
        .sum();
    let u = r1 - n1 * (n1 + 1.0) / 2.0;
    (u - n1 * n2 / 2.0) / (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt()
}

/// Prints the two samples' summary and their comparison (milliseconds).
fn report(title: &str, (a_name, a): (&str, &[f64]), (b_name, b): (&str, &[f64])) {
    let ms = |d: f64| format!("{d:.2} ms");
    println!("{title}\n");
    println!("| case | mean | median | stddev |\n|---|---|---|---|");
    for (name, v) in [(a_name, a), (b_name, b)] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(mean(v)),
            ms(median(v)),
            ms(variance(v).sqrt())
        );
    }
    let t = welch_t(a, b);
    let z = mann_whitney_z(a, b);
    let verdict = if t.abs() < 2.0 && z.abs() < 2.0 {
        "|t|, |z| < 2: not distinguishable at this sample size"
    } else {
        "|t| or |z| >= 2: DISTINGUISHABLE at this sample size"
    };
    println!(
        "\nmean difference {:+.3} ms ({:+.2}%), Welch t = {t:.2}, Mann-Whitney z = {z:.2} \
         ({verdict})\n",
        mean(a) - mean(b),
        (mean(a) / mean(b) - 1.0) * 100.0
    );
}

fn samples(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// `n` samples of each kind (milliseconds), interleaved in alternating order, so drift in
/// machine load hits both equally.
async fn interleaved(
    n: usize,
    a: impl AsyncFn(usize) -> f64,
    b: impl AsyncFn(usize) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut xs, mut ys) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            xs.push(a(i).await);
            ys.push(b(i).await);
        } else {
            ys.push(b(i).await);
            xs.push(a(i).await);
        }
    }
    (xs, ys)
}

fn main() {
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let samples_login = samples("LOGIN_TIMING_SAMPLES");
    let samples_mfa = samples("MFA_TIMING_SAMPLES");
    let samples_forgot = samples("FORGOT_TIMING_SAMPLES");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-login-timing-{run_id}:");
    let pg_admin = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let redis_url = pg_admin.as_ref().map(|_| {
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    });
    let (db, db_url) = harness::Db::create(pg_admin.as_deref(), &run_id).await;
    let mut vars = harness::server_vars(
        "login-timing-bench-secret-0123456789abcdef",
        db_url,
        "error",
    );
    vars.extend([
        // Measure the login path itself, not the abuse limits.
        ("RATE_LIMIT_LOGIN_PER_IP", "0".to_string()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0".into()),
        ("LOCKOUT_THRESHOLD", "0".into()),
        ("RATE_LIMIT_MAIL_PER_IP", "0".into()),
        ("RATE_LIMIT_MAIL_PER_ACCOUNT", "0".into()),
    ]);
    if let Some(url) = &redis_url {
        vars.insert("REDIS_URL", url.clone());
        vars.insert("REDIS_PREFIX", prefix.clone());
    }
    let mode = if pg_admin.is_some() {
        "PostgreSQL + Redis"
    } else {
        "embedded SQLite, in-process sessions"
    };
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let (m, t, p) = (
        config.argon2.memory_kib,
        config.argon2.iterations,
        config.argon2.parallelism,
    );
    let app = Application::build(config).await.expect("server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let task = actix_web::rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let post = async |path: &str, token: Option<&str>, body: Value| {
        let mut req = client.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    // One login: its latency in milliseconds, its status checked.
    let login = async |email: &str, password: &str, expect: u16| {
        let start = Instant::now();
        let r = client
            .post(format!("{base}/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login sent");
        assert_eq!(r.status().as_u16(), expect, "{email}");
        let _ = r.bytes().await;
        start.elapsed().as_secs_f64() * 1e3
    };
    const PASSWORD: &str = "correct horse battery";
    const PLAIN: &str = "timing@example.com";
    const GUARDED: &str = "timing-mfa@example.com";
    for email in [PLAIN, GUARDED] {
        let (status, _) = post(
            "/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let samples = samples_login;
    // Warm-up: first hashes pay page faults for argon2's memory.
    for _ in 0..10.min(samples) {
        login(PLAIN, "wrong password here", 401).await;
    }
    let (wrong, unknown) = interleaved(
        samples,
        async |i| login(PLAIN, &format!("wrong password {i}"), 401).await,
        async |i| {
            login(
                &format!("nobody-{i}@example.com"),
                "wrong password here",
                401,
            )
            .await
        },
    )
    .await;
    if samples > 1 {
        report(
            &format!("login latency, wrong password vs unknown email ({samples} each, argon2id m={m} KiB t={t} p={p}, {mode})"),
            ("wrong password", &wrong),
            ("unknown email", &unknown),
        );
    }

    // An account with a TOTP authenticator: a wrong password must look like an unknown email,
    // as for any account; a right one answers 403 mfa_required (a pending login in the session
    // store instead of a session), shown next to a right password of an account without.
    let samples = samples_mfa;
    if samples > 0 {
        let (status, tokens) = post(
            "/login",
            None,
            json!({"email": GUARDED, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 200);
        let access = tokens["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        let (status, enrol) = post("/mfa/totp", Some(&access), json!({})).await;
        assert_eq!(status, 200, "{enrol}");
        let secret = Secret::try_from_base32(enrol["secret"].as_str().expect("secret"))
            .expect("base32 secret");
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_step_duration(30)
            .with_secret(secret.as_ref().to_vec())
            .build()
            .expect("TOTP parameters");
        let code = totp.generate_current().to_string();
        let (status, confirmed) =
            post("/mfa/totp/confirm", Some(&access), json!({"code": code})).await;
        assert_eq!(status, 200, "{confirmed}");
        login(GUARDED, PASSWORD, 403).await;
        let (wrong, unknown) = interleaved(
            samples,
            async |i| login(GUARDED, &format!("wrong password {i}"), 401).await,
            async |i| {
                login(
                    &format!("nobody-mfa-{i}@example.com"),
                    "wrong password here",
                    401,
                )
                .await
            },
        )
        .await;
        let (guarded, plain) = interleaved(
            samples,
            async |_| login(GUARDED, PASSWORD, 403).await,
            async |_| login(PLAIN, PASSWORD, 200).await,
        )
        .await;
        if samples > 1 {
            report(
                &format!("login latency with TOTP, wrong password of an account with an authenticator vs unknown email ({samples} each, {mode})"),
                ("wrong password (TOTP account)", &wrong),
                ("unknown email", &unknown),
            );
            report(
                &format!("login latency, right password: 403 mfa_required vs 200 token pair ({samples} each, {mode}; the answers differ anyway)"),
                ("account with TOTP (403)", &guarded),
                ("account without (200)", &plain),
            );
        }
    }

    // POST /password/forgot: a registered address (a token and a mail stored, the mail then
    // sent by the worker) against unknown ones (a decoy token and a discarded mail).
    let forgot = async |email: &str| {
        let start = Instant::now();
        let r = client
            .post(format!("{base}/password/forgot"))
            .json(&json!({ "email": email }))
            .send()
            .await
            .expect("forgot sent");
        assert_eq!(r.status(), 202, "both kinds answer alike");
        let _ = r.bytes().await;
        start.elapsed().as_secs_f64() * 1e3
    };
    let samples = samples_forgot;
    for i in 0..10.min(samples) {
        forgot(PLAIN).await;
        forgot("nobody@example.com").await;
        forgot(&format!("warmup-{i}@example.com")).await;
    }
    // One address of each kind asked again and again (what a prober does), and fresh unknown
    // addresses each time.
    let (known, unknown) = interleaved(
        samples,
        async |_| forgot(PLAIN).await,
        async |_| forgot("nobody@example.com").await,
    )
    .await;
    if samples > 1 {
        report(
            &format!("POST /password/forgot latency, one registered vs one unknown address, each asked {samples} times ({mode})"),
            ("registered address", &known),
            ("unknown address", &unknown),
        );
    }
    let (known, unknown) = interleaved(
        samples,
        async |_| forgot(PLAIN).await,
        async |i| forgot(&format!("nobody-{i}@example.com")).await,
    )
    .await;
    if samples > 1 {
        report(
            &format!("POST /password/forgot latency, one registered address asked {samples} times vs {samples} unknown addresses asked once ({mode})"),
            ("registered address", &known),
            ("unknown address", &unknown),
        );
    }

    // What the work after an answer does to the next request: a request for a registered or an
    // unknown address (not timed), then at once the same timed request (for one more unknown
    // address), then a pause so that each pair starts on an idle server.
    let pause = std::time::Duration::from_millis(
        std::env::var("FORGOT_FOLLOW_UP_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let follow_up = async |first: &str| {
        forgot(first).await;
        let ms = forgot("follow-up@example.com").await;
        tokio::time::sleep(pause).await;
        ms
    };
    let (after_known, after_unknown) = interleaved(
        samples,
        async |_| follow_up(PLAIN).await,
        async |_| follow_up("nobody@example.com").await,
    )
    .await;
    if samples > 1 {
        report(
            &format!("POST /password/forgot latency of the request right after one for a registered vs an unknown address ({samples} each, {mode})"),
            ("after a registered address", &after_known),
            ("after an unknown address", &after_unknown),
        );
    }

    handle.stop(true).await;
    let _ = task.await;
    if let Some(url) = &redis_url {
        let _ = support::clear_redis(url, &prefix).await;
    }
    db.drop().await;
}
