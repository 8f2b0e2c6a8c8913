//! sessiond: a session-management server. See README.md.
pub mod actor;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod redis;
pub mod routes;
pub mod session;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod users;
