use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(forged_expired_and_foreign_tokens_are_401);

fn sign(claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    let mut header = Header::new(alg);
    header.typ = Some("JWT".into());
    encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

async fn forged_expired_and_foreign_tokens_are_401(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (_, tokens) = app.user().await;
    let good = claims_of(&tokens.access);
    let now = chrono::Utc::now().timestamp();
    // Sanity: re-signing the real claims with the real secret is accepted.
    assert_eq!(
        app.get(
            "/session",
            Some(&sign(&good, SECRET.as_bytes(), Algorithm::HS256))
        )
        .await
        .status,
        200
    );

    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(&c, SECRET.as_bytes(), Algorithm::HS256)
    };
    let parts: Vec<&str> = tokens.access.split('.').collect();
    let mut tampered_payload = good.clone();
    tampered_payload["roles"] = json!(["admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered_payload.to_string()),
        parts[2]
    );
    let none_token = |alg: &str| {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            parts[1]
        )
    };
    let mut no_typ = Header::new(Algorithm::HS256);
    no_typ.typ = None;
    let cases: Vec<(&str, String)> = vec![
        ("tampered payload", tampered),
        ("alg none", none_token("none")),
        ("alg NONE", none_token("NONE")),
        ("alg nOnE", none_token("nOnE")),
        ("HS384", sign(&good, SECRET.as_bytes(), Algorithm::HS384)),
        (
            "other secret",
            sign(
                &good,
                b"another-secret-another-secret-another-secret",
                Algorithm::HS256,
            ),
        ),
        (
            "expired",
            with(json!({"exp": now - 120, "iat": now - 1000, "nbf": now - 1000})),
        ),
        ("not yet valid", with(json!({"nbf": now + 600}))),
        ("wrong issuer", with(json!({"iss": "someone-else"}))),
        ("wrong audience", with(json!({"aud": "another-service"}))),
        ("missing exp", with(json!({"exp": null}))),
        ("missing sid", with(json!({"sid": null}))),
        ("missing jti", with(json!({"jti": null}))),
        (
            "unknown session",
            with(json!({"sid": uuid::Uuid::new_v4()})),
        ),
        (
            "other user's session",
            with(json!({"sub": uuid::Uuid::new_v4()})),
        ),
        (
            "no typ",
            encode(&no_typ, &good, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign"),
        ),
        ("garbage", "not.a.jwt".to_string()),
        ("huge", "a".repeat(8000)),
    ];
    for (what, token) in cases {
        let r = app.get("/session", Some(&token)).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        r.assert_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }

    // Only `Authorization: Bearer` counts: other schemes, query strings and cookies are ignored.
    let t = &tokens.access;
    let attempts = [
        app.client
            .get(app.url("/session"))
            .header("authorization", format!("Basic {t}")),
        app.client
            .get(app.url("/session"))
            .header("authorization", t.clone()),
        app.client
            .get(app.url(&format!("/session?access_token={t}"))),
        app.client
            .get(app.url("/session"))
            .header("cookie", format!("access_token={t}")),
        app.client.get(app.url("/session")),
    ];
    for req in attempts {
        let res = req.send().await.expect("sent");
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
    // The scheme name is case-insensitive (RFC 7235).
    let res = app
        .client
        .get(app.url("/session"))
        .header("authorization", format!("bearer {t}"))
        .send()
        .await;
    assert_eq!(res.expect("sent").status(), 200);
}
