use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::{both_backends, support::*};

both_backends!(
    duplicate_email_in_any_spelling_is_409,
    concurrent_registrations_of_one_address_give_one_account,
    wrong_password_and_unknown_email_look_the_same,
    password_is_stored_as_argon2id_never_in_clear,
);

async fn count_users(dep: &Deployment, email: &str) -> i64 {
    let db = Database::connect(dep.database_url()).await.expect("db");
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            match backend {
                sea_orm::DatabaseBackend::Postgres => {
                    "SELECT COUNT(*) AS n FROM users WHERE email = $1"
                }
                _ => "SELECT COUNT(*) AS n FROM users WHERE email = ?",
            },
            [email.into()],
        ))
        .await
        .expect("count query")
        .expect("a row");
    let n: i64 = row.try_get("", "n").expect("n");
    let _ = db.close().await;
    n
}

async fn duplicate_email_in_any_spelling_is_409(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    assert_eq!(
        app.register("ada@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    // Case, surrounding space, and fullwidth (NFKC) variants are the same address.
    for variant in [
        "ada@example.com",
        "ADA@Example.COM",
        "  ada@example.com\t",
        "ａｄａ@ｅｘａｍｐｌｅ.com",
    ] {
        app.register(variant, PASSWORD)
            .await
            .assert_error(409, "email_taken");
    }
    assert_eq!(count_users(&dep, "ada@example.com").await, 1);
}

async fn concurrent_registrations_of_one_address_give_one_account(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let spellings = [
        "race@example.com",
        "RACE@example.com",
        " race@example.com",
        "Race@Example.com",
    ];
    let attempts = (0..12).map(|i| app.register(spellings[i % spellings.len()], PASSWORD));
    let replies = futures_util::future::join_all(attempts).await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    for r in &replies {
        assert!(
            r.status == StatusCode::CREATED
                || (r.status == StatusCode::CONFLICT && r.error() == "email_taken"),
            "unexpected {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(created, 1);
    assert_eq!(count_users(&dep, "race@example.com").await, 1);
    app.login("race@example.com", PASSWORD).await;
}

async fn wrong_password_and_unknown_email_look_the_same(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, _) = app.user().await;
    let wrong = app.login_reply(&email, "not the password").await;
    let unknown = app.login_reply("nobody@example.com", PASSWORD).await;
    wrong.assert_error(401, "invalid_credentials");
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.body, unknown.body);
    let names = |r: &Reply| {
        let mut v: Vec<String> = r
            .headers
            .keys()
            .map(|k| k.to_string())
            .filter(|k| k != "date")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&wrong), names(&unknown));
    // Impossible inputs get the same answer too.
    app.login_reply("not-an-email", PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    app.login_reply(&email, "")
        .await
        .assert_error(401, "invalid_credentials");
}

async fn password_is_stored_as_argon2id_never_in_clear(backend: Backend) {
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (email, _) = app.user().await;
    let db = Database::connect(dep.database_url()).await.expect("db");
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT password_hash FROM users WHERE email = '{email}'"),
        ))
        .await
        .expect("query")
        .expect("row");
    let hash: String = row.try_get("", "password_hash").expect("hash");
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    let _ = db.close().await;
}
