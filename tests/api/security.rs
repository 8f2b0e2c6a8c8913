//! Hardening that a client or an operator sees: /metrics on its own port and on
//! no spelling of the public one, `Cache-Control: no-store` on authenticated responses, the
//! embedded database file readable by its owner only, and example or low-entropy secrets refused.
use std::process::Command;

use reqwest::StatusCode;

use crate::{both_backends, support::*};

both_backends!(
    metrics_port_serves_metrics_and_the_public_port_has_none_in_any_spelling,
    authenticated_responses_are_never_stored_by_caches,
);

async fn metrics_port_serves_metrics_and_the_public_port_has_none_in_any_spelling(
    backend: Backend,
) {
    let dep = Deployment::new(backend).await;
    let (app, metrics) = dep
        .spawn_with_metrics(&[("METRICS_PORT", "0".into())])
        .await;
    let metrics = metrics.expect("METRICS_PORT gives a second listener");
    let _ = app.user().await;

    let res = app
        .client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("text");
    assert!(text.contains("sessiond_http_requests_total"), "{text}");

    // Only /metrics is there: the API is not reachable through the metrics port.
    for path in ["/health", "/session", "/register"] {
        let res = app
            .client
            .get(format!("{metrics}{path}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            res.status(),
            StatusCode::NOT_FOUND,
            "{path} on the metrics port"
        );
    }

    // Every spelling of the path on the public port is a JSON 404 that carries no metric.
    for path in [
        "/metrics",
        "/metrics/",
        "//metrics",
        "/./metrics",
        "/api/../metrics",
        "/metrics?format=text",
        "/metrics;x",
        "/metrics%2F",
        "/%6detrics",
        "/%6Detrics",
        "/%6D%65%74%72%69%63%73",
        "/METRICS",
        "/Metrics",
    ] {
        let res = app.client.get(app.url(path)).send().await.expect("sent");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.contains("sessiond_"), "{path} leaked metrics: {body}");
    }

    // Without METRICS_PORT the public port serves them (the single-node default).
    let plain = dep.spawn().await;
    assert_eq!(plain.get("/metrics", None).await.status, StatusCode::OK);
}

async fn authenticated_responses_are_never_stored_by_caches(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    let admin_email = unique_email("admin");
    dep.set("ADMIN_EMAILS", &admin_email);
    let app = dep.spawn().await;
    let admin = account(&app, &admin_email, &["admin", "user"]).await;
    let token = admin.tokens.access.as_str();
    for path in [
        "/profile",
        "/session",
        "/sessions",
        "/admin/users",
        &format!("/admin/users/{}", admin.id),
        &format!("/admin/users/{}/sessions", admin.id),
        "/admin/roles",
        "/admin/audit",
    ] {
        let r = app.get(path, Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
    // Refusals of a credential are not cached either.
    let r = app.get("/session", Some("not-a-token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Public, caller-independent responses are left to the caches.
    assert_eq!(app.get("/health", None).await.header("cache-control"), None);
}

#[actix_web::test]
async fn the_embedded_database_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dep = Deployment::new(Backend::Embedded).await;
    let path = dep.vars()["SQLITE_PATH"].clone();
    let app = dep.spawn().await;
    let _ = app.user().await;
    let mode = |p: &str| std::fs::metadata(p).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "a new database file");
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = format!("{path}{suffix}");
        if std::path::Path::new(&side).exists() {
            assert_eq!(mode(&side) & 0o077, 0, "{side}");
        }
    }
    app.stop().await;

    // A file left readable by others (an older version, a careless copy) is narrowed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let app = dep.spawn().await;
    assert_eq!(mode(&path), 0o600, "an existing database file");
    app.stop().await;
}

/// The binary refuses, at start-up and in check-config, a JWT_SECRET that stands in the
/// repository as an example or that is a trivial pattern, naming the variable and never the value.
#[test]
fn start_up_and_check_config_refuse_example_and_low_entropy_secrets() {
    let examples = [
        "REPLACE_ME_WITH_AT_LEAST_32_RANDOM_BYTES",
        "dev-only-jwt-secret-do-not-use-in-production-0123456789",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "0123456789abcdef0123456789abcdef",
    ];
    for secret in examples {
        for sub in ["check-config", "serve"] {
            let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
                .env_clear()
                .env("DB_URL", "postgres://app@127.0.0.1:1/none")
                .env("REDIS_URL", "redis://127.0.0.1:1")
                .env("JWT_SECRET", secret)
                .env("PORT", "0")
                .arg(sub)
                .output()
                .expect("binary runs");
            assert_eq!(out.status.code(), Some(2), "{sub} with {secret}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("JWT_SECRET"), "{sub}: {stderr}");
            assert!(
                !stderr.contains(secret),
                "{sub} echoed the secret: {stderr}"
            );
        }
    }
}
