//! One token-signing key (see migration m20261130_000001_signing_keys). Times are unix seconds.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    /// Unique: the rotation lock (the next generation can be inserted once).
    pub generation: i64,
    /// JWS `alg`: EdDSA, ES256 or RS256.
    pub algorithm: String,
    /// The public key as a JWK (JSON), as published at /.well-known/jwks.json.
    pub public_jwk: String,
    /// base64(nonce || AES-256-GCM(DER private key)), the kid as associated data.
    pub private_key: String,
    pub created_at: i64,
    /// Signs from this moment on (published before it).
    pub activates_at: i64,
    /// Set by `sessiond keys retire`: signs no more from then on.
    pub retired_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
