//! Passkeys (WebAuthn) with webauthn-authenticator-rs's software passkey standing in for the
//! browser and the authenticator: the options sessiond answers are handed to it as a browser
//! would, and its output sent back over plain HTTP. Registration and listing, the passkey as a
//! second factor at POST /login/mfa, passwordless sign-in, wrong origins, replayed ceremonies,
//! deletion, and another account's credential.
use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    both_backends, services_only,
    support::passkey::{register, step_up_start, Passkey, ORIGIN, RP_ID},
    support::*,
};

both_backends!(
    a_passkey_is_registered_listed_and_used_as_a_second_factor,
    a_discoverable_passkey_signs_in_without_a_password,
    ceremonies_from_another_origin_are_refused,
    replayed_ceremonies_are_refused,
    a_deleted_passkey_no_longer_signs_in_and_others_cannot_delete_it,
    without_a_relying_party_webauthn_is_off,
    passkey_sign_in_refuses_disabled_accounts_and_is_limited_per_address,
    an_admin_reset_removes_the_passkeys,
    a_passkey_only_account_steps_up_with_its_passkey,
    a_step_up_assertion_answers_only_its_sessions_challenge_from_an_allowed_origin,
    a_passkey_step_up_lifts_the_limit_of_a_role_that_requires_mfa,
    passkey_names_are_held_to_the_documented_schema,
    a_stale_session_cannot_finish_a_passkey_registration,
    raced_assertions_with_the_same_counter_are_accepted_once,
    every_way_in_is_counted_in_logins_total,
);

services_only!(a_ceremony_started_on_one_pod_finishes_on_another);

/// On the relying party's domain (so the authenticator accepts it), but not an allowed origin.
const EVIL_ORIGIN: &str = "https://evil.example.com";

async fn deployment(backend: Backend) -> Deployment {
    let mut dep = Deployment::new(backend).await;
    dep.set("WEBAUTHN_RP_ID", RP_ID)
        .set("WEBAUTHN_ORIGINS", ORIGIN)
        .set("WEBAUTHN_RP_NAME", "sessiond tests");
    dep
}

/// Starts a registration for the account of `token` (no name) and has `key` answer it as the
/// browser at `origin` would: the answer for POST /mfa/webauthn/register/finish.
async fn registration_answer(app: &TestApp, token: &str, key: &mut Passkey, origin: &str) -> Value {
    let r = app
        .request(Method::POST, "/mfa/webauthn/register/start", token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    key.create(&r.body, origin)
}

async fn list(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app
        .request(Method::GET, "/mfa/webauthn/credentials", token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

/// POST /login/passkey/start: the passkey_token and the options.
async fn sign_in_start(app: &TestApp) -> (String, Value) {
    let r = app.post_json("/login/passkey/start", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["options"]["publicKey"]["allowCredentials"],
        json!([]),
        "{}",
        r.body
    );
    (
        r.body["passkey_token"]
            .as_str()
            .expect("passkey_token")
            .to_string(),
        r.body["options"].clone(),
    )
}

async fn sign_in_finish(app: &TestApp, passkey_token: &str, credential: &Value) -> Reply {
    app.post_json(
        "/login/passkey/finish",
        &json!({ "passkey_token": passkey_token, "credential": credential }),
    )
    .await
}

async fn a_passkey_is_registered_listed_and_used_as_a_second_factor(backend: Backend) {
    let mut dep = deployment(backend).await;
    let admins = [unique_email("admin")];
    dep.set("ADMIN_EMAILS", &admins[0]);
    let app = dep.spawn().await;
    // An admin, to read its own audit trail.
    let me = admin(&app, &admins[0]).await;
    let token = me.tokens.access.as_str();
    assert!(list(&app, token).await.is_empty());

    let mut key = Passkey::new();
    let created = register(&app, token, &mut key, "Laptop").await;
    assert_eq!(created["name"], "Laptop");
    assert!(created["created_at"].is_string(), "{created}");
    assert_eq!(created["last_used_at"], Value::Null);
    let listed = list(&app, token).await;
    assert_eq!(listed, vec![created.clone()]);
    // The same authenticator cannot register twice: it is excluded, and refused.
    let r = app
        .request(Method::POST, "/mfa/webauthn/register/start", token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let excluded = r.body["publicKey"]["excludeCredentials"][0]["id"]
        .as_str()
        .expect("excluded credential");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(excluded).unwrap(),
        key.credential_id.clone().unwrap()
    );

    // The password now asks for the passkey, with the challenge in the 403.
    let r = app.login_reply(&me.email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    assert_eq!(r.body["methods"], json!(["webauthn"]), "{}", r.body);
    let mfa_token = r.body["mfa_token"].as_str().expect("mfa_token").to_string();
    let options = r.body["webauthn"].clone();
    let allowed = options["publicKey"]["allowCredentials"][0]["id"]
        .as_str()
        .expect("allowed credential");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(allowed).unwrap(),
        key.credential_id.clone().unwrap()
    );
    // Neither a code nor a malformed assertion passes.
    app.post_json(
        "/login/mfa",
        &json!({ "mfa_token": mfa_token, "totp": "123456" }),
    )
    .await
    .assert_error(400, "invalid_grant");
    app.post_json(
        "/login/mfa",
        &json!({ "mfa_token": mfa_token, "webauthn": {"id": "x"} }),
    )
    .await
    .assert_error(400, "invalid_request");
    let assertion = key.get(&options, ORIGIN);
    let r = app
        .post_json(
            "/login/mfa",
            &json!({ "mfa_token": mfa_token, "webauthn": assertion }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["access_token"].is_string(), "{}", r.body);
    let amr = claims_of(r.body["access_token"].as_str().unwrap())["amr"].clone();
    assert!(
        amr == json!(["pwd", "hwk", "mfa"]) || amr == json!(["pwd", "swk", "mfa"]),
        "{amr}"
    );
    // The assertion and the mfa_token are spent.
    app.post_json(
        "/login/mfa",
        &json!({ "mfa_token": mfa_token, "webauthn": assertion }),
    )
    .await
    .assert_error(400, "invalid_grant");
    let used = list(&app, token).await;
    assert!(used[0]["last_used_at"].is_string(), "{used:?}");
    let enrolled = settled(&app, token, "type=mfa_enrol", 1).await;
    assert_event(
        &enrolled[0],
        "mfa_enrol",
        Some(&me.id),
        Some(&me.id),
        "success",
    );
    assert_eq!(enrolled[0]["detail"]["method"], "webauthn");
    assert_eq!(enrolled[0]["detail"]["credential"], created["id"]);
    let verified = settled(&app, token, "type=mfa_verify", 2).await;
    assert_eq!(verified[0]["outcome"], "success", "{verified:?}");
    assert_eq!(verified[0]["detail"], json!({"method": "webauthn"}));
    assert_eq!(verified[1]["outcome"], "failure", "{verified:?}");
    // No challenge, assertion or key material in the trail.
    let text = serde_json::to_string(&verified).unwrap() + &enrolled[0].to_string();
    assert!(!text.contains(allowed), "{text}");
    let challenge = options["publicKey"]["challenge"].as_str().unwrap();
    assert!(!text.contains(challenge), "{text}");
}

async fn a_discoverable_passkey_signs_in_without_a_password(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let mut key = Passkey::new();
    register(&app, &me.tokens.access, &mut key, "Phone").await;

    let (passkey_token, options) = sign_in_start(&app).await;
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let assertion = key.get(&options, ORIGIN);
    let r = sign_in_finish(&app, &passkey_token, &assertion).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let access = r.body["access_token"].as_str().expect("access_token");
    assert_eq!(claims_of(access)["sub"], me.id.as_str());
    // The key alone signed in: its own amr, hwk (or swk for a synced passkey).
    let amr = claims_of(access)["amr"].clone();
    assert!(amr == json!(["hwk"]) || amr == json!(["swk"]), "{amr}");
    // The session is a real one: the profile answers, and it refreshes.
    let profile = app.get("/profile", Some(access)).await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.body);
    assert_eq!(profile.body["email"], me.email.as_str());
    let refreshed = refresh(&app, r.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    // A second sign-in: the signature counter moved on and is accepted.
    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, ORIGIN);
    let r = sign_in_finish(&app, &passkey_token, &assertion).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn ceremonies_from_another_origin_are_refused(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    // A registration made for another origin.
    let mut evil = Passkey::new();
    let answer = registration_answer(&app, token, &mut evil, EVIL_ORIGIN).await;
    app.request(
        Method::POST,
        "/mfa/webauthn/register/finish",
        token,
        Some(&answer),
    )
    .await
    .assert_error(400, "invalid_grant");
    assert!(list(&app, token).await.is_empty());

    // An assertion made for another origin: refused at sign-in and as a second factor.
    let mut key = Passkey::new();
    register(&app, token, &mut key, "Passkey").await;
    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, EVIL_ORIGIN);
    sign_in_finish(&app, &passkey_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    let r = app.login_reply(&me.email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    let mfa_token = r.body["mfa_token"].as_str().unwrap().to_string();
    let evil_assertion = key.get(&r.body["webauthn"], EVIL_ORIGIN);
    app.post_json(
        "/login/mfa",
        &json!({ "mfa_token": mfa_token, "webauthn": evil_assertion }),
    )
    .await
    .assert_error(400, "invalid_grant");
    // The same pending login still takes the right answer (one attempt spent).
    let good = key.get(&r.body["webauthn"], ORIGIN);
    let r = app
        .post_json(
            "/login/mfa",
            &json!({ "mfa_token": mfa_token, "webauthn": good }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn replayed_ceremonies_are_refused(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    let mut key = Passkey::new();
    let answer = registration_answer(&app, token, &mut key, ORIGIN).await;
    let finish = || {
        app.request(
            Method::POST,
            "/mfa/webauthn/register/finish",
            token,
            Some(&answer),
        )
    };
    let r = finish().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "Passkey");
    // The registration's challenge is spent.
    finish().await.assert_error(400, "invalid_grant");
    assert_eq!(list(&app, token).await.len(), 1);

    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, ORIGIN);
    let r = sign_in_finish(&app, &passkey_token, &assertion).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The same assertion again, and with a fresh passkey_token (another challenge).
    sign_in_finish(&app, &passkey_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    let (fresh, _) = sign_in_start(&app).await;
    sign_in_finish(&app, &fresh, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    // An unknown passkey_token.
    sign_in_finish(&app, "not-a-token", &assertion)
        .await
        .assert_error(400, "invalid_grant");
}

async fn a_deleted_passkey_no_longer_signs_in_and_others_cannot_delete_it(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let other = plain(&app).await;
    let mut key = Passkey::new();
    let created = register(&app, &me.tokens.access, &mut key, "Key").await;
    let id = created["id"].as_str().expect("id");
    let path = format!("/mfa/webauthn/credentials/{id}");

    // Another account's credential is not found, and stays.
    app.request(Method::DELETE, &path, &other.tokens.access, None)
        .await
        .assert_error(404, "not_found");
    assert_eq!(list(&app, &me.tokens.access).await.len(), 1);
    assert!(list(&app, &other.tokens.access).await.is_empty());
    app.request(
        Method::DELETE,
        "/mfa/webauthn/credentials/not-a-uuid",
        &me.tokens.access,
        None,
    )
    .await
    .assert_error(400, "invalid_request");

    let r = app
        .request(Method::DELETE, &path, &me.tokens.access, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(list(&app, &me.tokens.access).await.is_empty());
    app.request(Method::DELETE, &path, &me.tokens.access, None)
        .await
        .assert_error(404, "not_found");
    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, ORIGIN);
    sign_in_finish(&app, &passkey_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    // The password alone logs in again.
    let r = app.login_reply(&me.email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn an_admin_reset_removes_the_passkeys(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("WEBAUTHN_RP_ID", RP_ID)
        .set("WEBAUTHN_ORIGINS", ORIGIN)
        .set("WEBAUTHN_RP_NAME", "sessiond tests");
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let me = plain(&app).await;
    let mut key = Passkey::new();
    register(&app, &me.tokens.access, &mut key, "Lost key").await;

    let r = delete_as(
        &app,
        &root.tokens.access,
        &format!("/admin/users/{}/mfa", me.id),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(list(&app, &me.tokens.access).await.is_empty());
    // The lost passkey no longer signs in, and the password alone logs in.
    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, ORIGIN);
    sign_in_finish(&app, &passkey_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    let r = app.login_reply(&me.email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Audited with the method it removed.
    let query = format!("type=mfa_reset&user_id={}", root.id);
    let events = settled(&app, &root.tokens.access, &query, 1).await;
    assert_eq!(
        events[0]["detail"],
        json!({"methods": ["webauthn"]}),
        "{}",
        events[0]
    );
}

async fn without_a_relying_party_webauthn_is_off(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    app.request(Method::POST, "/mfa/webauthn/register/start", token, None)
        .await
        .assert_error(404, "not_found");
    app.request(Method::GET, "/mfa/webauthn/credentials", token, None)
        .await
        .assert_error(404, "not_found");
    app.post_json("/login/passkey/start", &json!({}))
        .await
        .assert_error(404, "not_found");
    app.request(Method::POST, "/reauthenticate/passkey/start", token, None)
        .await
        .assert_error(404, "not_found");
}

async fn passkey_sign_in_refuses_disabled_accounts_and_is_limited_per_address(backend: Backend) {
    let mut dep = deployment(backend).await;
    let admins = [unique_email("admin")];
    dep.set("ADMIN_EMAILS", &admins[0])
        .set("TRUSTED_PROXIES", "127.0.0.1/32")
        .set("RATE_LIMIT_LOGIN_PER_IP", 6);
    let app = dep.spawn().await;
    let boss = admin(&app, &admins[0]).await;
    let me = plain(&app).await;
    let mut key = Passkey::new();
    register(&app, &me.tokens.access, &mut key, "Key").await;

    // Disabled: the passkey no longer opens a session.
    let r = call(
        &app,
        Method::POST,
        &format!("/admin/users/{}/disable", me.id),
        Some(&boss.tokens.access),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let (passkey_token, options) = sign_in_start(&app).await;
    let assertion = key.get(&options, ORIGIN);
    sign_in_finish(&app, &passkey_token, &assertion)
        .await
        .assert_error(401, "invalid_credentials");

    // One client address gets RATE_LIMIT_LOGIN_PER_IP steps; another is not held back.
    let start_from = |client: &'static str| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(app.url("/login/passkey/start"))
                .header("x-forwarded-for", client)
                .send()
                .await
                .expect("request sent");
            Reply::read(res).await
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(start_from("192.0.2.7").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429]);
    let r = start_from("192.0.2.7").await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(start_from("192.0.2.8").await.status, StatusCode::OK);
}

async fn a_ceremony_started_on_one_pod_finishes_on_another() {
    let dep = deployment(Backend::Services).await;
    let (a, b) = (dep.spawn().await, dep.spawn().await);
    let me = plain(&a).await;
    let token = me.tokens.access.as_str();
    let mut key = Passkey::new();
    let answer = registration_answer(&a, token, &mut key, ORIGIN).await;
    let r = b
        .request(
            Method::POST,
            "/mfa/webauthn/register/finish",
            token,
            Some(&answer),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let (passkey_token, options) = sign_in_start(&a).await;
    let assertion = key.get(&options, ORIGIN);
    let r = sign_in_finish(&b, &passkey_token, &assertion).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Spent for every pod.
    sign_in_finish(&a, &passkey_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");

    let r = a.login_reply(&me.email, PASSWORD).await;
    r.assert_error(403, "mfa_required");
    let assertion = key.get(&r.body["webauthn"], ORIGIN);
    let r = b
        .post_json(
            "/login/mfa",
            &json!({ "mfa_token": r.body["mfa_token"], "webauthn": assertion }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// Short enough to wait out, long enough for the calls right after a reauthentication.
const STEP_UP_MAX_AGE: u64 = 2;

/// Waits (generously) until the session's authentication is older than STEP_UP_MAX_AGE (DELETE
/// /mfa/totp, with no authenticator to remove, answers 404 until then), then checks that the
/// passkey `id` can no longer be deleted with `token`.
async fn until_stale(app: &TestApp, token: &str, id: &str) {
    let stale = eventually(
        Duration::from_secs(STEP_UP_MAX_AGE * 5 + 5),
        Duration::from_millis(200),
        async || {
            app.request(Method::DELETE, "/mfa/totp", token, None)
                .await
                .status
                == StatusCode::FORBIDDEN
        },
    )
    .await;
    assert!(stale, "the authentication never became too old");
    let path = format!("/mfa/webauthn/credentials/{id}");
    app.request(Method::DELETE, &path, token, None)
        .await
        .assert_error(403, "reauthentication_required");
}

async fn reauthenticate(app: &TestApp, token: &str, body: Value) -> Reply {
    app.request(Method::POST, "/reauthenticate", token, Some(&body))
        .await
}

/// A second session of the passkey's account, signed in with the passkey.
async fn second_session(app: &TestApp, key: &mut Passkey) -> String {
    let (passkey_token, options) = sign_in_start(app).await;
    let assertion = key.get(&options, ORIGIN);
    let r = sign_in_finish(app, &passkey_token, &assertion).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

async fn a_passkey_only_account_steps_up_with_its_passkey(backend: Backend) {
    let mut dep = deployment(backend).await;
    dep.set("STEP_UP_MAX_AGE", STEP_UP_MAX_AGE);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    let mut key = Passkey::new();
    let created = register(&app, token, &mut key, "Laptop").await;
    let id = created["id"].as_str().expect("id");
    until_stale(&app, token, id).await;

    // The password alone is not enough for an account with a passkey.
    reauthenticate(&app, token, json!({"password": PASSWORD}))
        .await
        .assert_error(400, "invalid_request");
    // Nothing at all, or two factors at once: refused before anything is checked.
    reauthenticate(&app, token, json!({}))
        .await
        .assert_error(400, "invalid_request");

    // The password and the passkey, answering this session's challenge.
    let options = step_up_start(&app, token).await;
    let allowed = options["publicKey"]["allowCredentials"][0]["id"]
        .as_str()
        .expect("the account's passkey is allowed");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(allowed).unwrap(),
        key.credential_id.clone().unwrap()
    );
    let assertion = key.get(&options, ORIGIN);
    reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "totp": "123456", "webauthn": assertion}),
    )
    .await
    .assert_error(400, "invalid_request");
    let r = reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "webauthn": assertion}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let refreshed = refresh(&app, &me.tokens.refresh).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let amr = claims_of(refreshed.body["access_token"].as_str().unwrap())["amr"].clone();
    assert!(
        amr == json!(["pwd", "hwk", "mfa"]) || amr == json!(["pwd", "swk", "mfa"]),
        "{amr}"
    );
    // The same assertion again: its challenge is spent.
    reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "webauthn": assertion}),
    )
    .await
    .assert_error(400, "invalid_grant");
    // Nor does it answer a new challenge.
    step_up_start(&app, token).await;
    reauthenticate(&app, token, json!({"webauthn": assertion}))
        .await
        .assert_error(400, "invalid_grant");

    // The passkey alone (it verifies its user) is enough too.
    let options = step_up_start(&app, token).await;
    let r = reauthenticate(&app, token, json!({"webauthn": key.get(&options, ORIGIN)})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app.get("/session", Some(token)).await;
    let amr = r.body["amr"].clone();
    assert!(amr == json!(["hwk"]) || amr == json!(["swk"]), "{}", r.body);

    // The change the stale session was refused now goes through, with the same token.
    let r = app
        .request(
            Method::DELETE,
            &format!("/mfa/webauthn/credentials/{id}"),
            token,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(list(&app, token).await.is_empty());
    // No passkey left: nothing to start.
    app.request(Method::POST, "/reauthenticate/passkey/start", token, None)
        .await
        .assert_error(409, "conflict");
}

async fn a_step_up_assertion_answers_only_its_sessions_challenge_from_an_allowed_origin(
    backend: Backend,
) {
    let mut dep = deployment(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    let mut key = Passkey::new();
    register(&app, token, &mut key, "Laptop").await;
    let other = second_session(&app, &mut key).await;

    // An answer to this session's challenge, sent by another session of the same account.
    let options = step_up_start(&app, token).await;
    let assertion = key.get(&options, ORIGIN);
    reauthenticate(&app, &other, json!({"webauthn": assertion}))
        .await
        .assert_error(400, "invalid_grant");
    // Even when that session started a challenge of its own.
    step_up_start(&app, &other).await;
    reauthenticate(&app, &other, json!({"webauthn": assertion}))
        .await
        .assert_error(400, "invalid_grant");
    // Made for another origin.
    let options = step_up_start(&app, token).await;
    reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "webauthn": key.get(&options, EVIL_ORIGIN)}),
    )
    .await
    .assert_error(400, "invalid_grant");
    // Each counted toward the account's lockout: now even a right answer is refused.
    let options = step_up_start(&app, token).await;
    reauthenticate(&app, token, json!({"webauthn": key.get(&options, ORIGIN)}))
        .await
        .assert_error(429, "rate_limited");

    // An account without a passkey has nothing to start.
    let plain_user = plain(&app).await;
    app.request(
        Method::POST,
        "/reauthenticate/passkey/start",
        &plain_user.tokens.access,
        None,
    )
    .await
    .assert_error(409, "conflict");
}

/// REQUIRE_MFA_FOR_ROLES: a password session limited for want of a second factor registers a
/// passkey, then steps up with it (the start is open to it) and is no longer limited.
async fn a_passkey_step_up_lifts_the_limit_of_a_role_that_requires_mfa(backend: Backend) {
    let mut dep = deployment(backend).await;
    dep.set("REQUIRE_MFA_FOR_ROLES", "user");
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    let r = app.get("/sessions", Some(token)).await;
    r.assert_error(403, "forbidden");
    assert_eq!(r.body["reason"], "mfa_enrolment_required", "{}", r.body);
    let mut key = Passkey::new();
    register(&app, token, &mut key, "Laptop").await;
    app.get("/sessions", Some(token))
        .await
        .assert_error(403, "forbidden");

    let options = step_up_start(&app, token).await;
    let r = reauthenticate(
        &app,
        token,
        json!({"password": PASSWORD, "webauthn": key.get(&options, ORIGIN)}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app.get("/sessions", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// The registration's optional body as API.md describes it: none or `null` names the passkey
/// `Passkey`; a name is 1 to 64 characters as sent, without control characters, and trimmed.
async fn passkey_names_are_held_to_the_documented_schema(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    let token = tokens.access.as_str();
    let start = async |body: Option<&Value>| {
        app.request(Method::POST, "/mfa/webauthn/register/start", token, body)
            .await
    };
    for body in [
        None,
        Some(&Value::Null),
        Some(&json!({})),
        Some(&json!({"name": null})),
    ] {
        let r = start(body).await;
        assert_eq!(r.status, StatusCode::OK, "{body:?}: {}", r.body);
    }
    for name in [
        "".to_string(),
        "   ".to_string(),
        "a\tb".to_string(),
        "c1\u{85}".to_string(),
        "é".repeat(65),
        format!(" {}", "a".repeat(64)),
    ] {
        start(Some(&json!({ "name": name })))
            .await
            .assert_error(400, "invalid_request");
    }
    start(Some(&json!({"name": "x", "other": 1})))
        .await
        .assert_error(400, "invalid_request");
    // A name that is fine is kept, trimmed.
    let mut key = Passkey::new();
    let created = register(&app, token, &mut key, &format!(" {} ", "é".repeat(62))).await;
    assert_eq!(created["name"], "é".repeat(62));
}

async fn a_stale_session_cannot_finish_a_passkey_registration(backend: Backend) {
    let mut dep = deployment(backend).await;
    dep.set("STEP_UP_MAX_AGE", STEP_UP_MAX_AGE);
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let token = me.tokens.access.as_str();
    // Started while recent; finished once it is not.
    let mut key = Passkey::new();
    let answer = registration_answer(&app, token, &mut key, ORIGIN).await;
    actix_web::rt::time::sleep(Duration::from_secs(STEP_UP_MAX_AGE + 2)).await;
    let finish = || {
        app.request(
            Method::POST,
            "/mfa/webauthn/register/finish",
            token,
            Some(&answer),
        )
    };
    finish()
        .await
        .assert_error(403, "reauthentication_required");
    assert!(list(&app, token).await.is_empty());
    // Reauthenticated, the same ceremony finishes.
    let r = reauthenticate(&app, token, json!({"password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = finish().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(list(&app, token).await.len(), 1);
}

async fn raced_assertions_with_the_same_counter_are_accepted_once(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let me = plain(&app).await;
    let mut key = Passkey::new();
    register(&app, &me.tokens.access, &mut key, "Laptop").await;
    // A clone of the authenticator: the same key, its own copy of the signature counter.
    // SoftPasskey is not Clone; the bitwise copy shares the key map, which signing only reads,
    // and is never dropped (so the map is freed once).
    let mut clone = std::mem::ManuallyDrop::new(Passkey {
        // SAFETY: see above; `key` outlives every use of the copy.
        soft: unsafe { std::ptr::read(&key.soft) },
        credential_id: key.credential_id.clone(),
        user_handle: key.user_handle.clone(),
    });
    let (first, options) = sign_in_start(&app).await;
    let original = key.get(&options, ORIGIN);
    let (second, options) = sign_in_start(&app).await;
    let cloned = clone.get(&options, ORIGIN);
    let (a, b) = tokio::join!(
        sign_in_finish(&app, &first, &original),
        sign_in_finish(&app, &second, &cloned)
    );
    let signed_in = [&a, &b]
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(signed_in, 1, "{} / {}", a.body, b.body);
    let loser = if a.status == StatusCode::OK { &b } else { &a };
    loser.assert_error(400, "invalid_grant");

    // Started before another use of the key, finished after it: its counter is not above the
    // stored one any more, and it is refused too.
    let (late, options) = sign_in_start(&app).await;
    let stale = clone.get(&options, ORIGIN);
    let (now, options) = sign_in_start(&app).await;
    let r = sign_in_finish(&app, &now, &key.get(&options, ORIGIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    sign_in_finish(&app, &late, &stale)
        .await
        .assert_error(400, "invalid_grant");
    // The genuine authenticator, counting on, still signs in.
    let (token, options) = sign_in_start(&app).await;
    let r = sign_in_finish(&app, &token, &key.get(&options, ORIGIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// `sessiond_logins_total` counts every way in by `method`: a password login (right, wrong,
/// and one that needs a second factor), the second step at POST /login/mfa, and a passwordless
/// passkey sign-in (accepted and refused). Provider sign-ins: `oidc::` checks `federation`.
async fn every_way_in_is_counted_in_logins_total(backend: Backend) {
    let dep = deployment(backend).await;
    let app = dep.spawn().await;
    let email = unique_email("counted");
    let r = app.register(&email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = app.login(&email, PASSWORD).await.access;
    let r = app.login_reply(&email, "not the password").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let mut key = Passkey::new();
    register(&app, &token, &mut key, "Laptop").await;
    // The password is right; the passkey is now a second factor.
    let r = app.login_reply(&email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let mfa_token = r.body["mfa_token"].as_str().expect("mfa_token").to_string();
    let r = app
        .post_json(
            "/login/mfa",
            &json!({ "mfa_token": mfa_token, "totp": "000000" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let (passkey_token, options) = sign_in_start(&app).await;
    let credential = key.get(&options, ORIGIN);
    let r = sign_in_finish(&app, &passkey_token, &credential).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = sign_in_finish(&app, "no-such-token", &credential).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let scrape = app.scrape().await;
    for (method, outcome) in [
        ("password", "success"),
        ("password", "invalid_credentials"),
        ("password", "mfa_required"),
        ("mfa", "invalid_credentials"),
        ("passkey", "success"),
        ("passkey", "invalid_credentials"),
    ] {
        let line = format!("sessiond_logins_total{{method=\"{method}\",outcome=\"{outcome}\"}} 1");
        assert!(scrape.contains(&line), "no `{line}` in:\n{scrape}");
    }
}
