//! The webhook outbox: one row per (event, endpoint), written when the event happens and
//! delivered at least once by the delivery worker of whichever pod claims it first.
//! Times are unix milliseconds, so the claim query is the same plain SQL on both backends.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookOutbox::Table)
                    .if_not_exists()
                    .col(uuid(WebhookOutbox::Id).primary_key())
                    .col(string_len(WebhookOutbox::MessageId, 64))
                    .col(text(WebhookOutbox::Endpoint))
                    .col(string_len(WebhookOutbox::EventType, 64))
                    .col(text(WebhookOutbox::Payload))
                    .col(big_integer(WebhookOutbox::CreatedAtMs))
                    .col(small_integer(WebhookOutbox::State).default(0))
                    .col(integer(WebhookOutbox::Attempts).default(0))
                    .col(big_integer(WebhookOutbox::NextAttemptMs))
                    .col(big_integer_null(WebhookOutbox::DoneAtMs))
                    .col(string_len_null(WebhookOutbox::LastError, 200))
                    .to_owned(),
            )
            .await?;
        // The claim reads pending rows by due time.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_outbox_due")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::State)
                    .col(WebhookOutbox::NextAttemptMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookOutbox::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookOutbox {
    Table,
    Id,
    MessageId,
    Endpoint,
    EventType,
    Payload,
    CreatedAtMs,
    State,
    Attempts,
    NextAttemptMs,
    DoneAtMs,
    LastError,
}
