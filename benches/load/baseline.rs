//! The baseline: what a Rust team would write instead of sessiond. A minimal actix-web app with
//! actix-session's Redis store, on the same Redis as sessiond: the session id travels in an
//! encrypted cookie and every authenticated request reads its session state from Redis (one GET).
//! Login here only opens a session (no password check): the suite compares the authenticated path.
use actix_session::{storage::RedisSessionStore, Session, SessionMiddleware};
use actix_web::{cookie::Key, web, App, HttpResponse, HttpServer};
use serde_json::json;

use crate::Running;

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn login(session: Session) -> actix_web::Result<HttpResponse> {
    session.renew();
    session.insert("user_id", uuid::Uuid::new_v4().to_string())?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
}

async fn current_session(session: Session) -> actix_web::Result<HttpResponse> {
    match session.get::<String>("user_id")? {
        Some(user_id) => Ok(HttpResponse::Ok().json(json!({"user_id": user_id}))),
        None => Ok(HttpResponse::Unauthorized().json(json!({"error": "unauthorized"}))),
    }
}

/// Same shape as sessiond in this suite: one HTTP worker on 127.0.0.1, port chosen by the OS.
pub async fn start(redis_url: &str, prefix: &str) -> Running {
    let prefix = format!("{prefix}baseline:");
    let store = RedisSessionStore::builder(redis_url)
        .cache_keygen(move |key| format!("{prefix}{key}"))
        .build()
        .await
        .expect("baseline: cannot connect to Redis");
    let key = Key::generate();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("baseline: bind");
    let port = listener.local_addr().expect("baseline: local addr").port();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(SessionMiddleware::new(store.clone(), key.clone()))
            .route("/health", web::get().to(health))
            .route("/login", web::post().to(login))
            .route("/session", web::get().to(current_session))
    })
    .listen(listener)
    .expect("baseline: listen")
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .run();
    let handle = server.handle();
    Running {
        port,
        handle,
        task: actix_web::rt::spawn(server),
    }
}
