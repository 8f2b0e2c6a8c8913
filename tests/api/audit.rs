//! The audit trail: every security event recorded exactly once, with the right actor, subject
//! and outcome. Writes are asynchronous, so each check polls until the count is reached and then
//! makes sure no duplicate arrives late.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    account_events_are_recorded_once_with_the_user_as_actor_and_subject,
    admin_actions_are_recorded_once_with_the_admin_as_actor_and_kept_after_delete,
);

/// The events GET /admin/audit?`query` returns once one of them satisfies `wanted` (and no second
/// one arrives late); for queries whose total count the specification leaves open.
async fn settled_one(
    app: &TestApp,
    token: &str,
    query: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/admin/audit?{query}&per_page=200");
    let matching = |body: &Value| -> Vec<Value> {
        body["items"]
            .as_array()
            .map(|items| items.iter().filter(|e| wanted(e)).cloned().collect())
            .unwrap_or_default()
    };
    let mut last = Value::Null;
    let reached = eventually(AUDIT_ARRIVAL, Duration::from_millis(50), async || {
        last = app.get(&path, Some(token)).await.body;
        !matching(&last).is_empty()
    })
    .await;
    assert!(reached, "a matching event for {query}; last page: {last}");
    actix_web::rt::time::sleep(AUDIT_SETTLE).await;
    let found = matching(&app.get(&path, Some(token)).await.body);
    assert_eq!(
        found.len(),
        1,
        "exactly one matching event for {query}: {found:?}"
    );
    found[0].clone()
}

/// `detail.revoked`: how many sessions were revoked (a count, or the list of their ids).
fn revoked(event: &Value) -> Option<usize> {
    let r = &event["detail"]["revoked"];
    r.as_u64()
        .map(|n| n as usize)
        .or_else(|| r.as_array().map(Vec::len))
}

async fn account_events_are_recorded_once_with_the_user_as_actor_and_subject(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("REFRESH_REUSE_GRACE", 0);
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();

    let email = unique_email("audited");
    let r = app.register(&email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let me = Some(id.as_str());
    let first = app.login(&email, PASSWORD).await;
    app.login_reply(&email, "not the password at all")
        .await
        .assert_error(401, "invalid_credentials");
    app.login_reply(&unique_email("nobody"), PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    // Token checks and successful refreshes are not audited.
    for path in ["/session", "/profile", "/sessions"] {
        assert_eq!(
            app.get(path, Some(&first.access)).await.status,
            StatusCode::OK
        );
    }
    let r = refresh(&app, &first.refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // REFRESH_REUSE_GRACE=0 counts in whole seconds: wait for the next second to be reuse.
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    refresh(&app, &first.refresh)
        .await
        .assert_error(401, "unauthorized");

    let second = app.login(&email, PASSWORD).await;
    let wrong =
        json!({"current_password": "not it at all", "new_password": "a brand new passphrase 7"});
    app.request(
        Method::PUT,
        "/profile/password",
        &second.access,
        Some(&wrong),
    )
    .await
    .assert_error(403, "forbidden");
    let right = json!({"current_password": PASSWORD, "new_password": "a brand new passphrase 7"});
    let r = app
        .request(
            Method::PUT,
            "/profile/password",
            &second.access,
            Some(&right),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app.post_auth("/logout", &second.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let third = app.login(&email, "a brand new passphrase 7").await;
    let fourth = app.login(&email, "a brand new passphrase 7").await;
    let r = app
        .request(
            Method::DELETE,
            &format!("/sessions/{}", fourth.session_id),
            &third.access,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app.post_auth("/logout/all", &third.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let q = |kind: &str| format!("user_id={id}&type={kind}");
    let events = settled(&app, token, &q("register"), 1).await;
    assert_event(&events[0], "register", me, me, "success");

    let logins = settled(&app, token, &q("login"), 5).await;
    let (failures, successes): (Vec<&Value>, Vec<&Value>) =
        logins.iter().partition(|e| e["outcome"] == "failure");
    assert_eq!(failures.len(), 1, "{logins:?}");
    assert_event(failures[0], "login", None, me, "failure");
    assert_eq!(successes.len(), 4, "{logins:?}");
    for e in successes {
        assert_event(e, "login", me, me, "success");
    }

    let events = settled(&app, token, &q("refresh_reuse"), 1).await;
    assert_event(&events[0], "refresh_reuse", None, me, "denied");
    assert_eq!(events[0]["detail"]["session_id"], first.session_id.as_str());

    let changes = settled(&app, token, &q("password_change"), 2).await;
    let outcomes: Vec<&str> = changes
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or_default())
        .collect();
    assert!(
        outcomes.contains(&"success") && outcomes.contains(&"failure"),
        "{changes:?}"
    );
    for e in &changes {
        assert_event(
            e,
            "password_change",
            me,
            me,
            e["outcome"].as_str().unwrap_or("-"),
        );
    }

    let events = settled(&app, token, &q("logout"), 1).await;
    assert_event(&events[0], "logout", me, me, "success");
    assert_eq!(
        events[0]["detail"]["session_id"],
        second.session_id.as_str()
    );

    let events = settled(&app, token, &q("session_revoke"), 1).await;
    assert_event(&events[0], "session_revoke", me, me, "success");
    assert_eq!(
        events[0]["detail"]["session_id"],
        fourth.session_id.as_str()
    );

    let events = settled(&app, token, &q("logout_all"), 1).await;
    assert_event(&events[0], "logout_all", me, me, "success");
    assert_eq!(revoked(&events[0]), Some(1), "{}", events[0]);

    // Nothing else about this account: 1 + 5 + 1 + 2 + 1 + 1 + 1.
    let all = settled(&app, token, &format!("user_id={id}"), 12).await;
    let times: Vec<_> = all.iter().map(chrono_of).collect();
    assert!(times.iter().all(Option::is_some), "{all:?}");
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {all:?}"
    );

    // An unknown email: a failed login about nobody. Logins in this deployment: the admin's
    // one, the account's five, and that one.
    let logins = settled(&app, token, "type=login", 7).await;
    let anonymous: Vec<&Value> = logins
        .iter()
        .filter(|e| e["subject_id"].is_null())
        .collect();
    assert_eq!(anonymous.len(), 1, "{logins:?}");
    assert_event(anonymous[0], "login", None, None, "failure");
}

fn chrono_of(event: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(event["occurred_at"].as_str()?).ok()
}

async fn admin_actions_are_recorded_once_with_the_admin_as_actor_and_kept_after_delete(
    backend: Backend,
) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let user = plain(&app).await;
    let (by, about) = (Some(admin.id.as_str()), Some(user.id.as_str()));
    let path = format!("/admin/users/{}", user.id);

    let r = create_role(&app, token, "support", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = set_roles(&app, token, &user.id, &["support", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A read the role allows is not audited; a write it does not allow is.
    let r = app.get("/admin/users", Some(&user.tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    set_roles(&app, &user.tokens.access, &user.id, &["admin", "user"])
        .await
        .assert_error(403, "forbidden");
    let r = call(
        &app,
        Method::DELETE,
        &format!("{path}/sessions"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for action in ["disable", "enable"] {
        let r = call(
            &app,
            Method::POST,
            &format!("{path}/{action}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{action}: {}", r.body);
    }
    // The last admin's refusals are audited as denied, and so is changing one's own roles.
    let me = format!("/admin/users/{}", admin.id);
    set_roles(&app, token, &admin.id, &["user"])
        .await
        .assert_error(403, "forbidden");
    call(
        &app,
        Method::POST,
        &format!("{me}/disable"),
        Some(token),
        None,
    )
    .await
    .assert_error(409, "conflict");
    call(&app, Method::DELETE, &me, Some(token), None)
        .await
        .assert_error(409, "conflict");
    let r = call(&app, Method::DELETE, &path, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    // About the user, each once, even after the account is gone.
    let q = |kind: &str| format!("user_id={}&type={kind}", user.id);
    let events = settled(&app, token, &q("role_change"), 1).await;
    assert_event(&events[0], "role_change", by, about, "success");
    assert_eq!(events[0]["detail"]["roles"], json!(["support", "user"]));
    assert_eq!(events[0]["detail"]["previous"], json!(["user"]));

    let events = settled(&app, token, &q("access_denied"), 1).await;
    assert_event(&events[0], "access_denied", about, None, "denied");
    assert_eq!(events[0]["detail"]["permission"], "users:write");

    let events = settled(&app, token, &q("sessions_revoke"), 1).await;
    assert_event(&events[0], "sessions_revoke", by, about, "success");
    assert_eq!(revoked(&events[0]), Some(1), "{}", events[0]);

    for kind in ["user_disable", "user_enable", "user_delete"] {
        let events = settled(&app, token, &q(kind), 1).await;
        assert_event(&events[0], kind, by, about, "success");
    }
    // register, login, and the six above; the admin's reads are not audited.
    settled(&app, token, &format!("user_id={}", user.id), 8).await;

    // By the admin about nobody.
    let events = settled(
        &app,
        token,
        &format!("user_id={}&type=role_create", admin.id),
        1,
    )
    .await;
    assert_event(&events[0], "role_create", by, None, "success");
    assert_eq!(events[0]["detail"]["name"], "support");
    assert_eq!(events[0]["detail"]["permissions"], json!(["users:read"]));

    // By the admin about themselves, refused: denied. (user_id matches actor or subject, so
    // the admin's successful actions on the user are in these lists too.)
    let about_self = |e: &Value| e["subject_id"] == admin.id.as_str();
    let event = settled_one(
        &app,
        token,
        &format!("user_id={}&type=role_change", admin.id),
        |e| about_self(e) && e["outcome"] == "denied",
    )
    .await;
    assert_event(&event, "role_change", by, by, "denied");
    assert_eq!(event["detail"]["roles"], json!(["user"]));
    assert_eq!(event["detail"]["previous"], json!(["admin", "user"]));
    for kind in ["user_disable", "user_delete"] {
        let events = settled(&app, token, &format!("user_id={}&type={kind}", admin.id), 2).await;
        let mine: Vec<&Value> = events.iter().filter(|e| about_self(e)).collect();
        assert_eq!(mine.len(), 1, "{events:?}");
        assert_event(mine[0], kind, by, by, "denied");
    }
}
