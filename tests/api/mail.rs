//! Recovery and verification by email, through a real SMTP server (aiosmtpd, started by
//! tests/smtp_server.py on 127.0.0.1): the tests read the delivered messages and follow their
//! links. TLS (STARTTLS and implicit) with a certificate made here; the server stopped while
//! mail is queued, and a pod restarted with mail queued, lose nothing and send nothing twice.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};

use crate::support::smtp::{forgot, reset, Received, Smtp, Tls};
use crate::support::{call, eventually, unique_email, Backend, Deployment, TestApp, PASSWORD};

const NEW_PASSWORD: &str = "another staple horse";
/// A deployment that sends through `smtp`.
async fn deployment(backend: Backend, smtp: &Smtp) -> Deployment {
    let mut dep = Deployment::new(backend).await;
    smtp.configure(&mut dep);
    dep
}

async fn register(app: &TestApp, email: &str) -> Value {
    let r = app.register(email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

async fn sql(dep: &Deployment, statement: &str) {
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        statement.to_string(),
    ))
    .await
    .expect("statement");
    let _ = db.close().await;
}

/// Reset end to end over STARTTLS with SMTP authentication: the mailed link sets a new
/// password, every session of the account ends on every pod, the owner is told, and the link
/// works once.
async fn password_reset_end_to_end(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Starttls, true).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    // Nobody listens there: the webhook events stay in the outbox, where they are read.
    dep.set("WEBHOOK_URLS", "http://127.0.0.1:9/hooks")
        .set("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let a = dep.spawn().await;
    let b = if backend == Backend::Services {
        dep.spawn().await
    } else {
        TestApp::external(&a.address)
    };
    let email = unique_email("reset");
    register(&a, &email).await;
    let verify = smtp.nth(&email, 1, "Confirm your email address").await;
    assert_eq!(verify.from, "sessiond <no-reply@example.com>");
    assert!(
        verify
            .text
            .contains("https://app.example/verify-email#token="),
        "{verify:?}"
    );
    let on_a = a.login(&email, PASSWORD).await;
    let on_b = b.login(&email, PASSWORD).await;
    if backend == Backend::Services {
        b.subscribed().await;
    }

    let r = forgot(&a, &email).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mail = smtp.nth(&email, 2, "Reset your password").await;
    assert!(
        mail.text
            .contains("https://app.example/reset-password#token="),
        "{mail:?}"
    );
    let token = mail.token();
    assert_eq!(token.len(), 43, "256 bits in base64url: {token}");

    reset(&a, &token, "short")
        .await
        .assert_error(400, "invalid_request");
    let r = reset(&a, &token, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for (pod, tokens) in [(&a, &on_a), (&b, &on_b)] {
        let ended = eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || {
                pod.get("/session", Some(&tokens.access)).await.status == StatusCode::UNAUTHORIZED
            },
        )
        .await;
        assert!(ended, "a session survived the reset");
    }
    a.login_reply(&email, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    a.login(&email, NEW_PASSWORD).await;
    smtp.nth(&email, 3, "Your password was changed").await;
    reset(&a, &token, "yet another horse staple")
        .await
        .assert_error(400, "invalid_token");

    // The bodies (and their links) leave the outbox once sent; no token in the audit trail.
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    let left = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS n FROM mail_outbox WHERE text_body LIKE '%{token}%' \
                 OR html_body LIKE '%{token}%'"
            ),
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(left.try_get::<i64>("", "n").expect("n"), 0);
    let audit = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM audit_events WHERE CAST(detail AS TEXT) LIKE '%{token}%'"),
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(audit.try_get::<i64>("", "n").expect("n"), 0);
    // Reported as a password change that kept no session, after every session was revoked.
    let events = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT payload FROM webhook_outbox ORDER BY created_at_ms, id".to_string(),
        ))
        .await
        .expect("query");
    let events: Vec<Value> = events
        .iter()
        .map(|r| serde_json::from_str(&r.try_get::<String>("", "payload").expect("payload")))
        .collect::<Result<_, _>>()
        .expect("json payloads");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["user.sessions_revoked", "user.password_changed"],
        "{events:?}"
    );
    assert_eq!(events[0]["data"]["reason"], "password_reset");
    let user_id = events[0]["data"]["user_id"].clone();
    assert_eq!(
        events[1]["data"],
        json!({"user_id": user_id, "kept_session_id": null})
    );
    let _ = db.close().await;
    assert!(!a.scrape().await.contains(&token));
}

/// A known and an unknown address get the same status, body and headers, and only the known
/// one gets mail.
async fn unknown_email_is_indistinguishable(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let known = unique_email("known");
    register(&app, &known).await;
    // Its verification mail first, so that the reset mail is the second one it gets.
    smtp.nth(&known, 1, "Confirm your email address").await;
    let unknown = unique_email("unknown");
    let (k, u) = (forgot(&app, &known).await, forgot(&app, &unknown).await);
    assert_eq!(k.status, StatusCode::ACCEPTED);
    assert_eq!((k.status, &k.body), (u.status, &u.body));
    let shown = |r: &crate::support::Reply| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(shown(&k), shown(&u));
    smtp.nth(&known, 2, "Reset your password").await;
    // The known address's mail went out; the unknown one's never will. Its decoy row is
    // handled by the delivery worker as a mail is (so the work after either answer is alike),
    // and stored discarded, unsent.
    let handled = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || outbox_rows(&dep, &unknown).await == [(3, None)],
    )
    .await;
    assert!(
        handled,
        "decoy row: {:?}",
        outbox_rows(&dep, &unknown).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(smtp.to(&unknown).is_empty());
    // Asked again, each address's new token (real or decoy) supersedes its earlier one: the
    // same work whether or not an account holds the address.
    for email in [&known, &unknown] {
        assert_eq!(forgot(&app, email).await.status, StatusCode::ACCEPTED);
    }
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    for email in [&known, &unknown] {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM email_tokens WHERE email = '{email}' \
                     AND purpose = 'reset' AND used_at_ms IS NULL"
                ),
            ))
            .await
            .expect("query")
            .expect("row");
        assert_eq!(row.try_get::<i64>("", "n").expect("n"), 1, "{email}");
    }
    // Both are audited (the same write after either answer): the unknown address as a failure
    // without a subject.
    let count = async |outcome: &str, subject: &str| -> i64 {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM audit_events WHERE event_type = \
                     'password_reset_request' AND outcome = '{outcome}' AND subject_id {subject}"
                ),
            ))
            .await
            .expect("query")
            .expect("row");
        row.try_get::<i64>("", "n").expect("n")
    };
    let audited = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            count("success", "IS NOT NULL").await == 2 && count("failure", "IS NULL").await == 2
        },
    )
    .await;
    assert!(audited, "two requests of each kind audited");
    let _ = db.close().await;
}

/// A link works once, not after 30 minutes, and not after a newer link or a password change.
async fn reset_tokens_are_single_use_and_superseded(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let email = unique_email("tokens");
    register(&app, &email).await;
    // Its verification mail first: mails in one batch are sent concurrently, in any order.
    smtp.nth(&email, 1, "Confirm your email address").await;
    forgot(&app, &email).await;
    let first = smtp.nth(&email, 2, "Reset").await.token();
    forgot(&app, &email).await;
    let second = smtp.nth(&email, 3, "Reset").await.token();
    reset(&app, &first, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_token");
    for bad in ["", "x", "A".repeat(43).as_str(), "../../etc", "\r\n"] {
        reset(&app, bad, NEW_PASSWORD)
            .await
            .assert_error(400, "invalid_token");
    }
    assert_eq!(
        reset(&app, &second, NEW_PASSWORD).await.status,
        StatusCode::NO_CONTENT
    );
    reset(&app, &second, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_token");

    // Expired.
    forgot(&app, &email).await;
    let expired = smtp.nth(&email, 5, "Reset").await.token();
    sql(
        &dep,
        "UPDATE email_tokens SET expires_at_ms = 0 WHERE used_at_ms IS NULL",
    )
    .await;
    reset(&app, &expired, PASSWORD)
        .await
        .assert_error(400, "invalid_token");

    // A password change voids the unused links.
    forgot(&app, &email).await;
    let before_change = smtp.nth(&email, 6, "Reset").await.token();
    let tokens = app.login(&email, NEW_PASSWORD).await;
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &tokens.access,
            Some(&json!({"current_password": NEW_PASSWORD, "new_password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    smtp.nth(&email, 7, "Your password was changed").await;
    reset(&app, &before_change, NEW_PASSWORD)
        .await
        .assert_error(400, "invalid_token");
}

/// Verification off: the account works at once and becomes verified by its link; a resend
/// supersedes the first link. On: 202 at registration, 403 only after the right password.
async fn verification_on_and_off(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Implicit, false).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let email = unique_email("verify");
    let user = register(&app, &email).await;
    assert_eq!(user["email_verified"], json!(false));
    let first = smtp.nth(&email, 1, "Confirm").await.token();
    let tokens = app.login(&email, PASSWORD).await;
    let r = app.post_auth("/email/verify/resend", &tokens.access).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let second = smtp.nth(&email, 2, "Confirm").await.token();
    let verify = |t: String| {
        let app = &app;
        async move { app.post_json("/email/verify", &json!({ "token": t })).await }
    };
    verify(first).await.assert_error(400, "invalid_token");
    assert_eq!(verify(second.clone()).await.status, StatusCode::NO_CONTENT);
    verify(second).await.assert_error(400, "invalid_token");
    // The first proof of the address ends the sessions opened before it.
    let old = app.get("/profile", Some(&tokens.access)).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{}", old.body);
    let tokens = app.login(&email, PASSWORD).await;
    let profile = app.get("/profile", Some(&tokens.access)).await;
    assert_eq!(
        profile.body["email_verified"],
        json!(true),
        "{}",
        profile.body
    );
    app.stop().await;

    dep.set("REQUIRE_EMAIL_VERIFICATION", "true");
    let app = dep.spawn().await;
    let email = unique_email("required");
    let r = app.register(&email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let token = smtp.nth(&email, 1, "Confirm").await.token();
    app.login_reply(&email, "wrong password here")
        .await
        .assert_error(401, "invalid_credentials");
    app.login_reply(&email, PASSWORD)
        .await
        .assert_error(403, "email_not_verified");
    // Its link is recent: none is added. Once it is older, a refused login mails a fresh one,
    // which supersedes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.to(&email).len(), 1);
    sql(&dep, "UPDATE email_tokens SET created_at_ms = 0").await;
    app.login_reply(&email, PASSWORD)
        .await
        .assert_error(403, "email_not_verified");
    let fresh = smtp.nth(&email, 2, "Confirm").await.token();
    app.post_json("/email/verify", &json!({ "token": token }))
        .await
        .assert_error(400, "invalid_token");
    let r = app
        .post_json("/email/verify", &json!({ "token": fresh }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.login(&email, PASSWORD).await;
}

/// REQUIRE_EMAIL_VERIFICATION: registering a taken address answers exactly as a new one, changes
/// nothing, and tells the owner.
async fn taken_address_under_required_verification(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    dep.set("REQUIRE_EMAIL_VERIFICATION", "true");
    let app = dep.spawn().await;
    let email = unique_email("owner");
    let first = app.register(&email, PASSWORD).await;
    let token = smtp.nth(&email, 1, "Confirm").await.token();
    let again = app
        .post_json(
            "/register",
            &json!({"email": email.to_uppercase(), "password": NEW_PASSWORD, "name": "Mallory"}),
        )
        .await;
    assert_eq!((first.status, &first.body), (again.status, &again.body));
    assert_eq!(again.status, StatusCode::ACCEPTED);
    smtp.nth(&email, 2, "Someone tried to register").await;
    // A weak password is refused alike, taken address or not.
    app.register(&email, "password")
        .await
        .assert_error(400, "invalid_request");
    app.register(&unique_email("new"), "password")
        .await
        .assert_error(400, "invalid_request");
    app.post_json("/email/verify", &json!({ "token": token }))
        .await;
    app.login(&email, PASSWORD).await;
    app.login_reply(&email, NEW_PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
}

/// PUT /profile/email: the address changes only when the link mailed to the new one is used;
/// the old one is told, and logins take the new address.
async fn email_change(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let old = unique_email("old");
    register(&app, &old).await;
    let tokens = app.login(&old, PASSWORD).await;
    let new = unique_email("new");
    let change = |body: Value| {
        let (app, access) = (&app, tokens.access.clone());
        async move {
            app.request(Method::PUT, "/profile/email", &access, Some(&body))
                .await
        }
    };
    change(json!({"new_email": new, "current_password": "wrong password!"}))
        .await
        .assert_error(403, "forbidden");
    change(json!({"new_email": old, "current_password": PASSWORD}))
        .await
        .assert_error(400, "invalid_request");
    let r = change(json!({"new_email": new, "current_password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mail = smtp.nth(&new, 1, "Confirm your new email address").await;
    assert_eq!(
        app.get("/profile", Some(&tokens.access)).await.body["email"],
        json!(old)
    );
    let r = app
        .post_json("/email/verify", &json!({ "token": mail.token() }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let told = smtp.nth(&old, 2, "email address was changed").await;
    assert!(told.text.contains(&new), "{told:?}");
    let profile = app.get("/profile", Some(&tokens.access)).await.body;
    assert_eq!(
        (&profile["email"], &profile["email_verified"]),
        (&json!(new), &json!(true))
    );
    app.login_reply(&old, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    app.login(&new, PASSWORD).await;
    // A taken address: the same answer, and no mail to it.
    let other = unique_email("other");
    register(&app, &other).await;
    let tokens = app.login(&new, PASSWORD).await;
    let r = app
        .request(
            Method::PUT,
            "/profile/email",
            &tokens.access,
            Some(&json!({"new_email": other, "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    smtp.wait_for(&other, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.to(&other).len(), 1, "only its own verification mail");
}

/// NOTIFY_NEW_LOGIN: the first sign-in is no news; one from another client address or user
/// agent is mailed; one from a known client is not.
async fn new_sign_in_notice(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    dep.set("TRUSTED_PROXIES", "127.0.0.1/32");
    let app = dep.spawn().await;
    let email = unique_email("notice");
    register(&app, &email).await;
    smtp.wait_for(&email, 1).await;
    for (client, ua) in [
        ("198.51.100.7", "Firefox"),
        ("198.51.100.7", "Firefox"),
        ("203.0.113.9", "Firefox"),
    ] {
        let r = app
            .client
            .post(app.url("/login"))
            .header("x-forwarded-for", client)
            .header("user-agent", ua)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let mail = smtp.nth(&email, 2, "New sign-in").await;
    assert!(
        mail.text.contains("203.0.113.9") && mail.text.contains("Firefox"),
        "{mail:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.to(&email).len(), 2);
}

/// The SMTP server is down while ten mails are queued: each arrives exactly once after it
/// comes back.
async fn smtp_outage_loses_and_repeats_nothing(backend: Backend) {
    let Some(mut smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    smtp.stop().await;
    let emails: Vec<String> = (0..10)
        .map(|i| unique_email(&format!("outage{i}")))
        .collect();
    for email in &emails {
        register(&app, email).await;
    }
    let retried = eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            app.scrape()
                .await
                .contains("sessiond_mail_deliveries_total{outcome=\"retried\"}")
        },
    )
    .await;
    assert!(retried, "no failed attempt while the server was down");
    assert!(smtp.received().is_empty());
    smtp.launch().await;
    for email in &emails {
        smtp.wait_for(email, 1).await;
    }
    // Time for any duplicate to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = smtp.received();
    assert_eq!(all.len(), 10, "{all:?}");
    for email in &emails {
        assert_eq!(smtp.to(email).len(), 1, "{email}");
    }
    let pending = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || app.metric("sessiond_mail_pending").await == 0.0,
    )
    .await;
    assert!(pending);
}

/// A pod stopped with mail queued (SMTP down): the next pod delivers it, once.
async fn pod_restart_keeps_queued_mail(backend: Backend) {
    let Some(mut smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    smtp.stop().await;
    let emails: Vec<String> = (0..3)
        .map(|i| unique_email(&format!("restart{i}")))
        .collect();
    for email in &emails {
        register(&app, email).await;
    }
    app.stop().await;
    smtp.launch().await;
    let _next = dep.spawn().await;
    for email in &emails {
        smtp.wait_for(email, 1).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.received().len(), 3);
}

/// CR or LF in an address or a name (header injection) is refused with 400 and mails nothing.
async fn line_breaks_in_addresses_and_names_are_refused(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let email = unique_email("inject");
    for hostile in [
        format!("{email}\r\nBcc: victim@example.com"),
        format!("{email}\nBcc: victim@example.com"),
        format!("victim@example.com\r\n{email}"),
    ] {
        app.register(&hostile, PASSWORD)
            .await
            .assert_error(400, "invalid_request");
        forgot(&app, &hostile)
            .await
            .assert_error(400, "invalid_request");
    }
    app.post_json(
        "/register",
        &json!({"email": email, "password": PASSWORD, "name": "Ada\r\nBcc: victim@example.com"}),
    )
    .await
    .assert_error(400, "invalid_request");
    register(&app, &email).await;
    let tokens = app.login(&email, PASSWORD).await;
    let r = call(
        &app,
        Method::PUT,
        "/profile/email",
        Some(&tokens.access),
        Some(&json!({"new_email": "a@example.com\r\nBcc: victim@example.com", "current_password": PASSWORD})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    smtp.wait_for(&email, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = smtp.received();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(!all[0].bcc && smtp.to("victim@example.com").is_empty());
}

/// The outbox rows' `(state, last_error)` for `email`.
async fn outbox_rows(dep: &Deployment, email: &str) -> Vec<(i16, Option<String>)> {
    let db = Database::connect(dep.database_url())
        .await
        .expect("database");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT state, last_error FROM mail_outbox WHERE recipient = '{email}'"),
        ))
        .await
        .expect("query");
    let _ = db.close().await;
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "state").expect("state"),
                r.try_get("", "last_error").expect("last_error"),
            )
        })
        .collect()
}

/// `smtp://` requires STARTTLS: a server that does not offer it (a stripped offer) gets
/// neither the SMTP password nor the mail, with or without credentials; the mail stays queued
/// and retried, and says why. Only an `smtp+plaintext://` URL sends in clear.
async fn plaintext_smtp_needs_the_opt_out(backend: Backend) {
    for auth in [true, false] {
        let Some(smtp) = Smtp::start(Tls::Plain, auth).await else {
            return;
        };
        let mut dep = deployment(backend, &smtp).await;
        let plaintext = dep.vars()["SMTP_URL"].clone();
        dep.set(
            "SMTP_URL",
            plaintext.replace("smtp+plaintext://", "smtp://"),
        );
        let app = dep.spawn().await;
        let email = unique_email("stripped");
        register(&app, &email).await;
        let retried = async || {
            app.scrape()
                .await
                .contains("sessiond_mail_deliveries_total{outcome=\"retried\"}")
        };
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || retried().await || !smtp.received().is_empty(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(smtp.received().is_empty(), "auth {auth}: sent in clear");
        assert!(retried().await, "auth {auth}: no failed attempt counted");
        assert_eq!(smtp.auth_attempts(), "", "auth {auth}: AUTH sent in clear");
        let rows = outbox_rows(&dep, &email).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (state, cause) = &rows[0];
        assert_eq!(*state, 0, "auth {auth}: still pending");
        let cause = cause.as_deref().unwrap_or("");
        assert!(cause.contains("STARTTLS"), "auth {auth}: {cause}");
        assert!(!cause.contains("s3cret"), "{cause}");
        app.stop().await;

        // The same server with the opt-out: sent in clear, AUTH included (which shows the
        // server records it).
        dep.set("SMTP_URL", plaintext);
        let _app = dep.spawn().await;
        smtp.nth(&email, 1, "Confirm your email address").await;
        assert_eq!(
            smtp.auth_attempts().lines().count(),
            usize::from(auth),
            "auth {auth}"
        );
    }
}

/// A display name is chosen by whoever registers, who need not own the address: it is not
/// expanded (a name holding `{{link}}` stays that text), it is escaped in the HTML part, and no
/// mail to an address not yet verified shows it.
async fn display_names_are_not_expanded_nor_shown_unverified(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let dep = deployment(backend, &smtp).await;
    let app = dep.spawn().await;
    let email = unique_email("named");
    let name = "{{link}} <b>Mallory</b> {{app_url}}";
    let r = app
        .post_json(
            "/register",
            &json!({"email": email, "password": PASSWORD, "name": name}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let no_name = |mail: &Received| {
        for body in [&mail.text, &mail.html] {
            assert!(!body.contains("Mallory"), "{body}");
            assert_eq!(body.matches("#token=").count(), 1, "{body}");
        }
        assert!(mail.text.contains("Hello there,"), "{mail:?}");
    };
    // Unverified: the verification mail and a reset mail greet neutrally.
    let verify = smtp.nth(&email, 1, "Confirm your email address").await;
    no_name(&verify);
    forgot(&app, &email).await;
    no_name(&smtp.nth(&email, 2, "Reset your password").await);

    // Verified: the name, as typed, not expanded, escaped in HTML.
    let r = app
        .post_json("/email/verify", &json!({ "token": verify.token() }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    forgot(&app, &email).await;
    let mail = smtp.nth(&email, 3, "Reset your password").await;
    assert!(mail.text.contains(&format!("Hello {name},")), "{mail:?}");
    assert!(
        mail.html
            .contains("{{link}} &lt;b&gt;Mallory&lt;/b&gt; {{app_url}}"),
        "{}",
        mail.html
    );
    assert!(!mail.html.contains("<b>Mallory"), "{}", mail.html);
    for body in [&mail.text, &mail.html] {
        assert_eq!(body.matches("#token=").count(), 1, "{body}");
        assert!(!body.contains("Hello https://"), "{body}");
    }
}

crate::both_backends!(
    display_names_are_not_expanded_nor_shown_unverified,
    plaintext_smtp_needs_the_opt_out,
    password_reset_end_to_end,
    unknown_email_is_indistinguishable,
    reset_tokens_are_single_use_and_superseded,
    verification_on_and_off,
    taken_address_under_required_verification,
    email_change,
    new_sign_in_notice,
    smtp_outage_loses_and_repeats_nothing,
    pod_restart_keeps_queued_mail,
    line_breaks_in_addresses_and_names_are_refused,
    admin_emails_wait_for_the_address_to_be_proven,
    every_change_of_a_way_to_sign_in_is_mailed,
);

/// ASVS 6.3.7: the owner hears of every way to sign in added or removed (TOTP turned on and
/// off, a passkey registered and deleted), in sessiond's words only: a passkey's name is the
/// registering party's text and stays out. A pending enrolment removed unconfirmed, or a
/// wrong confirmation code, changes nothing and mails nothing.
async fn every_change_of_a_way_to_sign_in_is_mailed(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Plain, false).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    dep.set("WEBAUTHN_RP_ID", crate::support::passkey::RP_ID)
        .set("WEBAUTHN_ORIGINS", crate::support::passkey::ORIGIN)
        .set("WEBAUTHN_RP_NAME", "sessiond tests");
    let app = dep.spawn().await;
    let email = unique_email("methods");
    register(&app, &email).await;
    let token = app.login(&email, PASSWORD).await.access;
    const CHANGED: &str = "A way to sign in to your account changed";

    // Started and abandoned: nothing guarded a sign-in, so nothing to tell.
    let r = app.request(Method::POST, "/mfa/totp", &token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app
        .request(
            Method::POST,
            "/mfa/totp/confirm",
            &token,
            Some(&json!({"code": "000000"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = app.request(Method::DELETE, "/mfa/totp", &token, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    crate::support::totp::enrol(&app, &token).await;
    let on = smtp.nth_with(&email, CHANGED, 1).await;
    assert!(
        on.text.contains("authenticator app was turned on"),
        "{on:?}"
    );
    assert!(on.text.contains(&email), "{on:?}");

    let mut key = crate::support::passkey::Passkey::new();
    let credential =
        crate::support::passkey::register(&app, &token, &mut key, "<b>{{link}}</b>").await;
    let added = smtp.nth_with(&email, CHANGED, 2).await;
    assert!(added.text.contains("A passkey was registered"), "{added:?}");
    let path = format!(
        "/mfa/webauthn/credentials/{}",
        credential["id"].as_str().expect("id")
    );
    let r = app.request(Method::DELETE, &path, &token, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let deleted = smtp.nth_with(&email, CHANGED, 3).await;
    assert!(
        deleted.text.contains("A passkey was deleted"),
        "{deleted:?}"
    );

    let r = app.request(Method::DELETE, "/mfa/totp", &token, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let off = smtp.nth_with(&email, CHANGED, 4).await;
    assert!(
        off.text
            .contains("authenticator app and its recovery codes were removed"),
        "{off:?}"
    );

    for mail in [&on, &added, &deleted, &off] {
        for body in [&mail.text, &mail.html] {
            assert!(
                !body.contains("{{link}}") && !body.contains("<b>"),
                "{body}"
            );
        }
    }
    // Each change mailed once, and the abandoned enrolment not at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = smtp.to(&email);
    assert_eq!(
        all.iter().filter(|m| m.subject.contains(CHANGED)).count(),
        4,
        "{all:?}"
    );
}

/// ADMIN_EMAILS grants `admin` only to a proven address: whoever registers a listed address
/// first gets a plain account (also across a restart, when the listed accounts are promoted),
/// and the owner's use of the mailed verification link promotes it.
async fn admin_emails_wait_for_the_address_to_be_proven(backend: Backend) {
    let Some(smtp) = Smtp::start(Tls::Implicit, false).await else {
        return;
    };
    let mut dep = deployment(backend, &smtp).await;
    let email = unique_email("boss");
    dep.set("ADMIN_EMAILS", &email);
    let app = dep.spawn().await;
    let r = app.register(&email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["roles"], json!(["user"]), "{}", r.body);
    let roles = async |app: &TestApp| {
        let tokens = app.login(&email, PASSWORD).await;
        let admin = call(app, Method::GET, "/admin/users", Some(&tokens.access), None).await;
        let session = app.get("/session", Some(&tokens.access)).await;
        (session.body["roles"].clone(), admin.status)
    };
    assert_eq!(roles(&app).await, (json!(["user"]), StatusCode::FORBIDDEN));
    app.stop().await;
    let app = dep.spawn().await;
    assert_eq!(roles(&app).await, (json!(["user"]), StatusCode::FORBIDDEN));

    let token = smtp.nth(&email, 1, "Confirm").await.token();
    let r = app
        .post_json("/email/verify", &json!({ "token": token }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        roles(&app).await,
        (json!(["admin", "user"]), StatusCode::OK)
    );
}
