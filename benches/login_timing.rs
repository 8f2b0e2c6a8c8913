//! Is "unknown email" distinguishable from "wrong password" by login latency?
//!
//! Starts sessiond in-process (embedded default, production argon2 parameters), then sends
//! interleaved logins of both kinds over one keep-alive connection and compares the two latency
//! samples: means, medians, Welch's t statistic and the Mann-Whitney U test's z score.
//! |t| and |z| well under 2 mean no detectable difference at this sample size.
//!
//! cargo bench --bench login_timing        (LOGIN_TIMING_SAMPLES=N per kind, default 300)
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

fn main() {
    let samples: usize = std::env::var("LOGIN_TIMING_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
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
        // Warm-up: first hashes pay page faults for argon2's memory.
        for _ in 0..10 {
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
        let ms = |d: f64| format!("{d:.2} ms");
        println!("login latency, wrong password vs unknown email ({samples} each, argon2id m={m} KiB t={t} p={p})\n");
        println!("| case | mean | median | stddev |\n|---|---|---|---|");
        for (name, v) in [("wrong password", &wrong), ("unknown email", &unknown)] {
            println!("| {name} | {} | {} | {} |", ms(mean(v)), ms(median(v)), ms(variance(v).sqrt()));
        }
        let t = welch_t(&wrong, &unknown);
        let z = mann_whitney_z(&wrong, &unknown);
        println!(
            "\nmean difference {:+.3} ms ({:+.2}%), Welch t = {t:.2}, Mann-Whitney z = {z:.2} \
             (|t|, |z| < 2: not distinguishable at this sample size)",
            mean(&wrong) - mean(&unknown),
            (mean(&wrong) / mean(&unknown) - 1.0) * 100.0
        );
    });
    let _ = std::fs::remove_dir_all(dir);
}
