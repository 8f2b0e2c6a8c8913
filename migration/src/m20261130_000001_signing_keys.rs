//! The asymmetric keys sessiond signs access tokens with (JWT_ALGORITHM EdDSA, ES256, RS256):
//! public half in the clear (it is published), private half encrypted with
//! JWT_KEY_ENCRYPTION_KEY. `generation` is unique: two pods that rotate at once both try to
//! insert the next generation and exactly one succeeds, on PostgreSQL and SQLite alike.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .if_not_exists()
                    .col(string_len(SigningKeys::Kid, 64).primary_key())
                    .col(big_integer_uniq(SigningKeys::Generation))
                    .col(string_len(SigningKeys::Algorithm, 16))
                    .col(text(SigningKeys::PublicJwk))
                    .col(text(SigningKeys::PrivateKey))
                    .col(big_integer(SigningKeys::CreatedAt))
                    .col(big_integer(SigningKeys::ActivatesAt))
                    .col(big_integer_null(SigningKeys::RetiredAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SigningKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    Generation,
    Algorithm,
    PublicJwk,
    PrivateKey,
    CreatedAt,
    ActivatesAt,
    RetiredAt,
}
