use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::{both_backends, support::*};

both_backends!(
    register_login_profile_session_logout_then_401,
    health_ready_and_json_404_405,
    request_ids_are_echoed_when_sane_and_generated_otherwise,
    request_metrics_are_labelled_by_route_template_never_by_path,
);

async fn register_login_profile_session_logout_then_401(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;

    let r = app
        .post_json(
            "/register",
            &json!({"email": "  Ada@Example.com ", "password": PASSWORD, "name": "Ada"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["email"], "ada@example.com");
    assert_eq!(r.body["name"], "Ada");
    assert_eq!(r.body["roles"], json!(["user"]));
    let user_id = r.body["id"].as_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&user_id).is_ok());
    assert!(r.body["created_at"].as_str().is_some());
    assert!(r.body.get("password").is_none() && r.body.get("password_hash").is_none());

    let login = app.login_reply("ADA@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let b = &login.body;
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 900);
    assert_eq!(b["refresh_expires_in"], 24 * 3600);
    assert!(b["refresh_token"].as_str().is_some_and(|t| t.len() >= 43));
    let token = b["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let session_id = b["session_id"].as_str().expect("session_id").to_string();

    let profile = app.get("/profile", Some(&token)).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert_eq!(profile.body["id"], user_id.as_str());
    assert_eq!(profile.body["email"], "ada@example.com");

    let who = app.get("/session", Some(&token)).await;
    assert_eq!(who.status, StatusCode::OK);
    assert_eq!(who.body["user_id"], user_id.as_str());
    assert_eq!(who.body["session_id"], session_id.as_str());
    assert_eq!(who.body["roles"], json!(["user"]));
    let expires =
        chrono::DateTime::parse_from_rfc3339(who.body["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339 expiry");
    let hours = (expires.timestamp() - chrono::Utc::now().timestamp()) as f64 / 3600.0;
    assert!(
        (23.9..=24.01).contains(&hours),
        "session lasts TOKEN_EXPIRATION: {hours}"
    );

    let out = app.post_auth("/logout", &token).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);

    for path in ["/profile", "/session"] {
        let r = app.get(path, Some(&token)).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    app.post_auth("/logout", &token)
        .await
        .assert_error(401, "unauthorized");
    // The account itself is untouched: a new login works.
    app.login("ada@example.com", PASSWORD).await;
}

async fn health_ready_and_json_404_405(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let h = app.get("/health", None).await;
    assert_eq!(
        (h.status, h.body.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = app.get("/ready", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["checks"]["database"], "ok");
    let redis = if backend == Backend::Services {
        "ok"
    } else {
        "in-process"
    };
    assert_eq!(r.body["checks"]["redis"], redis);
    app.get("/no-such-route", None)
        .await
        .assert_error(404, "not_found");
    app.get("/login", None)
        .await
        .assert_error(405, "method_not_allowed");
    let m = app.get("/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
}

async fn request_ids_are_echoed_when_sane_and_generated_otherwise(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let send = |id: &'static str| {
        app.client
            .get(app.url("/health"))
            .header("x-request-id", id)
            .send()
    };
    let echoed = send("abc-123_x.y").await.expect("sent");
    assert_eq!(echoed.headers()["x-request-id"], "abc-123_x.y");
    let replaced = send("evil\"id <script>").await.expect("sent");
    let id = replaced.headers()["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let none = app.get("/no-such-route", None).await;
    assert!(none.header("x-request-id").is_some());
    assert_eq!(none.header("x-content-type-options"), Some("nosniff"));
}

async fn request_metrics_are_labelled_by_route_template_never_by_path(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    // A scoped route, a top-level one with a path parameter, a 405, a 404, and one route twice
    // with two statuses.
    let id = Uuid::new_v4().to_string();
    app.get(&format!("/admin/users/{id}"), Some(token))
        .await
        .assert_error(404, "not_found");
    app.get(&format!("/admin/users/{}", admin.id), Some(token))
        .await;
    app.request(Method::DELETE, &format!("/sessions/{id}"), token, None)
        .await
        .assert_error(404, "not_found");
    app.get("/login", None)
        .await
        .assert_error(405, "method_not_allowed");
    app.get(&format!("/no-such-route/{id}"), None)
        .await
        .assert_error(404, "not_found");

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics body");
    let count = |method: &str, route: &str, status: u16| {
        let series = format!(
            "sessiond_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("GET", "/admin/users/{id}", 404), 1.0, "{text}");
    assert_eq!(count("GET", "/admin/users/{id}", 200), 1.0, "{text}");
    assert_eq!(count("DELETE", "/sessions/{id}", 404), 1.0, "{text}");
    assert_eq!(count("GET", "/login", 405), 1.0, "{text}");
    assert_eq!(count("GET", "unmatched", 404), 1.0, "{text}");
    assert_eq!(count("POST", "/login", 200), 1.0, "{text}");
    assert!(!text.contains(&id), "no raw path in any label");
    assert!(
        text.contains("sessiond_http_request_duration_seconds_count{method=\"GET\",route=\"/admin/users/{id}\",status=\"200\"} 1"),
        "{text}"
    );
}
