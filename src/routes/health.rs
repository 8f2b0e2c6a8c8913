//! Liveness, readiness and the metrics scrape.
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::resource;
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
    /// ok | unavailable | in-process (embedded single-node mode)
    redis: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// ok | unavailable
    status: &'static str,
    checks: Checks,
}

/// Readiness: the database and Redis must answer within a second.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "A backing service does not answer", body = Readiness),
    ))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let limit = Duration::from_secs(1);
    let db = tokio::time::timeout(limit, state.users.send(users::Ping));
    let redis = tokio::time::timeout(limit, state.sessions.send(session::Ping));
    let (db, redis) = tokio::join!(db, redis);
    let db_ok = matches!(db, Ok(Ok(Ok(()))));
    let redis_ok = matches!(redis, Ok(Ok(Ok(()))));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let checks = Checks {
        database: word(db_ok),
        redis: if state.config.redis_url.is_none() {
            "in-process"
        } else {
            word(redis_ok)
        },
    };
    if db_ok && redis_ok {
        HttpResponse::Ok().json(Readiness {
            status: "ok",
            checks,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Readiness {
            status: "unavailable",
            checks,
        })
    }
}

/// Prometheus text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
