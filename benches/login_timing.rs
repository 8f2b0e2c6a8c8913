//! Is "unknown email" distinguishable from "wrong password" by login latency? And is a
//! registered address distinguishable from an unknown one by POST /password/forgot latency?
//!
//! Starts sessiond in-process (embedded default, production argon2 parameters), then sends
//! interleaved requests of both kinds over one keep-alive connection and compares the two latency
//! samples: means, medians, Welch's t statistic and the Mann-Whitney U test's z score.
//! |t| and |z| well under 2 mean no detectable difference at this sample size.
//!
//! cargo bench --bench login_timing        (LOGIN_TIMING_SAMPLES, FORGOT_TIMING_SAMPLES: N per
//! kind, default 300; 0 skips that part)
use std::time::Instant;

use serde_json::json;
use sessiond::{config::Config, startup::Application};

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
    println!(
        "\nmean difference {:+.3} ms ({:+.2}%), Welch t = {t:.2}, Mann-Whitney z = {z:.2} \
         (|t|, |z| < 2: not distinguishable at this sample size)\n",
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

fn main() {
    let samples_login = samples("LOGIN_TIMING_SAMPLES");
    let samples_forgot = samples("FORGOT_TIMING_SAMPLES");
    let dir = std::env::temp_dir().join(format!("sessiond-login-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("bench.db").display().to_string();
    actix_web::rt::System::new().block_on(async move {
        let vars = [
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("SQLITE_PATH", db.as_str()),
            ("HTTP_WORKERS", "1"),
            ("RUST_LOG", "error"),
            // Measure the login path itself, not the abuse limits.
            ("RATE_LIMIT_LOGIN_PER_IP", "0"),
            ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "0"),
            ("LOCKOUT_THRESHOLD", "0"),
            ("RATE_LIMIT_MAIL_PER_IP", "0"),
            ("RATE_LIMIT_MAIL_PER_ACCOUNT", "0"),
        ];
        let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
            .expect("config");
        let (m, t, p) = (config.argon2.memory_kib, config.argon2.iterations, config.argon2.parallelism);
        let app = Application::build(config).await.expect("server starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        actix_web::rt::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
        let login = async |email: &str, password: &str| {
            let start = Instant::now();
            let r = client
                .post(format!("{base}/login"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .expect("login sent");
            assert_eq!(r.status(), 401, "both kinds must fail the same way");
            let _ = r.bytes().await;
            start.elapsed()
        };
        let r = client
            .post(format!("{base}/register"))
            .json(&json!({"email": "timing@example.com", "password": "correct horse battery"}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201);
        let samples = samples_login;
        // Warm-up: first hashes pay page faults for argon2's memory.
        for _ in 0..10.min(samples) {
            login("timing@example.com", "wrong password here").await;
        }
        let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..samples {
            // Interleaved, alternating order, so drift in machine load hits both equally.
            let (w, u) = if i % 2 == 0 {
                let w = login("timing@example.com", &format!("wrong password {i}")).await;
                (w, login(&format!("nobody-{i}@example.com"), "wrong password here").await)
            } else {
                let u = login(&format!("nobody-{i}@example.com"), "wrong password here").await;
                (login("timing@example.com", &format!("wrong password {i}")).await, u)
            };
            wrong.push(w.as_secs_f64() * 1e3);
            unknown.push(u.as_secs_f64() * 1e3);
        }
        if samples > 1 {
            report(
                &format!("login latency, wrong password vs unknown email ({samples} each, argon2id m={m} KiB t={t} p={p})"),
                ("wrong password", &wrong),
                ("unknown email", &unknown),
            );
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
            start.elapsed()
        };
        let samples = samples_forgot;
        for i in 0..10.min(samples) {
            forgot("timing@example.com").await;
            forgot(&format!("warmup-{i}@example.com")).await;
        }
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let (k, u) = if i % 2 == 0 {
                let k = forgot("timing@example.com").await;
                (k, forgot(&format!("nobody-{i}@example.com")).await)
            } else {
                let u = forgot(&format!("nobody-{i}@example.com")).await;
                (forgot("timing@example.com").await, u)
            };
            known.push(k.as_secs_f64() * 1e3);
            unknown.push(u.as_secs_f64() * 1e3);
        }
        if samples > 1 {
            report(
                &format!("POST /password/forgot latency, registered vs unknown address ({samples} each, embedded SQLite)"),
                ("registered address", &known),
                ("unknown address", &unknown),
            );
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}
