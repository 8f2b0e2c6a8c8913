//! Mail: the outbox the delivery worker sends from (written in the transaction of the change
//! that causes each mail), the single-use tokens that mailed links carry (stored hashed), the
//! addresses and user agents each account signed in from (new sign-in notices), and whether an
//! account's address is verified. Times are unix milliseconds, as in the webhook outbox, so the
//! claim query is the same plain SQL on both backends.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(boolean(Users::EmailVerified).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailOutbox::Table)
                    .if_not_exists()
                    .col(uuid(MailOutbox::Id).primary_key())
                    .col(string_len(MailOutbox::Kind, 32))
                    .col(text(MailOutbox::Recipient))
                    .col(text(MailOutbox::Subject))
                    .col(text(MailOutbox::TextBody))
                    .col(text(MailOutbox::HtmlBody))
                    .col(big_integer(MailOutbox::CreatedAtMs))
                    .col(small_integer(MailOutbox::State).default(0))
                    .col(integer(MailOutbox::Attempts).default(0))
                    .col(big_integer(MailOutbox::NextAttemptMs))
                    .col(big_integer_null(MailOutbox::DoneAtMs))
                    .col(string_len_null(MailOutbox::LastError, 200))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_mail_outbox_due")
                    .table(MailOutbox::Table)
                    .col(MailOutbox::State)
                    .col(MailOutbox::NextAttemptMs)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EmailTokens::Table)
                    .if_not_exists()
                    .col(uuid(EmailTokens::Id).primary_key())
                    .col(string_len(EmailTokens::TokenHash, 64).unique_key())
                    // NULL: the decoy a forgotten-password request for an unknown address
                    // writes, so both cases do the same work; it never matches an account.
                    .col(uuid_null(EmailTokens::UserId))
                    .col(string_len(EmailTokens::Purpose, 16))
                    // The address the link was mailed to (verification, email change).
                    .col(text(EmailTokens::Email))
                    .col(big_integer(EmailTokens::CreatedAtMs))
                    .col(big_integer(EmailTokens::ExpiresAtMs))
                    .col(big_integer_null(EmailTokens::UsedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_email_tokens_user")
                    .table(EmailTokens::Table)
                    .col(EmailTokens::UserId)
                    .col(EmailTokens::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LoginSeen::Table)
                    .if_not_exists()
                    .col(uuid(LoginSeen::UserId))
                    // SHA-256 of the client address and user agent: no address stored here.
                    .col(string_len(LoginSeen::Fingerprint, 64))
                    .col(big_integer(LoginSeen::LastSeenMs))
                    .primary_key(
                        Index::create()
                            .col(LoginSeen::UserId)
                            .col(LoginSeen::Fingerprint),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LoginSeen::Table.into_iden(),
            EmailTokens::Table.into_iden(),
            MailOutbox::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::EmailVerified)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    EmailVerified,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Id,
    Kind,
    Recipient,
    Subject,
    TextBody,
    HtmlBody,
    CreatedAtMs,
    State,
    Attempts,
    NextAttemptMs,
    DoneAtMs,
    LastError,
}

#[derive(DeriveIden)]
enum EmailTokens {
    Table,
    Id,
    TokenHash,
    UserId,
    Purpose,
    Email,
    CreatedAtMs,
    ExpiresAtMs,
    UsedAtMs,
}

#[derive(DeriveIden)]
enum LoginSeen {
    Table,
    UserId,
    Fingerprint,
    LastSeenMs,
}
