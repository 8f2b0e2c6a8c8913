//! Two pods (two Applications) on one database and one Redis: revocation reaches both.
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::{services_only, support::*};

services_only!(
    logout_on_one_pod_revokes_the_token_on_the_other,
    logout_on_one_pod_is_timed_on_the_other,
    lost_invalidation_after_subscriber_kill_is_bounded_by_cache_ttl,
    silently_dead_subscription_is_noticed_by_ping,
    racing_logouts_on_two_pods_never_500,
);

const CACHE_TTL: u64 = 3;

async fn two_pods() -> (Deployment, TestApp, TestApp) {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL);
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    (dep, a, b)
}

async fn logout_on_one_pod_revokes_the_token_on_the_other() {
    let (_dep, a, b) = two_pods().await;
    let (_, tokens) = a.user().await;
    for _ in 0..3 {
        assert_eq!(
            b.get("/session", Some(&tokens.access)).await.status,
            StatusCode::OK,
            "warm on B"
        );
    }
    assert_eq!(
        a.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let done = Instant::now();
    // A refuses at once.
    a.get("/session", Some(&tokens.access))
        .await
        .assert_error(401, "unauthorized");
    let took = rejected_within(&b, &tokens.access, done, Duration::from_secs(CACHE_TTL)).await;
    assert!(
        took.is_some(),
        "B still accepted a revoked token after SESSION_CACHE_TTL"
    );
    // And it stays refused.
    b.get("/profile", Some(&tokens.access))
        .await
        .assert_error(401, "unauthorized");
}

/// The revocation carries its publish time; B observes the lag on receipt.
async fn logout_on_one_pod_is_timed_on_the_other() {
    let (_dep, a, b) = two_pods().await;
    b.subscribed().await;
    let (_, tokens) = a.user().await;
    let count = "sessiond_revocation_propagation_seconds_count";
    let before = b.metric(count).await;
    assert_eq!(
        a.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let observed = eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || b.metric(count).await > before,
    )
    .await;
    assert!(observed, "B's {count} did not grow after a logout on A");
    let sum = b
        .metric("sessiond_revocation_propagation_seconds_sum")
        .await;
    assert!(sum.is_finite() && sum >= 0.0, "lag sum {sum}");
}

async fn lost_invalidation_after_subscriber_kill_is_bounded_by_cache_ttl() {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL);
    let upstream = redis_addr();
    let proxy = RedisProxy::start(upstream).await;
    let a = dep.spawn().await;
    let b = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    let (_, tokens) = a.user().await;
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let subscribers = proxy.pubsub_upstream_addrs();
    assert_eq!(subscribers.len(), 1, "B has one subscriber connection");

    // Kill B's subscriber server-side, then log out on A at once: the message can be lost.
    let killed = kill_redis_client(subscribers[0]).await;
    assert_eq!(killed, 1, "B's subscriber connection was killed");
    assert_eq!(
        a.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let done = Instant::now();
    let took = rejected_within(&b, &tokens.access, done, Duration::from_secs(CACHE_TTL)).await;
    assert!(
        took.is_some(),
        "B accepted a revoked token longer than SESSION_CACHE_TTL"
    );

    // B resubscribes by itself and propagation works again.
    let resubscribed = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || proxy.pubsub_upstream_addrs().len() >= 2,
    )
    .await;
    assert!(resubscribed, "B resubscribed");
    let (_, second) = a.user().await;
    assert_eq!(
        b.get("/session", Some(&second.access)).await.status,
        StatusCode::OK
    );
    let metrics = b.scrape().await;
    assert!(
        metrics.contains("sessiond_pubsub_resubscriptions_total 1"),
        "{metrics}"
    );
    assert_eq!(
        a.post_auth("/logout", &second.access).await.status,
        StatusCode::NO_CONTENT
    );
    let took = rejected_within(
        &b,
        &second.access,
        Instant::now(),
        Duration::from_secs(CACHE_TTL),
    )
    .await;
    assert!(took.is_some());
}

async fn silently_dead_subscription_is_noticed_by_ping() {
    let mut dep = Deployment::new(Backend::Services).await;
    // A long cache TTL, so only the ping can explain a timely rejection.
    dep.set("SESSION_CACHE_TTL", 60)
        .set("PUBSUB_PING_INTERVAL_MS", 200);
    let proxy = RedisProxy::start(redis_addr()).await;
    let a = dep.spawn().await;
    let b = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    let (_, tokens) = a.user().await;
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    proxy.freeze_pubsub(true);
    assert_eq!(
        a.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let took = rejected_within(&b, &tokens.access, Instant::now(), Duration::from_secs(10)).await;
    assert!(took.is_some(), "B never noticed its dead subscription");
    // What the alert on a lost link watches: down while frozen, up again after.
    let up = "sessiond_invalidation_link_up";
    assert_eq!(b.metric(up).await, 0.0);
    proxy.freeze_pubsub(false);
    let back = eventually(
        Duration::from_secs(15),
        Duration::from_millis(50),
        async || b.metric(up).await == 1.0,
    )
    .await;
    assert!(back, "B did not report its link up again");
    assert_eq!(a.metric(up).await, 1.0);
}

async fn racing_logouts_on_two_pods_never_500() {
    let (_dep, a, b) = two_pods().await;
    for _ in 0..5 {
        let (_, tokens) = a.user().await;
        assert_eq!(
            b.get("/session", Some(&tokens.access)).await.status,
            StatusCode::OK
        );
        let (ra, rb) = tokio::join!(
            a.post_auth("/logout", &tokens.access),
            b.post_auth("/logout", &tokens.access)
        );
        for r in [&ra, &rb] {
            assert!(
                r.status == StatusCode::NO_CONTENT || r.status == StatusCode::UNAUTHORIZED,
                "{} {}",
                r.status,
                r.body
            );
        }
        assert!(ra.status == StatusCode::NO_CONTENT || rb.status == StatusCode::NO_CONTENT);
        a.get("/session", Some(&tokens.access))
            .await
            .assert_error(401, "unauthorized");
    }
}
