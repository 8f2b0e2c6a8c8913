//! Database and account fixtures: registered accounts, proven addresses, admins and roles.

use super::*;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::json;
use uuid::Uuid;

// Accounts, admin calls and JWT claims.

/// What the built-in `admin` role grants, sorted: every permission sessiond defines.
pub const ADMIN_PERMISSIONS: &[&str] = sessiond::auth::access::BUILTIN_PERMISSIONS;

/// A registered, logged-in account.
pub struct Account {
    pub id: String,
    pub email: String,
    pub tokens: Tokens,
}

pub fn unique_email(kind: &str) -> String {
    format!("{kind}-{}@example.com", Uuid::new_v4().simple())
}

/// Registers `email` and logs it in, asserting the roles it then holds. `admin` (from
/// ADMIN_EMAILS) comes only with a proven address: registration answers without it, and the
/// address is marked verified ([`verify_address`]) so that the login grants it.
pub async fn account(app: &TestApp, email: &str, roles: &[&str]) -> Account {
    let r = app.register(email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::CREATED, "register: {}", r.body);
    let unproven: Vec<&str> = roles.iter().copied().filter(|r| *r != "admin").collect();
    assert_eq!(r.body["roles"], json!(unproven), "{}", r.body);
    if roles.contains(&"admin") {
        verify_address(app, email).await;
    }
    let tokens = app.login(email, PASSWORD).await;
    if roles.contains(&"admin") {
        let session = app.get("/session", Some(&tokens.access)).await;
        assert_eq!(session.body["roles"], json!(roles), "{}", session.body);
    }
    Account {
        id: r.body["id"].as_str().expect("id").to_string(),
        email: email.to_string(),
        tokens,
    }
}

/// Marks the address of `email`'s account as proven, as its owner's use of a mailed link
/// would: a fixture for tests of what a verified account may do (the mailed links themselves
/// are tested in mail.rs and takeover.rs).
pub async fn verify_address(app: &TestApp, email: &str) {
    let url = app.database_url.as_deref().expect("an in-process app");
    verify_address_in(url, email).await;
}

/// [`verify_address`] on the database at `url` (a server started as a process).
pub async fn verify_address_in(url: &str, email: &str) {
    let db = Database::connect(url).await.expect("database");
    let done = db
        .execute_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "UPDATE users SET email_verified = true WHERE email = '{}'",
                email.replace('\'', "''")
            ),
        ))
        .await
        .expect("verify the address");
    assert_eq!(done.rows_affected(), 1, "no account holds {email}");
    let _ = db.close().await;
}

/// A plain account (roles ["user"]).
pub async fn plain(app: &TestApp) -> Account {
    account(app, &unique_email("user"), &["user"]).await
}

/// A deployment whose ADMIN_EMAILS lists `admins` fresh addresses; returns them.
pub async fn with_admins(backend: Backend, admins: usize) -> (Deployment, Vec<String>) {
    let mut dep = Deployment::new(backend).await;
    let emails: Vec<String> = (0..admins).map(|_| unique_email("admin")).collect();
    dep.set("ADMIN_EMAILS", emails.join(","));
    (dep, emails)
}

pub async fn admin(app: &TestApp, email: &str) -> Account {
    account(app, email, &["admin", "user"]).await
}

pub async fn set_roles(app: &TestApp, token: &str, user_id: &str, roles: &[&str]) -> Reply {
    let path = format!("/admin/users/{user_id}/roles");
    call(
        app,
        Method::PUT,
        &path,
        Some(token),
        Some(&json!({ "roles": roles })),
    )
    .await
}

pub async fn create_role(app: &TestApp, token: &str, name: &str, permissions: &[&str]) -> Reply {
    let body = json!({"name": name, "permissions": permissions});
    call(app, Method::POST, "/admin/roles", Some(token), Some(&body)).await
}
