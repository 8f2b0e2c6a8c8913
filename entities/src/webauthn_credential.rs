//! A passkey or security key of an account (WebAuthn). The credential id is unique: one
//! authenticator's key belongs to one account.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webauthn_credentials")]
pub struct Model {
    /// sessiond's id of the credential (in /mfa/webauthn/credentials/{id}).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// The authenticator's credential id, base64url without padding.
    pub credential_id: String,
    /// Chosen by the user, to tell their keys apart.
    pub name: String,
    /// webauthn-rs's `Passkey` as JSON: the public key, its algorithm and the signature counter
    /// (updated after each use). No secret: a public key.
    #[sea_orm(column_type = "Text")]
    pub passkey: String,
    pub created_at: DateTimeUtc,
    pub last_used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
