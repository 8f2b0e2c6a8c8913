//! A recovery code: shown once at TOTP confirmation, stored as a hash, accepted once.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mfa_recovery_codes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// `v2:` and the base64url HMAC-SHA256 of the account id and the code under a key derived from the
    /// server's secret; codes stored before that: hex SHA-256 of the code, no prefix (see
    /// `sessiond::app::mfa::RecoveryKeys`).
    pub code_hash: String,
    pub used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
