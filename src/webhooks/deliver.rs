//! The delivery worker: claims due outbox rows, POSTs them, and records the outcome. All state
//! is in the database, so a restarted pod (or another one) carries on where this one stopped.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use entities::webhook_outbox::{self, Column, Entity, DELIVERED, FAILED, PENDING};
use futures_util::StreamExt;
use rand::Rng;
use sea_orm::{
    sea_query::Expr, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, Statement,
};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::Signer;
use crate::metrics::Metrics;

/// A webhook not delivered this long after its event is given up (counted as `failed`).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Rows claimed per round.
const BATCH: u64 = 32;
/// Deliveries in flight at once per pod.
const CONCURRENCY: usize = 8;
/// One POST, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed row is not claimed again for this long: longer than a POST can take, so only a
/// pod that died mid-delivery lets it go (and it is then sent again, with the same id).
const LEASE: Duration = Duration::from_secs(60);
/// Without a wake-up (an event on another pod, a retry falling due), the outbox is read this often.
const POLL: Duration = Duration::from_secs(1);
/// How long a stopping pod waits for the deliveries in flight.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Delivered and failed rows are deleted this long after they were done.
const KEEP_DONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a failed delivery is tried again: `base · 2^(attempt-1)`, at most `cap`, each delay
/// drawn between its half and itself (jitter, so receivers coming back are not hit in step).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
            give_up_after: GIVE_UP_AFTER,
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempt`-th failed attempt (1-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// After the `attempt`-th failure (1-based) of a row made at `created_at_ms`: when to try
    /// again (ms), or `None` once that would fall past `give_up_after`.
    pub fn next_attempt_ms(&self, attempt: u32, created_at_ms: i64, now_ms: i64) -> Option<i64> {
        let next = now_ms + self.delay(attempt).as_millis() as i64;
        (next - created_at_ms <= self.give_up_after.as_millis() as i64).then_some(next)
    }
}

/// Stops the worker: the deliveries in flight finish (for at most [`STOP_DEADLINE`]); what is
/// still pending stays in the database for the next pod.
pub struct DeliveryWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DeliveryWorker {
    pub(super) fn start(
        db: DatabaseConnection,
        signer: Signer,
        metrics: Metrics,
        wake: Arc<Notify>,
        policy: RetryPolicy,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT / 2)
            // A redirect would send the signed event somewhere WEBHOOK_URLS does not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sessiond-webhooks/", env!("CARGO_PKG_VERSION")))
            .build();
        let worker = Worker {
            db,
            signer,
            metrics,
            wake,
            policy,
            client: client.ok(),
        };
        let task = actix_web::rt::spawn(worker.run(stopped));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_DEADLINE, self.task).await;
    }
}

struct Worker {
    db: DatabaseConnection,
    signer: Signer,
    metrics: Metrics,
    wake: Arc<Notify>,
    policy: RetryPolicy,
    /// `None` only if the TLS backend could not start (logged, and nothing is claimed).
    client: Option<reqwest::Client>,
}

/// A claimed row: what one attempt needs.
struct Claimed {
    id: Uuid,
    message_id: String,
    endpoint: String,
    event_type: String,
    payload: String,
    created_at_ms: i64,
    attempts: i32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The endpoint without its query or fragment, which may carry a token: what logs show.
fn shown(endpoint: &str) -> &str {
    endpoint.split(['?', '#']).next().unwrap_or("")
}

impl Worker {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let Some(client) = self.client.clone() else {
            tracing::error!("webhooks: the HTTP client could not be built; nothing is delivered");
            return;
        };
        let mut gauge_at: Option<Instant> = None;
        let mut cleaned_at: Option<Instant> = None;
        // A pod started before its migrations ran has no outbox yet: say so once a minute.
        let mut warned_at: Option<Instant> = None;
        loop {
            if *stopped.borrow() {
                break;
            }
            let claimed = match self.claim().await {
                Ok(rows) => rows,
                Err(e) => {
                    if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(cause = %e, "webhooks: cannot read the outbox; retrying");
                        warned_at = Some(Instant::now());
                    }
                    Vec::new()
                }
            };
            let full = claimed.len() as u64 == BATCH;
            let worked = !claimed.is_empty();
            futures_util::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |row| self.deliver(&client, row))
                .await;
            if worked || gauge_at.is_none_or(|t| t.elapsed() >= POLL) {
                self.update_gauge().await;
                gauge_at = Some(Instant::now());
            }
            if cleaned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                self.clean_up().await;
                cleaned_at = Some(Instant::now());
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stopped.changed() => break,
            }
        }
    }

    /// Takes up to [`BATCH`] due rows: pushes their next attempt a lease ahead (so no other pod
    /// takes them meanwhile) and counts the attempt. PostgreSQL skips rows another pod is
    /// claiming at this moment; SQLite has one writer.
    async fn claim(&self) -> Result<Vec<Claimed>, DbErr> {
        let now = now_ms();
        let lease_end = now + LEASE.as_millis() as i64;
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DatabaseBackend::Postgres => {
                "UPDATE webhook_outbox SET next_attempt_ms = $1, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM webhook_outbox WHERE state = $2 AND next_attempt_ms <= $3 \
                 ORDER BY next_attempt_ms LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, message_id, endpoint, event_type, payload, created_at_ms, attempts"
            }
            _ => {
                "UPDATE webhook_outbox SET next_attempt_ms = ?, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM webhook_outbox WHERE state = ? AND next_attempt_ms <= ? \
                 ORDER BY next_attempt_ms LIMIT ?) \
                 RETURNING id, message_id, endpoint, event_type, payload, created_at_ms, attempts"
            }
        };
        let stmt = Statement::from_sql_and_values(
            backend,
            sql,
            [
                lease_end.into(),
                PENDING.into(),
                now.into(),
                (BATCH as i64).into(),
            ],
        );
        let rows = tokio::time::timeout(REQUEST_TIMEOUT, self.db.query_all_raw(stmt))
            .await
            .map_err(|_| DbErr::Custom("claim timed out".into()))??;
        rows.into_iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("", "id")?,
                    message_id: r.try_get("", "message_id")?,
                    endpoint: r.try_get("", "endpoint")?,
                    event_type: r.try_get("", "event_type")?,
                    payload: r.try_get("", "payload")?,
                    created_at_ms: r.try_get("", "created_at_ms")?,
                    attempts: r.try_get("", "attempts")?,
                })
            })
            .collect()
    }

    /// One attempt, signed afresh (the timestamp is the attempt's), and its outcome recorded.
    async fn deliver(&self, client: &reqwest::Client, row: Claimed) {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self
            .signer
            .sign(&row.message_id, timestamp, row.payload.as_bytes());
        let sent = client
            .post(&row.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &row.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.payload.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!("HTTP {}", resp.status().as_u16())),
            Err(e) if e.is_timeout() => Some("timed out".to_string()),
            Err(e) if e.is_connect() => Some("connection failed".to_string()),
            Err(_) => Some("request failed".to_string()),
        };
        let now = now_ms();
        let result = match &failure {
            None => {
                self.metrics
                    .webhook_lag
                    .observe((now - row.created_at_ms).max(0) as f64 / 1000.0);
                self.metrics
                    .webhook_deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                self.finish(row.id, DELIVERED, now, None).await
            }
            Some(cause) => {
                let attempt = row.attempts.max(1) as u32;
                match self.policy.next_attempt_ms(attempt, row.created_at_ms, now) {
                    None => {
                        self.metrics
                            .webhook_deliveries
                            .with_label_values(&["failed"])
                            .inc();
                        tracing::error!(
                            message_id = %row.message_id,
                            event = %row.event_type,
                            endpoint = shown(&row.endpoint),
                            attempts = attempt,
                            %cause,
                            "webhook given up: not delivered within the retry period"
                        );
                        self.finish(row.id, FAILED, now, Some(cause)).await
                    }
                    Some(next) => {
                        self.metrics
                            .webhook_deliveries
                            .with_label_values(&["retried"])
                            .inc();
                        tracing::warn!(
                            message_id = %row.message_id,
                            event = %row.event_type,
                            endpoint = shown(&row.endpoint),
                            attempts = attempt,
                            %cause,
                            retry_in_ms = next - now,
                            "webhook not delivered; will retry"
                        );
                        Entity::update_many()
                            .col_expr(Column::NextAttemptMs, Expr::value(next))
                            .col_expr(Column::LastError, Expr::value(cause.clone()))
                            .filter(Column::Id.eq(row.id))
                            .filter(Column::State.eq(PENDING))
                            .exec(&self.db)
                            .await
                            .map(|_| ())
                    }
                }
            }
        };
        if let Err(e) = result {
            // The lease runs out and the row is tried again (a delivered one is sent twice,
            // with the same webhook-id).
            tracing::warn!(message_id = %row.message_id, cause = %e, "webhooks: cannot record a delivery outcome");
        }
    }

    async fn finish(
        &self,
        id: Uuid,
        state: i16,
        now: i64,
        cause: Option<&String>,
    ) -> Result<(), DbErr> {
        Entity::update_many()
            .col_expr(Column::State, Expr::value(state))
            .col_expr(Column::DoneAtMs, Expr::value(now))
            .col_expr(Column::LastError, Expr::value(cause.cloned()))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map(|_| ())
    }

    async fn update_gauge(&self) {
        let count = webhook_outbox::Entity::find()
            .filter(Column::State.eq(PENDING))
            .count(&self.db)
            .await;
        if let Ok(n) = count {
            self.metrics.webhook_pending.set(n as i64);
        }
    }

    async fn clean_up(&self) {
        let before = now_ms() - KEEP_DONE.as_millis() as i64;
        let deleted = Entity::delete_many()
            .filter(Column::State.ne(PENDING))
            .filter(Column::DoneAtMs.lt(before))
            .exec(&self.db)
            .await;
        if let Err(e) = deleted {
            tracing::warn!(cause = %e, "webhooks: cannot delete old outbox rows");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_exponentially_with_jitter_up_to_the_cap() {
        let p = RetryPolicy::default();
        for attempt in 1..=40 {
            let exp = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(p.cap);
            let d = p.delay(attempt);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn logs_show_endpoints_without_their_query() {
        assert_eq!(
            shown("https://h.example/hook?token=abc"),
            "https://h.example/hook"
        );
    }
}
