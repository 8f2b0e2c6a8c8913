//! Schema migrations of sessiond. Used as a library by `sessiond migrate` (and at start-up in the
//! embedded default), and as a stand-alone CLI with `--features cli`.
pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_users;
mod m20261127_000002_roles_and_audit;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_users::Migration),
            Box::new(m20261127_000002_roles_and_audit::Migration),
        ]
    }
}
