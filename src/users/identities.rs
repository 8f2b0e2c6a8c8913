//! Identities at identity providers (sign-in with OpenID Connect or GitHub): finding the account
//! of a provider's subject, passwordless accounts made by a first sign-in, linking, unlinking.
use actix::prelude::*;
use chrono::Utc;
use entities::{identity, user};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{roles, User, UserStore, UserStoreError};
use crate::{actor::Reply, mail::Mail};

/// The stored "hash" of an account without a password: no argon2 hash is empty, so it never
/// matches (login verifies the dummy hash instead, at the same cost).
pub const NO_PASSWORD: &str = "";

/// The identity of `subject` at `provider`, if an account holds it.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<identity::Model>, UserStoreError>>")]
pub struct FindIdentity {
    pub provider: String,
    pub subject: String,
}

impl Handler<FindIdentity> for UserStore {
    type Result = Reply<Result<Option<identity::Model>, UserStoreError>>;

    fn handle(&mut self, msg: FindIdentity, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let query = identity::Entity::find()
                .filter(identity::Column::Provider.eq(msg.provider))
                .filter(identity::Column::Subject.eq(msg.subject));
            db.call("find_identity", query.one(&db.conn)).await
        })
    }
}

/// The identities an account holds, oldest first.
#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<identity::Model>, UserStoreError>>")]
pub struct ListIdentities(pub Uuid);

impl Handler<ListIdentities> for UserStore {
    type Result = Reply<Result<Vec<identity::Model>, UserStoreError>>;

    fn handle(&mut self, msg: ListIdentities, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let query = identity::Entity::find()
                .filter(identity::Column::UserId.eq(msg.0))
                .order_by_asc(identity::Column::LinkedAt);
            db.call("list_identities", query.all(&db.conn)).await
        })
    }
}

fn new_identity(
    user_id: Uuid,
    provider: String,
    subject: String,
    email: Option<String>,
) -> identity::ActiveModel {
    identity::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id),
        provider: Set(provider),
        subject: Set(subject),
        email: Set(email),
        linked_at: Set(Utc::now()),
    }
}

/// A passwordless account made by a first sign-in through a provider, with its identity, in
/// one transaction (a failure leaves neither). `EmailTaken` when the email, or the identity,
/// was taken meanwhile.
#[derive(Message)]
#[rtype(result = "Reply<Result<User, UserStoreError>>")]
pub struct CreateFederatedUser {
    pub email: String,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub provider: String,
    pub subject: String,
}

impl Handler<CreateFederatedUser> for UserStore {
    type Result = Reply<Result<User, UserStoreError>>;

    fn handle(&mut self, msg: CreateFederatedUser, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let now = Utc::now();
            let id = Uuid::now_v7();
            let model = user::ActiveModel {
                id: Set(id),
                email: Set(msg.email.clone()),
                name: Set(msg.name),
                password_hash: Set(NO_PASSWORD.to_string()),
                // Only a provider-verified email creates an account (see federated sign-in).
                email_verified: Set(true),
                created_at: Set(now),
                updated_at: Set(now),
                disabled_at: Set(None),
            };
            let roles = roles::normalize_roles(msg.roles);
            let identity = new_identity(id, msg.provider, msg.subject, Some(msg.email));
            let insert = async {
                let txn = db.conn.begin().await?;
                roles::check_grant(&txn, &roles).await?;
                let saved = model.insert(&txn).await?;
                roles::insert_roles(&txn, saved.id, &roles).await?;
                identity.insert(&txn).await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(saved)
            };
            let saved = db.call_tx("insert_federated_user", insert).await?;
            Ok(User::new(&saved, roles))
        })
    }
}

/// Links an identity to an account. `Conflict` when the identity belongs to an account, or the
/// account already holds an identity at that provider.
#[derive(Message)]
#[rtype(result = "Reply<Result<identity::Model, UserStoreError>>")]
pub struct LinkIdentity {
    pub user_id: Uuid,
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    /// The owner's notice, stored with the link.
    pub notice: Mail,
}

impl Handler<LinkIdentity> for UserStore {
    type Result = Reply<Result<identity::Model, UserStoreError>>;

    fn handle(&mut self, msg: LinkIdentity, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let model = new_identity(msg.user_id, msg.provider, msg.subject, msg.email);
            let work = async {
                let txn = db.conn.begin().await?;
                let linked = model.insert(&txn).await?;
                crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(linked)
            };
            match db.call_tx("link_identity", work).await {
                Err(UserStoreError::EmailTaken) => Err(UserStoreError::Conflict(
                    "this identity, or one at the same provider, is already linked".into(),
                )),
                other => other,
            }
        })
    }
}

/// Unlinks the account's identity at a provider, unless it is the account's last way to sign
/// in (no password, no other identity): `Conflict`. `NotFound` when there is none.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct UnlinkIdentity {
    pub user_id: Uuid,
    pub provider: String,
    /// The owner's notice, stored with the unlink.
    pub notice: Mail,
}

impl Handler<UnlinkIdentity> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: UnlinkIdentity, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let unlink = async {
                let txn = db.conn.begin().await?;
                // Two unlinks of one account at once must not both see the other identity:
                // PostgreSQL locks the account's row; SQLite runs one write transaction at once.
                let find = user::Entity::find_by_id(msg.user_id);
                let find = match txn.get_database_backend() {
                    DbBackend::Postgres => find.lock_exclusive(),
                    _ => find,
                };
                let Some(account) = find.one(&txn).await? else {
                    return Err(UserStoreError::NotFound);
                };
                let held = identity::Entity::find()
                    .filter(identity::Column::UserId.eq(msg.user_id))
                    .count(&txn)
                    .await?;
                let deleted = identity::Entity::delete_many()
                    .filter(identity::Column::UserId.eq(msg.user_id))
                    .filter(identity::Column::Provider.eq(msg.provider))
                    .exec(&txn)
                    .await?;
                if deleted.rows_affected == 0 {
                    return Err(UserStoreError::NotFound);
                }
                if account.password_hash == NO_PASSWORD && held <= 1 {
                    // Dropped with the transaction: nothing changes.
                    return Err(UserStoreError::Conflict(
                        "this identity is the account's last way to sign in: set a password or \
                         link another provider first"
                            .into(),
                    ));
                }
                crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                txn.commit().await?;
                Ok(())
            };
            db.call_tx("unlink_identity", unlink).await
        })
    }
}
