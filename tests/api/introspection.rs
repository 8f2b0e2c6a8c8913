//! Service clients (the admin API) and POST /introspect (RFC 7662): who may manage clients, the
//! secret shown once, which tokens are active, client authentication, bad input, and revocations
//! and deletions reaching the other pod.
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use jsonwebtoken::{decode_header, encode, EncodingKey};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{both_backends, services_only, support::*};

both_backends!(
    clients_are_managed_by_admins_and_the_secret_is_shown_once,
    only_tokens_of_live_sessions_are_active,
    introspection_needs_valid_client_credentials,
    bad_introspection_input_gets_clear_errors,
    failed_client_authentication_is_throttled_per_address,
);
services_only!(
    a_session_revoked_on_one_pod_is_inactive_on_the_other,
    a_client_deleted_on_one_pod_is_refused_by_the_other,
);

/// Generous: the bound is the next request normally, SESSION_CACHE_TTL (3 s here) at worst.
const PROPAGATION: Duration = Duration::from_secs(10);

/// A service client's credentials, as POST /admin/clients returned them.
struct ServiceClient {
    id: String,
    secret: String,
}

impl ServiceClient {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.id, self.secret))
        )
    }
}

async fn create_client(app: &TestApp, admin_token: &str, name: &str) -> ServiceClient {
    let r = call(
        app,
        Method::POST,
        "/admin/clients",
        Some(admin_token),
        Some(&json!({ "name": name })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    ServiceClient {
        id: r.body["client_id"].as_str().expect("client_id").to_string(),
        secret: r.body["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_string(),
    }
}

/// `application/x-www-form-urlencoded` of the pairs (every byte but the unreserved ones
/// escaped).
fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// POST /introspect with an `Authorization` value, a content type and a raw body.
async fn introspect_raw(
    app: &TestApp,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut req = app.client.post(app.url("/introspect")).body(body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    Reply::read(req.send().await.expect("request sent")).await
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The introspection answer for `token`; asserts a 200.
async fn introspect(app: &TestApp, client: &ServiceClient, token: &str) -> Value {
    let r = introspect_raw(
        app,
        Some(&client.basic()),
        Some(FORM),
        form(&[("token", token)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.body
}

#[track_caller]
fn assert_inactive(answer: &Value, what: &str) {
    assert_eq!(answer, &json!({"active": false}), "{what}");
}

#[track_caller]
fn assert_invalid_client(r: &Reply) {
    r.assert_error(401, "invalid_client");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Basic realm="sessiond""#),
        "{}",
        r.body
    );
}

async fn clients_are_managed_by_admins_and_the_secret_is_shown_once(backend: Backend) {
    let (dep, emails) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &emails[0]).await;
    let token = admin.tokens.access.as_str();
    let user = plain(&app).await;

    // The built-in admin role holds clients:write; a plain account does not, and gets 403 on
    // every client operation, before its input is even read.
    let session = app.get("/session", Some(token)).await;
    assert!(
        session.body["permissions"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("clients:write"))),
        "{}",
        session.body
    );
    let some_id = Uuid::new_v4().to_string();
    for (method, path, body) in [
        (Method::GET, "/admin/clients".to_string(), None),
        (
            Method::POST,
            "/admin/clients".to_string(),
            Some(json!({"name": "sneaky"})),
        ),
        (Method::DELETE, format!("/admin/clients/{some_id}"), None),
        (
            Method::DELETE,
            "/admin/clients/not-a-uuid".to_string(),
            None,
        ),
    ] {
        let r = call(
            &app,
            method.clone(),
            &path,
            Some(&user.tokens.access),
            body.as_ref(),
        )
        .await;
        r.assert_error(403, "forbidden");
        call(&app, method, &path, None, body.as_ref())
            .await
            .assert_error(401, "unauthorized");
    }

    // Created: the id, the name and the secret, this once.
    let r = call(
        &app,
        Method::POST,
        "/admin/clients",
        Some(token),
        Some(&json!({"name": "  billing  "})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let id = r.body["client_id"].as_str().expect("client_id").to_string();
    let secret = r.body["client_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert!(Uuid::parse_str(&id).is_ok(), "{}", r.body);
    assert_eq!(r.body["name"], "billing");
    // 256 random bits, base64url.
    assert_eq!(secret.len(), 43, "{secret}");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let other = create_client(&app, token, "billing").await;
    assert_ne!(other.secret, secret, "every client gets its own secret");
    assert_ne!(other.id, id);

    // Listed without the secret (nor anything derived from it), oldest first.
    let r = app.get("/admin/clients", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", r.body);
    assert_eq!(items[0]["client_id"], id.as_str());
    assert_eq!(items[1]["client_id"], other.id.as_str());
    for item in items {
        let mut keys: Vec<&String> = item.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["client_id", "created_at", "name"], "{item}");
        assert!(chrono::DateTime::parse_from_rfc3339(item["created_at"].as_str().unwrap()).is_ok());
    }
    assert!(!r.body.to_string().contains(&secret));

    // Names are validated; bodies follow the JSON conventions.
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "a\nb"}),
        json!({"name": 7}),
        json!({"name": "ok", "secret": "mine"}),
    ] {
        call(
            &app,
            Method::POST,
            "/admin/clients",
            Some(token),
            Some(&body),
        )
        .await
        .assert_error(400, "invalid_request");
    }
    let r = app
        .client
        .post(app.url("/admin/clients"))
        .bearer_auth(token)
        .body("name=x")
        .header("content-type", FORM)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Deleted: 204 once, then 404; a malformed id is 400.
    let path = format!("/admin/clients/{id}");
    let r = delete_as(&app, token, &path).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    delete_as(&app, token, &path)
        .await
        .assert_error(404, "not_found");
    let unknown = format!("/admin/clients/{}", Uuid::new_v4());
    delete_as(&app, token, &unknown)
        .await
        .assert_error(404, "not_found");
    delete_as(&app, token, "/admin/clients/42")
        .await
        .assert_error(400, "invalid_request");
    let r = app.get("/admin/clients", Some(token)).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );

    // Audited, with the admin as the actor and the client in the detail (never the secret).
    let created = settled(&app, token, "type=client_create", 2).await;
    for event in &created {
        assert_event(event, "client_create", Some(&admin.id), None, "success");
        assert_eq!(event["detail"]["name"], "billing");
    }
    let deleted = settled(&app, token, "type=client_delete", 1).await;
    assert_event(
        &deleted[0],
        "client_delete",
        Some(&admin.id),
        None,
        "success",
    );
    assert_eq!(deleted[0]["detail"]["client_id"], id.as_str());
    let trail = app
        .get("/admin/audit?per_page=200", Some(token))
        .await
        .body
        .to_string();
    assert!(!trail.contains(&secret) && !trail.contains(&other.secret));
}

/// The real token's header and claims, re-signed with the test secret after `patch`.
fn resigned(token: &str, patch: Value) -> String {
    let header = decode_header(token).expect("header");
    let mut claims = claims_of(token);
    for (k, v) in patch.as_object().expect("object") {
        claims[k] = v.clone();
    }
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn only_tokens_of_live_sessions_are_active(backend: Backend) {
    let (dep, emails) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &emails[0]).await;
    let client = create_client(&app, &admin.tokens.access, "api").await;
    let user = plain(&app).await;
    let token = user.tokens.access.as_str();

    // Active: the token's claims and the session's current roles and permissions.
    let answer = introspect(&app, &client, token).await;
    let claims = claims_of(token);
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], user.id.as_str());
    assert_eq!(answer["sid"], user.tokens.session_id.as_str());
    assert_eq!(answer["token_type"], "access_token");
    assert_eq!(answer["roles"], json!(["user"]));
    assert_eq!(answer["permissions"], json!([]));
    for claim in ["exp", "iat", "nbf", "iss", "aud", "jti"] {
        assert_eq!(answer[claim], claims[claim], "{claim} in {answer}");
    }
    // How and when the user authenticated, as the session has it.
    assert_eq!(answer["amr"], json!(["pwd"]), "{answer}");
    assert_eq!(answer["auth_time"], claims["auth_time"], "{answer}");
    let admin_answer = introspect(&app, &client, &admin.tokens.access).await;
    assert_eq!(admin_answer["roles"], json!(["admin", "user"]));
    assert_eq!(admin_answer["permissions"], json!(ADMIN_PERMISSIONS));
    // token_type_hint (and any other parameter) is ignored.
    let r = introspect_raw(
        &app,
        Some(&client.basic()),
        Some(FORM),
        form(&[("token_type_hint", "refresh_token"), ("token", token)]),
    )
    .await;
    assert_eq!(r.body["active"], true, "{}", r.body);

    // Anything else: exactly {"active": false}.
    let now = chrono::Utc::now().timestamp();
    let parts: Vec<&str> = token.split('.').collect();
    let foreign = {
        let header = decode_header(token).expect("header");
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"another-secret-another-secret-0123456789"),
        )
        .expect("sign")
    };
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(11 * 1024), parts[2]);
    for (what, t) in [
        ("garbage", "garbage".to_string()),
        ("three dots", "a.b.c".to_string()),
        ("a refresh token", user.tokens.refresh.clone()),
        (
            "tampered",
            format!("{}.{}.{}", parts[0], parts[1], "A".repeat(43)),
        ),
        ("foreign key", foreign),
        (
            "expired",
            resigned(
                token,
                json!({"iat": now - 3600, "nbf": now - 3600, "exp": now - 1800}),
            ),
        ),
        (
            "unknown session",
            resigned(token, json!({"sid": Uuid::now_v7()})),
        ),
        (
            "another user's session",
            resigned(token, json!({"sub": admin.id})),
        ),
        ("longer than any token", huge),
    ] {
        assert_inactive(&introspect(&app, &client, &t).await, what);
    }
    // The re-signing itself is sound: the real claims re-signed are active.
    assert_eq!(
        introspect(&app, &client, &resigned(token, json!({}))).await["active"],
        true
    );

    // A logged-out session, and every session of a deleted account.
    let second = plain(&app).await;
    assert_eq!(
        app.post_auth("/logout", token).await.status,
        StatusCode::NO_CONTENT
    );
    assert_inactive(&introspect(&app, &client, token).await, "logged out");
    assert_eq!(
        introspect(&app, &client, &second.tokens.access).await["active"],
        true
    );
    let path = format!("/admin/users/{}", second.id);
    let r = delete_as(&app, &admin.tokens.access, &path).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_inactive(
        &introspect(&app, &client, &second.tokens.access).await,
        "deleted account",
    );
}

async fn introspection_needs_valid_client_credentials(backend: Backend) {
    let (dep, emails) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &emails[0]).await;
    let client = create_client(&app, &admin.tokens.access, "api").await;
    let other = create_client(&app, &admin.tokens.access, "other").await;
    let body = || form(&[("token", &admin.tokens.access)]);
    let basic =
        |id: &str, secret: &str| format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));

    let wrong_secret = {
        let mut s = client.secret.clone().into_bytes();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        String::from_utf8(s).expect("ascii")
    };
    let bearer = format!("Bearer {}", admin.tokens.access);
    for (what, auth) in [
        ("no credentials", None),
        ("a bearer token", Some(bearer)),
        ("wrong secret", Some(basic(&client.id, &wrong_secret))),
        (
            "another client's secret",
            Some(basic(&client.id, &other.secret)),
        ),
        ("empty secret", Some(basic(&client.id, ""))),
        (
            "unknown client",
            Some(basic(&Uuid::new_v4().to_string(), &client.secret)),
        ),
        ("id not a UUID", Some(basic("api", &client.secret))),
        (
            "no colon",
            Some(format!("Basic {}", STANDARD.encode(&client.id))),
        ),
        ("not base64", Some("Basic !!!not-base64!!!".to_string())),
        (
            "no scheme",
            Some(STANDARD.encode(format!("{}:{}", client.id, client.secret))),
        ),
    ] {
        let r = introspect_raw(&app, auth.as_deref(), Some(FORM), body()).await;
        assert_invalid_client(&r);
        assert!(r.body.get("active").is_none(), "{what}: {}", r.body);
    }
    // The right credentials, with a lower-case scheme and no padding, work.
    let unpadded = format!(
        "basic {}",
        STANDARD
            .encode(format!("{}:{}", client.id, client.secret))
            .trim_end_matches('=')
    );
    let r = introspect_raw(&app, Some(&unpadded), Some(FORM), body()).await;
    assert_eq!(r.body["active"], true, "{}", r.body);
    // Bad credentials are refused before the body is looked at.
    let r = introspect_raw(&app, None, Some("application/json"), b"{}".to_vec()).await;
    assert_invalid_client(&r);

    // A deleted client is refused at once by the pod that deleted it.
    assert_eq!(
        introspect(&app, &client, &admin.tokens.access).await["active"],
        true
    );
    let path = format!("/admin/clients/{}", client.id);
    let r = delete_as(&app, &admin.tokens.access, &path).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = introspect_raw(&app, Some(&client.basic()), Some(FORM), body()).await;
    assert_invalid_client(&r);
    assert_eq!(
        introspect(&app, &other, &admin.tokens.access).await["active"],
        true
    );
}

async fn bad_introspection_input_gets_clear_errors(backend: Backend) {
    let (dep, emails) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &emails[0]).await;
    let client = create_client(&app, &admin.tokens.access, "api").await;
    let auth = client.basic();
    let token = admin.tokens.access.as_str();
    let send =
        |ct: Option<&'static str>, body: Vec<u8>| introspect_raw(&app, Some(&auth), ct, body);

    let json_body = serde_json::to_vec(&json!({ "token": token })).expect("json");
    send(Some("application/json"), json_body)
        .await
        .assert_error(415, "unsupported_media_type");
    send(None, form(&[("token", token)]))
        .await
        .assert_error(415, "unsupported_media_type");
    for (what, body) in [
        ("empty body", Vec::new()),
        ("no token", form(&[("token_type_hint", "access_token")])),
        ("empty token", form(&[("token", "")])),
        ("two tokens", form(&[("token", token), ("token", token)])),
    ] {
        let r = send(Some(FORM), body).await;
        r.assert_error(400, "invalid_request");
        assert!(!r.body.to_string().contains(token), "{what}: {}", r.body);
    }
    // Over the body cap (16 KiB by default).
    let huge = form(&[("token", &"A".repeat(20 * 1024))]);
    send(Some(FORM), huge)
        .await
        .assert_error(413, "payload_too_large");
    // A charset parameter is fine.
    let r = send(
        Some("application/x-www-form-urlencoded; charset=utf-8"),
        form(&[("token", token)]),
    )
    .await;
    assert_eq!(r.body["active"], true, "{}", r.body);
    // Only POST.
    let r = call(&app, Method::GET, "/introspect", None, None).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
}

async fn two_pods() -> (Deployment, TestApp, TestApp, Account) {
    let (mut dep, emails) = with_admins(Backend::Services, 1).await;
    dep.set("SESSION_CACHE_TTL", 3);
    let a = dep.spawn().await;
    let b = dep.spawn().await;
    let admin = admin(&a, &emails[0]).await;
    (dep, a, b, admin)
}

async fn a_session_revoked_on_one_pod_is_inactive_on_the_other() {
    let (_dep, a, b, admin) = two_pods().await;
    let client = create_client(&a, &admin.tokens.access, "api").await;
    let user = plain(&a).await;
    // B knows the client and the session.
    for _ in 0..3 {
        assert_eq!(
            introspect(&b, &client, &user.tokens.access).await["active"],
            true
        );
    }
    assert_eq!(
        a.post_auth("/logout", &user.tokens.access).await.status,
        StatusCode::NO_CONTENT
    );
    let inactive = eventually(PROPAGATION, Duration::from_millis(10), async || {
        introspect(&b, &client, &user.tokens.access).await == json!({"active": false})
    })
    .await;
    assert!(inactive, "B still says active after the logout on A");
    // And it stays inactive, on both pods.
    for pod in [&a, &b] {
        assert_inactive(
            &introspect(pod, &client, &user.tokens.access).await,
            "after the logout",
        );
    }
}

async fn a_client_deleted_on_one_pod_is_refused_by_the_other() {
    let (_dep, a, b, admin) = two_pods().await;
    let client = create_client(&a, &admin.tokens.access, "api").await;
    let token = admin.tokens.access.as_str();
    assert_eq!(introspect(&b, &client, token).await["active"], true);
    let path = format!("/admin/clients/{}", client.id);
    let r = delete_as(&a, token, &path).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let refused = eventually(PROPAGATION, Duration::from_millis(20), async || {
        let r = introspect_raw(
            &b,
            Some(&client.basic()),
            Some(FORM),
            form(&[("token", token)]),
        )
        .await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "{} {}",
            r.status,
            r.body
        );
        r.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "B still accepts a client deleted on A");
}

/// Wrong client credentials are counted per client address: past the limit, every attempt from
/// that address is 429 with Retry-After until the window ends, the right credentials included
/// (so the answer no longer tells a right guess from a wrong one); other addresses are not
/// affected.
async fn failed_client_authentication_is_throttled_per_address(backend: Backend) {
    let (mut dep, emails) = with_admins(backend, 1).await;
    dep.set("TRUSTED_PROXIES", "127.0.0.1/32")
        .set("RATE_LIMIT_INTROSPECT_FAILURES_PER_IP", 3);
    let app = dep.spawn().await;
    let admin = admin(&app, &emails[0]).await;
    let client = create_client(&app, &admin.tokens.access, "api").await;
    let token = admin.tokens.access.clone();
    let from = |address: &'static str, authorization: Option<String>| {
        let mut req = app
            .client
            .post(app.url("/introspect"))
            .header("x-forwarded-for", address)
            .header("content-type", FORM)
            .body(form(&[("token", &token)]));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        async move { Reply::read(req.send().await.expect("request sent")).await }
    };
    let wrong = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", client.id, "not-the-secret"))
    );
    let unknown = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", Uuid::new_v4(), client.secret))
    );

    // Up to the limit, and the one attempt past it, are answered as usual.
    for auth in [
        Some(wrong.clone()),
        Some(unknown),
        None,
        Some(wrong.clone()),
    ] {
        let r = from("198.51.100.7", auth).await;
        assert_invalid_client(&r);
    }
    // Then every attempt from that address is refused before any check.
    for auth in [Some(client.basic()), Some(wrong.clone())] {
        let r = from("198.51.100.7", auth).await;
        r.assert_error(429, "rate_limited");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(r.body.get("active").is_none(), "{}", r.body);
    }
    // Another address is not affected.
    let r = from("203.0.113.9", Some(client.basic())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["active"], true);
    let r = from("203.0.113.9", Some(wrong)).await;
    assert_invalid_client(&r);
}
