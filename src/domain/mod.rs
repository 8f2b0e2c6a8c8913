//! Domain values, parsed once at the boundary (HTTP bodies, the command line, the environment):
//! a function that takes an [`Email`] or a [`RoleName`] never checks it again. This module is
//! the bottom of the crate: it imports nothing from the rest of it.
mod access;
mod account;
mod audit;
mod client;
mod page;
mod role;

pub use access::{Access, SharedAccess, Shortfall};
pub use account::{
    password_context, DisplayName, Email, Password, MAX_EMAIL_LEN, MAX_NAME_CHARS,
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS,
};
pub use audit::AuditKind;
pub use client::{ClientName, MAX_CLIENT_NAME_CHARS};
pub use page::{PageRequest, DEFAULT_PER_PAGE, MAX_PER_PAGE};
pub use role::{Permission, RoleName, ADMIN_ROLE, BUILTIN_PERMISSIONS, USER_ROLE};
