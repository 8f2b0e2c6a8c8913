//! How the user authenticated, kept with the session: access tokens (refreshed ones too) carry
//! `amr` and `auth_time`; sensitive changes need a recent authentication (STEP_UP_MAX_AGE), and
//! POST /reauthenticate renews it for the same token, on every pod.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    both_backends, services_only,
    support::totp::{code, enrol},
    support::*,
};

both_backends!(
    tokens_carry_amr_and_auth_time_and_a_refresh_keeps_them,
    a_login_with_a_second_factor_says_so_in_every_token,
    sensitive_changes_need_a_recent_authentication_which_reauthenticate_renews,
    reauthentication_needs_the_second_factor_when_one_is_enrolled,
    failed_reauthentications_count_toward_the_lockout,
    a_role_that_requires_mfa_limits_sessions_until_a_second_factor,
);

services_only!(
    a_reauthentication_on_one_pod_counts_at_once_on_the_other,
    a_freshened_auth_time_in_redis_is_refused_like_a_forged_grant,
    a_record_from_before_auth_fields_works_but_is_never_recent,
);

/// Short enough to wait out in a test, long enough for the calls right after a reauthentication.
const MAX_AGE: u64 = 2;

async fn reauthenticate(app: &TestApp, token: &str, body: Value) -> Reply {
    app.request(Method::POST, "/reauthenticate", token, Some(&body))
        .await
}

/// DELETE /mfa/totp on an account without an authenticator: 404 while the authentication is
/// recent, 403 reauthentication_required once it is not. Nothing changes either way.
async fn probe(app: &TestApp, token: &str) -> Reply {
    app.request(Method::DELETE, "/mfa/totp", token, None).await
}

/// Waits (generously) until the session's authentication is older than STEP_UP_MAX_AGE.
async fn until_stale(app: &TestApp, token: &str) {
    let stale = eventually(
        Duration::from_secs(MAX_AGE * 5 + 5),
        Duration::from_millis(200),
        async || probe(app, token).await.status == StatusCode::FORBIDDEN,
    )
    .await;
    assert!(stale, "the authentication never became too old");
    probe(app, token)
        .await
        .assert_error(403, "reauthentication_required");
}

fn amr(token: &str) -> Value {
    claims_of(token)["amr"].clone()
}

fn auth_time(token: &str) -> i64 {
    claims_of(token)["auth_time"]
        .as_i64()
        .unwrap_or_else(|| panic!("auth_time in {}", claims_of(token)))
}

fn access_of(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn tokens_carry_amr_and_auth_time_and_a_refresh_keeps_them(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["amr"], json!(["pwd"]), "{claims}");
    assert_eq!(claims["auth_time"], claims["iat"], "{claims}");
    assert!(claims.get("idp").is_none(), "{claims}");
    let login_time = auth_time(&tokens.access);

    // A refresh a second later still says how and when the user logged in.
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let r = refresh(&app, &tokens.refresh).await;
    let refreshed = access_of(&r);
    assert_eq!(amr(&refreshed), json!(["pwd"]));
    assert_eq!(auth_time(&refreshed), login_time);
    assert!(claims_of(&refreshed)["iat"].as_i64().unwrap() > login_time);

    // The session says so too.
    let r = app.get("/session", Some(&refreshed)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["amr"], json!(["pwd"]), "{}", r.body);
    assert!(r.body["auth_time"].is_string(), "{}", r.body);
    let r = app.get("/sessions", Some(&refreshed)).await;
    assert_eq!(r.body["items"][0]["amr"], json!(["pwd"]), "{}", r.body);
}

async fn a_login_with_a_second_factor_says_so_in_every_token(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let (totp, _) = enrol(&app, &me.tokens.access).await;
    let r = app.login_reply(&me.email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    let mfa_token = r.body["mfa_token"].as_str().unwrap();
    // The enrolment spent the current step: the next one (one step of skew) is accepted.
    let r = app
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": mfa_token, "totp": code(&totp, 1)}),
        )
        .await;
    let access = access_of(&r);
    assert_eq!(amr(&access), json!(["pwd", "otp", "mfa"]));
    let refresh_token = r.body["refresh_token"].as_str().unwrap();
    let refreshed = access_of(&refresh(&app, refresh_token).await);
    assert_eq!(amr(&refreshed), json!(["pwd", "otp", "mfa"]));
    assert_eq!(auth_time(&refreshed), auth_time(&access));
}

async fn sensitive_changes_need_a_recent_authentication_which_reauthenticate_renews(
    backend: Backend,
) {
    let mut dep = Deployment::new(backend).await;
    dep.set("STEP_UP_MAX_AGE", MAX_AGE);
    let app = dep.spawn().await;
    let (email, tokens) = app.user().await;
    let token = tokens.access.as_str();
    let login_time = auth_time(token);
    until_stale(&app, token).await;

    // Every sensitive change is refused, before anything is checked or changed.
    let new = "a brand new passphrase";
    let refused = [
        (
            Method::PUT,
            "/profile/password",
            Some(json!({"current_password": PASSWORD, "new_password": new})),
        ),
        (
            Method::PUT,
            "/profile/email",
            Some(json!({"new_email": unique_email("moved"), "current_password": PASSWORD})),
        ),
        (Method::POST, "/mfa/totp", None),
        (Method::DELETE, "/mfa/totp", None),
        (
            Method::POST,
            "/profile/identities/corp/start",
            Some(
                json!({"return_to": "https://app.example.com/cb", "code_challenge": "x".repeat(43)}),
            ),
        ),
        (Method::DELETE, "/profile/identities/corp", None),
    ];
    for (method, path, body) in &refused {
        let r = app
            .request(method.clone(), path, token, body.as_ref())
            .await;
        r.assert_error(403, "reauthentication_required");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("/reauthenticate"),
            "{}",
            r.body
        );
    }
    // Other calls still work: the session is alive.
    assert_eq!(
        app.get("/profile", Some(token)).await.status,
        StatusCode::OK
    );

    // A wrong password is the answer a failed login gets; nothing is renewed.
    reauthenticate(&app, token, json!({"password": "not the password at all"}))
        .await
        .assert_error(401, "invalid_credentials");
    probe(&app, token)
        .await
        .assert_error(403, "reauthentication_required");

    let r = reauthenticate(&app, token, json!({"password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The same access token may now make the change.
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            token,
            Some(&json!({"current_password": PASSWORD, "new_password": new})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // No new session: the same one, and a refresh says when the user reauthenticated.
    let r = app.get("/sessions", Some(token)).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    let refreshed = access_of(&refresh(&app, &tokens.refresh).await);
    assert_eq!(claims_of(&refreshed)["sid"], claims_of(token)["sid"]);
    assert_eq!(amr(&refreshed), json!(["pwd"]));
    assert!(auth_time(&refreshed) > login_time);
    // And it ages like a login.
    until_stale(&app, &refreshed).await;
    assert_eq!(
        app.login_reply(&email, new).await.status,
        StatusCode::OK,
        "the password was changed"
    );
}

async fn reauthentication_needs_the_second_factor_when_one_is_enrolled(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    let (totp, recovery) = enrol(&app, token).await;

    // The password alone is not enough; the answer says what is missing and checks nothing.
    reauthenticate(&app, token, json!({"password": PASSWORD}))
        .await
        .assert_error(400, "invalid_request");
    reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "totp": "000000", "recovery_code": "x"}),
    )
    .await
    .assert_error(400, "invalid_request");
    // A wrong code: as at POST /login/mfa.
    let wrong = if code(&totp, 1) == "123456" {
        "654321"
    } else {
        "123456"
    };
    reauthenticate(&app, token, json!({"password": PASSWORD, "totp": wrong}))
        .await
        .assert_error(400, "invalid_grant");
    // A right code with a wrong password: the password's answer.
    reauthenticate(
        &app,
        token,
        json!({"password": "not the password at all", "totp": code(&totp, 1)}),
    )
    .await
    .assert_error(401, "invalid_credentials");

    // The enrolment spent the current step; the next one is within the skew.
    let next = code(&totp, 1);
    let r = reauthenticate(&app, token, json!({"password": PASSWORD, "totp": next})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Never twice.
    reauthenticate(&app, token, json!({"password": PASSWORD, "totp": next}))
        .await
        .assert_error(400, "invalid_grant");
    let r = reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "recovery_code": recovery[0]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The session now counts the second factor, and its tokens say so.
    let refreshed = access_of(&refresh(&app, &me.tokens.refresh).await);
    assert_eq!(amr(&refreshed), json!(["pwd", "otp", "mfa"]));
    let r = app.get("/session", Some(&refreshed)).await;
    assert_eq!(r.body["amr"], json!(["pwd", "otp", "mfa"]), "{}", r.body);
}

async fn failed_reauthentications_count_toward_the_lockout(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    for _ in 0..3 {
        reauthenticate(&app, token, json!({"password": "not the password at all"}))
            .await
            .assert_error(401, "invalid_credentials");
    }
    // Locked: even the right password is refused, here and at login.
    reauthenticate(&app, token, json!({"password": PASSWORD}))
        .await
        .assert_error(429, "rate_limited");
    app.login_reply(&me.email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");
}

async fn a_reauthentication_on_one_pod_counts_at_once_on_the_other() {
    let mut dep = Deployment::new(Backend::Services).await;
    // A long cache: the other pod must not answer from a stale copy of the session.
    dep.set("STEP_UP_MAX_AGE", MAX_AGE)
        .set("SESSION_CACHE_TTL", 300);
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    b.subscribed().await;
    let (_, tokens) = a.user().await;
    let token = tokens.access.as_str();
    assert_eq!(b.get("/session", Some(token)).await.status, StatusCode::OK);
    until_stale(&b, token).await;

    let r = reauthenticate(&a, token, json!({"password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // At once on B, with the same token.
    probe(&b, token).await.assert_error(404, "not_found");
    let r = b.get("/session", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["auth_time"].is_string(), "{}", r.body);
}

// Tampering with the authentication fields in Redis.

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

fn session_key(dep: &Deployment, token: &str) -> String {
    let claims = claims_of(token);
    let id = |v: &Value| Uuid::parse_str(v.as_str().expect("id")).expect("uuid");
    format!(
        "{}{{u:{}}}:session:{}",
        dep.prefix,
        id(&claims["sub"]),
        id(&claims["sid"])
    )
}

async fn a_freshened_auth_time_in_redis_is_refused_like_a_forged_grant() {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("STEP_UP_MAX_AGE", MAX_AGE);
    let a = dep.spawn().await;
    let (_, stale) = a.user().await;
    let (_, added) = a.user().await;
    until_stale(&a, &stale.access).await;
    let mut con = redis().await;
    let now = chrono::Utc::now().timestamp();
    let _: i64 = redis::cmd("HSET")
        .arg(session_key(&dep, &stale.access))
        .arg("auth_time")
        .arg(now)
        .query_async(&mut con)
        .await
        .expect("HSET");
    let _: i64 = redis::cmd("HSET")
        .arg(session_key(&dep, &added.access))
        .arg("amr")
        .arg("pwd,otp,mfa")
        .query_async(&mut con)
        .await
        .expect("HSET");
    // A pod that never cached them reads the records.
    let b = dep.spawn().await;
    let before = b.metric("sessiond_session_seal_failures_total").await;
    for tokens in [&stale, &added] {
        b.get("/session", Some(&tokens.access))
            .await
            .assert_error(401, "unauthorized");
        refresh(&b, &tokens.refresh)
            .await
            .assert_error(401, "unauthorized");
        let n: i64 = redis::cmd("EXISTS")
            .arg(session_key(&dep, &tokens.access))
            .query_async(&mut con)
            .await
            .expect("EXISTS");
        assert_eq!(n, 0, "the tampered record was deleted");
    }
    assert_eq!(
        b.metric("sessiond_session_seal_failures_total").await,
        before + 2.0
    );
}

async fn a_record_from_before_auth_fields_works_but_is_never_recent() {
    let dep = Deployment::new(Backend::Services).await;
    let a = dep.spawn().await;
    let (_, tokens) = a.user().await;
    let mut con = redis().await;
    let _: i64 = redis::cmd("HDEL")
        .arg(session_key(&dep, &tokens.access))
        .arg("amr")
        .arg("auth_time")
        .arg("idp")
        .arg("auth_mac")
        .query_async(&mut con)
        .await
        .expect("HDEL");
    let b = dep.spawn().await;
    let r = b.get("/session", Some(&tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("amr").is_none(), "{}", r.body);
    // Well within STEP_UP_MAX_AGE of the login, yet not known to be recent.
    probe(&b, &tokens.access)
        .await
        .assert_error(403, "reauthentication_required");
    let refreshed = access_of(&refresh(&b, &tokens.refresh).await);
    let claims = claims_of(&refreshed);
    assert!(claims.get("amr").is_none(), "{claims}");
    assert!(claims.get("auth_time").is_none(), "{claims}");
    // A reauthentication gives it a sealed authentication again.
    let r = reauthenticate(&b, &refreshed, json!({"password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    probe(&b, &refreshed).await.assert_error(404, "not_found");
}

/// REQUIRE_MFA_FOR_ROLES=admin: an admin's session without a second factor may only enrol one
/// (and say who it is, log out, reauthenticate); a reauthentication with the new factor, or a
/// new login with it, lifts the limit. Other accounts are not limited.
async fn a_role_that_requires_mfa_limits_sessions_until_a_second_factor(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("REQUIRE_MFA_FOR_ROLES", "admin");
    let app = dep.spawn().await;
    let me = admin(&app, &admins[0]).await;
    let token = me.tokens.access.as_str();
    let limited = |r: Reply| {
        r.assert_error(403, "forbidden");
        assert_eq!(r.body["reason"], "mfa_enrolment_required", "{}", r.body);
    };
    limited(app.get("/admin/users", Some(token)).await);
    limited(app.get("/sessions", Some(token)).await);
    limited(
        app.request(
            Method::PUT,
            "/profile/password",
            token,
            Some(&json!({"current_password": PASSWORD, "new_password": "another long passphrase"})),
        )
        .await,
    );
    assert_eq!(
        app.get("/profile", Some(token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/session", Some(token)).await.status,
        StatusCode::OK
    );
    // A refresh works, and its token is limited the same way.
    let refreshed = access_of(&refresh(&app, &me.tokens.refresh).await);
    limited(app.get("/admin/users", Some(&refreshed)).await);
    // A plain account is not limited.
    let other = plain(&app).await;
    assert_eq!(
        app.get("/sessions", Some(&other.tokens.access))
            .await
            .status,
        StatusCode::OK
    );

    // Enrolling is open; the session is still limited until it uses the factor.
    let (totp, recovery) = enrol(&app, &refreshed).await;
    limited(app.get("/admin/users", Some(&refreshed)).await);
    // With Redis, a second pod that has the limited session cached.
    let other_pod = match backend {
        Backend::Services => {
            let b = dep.spawn().await;
            b.subscribed().await;
            limited(b.get("/admin/users", Some(&refreshed)).await);
            Some(b)
        }
        Backend::Embedded => None,
    };
    let r = reauthenticate(
        &app,
        &refreshed,
        json!({"password": PASSWORD, "totp": code(&totp, 1)}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The same token, at once.
    let r = app.get("/admin/users", Some(&refreshed)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    if let Some(b) = &other_pod {
        let lifted = eventually(
            Duration::from_secs(5),
            Duration::from_millis(20),
            async || b.get("/admin/users", Some(&refreshed)).await.status == StatusCode::OK,
        )
        .await;
        assert!(lifted, "the other pod still limits the session");
    }

    // A new login with the factor is not limited either.
    let r = app.login_reply(&me.email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    let r = app
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": r.body["mfa_token"], "recovery_code": recovery[0]}),
        )
        .await;
    let fresh = access_of(&r);
    assert_eq!(
        app.get("/admin/users", Some(&fresh)).await.status,
        StatusCode::OK
    );
}
