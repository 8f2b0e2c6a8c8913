//! Roles, their permissions, the roles of each account, disabled accounts, and the audit trail.
//! Seeds the built-in roles and gives every existing account the `user` role.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

// Permissions of the built-in `admin` role: every one sessiond defines. Read from the one
// definition (not frozen here) so a fresh database starts complete; existing databases gain
// later additions from the server's start-up sync of the `admin` role.
use entities::permissions::BUILTIN_PERMISSIONS as ADMIN_PERMISSIONS;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(timestamp_with_time_zone_null(Users::DisabledAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Roles::Table)
                    .if_not_exists()
                    .col(string_len(Roles::Name, 64).primary_key())
                    .col(boolean(Roles::Builtin).default(false))
                    .col(timestamp_with_time_zone(Roles::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RolePermissions::Table)
                    .if_not_exists()
                    .col(string_len(RolePermissions::RoleName, 64))
                    .col(string_len(RolePermissions::Permission, 64))
                    .primary_key(
                        Index::create()
                            .col(RolePermissions::RoleName)
                            .col(RolePermissions::Permission),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(RolePermissions::Table, RolePermissions::RoleName)
                            .to(Roles::Table, Roles::Name)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UserRoles::Table)
                    .if_not_exists()
                    .col(uuid(UserRoles::UserId))
                    .col(string_len(UserRoles::RoleName, 64))
                    .primary_key(
                        Index::create()
                            .col(UserRoles::UserId)
                            .col(UserRoles::RoleName),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UserRoles::Table, UserRoles::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UserRoles::Table, UserRoles::RoleName)
                            .to(Roles::Table, Roles::Name)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        // "Who holds role X" (the last-admin check) reads this index.
        manager
            .create_index(
                Index::create()
                    .name("idx_user_roles_role")
                    .table(UserRoles::Table)
                    .col(UserRoles::RoleName)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(uuid(AuditEvents::Id).primary_key())
                    .col(timestamp_with_time_zone(AuditEvents::OccurredAt))
                    .col(string_len(AuditEvents::EventType, 32))
                    .col(uuid_null(AuditEvents::ActorId))
                    .col(uuid_null(AuditEvents::SubjectId))
                    .col(string_len_null(AuditEvents::Ip, 64))
                    .col(string_len(AuditEvents::Outcome, 16))
                    .col(text(AuditEvents::Detail))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_audit_occurred_at", AuditEvents::OccurredAt),
            ("idx_audit_actor", AuditEvents::ActorId),
            ("idx_audit_subject", AuditEvents::SubjectId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }

        let now = chrono::Utc::now();
        let mut roles = Query::insert();
        roles
            .into_table(Roles::Table)
            .columns([Roles::Name, Roles::Builtin, Roles::CreatedAt]);
        for name in ["admin", "user"] {
            roles.values_panic([name.into(), true.into(), now.into()]);
        }
        manager.exec_stmt(roles).await?;
        let mut perms = Query::insert();
        perms
            .into_table(RolePermissions::Table)
            .columns([RolePermissions::RoleName, RolePermissions::Permission]);
        for p in ADMIN_PERMISSIONS {
            perms.values_panic(["admin".into(), (*p).into()]);
        }
        manager.exec_stmt(perms).await?;
        let backfill = Query::insert()
            .into_table(UserRoles::Table)
            .columns([UserRoles::UserId, UserRoles::RoleName])
            .select_from(
                Query::select()
                    .column(Users::Id)
                    .expr(Expr::val("user"))
                    .from(Users::Table)
                    .to_owned(),
            )
            .map_err(|e| DbErr::Migration(e.to_string()))?
            .to_owned();
        manager.exec_stmt(backfill).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            UserRoles::Table.into_iden(),
            RolePermissions::Table.into_iden(),
            Roles::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::DisabledAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    DisabledAt,
}

#[derive(DeriveIden)]
enum Roles {
    Table,
    Name,
    Builtin,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RolePermissions {
    Table,
    RoleName,
    Permission,
}

#[derive(DeriveIden)]
enum UserRoles {
    Table,
    UserId,
    RoleName,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OccurredAt,
    EventType,
    ActorId,
    SubjectId,
    Ip,
    Outcome,
    Detail,
}
