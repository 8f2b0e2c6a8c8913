//! The one integration test binary: every API test runs against the embedded default and,
//! with TEST_DATABASE_URL + TEST_REDIS_URL, against PostgreSQL + Redis.
mod support;

mod admin;
mod architecture;
mod audit;
mod cache_races;
mod cluster;
mod cross_pod;
mod cut_off;
mod escalation;
mod flow;
mod hardening;
mod introspection;
mod keys;
mod lockout;
mod mail;
mod mfa;
mod monitoring;
mod oidc;
mod persistence;
mod process;
mod redis_down;
mod refresh;
mod registration;
mod seal;
mod security;
mod session_limit;
mod sessions;
mod step_up;
mod tls;
mod tokens;
mod topology;
mod validation;
mod webauthn;
mod webhooks;
