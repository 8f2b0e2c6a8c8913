//! The audit trail: security-relevant events, written to `audit_events` off the request path.
//!
//! Handlers call [`AuditLog::record`], which only puts the event on a bounded queue (never
//! waits). One writer task drains the queue in batches through the UserStore actor, retrying a
//! failed batch with backoff; inserts are idempotent (the event id is made here), so a retry after
//! an ambiguous failure does not write an event twice. A full queue (the database has been down
//! for a long while) drops events and counts them in `sessiond_audit_events_total{outcome="dropped"}`.
//!
//! Denials that a caller can repeat in a loop (a 403 for a missing permission, an escalation
//! refused) go through [`AuditLog::record_denial`]: the first of a kind per actor and key in a
//! window is queued at once, further ones in that window are only counted, and the writer stores
//! them as one event with `detail.count` when the window ends (or at shutdown). So a loop of 403s
//! costs a few rows per window, and cannot crowd real events out of the queue.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::Addr;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::actor::Ask;
use crate::{domain::AuditKind, metrics::Metrics, users::UserStore};

mod store;
pub use store::{AuditEventView, ListAudit, WriteAudit};

/// Events queued at most; beyond this they are dropped (and counted).
const QUEUE: usize = 10_000;
const BATCH: usize = 256;
/// How long a stopping server keeps trying to write what is queued.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Distinct (actor, kind, key) denial windows kept open at most; beyond that (many actors at
/// once) denials are queued one by one like any event, so memory stays bounded.
const MAX_OPEN_DENIALS: usize = 10_000;

/// One event, as recorded.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event_type: AuditKind,
    pub actor_id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    pub ip: Option<String>,
    pub outcome: &'static str,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    fn new(event_type: AuditKind, outcome: &'static str) -> Self {
        Self {
            id: Uuid::now_v7(),
            occurred_at: Utc::now(),
            event_type,
            actor_id: None,
            subject_id: None,
            ip: None,
            outcome,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn success(event_type: AuditKind) -> Self {
        Self::new(event_type, "success")
    }

    /// Wrong credentials.
    pub fn failure(event_type: AuditKind) -> Self {
        Self::new(event_type, "failure")
    }

    /// Refused by policy: missing permission, throttling, last admin, token reuse.
    pub fn denied(event_type: AuditKind) -> Self {
        Self::new(event_type, "denied")
    }

    pub fn actor(mut self, id: impl Into<Option<Uuid>>) -> Self {
        self.actor_id = id.into();
        self
    }

    pub fn subject(mut self, id: impl Into<Option<Uuid>>) -> Self {
        self.subject_id = id.into();
        self
    }

    /// The user acting on their own account.
    pub fn by(self, user: Uuid) -> Self {
        self.actor(user).subject(user)
    }

    pub fn ip(mut self, ip: Option<String>) -> Self {
        self.ip = ip;
        self
    }

    /// Event-specific facts; never secrets.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The cloneable handle handlers record through.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Metrics,
    denials: Arc<Denials>,
}

/// Who was refused what: one open window per key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    actor: Option<Uuid>,
    event_type: AuditKind,
    key: String,
}

struct OpenWindow {
    opened: Instant,
    /// The event recorded at the window's start; the summary copies it.
    first: AuditEvent,
    /// Denials after the first one, not written yet.
    repeats: u64,
}

/// Open denial windows, shared by the handles (which count) and the writer (which closes them).
struct Denials {
    window: Duration,
    open: Mutex<HashMap<DenialKey, OpenWindow>>,
}

impl Denials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DenialKey, OpenWindow>> {
        // A panic elsewhere while holding the lock leaves counts, never a broken invariant.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the windows that ended by `now` (all of them with `None`), returning one summary
    /// event per window that counted repeats.
    fn close(&self, now: Option<Instant>) -> Vec<AuditEvent> {
        let mut summaries = Vec::new();
        self.lock().retain(|_, w| {
            let ended = now.is_none_or(|now| now.duration_since(w.opened) >= self.window);
            if ended && w.repeats > 0 {
                summaries.push(summary(w));
            }
            !ended
        });
        summaries
    }
}

/// The one event standing for a window's repeats: the first event's facts with `count`.
fn summary(w: &OpenWindow) -> AuditEvent {
    let mut event = w.first.clone();
    event.id = Uuid::now_v7();
    event.occurred_at = Utc::now();
    if let serde_json::Value::Object(detail) = &mut event.detail {
        detail.insert("count".into(), w.repeats.into());
        detail.insert(
            "window_seconds".into(),
            serde_json::json!(w.opened.elapsed().as_secs_f64().round()),
        );
    }
    event
}

/// Stops the writer: what is queued is written (for at most [`DRAIN_DEADLINE`]).
pub struct AuditWriter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditWriter {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(DRAIN_DEADLINE * 2, self.task).await;
    }
}

impl AuditLog {
    /// Starts the writer task (on the current actix/tokio runtime). Repeated denials are
    /// aggregated per `denied_window` (see [`AuditLog::record_denial`]).
    pub fn start(
        users: Addr<UserStore>,
        metrics: Metrics,
        denied_window: Duration,
    ) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let denials = Arc::new(Denials {
            window: denied_window,
            open: Mutex::new(HashMap::new()),
        });
        let task = actix_web::rt::spawn(write_loop(
            rx,
            stopped,
            users,
            metrics.clone(),
            denials.clone(),
        ));
        (
            Self {
                tx,
                metrics,
                denials,
            },
            AuditWriter { stop, task },
        )
    }

    /// Records a denial a caller could repeat in a loop. The first one per (actor, event type,
    /// `key`) in a window is queued at once with `detail.count = 1`; the repeats in that window
    /// are counted and written as one event with `detail.count = n` when it ends. `key` names
    /// what was refused (route and permission, or operation and account), so different refusals
    /// are never merged. Never waits.
    pub fn record_denial(&self, key: String, mut event: AuditEvent) {
        if let serde_json::Value::Object(detail) = &mut event.detail {
            detail.insert("count".into(), 1.into());
        }
        let id = DenialKey {
            actor: event.actor_id,
            event_type: event.event_type,
            key,
        };
        let now = Instant::now();
        {
            let mut open = self.denials.lock();
            // `record` below never waits, so holding the lock across it is brief.
            if let Some(w) = open.get_mut(&id) {
                if now.duration_since(w.opened) < self.denials.window {
                    w.repeats += 1;
                    return;
                }
                // Ended but not closed by the writer yet: this denial opens the next window.
                if w.repeats > 0 {
                    self.record(summary(w));
                }
                open.remove(&id);
            }
            if open.len() < MAX_OPEN_DENIALS {
                open.insert(
                    id,
                    OpenWindow {
                        opened: now,
                        first: event.clone(),
                        repeats: 0,
                    },
                );
            }
        }
        self.record(event);
    }

    /// Queues the event; never waits.
    pub fn record(&self, event: AuditEvent) {
        tracing::info!(
            audit = event.event_type.as_str(),
            outcome = event.outcome,
            actor_id = event.actor_id.map(tracing::field::display),
            subject_id = event.subject_id.map(tracing::field::display),
            "audit event"
        );
        match self.tx.try_send(event) {
            Ok(()) => self.metrics.audit_queue.inc(),
            Err(_) => {
                self.metrics
                    .audit_events
                    .with_label_values(&["dropped"])
                    .inc();
                tracing::error!("audit queue full or closed: event dropped");
            }
        }
    }
}

/// Adds the summaries of closed denial windows to the batch (they bypass the queue, which they
/// were never counted in, so the gauge is raised here and lowered when they are written).
fn add_summaries(batch: &mut Vec<AuditEvent>, summaries: Vec<AuditEvent>, metrics: &Metrics) {
    metrics.audit_queue.add(summaries.len() as i64);
    batch.extend(summaries);
}

async fn write_loop(
    mut rx: mpsc::Receiver<AuditEvent>,
    mut stopped: watch::Receiver<bool>,
    users: Addr<UserStore>,
    metrics: Metrics,
    denials: Arc<Denials>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // A window's summary is written at most a quarter window after it ends.
    let mut tick = tokio::time::interval(
        (denials.window / 4).clamp(Duration::from_millis(10), Duration::from_secs(5)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            event = rx.recv() => match event {
                Some(e) => batch.push(e),
                None => break,
            },
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        add_summaries(&mut batch, denials.close(Some(Instant::now())), &metrics);
        write(&mut batch, &users, &metrics, Some(&mut stopped)).await;
    }
    // Stopping: write what is left, open denial windows included, within the deadline.
    rx.close();
    add_summaries(&mut batch, denials.close(None), &metrics);
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    loop {
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if batch.is_empty()
            || tokio::time::timeout_at(deadline, write(&mut batch, &users, &metrics, None))
                .await
                .is_err()
        {
            break;
        }
    }
    let lost = batch.len() + rx.len();
    if lost > 0 {
        metrics
            .audit_events
            .with_label_values(&["dropped"])
            .inc_by(lost as u64);
        tracing::error!(lost, "audit events not written before shutdown");
    }
}

/// Writes the batch, retrying with backoff until it succeeds; while `stopped` is given, a stop
/// request ends the retrying (the drain gets another go at it).
async fn write(
    batch: &mut Vec<AuditEvent>,
    users: &Addr<UserStore>,
    metrics: &Metrics,
    mut stopped: Option<&mut watch::Receiver<bool>>,
) {
    let mut backoff = Duration::from_millis(100);
    while !batch.is_empty() {
        let n = batch.len();
        match users.ask(WriteAudit(batch.clone())).await {
            Ok(()) => {
                metrics
                    .audit_events
                    .with_label_values(&["written"])
                    .inc_by(n as u64);
                metrics.audit_queue.sub(n as i64);
                batch.clear();
                return;
            }
            Err(e) => tracing::warn!(cause = %e, events = n, "audit write failed; retrying"),
        }
        metrics
            .audit_events
            .with_label_values(&["write_failed"])
            .inc();
        match stopped.as_deref_mut() {
            Some(s) => {
                if *s.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = s.changed() => return,
                }
            }
            None => tokio::time::sleep(backoff).await,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PageRequest;
    use actix::Actor;
    use migration::MigratorTrait;

    /// The first page (ten) of stored events, and how many there are.
    async fn first_page(users: &Addr<UserStore>) -> (Vec<AuditEventView>, u64) {
        let page = PageRequest {
            page: 1,
            per_page: 10,
        };
        users
            .ask(ListAudit {
                user_id: None,
                event_type: None,
                page,
            })
            .await
            .unwrap()
    }

    /// The database refuses the first writes (no table yet): the events are kept and retried,
    /// and land exactly once when it recovers; a stop writes nothing twice and drops nothing.
    #[actix_web::test]
    async fn failed_writes_are_retried_until_they_land_once() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let metrics = Metrics::new();
        let users = UserStore::new(db.clone(), Duration::from_secs(5), metrics.db.clone()).start();
        let (log, writer) =
            AuditLog::start(users.clone(), metrics.clone(), Duration::from_secs(60));
        let count = |outcome: &str| metrics.audit_events.with_label_values(&[outcome]).get();

        log.record(AuditEvent::success(AuditKind::Register));
        log.record(AuditEvent::failure(AuditKind::Login));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count("write_failed") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no write was attempted"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        migration::Migrator::up(&db, None).await.unwrap();
        while count("written") < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the retry never landed"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        writer.stop().await;

        let (events, total) = first_page(&users).await;
        assert_eq!(total, 2, "{events:?}");
        let mut kinds: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        kinds.sort();
        assert_eq!(kinds, ["login", "register"]);
        assert_eq!((count("written"), count("dropped")), (2, 0));
        assert_eq!(metrics.audit_queue.get(), 0);
    }

    /// Repeats of one denial are one counted event, written when the writer stops; a
    /// different key or actor is never merged into it.
    #[actix_web::test]
    async fn repeated_denials_are_counted_and_flushed_at_stop() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        migration::Migrator::up(&db, None).await.unwrap();
        let metrics = Metrics::new();
        let users = UserStore::new(db.clone(), Duration::from_secs(5), metrics.db.clone()).start();
        let (log, writer) =
            AuditLog::start(users.clone(), metrics.clone(), Duration::from_secs(60));
        let actor = Uuid::now_v7();
        let denied = || AuditEvent::denied(AuditKind::AccessDenied).actor(actor);
        for _ in 0..5 {
            log.record_denial("GET /a users:read".into(), denied());
        }
        log.record_denial("GET /b users:read".into(), denied());
        log.record_denial("GET /a users:read".into(), denied().actor(Uuid::now_v7()));
        writer.stop().await;

        let (events, _) = first_page(&users).await;
        let mut counts: Vec<u64> = events
            .iter()
            .map(|e| e.detail["count"].as_u64().unwrap())
            .collect();
        counts.sort();
        assert_eq!(counts, [1, 1, 1, 4], "{events:?}");
        assert_eq!(metrics.audit_queue.get(), 0);
    }
}
