use reqwest::StatusCode;
use serde_json::json;

use crate::{both_backends, support::*};

both_backends!(bad_bodies_get_clear_json_errors_and_store_nothing);

async fn bad_bodies_get_clear_json_errors_and_store_nothing(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let json_ct = Some("application/json");

    // Malformed JSON, wrong shapes.
    for body in [
        &b"{\"email\": "[..],
        b"not json",
        b"",
        b"[]",
        b"null",
        b"{\"email\": 1, \"password\": 2}",
    ] {
        let r = app.post_raw("/register", json_ct, body.to_vec()).await;
        r.assert_error(400, "invalid_request");
    }
    let r = app
        .post_json("/register", &json!({"email": "a@example.com"}))
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("password"),
        "{}",
        r.body
    );
    let r = app
        .post_json(
            "/register",
            &json!({"email": "a@example.com", "password": PASSWORD, "admin": true}),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap_or("").contains("admin"),
        "{}",
        r.body
    );
    // Duplicate keys are refused rather than silently resolved.
    let dup = br#"{"email":"a@example.com","password":"aaaaaaaaaa","password":"bbbbbbbbbb"}"#;
    app.post_raw("/register", json_ct, dup.to_vec())
        .await
        .assert_error(400, "invalid_request");

    // Wrong or missing content type: 415.
    let body =
        serde_json::to_vec(&json!({"email": "a@example.com", "password": PASSWORD})).expect("json");
    app.post_raw("/register", Some("text/plain"), body.clone())
        .await
        .assert_error(415, "unsupported_media_type");
    app.post_raw("/register", None, body.clone())
        .await
        .assert_error(415, "unsupported_media_type");
    app.post_raw(
        "/login",
        Some("application/x-www-form-urlencoded"),
        b"email=a&password=b".to_vec(),
    )
    .await
    .assert_error(415, "unsupported_media_type");

    // Over the 16 KiB cap: 413.
    let huge =
        json!({"email": "a@example.com", "password": PASSWORD, "name": "x".repeat(20 * 1024)});
    app.post_json("/register", &huge)
        .await
        .assert_error(413, "payload_too_large");

    // Field rules.
    let cases = [
        (
            json!({"email": "short@example.com", "password": "1234567"}),
            "at least 8",
        ),
        (
            json!({"email": "long@example.com", "password": "x".repeat(129)}),
            "at most 128",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (json!({"email": "", "password": PASSWORD}), "email"),
        (
            json!({"email": format!("{}@example.com", "a".repeat(300)), "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": "name@example.com", "password": PASSWORD, "name": "n".repeat(101)}),
            "name",
        ),
        (
            json!({"email": "crlf@example.com", "password": PASSWORD, "name": "a\r\nb"}),
            "name",
        ),
    ];
    for (body, needle) in cases {
        let r = app.post_json("/register", &body).await;
        r.assert_error(400, "invalid_request");
        assert!(
            r.body["message"].as_str().unwrap_or("").contains(needle),
            "{} → {}",
            body,
            r.body
        );
    }
    // Boundaries: 8 and 128 characters (not bytes) are accepted, and never trimmed.
    let eight = "éÖß€ñ∂ƒ "; // 8 characters (17 bytes), the last a space
    let r = app.register("eight@example.com", eight).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    app.login("eight@example.com", eight).await;
    app.login_reply("eight@example.com", eight.trim())
        .await
        .assert_error(401, "invalid_credentials");
    let long: String = (0..128)
        .map(|i| char::from(b'!' + ((i * 37 + 11) % 90) as u8))
        .collect();
    assert_eq!(
        app.register("long128@example.com", &long).await.status,
        StatusCode::CREATED
    );
    app.login("long128@example.com", &long).await;

    // None of the refused bodies created an account.
    for email in [
        "a@example.com",
        "short@example.com",
        "long@example.com",
        "crlf@example.com",
        "name@example.com",
    ] {
        app.login_reply(email, PASSWORD)
            .await
            .assert_error(401, "invalid_credentials");
    }
    // Error bodies never echo the input or the parser's text.
    let r = app
        .post_raw("/register", json_ct, b"{\"email\": \"<script>\"".to_vec())
        .await;
    assert!(!r.body.to_string().contains("<script>"));
    assert!(!r.body.to_string().contains("line"), "{}", r.body);
}
