//! Service clients (the callers of POST /introspect), and `clients:write` for the built-in
//! `admin` role.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServiceClients::Table)
                    .if_not_exists()
                    .col(uuid(ServiceClients::ClientId).primary_key())
                    .col(string_len(ServiceClients::Name, 400))
                    .col(string_len(ServiceClients::SecretHash, 64))
                    .col(timestamp_with_time_zone(ServiceClients::CreatedAt))
                    .col(uuid_null(ServiceClients::CreatedBy))
                    .to_owned(),
            )
            .await?;
        // A fresh database has it already (the roles migration seeds every permission of the
        // current definition), and the start-up sync of the `admin` role would add it too; this
        // makes a database migrated by `sessiond migrate` complete on its own.
        let grant = Query::insert()
            .into_table(RolePermissions::Table)
            .columns([RolePermissions::RoleName, RolePermissions::Permission])
            .values_panic(["admin".into(), "clients:write".into()])
            .on_conflict(
                OnConflict::columns([RolePermissions::RoleName, RolePermissions::Permission])
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        manager.exec_stmt(grant).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServiceClients::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ServiceClients {
    Table,
    ClientId,
    Name,
    SecretHash,
    CreatedAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum RolePermissions {
    Table,
    RoleName,
    Permission,
}
