//! Disabling or deleting an account cuts it off before the database changes: whatever the
//! answer (a 503 while Redis fails included), a disabled or deleted account has no session that
//! works or refreshes, and a retry completes the operation.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::{both_backends, services_only, support::*};

both_backends!(a_deleted_accounts_id_still_takes_a_session_revocation);
services_only!(
    disabling_or_deleting_while_redis_fails_never_leaves_a_working_session,
    refreshing_a_surviving_session_of_a_disabled_account_is_refused,
);

/// SESSION_CACHE_TTL of these tests; the checks below watch for longer than that.
const CACHE_TTL: u64 = 4;
/// How long a revocation may take to reach the other pod (normally the next request).
const PROPAGATION: Duration = Duration::from_secs(10);

/// Neither the access token nor the refresh token of `tokens` works on any of `pods`, now
/// (after at most PROPAGATION on each) and for longer than the cache TTL.
async fn never_works_again(pods: &[&TestApp], tokens: &Tokens) {
    for pod in pods {
        let refused = eventually(PROPAGATION, Duration::from_millis(50), async || {
            pod.get("/session", Some(&tokens.access)).await.status == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(refused, "the access token is refused on {}", pod.address);
    }
    let until = std::time::Instant::now() + Duration::from_secs(CACHE_TTL + 2);
    while std::time::Instant::now() < until {
        for pod in pods {
            pod.get("/session", Some(&tokens.access))
                .await
                .assert_error(401, "unauthorized");
            refresh(pod, &tokens.refresh)
                .await
                .assert_error(401, "unauthorized");
        }
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Times `pod` re-established its invalidation subscription.
async fn resubscriptions(pod: &TestApp) -> u64 {
    pod.metric("sessiond_pubsub_resubscriptions_total").await as u64
}

/// Answered during the outage: 204 if the change happened, else 503 unavailable.
#[track_caller]
fn done_or_unavailable(r: &Reply) {
    if r.status != StatusCode::NO_CONTENT {
        r.assert_error(503, "unavailable");
    }
}

/// Retries `method path` on `pod` until Redis is back and it answers one of `done`.
async fn retry_until(pod: &TestApp, method: Method, path: &str, token: &str, done: &[u16]) {
    let mut last = None;
    let ok = eventually(
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || {
            let r = call(pod, method.clone(), path, Some(token), None).await;
            let ok = done.contains(&r.status.as_u16());
            last = Some(r);
            ok
        },
    )
    .await;
    assert!(ok, "{method} {path} completes once Redis is back: {last:?}");
}

async fn disabling_or_deleting_while_redis_fails_never_leaves_a_working_session() {
    let (mut dep, admins) = with_admins(Backend::Services, 1).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL)
        .set("REDIS_TIMEOUT_MS", 200);
    let proxy = RedisProxy::start(redis_addr()).await;
    let a = dep.spawn().await; // talks to Redis directly
    let b = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    let admin = admin(&a, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let (disabled, deleted) = (plain(&a).await, plain(&a).await);
    for user in [&disabled, &deleted] {
        for pod in [&a, &b] {
            let r = pod.get("/session", Some(&user.tokens.access)).await;
            assert_eq!(r.status, StatusCode::OK, "warm: {}", r.body);
        }
    }
    let account = |user: &Account| format!("/admin/users/{}", user.id);
    // B serves the admin from its cache while Redis is cut (its entry is younger than the TTL);
    // only a subscribed pod caches, so after an outage wait for B to resubscribe first.
    let mut outages = 0;
    let mut cut = async || {
        let subscribed = eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || resubscriptions(&b).await >= outages,
        )
        .await;
        assert!(subscribed, "B resubscribed after outage {outages}");
        outages += 1;
        let r = b.get("/session", Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "admin warm on B: {}", r.body);
        proxy.set_down(true);
    };
    // The admin's request reached the handler (a 503 is the operation's, not the token check's).
    let admin_served = async || {
        let r = b.get("/session", Some(token)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "B vouches for the admin: {}",
            r.body
        );
    };

    // Disabling while B cannot reach Redis.
    cut().await;
    let disable = format!("{}/disable", account(&disabled));
    let r = call(&b, Method::POST, &disable, Some(token), None).await;
    done_or_unavailable(&r);
    admin_served().await;
    let seen = call(&a, Method::GET, &account(&disabled), Some(token), None).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    if r.status == StatusCode::NO_CONTENT || seen.body["disabled"] == true {
        // Disabled (or answered as such): no session of it works, anywhere reachable.
        never_works_again(&[&a], &disabled.tokens).await;
    } else {
        // Nothing changed: the session still works where Redis is reachable.
        assert_eq!(
            a.get("/session", Some(&disabled.tokens.access))
                .await
                .status,
            StatusCode::OK
        );
    }
    proxy.set_down(false);
    retry_until(&b, Method::POST, &disable, token, &[204]).await;
    never_works_again(&[&a, &b], &disabled.tokens).await;
    let seen = call(&a, Method::GET, &account(&disabled), Some(token), None).await;
    assert_eq!(seen.body["disabled"], true, "{}", seen.body);

    // Deleting while B cannot reach Redis.
    cut().await;
    let r = call(&b, Method::DELETE, &account(&deleted), Some(token), None).await;
    done_or_unavailable(&r);
    admin_served().await;
    let seen = call(&a, Method::GET, &account(&deleted), Some(token), None).await;
    if r.status == StatusCode::NO_CONTENT || seen.status == StatusCode::NOT_FOUND {
        never_works_again(&[&a], &deleted.tokens).await;
    } else {
        assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    }
    proxy.set_down(false);
    // A retry completes it, whether the first attempt deleted the account (404) or not (204).
    retry_until(&b, Method::DELETE, &account(&deleted), token, &[204, 404]).await;
    never_works_again(&[&a, &b], &deleted.tokens).await;
    call(&a, Method::GET, &account(&deleted), Some(token), None)
        .await
        .assert_error(404, "not_found");

    // Enabling while B cannot reach Redis: the database says enabled first, but the account
    // stays cut off (no login) until the retry lifts it.
    cut().await;
    let enable = format!("{}/enable", account(&disabled));
    let r = call(&b, Method::POST, &enable, Some(token), None).await;
    done_or_unavailable(&r);
    admin_served().await;
    if r.status != StatusCode::NO_CONTENT {
        a.login_reply(&disabled.email, PASSWORD)
            .await
            .assert_error(401, "invalid_credentials");
    }
    proxy.set_down(false);
    retry_until(&b, Method::POST, &enable, token, &[204]).await;
    let back = a.login(&disabled.email, PASSWORD).await;
    assert_eq!(
        a.get("/session", Some(&back.access)).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&a, &back.refresh).await.status, StatusCode::OK);
    // The sessions from before the disabling stay dead.
    never_works_again(&[&a, &b], &disabled.tokens).await;
}

/// A session record that survived the revocation (restored into Redis, as a stale replica or a
/// backup would) cannot be refreshed: the rotation itself checks the account's cut-off mark.
async fn refreshing_a_surviving_session_of_a_disabled_account_is_refused() {
    let (dep, admins) = with_admins(Backend::Services, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let user = plain(&app).await;
    let key = format!(
        "{}{{u:{}}}:session:{}",
        dep.prefix, user.id, user.tokens.session_id
    );
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg(&key)
        .query_async(&mut con)
        .await
        .expect("DUMP");
    assert!(!dump.is_empty(), "the session is stored at {key}");

    let disable = format!("/admin/users/{}/disable", user.id);
    let r = call(
        &app,
        Method::POST,
        &disable,
        Some(&admin.tokens.access),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let _: () = redis::cmd("RESTORE")
        .arg(&key)
        .arg(0)
        .arg(dump)
        .arg("REPLACE")
        .query_async(&mut con)
        .await
        .expect("RESTORE");
    refresh(&app, &user.tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
}

async fn a_deleted_accounts_id_still_takes_a_session_revocation(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let user = plain(&app).await;
    let path = format!("/admin/users/{}", user.id);
    let r = call(&app, Method::DELETE, &path, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.get("/session", Some(&user.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, &user.tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
    // The account is gone, yet revoking whatever could be left of it succeeds (and repeats).
    let sessions = format!("{path}/sessions");
    for _ in 0..2 {
        let r = call(&app, Method::DELETE, &sessions, Some(token), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    // A retried delete still answers 404, like any other request about the account.
    call(&app, Method::DELETE, &path, Some(token), None)
        .await
        .assert_error(404, "not_found");
    // An id that never was an account stays unknown.
    let unknown = format!("/admin/users/{}/sessions", Uuid::new_v4());
    call(&app, Method::DELETE, &unknown, Some(token), None)
        .await
        .assert_error(404, "not_found");
}
