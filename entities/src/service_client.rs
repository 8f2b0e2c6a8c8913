//! A service client: another service that calls POST /introspect with HTTP Basic. Only a hash of
//! its secret is stored; the secret itself is shown once, when the client is created.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "service_clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: Uuid,
    pub name: String,
    /// Hex SHA-256 of the secret (domain-separated; see `sessiond::app::clients`).
    pub secret_hash: String,
    pub created_at: DateTimeUtc,
    /// The admin who created it (a plain id: the client outlives the account).
    pub created_by: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
