//! Operator commands that work on the database directly: `sessiond user create`, the way to
//! make the first admin without a running server or an HTTP call.
use std::time::Duration;

use actix::Actor;
use uuid::Uuid;

use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    auth::access::validate_role_name,
    config::Config,
    metrics::Metrics,
    startup,
    users::{self, password::PasswordHasher, CreateUser, UserStore, WriteAudit},
};

/// Creates an account with `roles` (plus `user`) and returns its id. The password is checked by
/// the same rules as POST /register. Must run inside an actix system.
pub async fn create_user(
    config: &Config,
    email: &str,
    name: Option<String>,
    roles: Vec<String>,
    password: String,
) -> Result<Uuid, String> {
    let email = users::normalize_email(email).map_err(|m| format!("--email: {m}"))?;
    let name = users::validate_name(name).map_err(|m| format!("--name: {m}"))?;
    for r in &roles {
        validate_role_name(r).map_err(|m| format!("--role {r}: {m}"))?;
    }
    users::validate_password(&password)?;
    let db = startup::connect_database(config)
        .await
        .map_err(|e| e.to_string())?;
    if config.migrate_on_start {
        startup::migrate(&db).await.map_err(|e| e.to_string())?;
    }
    let metrics = Metrics::new();
    let store = UserStore::new(db, Duration::from_secs(10), metrics.db.clone()).start();
    let hasher = PasswordHasher::new(&config.argon2, config.password_min_score, metrics)
        .await
        .map_err(|e| e.to_string())?;
    let known = users::password_context(&email, name.as_deref());
    let password_hash = hasher
        .hash_new(password, known)
        .await
        .map_err(|e| e.to_string())?;
    let user = store
        .ask(CreateUser {
            email,
            name,
            password_hash,
            roles,
        })
        .await
        .map_err(|e| match e {
            users::UserStoreError::EmailTaken => "an account with this email exists".to_string(),
            e => e.to_string(),
        })?;
    // Written before returning: the process ends right after.
    let event = AuditEvent::success("user_create")
        .subject(user.id)
        .detail(serde_json::json!({ "roles": user.roles, "source": "cli" }));
    store
        .ask(WriteAudit(vec![event]))
        .await
        .map_err(|e| format!("account created, but its audit event was not written: {e}"))?;
    Ok(user.id)
}

/// The password from stdin: prompted for (twice, without echo) on a terminal, else one line.
pub fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Password (again): ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    // Only the line ending goes: passwords are never trimmed.
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(password.to_string())
}
