//! Multi-factor authentication: TOTP enrolment with codes computed here from the secret, logins
//! that need a second factor (POST /login/mfa), one step of clock skew, codes and recovery codes
//! accepted once, the mfa_token's single use, attempt limit and lifetime, and an admin's reset
//! of a user's factors.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use totp_rs::Totp;

use crate::{
    both_backends,
    support::totp::{authenticator, code, enrol, fresh_step},
    support::*,
};

both_backends!(
    a_totp_enrolment_then_logins_with_codes_and_recovery_codes,
    an_mfa_token_is_single_use_and_allows_five_attempts,
    an_mfa_token_expires_after_its_lifetime,
    wrong_codes_count_toward_the_lockout,
    enrolment_is_confirmed_by_a_code_and_can_be_removed,
    an_admin_resets_the_factors_of_a_user_who_lost_them,
    a_factor_reset_obeys_the_escalation_rule,
    wrong_confirmation_codes_count_toward_the_lockout_and_are_audited,
    a_pending_enrolment_expires_after_its_lifetime,
    a_stale_session_cannot_confirm_an_enrolment,
    recovery_codes_are_stored_keyed_and_codes_of_the_first_scheme_still_work,
);

/// POST /login with the right password: the mfa_token of the 403.
async fn mfa_token(app: &TestApp, email: &str) -> String {
    let r = app.login_reply(email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    assert_eq!(
        r.body["methods"],
        json!(["totp", "recovery_code"]),
        "{}",
        r.body
    );
    assert!(r.body.get("access_token").is_none(), "{}", r.body);
    r.body["mfa_token"].as_str().expect("mfa_token").to_string()
}

async fn second_factor(app: &TestApp, token: &str, field: &str, value: &str) -> Reply {
    app.post_json("/login/mfa", &json!({"mfa_token": token, field: value}))
        .await
}

async fn a_totp_enrolment_then_logins_with_codes_and_recovery_codes(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let me = admin(&app, &admins[0]).await;

    let r = app
        .request(Method::POST, "/mfa/totp", &me.tokens.access, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let secret = r.body["secret"].as_str().expect("secret");
    let uri = r.body["otpauth_uri"].as_str().expect("otpauth_uri");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(r.body["qr_svg"]
        .as_str()
        .is_some_and(|s| s.contains("<svg")));
    // Pending: the password alone still logs in.
    app.login(&me.email, PASSWORD).await;

    let totp = authenticator(secret);
    fresh_step().await;
    // One step behind is accepted (clock skew).
    let r = app
        .request(
            Method::POST,
            "/mfa/totp/confirm",
            &me.tokens.access,
            Some(&json!({"code": code(&totp, -1)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let recovery: Vec<String> = serde_json::from_value(r.body["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    let unique: std::collections::HashSet<_> = recovery.iter().collect();
    assert_eq!(unique.len(), 10, "{recovery:?}");

    // A wrong password is still the plain 401; the right one asks for the factor.
    app.login_reply(&me.email, "not the password at all")
        .await
        .assert_error(401, "invalid_credentials");
    let token = mfa_token(&app, &me.email).await;
    fresh_step().await;
    // Two steps behind is refused; one step ahead is accepted.
    second_factor(&app, &token, "totp", &code(&totp, -2))
        .await
        .assert_error(400, "invalid_grant");
    let ahead = code(&totp, 1);
    let r = second_factor(&app, &token, "totp", &ahead).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let access = r.body["access_token"].as_str().expect("access_token");
    let who = app.get("/session", Some(access)).await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.body);
    assert_eq!(who.body["session_id"], r.body["session_id"]);

    // The same code never works twice, even with a fresh password login.
    let token = mfa_token(&app, &me.email).await;
    second_factor(&app, &token, "totp", &ahead)
        .await
        .assert_error(400, "invalid_grant");

    // Recovery codes: each works once, typed in any case.
    let r = second_factor(&app, &token, "recovery_code", &recovery[0].to_uppercase()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = mfa_token(&app, &me.email).await;
    second_factor(&app, &token, "recovery_code", &recovery[0])
        .await
        .assert_error(400, "invalid_grant");
    let r = second_factor(&app, &token, "recovery_code", &recovery[1]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Audited and counted, never with the codes.
    let enrolled = settled(&app, &me.tokens.access, "type=mfa_enrol", 1).await;
    assert_event(
        &enrolled[0],
        "mfa_enrol",
        Some(&me.id),
        Some(&me.id),
        "success",
    );
    let used = settled(&app, &me.tokens.access, "type=mfa_verify", 6).await;
    let outcomes: Vec<&str> = used.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "success").count(),
        3,
        "{used:?}"
    );
    let text = serde_json::to_string(&used).unwrap() + &serde_json::to_string(&enrolled).unwrap();
    for secret_or_code in recovery
        .iter()
        .map(String::as_str)
        .chain([secret, ahead.as_str()])
    {
        assert!(!text.contains(secret_or_code), "{text}");
    }
    let metrics = app.scrape().await;
    for line in [
        r#"sessiond_mfa_verifications_total{method="totp",outcome="success"} 1"#,
        r#"sessiond_mfa_verifications_total{method="totp",outcome="invalid"} 1"#,
        r#"sessiond_mfa_verifications_total{method="totp",outcome="replay"} 1"#,
        r#"sessiond_mfa_verifications_total{method="recovery_code",outcome="success"} 2"#,
        r#"sessiond_mfa_verifications_total{method="recovery_code",outcome="invalid"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

async fn an_mfa_token_is_single_use_and_allows_five_attempts(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 99);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let (_totp, recovery) = enrol(&app, &me.tokens.access).await;

    // Used once: the token is gone, and the code presented with it is not spent.
    let token = mfa_token(&app, &me.email).await;
    let r = second_factor(&app, &token, "recovery_code", &recovery[0]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    second_factor(&app, &token, "recovery_code", &recovery[1])
        .await
        .assert_error(400, "invalid_grant");
    let token = mfa_token(&app, &me.email).await;
    let r = second_factor(&app, &token, "recovery_code", &recovery[1]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Five attempts, then even a right code is refused.
    let token = mfa_token(&app, &me.email).await;
    for _ in 0..5 {
        second_factor(&app, &token, "totp", "000000")
            .await
            .assert_error(400, "invalid_grant");
    }
    second_factor(&app, &token, "recovery_code", &recovery[2])
        .await
        .assert_error(400, "invalid_grant");
    // A made-up token, and malformed bodies.
    second_factor(&app, "no-such-token", "recovery_code", &recovery[2])
        .await
        .assert_error(400, "invalid_grant");
    app.post_json("/login/mfa", &json!({"mfa_token": token}))
        .await
        .assert_error(400, "invalid_request");
    app.post_json(
        "/login/mfa",
        &json!({"mfa_token": token, "totp": "123456", "recovery_code": recovery[2]}),
    )
    .await
    .assert_error(400, "invalid_request");
    // The code was never spent by the refused attempts.
    let token = mfa_token(&app, &me.email).await;
    let r = second_factor(&app, &token, "recovery_code", &recovery[2]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn wrong_codes_count_toward_the_lockout(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let (_totp, recovery) = enrol(&app, &me.tokens.access).await;
    let early = mfa_token(&app, &me.email).await;
    // Fresh passwords do not clear the failures of the second factor.
    for _ in 0..3 {
        let token = mfa_token(&app, &me.email).await;
        second_factor(&app, &token, "recovery_code", "aaaa-bbbb-cccc-dddd")
            .await
            .assert_error(400, "invalid_grant");
    }
    app.login_reply(&me.email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");
    // While locked, even a right factor on a pending login is refused.
    second_factor(&app, &early, "recovery_code", &recovery[0])
        .await
        .assert_error(429, "rate_limited");
}

async fn enrolment_is_confirmed_by_a_code_and_can_be_removed(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let access = me.tokens.access.as_str();
    let confirm = |code: String| {
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/mfa/totp/confirm",
                access,
                Some(&json!({ "code": code })),
            )
            .await
        }
    };
    // Nothing pending yet.
    confirm("123456".into()).await.assert_error(409, "conflict");
    let r = app.request(Method::POST, "/mfa/totp", access, None).await;
    let totp = authenticator(r.body["secret"].as_str().expect("secret"));
    confirm("12345".into())
        .await
        .assert_error(400, "invalid_grant");
    fresh_step().await;
    confirm(code(&totp, -2))
        .await
        .assert_error(400, "invalid_grant");
    let r = confirm(code(&totp, 0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Confirmed: a second enrolment must remove the first.
    app.request(Method::POST, "/mfa/totp", access, None)
        .await
        .assert_error(409, "conflict");
    app.post_auth("/mfa/totp/confirm", access)
        .await
        .assert_error(415, "unsupported_media_type");
    mfa_token(&app, &me.email).await;
    let r = app.request(Method::DELETE, "/mfa/totp", access, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.request(Method::DELETE, "/mfa/totp", access, None)
        .await
        .assert_error(404, "not_found");
    // The password alone logs in again.
    app.login(&me.email, PASSWORD).await;
    // Without a token, nothing.
    let r = call(&app, Method::POST, "/mfa/totp", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn an_mfa_token_expires_after_its_lifetime(backend: Backend) {
    let dep = Deployment::new(backend).await;
    assert_eq!(
        dep.config().pending_ttls.mfa_token,
        Duration::from_secs(300),
        "a pending login waits 5 minutes in production"
    );
    let app = dep
        .spawn_edited(|c| c.pending_ttls.mfa_token = Duration::from_secs(2))
        .await;
    let me = plain(&app).await;
    let (_totp, recovery) = enrol(&app, &me.tokens.access).await;
    let token = mfa_token(&app, &me.email).await;
    if backend == Backend::Services {
        // Kept in Redis under a keyed hash of the token (not its plain SHA-256, which anyone
        // could compute for a token of his choice), with the lifetime as its TTL.
        let digest: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let client = redis::Client::open(redis_url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}mfa:*", dep.prefix))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let key = &keys[0];
        assert_ne!(*key, format!("{}mfa:{digest}", dep.prefix));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 2000, "{key}: {ttl} ms");
    }

    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    second_factor(&app, &token, "recovery_code", &recovery[0])
        .await
        .assert_error(400, "invalid_grant");
    // The refused attempt did not spend the code.
    let token = mfa_token(&app, &me.email).await;
    let r = second_factor(&app, &token, "recovery_code", &recovery[0]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Replayed after its success: refused like an expired one, and counted as such.
    second_factor(&app, &token, "recovery_code", &recovery[1])
        .await
        .assert_error(400, "invalid_grant");
    let metrics = app.scrape().await;
    let line =
        r#"sessiond_mfa_verifications_total{method="recovery_code",outcome="invalid_token"} 2"#;
    assert!(metrics.contains(line), "{line} in\n{metrics}");
}

/// The rows of `query` on the deployment's database, each column as text.
async fn rows(dep: &Deployment, query: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    let found = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            query.to_string(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let _ = db.close().await;
    found
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.try_get::<String>("", c).expect("a text column"))
                .collect()
        })
        .collect()
}

async fn reset(app: &TestApp, token: &str, user_id: &str) -> Reply {
    delete_as(app, token, &format!("/admin/users/{user_id}/mfa")).await
}

async fn an_admin_resets_the_factors_of_a_user_who_lost_them(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    // Nobody listens there: the events stay in the outbox, where they are read.
    dep.set("WEBHOOK_URLS", "http://127.0.0.1:9/hooks")
        .set("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let boss = root.tokens.access.as_str();
    let user = plain(&app).await;
    let (_totp, lost) = enrol(&app, &user.tokens.access).await;

    // Without users:write: refused, and the factor stays.
    let stranger = plain(&app).await;
    reset(&app, &stranger.tokens.access, &user.id)
        .await
        .assert_error(403, "forbidden");
    mfa_token(&app, &user.email).await;

    let r = reset(&app, boss, &user.id).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The password alone logs in; the sessions the user had live on.
    app.login(&user.email, PASSWORD).await;
    let s = app.get("/session", Some(&user.tokens.access)).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.body);
    // The recovery codes went with the authenticator: after a new enrolment, only its own work.
    let (_totp, fresh) = enrol(&app, &user.tokens.access).await;
    let token = mfa_token(&app, &user.email).await;
    second_factor(&app, &token, "recovery_code", &lost[0])
        .await
        .assert_error(400, "invalid_grant");
    let r = second_factor(&app, &token, "recovery_code", &fresh[0]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Again, then once more with nothing left: 204 both times, but only a removal is reported.
    for _ in 0..2 {
        let r = reset(&app, boss, &user.id).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    app.login(&user.email, PASSWORD).await;
    // An unknown account, a malformed id, and the caller's own account.
    reset(&app, boss, &uuid::Uuid::new_v4().to_string())
        .await
        .assert_error(404, "not_found");
    reset(&app, boss, "not-a-uuid")
        .await
        .assert_error(400, "invalid_request");
    reset(&app, boss, &root.id)
        .await
        .assert_error(403, "forbidden");

    // Audited (admin → user, the methods, no secret), mailed and reported once per removal.
    // (The caller is the actor of all three: the two resets and its own refusal.)
    let query = format!("type=mfa_reset&user_id={}", root.id);
    let events = settled(&app, boss, &query, 3).await;
    let (done, own): (Vec<Value>, Vec<Value>) =
        events.into_iter().partition(|e| e["outcome"] == "success");
    assert_eq!(done.len(), 2, "{done:?}");
    for e in &done {
        assert_event(e, "mfa_reset", Some(&root.id), Some(&user.id), "success");
        assert_eq!(e["detail"], json!({"methods": ["totp"]}), "{e}");
    }
    let text = serde_json::to_string(&done).unwrap();
    assert!(lost
        .iter()
        .chain(&fresh)
        .all(|c| !text.contains(c.as_str())));
    assert_event(
        &own[0],
        "mfa_reset",
        Some(&root.id),
        Some(&root.id),
        "denied",
    );
    assert_eq!(own[0]["detail"]["reason"], "own_factors");
    let mails = rows(
        &dep,
        "SELECT recipient FROM mail_outbox WHERE kind = 'mfa_reset'",
        &["recipient"],
    )
    .await;
    assert_eq!(mails, vec![vec![user.email.clone()]; 2]);
    let hooks = rows(
        &dep,
        "SELECT payload FROM webhook_outbox WHERE event_type = 'user.mfa_reset'",
        &["payload"],
    )
    .await;
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    for payload in hooks {
        let v: Value = serde_json::from_str(&payload[0]).unwrap();
        assert_eq!(v["type"], "user.mfa_reset");
        assert_eq!(v["data"], json!({"user_id": user.id, "methods": ["totp"]}));
    }
}

async fn a_factor_reset_obeys_the_escalation_rule(backend: Backend) {
    let (dep, admins) = with_admins(backend, 2).await;
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let boss = root.tokens.access.as_str();
    let other_admin = admin(&app, &admins[1]).await;
    enrol(&app, &other_admin.tokens.access).await;
    let r = create_role(&app, boss, "helpdesk", &["users:write"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let desk = plain(&app).await;
    let r = set_roles(&app, boss, &desk.id, &["helpdesk", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = desk.tokens.access.as_str();

    // An admin holds more than the helpdesk: refused, the factor stays.
    reset(&app, d, &other_admin.id)
        .await
        .assert_error(403, "forbidden");
    mfa_token(&app, &other_admin.email).await;
    // A plain user does not.
    let user = plain(&app).await;
    enrol(&app, &user.tokens.access).await;
    let r = reset(&app, d, &user.id).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.login(&user.email, PASSWORD).await;

    let query = format!("type=mfa_reset&user_id={}", other_admin.id);
    let denied = settled(&app, boss, &query, 1).await;
    let about = Some(other_admin.id.as_str());
    assert_event(&denied[0], "mfa_reset", Some(&desk.id), about, "denied");
    assert_eq!(denied[0]["detail"]["reason"], "escalation");
    assert_eq!(denied[0]["detail"]["admin_role_required"], true);
}

/// A 6-digit code the authenticator shows in none of the steps the server accepts.
fn wrong_code(totp: &Totp) -> String {
    let accepted: Vec<String> = (-2..=2).map(|o| code(totp, o)).collect();
    (0..)
        .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !accepted.contains(c))
        .expect("a wrong code")
}

async fn start(app: &TestApp, token: &str) -> Totp {
    let r = app.request(Method::POST, "/mfa/totp", token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    authenticator(r.body["secret"].as_str().expect("secret"))
}

async fn confirm(app: &TestApp, token: &str, code: &str) -> Reply {
    app.request(
        Method::POST,
        "/mfa/totp/confirm",
        token,
        Some(&json!({ "code": code })),
    )
    .await
}

async fn wrong_confirmation_codes_count_toward_the_lockout_and_are_audited(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600);
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    // A stolen access token of an account whose owner started an enrolment.
    let user = plain(&app).await;
    let stolen = user.tokens.access.as_str();
    let totp = start(&app, stolen).await;
    fresh_step().await;
    let wrong = wrong_code(&totp);
    for _ in 0..3 {
        confirm(&app, stolen, &wrong)
            .await
            .assert_error(400, "invalid_grant");
    }
    // Locked: even the right code is refused, as a locked login is.
    let r = confirm(&app, stolen, &code(&totp, 0)).await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s > 0),
        "{:?}",
        r.header("retry-after")
    );
    // The guesses count toward the account's login lockout.
    app.login_reply(&user.email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");

    // Audited: three failures and the refusal, with the reason and no code.
    let query = format!("type=mfa_enrol&user_id={}", user.id);
    let events = settled(&app, &root.tokens.access, &query, 4).await;
    let me = Some(user.id.as_str());
    assert_event(&events[0], "mfa_enrol", me, me, "denied");
    assert_eq!(
        events[0]["detail"],
        json!({"method": "totp", "reason": "locked"})
    );
    for e in &events[1..] {
        assert_event(e, "mfa_enrol", me, me, "failure");
        assert_eq!(
            e["detail"],
            json!({"method": "totp", "reason": "invalid_code"})
        );
    }
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&wrong), "{text}");
    // Still pending, not confirmed: the password alone logs in once the lock is over.
    let pending = rows(
        &dep,
        "SELECT CAST(COUNT(*) AS TEXT) AS n FROM mfa_totp WHERE confirmed_at IS NULL",
        &["n"],
    )
    .await;
    assert_eq!(pending, vec![vec!["1".to_string()]]);
}

async fn a_pending_enrolment_expires_after_its_lifetime(backend: Backend) {
    let dep = Deployment::new(backend).await;
    assert_eq!(
        dep.config().pending_ttls.totp_enrolment,
        Duration::from_secs(600),
        "a pending enrolment waits 10 minutes in production"
    );
    let app = dep
        .spawn_edited(|c| c.pending_ttls.totp_enrolment = Duration::from_secs(5))
        .await;
    let me = plain(&app).await;
    let access = me.tokens.access.as_str();
    let totp = start(&app, access).await;
    actix_web::rt::time::sleep(Duration::from_millis(5500)).await;
    fresh_step().await;
    // Too old: as if nothing were pending, and the row is gone.
    confirm(&app, access, &code(&totp, 0))
        .await
        .assert_error(409, "conflict");
    let left = rows(
        &dep,
        "SELECT CAST(COUNT(*) AS TEXT) AS n FROM mfa_totp",
        &["n"],
    )
    .await;
    assert_eq!(left, vec![vec!["0".to_string()]]);
    // The password alone logs in; a new enrolment, confirmed in time, works.
    app.login(&me.email, PASSWORD).await;
    fresh_step().await;
    let totp = start(&app, access).await;
    let r = confirm(&app, access, &code(&totp, 0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    mfa_token(&app, &me.email).await;
}

async fn a_stale_session_cannot_confirm_an_enrolment(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("STEP_UP_MAX_AGE", 2);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let access = me.tokens.access.as_str();
    let totp = start(&app, access).await;
    // Well past STEP_UP_MAX_AGE.
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    fresh_step().await;
    let r = confirm(&app, access, &code(&totp, 0)).await;
    r.assert_error(403, "reauthentication_required");
    // Nothing was enrolled.
    app.login(&me.email, PASSWORD).await;
    // Once reauthenticated, the same pending enrolment confirms.
    let r = app
        .request(
            Method::POST,
            "/reauthenticate",
            access,
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = confirm(&app, access, &code(&totp, 0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    mfa_token(&app, &me.email).await;
}

/// Runs `statement` on the deployment's database.
async fn execute(dep: &Deployment, statement: &str) {
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        statement.to_string(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let _ = db.close().await;
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the first scheme stored a code: SHA-256 of the normalized code, no key, no salt.
fn first_scheme_hash(code: &str) -> String {
    let normalized: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
    sha256_hex(&format!("sessiond/recovery-code/v1:{normalized}"))
}

async fn recovery_codes_are_stored_keyed_and_codes_of_the_first_scheme_still_work(
    backend: Backend,
) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let (_totp, codes) = enrol(&app, &me.tokens.access).await;
    let stored: Vec<String> = rows(
        &dep,
        "SELECT code_hash FROM mfa_recovery_codes",
        &["code_hash"],
    )
    .await
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(stored.len(), 10, "{stored:?}");
    for code in &codes {
        let normalized: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
        for plain in [
            sha256_hex(code),
            sha256_hex(&normalized),
            first_scheme_hash(code),
        ] {
            assert!(
                stored.iter().all(|s| !s.contains(&plain)),
                "{plain} in {stored:?}"
            );
        }
    }
    assert!(stored.iter().all(|s| s.starts_with("v2:")), "{stored:?}");
    let token = mfa_token(&app, &me.email).await;
    let r = second_factor(&app, &token, "recovery_code", &codes[0]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // An account whose codes the first scheme stored: they keep working. Here every unused
    // row is spoiled, then one holds the first scheme's hash of a code.
    execute(
        &dep,
        "UPDATE mfa_recovery_codes SET code_hash = 'gone' || SUBSTR(code_hash, 4) \
         WHERE used_at IS NULL",
    )
    .await;
    execute(
        &dep,
        &format!(
            "UPDATE mfa_recovery_codes SET code_hash = '{}' WHERE code_hash = \
             (SELECT MAX(code_hash) FROM mfa_recovery_codes WHERE used_at IS NULL)",
            first_scheme_hash(&codes[1])
        ),
    )
    .await;
    let token = mfa_token(&app, &me.email).await;
    // (The row of this code is spoiled.)
    second_factor(&app, &token, "recovery_code", &codes[2])
        .await
        .assert_error(400, "invalid_grant");
    let r = second_factor(&app, &token, "recovery_code", &codes[1]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let spent = rows(
        &dep,
        "SELECT CAST(COUNT(*) AS TEXT) AS n FROM mfa_recovery_codes WHERE used_at IS NOT NULL",
        &["n"],
    )
    .await;
    assert_eq!(spent, vec![vec!["2".to_string()]]);
}
