//! Two pods (two Applications in this process) on one database and a Redis Cluster of three
//! masters and three replicas started by the test: revocation, refresh reuse, throttling and
//! role changes reach both pods, and a master killed under load fails over without a 500, with
//! 503 only while the failover lasts and no revoked session coming back.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::json;

use crate::{helpers::*, services_only};

services_only!(
    logout_on_one_pod_revokes_on_the_other_through_the_cluster,
    refresh_reuse_on_one_pod_revokes_on_the_other_through_the_cluster,
    login_limits_hold_across_pods_on_the_cluster,
    role_changes_reach_the_other_pod_through_the_cluster,
    a_master_killed_under_load_fails_over_without_errors_or_revived_sessions,
    seeds_that_are_no_cluster_stop_the_start_naming_the_variable,
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
    // Through pub/sub, not the cache TTL: B heard every logout.
    assert!(b.metric("sessiond_invalidations_received_total").await >= 3.0);
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

/// What the load saw: every status, and when each 503 came.
#[derive(Default)]
struct Seen {
    unavailable: Vec<Instant>,
    unexpected: Vec<String>,
    /// Access tokens whose logout was acknowledged with 204.
    revoked: Vec<String>,
    logins: usize,
    logins_after: Vec<Instant>,
}

/// One worker: login on A, check on B, logout on A, check on B, until `stop`.
async fn churn(a: &TestApp, b: &TestApp, email: &str, seen: &Mutex<Seen>, stop: &Mutex<bool>) {
    let allowed =
        |s: StatusCode, ok: &[StatusCode]| ok.contains(&s) || s == StatusCode::SERVICE_UNAVAILABLE;
    let note = |what: &str, s: StatusCode, ok: &[StatusCode]| {
        let mut seen = seen.lock().unwrap();
        if s == StatusCode::SERVICE_UNAVAILABLE {
            seen.unavailable.push(Instant::now());
        }
        if !allowed(s, ok) {
            seen.unexpected.push(format!("{what}: {s}"));
        }
    };
    while !*stop.lock().unwrap() {
        let r = a.login_reply(email, PASSWORD).await;
        note("login", r.status, &[StatusCode::OK]);
        let Some(access) = r.body["access_token"].as_str().map(str::to_string) else {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        {
            let mut seen = seen.lock().unwrap();
            seen.logins += 1;
            seen.logins_after.push(Instant::now());
        }
        // A session acknowledged just before the kill may be lost with the master (creation
        // is not WAITed for): 401 is allowed for it, never 500.
        let live = [StatusCode::OK, StatusCode::UNAUTHORIZED];
        note(
            "check",
            b.get("/session", Some(&access)).await.status,
            &live,
        );
        let out = a.post_auth("/logout", &access).await.status;
        note(
            "logout",
            out,
            &[StatusCode::NO_CONTENT, StatusCode::UNAUTHORIZED],
        );
        if out == StatusCode::NO_CONTENT {
            seen.lock().unwrap().revoked.push(access.clone());
        }
        note(
            "check after logout",
            b.get("/session", Some(&access)).await.status,
            &live,
        );
    }
}

async fn a_master_killed_under_load_fails_over_without_errors_or_revived_sessions() {
    let cluster = RedisCluster::start().await;
    let mut dep = Deployment::on_cluster(&cluster).await;
    dep.set("SESSION_CACHE_TTL", CACHE_TTL)
        .set("PUBSUB_PING_INTERVAL_MS", 200);
    let a = dep.spawn().await;
    let (email, tokens) = a.user().await;
    let uid = claims_of(&tokens.access)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let key = format!("{}{{u:{uid}}}:sessions", dep.prefix);
    let victim = cluster
        .master_of(&key)
        .await
        .expect("the user's slot has a master");
    // B subscribes on the master about to die first (its first seed), so the test covers the
    // subscriber moving to another node as well as the data failing over.
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

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(Mutex::new(false));
    let load = async {
        futures_util::future::join_all((0..3).map(|_| churn(&a, &b, &email, &seen, &stop))).await
    };
    let chaos = async {
        actix_web::rt::time::sleep(Duration::from_millis(800)).await;
        let killed_at = Instant::now();
        cluster.kill(victim);
        // The failover is over once a replica serves the slot and the cluster says ok.
        let over = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || cluster.master_of(&key).await.is_some_and(|p| p != victim),
        )
        .await;
        assert!(over, "a replica took over the slot");
        assert!(
            cluster.settled(Duration::from_secs(30)).await,
            "cluster_state:ok again"
        );
        let failed_over_at = Instant::now();
        // The shard has no replica left, so its revocations cannot be made durable (WAIT) and
        // answer 503 until the old master is back as the new one's replica, as an operator
        // would bring it back.
        let new_master = cluster.master_of(&key).await.expect("a new master");
        cluster.restart(victim);
        let replicated = eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || cluster.has_replicas(new_master, 1).await,
        )
        .await;
        assert!(replicated, "the old master came back as a replica");
        let recovered_at = Instant::now();
        // Keep the load going well past it.
        actix_web::rt::time::sleep(Duration::from_secs(3)).await;
        *stop.lock().unwrap() = true;
        (killed_at, failed_over_at, recovered_at)
    };
    let (_, (killed_at, failed_over_at, recovered_at)) = tokio::join!(load, chaos);
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    eprintln!(
        "failover took {:?}, a replica again after {:?}; {} logins, {} acknowledged logouts, {} \
         answers 503",
        failed_over_at - killed_at,
        recovered_at - killed_at,
        seen.logins,
        seen.revoked.len(),
        seen.unavailable.len()
    );
    assert!(
        seen.unexpected.is_empty(),
        "unexpected answers: {:?}",
        seen.unexpected
    );
    // 503 only from the kill until the pods' clients have the new slot map and the shard has a
    // replica again for its revocations' WAIT (a generous margin past the moment the cluster
    // itself agreed).
    let margin = Duration::from_secs(2);
    for at in &seen.unavailable {
        assert!(
            *at >= killed_at && *at <= recovered_at + margin,
            "a 503 {:?} after the kill, the failover took {:?} and the shard had a replica again \
             after {:?}",
            at.saturating_duration_since(killed_at),
            failed_over_at - killed_at,
            recovered_at - killed_at
        );
    }
    assert!(
        seen.logins_after
            .iter()
            .any(|t| *t > failed_over_at + margin),
        "logins succeed again after the failover ({} in all)",
        seen.logins
    );
    // Every acknowledged logout holds on both pods once the cache bound has passed.
    actix_web::rt::time::sleep(Duration::from_secs(CACHE_TTL)).await;
    assert!(!seen.revoked.is_empty());
    for token in &seen.revoked {
        for pod in [&a, &b] {
            pod.get("/session", Some(token))
                .await
                .assert_error(401, "unauthorized");
        }
    }
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
    // B's subscriber moved to a live node, and invalidations reach it again.
    assert!(b.metric("sessiond_pubsub_resubscriptions_total").await >= 1.0);
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
    let uid = claims_of(&first.access)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let key = format!("{}{{u:{uid}}}:sessions", dep.prefix);
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
