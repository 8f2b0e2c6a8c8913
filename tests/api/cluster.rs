//! Two pods (two Applications in this process) on one database and a Redis Cluster of three
//! masters and three replicas started by the test: revocation, refresh reuse, throttling and
//! role changes reach both pods, and a master killed under load fails over without a 500, with
//! 503 only while the failover lasts and no revoked session coming back.
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::{services_only, support::failover::Stream, support::*};

services_only!(
    logout_on_one_pod_revokes_on_the_other_through_the_cluster,
    refresh_reuse_on_one_pod_revokes_on_the_other_through_the_cluster,
    login_limits_hold_across_pods_on_the_cluster,
    role_changes_reach_the_other_pod_through_the_cluster,
    a_master_killed_under_load_fails_over_without_errors_or_revived_sessions,
    seeds_that_are_no_cluster_stop_the_start_naming_the_variable,
    a_demoted_master_is_unlinked_and_may_then_stop_unnoticed,
    sessions_follow_their_slot_to_another_master,
);

const CACHE_TTL: u64 = 3;

async fn two_pods(cluster: &RedisCluster, vars: &[(&str, &str)]) -> (Deployment, TestApp, TestApp) {
    let mut dep = Deployment::on_cluster(cluster).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL);
    for (k, v) in vars {
        dep.set(k, v);
    }
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    (dep, a, b)
}

async fn logout_on_one_pod_revokes_on_the_other_through_the_cluster() {
    let cluster = RedisCluster::start().await;
    let (_dep, a, b) = two_pods(&cluster, &[]).await;
    // Each pod hears invalidations on every master (the publishing master delivers first).
    // The links are made in the background after start-up: polled, with a generous margin.
    for pod in [&a, &b] {
        let linked = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || pod.metric("sessiond_invalidation_links").await == 3.0,
        )
        .await;
        assert!(linked, "a pod is not subscribed on every master");
    }
    // Users on several slots (so on several masters).
    for _ in 0..3 {
        let (_, tokens) = a.user().await;
        assert_eq!(
            b.get("/session", Some(&tokens.access)).await.status,
            StatusCode::OK,
            "warm on B"
        );
        assert_eq!(
            a.post_auth("/logout", &tokens.access).await.status,
            StatusCode::NO_CONTENT
        );
        a.get("/session", Some(&tokens.access))
            .await
            .assert_error(401, "unauthorized");
        let took = rejected_within(
            &b,
            &tokens.access,
            Instant::now(),
            Duration::from_secs(CACHE_TTL),
        )
        .await;
        assert!(took.is_some(), "B still accepted a revoked token");
    }
    // Through pub/sub, not the cache TTL: B heard every logout, once each, although it is
    // subscribed on every master and each of them delivers every message.
    assert_eq!(b.metric("sessiond_invalidations_received_total").await, 3.0);
}

async fn refresh_reuse_on_one_pod_revokes_on_the_other_through_the_cluster() {
    let cluster = RedisCluster::start().await;
    let (_dep, a, b) = two_pods(&cluster, &[("REFRESH_REUSE_GRACE", "1")]).await;
    let (_, first) = a.user().await;
    let r = refresh(&a, &first.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let access2 = r.body["access_token"].as_str().expect("access").to_string();
    let refresh2 = r.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    // Within the grace window the same successor comes back (parallel tabs), on either pod.
    let again = refresh(&b, &first.refresh).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["refresh_token"], json!(refresh2));
    assert_eq!(
        b.get("/session", Some(&access2)).await.status,
        StatusCode::OK,
        "warm on B"
    );
    actix_web::rt::time::sleep(Duration::from_millis(2100)).await;
    // Reuse after the grace: refused, and the session ends on both pods.
    refresh(&b, &first.refresh)
        .await
        .assert_error(401, "unauthorized");
    refresh(&a, &refresh2)
        .await
        .assert_error(401, "unauthorized");
    let took = rejected_within(&a, &access2, Instant::now(), Duration::from_secs(CACHE_TTL)).await;
    assert!(took.is_some(), "reuse revoked the session on A");
    let took = rejected_within(&b, &access2, Instant::now(), Duration::from_secs(CACHE_TTL)).await;
    assert!(took.is_some(), "reuse revoked the session on B");
}

async fn login_limits_hold_across_pods_on_the_cluster() {
    let cluster = RedisCluster::start().await;
    let (_dep, a, b) = two_pods(
        &cluster,
        &[
            ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "3"),
            ("LOCKOUT_THRESHOLD", "0"),
        ],
    )
    .await;
    let email = unique_email("limited");
    assert_eq!(
        a.register(&email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    // Three attempts alternate pods; the fourth is over the limit on either pod.
    for pod in [&b, &a, &b] {
        pod.login_reply(&email, "wrong password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    for pod in [&b, &a] {
        let r = pod.login_reply(&email, PASSWORD).await;
        r.assert_error(429, "rate_limited");
        assert!(r.header("retry-after").is_some());
    }
}

async fn role_changes_reach_the_other_pod_through_the_cluster() {
    let cluster = RedisCluster::start().await;
    let admin_email = unique_email("admin");
    let (_dep, a, b) = two_pods(&cluster, &[("ADMIN_EMAILS", &admin_email)]).await;
    let admin = admin(&a, &admin_email).await;
    let user = plain(&a).await;
    let roles = async |pod: &TestApp| {
        pod.get("/session", Some(&user.tokens.access)).await.body["roles"].clone()
    };
    assert_eq!(roles(&b).await, json!(["user"]), "warm on B");
    let r = set_roles(&a, &admin.tokens.access, &user.id, &["admin", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(roles(&a).await, json!(["admin", "user"]));
    let seen = eventually(
        Duration::from_secs(CACHE_TTL),
        Duration::from_millis(20),
        async || roles(&b).await == json!(["admin", "user"]),
    )
    .await;
    assert!(seen, "the new roles reached pod B");
    assert_eq!(
        b.get("/admin/users", Some(&user.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
}

async fn a_master_killed_under_load_fails_over_without_errors_or_revived_sessions() {
    let cluster = RedisCluster::start().await;
    let mut dep = Deployment::on_cluster(&cluster).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL)
        .set("PUBSUB_PING_INTERVAL_MS", 200);
    let a = dep.spawn().await;
    let (email, tokens) = a.user().await;
    let key = sessions_key(&dep, &tokens.access);
    let victim = cluster
        .master_of(&key)
        .await
        .expect("the user's slot has a master");
    // B lists the master about to die first among its seeds, so the test covers its
    // subscriptions moving as well as the data failing over.
    let mut seeds = cluster.urls();
    let first = seeds
        .iter()
        .position(|u| u.ends_with(&format!(":{victim}")))
        .expect("victim among the seeds");
    seeds.rotate_left(first);
    let b = dep
        .spawn_with(&[("REDIS_CLUSTER_URLS", seeds.join(","))])
        .await;
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );

    let stream = Stream::default();
    let chaos = async {
        actix_web::rt::time::sleep(Duration::from_millis(800)).await;
        let times = cluster.fail_over(victim, &key).await;
        stream.stop_once_healthy(times.recovered_at).await;
        times
    };
    let (_, times) = tokio::join!(stream.run(&a, &b, &email), chaos);
    // 503 only from the kill until the pods' clients have the new slot map and the shard has a
    // replica again for its revocations' WAIT (a generous margin past the moment the cluster
    // itself agreed).
    let margin = Duration::from_secs(2);
    stream.assert_answers(times.killed_at, times.recovered_at, margin);
    assert!(
        stream.logins_after(times.failed_over_at + margin) > 0,
        "logins succeed again after the failover"
    );
    stream
        .assert_logouts_hold(&[&a, &b], Duration::from_secs(CACHE_TTL))
        .await;
    // Readiness (every master answers) is back on both pods.
    for pod in [&a, &b] {
        let ready = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || pod.get("/ready", None).await.status == StatusCode::OK,
        )
        .await;
        assert!(ready, "ready again after the failover");
    }
    // B resubscribed on the live masters, the promoted replica among them, and invalidations
    // reach it again.
    assert!(b.metric("sessiond_pubsub_resubscriptions_total").await >= 1.0);
    for (name, pod) in [("A", &a), ("B", &b)] {
        let linked = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || pod.metric("sessiond_invalidation_links").await == 3.0,
        )
        .await;
        assert!(
            linked,
            "pod {name} is not subscribed on every master after the failover: {} links",
            pod.metric("sessiond_invalidation_links").await
        );
    }
    let before = b.metric("sessiond_invalidations_received_total").await;
    let fresh = a.login(&email, PASSWORD).await;
    assert_eq!(
        b.get("/session", Some(&fresh.access)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.post_auth("/logout", &fresh.access).await.status,
        StatusCode::NO_CONTENT
    );
    let heard = eventually(
        Duration::from_secs(CACHE_TTL),
        Duration::from_millis(20),
        async || b.metric("sessiond_invalidations_received_total").await > before,
    )
    .await;
    assert!(heard, "B hears invalidations after the failover");
    b.get("/session", Some(&fresh.access))
        .await
        .assert_error(401, "unauthorized");
}

async fn seeds_that_are_no_cluster_stop_the_start_naming_the_variable() {
    // Nothing listening, and a Redis without cluster support.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    for seeds in [
        vec![format!("redis://127.0.0.1:{closed}")],
        vec![redis_url()],
    ] {
        let dep = Deployment::on_cluster_seeds(&seeds).await;
        let started = sessiond::startup::Application::build(dep.config()).await;
        let Err(e) = started else {
            panic!("started on {seeds:?}");
        };
        assert!(e.to_string().starts_with("REDIS_CLUSTER_URLS: "), "{e}");
    }
}

async fn sessions_follow_their_slot_to_another_master() {
    let cluster = RedisCluster::start().await;
    // No cache: every check reads Redis, so each meets the move.
    let (dep, a, b) = two_pods(&cluster, &[("SESSION_CACHE_TTL", "0")]).await;
    let (email, first) = a.user().await;
    let second = b.login(&email, PASSWORD).await;
    let key = sessions_key(&dep, &first.access);
    let from = cluster.master_of(&key).await.expect("a master");
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|p| **p != from)
        .expect("another master");
    cluster.move_slot(&key, to).await;
    assert_eq!(cluster.master_of(&key).await, Some(to), "the slot moved");
    // Reads, writes and scripts follow the slot (MOVED) on both pods.
    for pod in [&a, &b] {
        for tokens in [&first, &second] {
            assert_eq!(
                pod.get("/session", Some(&tokens.access)).await.status,
                StatusCode::OK
            );
        }
    }
    let r = refresh(&b, &first.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let third = a.login(&email, PASSWORD).await;
    assert_eq!(
        b.post_auth("/logout", &second.access).await.status,
        StatusCode::NO_CONTENT
    );
    for pod in [&a, &b] {
        pod.get("/session", Some(&second.access))
            .await
            .assert_error(401, "unauthorized");
        assert_eq!(
            pod.get("/session", Some(&third.access)).await.status,
            StatusCode::OK
        );
    }
}

/// A manual failover keeps the old master up, as a replica: pods link the promoted master and
/// drop the link to the demoted one (one link per master), so that node may then stop without
/// a resubscription and a cache flush on every pod.
async fn a_demoted_master_is_unlinked_and_may_then_stop_unnoticed() {
    let cluster = RedisCluster::start().await;
    let (dep, a, b) = two_pods(&cluster, &[("PUBSUB_PING_INTERVAL_MS", "200")]).await;
    let links = async |pod: &TestApp| pod.metric("sessiond_invalidation_links").await;
    for pod in [&a, &b] {
        let linked = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || links(pod).await == 3.0,
        )
        .await;
        assert!(linked, "a pod is not subscribed on every master");
    }
    let (email, tokens) = a.user().await;
    let key = sessions_key(&dep, &tokens.access);
    let demoted = cluster.manual_failover(&key).await;
    // Reconciliation runs every ping interval: fifteen of them, then one link per master.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    for (name, pod) in [("A", &a), ("B", &b)] {
        let linked = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || links(pod).await == 3.0,
        )
        .await;
        assert!(
            linked,
            "pod {name} has {} links after a manual failover, for 3 masters",
            links(pod).await
        );
    }
    cluster.kill(demoted);
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    for pod in [&a, &b] {
        assert_eq!(
            pod.metric("sessiond_pubsub_resubscriptions_total").await,
            0.0
        );
        assert_eq!(pod.metric("sessiond_invalidation_link_up").await, 1.0);
        assert_eq!(links(pod).await, 3.0);
    }
    // Back as the shard's replica (revocations WAIT for one), the session on the failed-over
    // slot lives on, and a logout still reaches the other pod through pub/sub.
    cluster.restart(demoted);
    let promoted = cluster
        .master_of(&key)
        .await
        .expect("the slot has a master");
    let replicated = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || cluster.has_replicas(promoted, 1).await,
    )
    .await;
    assert!(replicated, "the demoted master came back as a replica");
    assert!(
        cluster.settled(Duration::from_secs(30)).await,
        "the replica is in sync"
    );
    assert_eq!(
        b.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
    let before = b.metric("sessiond_invalidations_received_total").await;
    assert_eq!(
        a.post_auth("/logout", &tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let took = rejected_within(
        &b,
        &tokens.access,
        Instant::now(),
        Duration::from_secs(CACHE_TTL),
    )
    .await;
    assert!(took.is_some(), "B still accepted a revoked token");
    assert_eq!(
        b.metric("sessiond_invalidations_received_total").await,
        before + 1.0
    );
    assert_eq!(a.login_reply(&email, PASSWORD).await.status, StatusCode::OK);
}
