//! Abuse protection and hostile input (OWASP ASVS V6/V7/V9, RFC 8725).
use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    wrong_passwords_from_rotating_forwarded_for_are_throttled_by_account,
    lockout_refuses_the_right_password_like_a_wrong_one_and_ends_by_time,
    limiter_counts_exactly_under_parallel_attempts,
    registration_and_refresh_are_throttled_per_address,
    saturated_hashing_fails_fast_while_token_checks_serve,
    token_header_attacks_and_key_rotation,
    common_passwords_are_refused_with_a_clear_message,
    one_account_under_a_hundred_concurrent_variant_registrations,
    cors_is_off_unless_origins_are_listed,
    hostile_input_gets_a_clean_4xx_and_the_server_keeps_serving,
);

async fn wrong_passwords_from_rotating_forwarded_for_are_throttled_by_account(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("RATE_LIMIT_LOGIN_PER_ACCOUNT", 10)
        .set("LOCKOUT_THRESHOLD", 0);
    let app = dep.spawn().await;
    let email = "victim@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = app
            .client
            .post(app.url("/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({"email": email, "password": format!("wrong password {i}")}))
            .send()
            .await
            .expect("sent");
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().get("retry-after").is_some());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );
    let r = app.login_reply(email, PASSWORD).await;
    r.assert_error(429, "rate_limited");
    let metrics = app.scrape().await;
    assert!(
        metrics.contains("sessiond_logins_total{method=\"password\",outcome=\"throttled\"} 21"),
        "{metrics}"
    );
}

async fn lockout_refuses_the_right_password_like_a_wrong_one_and_ends_by_time(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 2)
        .set("LOCKOUT_MAX_SECONDS", 4);
    let app = dep.spawn().await;
    let (email, _) = app.user().await;
    for _ in 0..3 {
        app.login_reply(&email, "not the password!")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let wrong = app.login_reply(&email, "not the password!").await;
    let right = app.login_reply(&email, PASSWORD).await;
    wrong.assert_error(429, "rate_limited");
    assert_eq!(
        (right.status, &right.body),
        (wrong.status, &wrong.body),
        "locked: same answer"
    );
    let names = |r: &Reply| {
        let mut v: Vec<String> = r
            .headers
            .keys()
            .map(|k| k.to_string())
            .filter(|k| k != "date" && k != "x-request-id")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&right), names(&wrong));
    // An unknown address locks the same way: the lockout does not reveal which accounts exist.
    for _ in 0..3 {
        app.login_reply("nobody@example.com", "not the password!")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let unknown = app
        .login_reply("nobody@example.com", "not the password!")
        .await;
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body));

    // Released by time: after the delay the right password works and clears the failures.
    let released = eventually(
        Duration::from_secs(10),
        Duration::from_millis(500),
        async || app.login_reply(&email, PASSWORD).await.status == StatusCode::OK,
    )
    .await;
    assert!(released, "the lock ended by itself");
    app.login_reply(&email, "not the password!")
        .await
        .assert_error(401, "invalid_credentials");
}

async fn limiter_counts_exactly_under_parallel_attempts(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("RATE_LIMIT_LOGIN_PER_IP", 10);
    let app = dep.spawn().await;
    let email = "parallel@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let attempts = (0..25).map(|_| app.login_reply(email, PASSWORD));
    let replies = futures_util::future::join_all(attempts).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (ok, limited),
        (10, 15),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

async fn registration_and_refresh_are_throttled_per_address(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("RATE_LIMIT_REGISTER_PER_IP", 3)
        .set("RATE_LIMIT_REFRESH_PER_IP", 2);
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    assert_eq!(
        app.register("two@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.register("three@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    let r = app.register("four@example.com", PASSWORD).await;
    r.assert_error(429, "rate_limited");
    assert!(r
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|s| (1..=60).contains(&s)));
    let refresh = async |t: String| {
        app.post_json("/token/refresh", &json!({"refresh_token": t}))
            .await
    };
    let first = refresh(tokens.refresh.clone()).await;
    assert_eq!(first.status, StatusCode::OK);
    let next = first.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    assert_eq!(refresh(next.clone()).await.status, StatusCode::OK);
    refresh(next).await.assert_error(429, "rate_limited");
}

async fn saturated_hashing_fails_fast_while_token_checks_serve(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("ARGON2_MAX_CONCURRENCY", 1)
        .set("ARGON2_MAX_QUEUE", 1)
        .set("ARGON2_QUEUE_TIMEOUT_MS", 300)
        .set("ARGON2_ITERATIONS", 40);
    let app = dep.spawn().await;
    let (email, tokens) = app.user().await;
    let logins = futures_util::future::join_all((0..8).map(|_| app.login_reply(&email, PASSWORD)));
    let checks = async {
        let mut served = 0;
        for _ in 0..20 {
            if app.get("/session", Some(&tokens.access)).await.status == StatusCode::OK {
                served += 1;
            }
            assert_eq!(app.get("/health", None).await.status, StatusCode::OK);
        }
        served
    };
    let (replies, served) = tokio::join!(logins, checks);
    assert_eq!(
        served, 20,
        "token checks keep working while hashing is saturated"
    );
    let busy: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "excess logins were refused");
    for r in &busy {
        r.assert_error(503, "unavailable");
        assert!(r.header("retry-after").is_some());
    }
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::OK || r.status == StatusCode::SERVICE_UNAVAILABLE));
}

fn token_with_header(header: Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac key");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

async fn token_header_attacks_and_key_rotation(backend: Backend) {
    let old_secret = "the-old-secret-the-old-secret-the-old-secret";
    let mut dep = Deployment::new(backend).await;
    dep.set("JWT_SECRET", old_secret);
    let old_app = dep.spawn().await;
    let (email, old) = old_app.user().await;
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(old.access.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("claims");
    old_app.stop().await;

    // Rotation: the new secret signs, the previous one still verifies.
    dep.set("JWT_SECRET", SECRET)
        .set("JWT_SECRET_PREVIOUS", old_secret);
    let app = dep.spawn().await;
    if backend == Backend::Services {
        // Sessions survive the restart in Redis: the old token is still good.
        assert_eq!(
            app.get("/session", Some(&old.access)).await.status,
            StatusCode::OK
        );
    }
    let fresh = app.login(&email, PASSWORD).await;
    assert_eq!(
        app.get("/session", Some(&fresh.access)).await.status,
        StatusCode::OK
    );
    let fresh_claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(fresh.access.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("claims");
    // The previous secret never signs: a token made with it for a live session only works
    // because it is still accepted for verification...
    let by_old = token_with_header(
        json!({"alg": "HS256", "typ": "JWT"}),
        &fresh_claims,
        old_secret.as_bytes(),
    );
    assert_eq!(
        app.get("/session", Some(&by_old)).await.status,
        StatusCode::OK
    );
    // ...and the server's own tokens do not verify with it.
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(fresh.access.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("header");
    assert!(header["kid"].is_string(), "issued tokens name their key");
    let _ = claims;

    let hs = |h: Value| token_with_header(h, &fresh_claims, SECRET.as_bytes());
    let cases = [
        (
            "jku",
            hs(json!({"alg": "HS256", "typ": "JWT", "jku": "https://attacker.example/jwks.json"})),
        ),
        (
            "x5u",
            hs(json!({"alg": "HS256", "typ": "JWT", "x5u": "https://attacker.example/cert.pem"})),
        ),
        (
            "jwk",
            hs(json!({"alg": "HS256", "typ": "JWT", "jwk": {"kty": "oct", "k": "AAAA"}})),
        ),
        (
            "unknown kid",
            hs(json!({"alg": "HS256", "typ": "JWT", "kid": "someone-elses-key"})),
        ),
        // RFC 7515 4.1.11: a critical extension the server does not understand.
        (
            "crit unknown extension",
            hs(json!({"alg": "HS256", "typ": "JWT", "crit": ["x-ext"], "x-ext": true})),
        ),
        (
            "crit empty",
            hs(json!({"alg": "HS256", "typ": "JWT", "crit": []})),
        ),
        // at+jwt (RFC 9068) and JWT (before the upgrade) are the access-token types.
        ("typ id+jwt", hs(json!({"alg": "HS256", "typ": "id+jwt"}))),
        ("typ JOSE", hs(json!({"alg": "HS256", "typ": "JOSE"}))),
        ("RS256 header", hs(json!({"alg": "RS256", "typ": "JWT"}))),
        (
            "none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                fresh.access.split('.').nth(1).unwrap_or("")
            ),
        ),
        ("HS512", {
            let mut h = Header::new(Algorithm::HS512);
            h.typ = Some("JWT".into());
            encode(
                &h,
                &fresh_claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("sign")
        }),
        ("exp beyond leeway", {
            let mut c = fresh_claims.clone();
            c["exp"] = json!(chrono::Utc::now().timestamp() - 31);
            token_with_header(json!({"alg": "HS256", "typ": "JWT"}), &c, SECRET.as_bytes())
        }),
        ("refresh token as access token", fresh.refresh.clone()),
    ];
    for (what, token) in cases {
        let r = app.get("/session", Some(&token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
    }
}

async fn common_passwords_are_refused_with_a_clear_message(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    for weak in ["password", "12345678", "iloveyou", "qwerty123", "passw0rd!"] {
        let r = app.register("weak@example.com", weak).await;
        r.assert_error(400, "invalid_request");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap_or("")
                .contains("too common"),
            "{}",
            r.body
        );
    }
    // The user's own address is not a password either.
    let r = app
        .register("margaret.hamilton@example.com", "margaret.hamilton")
        .await;
    r.assert_error(400, "invalid_request");
    app.login_reply("weak@example.com", "password")
        .await
        .assert_error(401, "invalid_credentials");
    // Changing to a common password is refused the same way, and nothing changes.
    let (email, tokens) = app.user().await;
    let body = json!({"current_password": PASSWORD, "new_password": "password1"});
    let r = app
        .request(
            reqwest::Method::PUT,
            "/profile/password",
            &tokens.access,
            Some(&body),
        )
        .await;
    r.assert_error(400, "invalid_request");
    app.login(&email, PASSWORD).await;
}

async fn one_account_under_a_hundred_concurrent_variant_registrations(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let variants = [
        "mass@example.com",
        "MASS@example.com",
        " Mass@Example.com ",
        "ｍａｓｓ@example.com",
        "mass@EXAMPLE.COM",
    ];
    let replies = futures_util::future::join_all(
        (0..100).map(|i| app.register(variants[i % variants.len()], PASSWORD)),
    )
    .await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::CREATED || r.error() == "email_taken"));
    app.login("mass@example.com", PASSWORD).await;
}

async fn cors_is_off_unless_origins_are_listed(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/session"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight(&app, "https://app.example.com")
        .await
        .expect("sent");
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "CORS is off by default"
    );
    let r = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    dep.set("CORS_ALLOWED_ORIGINS", "https://app.example.com");
    let app = dep.spawn().await;
    let r = preflight(&app, "https://app.example.com")
        .await
        .expect("sent");
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let r = preflight(&app, "https://evil.example.com")
        .await
        .expect("sent");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

async fn hostile_input_gets_a_clean_4xx_and_the_server_keeps_serving(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let json_ct = Some("application/json");
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let deep_object = format!("{}1{}", "{\"a\":".repeat(3000), "}".repeat(3000)).into_bytes();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("deeply nested array", nested),
        ("deeply nested object", deep_object),
        ("invalid UTF-8", b"{\"email\": \"\xff\xfe\", \"password\": \"x\"}".to_vec()),
        ("NUL in field", b"{\"email\": \"a\\u0000@example.com\", \"password\": \"correct horse battery\"}".to_vec()),
        ("CRLF in email", b"{\"email\": \"a@example.com\\r\\nBcc: x@y.z\", \"password\": \"correct horse battery\"}".to_vec()),
        ("lone surrogate", b"{\"email\": \"\\ud800@example.com\", \"password\": \"correct horse battery\"}".to_vec()),
    ];
    for (what, body) in bodies {
        for path in ["/register", "/login", "/token/refresh"] {
            let r = app.post_raw(path, json_ct, body.clone()).await;
            assert!(
                r.status.is_client_error(),
                "{what} on {path}: {} {}",
                r.status,
                r.body
            );
            assert!(
                r.body["error"].is_string(),
                "{what} on {path}: JSON error body"
            );
        }
    }
    // Oversized headers and a huge Authorization header.
    let huge = "a".repeat(64 * 1024);
    let r = app
        .client
        .get(app.url("/session"))
        .header("authorization", format!("Bearer {huge}"))
        .send()
        .await;
    assert!(r.map(|r| r.status().is_client_error()).unwrap_or(true));
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-filler", "b".repeat(100 * 1024))
        .send()
        .await;
    assert!(r.map(|r| r.status().is_client_error()).unwrap_or(true));
    let r = app.get("/session", Some(&"c".repeat(5000))).await;
    r.assert_error(401, "unauthorized");
    // Raw CR/LF smuggled into a header value is refused by the HTTP layer, not interpreted.
    let mut raw =
        std::net::TcpStream::connect(app.address.trim_start_matches("http://")).expect("connect");
    use std::io::{Read, Write};
    raw.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rInjected: yes\r\n\r\n")
        .expect("write");
    raw.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 4"), "{head}");
    // Still serving.
    assert_eq!(app.get("/health", None).await.status, StatusCode::OK);
    let (_, tokens) = app.user().await;
    assert_eq!(
        app.get("/session", Some(&tokens.access)).await.status,
        StatusCode::OK
    );
}
