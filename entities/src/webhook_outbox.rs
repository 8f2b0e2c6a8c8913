//! One webhook to deliver to one endpoint. `message_id` (the `webhook-id` header) is fixed when
//! the event is written, so every attempt, and every endpoint, carries the same id for one event.
use sea_orm::entity::prelude::*;

/// `state`: waiting for a (first or further) attempt.
pub const PENDING: i16 = 0;
/// `state`: the endpoint answered 2xx.
pub const DELIVERED: i16 = 1;
/// `state`: given up after the retry period.
pub const FAILED: i16 = 2;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub message_id: String,
    pub endpoint: String,
    pub event_type: String,
    /// The exact body sent (and signed), JSON.
    pub payload: String,
    pub created_at_ms: i64,
    pub state: i16,
    pub attempts: i32,
    /// When the row may next be claimed: the retry time, or the end of a claim's lease.
    pub next_attempt_ms: i64,
    pub done_at_ms: Option<i64>,
    /// The last failure (status code or transport error), never the secret.
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
