//! Revocation webhooks: what other services hear when sessions end or accounts change.
//!
//! The application layer calls [`Webhooks::emit`] once per event, right after the change it
//! reports; that writes one row per endpoint to the `webhook_outbox` table (awaited, so the event
//! is stored before the API answers) and wakes this pod's [`DeliveryWorker`]. The worker of any
//! pod claims due rows (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so two pods never send one row at
//! once), POSTs them signed per Standard Webhooks, and retries with capped exponential backoff
//! and jitter until a 2xx or [`deliver::GIVE_UP_AFTER`]. Delivery is at least once: the
//! `webhook-id` is fixed when the row is written, so a receiver drops duplicates by it.
mod deliver;
pub mod sign;

use std::{sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};
use entities::webhook_outbox;
use sea_orm::{DatabaseConnection, EntityTrait, Set};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

pub use deliver::{DeliveryWorker, RetryPolicy, GIVE_UP_AFTER};
pub use sign::Signer;

use crate::{config::Config, metrics::Metrics};

/// How long writing an event to the outbox may take before it is logged as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The event types, as sent in the payload's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    SessionRevoked,
    SessionsRevoked,
    RolesChanged,
    Disabled,
    Deleted,
    PasswordChanged,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionRevoked => "session.revoked",
            Self::SessionsRevoked => "user.sessions_revoked",
            Self::RolesChanged => "user.roles_changed",
            Self::Disabled => "user.disabled",
            Self::Deleted => "user.deleted",
            Self::PasswordChanged => "user.password_changed",
        }
    }
}

/// One event: its type and its `data` (always `user_id`; `session_id` where one session is meant).
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventType,
    pub data: serde_json::Value,
}

impl Event {
    /// One session ended. `reason`: `logout`, `revoked` (by its owner), `refresh_reuse`,
    /// `max_sessions`.
    pub fn session_revoked(user_id: Uuid, session_id: Uuid, reason: &'static str) -> Self {
        Self {
            kind: EventType::SessionRevoked,
            data: json!({"user_id": user_id, "session_id": session_id, "reason": reason}),
        }
    }

    /// Every session of the account ended, but `kept_session_id` when given. `reason`:
    /// `logout_all` (by its owner) or `admin`.
    pub fn sessions_revoked(
        user_id: Uuid,
        reason: &'static str,
        kept_session_id: Option<Uuid>,
    ) -> Self {
        Self {
            kind: EventType::SessionsRevoked,
            data: json!({"user_id": user_id, "reason": reason, "kept_session_id": kept_session_id}),
        }
    }

    /// The account's roles changed; its sessions carry the new ones from their next request.
    pub fn roles_changed(user_id: Uuid, roles: &[String], previous: &[String]) -> Self {
        Self {
            kind: EventType::RolesChanged,
            data: json!({"user_id": user_id, "roles": roles, "previous": previous}),
        }
    }

    /// Disabled: every session of the account ended, and it cannot log in.
    pub fn disabled(user_id: Uuid) -> Self {
        Self::about(EventType::Disabled, user_id)
    }

    /// Deleted: every session of the account ended.
    pub fn deleted(user_id: Uuid) -> Self {
        Self::about(EventType::Deleted, user_id)
    }

    /// The password changed: every other session ended (`kept_session_id` is the caller's).
    pub fn password_changed(user_id: Uuid, kept_session_id: Uuid) -> Self {
        Self {
            kind: EventType::PasswordChanged,
            data: json!({"user_id": user_id, "kept_session_id": kept_session_id}),
        }
    }

    fn about(kind: EventType, user_id: Uuid) -> Self {
        Self {
            kind,
            data: json!({ "user_id": user_id }),
        }
    }
}

/// The cloneable handle the application layer emits through; does nothing without WEBHOOK_URLS.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    db: DatabaseConnection,
    endpoints: Vec<String>,
    wake: Arc<Notify>,
    metrics: Metrics,
}

impl Webhooks {
    /// With WEBHOOK_URLS: the handle and this pod's delivery worker (started on the current
    /// actix/tokio runtime). Without: a handle that emits nothing, and no worker.
    pub fn start(
        db: DatabaseConnection,
        config: &Config,
        metrics: Metrics,
        policy: RetryPolicy,
    ) -> (Self, Option<DeliveryWorker>) {
        let Some(secret) = config.webhook_secret.clone() else {
            return (Self::default(), None);
        };
        if config.webhook_urls.is_empty() {
            return (Self::default(), None);
        }
        let wake = Arc::new(Notify::new());
        let worker = DeliveryWorker::start(
            db.clone(),
            Signer::new(secret),
            metrics.clone(),
            wake.clone(),
            policy,
        );
        let inner = Inner {
            db,
            endpoints: config.webhook_urls.clone(),
            wake,
            metrics,
        };
        (
            Self {
                inner: Some(Arc::new(inner)),
            },
            Some(worker),
        )
    }

    /// Stores the event for every endpoint and wakes the worker. The change it reports has
    /// happened already, so a failure here does not fail the call: it is logged and counted
    /// as `failed`.
    pub async fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let now = Utc::now();
        let message_id = format!("msg_{}", Uuid::now_v7().simple());
        let payload = json!({
            "type": event.kind.as_str(),
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": event.data,
        })
        .to_string();
        let rows = inner
            .endpoints
            .iter()
            .map(|endpoint| webhook_outbox::ActiveModel {
                id: Set(Uuid::now_v7()),
                message_id: Set(message_id.clone()),
                endpoint: Set(endpoint.clone()),
                event_type: Set(event.kind.as_str().to_string()),
                payload: Set(payload.clone()),
                created_at_ms: Set(now.timestamp_millis()),
                state: Set(webhook_outbox::PENDING),
                attempts: Set(0),
                next_attempt_ms: Set(now.timestamp_millis()),
                done_at_ms: Set(None),
                last_error: Set(None),
            });
        let insert = webhook_outbox::Entity::insert_many(rows).exec_without_returning(&inner.db);
        match tokio::time::timeout(WRITE_TIMEOUT, insert).await {
            Ok(Ok(_)) => inner.wake.notify_one(),
            outcome => {
                let cause = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                inner
                    .metrics
                    .webhook_deliveries
                    .with_label_values(&["failed"])
                    .inc_by(inner.endpoints.len() as u64);
                tracing::error!(
                    event = event.kind.as_str(),
                    %message_id,
                    %cause,
                    "webhook event not stored: it will not be delivered"
                );
            }
        }
    }
}
