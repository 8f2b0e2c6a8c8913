//! The UserStore actor owns the database (sea-orm): accounts here, account administration in
//! [`accounts`], roles in [`roles`] (the audit trail's storage is `crate::audit::store`). Its
//! handlers return the database work as a [`Reply`] the caller runs on its own thread (see
//! [`crate::actor`]).
pub mod accounts;
pub mod clients;
pub mod email;
pub mod identities;
pub mod mfa;
pub mod password;
pub mod roles;
pub mod webauthn;

pub use accounts::*;
pub use clients::*;
pub use email::*;
pub use identities::*;
pub use mfa::*;
pub use roles::*;
pub use webauthn::*;

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::{email_token, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, Set, SqlErr, Statement, TransactionTrait,
};
use serde::Serialize;

use crate::{
    actor::{Reply, Unreachable},
    error::{ApiError, PublicError},
    mail::Mail,
    metrics::CallMetrics,
    webhooks::{Event, Webhooks},
};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    #[error("email taken")]
    EmailTaken,
    #[error("user not found")]
    NotFound,
    #[error("unknown role: {0}")]
    UnknownRole(String),
    /// A request the data refuses (e.g. too many permissions); the message is for the caller.
    #[error("{0}")]
    Invalid(String),
    /// The change would break an invariant (the last admin, an existing role name).
    #[error("{0}")]
    Conflict(String),
    /// A mailed token that is unknown, used, expired or superseded.
    #[error("invalid token")]
    InvalidToken,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("database error: {0}")]
    Internal(String),
}

impl From<DbErr> for UserStoreError {
    fn from(e: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(_)) = e.sql_err() {
            return UserStoreError::EmailTaken;
        }
        match e {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => {
                UserStoreError::Unavailable(e.to_string())
            }
            _ => UserStoreError::Internal(e.to_string()),
        }
    }
}

/// The public view of an account (the "user" object of docs/API.md).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// The owner opened a verification link mailed to `email`.
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn new(m: &user::Model, roles: Vec<String>) -> Self {
        User {
            id: m.id,
            email: m.email.clone(),
            name: m.name.clone(),
            roles,
            email_verified: m.email_verified,
            created_at: m.created_at,
        }
    }
}

pub struct UserStore {
    db: DatabaseConnection,
    timeout: Duration,
    metrics: CallMetrics,
}

impl UserStore {
    pub fn new(db: DatabaseConnection, timeout: Duration, metrics: CallMetrics) -> Self {
        Self {
            db,
            timeout,
            metrics,
        }
    }

    /// What every handler's future needs, cloned out of the actor.
    pub(crate) fn ctx(&self) -> Db {
        Db {
            conn: self.db.clone(),
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        }
    }
}

/// A database handle with its call bound and metrics.
pub(crate) struct Db {
    pub(crate) conn: DatabaseConnection,
    timeout: Duration,
    metrics: CallMetrics,
}

impl Db {
    /// One database statement, bounded (see [`Db::call_tx`]).
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, DbErr>>,
    ) -> Result<T, UserStoreError> {
        self.call_tx(op, async { fut.await.map_err(UserStoreError::from) })
            .await
    }

    /// Bounds a unit of database work (one statement or a transaction) so a hung database gives
    /// 503, not a hung request; timed and counted by `op`.
    pub(crate) async fn call_tx<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, UserStoreError>>,
    ) -> Result<T, UserStoreError> {
        let bounded = async {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(UserStoreError::Unavailable(
                    "database call timed out".into(),
                )),
            }
        };
        self.metrics.observe(op, bounded).await
    }
}

impl Actor for UserStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

/// A new account with its roles (which must exist), and its verification token and mail, in
/// one transaction.
#[derive(Message)]
#[rtype(result = "Reply<Result<User, UserStoreError>>")]
pub struct CreateUser {
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub roles: Vec<String>,
    /// The token the verification mail carries (its `email` is the account's).
    pub verify: Option<NewToken>,
    pub mail: Vec<Mail>,
    /// Vouched for by whoever creates it (`sessiond user create`).
    pub email_verified: bool,
}

impl Handler<CreateUser> for UserStore {
    type Result = Reply<Result<User, UserStoreError>>;

    fn handle(&mut self, msg: CreateUser, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let now = Utc::now();
            let model = user::ActiveModel {
                id: Set(Uuid::now_v7()),
                email: Set(msg.email),
                name: Set(msg.name),
                password_hash: Set(msg.password_hash),
                created_at: Set(now),
                updated_at: Set(now),
                disabled_at: Set(None),
                email_verified: Set(msg.email_verified),
            };
            let roles = roles::normalize_roles(msg.roles);
            let insert = async {
                let txn = db.conn.begin().await?;
                roles::check_grant(&txn, &roles).await?;
                let saved = model.insert(&txn).await?;
                roles::insert_roles(&txn, saved.id, &roles).await?;
                if let Some(token) = msg.verify {
                    email::insert_token(&txn, Some(saved.id), token).await?;
                }
                crate::mail::enqueue(&txn, msg.mail, false).await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(saved)
            };
            let saved = db.call_tx("insert_user", insert).await?;
            Ok(User::new(&saved, roles))
        })
    }
}

/// The account and its password hash, for login.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<user::Model>, UserStoreError>>")]
pub struct FindByEmail(pub String);

impl Handler<FindByEmail> for UserStore {
    type Result = Reply<Result<Option<user::Model>, UserStoreError>>;

    fn handle(&mut self, msg: FindByEmail, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let query = user::Entity::find().filter(user::Column::Email.eq(msg.0));
            db.call("find_user_by_email", query.one(&db.conn)).await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<User, UserStoreError>>")]
pub struct FindById(pub Uuid);

impl Handler<FindById> for UserStore {
    type Result = Reply<Result<User, UserStoreError>>;

    fn handle(&mut self, msg: FindById, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let find = async {
                let Some(found) = user::Entity::find_by_id(msg.0).one(&db.conn).await? else {
                    return Err(UserStoreError::NotFound);
                };
                let roles = roles::roles_of(&db.conn, &[found.id]).await?;
                Ok(User::new(
                    &found,
                    roles.get(&found.id).cloned().unwrap_or_default(),
                ))
            };
            db.call_tx("find_user_by_id", find).await
        })
    }
}

/// The account with its password hash, by id (password change).
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<user::Model>, UserStoreError>>")]
pub struct FindAccount(pub Uuid);

impl Handler<FindAccount> for UserStore {
    type Result = Reply<Result<Option<user::Model>, UserStoreError>>;

    fn handle(&mut self, msg: FindAccount, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call(
                "find_user_by_id",
                user::Entity::find_by_id(msg.0).one(&db.conn),
            )
            .await
        })
    }
}

/// The new hash, with its notice mail, in one transaction that also voids the account's
/// unused password-reset links (a password change supersedes them).
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct SetPassword {
    pub user_id: Uuid,
    pub password_hash: String,
    /// `user.password_changed` (keeping this session), written in the change's transaction.
    pub kept_session_id: Uuid,
    pub webhooks: Webhooks,
    pub mail: Vec<Mail>,
}

impl Handler<SetPassword> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: SetPassword, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let update = user::ActiveModel {
                id: Set(msg.user_id),
                password_hash: Set(msg.password_hash),
                updated_at: Set(Utc::now()),
                ..Default::default()
            };
            let event = Event::password_changed(msg.user_id, msg.kept_session_id);
            db.call_tx("update_password", async {
                let txn = db.conn.begin().await?;
                update.update(&txn).await?;
                msg.webhooks.write(&txn, &[event]).await?;
                email::void_tokens(&txn, msg.user_id, &[email_token::RESET]).await?;
                crate::mail::enqueue(&txn, msg.mail, false).await?;
                txn.commit().await?;
                Ok(())
            })
            .await
        })
    }
}

/// Readiness: one round trip to the database.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct Ping;

impl Handler<Ping> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let stmt = Statement::from_string(db.conn.get_database_backend(), "SELECT 1");
            db.call("ping", db.conn.query_one_raw(stmt))
                .await
                .map(|_| ())
        })
    }
}

/// Readiness: the database answers and its schema against this binary's migrations (two
/// reads, no write).
#[derive(Message)]
#[rtype(result = "Reply<Result<migration::SchemaStatus, UserStoreError>>")]
pub struct CheckSchema;

impl Handler<CheckSchema> for UserStore {
    type Result = Reply<Result<migration::SchemaStatus, UserStoreError>>;

    fn handle(&mut self, _: CheckSchema, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call("schema_status", migration::schema_status(&db.conn))
                .await
        })
    }
}

/// Ends the actor and closes its pool (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for UserStore {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) -> Self::Result {
        ctx.stop();
        let db = self.db.clone();
        Box::pin(async move {
            let _ = db.close().await;
        })
    }
}

impl PublicError for UserStoreError {
    fn into_api_error(self) -> ApiError {
        match self {
            UserStoreError::EmailTaken => ApiError::EmailTaken,
            UserStoreError::NotFound => ApiError::NotFound("user"),
            e @ UserStoreError::UnknownRole(_) => ApiError::InvalidRequest(e.to_string()),
            UserStoreError::Invalid(m) => ApiError::InvalidRequest(m),
            UserStoreError::InvalidToken => ApiError::InvalidToken,
            UserStoreError::Conflict(m) => ApiError::Conflict(m),
            UserStoreError::Unavailable(detail) => ApiError::Unavailable {
                what: "database",
                detail,
            },
            UserStoreError::Internal(detail) => ApiError::Internal(detail),
            UserStoreError::Unreachable(e) => e.into(),
        }
    }
}
