//! The admin API: permissions and roles, who may call what, disabling, enabling and deleting
//! accounts, the last-admin guard, pagination, and role changes reaching every pod.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{both_backends, services_only, support::*};

both_backends!(
    admin_endpoints_need_their_permission_and_a_valid_existing_id,
    role_changes_apply_to_the_session_on_its_next_request,
    disabled_or_deleted_accounts_are_locked_out_and_enabling_restores_login,
    last_admin_cannot_demote_disable_or_delete_themselves,
    user_list_is_paged_ordered_and_filtered_by_a_literal_email_prefix,
    custom_roles_are_validated_and_grant_exactly_their_permissions,
    admin_emails_at_start_up_promote_an_existing_account,
);
services_only!(
    role_changes_reach_the_other_pod_on_its_next_request,
    disabling_or_revoking_a_user_reaches_the_other_pod,
);

/// Generous: the guarantee is the next request normally, SESSION_CACHE_TTL (5 s) at worst.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Asserts GET /session reports these roles and permissions.
#[track_caller]
fn assert_grants(session: &Reply, roles: &[&str], permissions: &[&str]) {
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.body["roles"], json!(roles), "{}", session.body);
    assert_eq!(
        session.body["permissions"],
        json!(permissions),
        "{}",
        session.body
    );
}

/// Asserts the admin user object's shape and its roles, permissions and disabled flag.
#[track_caller]
fn assert_admin_user(user: &Value, id: &str, roles: &[&str], permissions: &[&str], disabled: bool) {
    for field in [
        "id",
        "email",
        "name",
        "roles",
        "permissions",
        "disabled",
        "created_at",
    ] {
        assert!(user.get(field).is_some(), "{field} in {user}");
    }
    assert_eq!(user["id"], id, "{user}");
    assert_eq!(user["roles"], json!(roles), "{user}");
    assert_eq!(user["permissions"], json!(permissions), "{user}");
    assert_eq!(user["disabled"], disabled, "{user}");
}

/// Polls `app` until `token`'s GET /session shows `roles`.
async fn session_shows_roles(app: &TestApp, token: &str, roles: &[&str]) -> bool {
    eventually(PROPAGATION, Duration::from_millis(20), async || {
        app.get("/session", Some(token)).await.body["roles"] == json!(roles)
    })
    .await
}

/// Polls `app` until `token` gets `status` on GET `path`.
async fn becomes(app: &TestApp, path: &str, token: &str, status: StatusCode) -> bool {
    eventually(PROPAGATION, Duration::from_millis(20), async || {
        app.get(path, Some(token)).await.status == status
    })
    .await
}

/// The eleven admin endpoints, in an order in which an admin can call them all successfully on
/// `victim` (deletion last), with the status each then returns.
fn admin_endpoints(victim: &str, role: &str) -> Vec<(Method, String, Option<Value>, u16)> {
    let user = format!("/admin/users/{victim}");
    vec![
        (Method::GET, "/admin/users".into(), None, 200),
        (Method::GET, user.clone(), None, 200),
        (
            Method::PUT,
            format!("{user}/roles"),
            Some(json!({"roles": ["user"]})),
            200,
        ),
        (Method::GET, format!("{user}/sessions"), None, 200),
        (Method::DELETE, format!("{user}/sessions"), None, 204),
        (Method::POST, format!("{user}/disable"), None, 204),
        (Method::POST, format!("{user}/enable"), None, 204),
        (Method::GET, "/admin/roles".into(), None, 200),
        (
            Method::POST,
            "/admin/roles".into(),
            Some(json!({"name": role, "permissions": ["audit:read"]})),
            201,
        ),
        (Method::GET, "/admin/audit".into(), None, 200),
        (Method::DELETE, user, None, 204),
    ]
}

/// The endpoints under /admin/users/{id}, with a body each accepts.
fn per_user_endpoints(id: &str) -> Vec<(Method, String, Option<Value>)> {
    let user = format!("/admin/users/{id}");
    vec![
        (Method::GET, user.clone(), None),
        (
            Method::PUT,
            format!("{user}/roles"),
            Some(json!({"roles": ["user"]})),
        ),
        (Method::POST, format!("{user}/disable"), None),
        (Method::POST, format!("{user}/enable"), None),
        (Method::GET, format!("{user}/sessions"), None),
        (Method::DELETE, format!("{user}/sessions"), None),
        (Method::DELETE, user, None),
    ]
}

async fn admin_endpoints_need_their_permission_and_a_valid_existing_id(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let plain = plain(&app).await;
    let victim = self::plain(&app).await;
    let endpoints = admin_endpoints(&victim.id, "auditor");
    assert_eq!(endpoints.len(), 11);

    // Without a token: 401 everywhere.
    for (method, path, body, _) in &endpoints {
        let r = call(&app, method.clone(), path, None, body.as_ref()).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
    }
    // A plain user: 403 everywhere, and nothing changes.
    for (method, path, body, _) in &endpoints {
        let r = call(
            &app,
            method.clone(),
            path,
            Some(&plain.tokens.access),
            body.as_ref(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.body
        );
        r.assert_error(403, "forbidden");
    }
    assert_eq!(
        app.get("/session", Some(&victim.tokens.access))
            .await
            .status,
        StatusCode::OK,
        "the victim's session survived the plain user's attempts"
    );
    // Authorization comes before reading the input: a malformed id, query or body still gets
    // 403, so a caller without the permission learns nothing about what would be accepted.
    let malformed: [(Method, &str, Option<Value>); 5] = [
        (Method::GET, "/admin/users/not-a-uuid", None),
        (Method::GET, "/admin/users?per_page=abc", None),
        (Method::GET, "/admin/audit?page=0&user_id=x", None),
        (
            Method::PUT,
            "/admin/users/not-a-uuid/roles",
            Some(json!({"roles": "nope"})),
        ),
        (Method::POST, "/admin/roles", Some(json!({"unknown": 1}))),
    ];
    for (method, path, body) in malformed {
        let r = call(
            &app,
            method.clone(),
            path,
            Some(&plain.tokens.access),
            body.as_ref(),
        )
        .await;
        r.assert_error(403, "forbidden");
    }

    // An unknown account: 404 on every per-user endpoint; an id that is no UUID: 400.
    let unknown = Uuid::new_v4().to_string();
    for (id, status, code) in [
        (unknown.as_str(), 404, "not_found"),
        ("not-a-uuid", 400, "invalid_request"),
    ] {
        for (method, path, body) in per_user_endpoints(id) {
            let r = call(
                &app,
                method.clone(),
                &path,
                Some(&admin.tokens.access),
                body.as_ref(),
            )
            .await;
            assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
            r.assert_error(status, code);
        }
    }

    // The admin: every endpoint succeeds (the role did not exist, so the plain user's POST
    // created nothing).
    for (method, path, body, status) in &endpoints {
        let r = call(
            &app,
            method.clone(),
            path,
            Some(&admin.tokens.access),
            body.as_ref(),
        )
        .await;
        assert_eq!(r.status.as_u16(), *status, "{method} {path}: {}", r.body);
    }
    call(
        &app,
        Method::GET,
        &format!("/admin/users/{}", victim.id),
        Some(&admin.tokens.access),
        None,
    )
    .await
    .assert_error(404, "not_found");
    // The plain user still has no permission, the admin still has all of them.
    assert_grants(
        &app.get("/session", Some(&plain.tokens.access)).await,
        &["user"],
        &[],
    );
    assert_grants(
        &app.get("/session", Some(&admin.tokens.access)).await,
        &["admin", "user"],
        ADMIN_PERMISSIONS,
    );
}

async fn role_changes_apply_to_the_session_on_its_next_request(backend: Backend) {
    let (dep, admins) = with_admins(backend, 2).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let second = self::admin(&app, &admins[1]).await;
    let user = plain(&app).await;

    // The token carries roles and permissions; so does GET /session and the profile.
    let claims = claims_of(&admin.tokens.access);
    assert_eq!(claims["roles"], json!(["admin", "user"]), "{claims}");
    assert_eq!(claims["permissions"], json!(ADMIN_PERMISSIONS), "{claims}");
    let claims = claims_of(&user.tokens.access);
    assert_eq!(claims["roles"], json!(["user"]), "{claims}");
    assert_eq!(claims["permissions"], json!([]), "{claims}");
    let session = app.get("/session", Some(&admin.tokens.access)).await;
    assert_grants(&session, &["admin", "user"], ADMIN_PERMISSIONS);
    for field in ["user_id", "session_id", "expires_at"] {
        assert!(
            session.body.get(field).is_some(),
            "{field}: {}",
            session.body
        );
    }
    assert_eq!(session.body["user_id"], admin.id.as_str());
    assert_grants(
        &app.get("/session", Some(&user.tokens.access)).await,
        &["user"],
        &[],
    );
    let profile = app.get("/profile", Some(&user.tokens.access)).await;
    assert_eq!(profile.body["roles"], json!(["user"]), "{}", profile.body);

    // Two custom roles sharing a permission: the effective set is their de-duplicated union.
    let r = create_role(&app, &admin.tokens.access, "support", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = create_role(
        &app,
        &admin.tokens.access,
        "reader",
        &["users:read", "audit:read"],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = set_roles(
        &app,
        &admin.tokens.access,
        &user.id,
        &["user", "support", "reader"],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let granted = ["reader", "support", "user"];
    let granted_permissions = ["audit:read", "users:read"];
    assert_admin_user(&r.body, &user.id, &granted, &granted_permissions, false);

    // The very next request of the existing session sees the grant: no polling.
    assert_grants(
        &app.get("/session", Some(&user.tokens.access)).await,
        &granted,
        &granted_permissions,
    );
    let profile = app.get("/profile", Some(&user.tokens.access)).await;
    assert_eq!(profile.body["roles"], json!(granted), "{}", profile.body);
    assert_eq!(
        app.get("/admin/users", Some(&user.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/admin/audit", Some(&user.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
    set_roles(&app, &user.tokens.access, &user.id, &["admin", "user"])
        .await
        .assert_error(403, "forbidden");
    // A new login's token carries the new grants.
    let fresh = app.login(&user.email, PASSWORD).await;
    let claims = claims_of(&fresh.access);
    assert_eq!(claims["roles"], json!(granted), "{claims}");
    assert_eq!(
        claims["permissions"],
        json!(granted_permissions),
        "{claims}"
    );

    // Taking a grant back also applies on the next request.
    let r = set_roles(&app, &admin.tokens.access, &user.id, &["user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for token in [&user.tokens.access, &fresh.access] {
        assert_grants(&app.get("/session", Some(token)).await, &["user"], &[]);
        app.get("/admin/users", Some(token))
            .await
            .assert_error(403, "forbidden");
    }

    // Removing `admin` from one of two admins: their next admin call is refused.
    assert_eq!(
        app.get("/admin/users", Some(&second.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
    let r = set_roles(&app, &admin.tokens.access, &second.id, &["user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_admin_user(&r.body, &second.id, &["user"], &[], false);
    app.get("/admin/users", Some(&second.tokens.access))
        .await
        .assert_error(403, "forbidden");
    assert_grants(
        &app.get("/session", Some(&second.tokens.access)).await,
        &["user"],
        &[],
    );
    // The other admin is unaffected.
    assert_eq!(
        app.get("/admin/users", Some(&admin.tokens.access))
            .await
            .status,
        StatusCode::OK
    );
}

async fn disabled_or_deleted_accounts_are_locked_out_and_enabling_restores_login(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let user = plain(&app).await;
    let second = app.login(&user.email, PASSWORD).await;
    let bystander = plain(&app).await;
    let token = admin.tokens.access.as_str();
    let path = format!("/admin/users/{}", user.id);
    let get_user = async || call(&app, Method::GET, &path, Some(token), None).await;
    let r = get_user().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_admin_user(&r.body, &user.id, &["user"], &[], false);
    assert_eq!(r.body["email"], user.email.as_str());
    // What a wrong password looks like, to compare with.
    let wrong = app
        .login_reply(&user.email, "not the password at all")
        .await;
    wrong.assert_error(401, "invalid_credentials");

    let disable = format!("{path}/disable");
    let r = call(&app, Method::POST, &disable, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Every token of the user is refused at once; the refresh tokens too.
    for t in [&user.tokens, &second] {
        app.get("/session", Some(&t.access))
            .await
            .assert_error(401, "unauthorized");
        app.post_json("/token/refresh", &json!({"refresh_token": t.refresh}))
            .await
            .assert_error(401, "unauthorized");
    }
    // The right password is refused exactly like a wrong one.
    let refused = app.login_reply(&user.email, PASSWORD).await;
    assert_eq!(refused.status, wrong.status);
    assert_eq!(
        refused.body, wrong.body,
        "a disabled account is not revealed"
    );
    let r = get_user().await;
    assert_admin_user(&r.body, &user.id, &["user"], &[], true);
    let sessions = call(
        &app,
        Method::GET,
        &format!("{path}/sessions"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(sessions.status, StatusCode::OK, "{}", sessions.body);
    assert_eq!(sessions.body["items"], json!([]), "{}", sessions.body);
    // Idempotent.
    let r = call(&app, Method::POST, &disable, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        app.get("/session", Some(&bystander.tokens.access))
            .await
            .status,
        StatusCode::OK,
        "other accounts are untouched"
    );

    let enable = format!("{path}/enable");
    for _ in 0..2 {
        let r = call(&app, Method::POST, &enable, Some(token), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    let r = get_user().await;
    assert_admin_user(&r.body, &user.id, &["user"], &[], false);
    let back = app.login(&user.email, PASSWORD).await;
    assert_eq!(
        app.get("/session", Some(&back.access)).await.status,
        StatusCode::OK
    );
    // The old tokens stay dead.
    app.get("/session", Some(&second.access))
        .await
        .assert_error(401, "unauthorized");

    // Deleting: sessions revoked, the account gone, login refused like any unknown email.
    let r = call(&app, Method::DELETE, &path, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    app.get("/session", Some(&back.access))
        .await
        .assert_error(401, "unauthorized");
    get_user().await.assert_error(404, "not_found");
    app.login_reply(&user.email, PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    call(&app, Method::DELETE, &path, Some(token), None)
        .await
        .assert_error(404, "not_found");
    // The address is free again.
    assert_eq!(
        app.register(&user.email, PASSWORD).await.status,
        StatusCode::CREATED
    );
}

async fn last_admin_cannot_demote_disable_or_delete_themselves(backend: Backend) {
    let (dep, admins) = with_admins(backend, 2).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let other = self::admin(&app, &admins[1]).await;
    let token = admin.tokens.access.as_str();
    let me = format!("/admin/users/{}", admin.id);

    // With the other admin disabled, this one is the last enabled admin.
    let r = call(
        &app,
        Method::POST,
        &format!("/admin/users/{}/disable", other.id),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    // Nobody changes their own roles (the escalation rule), admins included: 403.
    set_roles(&app, token, &admin.id, &["user"])
        .await
        .assert_error(403, "forbidden");
    let refusals = [
        call(
            &app,
            Method::POST,
            &format!("{me}/disable"),
            Some(token),
            None,
        )
        .await,
        call(&app, Method::DELETE, &me, Some(token), None).await,
    ];
    for r in &refusals {
        r.assert_error(409, "conflict");
    }
    // Nothing changed: still an enabled admin whose admin calls work.
    assert_grants(
        &app.get("/session", Some(token)).await,
        &["admin", "user"],
        ADMIN_PERMISSIONS,
    );
    let r = call(&app, Method::GET, &me, Some(token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_admin_user(
        &r.body,
        &admin.id,
        &["admin", "user"],
        ADMIN_PERMISSIONS,
        false,
    );
    let r = app.get("/admin/users", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.login(&admin.email, PASSWORD).await;

    // Once another enabled admin exists, that one may demote this one.
    let r = call(
        &app,
        Method::POST,
        &format!("/admin/users/{}/enable", other.id),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let other_token = app.login(&other.email, PASSWORD).await.access;
    let r = set_roles(&app, &other_token, &admin.id, &["user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.get("/admin/users", Some(token))
        .await
        .assert_error(403, "forbidden");
    // And the remaining admin is the last one now.
    call(
        &app,
        Method::POST,
        &format!("/admin/users/{}/disable", other.id),
        Some(&other_token),
        None,
    )
    .await
    .assert_error(409, "conflict");
    assert_grants(
        &app.get("/session", Some(&other_token)).await,
        &["admin", "user"],
        ADMIN_PERMISSIONS,
    );
}

async fn user_list_is_paged_ordered_and_filtered_by_a_literal_email_prefix(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let tag = format!("page{}", &Uuid::new_v4().simple().to_string()[..12]);
    // Registered out of order: the list is ordered by email.
    for i in [3, 0, 4, 1, 2] {
        let r = app
            .register(&format!("{tag}-{i}@example.com"), PASSWORD)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let expected: Vec<String> = (0..5).map(|i| format!("{tag}-{i}@example.com")).collect();

    // The prefix is trimmed and compared lower-cased.
    let prefix = format!("%20{}-%20", tag.to_uppercase());
    let mut seen = Vec::new();
    for (page, len) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let r = app
            .get(
                &format!("/admin/users?email_prefix={prefix}&per_page=2&page={page}"),
                Some(token),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["page"], page, "{}", r.body);
        assert_eq!(r.body["per_page"], 2, "{}", r.body);
        assert_eq!(r.body["total"], 5, "{}", r.body);
        let items = r.body["items"].as_array().expect("items");
        assert_eq!(items.len(), len, "page {page}: {}", r.body);
        for item in items {
            for field in [
                "id",
                "email",
                "name",
                "roles",
                "permissions",
                "disabled",
                "created_at",
            ] {
                assert!(item.get(field).is_some(), "{field} in {item}");
            }
            seen.push(item["email"].as_str().expect("email").to_string());
        }
    }
    assert_eq!(seen, expected);

    // Defaults: page 1, 50 per page; the whole deployment is the admin and the five.
    let r = app.get("/admin/users", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["page"], 1);
    assert_eq!(r.body["per_page"], 50);
    assert_eq!(r.body["total"], 6, "{}", r.body);
    let r = app.get("/admin/users?per_page=200", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // `_` and `%` are literal characters, not wildcards.
    for email in [
        format!("{tag}_x@example.com"),
        format!("{tag}yx@example.com"),
    ] {
        assert_eq!(
            app.register(&email, PASSWORD).await.status,
            StatusCode::CREATED
        );
    }
    let r = app
        .get(&format!("/admin/users?email_prefix={tag}_"), Some(token))
        .await;
    assert_eq!(r.body["total"], 1, "{}", r.body);
    assert_eq!(r.body["items"][0]["email"], format!("{tag}_x@example.com"));
    let r = app
        .get(&format!("/admin/users?email_prefix={tag}%25"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total"], 0, "{}", r.body);
    assert_eq!(r.body["items"], json!([]), "{}", r.body);

    // Out-of-bounds or malformed paging.
    for query in [
        "per_page=201",
        "per_page=0",
        "per_page=-1",
        "page=0",
        "page=-1",
        "page=abc",
        "per_page=2.5",
    ] {
        for list in ["/admin/users", "/admin/audit"] {
            app.get(&format!("{list}?{query}"), Some(token))
                .await
                .assert_error(400, "invalid_request");
        }
    }

    // Control characters in a filter (PostgreSQL text cannot hold a NUL): a 400, not a 500.
    for path in [
        "/admin/audit?type=%23g%C3%A8+%00%066&page=2",
        "/admin/audit?type=login%0A",
        "/admin/users?email_prefix=a%00b",
        "/admin/users?email_prefix=%1B",
    ] {
        app.get(path, Some(token))
            .await
            .assert_error(400, "invalid_request");
    }
}

async fn custom_roles_are_validated_and_grant_exactly_their_permissions(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let admin = admin(&app, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let user = plain(&app).await;

    let roles = app.get("/admin/roles", Some(token)).await;
    assert_eq!(roles.status, StatusCode::OK, "{}", roles.body);
    assert_eq!(
        roles.body["items"],
        json!([
            {"name": "admin", "permissions": ADMIN_PERMISSIONS, "builtin": true},
            {"name": "user", "permissions": [], "builtin": true},
        ])
    );

    let r = create_role(&app, token, "support", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"name": "support", "permissions": ["users:read"], "builtin": false})
    );
    // Custom permission strings are allowed; the arrays come back sorted.
    let r = create_role(&app, token, "billing", &["users:read", "billing:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["permissions"], json!(["billing:read", "users:read"]));

    for name in ["support", "admin", "user"] {
        create_role(&app, token, name, &["users:read"])
            .await
            .assert_error(409, "conflict");
    }
    let too_long_name = format!("a{}", "b".repeat(64));
    for name in [
        "",
        "Support",
        "1support",
        "-support",
        "sup port",
        "support!",
        too_long_name.as_str(),
    ] {
        let r = create_role(&app, token, name, &["users:read"]).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "name {name:?}: {}",
            r.body
        );
        r.assert_error(400, "invalid_request");
    }
    let too_long_permission = format!("a:{}", "b".repeat(63));
    let too_many: Vec<String> = (0..65).map(|i| format!("custom:p{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    for permissions in [
        vec!["usersread"],
        vec!["Users:read"],
        vec![":read"],
        vec!["users:"],
        vec!["users:read:more"],
        vec!["users: read"],
        vec![too_long_permission.as_str()],
        too_many,
    ] {
        let r = create_role(&app, token, "fresh", &permissions).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "permissions {permissions:?}: {}",
            r.body
        );
        r.assert_error(400, "invalid_request");
    }
    // Exactly the limits are fine.
    let at_limit: Vec<String> = (0..64).map(|i| format!("custom:p{i}")).collect();
    let at_limit: Vec<&str> = at_limit.iter().map(String::as_str).collect();
    let longest_name = format!("a{}", "b".repeat(63));
    let r = create_role(&app, token, &longest_name, &at_limit).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let longest_permission = format!("a:{}", "b".repeat(62));
    let r = create_role(&app, token, "long-perm_1", &[longest_permission.as_str()]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let roles = app.get("/admin/roles", Some(token)).await;
    let names: Vec<&str> = roles.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    let mut sorted = vec![
        "admin",
        "billing",
        "long-perm_1",
        "support",
        "user",
        longest_name.as_str(),
    ];
    sorted.sort_unstable();
    assert_eq!(names, sorted, "{}", roles.body);
    assert!(
        !names.contains(&"fresh"),
        "a refused role was not half-created"
    );

    // Assigning an unknown role is refused and changes nothing.
    set_roles(&app, token, &user.id, &["user", "no-such-role"])
        .await
        .assert_error(400, "invalid_request");
    assert_grants(
        &app.get("/session", Some(&user.tokens.access)).await,
        &["user"],
        &[],
    );

    // `support` may read users, not change them, revoke sessions or read the audit trail.
    let r = set_roles(&app, token, &user.id, &["support", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let support = user.tokens.access.as_str();
    assert_grants(
        &app.get("/session", Some(support)).await,
        &["support", "user"],
        &["users:read"],
    );
    for path in [
        "/admin/users".to_string(),
        format!("/admin/users/{}", admin.id),
    ] {
        let r = app.get(&path, Some(support)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/admin/users/{}/roles", user.id),
            Some(json!({"roles": ["admin", "user"]})),
        ),
        (
            Method::POST,
            format!("/admin/users/{}/disable", admin.id),
            None,
        ),
        (Method::GET, "/admin/roles".to_string(), None),
        (
            Method::GET,
            format!("/admin/users/{}/sessions", admin.id),
            None,
        ),
        (Method::GET, "/admin/audit".to_string(), None),
    ] {
        call(&app, method, &path, Some(support), body.as_ref())
            .await
            .assert_error(403, "forbidden");
    }

    // Several roles: the union of their permissions, custom ones included, in the token too.
    let r = set_roles(&app, token, &user.id, &["billing", "support", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_admin_user(
        &r.body,
        &user.id,
        &["billing", "support", "user"],
        &["billing:read", "users:read"],
        false,
    );
    let fresh = app.login(&user.email, PASSWORD).await;
    let claims = claims_of(&fresh.access);
    assert_eq!(claims["roles"], json!(["billing", "support", "user"]));
    assert_eq!(claims["permissions"], json!(["billing:read", "users:read"]));

    // An account holds what fits in a token: at most 64 permissions and 16 roles, else 400 and
    // nothing changes.
    let wide =
        |prefix: &str| -> Vec<String> { (0..40).map(|i| format!("{prefix}:p{i}")).collect() };
    for (name, perms) in [("wide-a", wide("a")), ("wide-b", wide("b"))] {
        let perms: Vec<&str> = perms.iter().map(String::as_str).collect();
        let r = create_role(&app, token, name, &perms).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    set_roles(&app, token, &user.id, &["wide-a", "wide-b", "user"])
        .await
        .assert_error(400, "invalid_request");
    let many: Vec<String> = (0..17).map(|i| format!("r{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    set_roles(&app, token, &user.id, &many)
        .await
        .assert_error(400, "invalid_request");
    let r = set_roles(&app, token, &user.id, &["wide-a", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let wide_login = app.login(&user.email, PASSWORD).await;
    let r = app.get("/session", Some(&wide_login.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["permissions"].as_array().map(Vec::len), Some(40));
}

async fn admin_emails_at_start_up_promote_an_existing_account(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    let first = dep.spawn().await;
    let user = plain(&first).await;
    let (bystander, _) = first.user().await;
    // Listed too, but nobody proved its address: whoever registered it first gains nothing.
    let squatter = plain(&first).await;
    verify_address(&first, &user.email).await;
    first.stop().await;

    dep.set(
        "ADMIN_EMAILS",
        format!(
            "{},{},{}",
            user.email,
            unique_email("absent"),
            squatter.email
        ),
    );
    let app = dep.spawn().await;
    let tokens = app.login(&user.email, PASSWORD).await;
    assert_grants(
        &app.get("/session", Some(&tokens.access)).await,
        &["admin", "user"],
        ADMIN_PERMISSIONS,
    );
    let profile = app.get("/profile", Some(&tokens.access)).await;
    assert_eq!(
        profile.body["roles"],
        json!(["admin", "user"]),
        "{}",
        profile.body
    );
    let claims = claims_of(&tokens.access);
    assert_eq!(claims["permissions"], json!(ADMIN_PERMISSIONS), "{claims}");
    let r = app.get("/admin/users", Some(&tokens.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Only the listed account, and an absent address created no account.
    assert_eq!(r.body["total"], 3, "{}", r.body);
    for email in [&bystander, &squatter.email] {
        let others = app.login(email, PASSWORD).await;
        assert_grants(
            &app.get("/session", Some(&others.access)).await,
            &["user"],
            &[],
        );
    }

    // The start-up grant is audited, with no actor.
    let events = settled(
        &app,
        &tokens.access,
        &format!("user_id={}&type=role_change", user.id),
        1,
    )
    .await;
    assert_event(&events[0], "role_change", None, Some(&user.id), "success");
}

async fn role_changes_reach_the_other_pod_on_its_next_request() {
    let (dep, admins) = with_admins(Backend::Services, 2).await;
    let (a, b) = (dep.spawn().await, dep.spawn().await);
    let admin = self::admin(&a, &admins[0]).await;
    let second = self::admin(&a, &admins[1]).await;
    let user = plain(&a).await;
    // Warm both pods' caches with the current grants.
    for pod in [&a, &b] {
        assert_grants(
            &pod.get("/session", Some(&user.tokens.access)).await,
            &["user"],
            &[],
        );
        assert_eq!(
            pod.get("/admin/users", Some(&second.tokens.access))
                .await
                .status,
            StatusCode::OK
        );
    }

    let r = create_role(&a, &admin.tokens.access, "support", &["users:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = set_roles(&a, &admin.tokens.access, &user.id, &["support", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The serving pod at once; the other within a moment.
    assert_grants(
        &a.get("/session", Some(&user.tokens.access)).await,
        &["support", "user"],
        &["users:read"],
    );
    assert!(
        session_shows_roles(&b, &user.tokens.access, &["support", "user"]).await,
        "the grant reached pod B"
    );
    assert_grants(
        &b.get("/session", Some(&user.tokens.access)).await,
        &["support", "user"],
        &["users:read"],
    );
    assert_eq!(
        b.get("/admin/users", Some(&user.tokens.access))
            .await
            .status,
        StatusCode::OK
    );

    // Demoting an admin on pod B: refused there at once, on pod A within a moment.
    let r = set_roles(&b, &admin.tokens.access, &second.id, &["user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    b.get("/admin/users", Some(&second.tokens.access))
        .await
        .assert_error(403, "forbidden");
    assert!(
        becomes(
            &a,
            "/admin/users",
            &second.tokens.access,
            StatusCode::FORBIDDEN
        )
        .await,
        "the demotion reached pod A"
    );
    for pod in [&a, &b] {
        assert_grants(
            &pod.get("/session", Some(&second.tokens.access)).await,
            &["user"],
            &[],
        );
        pod.get("/admin/users", Some(&second.tokens.access))
            .await
            .assert_error(403, "forbidden");
    }
}

async fn disabling_or_revoking_a_user_reaches_the_other_pod() {
    let (dep, admins) = with_admins(Backend::Services, 1).await;
    let (a, b) = (dep.spawn().await, dep.spawn().await);
    let admin = self::admin(&a, &admins[0]).await;
    let token = admin.tokens.access.as_str();
    let user = plain(&a).await;
    let on_b = b.login(&user.email, PASSWORD).await;
    let all = [&user.tokens, &on_b];
    for pod in [&a, &b] {
        for t in all {
            assert_eq!(
                pod.get("/session", Some(&t.access)).await.status,
                StatusCode::OK,
                "warm"
            );
        }
    }

    // Revoking every session of the user.
    let sessions = format!("/admin/users/{}/sessions", user.id);
    let listed = call(&a, Method::GET, &sessions, Some(token), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let items = listed.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", listed.body);
    for item in items {
        for field in [
            "id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "ip",
            "user_agent",
        ] {
            assert!(item.get(field).is_some(), "{field} in {item}");
        }
    }
    let r = call(&a, Method::DELETE, &sessions, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for t in all {
        a.get("/session", Some(&t.access))
            .await
            .assert_error(401, "unauthorized");
        assert!(
            becomes(&b, "/session", &t.access, StatusCode::UNAUTHORIZED).await,
            "the revocation reached pod B"
        );
    }
    let listed = call(&b, Method::GET, &sessions, Some(token), None).await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.body);

    // Disabling the user.
    let again = b.login(&user.email, PASSWORD).await;
    for pod in [&a, &b] {
        assert_eq!(
            pod.get("/session", Some(&again.access)).await.status,
            StatusCode::OK,
            "warm"
        );
    }
    let wrong = b.login_reply(&user.email, "not the password at all").await;
    let path = format!("/admin/users/{}/disable", user.id);
    let r = call(&a, Method::POST, &path, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    a.get("/session", Some(&again.access))
        .await
        .assert_error(401, "unauthorized");
    assert!(
        becomes(&b, "/session", &again.access, StatusCode::UNAUTHORIZED).await,
        "the disable reached pod B"
    );
    let refused = b.login_reply(&user.email, PASSWORD).await;
    assert_eq!((refused.status, &refused.body), (wrong.status, &wrong.body));
    b.post_json("/token/refresh", &json!({"refresh_token": again.refresh}))
        .await
        .assert_error(401, "unauthorized");

    // Enabling on the other pod lets them in on both.
    let path = format!("/admin/users/{}/enable", user.id);
    let r = call(&b, Method::POST, &path, Some(token), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let back = a.login(&user.email, PASSWORD).await;
    for pod in [&a, &b] {
        assert_eq!(
            pod.get("/session", Some(&back.access)).await.status,
            StatusCode::OK
        );
    }
}
