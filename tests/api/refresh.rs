//! Refresh-token rotation with a grace window and reuse detection.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    refresh_rotates_and_reuse_after_grace_revokes_everywhere,
    fifty_parallel_refreshes_yield_one_successor,
    refresh_with_revoked_foreign_or_garbage_tokens_is_401,
);

fn pair(r: &Reply) -> (String, String) {
    (
        r.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        r.body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
    )
}

async fn refresh_rotates_and_reuse_after_grace_revokes_everywhere(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("REFRESH_REUSE_GRACE", 1);
    let a = dep.spawn().await;
    // A second pod where there can be one (Redis); the embedded default is single-node.
    let b = if backend == Backend::Services {
        Some(dep.spawn().await)
    } else {
        None
    };
    let (_, first) = a.user().await;
    let first_refresh = first.refresh.clone();

    let r = refresh(&a, &first_refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["session_id"], first.session_id.as_str());
    let (access2, refresh2) = pair(&r);
    assert_ne!(refresh2, first_refresh);
    assert_ne!(access2, first.access);
    // The session's absolute lifetime does not grow.
    assert!(
        r.body["refresh_expires_in"]
            .as_i64()
            .expect("refresh_expires_in")
            <= 24 * 3600
    );

    // Both access tokens work until revoked.
    assert_eq!(
        a.get("/session", Some(&first.access)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.get("/session", Some(&access2)).await.status,
        StatusCode::OK
    );
    if let Some(b) = &b {
        assert_eq!(
            b.get("/session", Some(&access2)).await.status,
            StatusCode::OK,
            "warm on B"
        );
    }

    // After the grace window, the rotated token is reuse: 401 and the session is gone everywhere.
    actix_web::rt::time::sleep(Duration::from_millis(2100)).await;
    refresh(&a, &first_refresh)
        .await
        .assert_error(401, "unauthorized");
    a.get("/session", Some(&access2))
        .await
        .assert_error(401, "unauthorized");
    refresh(&a, &refresh2)
        .await
        .assert_error(401, "unauthorized");
    if let Some(b) = &b {
        let gone = eventually(
            Duration::from_secs(5),
            Duration::from_millis(20),
            async || b.get("/session", Some(&access2)).await.status == StatusCode::UNAUTHORIZED,
        )
        .await;
        assert!(gone, "reuse revoked the session on the other pod");
    }
}

async fn fifty_parallel_refreshes_yield_one_successor(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    let token = tokens.refresh.clone();
    let replies = futures_util::future::join_all((0..50).map(|_| refresh(&app, &token))).await;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in &replies {
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "{} {}",
            r.status,
            r.body
        );
        if r.status == StatusCode::OK {
            pairs.push(pair(r));
        }
    }
    assert!(!pairs.is_empty());
    assert!(
        pairs.iter().all(|p| p == &pairs[0]),
        "every 200 carries the same pair"
    );
    let bodies: Vec<&Value> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| &r.body)
        .collect();
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    // That one successor family continues; the session is alive.
    let (access, next) = pairs[0].clone();
    assert_eq!(
        app.get("/session", Some(&access)).await.status,
        StatusCode::OK
    );
    let r = refresh(&app, &next).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let sessions = app.get("/sessions", Some(&pair(&r).0)).await;
    assert_eq!(sessions.body["items"].as_array().map(Vec::len), Some(1));
}

async fn refresh_with_revoked_foreign_or_garbage_tokens_is_401(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (_, mine) = app.user().await;
    let (_, theirs) = app.user().await;
    let my_refresh = mine.refresh.clone();
    let their_refresh = theirs.refresh.clone();

    // Garbage, an access token, and a token spliced from two sessions.
    refresh(&app, "garbage")
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, "").await.assert_error(401, "unauthorized");
    refresh(&app, &mine.access)
        .await
        .assert_error(401, "unauthorized");
    let spliced = format!("{}{}", &their_refresh[..43], &my_refresh[43..]);
    refresh(&app, &spliced)
        .await
        .assert_error(401, "unauthorized");
    app.post_json("/token/refresh", &json!({}))
        .await
        .assert_error(400, "invalid_request");
    // Neither real session was harmed by those attempts.
    assert_eq!(
        app.get("/session", Some(&theirs.access)).await.status,
        StatusCode::OK
    );

    // After logout the refresh token is dead too.
    assert_eq!(
        app.post_auth("/logout", &mine.access).await.status,
        StatusCode::NO_CONTENT
    );
    refresh(&app, &my_refresh)
        .await
        .assert_error(401, "unauthorized");
    // And a refresh token is never an access token.
    app.get("/session", Some(&their_refresh))
        .await
        .assert_error(401, "unauthorized");
}
