//! The mail delivery worker: claims due outbox rows, sends them, records the outcome. Its
//! design is the webhook worker's (`crate::webhooks`): all state in the database, a lease per
//! claim (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so two pods never send one row at once), capped
//! exponential backoff with jitter (the same [`RetryPolicy`]).
//!
//! Exactly once while the database answers: a row is marked sent right after the SMTP server
//! accepted it, by the pod holding its lease. The one window left is a pod that dies (or loses
//! the database) between the server's acceptance and that mark: the lease runs out and the
//! mail is sent again, with the same `Message-ID`, so mail clients show it once.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use entities::{
    email_token,
    mail_outbox::{Column, Entity, DECOY, DISCARDED, FAILED, PENDING, SENT},
};
use futures_util::StreamExt;
use lettre::{
    message::{Mailbox, MultiPart},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use sea_orm::{
    sea_query::Expr, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, Statement,
};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::Mailer;
use crate::{
    config::mail::{MailSettings, Smtp},
    metrics::Metrics,
    webhooks::RetryPolicy,
};

/// Rows claimed per round.
const BATCH: u64 = 16;
/// Mails in flight at once per pod.
const CONCURRENCY: usize = 4;
/// One SMTP exchange, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A claimed row is not claimed again for this long: longer than a send can take.
const LEASE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_secs(1);
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Sent and failed rows (their bodies already cleared), and mailed tokens past their expiry,
/// are deleted this long after.
const KEEP_DONE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A mail not sent this long after it was written is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where mails go.
enum Sender {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// No SMTP_URL: written to the log. `bodies`: with their text (the embedded single-node
    /// default, where the log is how a developer gets the link); otherwise only their kind.
    Log {
        bodies: bool,
    },
}

fn transport(smtp: &Smtp) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut params = TlsParameters::builder(smtp.host.clone());
    if let Some((path, pem)) = &smtp.ca_file {
        let cert = Certificate::from_pem(pem).map_err(|e| format!("SMTP_CA_FILE {path}: {e}"))?;
        params = params.add_root_certificate(cert);
    }
    let params = params.build().map_err(|e| format!("SMTP TLS: {e}"))?;
    // smtp:// requires STARTTLS: with opportunistic TLS a relay that offers none (or an
    // attacker who strips the offer) gets the password (AUTH PLAIN) and the links in clear.
    let tls = if smtp.implicit_tls {
        Tls::Wrapper(params)
    } else if smtp.allow_plaintext {
        Tls::Opportunistic(params)
    } else {
        Tls::Required(params)
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(SEND_TIMEOUT));
    if let Some(user) = &smtp.user {
        let password = smtp
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p.expose()).into_owned())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// Stops the worker: the sends in flight finish (for at most [`STOP_DEADLINE`]); what is still
/// pending stays in the database for the next pod.
pub struct MailWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MailWorker {
    /// `log_bodies`: without SMTP_URL, whether the log gets the mails' text (only in the
    /// embedded single-node mode).
    pub fn start(
        db: DatabaseConnection,
        settings: &MailSettings,
        mailer: &Mailer,
        metrics: Metrics,
        policy: RetryPolicy,
        log_bodies: bool,
    ) -> Result<Self, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("MAIL_FROM: {e}"))?;
        let sender = match &settings.smtp {
            Some(smtp) => Sender::Smtp(transport(smtp)?),
            None => Sender::Log { bodies: log_bodies },
        };
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            db,
            from,
            sender,
            metrics,
            wake: mailer.wake_handle(),
            policy: RetryPolicy {
                give_up_after: GIVE_UP_AFTER,
                ..policy
            },
        };
        let task = actix_web::rt::spawn(worker.run(stopped));
        Ok(Self { stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_DEADLINE, self.task).await;
    }
}

struct Worker {
    db: DatabaseConnection,
    from: Mailbox,
    sender: Sender,
    metrics: Metrics,
    wake: Arc<Notify>,
    policy: RetryPolicy,
}

struct Claimed {
    id: Uuid,
    kind: String,
    recipient: String,
    subject: String,
    text_body: String,
    html_body: String,
    created_at_ms: i64,
    attempts: i32,
    /// A decoy: built like a mail, then stored discarded unsent.
    decoy: bool,
}

/// Why an attempt failed, and whether trying again can help.
struct Failure {
    cause: String,
    permanent: bool,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Worker {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut gauge_at: Option<Instant> = None;
        let mut cleaned_at: Option<Instant> = None;
        let mut warned_at: Option<Instant> = None;
        while !*stopped.borrow() {
            let claimed = self.claim().await.unwrap_or_else(|e| {
                if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(cause = %e, "mail: cannot read the outbox; retrying");
                    warned_at = Some(Instant::now());
                }
                Vec::new()
            });
            let full = claimed.len() as u64 == BATCH;
            let worked = !claimed.is_empty();
            futures_util::stream::iter(claimed)
                .for_each_concurrent(CONCURRENCY, |row| self.deliver(row))
                .await;
            if worked || gauge_at.is_none_or(|t| t.elapsed() >= POLL) {
                if let Ok(n) = Entity::find()
                    .filter(Column::State.eq(PENDING))
                    .count(&self.db)
                    .await
                {
                    self.metrics.mail_pending.set(n as i64);
                }
                gauge_at = Some(Instant::now());
            }
            if cleaned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                let before = now_ms() - KEEP_DONE.as_millis() as i64;
                let _ = Entity::delete_many()
                    .filter(Column::State.ne(PENDING))
                    .filter(Column::DoneAtMs.lt(before))
                    .exec(&self.db)
                    .await;
                // Mailed tokens long expired (used or not) are no use to anyone.
                let _ = email_token::Entity::delete_many()
                    .filter(email_token::Column::ExpiresAtMs.lt(before))
                    .exec(&self.db)
                    .await;
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

    /// Takes up to [`BATCH`] due rows, pushing their next attempt a lease ahead.
    async fn claim(&self) -> Result<Vec<Claimed>, DbErr> {
        let now = now_ms();
        let backend = self.db.get_database_backend();
        let lock = match backend {
            sea_orm::DatabaseBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "UPDATE mail_outbox SET next_attempt_ms = $1, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM mail_outbox WHERE state IN ($2, $3) \
             AND next_attempt_ms <= $4 ORDER BY next_attempt_ms LIMIT $5{lock}) \
             RETURNING id, kind, recipient, subject, text_body, html_body, created_at_ms, attempts, \
             state"
        );
        // In the order they appear: SQLite's `?` are bound by position.
        let values = [
            (now + LEASE.as_millis() as i64).into(),
            PENDING.into(),
            DECOY.into(),
            now.into(),
            (BATCH as i64).into(),
        ];
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => sql,
            _ => ["$1", "$2", "$3", "$4", "$5"]
                .iter()
                .fold(sql, |s, p| s.replace(p, "?")),
        };
        let stmt = Statement::from_sql_and_values(backend, sql, values);
        let rows = tokio::time::timeout(SEND_TIMEOUT, self.db.query_all_raw(stmt))
            .await
            .map_err(|_| DbErr::Custom("claim timed out".into()))??;
        rows.into_iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("", "id")?,
                    kind: r.try_get("", "kind")?,
                    recipient: r.try_get("", "recipient")?,
                    subject: r.try_get("", "subject")?,
                    text_body: r.try_get("", "text_body")?,
                    html_body: r.try_get("", "html_body")?,
                    created_at_ms: r.try_get("", "created_at_ms")?,
                    attempts: r.try_get("", "attempts")?,
                    decoy: r.try_get::<i16>("", "state")? == DECOY,
                })
            })
            .collect()
    }

    async fn send(&self, row: &Claimed) -> Result<&'static str, Failure> {
        let permanent = |cause: String| Failure {
            cause,
            permanent: true,
        };
        let to: Mailbox = row
            .recipient
            .parse()
            .map_err(|_| permanent("the recipient is not a valid address".into()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(row.subject.clone())
            .message_id(Some(format!("<{}@sessiond>", row.id)))
            .multipart(MultiPart::alternative_plain_html(
                row.text_body.clone(),
                row.html_body.clone(),
            ))
            .map_err(|e| permanent(format!("cannot build the message: {e}")))?;
        if row.decoy {
            // Built as a mail to a registered address is, then dropped.
            std::hint::black_box(message.formatted());
            return Ok("decoy");
        }
        match &self.sender {
            Sender::Log { bodies: true } => {
                tracing::info!(mail_id = %row.id, kind = %row.kind, to = %row.recipient,
                    subject = %row.subject, body = %row.text_body,
                    "mail not sent (no SMTP_URL): written to the log");
                Ok("logged")
            }
            Sender::Log { bodies: false } => {
                tracing::info!(mail_id = %row.id, kind = %row.kind,
                    "mail not sent (no SMTP_URL is set)");
                Ok("logged")
            }
            Sender::Smtp(transport) => match transport.send(message).await {
                Ok(_) => Ok("sent"),
                Err(e) => Err(Failure {
                    // Only the reply code or the kind of failure: a server's text may quote
                    // the message.
                    cause: match e.status() {
                        Some(code) => format!("SMTP {code}"),
                        None if e.is_timeout() => "timed out".into(),
                        // lettre's own words, e.g. "STARTTLS is not supported on this server".
                        None if e.is_client() => e.to_string(),
                        None => "connection or TLS failed".into(),
                    },
                    permanent: e.is_permanent(),
                }),
            },
        }
    }

    async fn deliver(&self, row: Claimed) {
        let outcome = self.send(&row).await;
        let now = now_ms();
        let counter = |label: &str| {
            self.metrics
                .mail_deliveries
                .with_label_values(&[label])
                .inc()
        };
        let recorded = match outcome {
            // Counted nowhere: a decoy is no delivery.
            Ok(_) if row.decoy => self.finish(row.id, DISCARDED, now, None).await,
            Ok(label) => {
                counter(label);
                self.finish(row.id, SENT, now, None).await
            }
            Err(_) if row.decoy => self.finish(row.id, DISCARDED, now, None).await,
            Err(Failure { cause, permanent }) => {
                let attempt = row.attempts.max(1) as u32;
                let retry = self
                    .policy
                    .next_attempt_ms(attempt, row.created_at_ms, now)
                    .filter(|_| !permanent);
                match retry {
                    None => {
                        counter("failed");
                        tracing::error!(mail_id = %row.id, kind = %row.kind, attempts = attempt,
                            %cause, "mail given up");
                        self.finish(row.id, FAILED, now, Some(cause)).await
                    }
                    Some(next) => {
                        counter("retried");
                        tracing::warn!(mail_id = %row.id, kind = %row.kind, attempts = attempt,
                        %cause, retry_in_ms = next - now, "mail not sent; will retry");
                        Entity::update_many()
                            .col_expr(Column::NextAttemptMs, Expr::value(next))
                            .col_expr(Column::LastError, Expr::value(cause))
                            .filter(Column::Id.eq(row.id))
                            .filter(Column::State.eq(PENDING))
                            .exec(&self.db)
                            .await
                            .map(|_| ())
                    }
                }
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(mail_id = %row.id, cause = %e, "mail: cannot record a delivery outcome");
        }
    }

    /// Done: the bodies, which may hold a single-use link, are cleared.
    async fn finish(
        &self,
        id: Uuid,
        state: i16,
        now: i64,
        cause: Option<String>,
    ) -> Result<(), DbErr> {
        Entity::update_many()
            .col_expr(Column::State, Expr::value(state))
            .col_expr(Column::DoneAtMs, Expr::value(now))
            .col_expr(Column::LastError, Expr::value(cause))
            .col_expr(Column::TextBody, Expr::value(""))
            .col_expr(Column::HtmlBody, Expr::value(""))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map(|_| ())
    }
}
