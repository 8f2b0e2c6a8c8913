//! Session inventory, revoking one or all sessions, password change, idle timeout, client info.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{both_backends, services_only, support::*};

both_backends!(
    inventory_marks_the_current_session_and_hides_others,
    logout_all_with_and_without_keep_current,
    password_change_revokes_other_sessions_only_with_the_right_password,
    idle_timeout_ends_unused_sessions_and_keeps_used_ones,
    client_address_ignores_untrusted_forwarded_for,
);
services_only!(logout_all_reaches_the_other_pod);

async fn inventory_marks_the_current_session_and_hides_others(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, first) = app.user().await;
    let second = app.login(&email, PASSWORD).await;
    let (_, stranger) = app.user().await;

    let list = app.get("/sessions", Some(&second.access)).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 2, "{}", list.body);
    for item in &items {
        for field in [
            "id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "ip",
            "user_agent",
            "current",
        ] {
            assert!(item.get(field).is_some(), "{field} in {item}");
        }
        let current = item["id"] == second.session_id.as_str();
        assert_eq!(item["current"], current);
        assert_eq!(item["ip"], "127.0.0.1");
    }
    // Someone else's session id is not ours to see or end: 404, and it survives.
    let other = format!("/sessions/{}", stranger.session_id);
    app.request(Method::DELETE, &other, &first.access, None)
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        app.get("/session", Some(&stranger.access)).await.status,
        StatusCode::OK
    );
    let unknown = format!("/sessions/{}", uuid::Uuid::new_v4());
    app.request(Method::DELETE, &unknown, &first.access, None)
        .await
        .assert_error(404, "not_found");
    app.request(Method::DELETE, "/sessions/not-a-uuid", &first.access, None)
        .await
        .assert_error(400, "invalid_request");

    // Ending one of our own sessions from another.
    let mine = format!("/sessions/{}", first.session_id);
    let r = app
        .request(Method::DELETE, &mine, &second.access, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get("/session", Some(&first.access))
        .await
        .assert_error(401, "unauthorized");
    let list = app.get("/sessions", Some(&second.access)).await;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
}

async fn logout_all_with_and_without_keep_current(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, a) = app.user().await;
    let b = app.login(&email, PASSWORD).await;
    let c = app.login(&email, PASSWORD).await;
    let (_, stranger) = app.user().await;

    let r = app
        .post_auth("/logout/all?keep_current=true", &a.access)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        app.get("/session", Some(&a.access)).await.status,
        StatusCode::OK
    );
    for t in [&b, &c] {
        app.get("/session", Some(&t.access))
            .await
            .assert_error(401, "unauthorized");
        app.post_json("/token/refresh", &json!({"refresh_token": t.refresh}))
            .await
            .assert_error(401, "unauthorized");
    }
    assert_eq!(
        app.get("/session", Some(&stranger.access)).await.status,
        StatusCode::OK
    );

    let d = app.login(&email, PASSWORD).await;
    assert_eq!(
        app.post_auth("/logout/all", &d.access).await.status,
        StatusCode::NO_CONTENT
    );
    for t in [&a, &d] {
        app.get("/session", Some(&t.access))
            .await
            .assert_error(401, "unauthorized");
    }
    app.post_auth("/logout/all?keep_current=maybe", &stranger.access)
        .await
        .assert_error(400, "invalid_request");
}

async fn logout_all_reaches_the_other_pod() {
    let dep = Deployment::new(Backend::Services).await;
    let (pod_a, pod_b) = (dep.spawn().await, dep.spawn().await);
    let (email, one) = pod_a.user().await;
    let two = pod_b.login(&email, PASSWORD).await;
    for t in [&one, &two] {
        assert_eq!(
            pod_b.get("/session", Some(&t.access)).await.status,
            StatusCode::OK,
            "warm on B"
        );
    }
    assert_eq!(
        pod_a.post_auth("/logout/all", &one.access).await.status,
        StatusCode::NO_CONTENT
    );
    for t in [&one, &two] {
        let gone = eventually(
            Duration::from_secs(5),
            Duration::from_millis(20),
            async || {
                pod_b.get("/session", Some(&t.access)).await.status == StatusCode::UNAUTHORIZED
            },
        )
        .await;
        assert!(gone, "revoke-all reached pod B");
    }
}

async fn password_change_revokes_other_sessions_only_with_the_right_password(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, current) = app.user().await;
    let other = app.login(&email, PASSWORD).await;
    let new_password = "a brand new passphrase";

    let wrong = json!({"current_password": "not it at all", "new_password": new_password});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &current.access,
            Some(&wrong),
        )
        .await;
    r.assert_error(403, "forbidden");
    assert_eq!(
        app.get("/session", Some(&other.access)).await.status,
        StatusCode::OK,
        "nothing revoked"
    );
    app.login(&email, PASSWORD).await;

    let short = json!({"current_password": PASSWORD, "new_password": "short"});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &current.access,
            Some(&short),
        )
        .await;
    r.assert_error(400, "invalid_request");

    let right = json!({"current_password": PASSWORD, "new_password": new_password});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &current.access,
            Some(&right),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        app.get("/session", Some(&current.access)).await.status,
        StatusCode::OK
    );
    app.get("/session", Some(&other.access))
        .await
        .assert_error(401, "unauthorized");
    app.login_reply(&email, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    app.login(&email, new_password).await;
}

async fn idle_timeout_ends_unused_sessions_and_keeps_used_ones(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("SESSION_IDLE_TIMEOUT", 3)
        .set("SESSION_CACHE_TTL", 1);
    let app = dep.spawn().await;
    let (email, used) = app.user().await;
    let unused = app.login(&email, PASSWORD).await;
    // Use one session every 500 ms for well past the idle timeout.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(5500) {
        let r = app.get("/session", Some(&used.access)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "used session alive after {:?}",
            start.elapsed()
        );
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    app.get("/session", Some(&unused.access))
        .await
        .assert_error(401, "unauthorized");
    app.post_json("/token/refresh", &json!({"refresh_token": unused.refresh}))
        .await
        .assert_error(401, "unauthorized");
    let list = app.get("/sessions", Some(&used.access)).await;
    assert_eq!(
        list.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.body
    );
}

/// Logs in on `app` with extra request headers; the caller's own entry of GET /sessions.
async fn login_and_current_session(
    app: &TestApp,
    email: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut req = app
        .client
        .post(app.url("/login"))
        .json(&json!({"email": email, "password": PASSWORD}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let reply = req.send().await.expect("sent");
    let token = reply.json::<serde_json::Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let list = app.get("/sessions", Some(&token)).await;
    list.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["current"] == true).cloned())
        .expect("current session listed")
}

async fn client_address_ignores_untrusted_forwarded_for(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, _) = app.user().await;
    let spoofed = [
        ("x-forwarded-for", "203.0.113.9"),
        ("user-agent", "spoof-test/1.0"),
    ];
    let current = login_and_current_session(&app, &email, &spoofed).await;
    assert_eq!(
        current["ip"], "127.0.0.1",
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    assert_eq!(current["user_agent"], "spoof-test/1.0");

    // Behind a trusted proxy (here: loopback), the forwarded client address is recorded.
    dep.set("TRUSTED_PROXIES", "127.0.0.1/32");
    let behind = dep.spawn().await;
    let forwarded = [("x-forwarded-for", "198.51.100.7, 127.0.0.1")];
    let current = login_and_current_session(&behind, &email, &forwarded).await;
    assert_eq!(current["ip"], "198.51.100.7");
}
