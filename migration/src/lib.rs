//! Schema migrations of sessiond. Used as a library by `sessiond migrate` (and at start-up in the
//! embedded default), and as a stand-alone CLI with `--features cli`.
pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_users;
mod m20261127_000002_roles_and_audit;
mod m20261130_000001_signing_keys;
mod m20261130_000002_service_clients;
mod m20261130_000003_webhook_outbox;
mod m20261201_000001_identities;
mod m20261202_000001_mail;
mod m20261203_000001_mfa_totp;
mod m20261205_000001_webauthn;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_users::Migration),
            Box::new(m20261127_000002_roles_and_audit::Migration),
            Box::new(m20261130_000001_signing_keys::Migration),
            Box::new(m20261130_000002_service_clients::Migration),
            Box::new(m20261130_000003_webhook_outbox::Migration),
            Box::new(m20261201_000001_identities::Migration),
            Box::new(m20261202_000001_mail::Migration),
            Box::new(m20261203_000001_mfa_totp::Migration),
            Box::new(m20261205_000001_webauthn::Migration),
        ]
    }
}

/// Where a database's schema stands against the migrations this binary carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations of this binary the database has not applied, in order: the schema is behind.
    pub pending: Vec<String>,
    /// Migrations the database has applied that this binary does not know: a newer release
    /// migrated it (normal for the old pods during a rollout).
    pub unknown: Vec<String>,
}

/// Reads the migration table without creating it: checking readiness must not write, and the
/// serving role may lack DDL rights. No table means nothing is applied.
pub async fn schema_status(db: &sea_orm::DatabaseConnection) -> Result<SchemaStatus, DbErr> {
    use sea_orm::{EntityName, EntityTrait};
    use sea_orm_migration::seaql_migrations;

    let table = seaql_migrations::Entity.table_name();
    let applied: Vec<String> = if SchemaManager::new(db).has_table(table).await? {
        seaql_migrations::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect()
    } else {
        Vec::new()
    };
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let pending = known
        .iter()
        .filter(|k| !applied.contains(k))
        .cloned()
        .collect();
    let mut unknown: Vec<String> = applied.into_iter().filter(|a| !known.contains(a)).collect();
    unknown.sort();
    Ok(SchemaStatus { pending, unknown })
}
