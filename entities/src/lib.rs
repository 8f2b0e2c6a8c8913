//! sea-orm entities of sessiond: table shapes only, no runtime features.
pub mod audit_event;
pub mod role;
pub mod role_permission;
pub mod user;
pub mod user_role;
