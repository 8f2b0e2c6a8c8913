//! A single-use token mailed in a link (password reset, address verification, email change).
//! Only its SHA-256 is stored.
use sea_orm::entity::prelude::*;

pub const RESET: &str = "reset";
pub const VERIFY: &str = "verify";
pub const CHANGE: &str = "change";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "email_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Hex SHA-256 of the token.
    #[sea_orm(unique)]
    pub token_hash: String,
    /// `None`: a decoy written for an unknown address; it never redeems.
    pub user_id: Option<Uuid>,
    pub purpose: String,
    /// The address the link went to: the one to verify, or the new one of an email change.
    pub email: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
