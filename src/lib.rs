//! sessiond: a session-management server. See README.md.
pub mod actor;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod redis;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod users;
