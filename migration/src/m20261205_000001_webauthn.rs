//! Passkeys and security keys (WebAuthn): the credentials of each account.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebauthnCredentials::Table)
                    .if_not_exists()
                    .col(uuid(WebauthnCredentials::Id).primary_key())
                    .col(uuid(WebauthnCredentials::UserId))
                    // A credential id is at most 1023 bytes: 1364 base64url characters.
                    .col(string_len_uniq(WebauthnCredentials::CredentialId, 1400))
                    .col(string_len(WebauthnCredentials::Name, 64))
                    .col(text(WebauthnCredentials::Passkey))
                    .col(timestamp_with_time_zone(WebauthnCredentials::CreatedAt))
                    .col(timestamp_with_time_zone_null(
                        WebauthnCredentials::LastUsedAt,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebauthnCredentials::Table, WebauthnCredentials::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webauthn_credentials_user")
                    .table(WebauthnCredentials::Table)
                    .col(WebauthnCredentials::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebauthnCredentials::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WebauthnCredentials {
    Table,
    Id,
    UserId,
    CredentialId,
    Name,
    Passkey,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
