//! One mail to send, rendered when the change that causes it is written (in the same
//! transaction). The bodies are cleared once it is sent or given up, since they may carry a
//! single-use link.
use sea_orm::entity::prelude::*;

/// `state`: waiting for a (first or further) attempt.
pub const PENDING: i16 = 0;
/// `state`: accepted by the SMTP server (or, without SMTP_URL, written to the log).
pub const SENT: i16 = 1;
/// `state`: given up after the retry period.
pub const FAILED: i16 = 2;
/// `state`: never to be sent: a [`DECOY`] once the worker has handled it.
pub const DISCARDED: i16 = 3;
/// `state`: the row a request about an unknown address writes so that it does the same work as
/// one about a known address. The worker claims it like a [`PENDING`] row and builds the
/// message, so the work after the answer is alike too, then stores it [`DISCARDED`] unsent.
pub const DECOY: i16 = 4;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mail_outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The template (`password_reset`, `verify_email`, ...): for logs and metrics.
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub created_at_ms: i64,
    pub state: i16,
    pub attempts: i32,
    /// When the row may next be claimed: the retry time, or the end of a claim's lease.
    pub next_attempt_ms: i64,
    pub done_at_ms: Option<i64>,
    /// The last failure (SMTP reply code or transport error).
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
