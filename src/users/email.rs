//! The storage of the email flows: single-use tokens (stored as their SHA-256), their
//! redemption, the clients each account signed in from, and the mails each change causes,
//! written to the outbox in the change's own transaction.
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use entities::{
    email_token, identity, login_seen, mfa_recovery_code, mfa_totp, user, webauthn_credential,
};
use sea_orm::{
    sea_query::{Expr, OnConflict},
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{UserStore, UserStoreError};
use crate::{
    actor::Reply,
    mail::{enqueue, Mail},
    webhooks::{Event, Webhooks},
};

/// A token to store: its hash, what it is for, the address its link goes to, how long it lasts.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub hash: String,
    pub purpose: &'static str,
    pub email: String,
    pub ttl: Duration,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Stores a token; for an account, its unused tokens of the same purpose are voided first (a
/// newer link supersedes the older ones).
pub(crate) async fn insert_token(
    conn: &impl ConnectionTrait,
    user_id: Option<Uuid>,
    token: NewToken,
) -> Result<(), UserStoreError> {
    let now = now_ms();
    let mut stale = email_token::Entity::delete_many()
        .filter(email_token::Column::Purpose.eq(token.purpose))
        .filter(email_token::Column::UsedAtMs.is_null());
    stale = match user_id {
        Some(id) => stale.filter(email_token::Column::UserId.eq(id)),
        // The decoy's statement: the same shape, and like a real token a decoy supersedes the
        // earlier ones of its address, so asking twice costs the same whether or not an account
        // holds it (expired decoys of any address go too).
        None => stale.filter(email_token::Column::UserId.is_null()).filter(
            Condition::any()
                .add(email_token::Column::Email.eq(token.email.clone()))
                .add(email_token::Column::ExpiresAtMs.lt(now)),
        ),
    };
    stale.exec(conn).await?;
    email_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        token_hash: Set(token.hash),
        user_id: Set(user_id),
        purpose: Set(token.purpose.to_string()),
        email: Set(token.email),
        created_at_ms: Set(now),
        expires_at_ms: Set(now + token.ttl.as_millis() as i64),
        used_at_ms: Set(None),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// Voids the account's unused tokens of these purposes.
pub(crate) async fn void_tokens(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
    purposes: &[&str],
) -> Result<(), UserStoreError> {
    email_token::Entity::delete_many()
        .filter(email_token::Column::UserId.eq(user_id))
        .filter(email_token::Column::Purpose.is_in(purposes.iter().copied()))
        .filter(email_token::Column::UsedAtMs.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// POST /password/forgot: the same transaction whether or not the address has an account. With
/// one, the token and the mail; without, a decoy token that matches no account and the mail
/// stored as discarded, so both cases write the same rows.
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct RequestReset {
    pub user_id: Option<Uuid>,
    pub token: NewToken,
    pub mail: Mail,
}

impl Handler<RequestReset> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: RequestReset, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("request_reset", async {
                let txn = db.conn.begin().await?;
                insert_token(&txn, msg.user_id, msg.token).await?;
                enqueue(&txn, vec![msg.mail], msg.user_id.is_none()).await?;
                txn.commit().await?;
                Ok(())
            })
            .await
        })
    }
}

/// A token for an account and its mail (verification resend, email change). With `unless_within`,
/// nothing is issued when a token of the purpose was issued that recently (returns false).
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct IssueToken {
    pub user_id: Uuid,
    pub token: NewToken,
    pub mail: Vec<Mail>,
    pub unless_within: Option<Duration>,
}

impl Handler<IssueToken> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: IssueToken, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("issue_token", async {
                let txn = db.conn.begin().await?;
                if let Some(within) = msg.unless_within {
                    let recent = email_token::Entity::find()
                        .filter(email_token::Column::UserId.eq(msg.user_id))
                        .filter(email_token::Column::Purpose.eq(msg.token.purpose))
                        .filter(
                            email_token::Column::CreatedAtMs
                                .gt(now_ms() - within.as_millis() as i64),
                        )
                        .count(&txn)
                        .await?;
                    if recent > 0 {
                        return Ok(false);
                    }
                }
                insert_token(&txn, Some(msg.user_id), msg.token).await?;
                enqueue(&txn, msg.mail, false).await?;
                txn.commit().await?;
                Ok(true)
            })
            .await
        })
    }
}

/// A usable token (unused, unexpired, of one of `purposes`, of an existing account) and its
/// account, by the token's hash.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<(email_token::Model, user::Model)>, UserStoreError>>")]
pub struct FindToken {
    pub hash: String,
    pub purposes: &'static [&'static str],
}

impl Handler<FindToken> for UserStore {
    type Result = Reply<Result<Option<(email_token::Model, user::Model)>, UserStoreError>>;

    fn handle(&mut self, msg: FindToken, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("find_token", async {
                let Some(token) = email_token::Entity::find()
                    .filter(email_token::Column::TokenHash.eq(msg.hash))
                    .filter(email_token::Column::Purpose.is_in(msg.purposes.iter().copied()))
                    .filter(email_token::Column::UsedAtMs.is_null())
                    .filter(email_token::Column::ExpiresAtMs.gt(now_ms()))
                    .one(&db.conn)
                    .await?
                else {
                    return Ok(None);
                };
                let Some(user_id) = token.user_id else {
                    return Ok(None);
                };
                let account = user::Entity::find_by_id(user_id).one(&db.conn).await?;
                Ok(account.map(|a| (token, a)))
            })
            .await
        })
    }
}

/// What using a token does to its account.
#[derive(Debug, Clone)]
pub enum Redemption {
    /// A password reset: the new hash; the address is verified too (the link reached it).
    Password { password_hash: String },
    /// Verification of `email`, if it is still the account's.
    Verify { email: String },
    /// The account's address changes from `old` to `new` (verified: the link reached it).
    ChangeEmail { old: String, new: String },
}

/// The sign-in methods the first proof of an account's address removed: whoever registered the
/// address before its owner proved it may have added them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// The providers of the identities unlinked.
    pub identities: Vec<String>,
    /// The names of the passkeys deleted.
    pub passkeys: Vec<String>,
    /// A TOTP authenticator (confirmed or pending) and its recovery codes.
    pub totp: bool,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.passkeys.is_empty() && !self.totp
    }
}

/// The notices of a first proof, rendered once what it removed is known (in its transaction).
pub type FirstProofMail = Box<dyn FnOnce(&Removed) -> Vec<Mail> + Send>;

/// Removes every identity, passkey and TOTP authenticator (with its recovery codes) of the
/// account, saying which.
async fn remove_sign_in_methods(
    conn: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<Removed, UserStoreError> {
    let identities = identity::Entity::find()
        .filter(identity::Column::UserId.eq(user_id))
        .all(conn)
        .await?;
    let passkeys = webauthn_credential::Entity::find()
        .filter(webauthn_credential::Column::UserId.eq(user_id))
        .all(conn)
        .await?;
    identity::Entity::delete_many()
        .filter(identity::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    webauthn_credential::Entity::delete_many()
        .filter(webauthn_credential::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    mfa_recovery_code::Entity::delete_many()
        .filter(mfa_recovery_code::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    let totp = mfa_totp::Entity::delete_many()
        .filter(mfa_totp::Column::UserId.eq(user_id))
        .exec(conn)
        .await?;
    Ok(Removed {
        identities: identities.into_iter().map(|i| i.provider).collect(),
        passkeys: passkeys.into_iter().map(|p| p.name).collect(),
        totp: totp.rows_affected > 0,
    })
}

/// Uses a token found by [`FindToken`]: marks it used (only if still unused and unexpired, so
/// two concurrent uses cannot both succeed), applies the change, and stores its notices, in
/// one transaction.
///
/// A reset or verification link that proves the account's address for the first time also
/// removes the sign-in methods added before ([`Removed`], returned then), and stores the
/// `first_proof` notices; the caller has revoked the sessions.
#[derive(Message)]
#[rtype(result = "Reply<Result<Option<Removed>, UserStoreError>>")]
pub struct Redeem {
    pub token_id: Uuid,
    pub user_id: Uuid,
    pub change: Redemption,
    pub mail: Vec<Mail>,
    pub first_proof: Option<FirstProofMail>,
    /// A new password is reported as `user.password_changed` (no session kept), written in the
    /// change's transaction.
    pub webhooks: Webhooks,
}

impl Handler<Redeem> for UserStore {
    type Result = Reply<Result<Option<Removed>, UserStoreError>>;

    fn handle(&mut self, msg: Redeem, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("redeem_token", async {
                let txn = db.conn.begin().await?;
                let now = now_ms();
                let used = email_token::Entity::update_many()
                    .col_expr(email_token::Column::UsedAtMs, Expr::value(now))
                    .filter(email_token::Column::Id.eq(msg.token_id))
                    .filter(email_token::Column::UsedAtMs.is_null())
                    .filter(email_token::Column::ExpiresAtMs.gt(now))
                    .exec(&txn)
                    .await?;
                if used.rows_affected == 0 {
                    return Err(UserStoreError::InvalidToken);
                }
                // The first proof of the address: decided by the row itself, so of two links
                // used at once only one removes (and tells).
                let first = match &msg.change {
                    // The old address was proven, or never was: the new one proves nothing of it.
                    Redemption::ChangeEmail { .. } => false,
                    change => {
                        let mut flip = user::Entity::update_many()
                            .col_expr(user::Column::EmailVerified, Expr::value(true))
                            .filter(user::Column::Id.eq(msg.user_id))
                            .filter(user::Column::EmailVerified.eq(false));
                        if let Redemption::Verify { email } = change {
                            flip = flip.filter(user::Column::Email.eq(email.clone()));
                        }
                        flip.exec(&txn).await?.rows_affected == 1
                    }
                };
                let removed = if first {
                    Some(remove_sign_in_methods(&txn, msg.user_id).await?)
                } else {
                    None
                };
                let account = user::Entity::update_many()
                    .col_expr(user::Column::UpdatedAt, Expr::value(Utc::now()))
                    .col_expr(user::Column::EmailVerified, Expr::value(true))
                    .filter(user::Column::Id.eq(msg.user_id));
                let changed = match msg.change {
                    Redemption::Password { password_hash } => {
                        void_tokens(&txn, msg.user_id, &[email_token::RESET]).await?;
                        let event = Event::password_changed(msg.user_id, None);
                        msg.webhooks.write(&txn, &[event]).await?;
                        account
                            .col_expr(user::Column::PasswordHash, Expr::value(password_hash))
                            .exec(&txn)
                            .await?
                    }
                    Redemption::Verify { email } => {
                        account
                            .filter(user::Column::Email.eq(email))
                            .exec(&txn)
                            .await?
                    }
                    Redemption::ChangeEmail { old, new } => {
                        let all = [email_token::RESET, email_token::VERIFY, email_token::CHANGE];
                        void_tokens(&txn, msg.user_id, &all).await?;
                        account
                            .col_expr(user::Column::Email, Expr::value(new))
                            .filter(user::Column::Email.eq(old))
                            .exec(&txn)
                            .await?
                    }
                };
                if changed.rows_affected == 0 {
                    // The account is gone, or its address changed since the link was mailed.
                    return Err(UserStoreError::InvalidToken);
                }
                let mut mail = msg.mail;
                if let (Some(removed), Some(render)) = (&removed, msg.first_proof) {
                    mail.extend(render(removed));
                }
                enqueue(&txn, mail, false).await?;
                txn.commit().await?;
                Ok(removed)
            })
            .await
        })
    }
}

/// A successful login from a client (`fingerprint`: hash of address and user agent): stores
/// when it was seen, and its notice mail if the account has signed in before but not from this
/// client within `window`. Returns whether the mail was stored.
#[derive(Message)]
#[rtype(result = "Reply<Result<bool, UserStoreError>>")]
pub struct SeenLogin {
    pub user_id: Uuid,
    pub fingerprint: String,
    pub window: Duration,
    pub mail: Mail,
}

impl Handler<SeenLogin> for UserStore {
    type Result = Reply<Result<bool, UserStoreError>>;

    fn handle(&mut self, msg: SeenLogin, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("seen_login", async {
                let txn = db.conn.begin().await?;
                let now = now_ms();
                let since = now - msg.window.as_millis() as i64;
                // Clients not seen within the window are news again: their rows can go.
                login_seen::Entity::delete_many()
                    .filter(login_seen::Column::UserId.eq(msg.user_id))
                    .filter(login_seen::Column::LastSeenMs.lte(since))
                    .exec(&txn)
                    .await?;
                let known = login_seen::Entity::find()
                    .filter(login_seen::Column::UserId.eq(msg.user_id))
                    .filter(login_seen::Column::LastSeenMs.gt(now - msg.window.as_millis() as i64))
                    .all(&txn)
                    .await?;
                // The account's first sign-in (or first within the window) is no news to it.
                let mail =
                    !known.is_empty() && !known.iter().any(|k| k.fingerprint == msg.fingerprint);
                login_seen::Entity::insert(login_seen::ActiveModel {
                    user_id: Set(msg.user_id),
                    fingerprint: Set(msg.fingerprint),
                    last_seen_ms: Set(now),
                })
                .on_conflict(
                    OnConflict::columns([
                        login_seen::Column::UserId,
                        login_seen::Column::Fingerprint,
                    ])
                    .update_column(login_seen::Column::LastSeenMs)
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
                if mail {
                    enqueue(&txn, vec![msg.mail], false).await?;
                }
                txn.commit().await?;
                Ok(mail)
            })
            .await
        })
    }
}

/// Mails that go with no change of their own (the notice to the owner of a taken address).
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct QueueMail(pub Vec<Mail>);

impl Handler<QueueMail> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: QueueMail, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move { db.call("queue_mail", enqueue(&db.conn, msg.0, false)).await })
    }
}
