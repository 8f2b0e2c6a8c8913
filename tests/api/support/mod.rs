//! Spawning sessiond in-process on port 0, against a fresh database and Redis prefix per test.
//!
//! Backends: `Embedded` (SQLite file + in-process sessions) always; `Services` (PostgreSQL +
//! Redis) when TEST_DATABASE_URL and TEST_REDIS_URL are set. REQUIRE_SERVICES=1 turns a missing
//! or unreachable service into a failure instead of a skip.
//!
//! Every helper the test modules share lives here, so no test module imports another: the
//! harness (deployments, apps, waiting, Redis), re-exported for `use crate::support::*`, the
//! fixtures apart from it, and the test servers and clients of single areas (SMTP, passkeys,
//! TOTP, OAuth, provisioned tools, the failover stream) under their own module names.
mod app;
mod audit_trail;
mod deployment;
mod fixtures;
mod redis_cluster;
mod redis_proxy;
mod wait;

pub mod failover;
pub mod oauth;
pub mod passkey;
pub mod provision;
pub mod smtp;
pub mod totp;

pub use app::*;
pub use audit_trail::*;
pub use deployment::*;
pub use fixtures::*;
pub use redis_cluster::*;
pub use redis_proxy::*;
pub use wait::*;
