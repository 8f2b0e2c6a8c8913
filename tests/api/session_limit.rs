//! MAX_SESSIONS_PER_USER (ASVS 7.1.2): a login beyond the limit ends the account's oldest
//! session, on every pod, and the audit trail says so.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, support::*};

both_backends!(a_login_beyond_the_session_limit_ends_the_oldest_session_everywhere);

async fn a_login_beyond_the_session_limit_ends_the_oldest_session_everywhere(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("MAX_SESSIONS_PER_USER", 3);
    let a = dep.spawn().await;
    // With Redis, a second pod that has the oldest session cached.
    let b = match backend {
        Backend::Services => Some(dep.spawn().await),
        Backend::Embedded => None,
    };
    let admin = admin(&a, &admins[0]).await;
    let user = account(&a, &unique_email("user"), &["user"]).await;
    let mut tokens = vec![user.tokens];
    for _ in 0..2 {
        tokens.push(a.login(&user.email, PASSWORD).await);
    }
    for pod in std::iter::once(&a).chain(b.as_ref()) {
        for t in &tokens {
            let r = pod.get("/session", Some(&t.access)).await;
            assert_eq!(r.status, StatusCode::OK, "within the limit: {}", r.body);
        }
    }

    // The fourth login ends the first session (logged in within the same second: the order of
    // the logins still decides which one is the oldest).
    tokens.push(a.login(&user.email, PASSWORD).await);
    let first = &tokens[0];
    a.get("/session", Some(&first.access))
        .await
        .assert_error(401, "unauthorized");
    a.post_json("/token/refresh", &json!({"refresh_token": first.refresh}))
        .await
        .assert_error(401, "unauthorized");
    if let Some(b) = &b {
        let ended = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || {
                b.get("/session", Some(&first.access)).await.status == StatusCode::UNAUTHORIZED
            },
        )
        .await;
        assert!(ended, "the other pod stops accepting the oldest session");
        b.post_json("/token/refresh", &json!({"refresh_token": first.refresh}))
            .await
            .assert_error(401, "unauthorized");
    }
    let listed = a.get("/sessions", Some(&tokens[3].access)).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    // The newest three, oldest first (the same second is ordered by login order too).
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    let expected: Vec<&str> = tokens[1..].iter().map(|t| t.session_id.as_str()).collect();
    assert_eq!(ids, expected, "{}", listed.body);
    for t in &tokens[1..] {
        assert_eq!(
            a.get("/session", Some(&t.access)).await.status,
            StatusCode::OK
        );
    }

    // A fifth ends the second; the newest three stay.
    tokens.push(a.login(&user.email, PASSWORD).await);
    a.get("/session", Some(&tokens[1].access))
        .await
        .assert_error(401, "unauthorized");
    for t in &tokens[2..] {
        assert_eq!(
            a.get("/session", Some(&t.access)).await.status,
            StatusCode::OK
        );
    }

    // Audited: the system ended them (no actor), the account is the subject.
    let query = format!("type=session_revoke&user_id={}", user.id);
    let events = settled(&a, &admin.tokens.access, &query, 2).await;
    let mut ended: Vec<&str> = Vec::new();
    for e in &events {
        assert_event(e, "session_revoke", None, Some(&user.id), "success");
        assert_eq!(e["detail"]["reason"], "max_sessions", "{e}");
        ended.push(e["detail"]["session_id"].as_str().expect("session_id"));
    }
    ended.sort();
    let mut oldest = vec![tokens[0].session_id.as_str(), tokens[1].session_id.as_str()];
    oldest.sort();
    assert_eq!(ended, oldest);
}
