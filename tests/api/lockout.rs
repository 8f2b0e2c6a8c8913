//! Lockout and throttling that cannot be turned against the owner:
//! password changes are throttled and count toward the lockout, logins keep a share of the
//! hashing pool, an address the owner logged in from is judged by its own failures only (ASVS
//! 6.1.1), IPv6 clients count per /64, and throttled or locked logins are audited with the
//! account as subject.
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    a_stolen_token_guessing_the_current_password_is_locked_out_like_a_login,
    password_changes_are_limited_per_session_and_per_account,
    password_change_floods_cannot_take_the_hashing_slots_logins_need,
    a_new_password_is_held_to_the_registration_policy,
    the_owner_logs_in_from_a_known_address_while_other_addresses_are_locked_out,
    ipv6_clients_are_limited_per_64,
    throttled_and_locked_logins_name_the_account_and_each_lock_is_audited_once,
);

async fn change_password(app: &TestApp, token: &str, current: &str, new: &str) -> Reply {
    let body = json!({"current_password": current, "new_password": new});
    app.request(Method::PUT, "/profile/password", token, Some(&body))
        .await
}

const NEW_PASSWORD: &str = "a brand new passphrase 7";

async fn a_stolen_token_guessing_the_current_password_is_locked_out_like_a_login(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    // A lock long enough to outlast the test: nothing here depends on timing.
    dep.set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600);
    let app = dep.spawn().await;
    let (email, stolen) = app.user().await;
    for i in 0..3 {
        change_password(
            &app,
            &stolen.access,
            &format!("guess number {i}"),
            NEW_PASSWORD,
        )
        .await
        .assert_error(403, "forbidden");
    }
    let r = change_password(&app, &stolen.access, "guess number 3", NEW_PASSWORD).await;
    r.assert_error(429, "rate_limited");
    assert!(r
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|s| s > 0));
    // While locked, even the right current password changes nothing...
    let r = change_password(&app, &stolen.access, PASSWORD, NEW_PASSWORD).await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    // ...and the failures count toward the login lockout of the same account.
    app.login_reply(&email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");
    app.login_reply(&email, NEW_PASSWORD)
        .await
        .assert_error(429, "rate_limited");
}

async fn password_changes_are_limited_per_session_and_per_account(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("LOCKOUT_THRESHOLD", 0)
        .set("RATE_LIMIT_PASSWORD_CHANGE_PER_SESSION", 3)
        .set("RATE_LIMIT_PASSWORD_CHANGE_PER_ACCOUNT", 5);
    let app = dep.spawn().await;
    let (email, first) = app.user().await;
    let second = app.login(&email, PASSWORD).await;
    for _ in 0..3 {
        change_password(&app, &first.access, "not the password", NEW_PASSWORD)
            .await
            .assert_error(403, "forbidden");
    }
    change_password(&app, &first.access, "not the password", NEW_PASSWORD)
        .await
        .assert_error(429, "rate_limited");
    // Another session of the account has its own per-session budget, but shares the account's.
    for _ in 0..2 {
        change_password(&app, &second.access, "not the password", NEW_PASSWORD)
            .await
            .assert_error(403, "forbidden");
    }
    let r = change_password(&app, &second.access, PASSWORD, NEW_PASSWORD).await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    // Nothing changed.
    app.login(&email, PASSWORD).await;
    // Another account is not affected.
    let (_, other) = app.user().await;
    let r = change_password(&app, &other.access, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

async fn password_change_floods_cannot_take_the_hashing_slots_logins_need(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    // Slow hashes, two slots, a short queue; throttling and lockout off so that every one of the
    // flood's attempts really asks for a hash.
    dep.set("ARGON2_MAX_CONCURRENCY", 2)
        .set("ARGON2_MAX_QUEUE", 2)
        .set("ARGON2_QUEUE_TIMEOUT_MS", 30_000)
        .set("ARGON2_ITERATIONS", 40)
        .set("LOCKOUT_THRESHOLD", 0);
    let app = dep.spawn().await;
    let (email, stolen) = app.user().await;
    let (app_ref, token) = (&app, stolen.access.as_str());
    let flood = futures_util::future::join_all((0..60).map(|i| async move {
        change_password(app_ref, token, &format!("guess {i}"), NEW_PASSWORD).await
    }));
    let login = async {
        // Log in once the flood fills the pool and its queue (hashing requests are being shed).
        let saturated = eventually(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(10),
            async || app.metric("sessiond_argon2_rejected_total").await >= 1.0,
        )
        .await;
        assert!(saturated, "the flood saturates the hashing pool");
        app.login_reply(&email, PASSWORD).await
    };
    let (replies, login) = tokio::join!(flood, login);
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    for r in &replies {
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::SERVICE_UNAVAILABLE,
            "{} {}",
            r.status,
            r.body
        );
    }
    assert!(
        replies
            .iter()
            .any(|r| r.status == StatusCode::SERVICE_UNAVAILABLE),
        "the flood itself is shed"
    );
}

async fn a_new_password_is_held_to_the_registration_policy(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let email = "velvet.quasar.ninety@example.com";
    let r = app
        .post_json(
            "/register",
            &json!({"email": email, "password": PASSWORD, "name": "Wilhelmina Blackwood"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let tokens = app.login(email, PASSWORD).await;
    for derived in [
        "velvet.quasar.ninety",
        "Wilhelmina Blackwood",
        "wilhelmina blackwood",
    ] {
        let r = change_password(&app, &tokens.access, PASSWORD, derived).await;
        r.assert_error(400, "invalid_request");
        // Registration refuses the same password for the same email and name.
        let r = app
            .post_json(
                "/register",
                &json!({"email": "velvet.quasar.ninety@example.org", "password": derived,
                    "name": "Wilhelmina Blackwood"}),
            )
            .await;
        r.assert_error(400, "invalid_request");
    }
    change_password(&app, &tokens.access, PASSWORD, "short")
        .await
        .assert_error(400, "invalid_request");
    // Nothing changed; a good new password is taken.
    app.login(email, PASSWORD).await;
    let r = change_password(&app, &tokens.access, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.login(email, NEW_PASSWORD).await;
}

async fn the_owner_logs_in_from_a_known_address_while_other_addresses_are_locked_out(
    backend: Backend,
) {
    let mut dep = Deployment::new(backend).await;
    dep.set("TRUSTED_PROXIES", "127.0.0.1/32")
        .set("LOCKOUT_THRESHOLD", 3)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600)
        .set("RATE_LIMIT_LOGIN_PER_ACCOUNT", 5);
    let app = dep.spawn().await;
    let email = "owner@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let (home, phone) = ("198.51.100.7", "2001:db8:aa:bb::1");
    for client in [home, phone] {
        let r = app.login_from(client, email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    // Someone who only knows the email, from many addresses: locked out and throttled.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = app
            .login_from(&format!("203.0.113.{i}"), email, &format!("guess {i}"))
            .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // A fresh address with the right password is refused while the lock lasts.
    for fresh in ["203.0.113.200", "192.0.2.55", "2001:db8:aa:cc::1"] {
        app.login_from(fresh, email, PASSWORD)
            .await
            .assert_error(429, "rate_limited");
    }

    // The owner, from where they logged in before (the phone as any address of its /64).
    for known in [home, phone, "2001:db8:aa:bb:1234:5678:9abc:def0"] {
        let r = app.login_from(known, email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::OK, "{known}: {}", r.body);
    }
    // The attacker is still locked out after the owner's logins.
    app.login_from("203.0.113.201", email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");

    // A known address that guesses wrong itself is locked like any other.
    for _ in 0..3 {
        app.login_from(home, email, "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    app.login_from(home, email, PASSWORD)
        .await
        .assert_error(429, "rate_limited");
    // ...without taking the other known address down with it.
    let r = app.login_from(phone, email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn ipv6_clients_are_limited_per_64(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    dep.set("TRUSTED_PROXIES", "127.0.0.1/32")
        .set("LOCKOUT_THRESHOLD", 0)
        .set("RATE_LIMIT_LOGIN_PER_IP", 3);
    let app = dep.spawn().await;
    let mut statuses = Vec::new();
    for i in 1..=5 {
        let r = app
            .login_from(
                &format!("2001:db8:1:2::{i:x}"),
                &unique_email("nobody"),
                "not the password",
            )
            .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Any address of the /64, in any spelling, is the same client.
    app.login_from(
        "2001:0db8:0001:0002:ffff:ffff:ffff:ffff",
        &unique_email("nobody"),
        "not the password",
    )
    .await
    .assert_error(429, "rate_limited");
    // The next /64 is another client; IPv4 addresses still count one by one.
    for client in ["2001:db8:1:3::1", "192.0.2.1", "192.0.2.2"] {
        app.login_from(client, &unique_email("nobody"), "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
}

async fn throttled_and_locked_logins_name_the_account_and_each_lock_is_audited_once(
    backend: Backend,
) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("LOCKOUT_THRESHOLD", 2)
        .set("LOCKOUT_BASE_SECONDS", 600)
        .set("LOCKOUT_MAX_SECONDS", 600)
        .set("RATE_LIMIT_LOGIN_PER_ACCOUNT", 6);
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();

    let locked = unique_email("locked");
    let r = app.register(&locked, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let locked_id = r.body["id"].as_str().expect("id").to_string();
    for _ in 0..2 {
        app.login_reply(&locked, "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let mut refused = Vec::new();
    for password in ["not the password", PASSWORD, "another guess"] {
        let r = app.login_reply(&locked, password).await;
        r.assert_error(429, "rate_limited");
        refused.push(r);
    }
    // An unknown email locks the same way and gets the very same answer.
    let nobody = unique_email("nobody");
    for _ in 0..2 {
        app.login_reply(&nobody, "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let unknown = app.login_reply(&nobody, PASSWORD).await;
    assert_eq!(
        (unknown.status, &unknown.body),
        (refused[1].status, &refused[1].body)
    );

    // Over the per-account limit (not locked): refused, and audited about the account.
    let busy = unique_email("busy");
    let r = app.register(&busy, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let busy_id = r.body["id"].as_str().expect("id").to_string();
    // The first login makes this address known to the account; the next six count in its own
    // bucket.
    for _ in 0..7 {
        app.login(&busy, PASSWORD).await;
    }
    let limited = app.login_reply(&busy, PASSWORD).await;
    limited.assert_error(429, "rate_limited");

    // One account_locked event per lock, about the account, none for the unknown email.
    let events = settled(&app, token, "type=account_locked", 1).await;
    assert_event(
        &events[0],
        "account_locked",
        None,
        Some(&locked_id),
        "denied",
    );
    let logins = settled(&app, token, &format!("user_id={locked_id}&type=login"), 5).await;
    let denied: Vec<&Value> = logins.iter().filter(|e| e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 3, "{logins:?}");
    for e in denied {
        assert_event(e, "login", None, Some(&locked_id), "denied");
        assert_eq!(e["detail"]["reason"], "locked", "{e}");
    }
    let logins = settled(&app, token, &format!("user_id={busy_id}&type=login"), 8).await;
    let denied: Vec<&Value> = logins.iter().filter(|e| e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 1, "{logins:?}");
    assert_event(denied[0], "login", None, Some(&busy_id), "denied");
    assert_eq!(denied[0]["detail"]["reason"], "rate_limited");
    // The unknown email's refusals have no subject, and the responses never name anyone.
    for r in refused.iter().chain([&unknown, &limited]) {
        let body = r.body.to_string();
        assert!(
            !body.contains(&locked_id) && !body.contains(&busy_id),
            "{body}"
        );
    }
}
