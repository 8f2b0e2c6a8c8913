//! Redis unreachable (a proxy the test cuts): fail closed, serve what the cache can vouch for,
//! recover without a restart.
use std::time::Duration;

use reqwest::StatusCode;

use crate::{services_only, support::*};

services_only!(redis_outage_fails_closed_and_recovers);

async fn redis_outage_fails_closed_and_recovers() {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("SESSION_CACHE_TTL", 4).set("REDIS_TIMEOUT_MS", 200);
    let proxy = RedisProxy::start(redis_addr()).await;
    let a = dep.spawn().await; // talks to Redis directly
    let b = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;

    let (email, cached) = b.user().await;
    assert_eq!(
        b.get("/session", Some(&cached.access)).await.status,
        StatusCode::OK
    );
    // Logged in on A: B has never seen this session.
    let uncached = a.login(&email, PASSWORD).await;

    proxy.set_down(true);
    let cut = std::time::Instant::now();
    let r = b.get("/session", Some(&cached.access)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "cached token served during the outage: {}",
        r.body
    );
    let r = b.get("/session", Some(&uncached.access)).await;
    r.assert_error(503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    b.login_reply(&email, PASSWORD)
        .await
        .assert_error(503, "unavailable");
    b.post_auth("/logout", &cached.access)
        .await
        .assert_error(503, "unavailable");
    let ready = b.get("/ready", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["checks"]["redis"], "unavailable");
    assert!(
        cut.elapsed() < Duration::from_secs(4),
        "the checks above ran within the cache TTL"
    );

    // Once its cache entry has expired, the cached token is no longer vouched for: 503, not 200.
    let expired = eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            b.get("/session", Some(&cached.access)).await.status == StatusCode::SERVICE_UNAVAILABLE
        },
    )
    .await;
    assert!(expired, "cache entry expired during the outage");

    proxy.set_down(false);
    let recovered = eventually(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || b.get("/session", Some(&cached.access)).await.status == StatusCode::OK,
    )
    .await;
    assert!(recovered, "B recovered without a restart");
    // The failed logout did not end the session; a real one now works everywhere.
    assert_eq!(
        a.get("/session", Some(&cached.access)).await.status,
        StatusCode::OK
    );
    b.login(&email, PASSWORD).await;
    assert_eq!(
        b.post_auth("/logout", &cached.access).await.status,
        StatusCode::NO_CONTENT
    );
    let gone = eventually(
        Duration::from_secs(4),
        Duration::from_millis(20),
        async || a.get("/session", Some(&cached.access)).await.status == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(gone);
    assert_eq!(b.get("/ready", None).await.status, StatusCode::OK);
}
