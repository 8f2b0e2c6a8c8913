//! Operator commands that work on the database directly: `sessiond user create`, the way to
//! make the first admin without a running server or an HTTP call, and `sessiond keys ...` for
//! the token-signing keys.
use std::time::Duration;

use actix::Actor;
use uuid::Uuid;

use crate::{
    app::accounts::{self, NewAccount},
    config::Config,
    domain::{DisplayName, Email, Password, RoleName},
    error::ApiError,
    metrics::Metrics,
    startup,
    users::{password::PasswordHasher, UserStore},
};

/// Creates an account with `roles` (plus `user`) and returns its id. The input is parsed by the
/// same rules as POST /register. Must run inside an actix system.
pub async fn create_user(
    config: &Config,
    email: &str,
    name: Option<String>,
    roles: Vec<String>,
    password: String,
) -> Result<Uuid, String> {
    let email = Email::parse(email).map_err(|m| format!("--email: {m}"))?;
    let name = DisplayName::parse(name).map_err(|m| format!("--name: {m}"))?;
    let roles = roles
        .into_iter()
        .map(|r| {
            RoleName::parse(r.clone())
                .map(RoleName::into_inner)
                .map_err(|m| format!("--role {r}: {m}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let password = Password::parse(password)?;
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
    let account = NewAccount {
        email,
        password,
        name,
        roles,
    };
    let user = accounts::create_from_cli(&store, &hasher, account)
        .await
        .map_err(|e| match e {
            ApiError::EmailTaken => "an account with this email exists".to_string(),
            e => e.log_message(),
        })?;
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

async fn key_database(config: &Config) -> Result<sea_orm::DatabaseConnection, String> {
    let db = startup::connect_database(config)
        .await
        .map_err(|e| e.to_string())?;
    if config.migrate_on_start {
        startup::migrate(&db).await.map_err(|e| e.to_string())?;
    }
    Ok(db)
}

/// `sessiond keys list`: every stored signing key, one line each, oldest first.
pub async fn list_keys(config: &Config) -> Result<String, String> {
    use crate::auth::keys;
    let db = key_database(config).await?;
    let rows = keys::load(&db).await.map_err(|e| e.to_string())?;
    let now = crate::session::now_unix();
    let policy = keys::KeyPolicy::new(config);
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    let mut out = format!(
        "{:<44} {:<6} {:<8} {:<26} {}\n",
        "KID", "ALG", "STATE", "SIGNS FROM", "PUBLISHED UNTIL"
    );
    for k in keys::timeline(&rows, &policy, now) {
        let state = match k.state {
            keys::KeyState::Pending => "pending",
            keys::KeyState::Active => "active",
            keys::KeyState::Previous => "previous",
            keys::KeyState::Expired => "expired",
        };
        out.push_str(&format!(
            "{:<44} {:<6} {:<8} {:<26} {}\n",
            k.kid,
            k.algorithm,
            state,
            time(k.activates_at),
            k.published_until.map_or("-".to_string(), time)
        ));
    }
    Ok(out)
}

/// `sessiond keys rotate`: a new key, published at once, signing after ACCESS_TOKEN_TTL +
/// JWKS_MAX_AGE + JWT_KEY_POLL_SECONDS. Returns its kid.
pub async fn rotate_keys(config: &Config) -> Result<String, String> {
    use crate::auth::keys;
    let db = key_database(config).await?;
    let policy = keys::KeyPolicy::new(config);
    keys::rotate(&db, &policy, crate::session::now_unix())
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "another rotation happened at the same moment; see `sessiond keys list`".into()
        })
}

/// `sessiond keys retire`: retires the keys of other algorithms than JWT_ALGORITHM. Returns
/// how many.
pub async fn retire_keys(config: &Config) -> Result<u64, String> {
    use crate::auth::keys;
    let db = key_database(config).await?;
    let policy = keys::KeyPolicy::new(config);
    keys::retire_other_algorithms(&db, &policy, crate::session::now_unix())
        .await
        .map_err(|e| e.to_string())
}
