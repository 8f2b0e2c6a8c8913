//! The two cache races the protocol model found (`model/`, docs/architecture.md), replayed on two
//! real pods: pod A reaches Redis through a proxy that holds its answers back, so one of its reads
//! is in flight while pod B revokes the session.
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::{services_only, support::*};

services_only!(
    a_read_in_flight_during_a_lost_revocation_is_cached_no_longer_than_the_bound,
    a_read_in_flight_across_a_resubscription_is_not_cached,
);

/// Starts a `GET /session` on `pod` in the background; its answer is read later.
fn session_check(pod: &TestApp, token: &str) -> actix_web::rt::task::JoinHandle<StatusCode> {
    let (client, url, token) = (pod.client.clone(), pod.url("/session"), token.to_string());
    actix_web::rt::spawn(async move {
        client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(StatusCode::BAD_GATEWAY)
    })
}

/// Trace 1: a cached answer's age used to count from its insertion. A read that Redis answered
/// before the revocation, and that arrived late, was then kept for a whole SESSION_CACHE_TTL more,
/// past the bound, when the revocation's message was lost.
async fn a_read_in_flight_during_a_lost_revocation_is_cached_no_longer_than_the_bound() {
    const TTL: Duration = Duration::from_secs(2);
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("SESSION_CACHE_TTL", TTL.as_secs())
        .set("REDIS_TIMEOUT_MS", 1500)
        // The frozen link below must not be noticed (and the cache flushed) during the test.
        .set("PUBSUB_PING_INTERVAL_MS", 60_000);
    let proxy = RedisProxy::start(redis_addr()).await;
    let a = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    let b = dep.spawn().await;
    let (_, tokens) = b.user().await;

    // A loses every invalidation from now on, silently; its next read is held in flight.
    proxy.freeze_pubsub(true);
    proxy.hold_replies(true);
    let started = Instant::now();
    let in_flight = session_check(&a, &tokens.access);
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let revoked = Instant::now();
    // The answer arrives within the Redis timeout, before the bound: it may still say 200.
    actix_web::rt::time::sleep_until((started + Duration::from_millis(1200)).into()).await;
    proxy.hold_replies(false);
    let first = in_flight.await.expect("the check ran");
    assert!(
        first == StatusCode::OK || first == StatusCode::UNAUTHORIZED,
        "{first}"
    );

    // From SESSION_CACHE_TTL after the revocation on (plus scheduling slack), A refuses it,
    // although it never heard of the revocation. Before the fix it accepted it until
    // SESSION_CACHE_TTL after the late answer arrived.
    let bound = revoked + TTL + Duration::from_millis(300);
    let until = started + Duration::from_millis(4500);
    let mut late = Vec::new();
    while Instant::now() < until {
        let status = a.get("/session", Some(&tokens.access)).await.status;
        if status == StatusCode::OK && Instant::now() > bound {
            late.push(revoked.elapsed());
        }
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
            "{status}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        late.is_empty(),
        "A accepted the revoked session {late:?} after the revocation (bound {TTL:?})"
    );
    assert_eq!(
        a.get("/session", Some(&tokens.access)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Trace 2: the flush on resubscription used to miss reads that began before it. A read answered
/// before a revocation that happened while A was not subscribed, arriving after A resubscribed and
/// flushed, was cached as if it were new, and A accepted the session for SESSION_CACHE_TTL.
async fn a_read_in_flight_across_a_resubscription_is_not_cached() {
    let mut dep = Deployment::new(Backend::Services).await;
    // A long TTL: only the flush can keep the revoked session out of A's cache.
    dep.set("SESSION_CACHE_TTL", 30)
        .set("REDIS_TIMEOUT_MS", 4000);
    let proxy = RedisProxy::start(redis_addr()).await;
    let a = dep.spawn_with(&[("REDIS_URL", proxy.url())]).await;
    let b = dep.spawn().await;
    let (_, tokens) = b.user().await;
    let subscribers = proxy.pubsub_upstream_addrs();
    assert_eq!(subscribers.len(), 1, "A has one subscriber connection");
    let resubscribed_before = a.metric("sessiond_pubsub_resubscriptions_total").await;

    // A read in flight, answered by Redis while the session lives.
    proxy.hold_replies(true);
    let in_flight = session_check(&a, &tokens.access);
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;

    // A's subscription dies and cannot come back for now; B revokes in the gap.
    proxy.refuse_new(true);
    let killed = kill_redis_client(subscribers[0]).await;
    assert_eq!(killed, 1, "A's subscriber connection was killed");
    assert_eq!(
        b.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );

    // A resubscribes (and flushes its cache); only then does the old read's answer arrive.
    proxy.refuse_new(false);
    let back = eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        async || a.metric("sessiond_pubsub_resubscriptions_total").await > resubscribed_before,
    )
    .await;
    assert!(back, "A resubscribed while its read was in flight");
    proxy.hold_replies(false);
    let first = in_flight.await.expect("the check ran");
    assert!(
        first == StatusCode::OK || first == StatusCode::UNAUTHORIZED,
        "{first}"
    );

    // The answer read before the flush was not cached: A asks Redis, which says revoked.
    for _ in 0..5 {
        a.get("/session", Some(&tokens.access))
            .await
            .assert_error(401, "unauthorized");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}
