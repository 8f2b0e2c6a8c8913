//! The escalation rule: a delegated admin role cannot reach beyond what it holds, and denials a
//! caller can loop are aggregated in the audit trail.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};

use crate::{both_backends, support::*};

both_backends!(
    a_users_write_delegate_cannot_make_itself_admin_or_touch_the_admins,
    each_admin_operation_needs_a_caller_holding_what_it_touches,
    a_loop_of_denied_calls_is_counted_not_written_row_by_row,
    denials_counted_when_the_server_stops_are_written,
    the_admin_role_regains_every_defined_permission_at_start_up,
);

/// How long an asynchronous audit write may take to show up.
const ARRIVAL: Duration = Duration::from_secs(20);

/// The audit events GET /admin/audit?`query` lists (at most 200).
async fn events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/admin/audit?{query}&per_page=200"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

/// Polls until the events of `query` satisfy `done`; returns them.
async fn events_once(
    app: &TestApp,
    token: &str,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut last = Vec::new();
    let reached = eventually(ARRIVAL, Duration::from_millis(50), async || {
        last = events(app, token, query).await;
        done(&last)
    })
    .await;
    assert!(reached, "audit events for {query}: {last:?}");
    last
}

/// The sum of `detail.count` over aggregated denial events.
fn counted(events: &[Value]) -> u64 {
    events
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap_or(0))
        .sum()
}

/// The denied events of `kind` about `subject` (None: about nobody) in `events`.
fn denials<'a>(events: &'a [Value], kind: &str, subject: Option<&str>) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["outcome"] == "denied")
        .filter(|e| e["subject_id"] == json!(subject))
        .collect()
}

/// What an admin sees of an account (404 once it is deleted), to compare before and after.
async fn snapshot(app: &TestApp, root: &str, id: &str) -> Reply {
    call(
        app,
        Method::GET,
        &format!("/admin/users/{id}"),
        Some(root),
        None,
    )
    .await
}

/// A fresh account holding `roles` (given by `root`).
async fn holding(app: &TestApp, root: &str, roles: &[&str]) -> Account {
    let account = plain(app).await;
    let r = set_roles(app, root, &account.id, roles).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    account
}

async fn a_users_write_delegate_cannot_make_itself_admin_or_touch_the_admins(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let token = root.tokens.access.as_str();
    let r = create_role(&app, token, "helpdesk", &["users:write"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mallory = holding(&app, token, &["helpdesk", "user"]).await;
    let accomplice = plain(&app).await;
    let m = mallory.tokens.access.as_str();
    let before = [
        snapshot(&app, token, &root.id).await.body,
        snapshot(&app, token, &mallory.id).await.body,
        snapshot(&app, token, &accomplice.id).await.body,
    ];

    // The attack as reported: all refused.
    set_roles(&app, m, &mallory.id, &["admin"])
        .await
        .assert_error(403, "forbidden");
    create_role(&app, m, "everything", ADMIN_PERMISSIONS)
        .await
        .assert_error(403, "forbidden");
    set_roles(&app, m, &root.id, &["user"])
        .await
        .assert_error(403, "forbidden");
    let root_path = format!("/admin/users/{}", root.id);
    call(
        &app,
        Method::POST,
        &format!("{root_path}/disable"),
        Some(m),
        None,
    )
    .await
    .assert_error(403, "forbidden");
    call(&app, Method::DELETE, &root_path, Some(m), None)
        .await
        .assert_error(403, "forbidden");
    // Nor through an account of theirs.
    set_roles(&app, m, &accomplice.id, &["admin", "user"])
        .await
        .assert_error(403, "forbidden");

    // Nothing changed.
    let after = [
        snapshot(&app, token, &root.id).await.body,
        snapshot(&app, token, &mallory.id).await.body,
        snapshot(&app, token, &accomplice.id).await.body,
    ];
    assert_eq!(before, after);
    let session = app.get("/session", Some(token)).await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.body["roles"], json!(["admin", "user"]));
    assert_eq!(session.body["permissions"], json!(ADMIN_PERMISSIONS));
    let session = app.get("/session", Some(m)).await;
    assert_eq!(session.body["roles"], json!(["helpdesk", "user"]));
    let roles = app.get("/admin/roles", Some(token)).await;
    assert!(
        !roles.body.to_string().contains("everything"),
        "{}",
        roles.body
    );
    app.login(&root.email, PASSWORD).await;

    // Each refusal is audited as a denied event of its kind, with the reason and what was
    // missing, and no secret.
    let query = format!("user_id={}", mallory.id);
    let found = events_once(&app, token, &query, |e| {
        e.iter().filter(|e| e["outcome"] == "denied").count() >= 6
    })
    .await;
    let by = Some(mallory.id.as_str());
    let own = denials(&found, "role_change", by);
    assert_eq!(own.len(), 1, "{found:?}");
    assert_event(own[0], "role_change", by, by, "denied");
    assert_eq!(own[0]["detail"]["reason"], "own_roles");
    assert_eq!(own[0]["detail"]["count"], 1);
    let created = denials(&found, "role_create", None);
    assert_eq!(created.len(), 1, "{found:?}");
    assert_event(created[0], "role_create", by, None, "denied");
    assert_eq!(created[0]["detail"]["reason"], "escalation");
    assert_eq!(
        created[0]["detail"]["missing_permissions"],
        // Everything the admin role holds except the delegate's own users:write.
        json!(ADMIN_PERMISSIONS
            .iter()
            .filter(|p| **p != "users:write")
            .collect::<Vec<_>>())
    );
    let about_root = Some(root.id.as_str());
    for kind in ["role_change", "user_disable", "user_delete"] {
        let d = denials(&found, kind, about_root);
        assert_eq!(d.len(), 1, "{kind}: {found:?}");
        assert_event(d[0], kind, by, about_root, "denied");
        assert_eq!(d[0]["detail"]["reason"], "escalation");
        assert_eq!(d[0]["detail"]["admin_role_required"], true);
    }
    let d = denials(&found, "role_change", Some(accomplice.id.as_str()));
    assert_eq!(d.len(), 1, "{found:?}");
    assert_eq!(d[0]["detail"]["admin_role_required"], true);
    let all = serde_json::to_string(&found).expect("json");
    for secret in [m, mallory.tokens.refresh.as_str(), PASSWORD] {
        assert!(!all.contains(secret), "no secret in the audit trail");
    }
}

/// One admin operation on an account, as the matrix applies it.
#[derive(Clone, Copy, Debug)]
enum Op {
    Grant,
    Remove,
    Disable,
    Enable,
    Delete,
    RevokeSessions,
}

impl Op {
    fn kind(self) -> &'static str {
        match self {
            Op::Grant | Op::Remove => "role_change",
            Op::Disable => "user_disable",
            Op::Enable => "user_enable",
            Op::Delete => "user_delete",
            Op::RevokeSessions => "sessions_revoke",
        }
    }

    /// Applies it to `target`, which holds `role` (and `user`).
    async fn apply(self, app: &TestApp, token: &str, target: &Account, role: &str) -> Reply {
        let path = format!("/admin/users/{}", target.id);
        match self {
            // `extra` grants sessions:revoke, which the caller holds.
            Op::Grant => set_roles(app, token, &target.id, &[role, "extra", "user"]).await,
            Op::Remove => set_roles(app, token, &target.id, &["user"]).await,
            Op::Disable => {
                call(
                    app,
                    Method::POST,
                    &format!("{path}/disable"),
                    Some(token),
                    None,
                )
                .await
            }
            Op::Enable => {
                call(
                    app,
                    Method::POST,
                    &format!("{path}/enable"),
                    Some(token),
                    None,
                )
                .await
            }
            Op::Delete => call(app, Method::DELETE, &path, Some(token), None).await,
            Op::RevokeSessions => {
                call(
                    app,
                    Method::DELETE,
                    &format!("{path}/sessions"),
                    Some(token),
                    None,
                )
                .await
            }
        }
    }

    /// Asserts that it took effect on `target` (held `weak`).
    async fn assert_done(self, app: &TestApp, root: &str, target: &Account) {
        let now = snapshot(app, root, &target.id).await;
        let session = app
            .get("/session", Some(&target.tokens.access))
            .await
            .status;
        match self {
            Op::Grant => assert_eq!(now.body["roles"], json!(["extra", "user", "weak"])),
            Op::Remove => assert_eq!(now.body["roles"], json!(["user"])),
            Op::Disable => assert_eq!(now.body["disabled"], true),
            Op::Enable => assert_eq!(now.body["disabled"], false),
            Op::Delete => now.assert_error(404, "not_found"),
            Op::RevokeSessions => assert_eq!(session, StatusCode::UNAUTHORIZED),
        }
    }
}

async fn each_admin_operation_needs_a_caller_holding_what_it_touches(backend: Backend) {
    let (dep, admins) = with_admins(backend, 1).await;
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let token = root.tokens.access.as_str();
    for (name, permissions) in [
        ("deleg", &["sessions:revoke", "users:write"][..]),
        ("weak", &["users:write"]),
        ("strong", &["audit:read", "users:write"]),
        ("extra", &["sessions:revoke"]),
        ("beyond", &["audit:read"]),
    ] {
        let r = create_role(&app, token, name, permissions).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    // The caller holds sessions:revoke and users:write; a weaker target holds a subset of that
    // (allowed), a stronger one also audit:read (refused).
    let caller = holding(&app, token, &["deleg", "user"]).await;
    let c = caller.tokens.access.as_str();

    let ops = [
        Op::Grant,
        Op::Remove,
        Op::Disable,
        Op::Enable,
        Op::Delete,
        Op::RevokeSessions,
    ];
    let mut refused = Vec::new();
    for op in ops {
        let weak = holding(&app, token, &["weak", "user"]).await;
        let strong = holding(&app, token, &["strong", "user"]).await;
        if let Op::Enable = op {
            for t in [&weak, &strong] {
                let path = format!("/admin/users/{}/disable", t.id);
                let r = call(&app, Method::POST, &path, Some(token), None).await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
            }
        }

        // Fewer permissions than the target: 403, and the target is unchanged.
        let before = snapshot(&app, token, &strong.id).await;
        let session = app
            .get("/session", Some(&strong.tokens.access))
            .await
            .status;
        op.apply(&app, c, &strong, "strong")
            .await
            .assert_error(403, "forbidden");
        assert_eq!(
            snapshot(&app, token, &strong.id).await.body,
            before.body,
            "{op:?}"
        );
        assert_eq!(
            app.get("/session", Some(&strong.tokens.access))
                .await
                .status,
            session,
            "{op:?}"
        );
        refused.push((op, strong.id.clone()));

        // A superset of the target's: done.
        let r = op.apply(&app, c, &weak, "weak").await;
        assert!(r.status.is_success(), "{op:?}: {} {}", r.status, r.body);
        op.assert_done(&app, token, &weak).await;
    }

    // Granting a role holding what the caller lacks, to an account it outranks: refused.
    let weak = holding(&app, token, &["weak", "user"]).await;
    let before = snapshot(&app, token, &weak.id).await;
    set_roles(&app, c, &weak.id, &["weak", "beyond", "user"])
        .await
        .assert_error(403, "forbidden");
    set_roles(&app, c, &weak.id, &["admin", "user"])
        .await
        .assert_error(403, "forbidden");
    assert_eq!(snapshot(&app, token, &weak.id).await.body, before.body);
    // Creating roles: only with permissions the caller holds.
    create_role(&app, c, "wider", &["sessions:revoke", "audit:read"])
        .await
        .assert_error(403, "forbidden");
    let r = create_role(&app, c, "narrower", &["sessions:revoke"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Its own roles: never, not even to the same set.
    set_roles(&app, c, &caller.id, &["deleg", "user"])
        .await
        .assert_error(403, "forbidden");
    // The admin (root) is out of reach; the admin reaches everyone, custom permissions included.
    let root_disable = format!("/admin/users/{}/disable", root.id);
    call(&app, Method::POST, &root_disable, Some(c), None)
        .await
        .assert_error(403, "forbidden");
    let r = create_role(&app, token, "billing", &["billing:read"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = set_roles(&app, token, &caller.id, &["billing", "deleg", "user"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let roles = app.get("/admin/roles", Some(token)).await;
    let names = roles.body.to_string();
    assert!(
        names.contains("narrower") && !names.contains("wider"),
        "{names}"
    );

    // Every refusal of the matrix is audited, about its target.
    let query = format!("user_id={}", caller.id);
    let found = events_once(&app, token, &query, |e| {
        refused
            .iter()
            .all(|(op, id)| !denials(e, op.kind(), Some(id)).is_empty())
    })
    .await;
    for (op, id) in &refused {
        let d = denials(&found, op.kind(), Some(id));
        assert_eq!(d.len(), 1, "{op:?}: {found:?}");
        assert_eq!(d[0]["detail"]["reason"], "escalation", "{}", d[0]);
        assert_eq!(
            d[0]["detail"]["missing_permissions"],
            json!(["audit:read"]),
            "{}",
            d[0]
        );
    }
}

async fn a_loop_of_denied_calls_is_counted_not_written_row_by_row(backend: Backend) {
    let (mut dep, admins) = with_admins(backend, 1).await;
    dep.set("AUDIT_DENIED_WINDOW_MS", 1000);
    let app = dep.spawn().await;
    let root = admin(&app, &admins[0]).await;
    let token = root.tokens.access.as_str();
    let r = create_role(&app, token, "helpdesk", &["users:write"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let prober = plain(&app).await;
    let delegate = holding(&app, token, &["helpdesk", "user"]).await;
    let bystander = unique_email("bystander");
    let r = app.register(&bystander, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let bystander_id = r.body["id"].as_str().expect("id").to_string();

    // 200 refused calls on one route, with a real event in the middle of them; and 50
    // refused escalations.
    for i in 0..200 {
        app.get("/admin/users", Some(&prober.tokens.access))
            .await
            .assert_error(403, "forbidden");
        if i == 100 {
            app.login(&bystander, PASSWORD).await;
        }
    }
    let disable = format!("/admin/users/{}/disable", root.id);
    for _ in 0..50 {
        call(
            &app,
            Method::POST,
            &disable,
            Some(&delegate.tokens.access),
            None,
        )
        .await
        .assert_error(403, "forbidden");
    }

    // Every refusal is counted, in a few rows (at most two per window: the first at once, the
    // count of the rest at its end), all naming the route and the permission.
    let query = format!("user_id={}&type=access_denied", prober.id);
    let rows = events_once(&app, token, &query, |e| counted(e) >= 200).await;
    assert!(rows.len() < 100, "{} rows for 200 denials", rows.len());
    for e in &rows {
        assert_event(e, "access_denied", Some(&prober.id), None, "denied");
        assert_eq!(e["detail"]["route"], "/admin/users", "{e}");
        assert_eq!(e["detail"]["permission"], "users:read", "{e}");
    }
    let query = format!("user_id={}&type=user_disable", delegate.id);
    let escalations = events_once(&app, token, &query, |e| counted(e) >= 50).await;
    assert!(escalations.len() < 50, "{escalations:?}");
    // Nothing is counted twice once the windows have closed.
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    let query = format!("user_id={}&type=access_denied", prober.id);
    assert_eq!(counted(&events(&app, token, &query).await), 200);
    let query = format!("user_id={}&type=user_disable", delegate.id);
    assert_eq!(counted(&events(&app, token, &query).await), 50);

    // The real event landed.
    let logins = settled(
        &app,
        token,
        &format!("user_id={bystander_id}&type=login"),
        1,
    )
    .await;
    assert_event(
        &logins[0],
        "login",
        Some(&bystander_id),
        Some(&bystander_id),
        "success",
    );
}

async fn denials_counted_when_the_server_stops_are_written(backend: Backend) {
    // The default window (a minute) outlives this test: the count is written at shutdown.
    let (dep, admins) = with_admins(backend, 1).await;
    let first = dep.spawn().await;
    let root = admin(&first, &admins[0]).await;
    let prober = plain(&first).await;
    for _ in 0..30 {
        first
            .get("/admin/audit", Some(&prober.tokens.access))
            .await
            .assert_error(403, "forbidden");
    }
    first.stop().await;

    let app = dep.spawn().await;
    let token = app.login(&root.email, PASSWORD).await.access;
    let query = format!("user_id={}&type=access_denied", prober.id);
    let rows = events_once(&app, &token, &query, |e| counted(e) >= 30).await;
    assert_eq!(
        rows.len(),
        2,
        "the first at once, the other 29 counted: {rows:?}"
    );
    assert_eq!(counted(&rows), 30);
}

async fn the_admin_role_regains_every_defined_permission_at_start_up(backend: Backend) {
    // A deployment migrated before a permission was added to sessiond's definition: its admin
    // role lacks it until the server starts (or `sessiond migrate` runs).
    let (dep, admins) = with_admins(backend, 1).await;
    let first = dep.spawn().await;
    let root = admin(&first, &admins[0]).await;
    first.stop().await;
    let db = Database::connect(dep.database_url())
        .await
        .expect("connect to the deployment's database");
    let removed = db
        .execute_raw(Statement::from_string(
            db.get_database_backend(),
            "DELETE FROM role_permissions WHERE role_name = 'admin' AND permission = 'audit:read'",
        ))
        .await
        .expect("delete");
    assert_eq!(removed.rows_affected(), 1);
    let _ = db.close().await;

    let app = dep.spawn().await;
    let token = app.login(&root.email, PASSWORD).await.access;
    let session = app.get("/session", Some(&token)).await;
    assert_eq!(session.body["permissions"], json!(ADMIN_PERMISSIONS));
    let roles = app.get("/admin/roles", Some(&token)).await;
    assert_eq!(roles.status, StatusCode::OK, "{}", roles.body);
    assert_eq!(
        roles.body["items"][0],
        json!({"name": "admin", "permissions": ADMIN_PERMISSIONS, "builtin": true})
    );
}
