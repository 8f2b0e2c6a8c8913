//! Liveness, readiness and the metrics scrape.
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::resource;
use crate::actor::Ask;
use crate::{session, state::AppState, users};

pub fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.service(resource("/health", "GET").route(web::get().to(health)))
        .service(resource("/ready", "GET").route(web::get().to(ready)));
    if with_metrics {
        configure_metrics(cfg);
    }
}

/// The scrape route alone, for the METRICS_PORT listener.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(metrics)));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: answers while the process serves; touches no backing service.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process serves", body = Health)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Checks {
    /// ok | unavailable
    database: &'static str,
    /// current | behind (migrations pending: not ready) | ahead (migrated by a newer release:
    /// still ready, as old pods are during a rollout) | unknown (the database does not answer)
    schema: &'static str,
    /// ok | unavailable | in-process (embedded single-node mode)
    redis: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// ok | unavailable
    status: &'static str,
    checks: Checks,
    /// Why the pod is not ready, or what an operator should know (a schema ahead of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Migrations of this binary the database lacks (`sessiond migrate` applies them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pending_migrations: Vec<String>,
    /// Migrations applied to the database that this binary does not know.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown_migrations: Vec<String>,
}

/// Readiness: the database and Redis must answer within a second, and the database's schema
/// must not be behind this binary (requests would fail on missing tables). Checked on every
/// call, so a pod that started before the migration job becomes ready once it has run.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "A backing service does not answer, or migrations are pending", body = Readiness),
    ))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let limit = Duration::from_secs(1);
    let db = tokio::time::timeout(limit, state.app.users.ask(users::CheckSchema));
    let redis = tokio::time::timeout(limit, state.app.sessions.ask(session::Ping));
    let (db, redis) = tokio::join!(db, redis);
    let schema = match db {
        Ok(Ok(schema)) => Some(schema),
        _ => None,
    };
    let db_ok = schema.is_some();
    let redis_ok = matches!(redis, Ok(Ok(())));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let schema = schema.unwrap_or_default();
    let (schema_word, reason) = match (db_ok, &schema) {
        (false, _) => ("unknown", None),
        (true, s) if !s.pending.is_empty() => (
            "behind",
            Some(format!(
                "the database schema is behind this binary: {} pending migration(s); run `sessiond migrate`",
                s.pending.len()
            )),
        ),
        (true, s) if !s.unknown.is_empty() => (
            "ahead",
            Some(format!(
                "the database schema is ahead of this binary: {} migration(s) from a newer release",
                s.unknown.len()
            )),
        ),
        (true, _) => ("current", None),
    };
    let checks = Checks {
        database: word(db_ok),
        schema: schema_word,
        redis: if state.config.redis.is_none() {
            "in-process"
        } else {
            word(redis_ok)
        },
    };
    let ok = db_ok && redis_ok && schema.pending.is_empty();
    let body = Readiness {
        status: if ok { "ok" } else { "unavailable" },
        checks,
        reason,
        pending_migrations: schema.pending,
        unknown_migrations: schema.unknown,
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.app.metrics.render())
}
