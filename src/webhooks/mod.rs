//! Revocation webhooks: what other services hear when sessions end or accounts change.
//!
//! Every event is stored as one row per endpoint in the `webhook_outbox` table before the change
//! it reports is acknowledged (see [`crate::outbox`]): a change in the database writes its events
//! in its own transaction ([`Webhooks::write`], passed into the store message), a revocation in
//! Redis writes them ahead of the revocation ([`Webhooks::write_ahead`]); then this pod's
//! [`DeliveryWorker`] is woken. The worker of any
//! pod claims due rows (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so two pods never send one row at
//! once), POSTs them signed per Standard Webhooks, and retries with capped exponential backoff
//! and jitter until a 2xx or WEBHOOK_GIVE_UP_SECONDS (a day by default). Delivery is at least once: the
//! `webhook-id` is fixed when the row is written, so a receiver drops duplicates by it.
mod deliver;
pub mod sign;

use std::{sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};
use entities::webhook_outbox;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Set};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

pub use deliver::{DeliveryWorker, RetryPolicy, GIVE_UP_AFTER};
pub use sign::Signer;

use crate::{config::Config, error::ApiError, metrics::Metrics};

/// How long writing an event to the outbox outside a change's transaction may take.
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
    MfaReset,
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
            Self::MfaReset => "user.mfa_reset",
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

    /// The password changed: every other session ended (`kept_session_id` is the caller's;
    /// `None` for a reset through a mailed link, which ends them all).
    pub fn password_changed(user_id: Uuid, kept_session_id: Option<Uuid>) -> Self {
        Self {
            kind: EventType::PasswordChanged,
            data: json!({"user_id": user_id, "kept_session_id": kept_session_id}),
        }
    }

    /// An admin removed the account's second factors (`methods`): the password alone logs in
    /// until it enrols one again. Its sessions live on.
    pub fn mfa_reset(user_id: Uuid, methods: &[&str]) -> Self {
        Self {
            kind: EventType::MfaReset,
            data: json!({"user_id": user_id, "methods": methods}),
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

    /// The outbox rows of `events`: one per event and endpoint, each event with its own
    /// `webhook-id` (shared by its endpoints' rows and by every retry).
    fn rows(inner: &Inner, events: &[Event]) -> Vec<webhook_outbox::ActiveModel> {
        let now = Utc::now();
        let mut rows = Vec::with_capacity(events.len() * inner.endpoints.len());
        for event in events {
            let message_id = format!("msg_{}", Uuid::now_v7().simple());
            let payload = json!({
                "type": event.kind.as_str(),
                "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
                "data": event.data,
            })
            .to_string();
            rows.extend(
                inner
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
                    }),
            );
        }
        rows
    }

    /// Writes `events` to the outbox on `conn`, normally the transaction of the change they
    /// report (see [`crate::outbox`]): they commit with it or not at all. Call [`Self::wake`]
    /// once it committed. Without WEBHOOK_URLS: nothing.
    pub async fn write(&self, conn: &impl ConnectionTrait, events: &[Event]) -> Result<(), DbErr> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        crate::outbox::insert_rows(conn, Self::rows(inner, events)).await
    }

    /// Whether events are sent at all (WEBHOOK_URLS).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Tells this pod's worker that rows were committed (the others find them on their poll).
    pub fn wake(&self) {
        if let Some(inner) = &self.inner {
            inner.wake.notify_one();
        }
    }

    /// Write-ahead, for a change that lives outside the database (a revocation in Redis): the
    /// event is stored BEFORE the change is made, and the caller makes it only on `Ok`, so no
    /// acknowledged revocation goes unreported. If the change then fails, receivers hear of a
    /// revocation that did not happen: a spurious "this session ended", which errs on the safe
    /// side (they drop their copy of a session that still lives, and its next request tells).
    /// A failure to store is 503, and nothing was changed.
    pub async fn write_ahead(&self, events: &[Event]) -> Result<(), ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.write(&inner.db, events)).await {
            Ok(Ok(())) => {
                self.wake();
                Ok(())
            }
            outcome => Err(ApiError::Unavailable {
                what: "database",
                detail: match outcome {
                    Ok(Err(e)) => format!("webhook event not stored: {e}"),
                    _ => "webhook event not stored: timed out".to_string(),
                },
            }),
        }
    }

    /// After the fact, for revocations the session store decides itself in one atomic step
    /// (a refresh token's reuse, the oldest session past MAX_SESSIONS_PER_USER): the event
    /// cannot be known before, so it is stored right after; a failure (or a crash in between)
    /// loses it, which is logged and counted as `failed`.
    pub async fn emit_after(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let write = self.write(&inner.db, std::slice::from_ref(&event));
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => self.wake(),
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
                    %cause,
                    "webhook event not stored: it will not be delivered"
                );
            }
        }
    }
}
