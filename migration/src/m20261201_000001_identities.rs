//! Identities at identity providers linked to accounts (sign-in with OpenID Connect or GitHub).
//! One account may hold one identity per provider; a provider's subject belongs to one account.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Identities::Table)
                    .if_not_exists()
                    .col(uuid(Identities::Id).primary_key())
                    .col(uuid(Identities::UserId))
                    .col(string_len(Identities::Provider, 32))
                    .col(string_len(Identities::Subject, 255))
                    .col(string_len_null(Identities::Email, 320))
                    .col(timestamp_with_time_zone(Identities::LinkedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Identities::Table, Identities::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("identities_provider_subject")
                    .table(Identities::Table)
                    .col(Identities::Provider)
                    .col(Identities::Subject)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("identities_user_provider")
                    .table(Identities::Table)
                    .col(Identities::UserId)
                    .col(Identities::Provider)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Identities::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Identities {
    Table,
    Id,
    UserId,
    Provider,
    Subject,
    Email,
    LinkedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
