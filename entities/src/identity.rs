//! An account's identity at an identity provider: (provider, subject) is unique, and an account
//! holds at most one identity per provider.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "identities")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// The provider's configured name (OIDC_PROVIDERS, or `github`).
    pub provider: String,
    /// The provider's stable id of the person (`sub`; GitHub's numeric user id).
    pub subject: String,
    /// The email the provider asserted when the identity was linked.
    pub email: Option<String>,
    pub linked_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
