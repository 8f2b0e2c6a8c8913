//! Session records in Redis are sealed with a MAC: whoever can write Redis cannot mint or widen a
//! session. Each test edits a live session's hash with a plain Redis client, then uses it on a
//! second pod that never cached it: refused (401), the record is gone, the failure is counted.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sessiond::session::RefreshToken;
use uuid::Uuid;

use crate::{helpers::*, services_only};

services_only!(
    forged_roles_are_refused_and_the_record_revoked,
    forged_refresh_hash_does_not_rotate,
    forged_grace_replay_state_does_not_hand_out_a_successor,
    extended_expiry_is_refused,
    another_users_sealed_record_does_not_fit_this_session,
    tampered_sessions_are_dropped_from_the_session_list,
    a_role_change_does_not_reseal_a_tampered_record,
    records_sealed_with_the_previous_secret_still_verify,
);

const ALL_PERMISSIONS: &str = "audit:read,sessions:revoke,users:read,users:write";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// A logged-in session: its ids and tokens.
struct Live {
    uid: Uuid,
    sid: Uuid,
    tokens: Tokens,
}

fn live(tokens: Tokens) -> Live {
    let claims = claims_of(&tokens.access);
    let id = |v: &Value| Uuid::parse_str(v.as_str().expect("id")).expect("uuid");
    Live {
        uid: id(&claims["sub"]),
        sid: id(&claims["sid"]),
        tokens,
    }
}

fn session_key(dep: &Deployment, s: &Live) -> String {
    format!("{}{{u:{}}}:session:{}", dep.prefix, s.uid, s.sid)
}

async fn hset(dep: &Deployment, s: &Live, fields: &[(&str, String)]) {
    let mut con = redis().await;
    let mut cmd = redis::cmd("HSET");
    cmd.arg(session_key(dep, s));
    for (k, v) in fields {
        cmd.arg(*k).arg(v);
    }
    let _: i64 = cmd.query_async(&mut con).await.expect("HSET");
}

async fn exists(dep: &Deployment, s: &Live) -> bool {
    let mut con = redis().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(session_key(dep, s))
        .query_async(&mut con)
        .await
        .expect("EXISTS");
    n == 1
}

/// `sessiond_session_seal_failures_total` on this pod.
async fn seal_failures(app: &TestApp) -> u64 {
    app.metric("sessiond_session_seal_failures_total").await as u64
}

/// The session is refused everywhere it is looked at, and its record is gone.
async fn assert_revoked(dep: &Deployment, app: &TestApp, s: &Live) {
    app.get("/session", Some(&s.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    refresh(app, &s.tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
    assert!(!exists(dep, s).await, "the tampered record was deleted");
}

/// A deployment with one admin account, and a pod to use tampered records on.
async fn deployment() -> (Deployment, TestApp, Account) {
    let (dep, admins) = with_admins(Backend::Services, 1).await;
    let a = dep.spawn().await;
    let admin = admin(&a, &admins[0]).await;
    (dep, a, admin)
}

async fn forged_roles_are_refused_and_the_record_revoked() {
    let (dep, a, _) = deployment().await;
    // One session checked through an admin route first, one through a refresh first.
    let (email, first) = a.user().await;
    let (by_route, by_refresh) = (live(first), live(a.login(&email, PASSWORD).await));
    for s in [&by_route, &by_refresh] {
        hset(
            &dep,
            s,
            &[
                ("roles", "admin,user".into()),
                ("permissions", ALL_PERMISSIONS.into()),
            ],
        )
        .await;
    }
    let b = dep.spawn().await;

    let before = seal_failures(&b).await;
    b.get("/admin/users", Some(&by_route.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 1);
    assert_revoked(&dep, &b, &by_route).await;

    refresh(&b, &by_refresh.tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 2);
    assert!(!exists(&dep, &by_refresh).await);
    b.get("/admin/users", Some(&by_refresh.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    // Pod A cached both sessions at login; the revocation reaches it too.
    for s in [&by_route, &by_refresh] {
        let refused = eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || {
                a.get("/session", Some(&s.tokens.access)).await.status == StatusCode::UNAUTHORIZED
            },
        )
        .await;
        assert!(refused, "pod A still accepts a revoked session");
    }
}

async fn forged_refresh_hash_does_not_rotate() {
    let (dep, a, _) = deployment().await;
    let (_, tokens) = a.user().await;
    let s = live(tokens);
    let made_up = RefreshToken::generate(s.uid, s.sid);
    hset(&dep, &s, &[("refresh_hash", made_up.hash())]).await;
    let b = dep.spawn().await;
    let before = seal_failures(&b).await;
    refresh(&b, &made_up.encode())
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 1);
    assert_revoked(&dep, &b, &s).await;
}

async fn forged_grace_replay_state_does_not_hand_out_a_successor() {
    let (dep, a, _) = deployment().await;
    let (_, tokens) = a.user().await;
    let s = live(tokens);
    // What a just-rotated token would find: the attacker's token as the previous one, and a
    // successor sealed for it.
    let (made_up, successor) = (
        RefreshToken::generate(s.uid, s.sid),
        RefreshToken::generate(s.uid, s.sid),
    );
    hset(
        &dep,
        &s,
        &[
            ("prev_hash", made_up.hash()),
            ("rotated_at", chrono::Utc::now().timestamp().to_string()),
            ("succ_sealed", made_up.seal(&successor)),
            ("succ_jti", Uuid::new_v4().to_string()),
        ],
    )
    .await;
    let b = dep.spawn().await;
    let before = seal_failures(&b).await;
    refresh(&b, &made_up.encode())
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 1);
    assert_revoked(&dep, &b, &s).await;
    refresh(&b, &successor.encode())
        .await
        .assert_error(401, "unauthorized");
}

async fn extended_expiry_is_refused() {
    let (dep, a, _) = deployment().await;
    let (email, first) = a.user().await;
    let (by_route, by_refresh) = (live(first), live(a.login(&email, PASSWORD).await));
    let far = chrono::Utc::now().timestamp() + 10 * 365 * 86_400;
    for s in [&by_route, &by_refresh] {
        hset(&dep, s, &[("expires_at", far.to_string())]).await;
    }
    let b = dep.spawn().await;
    let before = seal_failures(&b).await;
    b.get("/session", Some(&by_route.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    refresh(&b, &by_refresh.tokens.refresh)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 2);
    assert_revoked(&dep, &b, &by_route).await;
    assert_revoked(&dep, &b, &by_refresh).await;
}

async fn another_users_sealed_record_does_not_fit_this_session() {
    let (dep, a, admin) = deployment().await;
    let admin = live(admin.tokens);
    let (_, tokens) = a.user().await;
    let s = live(tokens);
    // Everything of the admin's record (roles and their MACs included), but this user's id and
    // current refresh token hash, so the ids in the key are the only thing left that differs.
    let mut con = redis().await;
    let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(session_key(&dep, &admin))
        .query_async(&mut con)
        .await
        .expect("HGETALL");
    let own: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(session_key(&dep, &s))
        .query_async(&mut con)
        .await
        .expect("HGETALL");
    let keep = |name: &str| name == "user_id" || name.starts_with("refresh") || name == "token_mac";
    fields.retain(|(k, _)| !keep(k));
    fields.extend(own.into_iter().filter(|(k, _)| keep(k)));
    let fields: Vec<(&str, String)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    hset(&dep, &s, &fields).await;

    let b = dep.spawn().await;
    let before = seal_failures(&b).await;
    b.get("/admin/users", Some(&s.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&b).await, before + 1);
    assert_revoked(&dep, &b, &s).await;
    // The admin's own session is untouched.
    assert_eq!(
        b.get("/admin/users", Some(&admin.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
}

async fn tampered_sessions_are_dropped_from_the_session_list() {
    let (dep, a, _) = deployment().await;
    let (email, first) = a.user().await;
    let (kept, tampered) = (live(first), live(a.login(&email, PASSWORD).await));
    hset(&dep, &tampered, &[("roles", "admin,user".into())]).await;
    let b = dep.spawn().await;
    let before = seal_failures(&b).await;
    let r = b.get("/sessions", Some(&kept.tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let listed = r.body.to_string();
    assert!(listed.contains(&kept.sid.to_string()), "{listed}");
    assert!(!listed.contains(&tampered.sid.to_string()), "{listed}");
    assert_eq!(seal_failures(&b).await, before + 1);
    assert!(!exists(&dep, &tampered).await);
    assert!(exists(&dep, &kept).await);
}

async fn a_role_change_does_not_reseal_a_tampered_record() {
    let (dep, a, admin) = deployment().await;
    let r = create_role(&a, &admin.tokens.access, "viewer", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (email, first) = a.user().await;
    let (kept, tampered) = (live(first), live(a.login(&email, PASSWORD).await));
    let far = chrono::Utc::now().timestamp() + 10 * 365 * 86_400;
    hset(&dep, &tampered, &[("expires_at", far.to_string())]).await;
    let r = set_roles(
        &a,
        &admin.tokens.access,
        &kept.uid.to_string(),
        &["user", "viewer"],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = dep.spawn().await;
    // The untampered session got the new role; the tampered one was revoked, not resealed.
    let r = b.get("/session", Some(&kept.tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["roles"], json!(["user", "viewer"]), "{}", r.body);
    assert!(!exists(&dep, &tampered).await);
    assert_revoked(&dep, &b, &tampered).await;
}

async fn records_sealed_with_the_previous_secret_still_verify() {
    let old_jwt = "old-jwt-secret-old-jwt-secret-old-jwt-secret";
    let (old_session, new_session) = (
        "old-session-seal-secret-0123456789abcdef",
        "new-session-seal-secret-0123456789abcdef",
    );
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("JWT_SECRET", old_jwt);
    let a = dep.spawn().await;
    // Derived from JWT_SECRET: a pod with the next JWT_SECRET and the old one as
    // JWT_SECRET_PREVIOUS verifies, reads and rotates the old records.
    let (email, tokens) = a.user().await;
    let (by_route, by_refresh, unknown_key) = (
        live(tokens),
        live(a.login(&email, PASSWORD).await),
        live(a.login(&email, PASSWORD).await),
    );
    let rotated = dep
        .spawn_with(&[
            ("JWT_SECRET", SECRET.to_string()),
            ("JWT_SECRET_PREVIOUS", old_jwt.to_string()),
        ])
        .await;
    let r = rotated.get("/session", Some(&by_route.tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = refresh(&rotated, &by_refresh.tokens.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let next = r.body["refresh_token"].as_str().expect("refresh_token");
    let r = refresh(&rotated, next).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seal_failures(&rotated).await, 0);
    // Without the previous secret the old seal is worthless: revoked like a forged record.
    let forgot = dep.spawn_with(&[("JWT_SECRET", SECRET.to_string())]).await;
    let r = forgot
        .get("/session", Some(&unknown_key.tokens.access))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(
        seal_failures(&forgot).await,
        0,
        "the JWT itself was refused"
    );
    let r = refresh(&forgot, &unknown_key.tokens.refresh).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&forgot).await, 1);
    assert!(!exists(&dep, &unknown_key).await);

    // A dedicated SESSION_SECRET, rotated the same way with SESSION_SECRET_PREVIOUS.
    dep.set("JWT_SECRET", SECRET)
        .set("SESSION_SECRET", old_session);
    let c = dep.spawn().await;
    let (email, tokens) = c.user().await;
    let (s1, s2) = (live(tokens), live(c.login(&email, PASSWORD).await));
    let next = dep
        .spawn_with(&[
            ("SESSION_SECRET", new_session.to_string()),
            ("SESSION_SECRET_PREVIOUS", old_session.to_string()),
        ])
        .await;
    let r = next.get("/session", Some(&s1.tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = refresh(&next, &s1.tokens.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seal_failures(&next).await, 0);
    // Without SESSION_SECRET_PREVIOUS the old seals no longer verify.
    let derived = dep
        .spawn_with(&[("SESSION_SECRET", new_session.to_string())])
        .await;
    derived
        .get("/session", Some(&s2.tokens.access))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(seal_failures(&derived).await, 1);
    assert!(!exists(&dep, &s2).await);
}
