//! Liveness, readiness and the metrics scrape.
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource;
use crate::{session, state::AppState, users};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(health)))
        .service(resource("/ready").route(web::get().to(ready)))
        .service(resource("/metrics").route(web::get().to(metrics)));
}

/// Cheap: answers while the process serves.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Both backing services must answer within a short bound.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let limit = Duration::from_secs(1);
    let db = tokio::time::timeout(limit, state.users.send(users::Ping));
    let redis = tokio::time::timeout(limit, state.sessions.send(session::Ping));
    let (db, redis) = tokio::join!(db, redis);
    let db_ok = matches!(db, Ok(Ok(Ok(()))));
    let redis_ok = matches!(redis, Ok(Ok(Ok(()))));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let redis_word = if state.config.redis_url.is_none() {
        "in-process"
    } else {
        word(redis_ok)
    };
    let body = |status: &str| json!({"status": status, "checks": {"database": word(db_ok), "redis": redis_word}});
    if db_ok && redis_ok {
        HttpResponse::Ok().json(body("ok"))
    } else {
        HttpResponse::ServiceUnavailable().json(body("unavailable"))
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
