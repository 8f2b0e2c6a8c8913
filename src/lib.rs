//! sessiond: a session-management server. See README.md.
pub mod actor;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
#[cfg(test)]
mod docs_links;
pub mod domain;
pub mod error;
pub mod federation;
pub mod mail;
pub mod metrics;
pub mod outbox;
pub mod redis;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod users;
pub mod webhooks;
