//! The audit trail's storage: the UserStore messages that write events (idempotently) and page
//! them for GET /admin/audit.
use actix::prelude::*;
use chrono::{DateTime, Utc};
use entities::audit_event;
use sea_orm::{
    sea_query::OnConflict, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde::Serialize;
use uuid::Uuid;

use super::AuditEvent;
use crate::{
    actor::Reply,
    domain::PageRequest,
    users::{UserStore, UserStoreError},
};

/// The public shape of an event (GET /admin/audit).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEventView {
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "login")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// Who did it (null: the system, or an unauthenticated caller).
    pub actor_id: Option<Uuid>,
    /// The account it was done to (null: none, or unknown).
    pub subject_id: Option<Uuid>,
    pub ip: Option<String>,
    /// success, failure (wrong credentials) or denied (refused by policy)
    #[schema(example = "success")]
    pub outcome: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Stores audit events; idempotent (a retried batch writes each event once).
#[derive(Message)]
#[rtype(result = "Reply<Result<(), UserStoreError>>")]
pub struct WriteAudit(pub Vec<AuditEvent>);

impl Handler<WriteAudit> for UserStore {
    type Result = Reply<Result<(), UserStoreError>>;

    fn handle(&mut self, msg: WriteAudit, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            if msg.0.is_empty() {
                return Ok(());
            }
            let rows = msg.0.into_iter().map(|e| audit_event::ActiveModel {
                id: Set(e.id),
                occurred_at: Set(e.occurred_at),
                event_type: Set(e.event_type.to_string()),
                actor_id: Set(e.actor_id),
                subject_id: Set(e.subject_id),
                ip: Set(e.ip),
                outcome: Set(e.outcome.to_string()),
                detail: Set(e.detail.to_string()),
            });
            let insert = audit_event::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(audit_event::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&db.conn);
            db.call("write_audit", insert).await.map(|_| ())
        })
    }
}

#[derive(Message)]
#[rtype(result = "Reply<Result<(Vec<AuditEventView>, u64), UserStoreError>>")]
pub struct ListAudit {
    /// Events where this account is the actor or the subject.
    pub user_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub page: PageRequest,
}

impl Handler<ListAudit> for UserStore {
    type Result = Reply<Result<(Vec<AuditEventView>, u64), UserStoreError>>;

    fn handle(&mut self, msg: ListAudit, _: &mut Self::Context) -> Self::Result {
        let db = self.ctx();
        Reply::new(async move {
            db.call_tx("list_audit", async {
                let mut query = audit_event::Entity::find();
                if let Some(uid) = msg.user_id {
                    query = query.filter(
                        Condition::any()
                            .add(audit_event::Column::ActorId.eq(uid))
                            .add(audit_event::Column::SubjectId.eq(uid)),
                    );
                }
                if let Some(t) = msg.event_type {
                    query = query.filter(audit_event::Column::EventType.eq(t));
                }
                let total = query.clone().count(&db.conn).await?;
                let rows = query
                    .order_by_desc(audit_event::Column::OccurredAt)
                    .order_by_desc(audit_event::Column::Id)
                    .offset((msg.page.page - 1) * msg.page.per_page)
                    .limit(msg.page.per_page)
                    .all(&db.conn)
                    .await?;
                let items = rows
                    .into_iter()
                    .map(|r| AuditEventView {
                        id: r.id,
                        event_type: r.event_type,
                        occurred_at: r.occurred_at,
                        actor_id: r.actor_id,
                        subject_id: r.subject_id,
                        ip: r.ip,
                        outcome: r.outcome,
                        detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
                    })
                    .collect();
                Ok((items, total))
            })
            .await
        })
    }
}
