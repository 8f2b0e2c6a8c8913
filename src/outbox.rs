//! Transactional outboxes: a change that must be reported elsewhere (a webhook, a mail)
//! stores its report as rows of an outbox table in the same database transaction as the change
//! itself. Either both commit or neither does, so a crash between "changed" and "reported"
//! cannot lose the report; a delivery worker then sends the rows at least once.
//!
//! The pattern, for any outbox:
//! - the application layer hands the outbox's handle (e.g. [`crate::webhooks::Webhooks`]) to the
//!   store message that makes the change;
//! - the message's handler builds the events from what the transaction saw and writes them with
//!   the handle's `write(&txn, &events)` (which calls [`insert_rows`]) before `txn.commit()`;
//! - once the message answered `Ok`, the caller wakes the worker (`wake()`), which otherwise
//!   finds the rows on its next poll.
//!
//! A change that lives outside the database (a revocation in Redis) cannot share a transaction:
//! its rows are written first (write-ahead), and the change is made, and acknowledged, only
//! after they are stored. A crash between the two leaves a report of a change that did not
//! happen, which for revocations errs on the safe side.
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait};

/// Inserts outbox rows on `conn`: a transaction (they commit with it) or the connection itself
/// (write-ahead). Nothing to insert is no statement at all.
pub async fn insert_rows<A>(conn: &impl ConnectionTrait, rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send,
{
    if rows.is_empty() {
        return Ok(());
    }
    <A::Entity as EntityTrait>::insert_many(rows)
        .exec_without_returning(conn)
        .await
        .map(|_| ())
}
