//! sea-orm entities of sessiond: table shapes only, no runtime features; plus the list of
//! sessiond's own permissions, which the migrations seed.
pub mod audit_event;
pub mod email_token;
pub mod identity;
pub mod login_seen;
pub mod mail_outbox;
pub mod mfa_recovery_code;
pub mod mfa_totp;
pub mod permissions;
pub mod role;
pub mod role_permission;
pub mod service_client;
pub mod signing_key;
pub mod user;
pub mod user_role;
pub mod webauthn_credential;
pub mod webhook_outbox;
