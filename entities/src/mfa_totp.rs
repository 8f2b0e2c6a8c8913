//! An account's TOTP authenticator: pending until a first code confirms it.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mfa_totp")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The shared secret, sealed (`enc:v1:`, AES-256-GCM under JWT_KEY_ENCRYPTION_KEY) or, without
    /// that key, `plain:` base32 (see `sessiond::app::mfa`).
    pub secret: String,
    /// Set once a code confirmed the enrolment; until then the factor is not required at login.
    pub confirmed_at: Option<DateTimeUtc>,
    /// The last time step a code was accepted for: no code of it or an earlier step is accepted.
    pub last_step: Option<i64>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
