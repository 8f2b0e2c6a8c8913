//! Second factors in the database: the TOTP authenticator of an account and its recovery codes.
//! Single use is settled by the database (a conditional UPDATE), so concurrent requests on any
//! pod cannot both spend one code.
use actix::prelude::*;
use chrono::Utc;
use entities::{mfa_recovery_code, mfa_totp, user, webauthn_credential};
use sea_orm::{
    sea_query::Expr, ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::{actor::Reply, mail::Mail, webhooks::Event, webhooks::Webhooks};

/// The account's authenticator, pending or confirmed.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<mfa_totp::Model>, UserStoreError>>")]
pub struct FindTotp(pub Uuid);

impl Handler<FindTotp> for UserStore {
    type Result = Reply<Result<Option<mfa_totp::Model>, UserStoreError>>;

    fn handle(&mut self, msg: FindTotp, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call(
                "find_totp",
                mfa_totp::Entity::find_by_id(msg.0).one(&db.conn),
            )
            .await
        })
    }
}

/// A new pending authenticator, replacing a pending one; `false` (nothing stored) when a
/// confirmed one exists: it must be removed first.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct StartTotp {
    pub user_id: Uuid,
    /// Sealed (see `app::mfa`).
    pub secret: String,
}

impl Handler<StartTotp> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: StartTotp, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                let txn = db.conn.begin().await?;
                let existing = mfa_totp::Entity::find_by_id(msg.user_id).one(&txn).await?;
                if existing.as_ref().is_some_and(|t| t.confirmed_at.is_some()) {
                    return Ok(false);
                }
                if existing.is_some() {
                    mfa_totp::Entity::delete_by_id(msg.user_id)
                        .exec(&txn)
                        .await?;
                }
                mfa_totp::ActiveModel {
                    user_id: Set(msg.user_id),
                    secret: Set(msg.secret),
                    confirmed_at: Set(None),
                    last_step: Set(None),
                    created_at: Set(Utc::now()),
                }
                .insert(&txn)
                .await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(true)
            };
            db.call_tx("start_totp", work).await
        })
    }
}

/// Spends a time step: `true` only if no code of this step or a later one was accepted before
/// (so a code is never accepted twice, nor an older one after a newer).
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct SpendTotpStep {
    pub user_id: Uuid,
    pub step: i64,
}

impl Handler<SpendTotpStep> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: SpendTotpStep, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let update = mfa_totp::Entity::update_many()
                .col_expr(mfa_totp::Column::LastStep, Expr::value(msg.step))
                .filter(mfa_totp::Column::UserId.eq(msg.user_id))
                .filter(
                    Condition::any()
                        .add(mfa_totp::Column::LastStep.is_null())
                        .add(mfa_totp::Column::LastStep.lt(msg.step)),
                )
                .exec(&db.conn);
            Ok(db.call("spend_totp_step", update).await?.rows_affected == 1)
        })
    }
}

/// Confirms the pending authenticator with the step its first code used, and replaces the
/// recovery codes; `false` when there is no pending authenticator (confirmed meanwhile, or
/// removed), or that step was spent.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct ConfirmTotp {
    pub user_id: Uuid,
    /// Only an enrolment started after this is confirmed (older ones have expired).
    pub started_after: chrono::DateTime<Utc>,
    pub step: i64,
    /// Hashes of the new recovery codes.
    pub recovery_hashes: Vec<String>,
    /// The owner's notice, stored with the confirmation.
    pub notice: Mail,
}

impl Handler<ConfirmTotp> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: ConfirmTotp, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                let txn = db.conn.begin().await?;
                let confirmed = mfa_totp::Entity::update_many()
                    .col_expr(mfa_totp::Column::LastStep, Expr::value(msg.step))
                    .col_expr(mfa_totp::Column::ConfirmedAt, Expr::value(Utc::now()))
                    .filter(mfa_totp::Column::UserId.eq(msg.user_id))
                    .filter(mfa_totp::Column::ConfirmedAt.is_null())
                    .filter(mfa_totp::Column::CreatedAt.gt(msg.started_after))
                    .exec(&txn)
                    .await?;
                if confirmed.rows_affected != 1 {
                    return Ok(false);
                }
                mfa_recovery_code::Entity::delete_many()
                    .filter(mfa_recovery_code::Column::UserId.eq(msg.user_id))
                    .exec(&txn)
                    .await?;
                let rows = msg.recovery_hashes.into_iter().map(|code_hash| {
                    mfa_recovery_code::ActiveModel {
                        id: Set(Uuid::new_v4()),
                        user_id: Set(msg.user_id),
                        code_hash: Set(code_hash),
                        used_at: Set(None),
                    }
                });
                mfa_recovery_code::Entity::insert_many(rows)
                    .exec(&txn)
                    .await?;
                crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                txn.commit().await?;
                Ok::<_, UserStoreError>(true)
            };
            db.call_tx("confirm_totp", work).await
        })
    }
}

/// Removes the account's pending authenticator if it was started before `started_before` (an
/// expired enrolment); a confirmed one, or a newer pending one, stays.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct DropExpiredTotp {
    pub user_id: Uuid,
    pub started_before: chrono::DateTime<Utc>,
}

impl Handler<DropExpiredTotp> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: DropExpiredTotp, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let delete = mfa_totp::Entity::delete_many()
                .filter(mfa_totp::Column::UserId.eq(msg.user_id))
                .filter(mfa_totp::Column::ConfirmedAt.is_null())
                .filter(mfa_totp::Column::CreatedAt.lte(msg.started_before))
                .exec(&db.conn);
            db.call("drop_expired_totp", delete).await?;
            Ok(())
        })
    }
}

/// Spends a recovery code by its hash: `true` only for an unused code of this account. One code
/// has several possible stored forms (the current key, the previous one, older schemes): at most
/// one row is spent.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct SpendRecoveryCode {
    pub user_id: Uuid,
    pub code_hashes: Vec<String>,
}

impl Handler<SpendRecoveryCode> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: SpendRecoveryCode, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            // Tried one form at a time, so one code never spends two rows.
            for code_hash in msg.code_hashes {
                let update = mfa_recovery_code::Entity::update_many()
                    .col_expr(mfa_recovery_code::Column::UsedAt, Expr::value(Utc::now()))
                    .filter(mfa_recovery_code::Column::UserId.eq(msg.user_id))
                    .filter(mfa_recovery_code::Column::CodeHash.eq(code_hash))
                    .filter(mfa_recovery_code::Column::UsedAt.is_null())
                    .exec(&db.conn);
                if db.call("spend_recovery_code", update).await?.rows_affected == 1 {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

/// Removes the authenticator (pending or confirmed) and the recovery codes; `true` if there
/// was one. The owner's notice is stored with the removal of a confirmed one (a pending one
/// never guarded a sign-in).
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct RemoveTotp {
    pub user_id: Uuid,
    pub notice: Mail,
}

impl Handler<RemoveTotp> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: RemoveTotp, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                let txn = db.conn.begin().await?;
                let Some(totp) = mfa_totp::Entity::find_by_id(msg.user_id).one(&txn).await? else {
                    return Ok(false);
                };
                mfa_recovery_code::Entity::delete_many()
                    .filter(mfa_recovery_code::Column::UserId.eq(msg.user_id))
                    .exec(&txn)
                    .await?;
                let removed = mfa_totp::Entity::delete_by_id(msg.user_id)
                    .exec(&txn)
                    .await?;
                if removed.rows_affected == 1 && totp.confirmed_at.is_some() {
                    crate::mail::enqueue(&txn, vec![msg.notice], false).await?;
                }
                txn.commit().await?;
                Ok::<_, UserStoreError>(removed.rows_affected == 1)
            };
            db.call_tx("remove_totp", work).await
        })
    }
}

/// An admin's reset: removes every second factor of the account (the TOTP authenticator,
/// pending or confirmed, and the recovery codes) in one transaction, which also stores the
/// owner's notice and the `user.mfa_reset` event when a factor was removed. Returns the methods
/// removed (empty: the account had none, and nothing is stored); `NotFound` for no account.
/// Every new kind of factor is removed here too, so one reset always leaves none.
#[derive(Message)]
#[rtype(result = "Reply<Result<Vec<&'static str>, UserStoreError>>")]
pub struct ResetFactors {
    pub user_id: Uuid,
    pub mail: Mail,
    pub webhooks: Webhooks,
}

impl Handler<ResetFactors> for UserStore {
    type Result = Reply<Result<Vec<&'static str>, UserStoreError>>;

    fn handle(&mut self, msg: ResetFactors, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            let work = async {
                let txn = db.conn.begin().await?;
                if user::Entity::find_by_id(msg.user_id)
                    .one(&txn)
                    .await?
                    .is_none()
                {
                    return Err(UserStoreError::NotFound);
                }
                let mut removed = Vec::new();
                let totp = mfa_totp::Entity::find_by_id(msg.user_id).one(&txn).await?;
                mfa_recovery_code::Entity::delete_many()
                    .filter(mfa_recovery_code::Column::UserId.eq(msg.user_id))
                    .exec(&txn)
                    .await?;
                if let Some(totp) = totp {
                    mfa_totp::Entity::delete_by_id(msg.user_id)
                        .exec(&txn)
                        .await?;
                    // A pending enrolment never guarded a login: removed, not reported.
                    if totp.confirmed_at.is_some() {
                        removed.push("totp");
                    }
                }
                let passkeys = webauthn_credential::Entity::delete_many()
                    .filter(webauthn_credential::Column::UserId.eq(msg.user_id))
                    .exec(&txn)
                    .await?;
                if passkeys.rows_affected > 0 {
                    removed.push("webauthn");
                }
                if !removed.is_empty() {
                    let event = Event::mfa_reset(msg.user_id, &removed);
                    msg.webhooks.write(&txn, &[event]).await?;
                    crate::mail::enqueue(&txn, vec![msg.mail], false).await?;
                }
                txn.commit().await?;
                Ok::<_, UserStoreError>(removed)
            };
            db.call_tx("reset_factors", work).await
        })
    }
}
