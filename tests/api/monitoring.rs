//! The dashboard (kubernetes/monitoring/grafana-dashboard.json) and the alert rules
//! (alerts.yaml) only name metrics a real server exposes, and docs/operations.md lists each of
//! them.
//! A pod runs a flow that makes every family appear on its /metrics (label-vector families are
//! rendered only once a child exists): logins, a logout it hears back, Redis cut, a database
//! error. (`promtool test rules` checks the rules' logic, in ci/checks.sh.)
use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;

use crate::{services_only, support::*};

services_only!(dashboard_and_alerts_name_only_metrics_the_server_exposes);

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kubernetes/monitoring");

fn read(file: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every `sessiond_…` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("sessiond_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

/// The dashboard's PromQL, after checking what makes it importable anywhere: a recent schema
/// and the data source as a variable on every panel and query.
fn dashboard_queries() -> Vec<String> {
    let dash: Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("valid JSON");
    assert!(dash["schemaVersion"].as_u64() >= Some(39), "schemaVersion");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "a datasource variable"
    );
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let Some(targets) = panel["targets"].as_array() else {
            assert_eq!(panel["type"], "row", "{panel}");
            continue;
        };
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    exprs
}

/// `# TYPE name kind` of a scrape.
fn families(scrape: &str) -> HashMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split(' ');
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum`, `_count`), if any.
fn family_of<'a>(name: &'a str, families: &HashMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (families.get(base)? == "histogram").then_some(base)
    })
}

async fn dashboard_and_alerts_name_only_metrics_the_server_exposes() {
    let mut used = metric_names(&dashboard_queries().join("\n"));
    used.extend(metric_names(&read("alerts.yaml")));
    used.sort();
    used.dedup();

    let dep = Deployment::new(Backend::Services).await;
    let proxy = RedisProxy::start(redis_addr()).await;
    let app = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    app.subscribed().await;

    // Logins (one wrong), a token check, a refresh, a logout the pod hears back.
    let (email, tokens) = app.user().await;
    assert_eq!(
        app.login_reply(&email, "not the password").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/profile", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, &tokens.refresh).await.status, StatusCode::OK);
    assert_eq!(
        app.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let heard = eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            app.metric("sessiond_revocation_propagation_seconds_count")
                .await
                >= 1.0
        },
    )
    .await;
    assert!(heard, "the logout's invalidation never came back");

    // Redis unreachable: failed Redis calls, and a token check that cannot be answered.
    let other = app.user().await.1;
    proxy.set_down(true);
    let login = app.login_reply(&email, PASSWORD).await;
    assert_eq!(
        login.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        login.body
    );
    let _ = app.get("/session", Some("not-even-a-token")).await;
    let _ = app.get("/session", Some(&other.access)).await;
    proxy.set_down(false);

    // A database error: the users table is gone from under the server.
    let db = Database::connect(dep.database_url())
        .await
        .expect("connect to the deployment's database");
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "ALTER TABLE users RENAME TO users_away",
    ))
    .await
    .expect("rename");
    let failed = app.login_reply(&email, PASSWORD).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
    let _ = db.close().await;

    let scrape = app.scrape().await;
    let families = families(&scrape);
    // The Metrics list is in docs/operations.md; the README and every guide are read.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    for entry in std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            readme.push_str(&std::fs::read_to_string(entry.path()).expect("a guide"));
        }
    }
    for name in &used {
        let family = family_of(name, &families)
            .unwrap_or_else(|| panic!("{name} is used but not on /metrics:\n{scrape}"));
        let short = family.strip_prefix("sessiond_").expect("prefixed");
        assert!(
            readme.contains(&format!("`{short}`")) || readme.contains(&format!("`{short}{{")),
            "{family} is not in the Metrics list (docs/operations.md)"
        );
    }
    // Everything the issue asks the dashboard to show is on it.
    for wanted in [
        "sessiond_http_requests_total",
        "sessiond_http_request_duration_seconds_bucket",
        "sessiond_token_checks_total",
        "sessiond_sessions_revoked_total",
        "sessiond_invalidations_published_total",
        "sessiond_invalidations_received_total",
        "sessiond_revocation_propagation_seconds_bucket",
        "sessiond_argon2_queue_wait_seconds_bucket",
        "sessiond_argon2_in_flight",
        "sessiond_argon2_rejected_total",
        "sessiond_redis_call_errors_total",
        "sessiond_redis_call_duration_seconds_bucket",
        "sessiond_redis_wait_total",
        "sessiond_db_call_errors_total",
        "sessiond_db_call_duration_seconds_bucket",
    ] {
        assert!(
            used.iter().any(|n| n == wanted),
            "{wanted} not on the dashboard"
        );
    }
}
