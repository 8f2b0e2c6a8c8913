//! Passkeys and security keys in the database: each account's WebAuthn credentials.
use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::webauthn_credential;
use sea_orm::{
    sea_query::Expr, ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::{actor::Reply, mail::Mail};

/// The most credentials one account may hold.
pub const MAX_WEBAUTHN_CREDENTIALS: u64 = 20;

/// The account's credentials, oldest first.
#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<webauthn_credential::Model>, UserStoreError>>")]
pub struct ListWebauthn(pub Uuid);

impl Handler<ListWebauthn> for UserStore {
    type Result = Reply<Result<Vec<webauthn_credential::Model>, UserStoreError>>;

    fn handle(&mut self, msg: ListWebauthn, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call(
                "list_webauthn",
                webauthn_credential::Entity::find()
                    .filter(webauthn_credential::Column::UserId.eq(msg.0))
                    .order_by_asc(webauthn_credential::Column::CreatedAt)
                    .order_by_asc(webauthn_credential::Column::Id)
                    .all(&db.conn),
            )
            .await
        })
    }
}

/// The credential with this authenticator credential id (base64url), whoever holds it.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<webauthn_credential::Model>, UserStoreError>>")]
pub struct FindWebauthn(pub String);

impl Handler<FindWebauthn> for UserStore {
    type Result = Reply<Result<Option<webauthn_credential::Model>, UserStoreError>>;

    fn handle(&mut self, msg: FindWebauthn, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call(
                "find_webauthn",
                webauthn_credential::Entity::find()
                    .filter(webauthn_credential::Column::CredentialId.eq(msg.0))
                    .one(&db.conn),
            )
            .await
        })
    }
}

/// Stores a new credential. `Conflict` when the authenticator's credential id is registered
/// already (to any account) or the account holds [`MAX_WEBAUTHN_CREDENTIALS`].
#[derive(Message)]
#[rtype(result = "Reply<Result<webauthn_credential::Model, UserStoreError>>")]
pub struct AddWebauthn {
    pub user_id: Uuid,
    pub credential_id: String,
    pub name: String,
    /// The serialized `Passkey`.
    pub passkey: String,
    /// The owner's notice, stored with the credential.
    pub notice: Mail,
}

impl Handler<AddWebauthn> for UserStore {
    type Result = Reply<Result<webauthn_credential::Model, UserStoreError>>;

    fn handle(&mut self, msg: AddWebauthn, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                use sea_orm::PaginatorTrait;
                let txn = db.conn.begin().await?;
                let held = webauthn_credential::Entity::find()
                    .filter(webauthn_credential::Column::UserId.eq(msg.user_id))
                    .count(&txn)
                    .await?;
                if held >= MAX_WEBAUTHN_CREDENTIALS {
                    return Err(UserStoreError::Conflict(format!(
                        "an account holds at most {MAX_WEBAUTHN_CREDENTIALS} passkeys: delete one first"
                    )));
                }
                let inserted = webauthn_credential::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    user_id: Set(msg.user_id),
                    credential_id: Set(msg.credential_id),
                    name: Set(msg.name),
                    passkey: Set(msg.passkey),
                    created_at: Set(Utc::now()),
                    last_used_at: Set(None),
                }
                .insert(&txn)
                .await;
                match inserted {
                    Ok(model) => {
                        crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                        txn.commit().await?;
                        Ok(model)
                    }
                    Err(e) => match UserStoreError::from(e) {
                        // The unique credential id (the only unique column besides the key).
                        UserStoreError::EmailTaken => Err(UserStoreError::Conflict(
                            "this authenticator's credential is registered already".into(),
                        )),
                        e => Err(e),
                    },
                }
            };
            db.call_tx("add_webauthn", work).await
        })
    }
}

/// Records a use: the credential (its signature counter) as updated by the assertion, if it
/// changed, and the time. A new counter is stored only over the credential as `expected` (read
/// before the assertion was checked), in one conditional UPDATE: of two assertions raced with
/// the same counter, one stores it and the other gets `false`.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct UseWebauthn {
    pub id: Uuid,
    /// The stored `passkey` the assertion was checked against.
    pub expected: String,
    pub passkey: Option<String>,
    pub at: DateTime<Utc>,
}

impl Handler<UseWebauthn> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: UseWebauthn, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let mut update = webauthn_credential::Entity::update_many()
                .col_expr(webauthn_credential::Column::LastUsedAt, Expr::value(msg.at))
                .filter(webauthn_credential::Column::Id.eq(msg.id));
            let counted = msg.passkey.is_some();
            if let Some(passkey) = msg.passkey {
                update = update
                    .col_expr(webauthn_credential::Column::Passkey, Expr::value(passkey))
                    .filter(webauthn_credential::Column::Passkey.eq(msg.expected));
            }
            let done = db.call("use_webauthn", update.exec(&db.conn)).await?;
            // Without a new counter there is nothing to race for (a deleted credential aside).
            Ok(!counted || done.rows_affected == 1)
        })
    }
}

/// Removes one of the account's credentials; `false` when it holds none with this id.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct RemoveWebauthn {
    pub user_id: Uuid,
    pub id: Uuid,
    /// The owner's notice, stored with the removal (not when nothing was removed).
    pub notice: Mail,
}

impl Handler<RemoveWebauthn> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: RemoveWebauthn, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                let txn = db.conn.begin().await?;
                let removed = webauthn_credential::Entity::delete_many()
                    .filter(webauthn_credential::Column::Id.eq(msg.id))
                    .filter(webauthn_credential::Column::UserId.eq(msg.user_id))
                    .exec(&txn)
                    .await?;
                if removed.rows_affected != 1 {
                    return Ok(false);
                }
                crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(true)
            };
            db.call_tx("remove_webauthn", work).await
        })
    }
}
