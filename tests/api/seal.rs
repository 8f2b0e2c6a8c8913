//! Session records in Redis are sealed with a MAC: whoever can write Redis cannot mint or widen a
//! session. Each test edits a live session's hash with a plain Redis client, then uses it on a
//! second pod that never cached it: refused (401), the record is gone, the failure is counted.
//!
//! The one-time records of sign-in flows (identity-provider states and codes, pending MFA
//! logins, WebAuthn ceremonies) are sealed too: planted under the key an unkeyed hash of a value
//! of the attacker's choice gave, or found after a real flow and edited or moved to another
//! record's key, they are refused like unknown ones.
use std::{collections::HashSet, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sessiond::session::RefreshToken;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    services_only,
    support::oauth::{browser, pkce, query, urlencode, GithubStandIn},
    support::passkey::{register, Passkey, ORIGIN, RP_ID},
    support::*,
};

services_only!(
    forged_roles_are_refused_and_the_record_revoked,
    forged_refresh_hash_does_not_rotate,
    forged_grace_replay_state_does_not_hand_out_a_successor,
    extended_expiry_is_refused,
    another_users_sealed_record_does_not_fit_this_session,
    tampered_sessions_are_dropped_from_the_session_list,
    a_role_change_does_not_reseal_a_tampered_record,
    records_sealed_with_the_previous_secret_still_verify,
    a_planted_oauth_code_signs_nobody_in,
    a_planted_oauth_state_links_no_identity,
    a_planted_pending_mfa_login_does_not_stand_for_the_password,
    webauthn_ceremonies_moved_to_another_key_are_refused,
    oauth_codes_edited_or_swapped_are_refused,
    an_edited_oauth_state_links_no_identity,
    pending_mfa_logins_edited_or_swapped_are_refused,
    one_time_records_of_the_previous_secret_are_found_and_verify,
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

// One-time records.

/// Where sessiond sends the provider's answers; never requested (the tests call the pod).
const PUBLIC: &str = "http://localhost:9";
const RETURN_TO: &str = "http://localhost:3000/signed-in";

/// The key a one-time record had before records were sealed: an unkeyed hash of the value the
/// client holds, which anyone who can write Redis computes for a value of his choice.
fn unkeyed_pending_key(dep: &Deployment, kind: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("sessiond/{kind}/{id}").as_bytes());
    format!("{}{kind}:{}", dep.prefix, hex::encode(&digest[..20]))
}

fn unkeyed_mfa_key(dep: &Deployment, token: &str) -> String {
    format!(
        "{}mfa:{}",
        dep.prefix,
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// The keys under the deployment's prefix that start with `kind:`.
async fn keys_of(dep: &Deployment, kind: &str) -> HashSet<String> {
    let mut con = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{}{kind}:*", dep.prefix))
        .query_async(&mut con)
        .await
        .expect("KEYS")
}

/// The one key of `kind` that appeared since `before`.
async fn new_key(dep: &Deployment, kind: &str, before: &HashSet<String>) -> String {
    let now = keys_of(dep, kind).await;
    let mut added: Vec<_> = now.difference(before).cloned().collect();
    assert_eq!(added.len(), 1, "one new {kind} record: {added:?}");
    added.remove(0)
}

async fn get(key: &str) -> String {
    let mut con = redis().await;
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<String>>(&mut con)
        .await
        .expect("GET")
        .unwrap_or_else(|| panic!("a record at {key}"))
}

async fn set(key: &str, value: &str) {
    let mut con = redis().await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(300)
        .query_async(&mut con)
        .await
        .expect("SET");
}

async fn key_exists(key: &str) -> bool {
    let mut con = redis().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("EXISTS");
    n == 1
}

async fn hgetall(key: &str) -> Vec<(String, String)> {
    let mut con = redis().await;
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("HGETALL")
}

/// Replaces the hash at `key` with `fields`.
async fn hreplace(key: &str, fields: &[(String, String)]) {
    let mut con = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("DEL");
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    let _: i64 = cmd.query_async(&mut con).await.expect("HSET");
    let _: i64 = redis::cmd("EXPIRE")
        .arg(key)
        .arg(300)
        .query_async(&mut con)
        .await
        .expect("EXPIRE");
}

/// Swaps the values of two string records.
async fn swap(a: &str, b: &str) {
    let (va, vb) = (get(a).await, get(b).await);
    set(a, &vb).await;
    set(b, &va).await;
}

/// The session records of a user in Redis.
async fn sessions_of(dep: &Deployment, uid: Uuid) -> usize {
    let mut con = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{{u:{uid}}}:session:*", dep.prefix))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    keys.len()
}

/// `sessiond_record_seal_failures_total{kind}` on this pod.
async fn record_seal_failures(app: &TestApp, kind: &str) -> u64 {
    app.metric(&format!(
        "sessiond_record_seal_failures_total{{kind=\"{kind}\"}}"
    ))
    .await as u64
}

/// A deployment with a GitHub sign-in (an in-process stand-in for GitHub).
async fn github_deployment() -> (GithubStandIn, Deployment, TestApp) {
    let gh = GithubStandIn::start().await;
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("GITHUB_CLIENT_ID", "gh-client")
        .set("GITHUB_CLIENT_SECRET", "gh-secret")
        .set("GITHUB_WEB_URL", &gh.url)
        .set("GITHUB_API_URL", format!("{}/api", gh.url))
        .set("PUBLIC_URL", PUBLIC)
        .set("OAUTH_RETURN_URLS", RETURN_TO);
    let app = dep.spawn().await;
    (gh, dep, app)
}

/// A URL under PUBLIC_URL, on the pod's own address.
fn on_pod(app: &TestApp, url: &str) -> String {
    let path = url
        .strip_prefix(PUBLIC)
        .unwrap_or_else(|| panic!("under PUBLIC_URL: {url}"));
    format!("{}{path}", app.address)
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("a redirect: {}", r.status()))
        .to_string()
}

/// A browser's GitHub sign-in started with the client's `challenge`, up to sessiond's callback
/// (returned on the pod's address, not requested).
async fn github_until_callback(app: &TestApp, challenge: &str) -> String {
    let b = browser();
    let start = format!(
        "{}/oauth/github/start?return_to={}&code_challenge={challenge}",
        app.address,
        urlencode(RETURN_TO)
    );
    let r = b.get(&start).send().await.expect("start");
    assert!(r.status().is_redirection(), "start: {}", r.status());
    let r = b.get(location(&r)).send().await.expect("authorize");
    assert!(r.status().is_redirection(), "authorize: {}", r.status());
    on_pod(app, &location(&r))
}

/// The callback's answer: the URL it sends the browser to, or the error reply.
async fn github_callback(callback: &str) -> Result<String, Reply> {
    let r = browser().get(callback).send().await.expect("callback");
    if r.status().is_redirection() {
        Ok(location(&r))
    } else {
        Err(Reply::read(r).await)
    }
}

/// A whole GitHub sign-in: the one-time code sessiond returned.
async fn github_code(app: &TestApp, challenge: &str) -> String {
    let callback = github_until_callback(app, challenge).await;
    let back = github_callback(&callback).await.expect("a redirect");
    query(&back, "code").unwrap_or_else(|| panic!("a code: {back}"))
}

async fn redeem(app: &TestApp, code: &str, verifier: &str) -> Reply {
    app.post_json(
        "/oauth/token",
        &json!({"code": code, "code_verifier": verifier}),
    )
    .await
}

async fn identities(app: &TestApp, token: &str) -> Value {
    let r = app.get("/profile/identities", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].clone()
}

fn set_github_user(gh: &GithubStandIn, id: u64) {
    gh.set_user(
        id,
        json!([{"email": format!("octo{id}@users.example"), "primary": true, "verified": true, "visibility": "public"}]),
    );
}

async fn a_planted_oauth_code_signs_nobody_in() {
    let (_gh, dep, app) = github_deployment().await;
    let (_, tokens) = app.user().await;
    let victim = live(tokens);
    let (verifier, challenge) = pkce();
    let code = "a-code-of-the-attackers-choosing";
    let record = json!({"user_id": victim.uid, "provider": "github", "code_challenge": challenge});
    set(
        &unkeyed_pending_key(&dep, "oauth-code", code),
        &record.to_string(),
    )
    .await;
    let before = sessions_of(&dep, victim.uid).await;
    redeem(&app, code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(sessions_of(&dep, victim.uid).await, before);
}

async fn a_planted_oauth_state_links_no_identity() {
    let (gh, dep, app) = github_deployment().await;
    set_github_user(&gh, 301);
    let (_, tokens) = app.user().await;
    let victim = live(tokens);
    // The flow sessiond would have stored, linking to the victim's account, with sessiond's
    // PKCE verifier toward GitHub the attacker's own.
    let (to_github, github_challenge) = pkce();
    let (_, client_challenge) = pkce();
    let state = "a-state-of-the-attackers-choosing";
    let flow = json!({
        "provider": "github", "return_to": RETURN_TO, "code_challenge": client_challenge,
        "nonce": "n", "pkce_verifier": to_github, "link": victim.uid,
    });
    set(
        &unkeyed_pending_key(&dep, "oauth-state", state),
        &flow.to_string(),
    )
    .await;
    // The attacker's own authorization at GitHub, sent back with the planted state.
    let authorize = format!(
        "{}/login/oauth/authorize?client_id=gh-client&code_challenge_method=S256&code_challenge={github_challenge}&redirect_uri={}&state={state}",
        gh.url,
        urlencode(&format!("{PUBLIC}/oauth/github/callback"))
    );
    let r = browser().get(&authorize).send().await.expect("authorize");
    let callback = on_pod(&app, &location(&r));
    match github_callback(&callback).await {
        Err(r) => r.assert_error(400, "invalid_request"),
        Ok(to) => panic!("the planted state was accepted: {to}"),
    }
    assert_eq!(identities(&app, &victim.tokens.access).await, json!([]));
}

async fn a_planted_pending_mfa_login_does_not_stand_for_the_password() {
    let dep = Deployment::new(Backend::Services).await;
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    let victim = live(tokens);
    // The second factor alone (a code read over the victim's shoulder), not the password.
    let (totp, _) = crate::support::totp::enrol(&app, &victim.tokens.access).await;
    let token = "a-token-of-the-attackers-choosing";
    let fields = [
        ("user_id".to_string(), victim.uid.to_string()),
        ("attempts".to_string(), "0".to_string()),
        ("idp".to_string(), String::new()),
    ];
    hreplace(&unkeyed_mfa_key(&dep, token), &fields).await;
    let before = sessions_of(&dep, victim.uid).await;
    app.post_json(
        "/login/mfa",
        &json!({"mfa_token": token, "totp": crate::support::totp::code(&totp, 1)}),
    )
    .await
    .assert_error(400, "invalid_grant");
    assert_eq!(sessions_of(&dep, victim.uid).await, before);
}

async fn webauthn_deployment() -> (Deployment, TestApp) {
    let mut dep = Deployment::new(Backend::Services).await;
    dep.set("WEBAUTHN_RP_ID", RP_ID)
        .set("WEBAUTHN_ORIGINS", ORIGIN)
        .set("WEBAUTHN_RP_NAME", "sessiond tests");
    let app = dep.spawn().await;
    (dep, app)
}

async fn passkey_sign_in_start(app: &TestApp) -> (String, Value) {
    let r = app.post_json("/login/passkey/start", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.body["passkey_token"].as_str().expect("passkey_token");
    (token.to_string(), r.body["options"].clone())
}

async fn passkey_sign_in_finish(app: &TestApp, token: &str, credential: &Value) -> Reply {
    app.post_json(
        "/login/passkey/finish",
        &json!({ "passkey_token": token, "credential": credential }),
    )
    .await
}

async fn registration_start(app: &TestApp, token: &str) -> Value {
    let r = app
        .request(Method::POST, "/mfa/webauthn/register/start", token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn registration_finish(app: &TestApp, token: &str, answer: &Value) -> Reply {
    app.request(
        Method::POST,
        "/mfa/webauthn/register/finish",
        token,
        Some(answer),
    )
    .await
}

/// A ceremony's state answers only the token or session it was started for: moved under
/// another one (planted under the key the old unkeyed hash gave, then swapped between two
/// real ceremonies, whose keys are all an attacker can find) it is refused.
async fn webauthn_ceremonies_moved_to_another_key_are_refused() {
    let (dep, app) = webauthn_deployment().await;
    let me = plain(&app).await;
    let mut key = Passkey::new();
    register(&app, &me.tokens.access, &mut key, "Phone").await;

    // A sign-in ceremony, under a passkey_token of the attacker's choosing.
    let before = keys_of(&dep, "webauthn-signin").await;
    let (_, options) = passkey_sign_in_start(&app).await;
    let found = new_key(&dep, "webauthn-signin", &before).await;
    let chosen = "a-passkey-token-of-the-attackers-choosing";
    set(
        &unkeyed_pending_key(&dep, "webauthn-signin", chosen),
        &get(&found).await,
    )
    .await;
    let assertion = key.get(&options, ORIGIN);
    passkey_sign_in_finish(&app, chosen, &assertion)
        .await
        .assert_error(400, "invalid_grant");

    // Two real sign-in ceremonies, their records swapped: the answer to the first's challenge
    // with the second's token.
    let before = keys_of(&dep, "webauthn-signin").await;
    let (_, first_options) = passkey_sign_in_start(&app).await;
    let first = new_key(&dep, "webauthn-signin", &before).await;
    let (second_token, _) = passkey_sign_in_start(&app).await;
    let mut seen = before;
    seen.insert(first.clone());
    let second = new_key(&dep, "webauthn-signin", &seen).await;
    swap(&first, &second).await;
    let failures = record_seal_failures(&app, "webauthn-signin").await;
    let assertion = key.get(&first_options, ORIGIN);
    passkey_sign_in_finish(&app, &second_token, &assertion)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(
        record_seal_failures(&app, "webauthn-signin").await,
        failures + 1
    );
    assert!(!key_exists(&second).await, "the moved record was deleted");

    // Two sessions of the account (the second signed in with the passkey): a registration
    // ceremony of one, finished by the other.
    let (token, options) = passkey_sign_in_start(&app).await;
    let r = passkey_sign_in_finish(&app, &token, &key.get(&options, ORIGIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let other = r.body["access_token"].as_str().expect("access_token");
    let before = keys_of(&dep, "webauthn-reg").await;
    let options = registration_start(&app, &me.tokens.access).await;
    let first = new_key(&dep, "webauthn-reg", &before).await;
    let mut another = Passkey::new();
    let answer = another.create(&options, ORIGIN);
    let sid = |t: &str| claims_of(t)["sid"].as_str().expect("sid").to_string();
    set(
        &unkeyed_pending_key(&dep, "webauthn-reg", &sid(other)),
        &get(&first).await,
    )
    .await;
    registration_finish(&app, other, &answer)
        .await
        .assert_error(400, "invalid_grant");
    // Both sessions with a ceremony (the first session's restarted under its own key),
    // swapped.
    let before = keys_of(&dep, "webauthn-reg").await;
    let options = registration_start(&app, &me.tokens.access).await;
    let _ = registration_start(&app, other).await;
    let second = new_key(&dep, "webauthn-reg", &before).await;
    swap(&first, &second).await;
    let answer = another.create(&options, ORIGIN);
    registration_finish(&app, other, &answer)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(
        app.request(Method::GET, "/mfa/webauthn/credentials", other, None)
            .await
            .body["items"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "only the passkey registered first"
    );
}

/// Real codes found under the prefix: one edited to sign in as another account, two swapped
/// (the same client verifier, so only the key tells them apart).
async fn oauth_codes_edited_or_swapped_are_refused() {
    let (gh, dep, app) = github_deployment().await;
    let (_, tokens) = app.user().await;
    let victim = live(tokens);
    set_github_user(&gh, 401);
    let (verifier, challenge) = pkce();
    let first_session = github_code(&app, &challenge).await;
    let r = redeem(&app, &first_session, &verifier).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let attacker = claims_of(r.body["access_token"].as_str().expect("access"))["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    assert_eq!(keys_of(&dep, "oauth-code").await, HashSet::new());

    // One byte of the payload: the attacker's account id made the victim's.
    let code = github_code(&app, &challenge).await;
    let found = new_key(&dep, "oauth-code", &HashSet::new()).await;
    let record = get(&found).await;
    assert!(record.contains(&attacker), "{record}");
    let edited = record.replace(&attacker, &victim.uid.to_string());
    set(&found, &edited).await;
    let (before, failures) = (
        sessions_of(&dep, victim.uid).await,
        record_seal_failures(&app, "oauth-code").await,
    );
    redeem(&app, &code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(sessions_of(&dep, victim.uid).await, before);
    assert_eq!(record_seal_failures(&app, "oauth-code").await, failures + 1);
    assert!(!key_exists(&found).await);

    // Two authentic codes, their records swapped.
    let first = github_code(&app, &challenge).await;
    let first_key = new_key(&dep, "oauth-code", &HashSet::new()).await;
    let second = github_code(&app, &challenge).await;
    let second_key = new_key(&dep, "oauth-code", &HashSet::from([first_key.clone()])).await;
    swap(&first_key, &second_key).await;
    for code in [&first, &second] {
        redeem(&app, code, &verifier)
            .await
            .assert_error(400, "invalid_grant");
    }
    assert_eq!(record_seal_failures(&app, "oauth-code").await, failures + 3);
    assert_eq!(keys_of(&dep, "oauth-code").await, HashSet::new());
}

/// A real state found under the prefix, edited to link the attacker's identity to the victim's
/// account.
async fn an_edited_oauth_state_links_no_identity() {
    let (gh, dep, app) = github_deployment().await;
    let (_, tokens) = app.user().await;
    let victim = live(tokens);
    set_github_user(&gh, 501);
    let (_, challenge) = pkce();
    let callback = github_until_callback(&app, &challenge).await;
    let found = new_key(&dep, "oauth-state", &HashSet::new()).await;
    let record = get(&found).await;
    assert!(record.contains("\"link\":null"), "{record}");
    let edited = record.replace("\"link\":null", &format!("\"link\":\"{}\"", victim.uid));
    set(&found, &edited).await;
    let failures = record_seal_failures(&app, "oauth-state").await;
    match github_callback(&callback).await {
        Err(r) => r.assert_error(400, "invalid_request"),
        Ok(to) => panic!("the edited state was accepted: {to}"),
    }
    assert_eq!(
        record_seal_failures(&app, "oauth-state").await,
        failures + 1
    );
    assert!(!key_exists(&found).await);
    assert_eq!(identities(&app, &victim.tokens.access).await, json!([]));
}

/// Real pending logins found under the prefix: one edited to the victim's account id, two of
/// different accounts swapped; the victim's second factor is known, the password is not.
async fn pending_mfa_logins_edited_or_swapped_are_refused() {
    let dep = Deployment::new(Backend::Services).await;
    let app = dep.spawn().await;
    let (attacker_email, attacker) = app.user().await;
    let (victim_email, victim) = app.user().await;
    let victim = live(victim);
    crate::support::totp::enrol(&app, &attacker.access).await;
    let (victim_totp, _) = crate::support::totp::enrol(&app, &victim.tokens.access).await;
    let pending = async |email: &str| {
        let before = keys_of(&dep, "mfa").await;
        let r = app.login_reply(email, PASSWORD).await;
        r.assert_error(403, "mfa_required");
        let token = r.body["mfa_token"].as_str().expect("mfa_token").to_string();
        (token, new_key(&dep, "mfa", &before).await)
    };
    let second_factor = async |token: &str| {
        app.post_json(
            "/login/mfa",
            &json!({"mfa_token": token, "totp": crate::support::totp::code(&victim_totp, 1)}),
        )
        .await
    };
    let sessions = sessions_of(&dep, victim.uid).await;
    let failures = record_seal_failures(&app, "mfa-login").await;

    // The attacker's pending login, made the victim's.
    let (token, found) = pending(&attacker_email).await;
    let mut fields = hgetall(&found).await;
    let attacker_uid = claims_of(&attacker.access)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    for (k, v) in fields.iter_mut() {
        if k == "user_id" {
            assert_eq!(*v, attacker_uid);
            *v = victim.uid.to_string();
        }
    }
    hreplace(&found, &fields).await;
    second_factor(&token)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(record_seal_failures(&app, "mfa-login").await, failures + 1);
    assert!(!key_exists(&found).await);

    // The attacker's and the victim's pending logins, swapped.
    let (token, attackers) = pending(&attacker_email).await;
    let (_, victims) = pending(&victim_email).await;
    let (a, v) = (hgetall(&attackers).await, hgetall(&victims).await);
    hreplace(&attackers, &v).await;
    hreplace(&victims, &a).await;
    second_factor(&token)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(record_seal_failures(&app, "mfa-login").await, failures + 2);
    assert_eq!(sessions_of(&dep, victim.uid).await, sessions);
}

/// A pending login and a code issued under the old secret finish on a pod with the new one and
/// the old as *_PREVIOUS; without it they are unknown.
async fn one_time_records_of_the_previous_secret_are_found_and_verify() {
    let old_jwt = "old-jwt-secret-old-jwt-secret-old-jwt-secret";
    let (gh, mut dep, _) = github_deployment().await;
    dep.set("JWT_SECRET", old_jwt);
    let old = dep.spawn().await;
    let (email, tokens) = old.user().await;
    let (totp, _) = crate::support::totp::enrol(&old, &tokens.access).await;
    let pending = async || {
        let r = old.login_reply(&email, PASSWORD).await;
        r.assert_error(403, "mfa_required");
        r.body["mfa_token"].as_str().expect("mfa_token").to_string()
    };
    let (kept, forgotten) = (pending().await, pending().await);
    set_github_user(&gh, 601);
    let (verifier, challenge) = pkce();
    let code = github_code(&old, &challenge).await;

    let rotated = dep
        .spawn_with(&[
            ("JWT_SECRET", SECRET.to_string()),
            ("JWT_SECRET_PREVIOUS", old_jwt.to_string()),
        ])
        .await;
    let r = rotated
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": kept, "totp": crate::support::totp::code(&totp, 1)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = redeem(&rotated, &code, &verifier).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(record_seal_failures(&rotated, "mfa-login").await, 0);

    let forgot = dep.spawn_with(&[("JWT_SECRET", SECRET.to_string())]).await;
    forgot
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": forgotten, "totp": crate::support::totp::code(&totp, 2)}),
        )
        .await
        .assert_error(400, "invalid_grant");
}
